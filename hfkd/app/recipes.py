"""What the recipe scripts and the `hfkd` console script run: fine-tune a teacher, distill a student.

Each entry point takes `(ModelArguments, DataArguments, TrainingArguments/DistillationConfig)` and
ends by writing the model (tokenizer included), `eval_results.json` and `all_results.json` in
`output_dir`, as one set (`hfkd.io.staged`). Multi-process runs come from `accelerate launch`; only the main process writes.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import sys
from dataclasses import asdict
from typing import Any, Callable, Sequence

import torch
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel, Trainer, TrainingArguments, set_seed

from hfkd.adapters import adapter_base_path, is_adapter_folder, is_peft_model, merged_copy
from hfkd.app.arguments import ModelArguments, one_line_errors, parse_args
from hfkd.app.prompt_data import is_prompt_data, prepare_prompt_datasets
from hfkd.trainers.on_policy import on_policy_enabled
from hfkd.io import recover, staged
from hfkd.config import DistillationConfig, cpu_only_multiprocess
from hfkd.app.transfer_data import apply_confidence_filter
from hfkd.app.task_data import (
    DataArguments,
    DataError,
    build_data_collator,
    load_raw_datasets,
    prepare_classification_datasets,
    prepare_lm_datasets,
    prepare_token_classification_datasets,
)
from hfkd.metrics import DEFAULT_METRIC, build_compute_metrics, perplexity_from_loss, preprocess_logits_for_metrics
from hfkd.trainers.mutual import MutualDistillationConfig, MutualDistillationTrainer
from hfkd.student.create import create_student
from hfkd.trainers.distillation import DistillationTrainer
from hfkd.teacher.fast import cast_with_fidelity
from hfkd.teacher.loading import load_trained_teacher, parse_dtype, teacher_load_kwargs
from hfkd.models import TASK_AUTO_CLASSES, forward_arg_names, is_default_labels, resolve_model_path
from hfkd.models import check_sequence_length as models_check_sequence_length

logger = logging.getLogger(__name__)
TASKS = tuple(TASK_AUTO_CLASSES)


def task_model_class(task: str):
    if task not in TASK_AUTO_CLASSES:
        raise ValueError(f"task={task!r} is not supported; use one of {list(TASKS)}.")
    return TASK_AUTO_CLASSES[task][1]


def prepare_task_data(
    task: str, raw: Any, tokenizer: Any, data_args: DataArguments, model_config: Any = None, prompts: bool = False
) -> tuple[Any, list[str] | None]:
    """Tokenized splits for `task`, and the label names by id (classification tasks); `prompts`: the
    causal-LM data are prompts to generate from (on-policy / seq_kd), which prompt columns also imply."""
    prompt_data = task == "causal_lm" and (prompts or is_prompt_data(raw, data_args))
    if data_args.completion_length is not None and not prompt_data:
        raise DataError("completion_length cuts causal-LM prompts into prompt + completion, and these data are not "
                        "prompts: set prompt_column (e.g. 'text' for a .txt file), or unset completion_length")
    if task == "sequence_classification":
        label2id = None
        if model_config is not None and not is_default_labels(model_config.id2label):
            label2id = dict(model_config.label2id)
        num_classes = model_config.num_labels if model_config is not None else None
        return prepare_classification_datasets(raw, tokenizer, data_args, label2id=label2id, num_classes=num_classes)
    if task == "token_classification":
        if model_config is None or is_default_labels(model_config.id2label):
            raise ValueError(
                "token classification needs the tag names: fine-tune the teacher with hfkd finetune "
                "(it stores id2label) or set the teacher config's id2label."
            )
        labels = [model_config.id2label[i] for i in range(len(model_config.id2label))]
        return prepare_token_classification_datasets(raw, tokenizer, data_args, labels), labels
    if prompt_data:  # on-policy / seq_kd distillation
        return prepare_prompt_datasets(raw, tokenizer, data_args), None
    return prepare_lm_datasets(raw, tokenizer, data_args, task=task), None


def task_trainer_kwargs(task: str, datasets: Any, tokenizer: Any, data_args: DataArguments, labels: Any) -> dict:
    id2label = dict(enumerate(labels)) if labels else None
    kwargs = dict(
        train_dataset=datasets.get("train"),
        eval_dataset=datasets.get("validation"),
        processing_class=tokenizer,
        data_collator=build_data_collator(tokenizer, data_args, task),
        compute_metrics=build_compute_metrics(task, id2label=id2label),
    )
    if task != "sequence_classification":
        kwargs["preprocess_logits_for_metrics"] = preprocess_logits_for_metrics
    return kwargs


def train_and_save(trainer: Trainer, task: str) -> dict[str, float]:
    """Train (resuming if asked), evaluate, save model + tokenizer + card, write the results."""
    args = trainer.args
    if trainer.train_dataset is None:
        raise ValueError("no train split: set train_file (or dataset_name with a train split).")
    resume = args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("latest", "true"):
        resume = True  # the newest complete checkpoint in output_dir
    result = trainer.train(resume_from_checkpoint=resume)
    metrics: dict[str, float] = {}
    if trainer.eval_dataset is not None:
        metrics = trainer.evaluate()
        if task in ("masked_lm", "causal_lm"):
            metrics["eval_perplexity"] = perplexity_from_loss(metrics["eval_loss"])
    # The model and its results as one set: a kill leaves the previous set or this one (`hfkd.io.staged`).
    with staged(args.output_dir, enabled=args.should_save) as folder:
        trainer.save_model(folder)
        if args.should_save:
            write_results(trainer, folder, result.metrics, metrics)
    if getattr(args, "report_at_end", False) and trainer.eval_dataset is not None and trainer.is_world_process_zero():
        _report(trainer, task)
    return metrics


def write_results(trainer: Trainer, folder: str, train: dict[str, float], evaluation: dict[str, float]) -> None:
    """What `Trainer.save_metrics` and `save_state` write, into `folder` (the staging folder)."""
    results = {"train": train, **({"eval": evaluation} if evaluation else {}), "all": {**train, **evaluation}}
    for split, values in results.items():
        with open(os.path.join(folder, f"{split}_results.json"), "w", encoding="utf-8") as handle:
            json.dump(values, handle, indent=4, sort_keys=True)
    trainer.state.save_to_json(os.path.join(folder, "trainer_state.json"))


def _report(trainer: DistillationTrainer, task: str) -> None:
    """Teacher vs the saved student on the eval set: report files, and the card gains the table."""
    from hfkd.models import is_sharded
    from hfkd.report import build_report, write_report

    args = trainer.args
    if is_sharded(trainer.teacher):
        logger.warning("report_at_end skipped: the teacher is sharded over the processes (ZeRO-3/FSDP), so one "
                       "process cannot run it; run `hfkd report` on the saved student in one process instead.")
        return
    student = trainer.accelerator.unwrap_model(trainer.model)
    report = build_report(
        getattr(trainer.teacher, "module", trainer.teacher),  # a ZeRO-0/1/2 teacher is a DeepSpeed engine
        # An adapter folder has no architecture to load: measure the merged student it deploys as.
        [(os.path.basename(os.path.normpath(args.output_dir)), merged_copy(student) if is_peft_model(student)
          else args.output_dir)],
        trainer.eval_dataset,
        trainer.data_collator,
        trainer.compute_metrics,
        metric_name=DEFAULT_METRIC[task],
        alpha=args.report_alpha,
        teacher_name=os.path.basename(os.path.normpath(str(trainer.teacher_name))),
    )
    write_report(report, os.path.join(args.output_dir, "report"))
    trainer.write_model_card(args.output_dir, report=report)


def card_dataset_names(data_args: DataArguments) -> list[str]:
    if data_args.dataset_name:
        return [data_args.dataset_name]
    path = data_args.validation_file or data_args.train_file
    return [os.path.basename(os.path.dirname(os.path.abspath(path)))] if path else []


def check_output_dir(args: TrainingArguments, model_args: ModelArguments) -> None:
    """Refuse to write over another run unless asked to resume or overwrite it.

    The saving process first finishes a final save a kill interrupted; the others wait for it
    (`main_process_first`), so every process judges the same folder and refuses, or not, together.
    """
    with args.main_process_first(desc="output_dir check"):
        out = args.output_dir
        if out and os.path.isdir(out) and args.should_save:
            recover(out)  # finish a final save that a kill interrupted, before judging what the folder holds
        _refuse_another_run(out, args, model_args)


def _refuse_another_run(out: str | None, args: TrainingArguments, model_args: ModelArguments) -> None:
    if not out or not os.path.isdir(out) or args.resume_from_checkpoint or model_args.overwrite_output_dir:
        return
    markers = [n for n in os.listdir(out) if n.startswith("checkpoint-") or n in ("model.safetensors", "trainer_state.json")]
    if markers:
        checkpoints = sorted((n for n in markers if n.startswith("checkpoint-")), key=lambda n: int(n.split("-")[-1]))
        resume = f"--resume_from_checkpoint {os.path.join(out, checkpoints[-1])} to continue it, " if checkpoints else ""
        raise ValueError(
            f"output_dir {out} already holds a run ({', '.join(sorted(markers)[:3])}); pass {resume}"
            "--overwrite_output_dir to replace it, or choose another output_dir."
        )


def check_sequence_length(data_args: DataArguments, *models: PreTrainedModel) -> None:
    """The data's longest sequence (max_seq_length or block_size) against every model's positions."""
    models_check_sequence_length(data_args.block_size or data_args.max_seq_length, "max_seq_length/block_size",
                                 *models)


def use_eos_for_padding(tokenizer: Any, *models: PreTrainedModel) -> None:
    """GPT-2-style tokenizers have no pad token: pad with eos (and tell the models), as transformers users do."""
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
        logger.info("The tokenizer has no pad token: padding with its eos token %r.", tokenizer.eos_token)
    for model in models:
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id


def load_tokenizer(path: str, trust_remote_code: bool) -> Any:
    """The tokenizer saved with a checkpoint; an adapter folder saved without one: its base model's."""
    if path.endswith(".gguf"):  # the tokenizer is built from the file's metadata (slow: convert-gguf once)
        return AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    if is_adapter_folder(path) and not os.path.isfile(os.path.join(path, "tokenizer_config.json")):
        path = adapter_base_path(path)
    return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)


