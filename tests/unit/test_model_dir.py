"""Model directory format: manifest round trip, validation messages, I/O checks, default model."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from hardscore_server.model.model_dir import (
    DEFAULT_MODEL_DIR,
    MANIFEST_FILE,
    MODEL_FILE,
    ModelDirError,
    ModelManifest,
    check_io,
    load_manifest,
    write_manifest,
)
from hardscore_server.tools.digits import heldout_split, to_model_input

MANIFEST = ModelManifest(
    name="toy",
    version="3",
    class_names=("cat", "dog", "bird"),
    input_channels=3,
    input_height=32,
    input_width=48,
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2471, 0.2435, 0.2616),
    resize="resize_shorter_center_crop",
    temperature=1.5,
    input_name="images",
    output_name="logits",
    random_weights=True,
    provenance={"arch": "resnet50", "checkpoint_sha256": "ab" * 32},
)


def _session(model_dir: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(model_dir / MODEL_FILE), providers=["CPUExecutionProvider"])


def _model_dir(tmp_path: Path, manifest_json: Any | None = None) -> Path:
    """A directory with a placeholder model.onnx and the given manifest (dict or raw text)."""
    d = tmp_path / "model"
    d.mkdir()
    (d / MODEL_FILE).write_bytes(b"not a real model")
    if manifest_json is not None:
        text = manifest_json if isinstance(manifest_json, str) else json.dumps(manifest_json)
        (d / MANIFEST_FILE).write_text(text)
    return d


# --------------------------------------------------------------------------- manifest files


def test_round_trip(tmp_path: Path) -> None:
    d = _model_dir(tmp_path)
    write_manifest(d, MANIFEST)
    assert load_manifest(d) == MANIFEST
    data = json.loads((d / MANIFEST_FILE).read_text())
    assert data["format_version"] == 1
    assert data["input"] == {
        "name": "images",
        "channels": 3,
        "height": 32,
        "width": 48,
        "mean": [0.4914, 0.4822, 0.4465],
        "std": [0.2471, 0.2435, 0.2616],
        "resize": "resize_shorter_center_crop",
    }
    assert data["output"] == {"name": "logits"}
    assert data["provenance"]["arch"] == "resnet50"
    assert MANIFEST.num_classes == 3
    assert MANIFEST.shorter_side == 55  # round(48 * 256 / 224)


def test_optional_fields_default(tmp_path: Path) -> None:
    data = MANIFEST.to_json_dict()
    for key in ("temperature", "random_weights", "provenance"):
        del data[key]
    data["input"]["mean"] = [0, 0, 0]  # JSON integers are accepted as floats
    m = load_manifest(_model_dir(tmp_path, data))
    assert (m.temperature, m.random_weights, m.provenance) == (1.0, False, {})
    assert m.mean == (0.0, 0.0, 0.0)


def test_missing_model_onnx(tmp_path: Path) -> None:
    d = _model_dir(tmp_path, MANIFEST.to_json_dict())
    (d / MODEL_FILE).unlink()
    with pytest.raises(ModelDirError) as exc:
        load_manifest(d)
    assert str(exc.value) == f"model.onnx not found in model directory {d}"


def test_missing_manifest(tmp_path: Path) -> None:
    d = _model_dir(tmp_path)
    with pytest.raises(ModelDirError) as exc:
        load_manifest(d)
    assert str(exc.value) == f"manifest.json not found in model directory {d}"


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelDirError, match="does not exist or is not a directory"):
        load_manifest(tmp_path / "nope")


def test_bad_json(tmp_path: Path) -> None:
    d = _model_dir(tmp_path, '{"format_version": 1,\n  "name": "x" "version": "1"}')
    with pytest.raises(ModelDirError) as exc:
        load_manifest(d)
    assert str(exc.value) == (
        "manifest.json: invalid JSON at line 2 column 15: Expecting ',' delimiter"
    )


def _mutated(path: str, value: Any) -> dict[str, Any]:
    data = MANIFEST.to_json_dict()
    target = data
    keys = path.split(".")
    for key in keys[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value
    return data


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (
            "input.mean",
            [0.5, 0.5],
            "manifest.json: input.mean has 2 values, expected 3 (one per channel)",
        ),
        (
            "input.std",
            [0.5, 0.5, 0.5, 0.5],
            "manifest.json: input.std has 4 values, expected 3 (one per channel)",
        ),
        ("input.std", [0.2, 0.0, 0.2], "manifest.json: input.std[1] must be > 0, got 0.0"),
        ("input.mean", [0.2, "a", 0.2], "manifest.json: input.mean[1] must be a number, got 'a'"),
        ("input.channels", 2, "manifest.json: input.channels must be 1 or 3, got 2"),
        ("input.height", 0, "manifest.json: input.height must be a positive integer, got 0"),
        ("input.width", 32.0, "manifest.json: input.width must be a positive integer, got 32.0"),
        (
            "input.resize",
            "crop",
            "manifest.json: input.resize must be one of 'resize', "
            "'resize_shorter_center_crop', got 'crop'",
        ),
        ("temperature", 0, "manifest.json: temperature must be a finite number > 0, got 0.0"),
        ("temperature", "hot", "manifest.json: temperature must be a number, got 'hot'"),
        ("class_names", ["a"], "manifest.json: class_names has 1 entries, expected at least 2"),
        (
            "class_names",
            ["a", "b", "a"],
            "manifest.json: class_names contains 'a' more than once",
        ),
        (
            "class_names",
            ["a", ""],
            "manifest.json: class_names[1] must be a non-empty string, got ''",
        ),
        ("name", "", "manifest.json: name must be a non-empty string, got ''"),
        ("version", 2, "manifest.json: version must be a non-empty string, got 2"),
        ("output.name", _DELETE, "manifest.json: missing field output.name"),
        ("input.height", _DELETE, "manifest.json: missing field input.height"),
        ("temprature", 1.0, "manifest.json: unknown field temprature"),
        ("random_weights", "yes", "manifest.json: random_weights must be true or false, got 'yes'"),
        (
            "provenance.accuracy",
            0.9,
            "manifest.json: provenance.accuracy must be a string, got 0.9",
        ),
        (
            "format_version",
            2,
            "manifest.json: unsupported format_version 2 (this version of hardscore reads 1)",
        ),
    ],
)
def test_validation_messages(tmp_path: Path, path: str, value: Any, message: str) -> None:
    d = _model_dir(tmp_path, _mutated(path, value))
    with pytest.raises(ModelDirError) as exc:
        load_manifest(d)
    assert str(exc.value) == message


def test_write_manifest_validates(tmp_path: Path) -> None:
    bad = replace(MANIFEST, mean=(0.5, 0.5))
    with pytest.raises(ModelDirError) as exc:
        write_manifest(tmp_path, bad)
    assert str(exc.value) == "manifest.json: input.mean has 2 values, expected 3 (one per channel)"
    assert not (tmp_path / MANIFEST_FILE).exists()


def test_default_model_dir_location() -> None:
    assert DEFAULT_MODEL_DIR.name == "default_model"
    assert DEFAULT_MODEL_DIR.parent.name == "hardscore_server"


# --------------------------------------------------------------------------- check_io


@dataclass
class FakeArg:
    name: str
    shape: list[Any]
    type: str = "tensor(float)"


GOOD_IN = [FakeArg("images", ["batch", 3, 32, 48])]
GOOD_OUT = [FakeArg("logits", ["batch", 3])]


def test_check_io_accepts_dynamic_dims() -> None:
    check_io(MANIFEST, GOOD_IN, GOOD_OUT)
    check_io(MANIFEST, [FakeArg("images", [None, 3, "h", "w"])], [FakeArg("logits", [None, None])])
    # Extra outputs are allowed; only the named one is read.
    check_io(MANIFEST, GOOD_IN, [FakeArg("features", ["batch", 2048]), *GOOD_OUT])


@pytest.mark.parametrize(
    ("inputs", "outputs", "message"),
    [
        (
            [FakeArg("x", ["batch", 3, 32, 48])],
            GOOD_OUT,
            "model.onnx: has no input named 'images' (manifest.json input.name); "
            "its inputs are ['x']",
        ),
        (
            [*GOOD_IN, FakeArg("mask", ["batch"])],
            GOOD_OUT,
            "model.onnx: has 2 inputs ['images', 'mask']; hardscore feeds exactly one ('images')",
        ),
        (
            [FakeArg("images", ["batch", 3, 32, 48], "tensor(uint8)")],
            GOOD_OUT,
            "model.onnx: input 'images' has type tensor(uint8), expected tensor(float) (float32)",
        ),
        (
            [FakeArg("images", ["batch", 32, 48])],
            GOOD_OUT,
            "model.onnx: input 'images' has rank 3 (shape [batch, 32, 48]), "
            "expected 4 (N, C, H, W)",
        ),
        (
            [FakeArg("images", [1, 3, 32, 48])],
            GOOD_OUT,
            "model.onnx: input 'images' has a fixed batch size of 1 (shape [1, 3, 32, 48]); "
            "export it with a dynamic batch axis",
        ),
        (
            [FakeArg("images", ["batch", 1, 32, 48])],
            GOOD_OUT,
            "model.onnx: input 'images' has channels 1 (shape [batch, 1, 32, 48]), but "
            "manifest.json input.channels is 3",
        ),
        (
            [FakeArg("images", ["batch", 3, 32, 32])],
            GOOD_OUT,
            "model.onnx: input 'images' has width 32 (shape [batch, 3, 32, 32]), but "
            "manifest.json input.width is 48",
        ),
        (
            GOOD_IN,
            [FakeArg("output", ["batch", 3])],
            "model.onnx: has no output named 'logits' (manifest.json output.name); "
            "its outputs are ['output']",
        ),
        (
            GOOD_IN,
            [FakeArg("logits", ["batch", 3, 1, 1])],
            "model.onnx: output 'logits' has rank 4 (shape [batch, 3, 1, 1]), "
            "expected 2 (N, classes)",
        ),
        (
            GOOD_IN,
            [FakeArg("logits", ["batch", 1000])],
            "model.onnx: output 'logits' has 1000 classes, but manifest.json class_names has "
            "3 entries",
        ),
    ],
)
def test_check_io_errors(inputs: list[FakeArg], outputs: list[FakeArg], message: str) -> None:
    with pytest.raises(ModelDirError) as exc:
        check_io(MANIFEST, inputs, outputs)
    assert str(exc.value) == message


def _copy_default(tmp_path: Path) -> Path:
    d = tmp_path / "copy"
    shutil.copytree(DEFAULT_MODEL_DIR, d)
    return d


def test_class_count_mismatch_real_session(tmp_path: Path) -> None:
    d = _copy_default(tmp_path)
    m = load_manifest(d)
    write_manifest(d, replace(m, class_names=(*m.class_names, "10")))
    with pytest.raises(ModelDirError) as exc:
        sess = _session(d)
        check_io(load_manifest(d), sess.get_inputs(), sess.get_outputs())
    assert str(exc.value) == (
        "model.onnx: output 'logits' has 10 classes, but manifest.json class_names has 11 entries"
    )


def test_input_size_mismatch_real_session(tmp_path: Path) -> None:
    d = _copy_default(tmp_path)
    write_manifest(d, replace(load_manifest(d), input_height=28))
    sess = _session(d)
    with pytest.raises(ModelDirError) as exc:
        check_io(load_manifest(d), sess.get_inputs(), sess.get_outputs())
    assert str(exc.value) == (
        "model.onnx: input 'images' has height 32 (shape [batch, 3, 32, 32]), but "
        "manifest.json input.height is 28"
    )


# --------------------------------------------------------------------------- default model


def _preprocess_like_server(images: np.ndarray, m: ModelManifest) -> np.ndarray:
    """The server's "resize" rule spelled out: gray image -> RGB -> bilinear resize -> normalise."""
    out = []
    for img in images:
        rgb = Image.fromarray(img).convert("RGB")
        rgb = rgb.resize((m.input_width, m.input_height), Image.Resampling.BILINEAR)
        scaled = np.asarray(rgb, dtype=np.float32) / np.float32(255.0)
        mean = np.asarray(m.mean, dtype=np.float32)
        std = np.asarray(m.std, dtype=np.float32)
        out.append(((scaled - mean) / std).transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


def test_default_model_loads_and_classifies_heldout_digits() -> None:
    m = load_manifest(DEFAULT_MODEL_DIR)
    assert m.name == "digits-resnet"
    assert m.class_names == tuple(str(d) for d in range(10))
    assert (m.input_channels, m.input_height, m.input_width, m.resize) == (3, 32, 32, "resize")
    assert not m.random_weights
    assert (DEFAULT_MODEL_DIR / MODEL_FILE).stat().st_size < 500_000

    sess = _session(DEFAULT_MODEL_DIR)
    check_io(m, sess.get_inputs(), sess.get_outputs())

    x_train, y_train, x_test, y_test = heldout_split()
    assert x_test.shape == (540, 8, 8) and x_test.dtype == np.uint8
    assert x_train.shape == (1257, 8, 8) and int(x_train.max()) == 255
    assert len(y_train) == 1257 and len(y_test) == 540
    x = _preprocess_like_server(x_test, m)
    np.testing.assert_array_equal(x, to_model_input(x_test, m.mean, m.std, 32, 32))

    logits = np.concatenate(
        [sess.run([m.output_name], {m.input_name: b})[0] for b in np.array_split(x, 4)]
    )
    assert logits.shape == (540, 10)
    accuracy = float(np.mean(logits.argmax(axis=1) == y_test))
    assert accuracy >= 0.95
    assert abs(accuracy - float(m.provenance["heldout_accuracy"])) < 1e-3


# -- the embedding output ------------------------------------------------------------------------


def _default_json() -> dict[str, Any]:
    return dict(json.loads((DEFAULT_MODEL_DIR / MANIFEST_FILE).read_text()))


def test_the_default_model_has_a_48_wide_embedding_output() -> None:
    m = load_manifest(DEFAULT_MODEL_DIR)
    assert (m.embedding_name, m.embedding_dim, m.has_embedding) == ("embedding", 48, True)
    session = _session(DEFAULT_MODEL_DIR)
    check_io(m, session.get_inputs(), session.get_outputs())
    assert m.to_json_dict()["embedding"] == {"name": "embedding", "dim": 48}


def test_a_manifest_without_embedding_is_valid_and_means_none(tmp_path: Path) -> None:
    data = _default_json()
    del data["embedding"]
    m = load_manifest(_model_dir(tmp_path, data))
    assert (m.embedding_name, m.embedding_dim, m.has_embedding) == (None, 0, False)
    assert "embedding" not in m.to_json_dict()
    session = _session(DEFAULT_MODEL_DIR)  # a graph output the manifest does not name: fine
    check_io(m, session.get_inputs(), session.get_outputs())


@pytest.mark.parametrize(("embedding", "message"), [
    ({"name": "embedding"}, "missing field embedding.dim"),
    ({"name": "embedding", "dim": 48, "x": 1}, "unknown field embedding.x"),
    ({"name": "", "dim": 48}, "embedding.name must be a non-empty string, got ''"),
    ({"name": "logits", "dim": 48}, "embedding.name 'logits' must differ"),
    ({"name": "embedding", "dim": 0}, "embedding.dim must be a positive integer, got 0"),
    ({"name": "embedding", "dim": 4.5}, "embedding.dim must be a positive integer, got 4.5"),
    ([1], "embedding must be a JSON object, got list"),
])
def test_embedding_key_is_validated(tmp_path: Path, embedding: Any, message: str) -> None:
    data = _default_json()
    data["embedding"] = embedding
    with pytest.raises(ModelDirError) as exc:
        load_manifest(_model_dir(tmp_path, data))
    assert message in str(exc.value)


@pytest.mark.parametrize(("name", "dim", "message"), [
    ("features", 48, "has no output named 'features' (manifest.json embedding.name)"),
    ("embedding", 64, "has shape [batch, 48], but manifest.json embedding.dim is 64"),
])
def test_check_io_checks_the_embedding_output(name: str, dim: int, message: str) -> None:
    m = replace(load_manifest(DEFAULT_MODEL_DIR), embedding_name=name, embedding_dim=dim)
    session = _session(DEFAULT_MODEL_DIR)
    with pytest.raises(ModelDirError) as exc:
        check_io(m, session.get_inputs(), session.get_outputs())
    assert message in str(exc.value)
