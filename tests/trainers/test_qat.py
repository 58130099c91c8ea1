"""Quantization-aware distillation: fake int8 equals the runtimes' dynamic int8, gradients pass
straight through, and a QAT run saves (and resumes to) plain fp32 weights."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModelForSequenceClassification, TrainerCallback

from conftest import seq_cls_dataset, seq_cls_pair
from hfkd import DistillationConfig, DistillationTrainer
from hfkd.student.quantization import INT8_SCHEMES, fake_quantize, int8_scheme, onnx_reduce_range, quantized_linears
from tolerance import assert_within, float32_bound


def _linear_and_input(seed: int = 0) -> tuple[nn.Linear, torch.Tensor]:
    torch.manual_seed(seed)
    return nn.Linear(64, 24), torch.randn(3, 5, 64) * 2 + 0.3


def _bound(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """Per output: both sides sum the same rounded products (int32, exact, on the runtime's side, then
    the scales and the bias; fp32 products of dequantised values here), 2 ulps over sum |x||w| + |b|
    (the rounded values are within half a level of x and w, far below their size)."""
    with torch.no_grad():
        magnitudes = x.abs() @ linear.weight.abs().T + linear.bias.abs()
    return float32_bound(magnitudes.unsqueeze(-1), n=x.shape[-1], ulps=2, dim=-1)


def _onnxruntime_int8(tmp_path, nodes: list, inputs: list, output: tuple[str, list], weights: dict,
                      feed: dict[str, np.ndarray]) -> torch.Tensor:
    """Run a one-op ONNX graph after quantize_dynamic as hfkd's export calls it on this machine
    (reduced range without VNNI): the runtime's own int8 result that the fake rounding must match."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = helper.make_graph(
        [helper.make_node(op, ins, outs) for op, ins, outs in nodes], "op",
        [helper.make_tensor_value_info(name, dtype, shape) for name, dtype, shape in inputs],
        [helper.make_tensor_value_info(output[0], TensorProto.FLOAT, output[1])],
        [numpy_helper.from_array(value, name) for name, value in weights.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "fp32.onnx")
    quantize_dynamic(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", per_channel=True, weight_type=QuantType.QInt8,
                     reduce_range=onnx_reduce_range())
    session = ort.InferenceSession(str(tmp_path / "int8.onnx"), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, feed)[0])


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")  # torch.ao's own notices
def test_fake_quant_equals_torch_dynamic_int8() -> None:
    if not hasattr(torch.ao.quantization, "quantize_dynamic"):
        pytest.skip("this torch has no torch.ao.quantization.quantize_dynamic")
    linear, x = _linear_and_input()
    reference = torch.ao.quantization.quantize_dynamic(
        nn.Sequential(copy.deepcopy(linear)), {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig})
    fake = copy.deepcopy(linear)
    fake_quantize(fake, INT8_SCHEMES["torch"])
    with torch.no_grad():
        expected, actual, fp32 = reference(x), fake(x), linear(x)
    bound = _bound(linear, x)
    assert_within(actual, expected, bound)
    assert (fp32 - expected).abs().max() > 20 * bound.max()  # the rounding is visible: the test can fail


