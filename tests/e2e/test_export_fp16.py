"""hardscore-export --fp16: a float16 model with float32 inputs and outputs, parity-checked
against the float32 export; served by the model runner; refused for unconvertible graphs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

from hardscore_server.model.model_dir import MODEL_FILE, load_manifest  # noqa: E402
from hardscore_server.model.runner import ModelRunner  # noqa: E402
from hardscore_server.tools.export import (  # noqa: E402
    add_export_arguments,
    export_model,
    run_export,
)
from hardscore_server.tools.export_extra import ExportError  # noqa: E402
from hardscore_server.tools.fp16 import FLOAT, FLOAT16, convert_to_float16  # noqa: E402
from hardscore_server.tools.parity import FP16_TOLERANCE  # noqa: E402

torch.set_num_threads(2)


def small(classes: int = 5) -> Any:
    """A small 3-channel CNN: conv, batch norm, relu, residual add, pooling, linear."""
    nn = torch.nn

    class Small(nn.Module):  # type: ignore[name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8),
                                      nn.ReLU())
            self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                      nn.Linear(8, classes))

        def forward(self, x: Any) -> Any:
            y = self.stem(x)
            return self.head(y + self.block(y))

    torch.manual_seed(0)
    model = small_module = Small()
    with torch.no_grad():  # non-trivial batch-norm statistics
        small_module.stem[1].running_mean.uniform_(-0.5, 0.5)
        small_module.stem[1].running_var.uniform_(0.5, 2.0)
    return model


def export(out: Path, fp16: bool) -> Any:
    return export_model(small(), out, name="small", version="1",
                        class_names=[f"c{i}" for i in range(5)], input_size=(16, 16),
                        mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25], fp16=fp16,
                        log=lambda _line: None)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Any]:
    root = tmp_path_factory.mktemp("fp16")
    export(root / "fp32", fp16=False)
    result = export(root / "fp16", fp16=True)
    return root / "fp32", root / "fp16", result


def test_fp16_model_is_float16_inside_float32_outside(exported: tuple[Path, Path, Any]) -> None:
    fp32_dir, fp16_dir, result = exported
    model = onnx.load(str(fp16_dir / MODEL_FILE))
    onnx.checker.check_model(model, full_check=True)
    kinds = {init.data_type for init in model.graph.initializer
             if init.data_type in (FLOAT, FLOAT16)}
    assert kinds == {FLOAT16}
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [FLOAT]
    # logits and embedding, both float32 outside
    assert [o.name for o in model.graph.output] == ["logits", "embedding"]
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [FLOAT, FLOAT]
    ops = [n.op_type for n in model.graph.node]
    assert ops[0] == "Cast" and ops[-1] == "Cast"
    # Half the weight bytes of the float32 export, same weights to float16 precision.
    weights32 = {i.name: numpy_helper.to_array(i)
                 for i in onnx.load(str(fp32_dir / MODEL_FILE)).graph.initializer}
    weights16 = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert weights16.keys() == weights32.keys()
    for name, w in weights32.items():
        if w.dtype == np.float32:
            assert weights16[name].nbytes * 2 == w.nbytes
            np.testing.assert_array_equal(weights16[name], w.astype(np.float16))

    m = load_manifest(fp16_dir)
    assert m.provenance["precision"] == "float16"
    assert float(m.provenance["fp16_parity_max_abs_diff"]) == pytest.approx(
        result.fp16_parity_max_abs_diff, rel=1e-3)
    assert result.fp16_parity_max_abs_diff <= float(m.provenance["fp16_parity_tolerance"])
    assert "precision" not in load_manifest(fp32_dir).provenance


def test_fp16_embedding_is_parity_checked_and_served(exported: tuple[Path, Path, Any]) -> None:
    """The embedding output (the 8 pooled features of Small) goes through the float16
    conversion and its parity check like the logits: within FP16_TOLERANCE x its scale."""
    fp32_dir, fp16_dir, result = exported
    m = load_manifest(fp16_dir)
    assert (m.embedding_name, m.embedding_dim) == ("embedding", 8)
    assert result.fp16_embedding_parity_max_abs_diff is not None
    assert result.fp16_embedding_parity_max_abs_diff <= float(
        m.provenance["fp16_embedding_parity_tolerance"])
    assert float(m.provenance["embedding_parity_max_abs_diff"]) < 1e-5
    r32 = ModelRunner(fp32_dir, execution_provider="cpu", intra_op_threads=1)
    r16 = ModelRunner(fp16_dir, execution_provider="cpu", intra_op_threads=1, io_binding=True)
    x = np.random.default_rng(8).standard_normal((5, 3, 16, 16)).astype(np.float32)
    _, emb32 = r32.run_with_embedding(0, x)
    logits16, emb16 = r16.run_with_embedding(0, x)
    assert emb16.dtype == np.float32 and emb16.shape == (5, 8)
    scale = max(1.0, float(np.abs(emb32).max()))
    assert float(np.abs(emb16 - emb32).max()) <= FP16_TOLERANCE * scale
    np.testing.assert_array_equal(logits16, r16.run(0, x))  # io_binding: one or both outputs


def test_served_fp16_matches_fp32_within_tolerance(exported: tuple[Path, Path, Any]) -> None:
    fp32_dir, fp16_dir, _ = exported
    r32 = ModelRunner(fp32_dir, execution_provider="cpu", intra_op_threads=1)
    r16 = ModelRunner(fp16_dir, execution_provider="cpu", intra_op_threads=1, io_binding=True)
    x = np.random.default_rng(5).standard_normal((7, 3, 16, 16)).astype(np.float32)
    want, got = r32.run(0, x), r16.run(0, x)
    assert got.dtype == np.float32 and got.shape == (7, 5)
    scale = max(1.0, float(np.abs(want).max()))
    assert float(np.abs(got - want).max()) <= FP16_TOLERANCE * scale
    assert not np.array_equal(got, want), "float16 weights change the logits a little"


def test_float16_arithmetic_stays_within_tolerance(exported: tuple[Path, Path, Any]) -> None:
    """ONNX Runtime's CPU provider computes these ops in float32; the onnx reference
    evaluator runs the graph's float16 ops in float16 (numpy), as CUDA would."""
    fp32_dir, fp16_dir, _ = exported
    model = onnx.load(str(fp16_dir / MODEL_FILE))
    x = np.random.default_rng(6).standard_normal((2, 3, 16, 16)).astype(np.float32)
    outputs: Any = ReferenceEvaluator(model).run(None, {"images": x})
    got = np.asarray(outputs[0])
    session = ort.InferenceSession(str(fp32_dir / MODEL_FILE),
                                   providers=["CPUExecutionProvider"])
    want = session.run(None, {"images": x})[0]
    assert got.dtype == np.float32
    scale = max(1.0, float(np.abs(want).max()))
    assert float(np.abs(got - want).max()) <= FP16_TOLERANCE * scale


