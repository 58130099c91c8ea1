"""Layer mapping: which student hidden state is compared with which teacher hidden state.

Indices are hidden-state indices as in `outputs.hidden_states`: 0 is the embedding output and i
(1 ≤ i ≤ depth) is the output of the i-th transformer layer.
"""

from __future__ import annotations

from typing import Sequence

LayerPairs = list[tuple[int, int]]


def resolve_layer_mapping(
    strategy: str | Sequence[Sequence[int]],
    student_layers: int,
    teacher_layers: int,
    include_embeddings: bool = False,
    student_teacher_layers: Sequence[int] | None = None,
) -> LayerPairs:
    """Turn a strategy name or explicit pairs into validated (student, teacher) hidden-state pairs.

    - `uniform` (TinyBERT): 0-based student layer i ↔ teacher layer (i+1)*k-1 with k = teacher
      depth // student depth, i.e. hidden states (i+1) ↔ (i+1)*k.
    - `pkd_skip` (Patient KD, PKD-Skip): `uniform` without the last pair, whose knowledge the
      logits carry.
    - `last`: the last layer of each model.
    - `skip`: student layer i ↔ the teacher layer it was copied from (`student_teacher_layers`,
      recorded by `create_student` as `config.hfkd_teacher_layers`).
    - explicit `[[s, t], ...]` pairs are only range-checked.
    `include_embeddings` adds (0, 0) in front unless already present.
    """
    if student_layers < 1 or teacher_layers < 1:
        raise ValueError(
            f"layer mapping needs models with layers (student {student_layers}, teacher {teacher_layers})."
        )
    if isinstance(strategy, str):
        pairs = _strategy_pairs(strategy, student_layers, teacher_layers, student_teacher_layers)
    else:
        pairs = [(int(s), int(t)) for s, t in strategy]
        for s, t in pairs:
            if not (0 <= s <= student_layers and 0 <= t <= teacher_layers):
                raise ValueError(
                    f"layer_mapping pair [{s}, {t}] is out of range: hidden-state indices run 0..{student_layers} "
                    f"for the student and 0..{teacher_layers} for the teacher (0 = embeddings)."
                )
    if include_embeddings and (0, 0) not in pairs:
        pairs = [(0, 0), *pairs]
    if len({s for s, _ in pairs}) != len(pairs):
        raise ValueError(f"layer_mapping {pairs} maps one student layer twice; use each student layer once.")
    return pairs


def _strategy_pairs(
    strategy: str,
    student_layers: int,
    teacher_layers: int,
    student_teacher_layers: Sequence[int] | None,
) -> LayerPairs:
    if strategy == "uniform":
        if teacher_layers < student_layers:
            raise ValueError(
                f"layer_mapping='uniform' needs a teacher at least as deep as the student "
                f"(teacher {teacher_layers}, student {student_layers}); give explicit pairs instead."
            )
        step = teacher_layers // student_layers
        return [(i + 1, (i + 1) * step) for i in range(student_layers)]
    if strategy == "pkd_skip":
        if student_layers < 2:
            raise ValueError("layer_mapping='pkd_skip' needs a student of 2 or more layers (it leaves out the last).")
        return _strategy_pairs("uniform", student_layers, teacher_layers, None)[:-1]
    if strategy == "last":
        return [(student_layers, teacher_layers)]
    if strategy == "skip":
        if student_teacher_layers is None:
            raise ValueError(
                "layer_mapping='skip' needs to know which teacher layers the student was copied from, "
                "but the student config has no `hfkd_teacher_layers`; build the student with "
                "hfkd.create_student or give explicit pairs."
            )
        if len(student_teacher_layers) != student_layers:
            raise ValueError(
                f"student config lists {len(student_teacher_layers)} source layers "
                f"(hfkd_teacher_layers={list(student_teacher_layers)}) for {student_layers} layers."
            )
        if max(student_teacher_layers) >= teacher_layers:
            raise ValueError(
                f"hfkd_teacher_layers={list(student_teacher_layers)} names a layer the "
                f"{teacher_layers}-layer teacher does not have."
            )
        return [(i + 1, t + 1) for i, t in enumerate(student_teacher_layers)]
    raise ValueError(f"unknown layer_mapping strategy {strategy!r}; use 'uniform', 'pkd_skip', 'last' or 'skip'.")