def run_finetune(model_args: ModelArguments, data_args: DataArguments, args: TrainingArguments) -> dict:
    """Plain fine-tuning (teachers must often be made first): the same data path as distillation."""
    if not model_args.model_name_or_path:
        raise ValueError("finetune needs model_name_or_path (a checkpoint folder or Hub name).")
    check_output_dir(args, model_args)
    set_seed(args.seed)
    task = model_args.task
    path = resolve_model_path(model_args.model_name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=model_args.trust_remote_code)
    raw = load_raw_datasets(data_args)
    datasets, labels = prepare_task_data(task, raw, tokenizer, data_args)
    model_kwargs: dict[str, Any] = {"trust_remote_code": model_args.trust_remote_code,
                                    "ignore_mismatched_sizes": model_args.ignore_mismatched_sizes}
    if labels:
        model_kwargs.update(
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
        )
    model = task_model_class(task).from_pretrained(path, **model_kwargs)
    check_sequence_length(data_args, model)
    use_eos_for_padding(tokenizer, model)
    trainer = Trainer(model=model, args=args, **task_trainer_kwargs(task, datasets, tokenizer, data_args, labels))
    return train_and_save(trainer, task)


STUDENT_SHAPE_FIELDS = ("student_num_layers", "student_layer_indices", "student_hidden_size",
                        "student_intermediate_size", "student_num_attention_heads", "student_init")
