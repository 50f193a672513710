"""hardscore-export: ResNet50 export with a dynamic batch axis, checkpoints, parity, refusals."""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from hardscore_server.model.model_dir import (  # noqa: E402
    MANIFEST_FILE,
    MODEL_FILE,
    check_io,
    load_manifest,
)
from hardscore_server.tools.checkpoints import (  # noqa: E402
    apply_state_dict,
    load_state_dict_file,
)
from hardscore_server.tools.export import (  # noqa: E402
    add_export_arguments,
    export_model,
    export_resnet50,
    run_export,
)
from hardscore_server.tools.export_extra import MISSING_EXTRA, ExportError  # noqa: E402
from hardscore_server.tools.torch_models import build_resnet50  # noqa: E402

torch.set_num_threads(2)


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hardscore-export")
    add_export_arguments(parser)
    return parser.parse_args(list(argv))


def _session(model_dir: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(model_dir / MODEL_FILE), providers=["CPUExecutionProvider"])


def test_missing_extra_message() -> None:
    assert MISSING_EXTRA == (
        "hardscore-export needs the 'export' extra: pip install 'hardscore[export]'"
    )


def test_missing_torch_gives_install_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # makes "import torch" raise ImportError
    with pytest.raises(ExportError) as exc:
        export_resnet50(_args("--random-weights", "--out", str(tmp_path / "m")))
    assert str(exc.value) == MISSING_EXTRA


