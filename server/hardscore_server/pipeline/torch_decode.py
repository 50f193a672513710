"""JPEG decoding in batches with torchvision (``jpeg_decode_device=cuda``): nvJPEG on the GPU.

``TorchJpegDecoder.decode`` takes the encoded files of one call's batch and returns each one's
model input, float32 [C, H, W], computed as ``preprocess.decode_image`` computes it with Pillow:
EXIF orientation, RGB or (for 1-channel models) Pillow's ITU-R 601-2 luma rounded to whole
levels, bilinear antialiased resize (and center crop) to the model's size, then
(v / 255 - mean) / std. The files are decoded in one ``torchvision.io.decode_jpeg`` call on the
device, then resized one by one there, normalised as one batch and copied to the host once.

A file the torch path does not take comes back as None, and the pipeline decodes it with
Pillow: anything but a plain JPEG (PNG, ..., a multi-picture MPO), a JPEG whose colour space is
not grey or YCbCr/RGB (CMYK, YCCK), one whose header Pillow cannot read or whose size is off
limits (Pillow then gives the exact error), one that does not end with the end-of-image marker
(truncated: Pillow refuses it, where a decoder might pad it), and one that torchvision refuses
(corrupt, a progressive file nvJPEG cannot take). So the setting never fails an image that the
CPU path accepts.

Every tensor step takes the device as a parameter: on ``cpu`` (torchvision's libjpeg decode)
the same code runs on hosts without a GPU, which is how the tests check it. torch is imported
only when a decoder is built: the server imports it only with ``jpeg_decode_device`` other than
cpu.

Agreement with the Pillow path, in model-input units (one 0..255 level is 1 / (255 * std)):
JPEG decoders may round the inverse DCT and the chroma upsampling differently (nvJPEG vs
libjpeg-turbo: ``DECODE_MAX_DIFF_LEVELS`` / ``DECODE_MEAN_DIFF_LEVELS``, the figures
bench/gpu_check.py checks on the GPU), and Pillow rounds its resized image to whole levels
where torch keeps floats (``RESIZE_DIFF_LEVELS`` more); ``tolerance`` gives the sum.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from PIL import Image

from hardscore_server.config import ConfigError
from hardscore_server.pipeline.preprocess import InputSpec

Float32Array = npt.NDArray[np.float32]

DECODE_MAX_DIFF_LEVELS: Final = 8
"""Largest |torch decode - Pillow decode| of one pixel of one file, in 0..255 levels."""
DECODE_MEAN_DIFF_LEVELS: Final = 0.5
"""Largest mean |torch decode - Pillow decode| over one file's pixels, in 0..255 levels."""
RESIZE_DIFF_LEVELS: Final = 1.0
"""What Pillow's rounding of its resized (and luma-converted) image to whole levels adds, at
most, to one value (levels); half of it on the mean."""

BATCH_SIZE: Final = 64
"""Most files in one decode_jpeg call (one pool step of a call decodes one such batch)."""

_JPEG_MAGIC: Final = b"\xff\xd8\xff"
_JPEG_END: Final = b"\xff\xd9"
_ORIENTATION: Final = 0x0112


def tolerance(spec: InputSpec) -> tuple[float, float]:
    """(max, mean) |torch path - Pillow path| allowed in model-input units for ``spec``."""
    level = 1.0 / (255.0 * min(spec.std))
    return ((DECODE_MAX_DIFF_LEVELS + RESIZE_DIFF_LEVELS) * level,
            (DECODE_MEAN_DIFF_LEVELS + RESIZE_DIFF_LEVELS / 2) * level)


def is_jpeg(data: object) -> bool:
    """Whether ``data`` are bytes that start like a JPEG file (the decoder may still refuse)."""
    return isinstance(data, bytes) and data[:3] == _JPEG_MAGIC