"""ModelArguments that describe a student built from the teacher; a student checkpoint makes them moot."""


def build_student(
    model_args: ModelArguments, teacher: PreTrainedModel, task: str, train_dataset: Any = None, seed: int = 42
) -> PreTrainedModel:
    """Load the student checkpoint, or derive one from the teacher with `create_student` (pruning
    ranks units on `student_calibration_samples` rows of `train_dataset`, shuffled with `seed`)."""
    if model_args.student_model_name_or_path:
        unused = {name: getattr(model_args, name) for name in STUDENT_SHAPE_FIELDS if getattr(model_args, name)}
        if unused:  # kept a warning: a recipe's shape may stand beside a checkpoint the user adds on the command line
            logger.warning("student_model_name_or_path %s is used as it is: %s only shape a student built from "
                           "the teacher, so they are ignored here.", model_args.student_model_name_or_path,
                           ", ".join(f"{name}={value}" for name, value in unused.items()))
        path = resolve_model_path(model_args.student_model_name_or_path)
        kwargs: dict[str, Any] = {"trust_remote_code": model_args.trust_remote_code}
        config = AutoConfig.from_pretrained(path, trust_remote_code=model_args.trust_remote_code)
        # A head trained on named labels keeps them (the trainer then refuses a different order);
        # an untrained head (LABEL_0, ...) takes the teacher's label set.
        if task in ("sequence_classification", "token_classification") and is_default_labels(config.id2label):
            kwargs.update(num_labels=teacher.config.num_labels, id2label=teacher.config.id2label,
                          label2id=teacher.config.label2id)
        return task_model_class(task).from_pretrained(path, **kwargs)
    if not (model_args.student_num_layers or model_args.student_layer_indices or model_args.student_hidden_size):
        raise ValueError(
            "no student given: set student_model_name_or_path, or student_num_layers / "
            "student_layer_indices / student_hidden_size to build one from the teacher."
        )
    calibration = None
    if model_args.student_init == "prune" and train_dataset is not None:
        count = min(model_args.student_calibration_samples, len(train_dataset))
        calibration = train_dataset.shuffle(seed=seed).select(range(count))
    return create_student(
        teacher,
        num_layers=model_args.student_num_layers,
        layer_indices=model_args.student_layer_indices,
        hidden_size=model_args.student_hidden_size,
        intermediate_size=model_args.student_intermediate_size,
        num_attention_heads=model_args.student_num_attention_heads,
        init=model_args.student_init,
        calibration_dataset=calibration,
    )