def test_fake_quant_equals_onnxruntime_quantize_dynamic(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto

    linear, x = _linear_and_input(1)
    weight, bias = linear.weight.detach().numpy().T.copy(), linear.bias.detach().numpy()
    expected = _onnxruntime_int8(tmp_path, [("MatMul", ["x", "w"], ["xw"]), ("Add", ["xw", "b"], ["y"])],
                                 [("x", TensorProto.FLOAT, [None, None, 64])], ("y", [None, None, 24]),
                                 {"w": weight, "b": bias}, {"x": x.numpy()})
    fake = copy.deepcopy(linear)
    fake_quantize(fake, int8_scheme("onnxruntime"))
    with torch.no_grad():
        actual, fp32 = fake(x), linear(x)
    bound = _bound(linear, x)
    assert_within(actual, expected, bound)
    assert (fp32 - expected).abs().max() > 20 * bound.max()
    assert np.isfinite(expected.numpy()).all()


def test_fake_quant_embeddings_equal_onnxruntime_gather(tmp_path) -> None:
    """ONNX Runtime's quantize_dynamic also rounds embedding tables (every Gather of a weight, uint8,
    one scale per table); the onnxruntime scheme rounds nn.Embedding the same way, the torch one not."""
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto

    torch.manual_seed(2)
    embedding = nn.Embedding(50, 16)
    with torch.no_grad():
        embedding.weight.mul_(0.7).add_(0.1)  # an off-centre range: the zero point matters
    ids = torch.randint(0, 50, (4, 7))
    expected = _onnxruntime_int8(tmp_path, [("Gather", ["table", "ids"], ["y"])],
                                 [("ids", TensorProto.INT64, [None, None])], ("y", [None, None, 16]),
                                 {"table": embedding.weight.detach().numpy()}, {"ids": ids.numpy()})
    fake = copy.deepcopy(embedding)
    fake_quantize(fake, int8_scheme("onnxruntime"))
    with torch.no_grad():
        actual, fp32 = fake(ids), embedding(ids)
    weight = embedding.weight.detach()
    level = float(weight.max().clamp_min(0) - weight.min().clamp_max(0)) / 255
    # Both dequantise (q - zero_point) * scale in float32 from the same integer levels: a few ulps of
    # the value; the scale itself is computed by each side in its own precision (one ulp of it, times
    # at most 255 levels).
    assert_within(actual, expected, 4 * torch.finfo(torch.float32).eps * (expected.abs() + 255 * level))
    assert (fp32 - expected).abs().max() > level / 4  # the rounding is visible: the test can fail
    untouched = copy.deepcopy(embedding)
    fake_quantize(untouched, INT8_SCHEMES["torch"])  # PyTorch's quantize_dynamic keeps embeddings fp32
    assert "forward" not in untouched.__dict__
    fake_quantize(fake, None)
    assert "forward" not in fake.__dict__


def test_gradients_pass_straight_through() -> None:
    linear, x = _linear_and_input()
    linear.double()
    x = x.double().requires_grad_()
    fake_quantize(linear, INT8_SCHEMES["onnxruntime"])
    upstream = torch.randn(3, 5, 24, dtype=torch.float64)
    (linear(x) * upstream).sum().backward()
    # STE: d/dw of the rounded weight is the identity, so the gradients are those of F.linear at the
    # rounded values: dW = g^T x_q, dx = g W_q.
    from hfkd.student.quantization import fake_quantize_activation, fake_quantize_weight

    with torch.no_grad():
        x_q = fake_quantize_activation(x, INT8_SCHEMES["onnxruntime"])
        w_q = fake_quantize_weight(linear.weight, INT8_SCHEMES["onnxruntime"])
    torch.testing.assert_close(linear.weight.grad, upstream.flatten(0, 1).T @ x_q.flatten(0, 1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, upstream @ w_q, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(linear.bias.grad, upstream.sum((0, 1)), rtol=1e-12, atol=1e-12)


class _Spy(TrainerCallback):
    """Which optimizer steps ran with fake-quantised linear layers."""

    def __init__(self) -> None:
        self.quantised_steps: list[int] = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if all("forward" in m.__dict__ for m in quantized_linears(model, skip=("hfkd_projections",))):
            self.quantised_steps.append(state.global_step)


def _qat_args(tmp_path, name: str, **kw) -> DistillationConfig:
    return DistillationConfig(
        output_dir=str(tmp_path / name), report_to=[], use_cpu=True, per_device_train_batch_size=8, max_steps=4,
        learning_rate=1e-3, seed=0, disable_tqdm=True, alpha_kd=1.0, alpha_hidden=1.0, qat_start=0.5,
        save_strategy="steps", save_steps=1, **kw)


def _run(tmp_path, name: str, resume: str | None = None) -> tuple[DistillationTrainer, _Spy]:
    teacher, student = seq_cls_pair(student_hidden=16)
    spy = _Spy()
    trainer = DistillationTrainer(model=student.double(), teacher_model=teacher.double(),
                                  args=_qat_args(tmp_path, name), train_dataset=seq_cls_dataset(32),
                                  callbacks=[spy])
    trainer.train(resume_from_checkpoint=resume)
    return trainer, spy


def test_qat_run_trains_the_end_fake_quantised_and_saves_plain_fp32(tmp_path) -> None:
    trainer, spy = _run(tmp_path, "run")
    assert spy.quantised_steps == [3, 4]  # steps 3 and 4 of 4 (qat_start 0.5: from global step 2 on)
    assert not any("forward" in m.__dict__ for m in trainer.model.modules())  # fp32 again after training
    trainer.save_model()
    card = (tmp_path / "run" / "README.md").read_text(encoding="utf-8")
    assert "| quantization_aware | last 50% of the steps fake-quantised int8 (onnxruntime rounding) |" in card
    saved = load_file(tmp_path / "run" / "model.safetensors")
    assert set(saved) == {k for k in trainer.model.state_dict() if not k.startswith("hfkd_projections")}
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run", dtype=torch.float64)
    ids = torch.tensor(seq_cls_dataset(4)["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, trainer.model.eval()(input_ids=ids).logits,
                                   rtol=0, atol=0)


@pytest.mark.parametrize("checkpoint", ["checkpoint-1", "checkpoint-3"])  # before and after qat_start
def test_resume_across_qat_start_equals_the_uninterrupted_run(tmp_path, checkpoint) -> None:
    full, _ = _run(tmp_path, "full")
    resumed, spy = _run(tmp_path, "resumed", resume=str(tmp_path / "full" / checkpoint))
    assert spy.quantised_steps == [s for s in (3, 4) if s > int(checkpoint.split("-")[1])]
    for (name, expected), actual in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-10, msg=name)


def test_qat_start_is_checked(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"qat_start must be a fraction of the run in \[0, 1\)"):
        DistillationConfig(output_dir=str(tmp_path), qat_start=1.0)
    with pytest.raises(ValueError, match="qat_scheme"):
        DistillationConfig(output_dir=str(tmp_path), qat_start=0.5, qat_scheme="tensorrt")


@pytest.mark.parametrize("vnni", [True, False])
def test_onnxruntime_scheme_follows_the_export_on_this_cpu(monkeypatch, vnni):
    """Without VNNI the export quantizes weights on the reduced range (±64), and QAT rounds the same way."""
    from hfkd.student.quantization import ONNXRUNTIME_REDUCED, fake_quantize_weight

    monkeypatch.setattr(torch.cpu, "_is_vnni_supported", lambda: vnni)
    assert onnx_reduce_range() is (not vnni)
    scheme = int8_scheme("onnxruntime")
    assert scheme is (INT8_SCHEMES["onnxruntime"] if vnni else ONNXRUNTIME_REDUCED)
    assert int8_scheme("torch") is INT8_SCHEMES["torch"]
    weight = torch.linspace(-1.0, 1.0, 301, dtype=torch.float64).view(1, -1)
    levels = torch.unique(fake_quantize_weight(weight, scheme))
    assert len(levels) == (255 if vnni else 129)  # -127..127 or -64..64, max|w| = 1 on the top level