def build_decoder(
    setting: str, spec: InputSpec, cuda_device_id: int = 0
) -> TorchJpegDecoder | None:
    """The decoder ``jpeg_decode_device=setting`` asks for: None for cpu (Pillow decodes);
    torchvision on CUDA device ``cuda_device_id`` for cuda; for torch_cpu (tests only, hosts
    without a GPU) the same torch path on the CPU, with torchvision's libjpeg decode.

    Raises ConfigError naming what is missing: torch, torchvision, CUDA in torch's build, a
    CUDA device, or a decode that does not work on the device.
    """
    if setting == "cpu":
        return None
    device = "cpu" if setting == "torch_cpu" else f"cuda:{cuda_device_id}"
    return TorchJpegDecoder(spec, device)


class TorchJpegDecoder:
    """Decodes JPEG files to model input with torchvision on ``device`` ("cpu", "cuda:N")."""

    def __init__(self, spec: InputSpec, device: str) -> None:
        what = f"jpeg_decode_device={'torch_cpu' if device == 'cpu' else 'cuda'}"
        try:
            import torch
        except ImportError as exc:
            raise ConfigError(f"{what}, but torch is not installed ({exc}): install torch and "
                              "torchvision (a CUDA build), or use jpeg_decode_device=cpu") from None
        try:
            import torchvision.io as tvio
        except ImportError as exc:
            raise ConfigError(f"{what}, but torchvision is not installed ({exc}): install the "
                              "torchvision matching torch, or use jpeg_decode_device=cpu") from None
        if device.startswith("cuda"):
            if torch.version.cuda is None:
                raise ConfigError(f"{what}, but torch {torch.__version__} is a CPU-only build "
                                  "(no CUDA): install a CUDA build, or use jpeg_decode_device=cpu")
            if not torch.cuda.is_available():
                raise ConfigError(
                    f"{what}, but torch {torch.__version__} (CUDA {torch.version.cuda}) finds no "
                    "CUDA device: the NVIDIA driver (libcuda.so.1) is missing or no GPU is "
                    "visible; or use jpeg_decode_device=cpu")
            index = int(device.partition(":")[2] or 0)
            if index >= torch.cuda.device_count():
                raise ConfigError(f"{what}, but CUDA device {index} does not exist "
                                  f"({torch.cuda.device_count()} visible)")
        # torchvision 0.29 deprecates its image decoders for TorchCodec, warning on every call
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")
        warnings.filterwarnings("ignore", message=".*decode.*TorchCodec.*")
        self.spec = spec
        self.device = torch.device(device)
        self._torch = torch
        self._decode_jpeg = tvio.decode_jpeg
        self._rgb = tvio.ImageReadMode.RGB
        self._mean = torch.tensor(spec.mean, dtype=torch.float32,
                                  device=self.device).view(1, -1, 1, 1)
        self._std = torch.tensor(spec.std, dtype=torch.float32,
                                 device=self.device).view(1, -1, 1, 1)
        probe = io.BytesIO()
        Image.new("RGB", (16, 16), (200, 30, 90)).save(probe, format="JPEG")
        try:
            out = self.decode([probe.getvalue()])
        except Exception as exc:
            raise ConfigError(f"{what}, but decoding a JPEG on {device} failed: "
                              f"{type(exc).__name__}: {exc}") from None
        if out[0] is None:
            raise ConfigError(f"{what}, but torchvision cannot decode a JPEG on {device}")

    def decode(self, files: Sequence[bytes]) -> list[Float32Array | None]:
        """Each file's model input float32 [C, H, W], or None where the Pillow path must decode
        it (see the module docstring). Thread-safe; blocks until the host has the results."""
        torch = self._torch
        orientations = [self._accepts(data) for data in files]
        todo = [i for i, o in enumerate(orientations) if o is not None]
        out: list[Float32Array | None] = [None] * len(files)
        if not todo:
            return out
        decoded = self._decode_all([files[i] for i in todo])
        kept = [(i, image) for i, image in zip(todo, decoded, strict=True) if image is not None]
        if not kept:
            return out
        with torch.no_grad():
            batch = torch.stack([self._resize(self._orient(image, orientations[i] or 1))
                                 for i, image in kept])
            batch = (batch / 255.0 - self._mean) / self._std
            host = batch.to("cpu").numpy()
        for row, (i, _) in enumerate(kept):
            out[i] = host[row]
        return out

    def _accepts(self, data: bytes) -> int | None:
        """The EXIF orientation (1..8) of a JPEG the torch path takes, else None."""
        if not is_jpeg(data) or not data.endswith(_JPEG_END):
            return None  # a truncated file: Pillow says so (nvJPEG may pad it silently)
        try:
            with Image.open(io.BytesIO(data), formats=("JPEG",)) as image:
                width, height = image.size
                if (image.format != "JPEG" or image.mode not in ("L", "RGB") or width < 1
                        or height < 1 or width * height > self.spec.max_image_pixels):
                    return None
                orientation = image.getexif().get(_ORIENTATION, 1)
        except Exception:  # unreadable header: the Pillow path reports it
            return None
        return orientation if orientation in range(1, 9) else 1

    def _decode_all(self, files: list[bytes]) -> list[Any | None]:
        """uint8 [3, H, W] tensors on the device; None for a file torchvision refuses."""
        tensors = [self._torch.frombuffer(bytearray(data), dtype=self._torch.uint8)
                   for data in files]
        try:
            return list(self._decode_jpeg(tensors, mode=self._rgb, device=self.device))
        except Exception:  # one bad file fails the whole call: find it file by file
            pass
        images: list[Any | None] = []
        for tensor in tensors:
            try:
                images.append(self._decode_jpeg(tensor, mode=self._rgb, device=self.device))
            except Exception:
                images.append(None)
        return images

    def _orient(self, image: Any, orientation: int) -> Any:
        """[C, H, W] turned upright per the EXIF orientation, as ImageOps.exif_transpose."""
        if orientation in (2, 4):  # mirrored left-right / top-bottom
            return image.flip(-1 if orientation == 2 else -2)
        if orientation == 3:
            return image.flip(-1, -2)
        if orientation in (5, 6, 7, 8):
            turned = image.transpose(-1, -2)  # 5: transpose
            if orientation == 6:  # rotate 90 degrees clockwise
                return turned.flip(-1)
            if orientation == 7:  # transverse
                return turned.flip(-1, -2)
            if orientation == 8:  # rotate 90 degrees counter-clockwise
                return turned.flip(-2)
            return turned
        return image

    def _resize(self, image: Any) -> Any:
        """uint8 [3, H, W] -> float32 [C, spec.height, spec.width] on 0..255, as preprocess's
        mode conversion, _resize and crop do with Pillow."""
        torch = self._torch
        spec = self.spec
        x = image.to(torch.float32)
        if spec.channels == 1:  # Pillow's "L": (19595 R + 38470 G + 7471 B + 2^15) >> 16
            weights = torch.tensor([19595.0, 38470.0, 7471.0], device=x.device).view(3, 1, 1)
            x = torch.floor(((x * weights).sum(0, keepdim=True) + 32768.0) / 65536.0)
        height, width = x.shape[-2:]
        if spec.resize == "resize":
            size, crop = (spec.height, spec.width), None
        else:  # as preprocess._resize: shorter side, then the center crop
            short = round(max(spec.height, spec.width) * 256 / 224)
            size = ((int(short * height / width), short) if width <= height
                    else (short, int(short * width / height)))
            crop = (round((size[0] - spec.height) / 2.0), round((size[1] - spec.width) / 2.0))
        if size != (height, width):
            x = torch.nn.functional.interpolate(
                x[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
        if crop is not None:
            top, left = crop
            x = x[:, top:top + spec.height, left:left + spec.width]
        return x