def load_teachers(model_args: ModelArguments, args: DistillationConfig, command: str) -> tuple[list[PreTrainedModel], Any]:
    """The teachers named by teacher_model_name_or_path (adapter folders merged) and the first one's tokenizer."""
    paths = [resolve_model_path(name) for name in _teacher_names(model_args)]
    if not paths:
        raise ValueError(f"{command} needs teacher_model_name_or_path (a fine-tuned checkpoint).")
    tokenizer = load_tokenizer(paths[0], model_args.trust_remote_code)
    kwargs = teacher_load_kwargs(args, trust_remote_code=model_args.trust_remote_code)
    return [load_trained_teacher(task_model_class(model_args.task), path, **kwargs) for path in paths], tokenizer


def build_peft_config(model_args: ModelArguments, args: DistillationConfig, task: str) -> Any:
    """A LoraConfig from the lora_* flags when use_peft is set (the task head then trains too), else None."""
    if not model_args.use_peft:
        return None
    if not model_args.student_model_name_or_path and not args.merge_adapter_on_save:
        raise ValueError(
            "use_peft with a student built from the teacher would save an adapter whose base model exists "
            "nowhere: set merge_adapter_on_save (a merged student), or give student_model_name_or_path."
        )
    from peft import LoraConfig

    task_types = {"sequence_classification": "SEQ_CLS", "token_classification": "TOKEN_CLS", "causal_lm": "CAUSAL_LM"}
    return LoraConfig(r=model_args.lora_r, lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout,
                      target_modules=model_args.lora_target_modules, task_type=task_types.get(task))