def test_cifar_random_weights_dynamic_batch(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cifar"
    rc = run_export(
        _args("--layout", "cifar", "--random-weights", "--out", str(out), "--seed", "7")
    )
    assert rc == 0
    assert "max abs diff" in capsys.readouterr().out

    m = load_manifest(out)
    assert m.random_weights
    assert (m.input_channels, m.input_height, m.input_width) == (3, 32, 32)
    assert m.mean == (0.4914, 0.4822, 0.4465) and m.std == (0.2471, 0.2435, 0.2616)
    assert m.resize == "resize"
    assert m.class_names == tuple(f"class_{i}" for i in range(10))
    assert m.provenance["layout"] == "cifar"
    assert m.provenance["checkpoint"] == "random"
    assert m.provenance["onnx_opset"] == "17"
    assert float(m.provenance["parity_max_abs_diff"]) < 1e-3
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_FILE, MODEL_FILE]  # no external data

    sess = _session(out)
    check_io(m, sess.get_inputs(), sess.get_outputs())
    batch_dim = sess.get_inputs()[0].shape[0]
    assert not isinstance(batch_dim, int)  # dynamic

    torch.manual_seed(7)
    reference = build_resnet50("cifar", 10).eval()
    rng = np.random.default_rng(1)
    for n in (1, 3):
        x = rng.standard_normal((n, 3, 32, 32)).astype(np.float32)
        got = sess.run(["logits"], {"images": x})[0]
        assert got.shape == (n, 10)
        with torch.no_grad():
            want = reference(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(got, want, atol=1e-3, rtol=0)


def test_module_prefixed_checkpoint(tmp_path: Path) -> None:
    # A PyTorch_CIFAR10-style state dict saved from a DataParallel wrapper ("module." keys),
    # from a model with a different seed than the exporter's and non-trivial BatchNorm stats, so
    # equal logits prove the weights were loaded.
    torch.manual_seed(123)
    source = build_resnet50("cifar", 10)
    with torch.no_grad():
        for module in source.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    source.eval()
    ckpt = tmp_path / "resnet50.pt"
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, ckpt)

    out = tmp_path / "model"
    result = export_resnet50(
        _args(
            "--layout",
            "cifar",
            "--checkpoint",
            str(ckpt),
            "--out",
            str(out),
            "--class-names",
            "airplane,automobile,bird,cat,deer,dog,frog,horse,ship,truck",
        ),
        log=lambda _line: None,
    )
    m = load_manifest(out)
    assert m == result.manifest
    assert not m.random_weights
    assert m.class_names[0] == "airplane" and m.num_classes == 10
    assert m.provenance["checkpoint"] == "resnet50.pt"
    assert m.provenance["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert result.parity_max_abs_diff < 1e-3

    x = np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype(np.float32)
    got = _session(out).run(["logits"], {"images": x})[0]
    with torch.no_grad():
        want = source(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-3, rtol=0)


def test_refuses_without_weights(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "model"
    message = (
        "no weights: pass --checkpoint FILE, or --random-weights to export seeded random weights "
        "for benchmarking (its scores are meaningless)"
    )
    with pytest.raises(ExportError) as exc:
        export_resnet50(_args("--layout", "cifar", "--out", str(out)))
    assert str(exc.value) == message
    assert run_export(_args("--layout", "cifar", "--out", str(out))) == 1
    assert capsys.readouterr().err == f"hardscore-export: error: {message}\n"
    assert not out.exists()


def test_checkpoint_and_random_weights_are_exclusive(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        _args("--checkpoint", "x.pt", "--random-weights", "--out", "o")
    assert "not allowed with argument" in capsys.readouterr().err


def test_cifar_maxpool_option() -> None:
    keep: Any = build_resnet50("cifar", 10)
    identity: Any = build_resnet50("cifar", 10, cifar_maxpool="identity")
    assert isinstance(keep.maxpool, torch.nn.MaxPool2d)
    assert isinstance(identity.maxpool, torch.nn.Identity)
    assert keep.conv1.kernel_size == (3, 3) and keep.conv1.stride == (1, 1)
    assert keep.conv1.bias is None


def Tiny(classes: int = 3) -> Any:
    """A tiny 1-channel classifier with named layers conv, bn, fc."""
    nn = torch.nn
    layers = [
        ("conv", nn.Conv2d(1, 4, 3, padding=1)),
        ("bn", nn.BatchNorm2d(4)),
        ("relu", nn.ReLU()),
        ("pool", nn.AdaptiveAvgPool2d(1)),
        ("flatten", nn.Flatten()),
        ("fc", nn.Linear(4, classes)),
    ]
    return nn.Sequential(OrderedDict(layers))


def test_lightning_checkpoint_keys(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = Tiny()
    ckpt = tmp_path / "epoch=9.ckpt"
    torch.save(
        {"epoch": 9, "state_dict": {f"model.{k}": v for k, v in source.state_dict().items()}},
        ckpt,
    )
    target = Tiny()
    apply_state_dict(target, load_state_dict_file(ckpt))
    for k, v in source.state_dict().items():
        assert torch.equal(target.state_dict()[k], v)


def test_mismatched_checkpoint_is_refused(tmp_path: Path) -> None:
    state = Tiny().state_dict()
    del state["fc.bias"]
    state["head.weight"] = torch.zeros(1)
    with pytest.raises(ExportError) as exc:
        apply_state_dict(Tiny(), state, source="checkpoint c.pt")
    assert str(exc.value) == (
        "checkpoint c.pt does not match the model (missing keys: fc.bias; unexpected keys: "
        "head.weight); check --arch/--layout"
    )
    with pytest.raises(ExportError) as exc:
        apply_state_dict(Tiny(classes=3), Tiny(classes=5).state_dict(), source="checkpoint c.pt")
    assert str(exc.value) == (
        "checkpoint c.pt has tensors whose shapes do not match the model: fc.weight [5, 4] "
        "(model [3, 4]), fc.bias [5] (model [3]); check --num-classes and --layout"
    )


def test_export_in_memory_module(tmp_path: Path) -> None:
    torch.manual_seed(0)
    result = export_model(
        Tiny(),
        tmp_path / "tiny",
        name="tiny",
        version="2",
        class_names=["a", "b", "c"],
        input_size=(8, 8),
        input_channels=1,
        mean=[0.5],
        std=[0.25],
        provenance={"training_script": "none"},
        log=lambda _line: None,
    )
    m = load_manifest(tmp_path / "tiny")
    assert m == result.manifest
    assert m.input_channels == 1 and m.mean == (0.5,)
    assert m.provenance["arch"] == "Sequential" and m.provenance["training_script"] == "none"
    assert result.parity_max_abs_diff < 1e-5

    with pytest.raises(ExportError) as exc:
        export_model(
            Tiny(),
            tmp_path / "bad",
            name="t",
            version="1",
            class_names=["a", "b"],
            input_size=(8, 8),
            input_channels=1,
            mean=[0.5],
            std=[0.25],
        )
    assert str(exc.value) == "the model has 3 outputs but 2 class names were given"
    assert not (tmp_path / "bad").exists()


def _pooled_features(model: Any, x: np.ndarray) -> np.ndarray:
    """torchvision ResNet50's global-average-pooled features [N, 2048], computed layer by
    layer (not through the exporter's hook)."""
    with torch.no_grad():
        t = torch.from_numpy(x)
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4",
                     "avgpool"):
            t = getattr(model, name)(t)
        return torch.flatten(t, 1).numpy()


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_resnet50_exports_its_2048_pooled_features_as_embedding(
        tmp_path: Path, capsys: pytest.CaptureFixture, fp16: bool) -> None:
    out = tmp_path / "r50"
    argv = ["--layout", "cifar", "--random-weights", "--out", str(out), "--seed", "3"]
    assert run_export(_args(*argv, *(["--fp16"] if fp16 else []))) == 0
    printed = capsys.readouterr().out
    assert "parity of the embedding output: max abs diff" in printed
    m = load_manifest(out)
    assert (m.embedding_name, m.embedding_dim) == ("embedding", 2048)
    assert json_manifest(out)["embedding"] == {"name": "embedding", "dim": 2048}
    sess = _session(out)
    check_io(m, sess.get_inputs(), sess.get_outputs())
    assert [(o.name, o.type, o.shape[1]) for o in sess.get_outputs()] == [
        ("logits", "tensor(float)", 10), ("embedding", "tensor(float)", 2048)]

    torch.manual_seed(3)
    reference = build_resnet50("cifar", 10).eval()
    x = np.random.default_rng(2).standard_normal((3, 3, 32, 32)).astype(np.float32)
    logits, embedding = sess.run(["logits", "embedding"], {"images": x})
    want = _pooled_features(reference, x)
    assert embedding.shape == (3, 2048)
    scale = max(1.0, float(np.abs(want).max()))
    if fp16:
        assert "fp16 parity of the embedding output: max abs diff" in printed
        tolerance = float(m.provenance["fp16_embedding_parity_tolerance"])
        assert float(m.provenance["fp16_embedding_parity_max_abs_diff"]) <= tolerance
        assert float(np.abs(embedding - want).max()) <= 2e-2 * scale
    else:
        assert float(m.provenance["embedding_parity_max_abs_diff"]) <= 1e-3 * scale
        np.testing.assert_allclose(embedding, want, atol=1e-3 * scale, rtol=0)
        fc: Any = reference.fc
        with torch.no_grad():
            np.testing.assert_allclose(logits, fc(torch.from_numpy(want)).numpy(),
                                       atol=1e-3, rtol=0)


def json_manifest(model_dir: Path) -> dict[str, Any]:
    import json

    return dict(json.loads((model_dir / MANIFEST_FILE).read_text()))


def test_a_model_without_a_linear_layer_exports_without_embedding(tmp_path: Path) -> None:
    class Pooled(torch.nn.Module):  # type: ignore[name-defined]
        def forward(self, x: Any) -> Any:
            return x.mean(dim=(2, 3))

    lines: list[str] = []
    result = export_model(Pooled(), tmp_path / "p", name="p", version="1",
                          class_names=["a", "b", "c"], input_size=(4, 4), mean=[0.5] * 3,
                          std=[0.25] * 3, log=lines.append)
    assert not result.manifest.has_embedding and result.embedding_parity_max_abs_diff is None
    assert "exporting without the embedding output" in "\n".join(lines)
    assert "embedding" not in json_manifest(tmp_path / "p")
    assert [o.name for o in _session(tmp_path / "p").get_outputs()] == ["logits"]
