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