def match_teacher_labels(teachers: Sequence[PreTrainedModel], labels: list[str] | None) -> None:
    """Refuse data whose label count differs from the (first) teacher's; name default-named classes after the data."""
    teacher = teachers[0]
    if labels and len(labels) != teacher.config.num_labels:
        raise ValueError(
            f"the data has {len(labels)} labels {labels} but the teacher has num_labels="
            f"{teacher.config.num_labels} ({teacher.config.id2label}); fine-tune the teacher on this label set."
        )
    # Name the teachers' classes after the data so the saved student carries real labels.
    for unnamed in [t for t in teachers if labels and is_default_labels(t.config.id2label)]:
        unnamed.config.id2label = dict(enumerate(labels))
        unnamed.config.label2id = {label: i for i, label in enumerate(labels)}


def run_distillation(model_args: ModelArguments, data_args: DataArguments, args: DistillationConfig) -> dict:
    """Distill the teacher(s) into a student on the task's data; returns the student's eval metrics."""
    check_output_dir(args, model_args)
    set_seed(args.seed)
    task = model_args.task
    teachers, tokenizer = load_teachers(model_args, args, "distillation")
    teacher = teachers[0]
    raw = load_raw_datasets(data_args)
    datasets, labels = prepare_task_data(task, raw, tokenizer, data_args, teacher.config, on_policy_enabled(args))
    match_teacher_labels(teachers, labels)
    student = build_student(model_args, teacher, task, datasets.get("train"), args.seed)
    check_sequence_length(data_args, *teachers, student)
    use_eos_for_padding(tokenizer, *teachers, student)
    datasets = use_teacher_cache(teachers, datasets, tokenizer, data_args, args)  # hfkd cache-teacher's output, if any
    if "train" in datasets:  # unlabeled_min_confidence: on the cached teacher outputs
        datasets["train"] = apply_confidence_filter(datasets["train"], data_args, teacher.config.num_labels)
    trainer_kwargs = task_trainer_kwargs(task, datasets, tokenizer, data_args, labels)
    trainer_kwargs["processing_class"] = student_tokenizer(model_args) or tokenizer
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teachers,
        args=args,
        teacher_processing_class=[load_tokenizer(resolve_model_path(name), model_args.trust_remote_code)
                                  for name in _teacher_names(model_args)],
        peft_config=build_peft_config(model_args, args, task),
        dataset_names=card_dataset_names(data_args),
        **trainer_kwargs,
    )
    return train_and_save(trainer, task)


def student_tokenizer(model_args: ModelArguments) -> Any:
    """The tokenizer saved with the student checkpoint (compared with the teachers'), or None without one."""
    name = model_args.student_model_name_or_path
    path = resolve_model_path(name) if name else None
    if path is None or (os.path.isdir(path) and not os.path.isfile(os.path.join(path, "tokenizer_config.json"))):
        return None
    return load_tokenizer(path, model_args.trust_remote_code)


def _teacher_names(model_args: ModelArguments) -> list[str]:
    names = model_args.teacher_model_name_or_path
    return [names] if isinstance(names, str) else list(names or [])