def test_large_weights_saturate_instead_of_overflowing() -> None:
    from onnx import helper

    weight = numpy_helper.from_array(np.array([[1e6, -1e6, 0.5]], dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", FLOAT, [1, 1])],
        [helper.make_tensor_value_info("y", FLOAT, [1, 3])], [weight])
    half = convert_to_float16(helper.make_model(graph))
    values = numpy_helper.to_array(half.graph.initializer[0])
    assert values.dtype == np.float16
    assert values.tolist() == [[65504.0, -65504.0, 0.5]]


def test_unconvertible_graph_is_refused_and_nothing_written(tmp_path: Path) -> None:
    nn = torch.nn

    class Upsampling(nn.Module):  # type: ignore[name-defined]
        def forward(self, x: Any) -> Any:
            y = nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")
            return y.mean(dim=(2, 3))

    with pytest.raises(ExportError) as exc:
        export_model(Upsampling(), tmp_path / "up", name="u", version="1",
                     class_names=["a", "b", "c"], input_size=(4, 4), mean=[0.5] * 3,
                     std=[0.25] * 3, fp16=True, log=lambda _line: None)
    assert str(exc.value) == "--fp16 cannot convert graphs with Resize"
    assert not (tmp_path / "up").exists()


def test_cli_fp16_resnet50_cifar(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    parser = argparse.ArgumentParser(prog="hardscore-export")
    add_export_arguments(parser)
    out = tmp_path / "r50"
    rc = run_export(parser.parse_args(
        ["--layout", "cifar", "--random-weights", "--fp16", "--out", str(out)]))
    assert rc == 0
    printed = capsys.readouterr().out
    assert "fp16 parity float16 vs float32 model on ONNX Runtime CPU: max abs diff" in printed
    m = load_manifest(out)
    assert m.provenance["precision"] == "float16"
    assert float(m.provenance["fp16_parity_max_abs_diff"]) <= float(
        m.provenance["fp16_parity_tolerance"])
    session = ort.InferenceSession(str(out / MODEL_FILE), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float)"
    assert session.get_outputs()[0].type == "tensor(float)"
