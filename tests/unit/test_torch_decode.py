"""The torch JPEG path (jpeg_decode_device=cuda) run on the CPU: its model input equals the
Pillow path's within torch_decode.tolerance, it hands back what it does not take, and it names
what is missing when it cannot run. Every file is generated here (tests/jpeg_samples.py)."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest
from PIL import Image

from hardscore_server.config import ConfigError
from hardscore_server.pipeline.preprocess import InputSpec, SampleError, decode_image
from hardscore_server.pipeline.torch_decode import (
    DECODE_MAX_DIFF_LEVELS,
    RESIZE_DIFF_LEVELS,
    TorchJpegDecoder,
    build_decoder,
    tolerance,
)

from jpeg_samples import jpeg, variety

SPECS = {
    "digits 3x32x32 resize": InputSpec(3, 32, 32, (0.5,) * 3, (0.5,) * 3, "resize"),
    "imagenet 3x224x224 crop": InputSpec(3, 224, 224, (0.485, 0.456, 0.406),
                                         (0.229, 0.224, 0.225), "resize_shorter_center_crop"),
    "grey 1x28x40 resize": InputSpec(1, 28, 40, (0.1307,), (0.3081,), "resize"),
}


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    return variety()


@pytest.mark.parametrize("name", SPECS)
def test_model_input_equals_pillows_within_the_tolerance(name: str, files: dict[str, bytes]
                                                         ) -> None:
    spec = SPECS[name]
    decoder = build_decoder("torch_cpu", spec)
    assert isinstance(decoder, TorchJpegDecoder)
    got = decoder.decode(list(files.values()))  # one batch, as a call's JPEGs
    max_tol, mean_tol = tolerance(spec)
    level = 1 / (255 * min(spec.std))
    worst = 0.0
    for (kind, data), out in zip(files.items(), got, strict=True):
        want = decode_image(data, spec)
        assert out is not None, kind
        assert out.dtype == np.float32 and out.shape == want.shape, kind
        diff = np.abs(out - want)
        assert diff.max() <= max_tol and diff.mean() <= mean_tol, (kind, diff.max(), diff.mean())
        worst = max(worst, float(diff.max()))
    # torchvision's CPU decode is libjpeg-turbo, as Pillow's: only the resize rounds apart
    assert worst <= RESIZE_DIFF_LEVELS * level + 1e-6
    print(f"\n{name}: max |torch - Pillow| {worst:.4f} = {worst / level:.2f} levels "
          f"(tolerance {max_tol:.4f} / mean {mean_tol:.4f})")


def test_the_tolerance_is_stated_in_levels_of_the_model_input() -> None:
    max_tol, mean_tol = tolerance(SPECS["digits 3x32x32 resize"])  # one level = 1/127.5
    assert max_tol == pytest.approx((DECODE_MAX_DIFF_LEVELS + RESIZE_DIFF_LEVELS) / 127.5)
    assert mean_tol == pytest.approx(1.0 / 127.5)


def test_what_the_torch_path_does_not_take_comes_back_for_pillow() -> None:
    spec = SPECS["digits 3x32x32 resize"]
    decoder = build_decoder("torch_cpu", spec)
    assert decoder is not None
    good = jpeg(64, 48)
    png = io.BytesIO()
    Image.new("RGB", (5, 5)).save(png, format="PNG")
    others = {
        "cmyk": jpeg(40, 40, mode="CMYK"),
        "png": png.getvalue(),
        "truncated": good[: len(good) // 2],
        "no end marker": good[:-2],
        "bad header": good[:20] + b"\0" * 200 + good[220:],
        "over the pixel limit": jpeg(300, 200),
        "not bytes start": b"\xff\xd8",
    }
    small = build_decoder("torch_cpu", InputSpec(3, 32, 32, (0.5,) * 3, (0.5,) * 3, "resize",
                                                 max_image_pixels=300 * 200 - 1))
    assert small is not None
    assert small.decode([others.pop("over the pixel limit")]) == [None]
    got = decoder.decode([good, *others.values(), good])
    assert got[0] is not None and got[-1] is not None
    assert dict(zip(others, got[1:-1], strict=True)) == dict.fromkeys(others)
    # the Pillow path then decodes the CMYK file, and gives the others their precise errors
    assert decode_image(others["cmyk"], spec).shape == (3, 32, 32)
    for kind in ("truncated", "no end marker", "bad header", "not bytes start"):
        with pytest.raises(SampleError):
            decode_image(others[kind], spec)


def test_cpu_needs_no_decoder_and_missing_torch_is_named(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    spec = SPECS["digits 3x32x32 resize"]
    assert build_decoder("cpu", spec) is None
    monkeypatch.setitem(sys.modules, "torch", None)  # makes "import torch" raise ImportError
    with pytest.raises(ConfigError, match=r"^jpeg_decode_device=cuda, but torch is not "
                                          r"installed .*use jpeg_decode_device=cpu$"):
        build_decoder("cuda", spec)


def test_cuda_without_a_device_is_refused_naming_why() -> None:
    import torch

    spec = SPECS["digits 3x32x32 resize"]
    if torch.cuda.is_available():  # a GPU host: the decoder works there
        decoder = build_decoder("cuda", spec)
        assert decoder is not None and decoder.device.type == "cuda"
        return
    with pytest.raises(ConfigError) as info:
        build_decoder("cuda", spec)
    message = str(info.value)
    assert message.startswith("jpeg_decode_device=cuda, but torch ")
    assert ("is a CPU-only build" in message) or ("finds no CUDA device" in message)