def run_mutual_learning(
    model_args: ModelArguments, data_args: DataArguments, args: MutualDistillationConfig
) -> dict[str, float]:
    """Recipe: the student (peer 0) and its peers trained together; returns the student's eval metrics.

    The student comes from `student_model_name_or_path` or is built from the teacher like in
    `hfkd distill`; peers 1, 2, ... are `peer_model_name_or_path`, then the teacher when
    `train_teacher_alongside`. Without a teacher, labels come from the data.
    """
    if args.train_teacher_alongside and not model_args.teacher_model_name_or_path:
        raise ValueError("train_teacher_alongside needs teacher_model_name_or_path.")
    if not args.peer_model_name_or_path and not args.train_teacher_alongside:
        raise ValueError(
            "mutual learning needs at least one peer besides the student: set peer_model_name_or_path "
            "and/or train_teacher_alongside."
        )
    check_output_dir(args, model_args)
    set_seed(args.seed)
    task = model_args.task
    auto_class = task_model_class(task)
    remote = {"trust_remote_code": model_args.trust_remote_code}
    teacher = None
    if model_args.teacher_model_name_or_path:
        teachers, tokenizer = load_teachers(model_args, args, "mutual learning")
        if len(teachers) > 1:
            raise ValueError("mutual learning takes one teacher_model_name_or_path (to build the student from or "
                             "train alongside); give other models as peer_model_name_or_path.")
        teacher = teachers[0]
    elif model_args.student_model_name_or_path:
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(model_args.student_model_name_or_path), **remote)
    else:
        raise ValueError("mutual learning needs student_model_name_or_path (or a teacher to build the student from).")
    raw = load_raw_datasets(data_args)
    datasets, labels = prepare_task_data(task, raw, tokenizer, data_args, teacher.config if teacher else None)
    label_kwargs: dict[str, Any] = {}
    if teacher is not None:
        match_teacher_labels([teacher], labels)
        if labels:
            label_kwargs = {"num_labels": teacher.config.num_labels, "id2label": teacher.config.id2label,
                            "label2id": teacher.config.label2id}
    elif labels:
        label_kwargs = {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                        "label2id": {label: i for i, label in enumerate(labels)}}

    def load(path: str) -> PreTrainedModel:
        return auto_class.from_pretrained(resolve_model_path(path), **remote, **label_kwargs)

    if teacher is not None:
        student = build_student(model_args, teacher, task, datasets.get("train"), args.seed)
    elif model_args.student_model_name_or_path:
        student = load(model_args.student_model_name_or_path)
    else:
        raise ValueError("no student: set student_model_name_or_path, or a teacher to build the student from.")
    alongside = [teacher] if args.train_teacher_alongside else []
    peers = [student, *(load(path) for path in args.peer_model_name_or_path), *alongside]
    check_sequence_length(data_args, *peers)
    use_eos_for_padding(tokenizer, *peers)
    trainer = MutualDistillationTrainer(
        peers=peers, args=args, **task_trainer_kwargs(task, datasets, tokenizer, data_args, labels)
    )
    return train_and_save(trainer, task)


def main(run: Callable, argv: Sequence[str] | None, config_class: type = DistillationConfig) -> dict:
    """Parse `[--config C.yaml] [flags]`, run, and turn setup errors into one line (unless --debug)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("hfkd").setLevel(logging.INFO)
    atexit.register(_destroy_process_group)  # at exit, so chained recipes share one process group
    if cpu_only_multiprocess():  # also for the finetune recipe's plain TrainingArguments
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")
    with one_line_errors(debug):
        model_args, data_args, train_args = parse_args([ModelArguments, DataArguments, config_class], argv)
        return run(model_args, data_args, train_args)


def finish_process() -> None:
    """End a recipe process: shut the process group down, and under several processes exit now.

    Tearing gloo down at interpreter exit hangs now and then (seen with torch 2.13 on CPU), which
    would keep `accelerate launch` waiting forever after the work is done and saved.
    """
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    _destroy_process_group()
    if distributed:
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(0)


def _destroy_process_group() -> None:
    # Without this, processes started by `accelerate launch` abort at exit (SIGABRT).
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()



# ---------------------------------------------------------------- teacher-output cache (`hfkd cache-teacher`)


def run_cache_teacher(model_args: ModelArguments, data_args: DataArguments, args: DistillationConfig) -> dict:
    """Run the teacher once over the train split and save its logits (or top-k) in `teacher_cache_dir`.

    `hfkd distill` with the same config then trains from the cache (see `use_teacher_cache`). Under
    `accelerate launch` every process runs a teacher on its share of the shards; a killed build
    resumes when the same command runs again.
    """
    from hfkd.teacher.cache import build_teacher_cache

    if not args.teacher_cache_dir:
        raise ValueError("cache-teacher needs teacher_cache_dir: set the folder the cache is written to.")
    task = model_args.task
    teachers, tokenizer = load_teachers(model_args, args, "cache-teacher")
    with args.main_process_first(desc="tokenize"):  # one process writes the `datasets` cache files
        datasets, _ = prepare_task_data(task, load_raw_datasets(data_args), tokenizer, data_args, teachers[0].config)
    use_eos_for_padding(tokenizer, *teachers)
    if "train" not in datasets:
        raise ValueError("no train split: set train_file (or dataset_name with a train split).")
    collator = build_data_collator(tokenizer, data_args, task)
    checked_on = datasets.get("validation") or datasets["train"]  # a lower-precision build must keep the decisions
    cast = [cast_with_fidelity(teacher, parse_dtype(args.teacher_dtype, device=args.device), lambda t=teacher: _fidelity_batches(
        checked_on, collator, t), device=args.device, min_agreement=args.teacher_min_agreement)[0] for teacher in teachers]
    cache = build_teacher_cache(
        cast,
        datasets["train"],
        collator,
        args.teacher_cache_dir,
        batch_size=args.per_device_eval_batch_size,
        top_k=args.teacher_cache_top_k,
        temperature=args.temperature,
        fingerprint_extra=_cache_fingerprint_extra(tokenizer, data_args),
        shard_rows=args.teacher_cache_shard_rows,
    )
    logger.info("Cached the teacher's outputs for %d rows in %s", len(cache), args.teacher_cache_dir)
    return {"cached_rows": len(cache)}


def use_teacher_cache(
    teachers: list[PreTrainedModel], datasets: Any, tokenizer: Any, data_args: DataArguments, args: DistillationConfig
) -> Any:
    """`datasets` with the train split swapped for the cache in `teacher_cache_dir`, when there is one.

    A missing cache means online distillation (with a warning); a stale one is refused. Casts the
    teachers to the device and `teacher_dtype` the trainer would, since the fingerprint hashes their weights.
    """
    from hfkd.teacher.cache import cache_exists, load_teacher_cache, teacher_cache_fingerprint

    cache_dir = args.teacher_cache_dir
    if not cache_dir or "train" not in datasets:
        return datasets
    if not cache_exists(cache_dir):
        logger.warning("No teacher cache in %s: distilling online (build one with hfkd cache-teacher).", cache_dir)
        return datasets
    expected = teacher_cache_fingerprint(
        [_cast_teacher(teacher, args) for teacher in teachers], datasets["train"], top_k=args.teacher_cache_top_k,
        temperature=args.temperature, extra=_cache_fingerprint_extra(tokenizer, data_args))
    datasets["train"] = load_teacher_cache(cache_dir, expected)
    return datasets


def _fidelity_batches(dataset: Any, collator: Any, teacher: PreTrainedModel, rows: int = 512) -> list[dict]:
    """The first `rows` rows of `dataset`, collated in batches of 64 with only what the teacher's forward takes."""
    inputs = dataset.select_columns([c for c in dataset.column_names if c in forward_arg_names(teacher)])
    end = min(rows, len(inputs))
    return [collator([inputs[i] for i in range(start, min(start + 64, end))]) for start in range(0, end, 64)]


def _cast_teacher(teacher: PreTrainedModel, args: DistillationConfig) -> PreTrainedModel:
    return teacher.to(device=args.device, dtype=parse_dtype(args.teacher_dtype, device=args.device))


def _cache_fingerprint_extra(tokenizer: Any, data_args: DataArguments) -> dict[str, Any]:
    from hfkd.teacher.cache import tokenizer_sha256

    extra = {"tokenizer_sha256": tokenizer_sha256(tokenizer), "max_length": data_args.max_seq_length,
             "block_size": data_args.block_size}
    if data_args.augment_copies:
        # Augmented rows are other inputs: a cache of the plain train split must not serve them (nor the reverse).
        extra["augmentation"] = {"mlm": data_args.augment_mlm, **asdict(data_args.augmentation_settings())}
    return extra
