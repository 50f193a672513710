"""One sample's image -> the model's input: float32 [C, H, W], normalised.

Three entry points share one last step, ``to_model_input``:

- ``decode_image``: an encoded file (JPEG, PNG, WebP, BMP, GIF first frame, TIFF first page).
- ``from_pixels``: a decoded uint8 [H, W] / [H, W, C] image, or a float32 [C, H, W] array that is
  already the model input.
- ``to_model_input``: a PIL image of any mode.

Colour conversion follows what training pipelines get from ``Image.open(f).convert("RGB")``:

- Alpha (RGBA, LA, P with transparency) is dropped exactly as ``Image.convert`` drops it: the
  stored colour of each pixel is kept, whatever its alpha. This equals compositing onto black only
  where transparent pixels store black.
- 16-bit images (I;16, I;16B, ...) keep their high byte (``v >> 8``; 257 * k -> k, 65535 -> 255),
  which is also how Pillow decodes 16-bit RGB / RGBA PNGs, so 16-bit grey and colour agree.
- 32-bit images (I, F) are on the 0..255 scale and clipped, as ``Image.convert("L")`` does; F must
  be finite.
- Other modes (1, L, P, LA, RGB, RGBA, CMYK, YCbCr, ...) use ``Image.convert`` to "L" (ITU-R 601-2
  luma) when the model takes 1 channel, else to "RGB" (grey replicated). ICC profiles are ignored.
- The EXIF orientation tag is applied (``ImageOps.exif_transpose``) before anything else.

Every function is pure and thread-safe, and for bad input raises ``SampleError`` only.

Pillow settings, set once at import (process-wide):

- ``ImageFile.LOAD_TRUNCATED_IMAGES = False`` (Pillow's default, made explicit): a truncated file
  is an error, never an image padded with grey.
- ``Image.MAX_IMAGE_PIXELS`` is left at Pillow's default (about 89.5 M pixels). The limit that
  applies is ``InputSpec.max_image_pixels``, checked on the header size before any pixel is
  decoded; Pillow's own guard (a warning above MAX_IMAGE_PIXELS, an error above twice it) stays
  as a backstop, and its error is reported as reason "size" too.
- Only the formats the protocol names are opened (``ALLOWED_FORMATS``); plugins such as EPS,
  which runs Ghostscript, are never tried.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFile, ImageOps

__all__ = [
    "ALLOWED_FORMATS",
    "REASONS",
    "RESIZE_MODES",
    "InputSpec",
    "SampleError",
    "decode_image",
    "encode_png",
    "from_pixels",
    "to_model_input",
]

Float32Array = npt.NDArray[np.float32]

ImageFile.LOAD_TRUNCATED_IMAGES = False
Image.init()

#: Pillow format names tried by ``decode_image``. Multi-picture JPEGs from cameras (MPO) open
#: through the JPEG entry; their first picture is used.
ALLOWED_FORMATS: Final[tuple[str, ...]] = tuple(
    f for f in ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF") if f in Image.OPEN
)
_FORMAT_NAMES: Final = "JPEG, PNG, WebP, BMP, GIF or TIFF"

#: ``InputSpec.resize`` values.
RESIZE_MODES: Final[tuple[str, ...]] = ("resize", "resize_shorter_center_crop")

#: ``SampleError.reason`` values.
REASONS: Final[frozenset[str]] = frozenset({"decode", "shape", "dtype", "value", "size", "empty"})

_PIXEL_CHANNELS: Final[dict[int, str]] = {1: "L", 3: "RGB", 4: "RGBA"}


@dataclass(frozen=True)
class InputSpec:
    """What the model takes as input.

    channels: 1 or 3. height, width: pixels, >= 1. mean, std: one value per channel on the
    0..1 scale (std > 0). resize: "resize" (bilinear to exactly height x width) or
    "resize_shorter_center_crop" (shorter side bilinear to round(max(height, width) * 256 / 224),
    then center crop, as torchvision's ImageNet eval transform). max_image_pixels: decoded
    images with more pixels (width * height) are refused with reason "size".

    Raises ValueError on construction when inconsistent (a configuration error, not a sample's).
    """

    channels: int
    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: str
    max_image_pixels: int = 50_000_000

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"InputSpec.channels must be 1 or 3, got {self.channels}")
        if self.height < 1 or self.width < 1:
            raise ValueError(f"InputSpec size must be >= 1, got {self.height}x{self.width}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(
                f"InputSpec.mean and .std need {self.channels} values each, got "
                f"{len(self.mean)} and {len(self.std)}"
            )
        if not all(math.isfinite(m) for m in self.mean):
            raise ValueError(f"InputSpec.mean must be finite, got {self.mean}")
        if not all(math.isfinite(s) and s > 0 for s in self.std):
            raise ValueError(f"InputSpec.std must be finite and > 0, got {self.std}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"InputSpec.resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if self.max_image_pixels < 1:
            raise ValueError(
                f"InputSpec.max_image_pixels must be >= 1, got {self.max_image_pixels}"
            )


class SampleError(Exception):
    """One sample could not be used; the others of its request still are.

    reason: a short token, one of "decode", "shape", "dtype", "value", "size", "empty".
    message: precise and human readable, naming what was expected and what was got.
    """

    reason: str
    message: str

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(reason, message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


def decode_image(data: bytes, spec: InputSpec) -> Float32Array:
    """Encoded image file bytes -> float32 [spec.channels, spec.height, spec.width], normalised.

    Reasons: "empty" (no bytes, or a 0-pixel image), "decode" (not a supported image, truncated,
    corrupt), "size" (more than spec.max_image_pixels pixels; checked before decoding pixels),
    "value" (a float image with NaN or infinity), "dtype" (data not bytes-like).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise SampleError("dtype", f"image: expected bytes, got {type(data).__name__}")
    size = len(data) if not isinstance(data, memoryview) else data.nbytes
    if size == 0:
        raise SampleError("empty", "image: 0 bytes")
    try:
        with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as image:
            _check_size(image.size, spec, f"image ({image.format})")
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
            return to_model_input(image, spec)
    except SampleError:
        raise
    except Image.UnidentifiedImageError:
        head = bytes(data[:8]).hex()
        raise SampleError(
            "decode",
            f"image: cannot identify image file ({size} bytes starting 0x{head}); "
            f"expected {_FORMAT_NAMES}",
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise SampleError("size", f"image: {e}") from None
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, struct.error, ...
        raise SampleError("decode", f"image: cannot decode: {type(e).__name__}: {e}") from None


def header_pixels(data: bytes) -> int | None:
    """Width x height read from an encoded image's header (no pixel is decoded); None when
    the bytes are not a readable image of an allowed format."""
    try:
        with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as image:
            return int(image.width) * int(image.height)
    except Exception:  # any unreadable input: the caller decodes it properly later
        return None


def from_pixels(pixels: np.ndarray, spec: InputSpec) -> Float32Array:
    """A decoded array -> float32 [spec.channels, spec.height, spec.width], normalised.

    uint8 [H, W] or [H, W, C] with C in {1, 3, 4} (0..255) goes through Pillow exactly as a
    decoded file does, so it gives the same result as the same pixels sent as PNG.
    float32 [spec.channels, spec.height, spec.width] is already the model input: returned as is
    (C-contiguous, native byte order) after checking every value is finite.
    Reasons: "dtype", "shape", "value" (non-finite), "empty" (H or W is 0), "size".
    """
    if not isinstance(pixels, np.ndarray):
        raise SampleError("dtype", f"pixels: expected a numpy array, got {type(pixels).__name__}")
    if pixels.dtype == np.uint8:
        image = _uint8_image(pixels)
        _check_size(image.size, spec, "pixels")
        return to_model_input(image, spec)
    if pixels.dtype.kind == "f" and pixels.dtype.itemsize == 4:
        expected = (spec.channels, spec.height, spec.width)
        if pixels.shape != expected:
            raise SampleError(
                "shape",
                f"pixels: float32 tensor must be [C, H, W] = {list(expected)} (already resized "
                f"and normalised), got shape {list(pixels.shape)}",
            )
        out = np.ascontiguousarray(pixels, dtype=np.float32)
        finite = np.isfinite(out)
        if not finite.all():
            bad = np.argwhere(~finite)
            n_nan = int(np.isnan(out).sum())
            raise SampleError(
                "value",
                f"pixels: float32 tensor must be finite, got {n_nan} NaN and "
                f"{len(bad) - n_nan} infinite values (first at {bad[0].tolist()})",
            )
        return out
    raise SampleError(
        "dtype",
        f"pixels: dtype must be uint8 (an [H, W, C] image) or float32 (the [C, H, W] model "
        f"input), got {pixels.dtype} with shape {list(pixels.shape)}",
    )


def to_model_input(image: Image.Image, spec: InputSpec) -> Float32Array:
    """A PIL image of any mode -> float32 [spec.channels, spec.height, spec.width], C-contiguous.

    Converts the mode (see the module docstring), resizes per spec.resize with bilinear
    filtering, then computes (v / 255 - mean) / std in float32, as torchvision's ToTensor and
    Normalize do. Reasons: "empty" (0-pixel image), "value" (F image not finite), "decode"
    (a mode that cannot be converted).
    """
    if image.width < 1 or image.height < 1:
        raise SampleError("empty", f"image: {image.width}x{image.height} pixels")
    try:
        image = _convert_mode(image, "L" if spec.channels == 1 else "RGB")
        image = _resize(image, spec)
        values = np.asarray(image, dtype=np.float32)
    except SampleError:
        raise
    except Exception as e:
        raise SampleError("decode", f"image: cannot convert: {type(e).__name__}: {e}") from None
    chw = np.ascontiguousarray(
        values[np.newaxis] if values.ndim == 2 else values.transpose(2, 0, 1)
    )
    chw /= np.float32(255)
    chw -= np.asarray(spec.mean, dtype=np.float32)[:, np.newaxis, np.newaxis]
    chw /= np.asarray(spec.std, dtype=np.float32)[:, np.newaxis, np.newaxis]
    return chw


def encode_png(pixels: np.ndarray) -> bytes:
    """uint8 [H, W] or [H, W, C] with C in {1, 3, 4} (0..255) -> PNG file bytes (L, RGB, RGBA).

    Raises SampleError ("dtype", "shape", "empty") for any other array.
    """
    if not isinstance(pixels, np.ndarray):
        raise SampleError("dtype", f"pixels: expected a numpy array, got {type(pixels).__name__}")
    if pixels.dtype != np.uint8:
        raise SampleError("dtype", f"pixels: PNG needs a uint8 tensor, got {pixels.dtype}")
    buffer = io.BytesIO()
    _uint8_image(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _uint8_image(pixels: np.ndarray) -> Image.Image:
    """uint8 [H, W] or [H, W, C], C in {1, 3, 4} -> PIL image in mode L, RGB or RGBA."""
    if pixels.ndim == 3 and pixels.shape[2] in _PIXEL_CHANNELS:
        channels = pixels.shape[2]
    elif pixels.ndim == 2:
        channels = 1
    else:
        expected = "[H, W, C]" if pixels.ndim == 3 else "[H, W] or [H, W, C]"
        raise SampleError(
            "shape",
            f"pixels: uint8 tensor must be {expected} with C in {{1, 3, 4}}, got shape "
            f"{list(pixels.shape)}",
        )
    height, width = pixels.shape[:2]
    if height == 0 or width == 0:
        raise SampleError("empty", f"pixels: image has shape {list(pixels.shape)}")
    array = np.ascontiguousarray(pixels.reshape(height, width) if channels == 1 else pixels)
    return Image.frombuffer(
        _PIXEL_CHANNELS[channels], (width, height), array, "raw", _PIXEL_CHANNELS[channels], 0, 1
    )


def _check_size(size: tuple[int, int], spec: InputSpec, what: str) -> None:
    """Refuses 0-pixel images ("empty") and those above spec.max_image_pixels ("size")."""
    width, height = size
    if width < 1 or height < 1:
        raise SampleError("empty", f"{what}: {width}x{height} pixels")
    if width * height > spec.max_image_pixels:
        raise SampleError(
            "size",
            f"{what}: {width}x{height} = {width * height} pixels exceeds the limit of "
            f"{spec.max_image_pixels}",
        )


def _convert_mode(image: Image.Image, target: str) -> Image.Image:
    """Any mode -> ``target`` ("L" or "RGB"), as described in the module docstring."""
    mode = image.mode
    if mode == target:
        return image
    if mode.startswith("I;16"):
        high = (np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)
        return _convert_mode(Image.fromarray(high), target)
    if mode == "F":
        values = np.asarray(image)
        if not np.isfinite(values).all():
            raise SampleError(
                "value",
                f"image: float (mode F) image has {int((~np.isfinite(values)).sum())} "
                "NaN or infinite pixels",
            )
    if mode == "P" and "transparency" in image.info:
        # P -> RGB with a per-entry alpha table warns; via RGBA gives the same colours silently.
        image = image.convert("RGBA")
    return image.convert(target)


def _resize(image: Image.Image, spec: InputSpec) -> Image.Image:
    """Resizes (bilinear) and crops ``image`` to spec.width x spec.height per spec.resize."""
    if spec.resize == "resize":
        return image.resize((spec.width, spec.height), Image.Resampling.BILINEAR)
    # torchvision: Resize(round(max(h, w) * 256 / 224)) then CenterCrop((h, w)).
    short_target = round(max(spec.height, spec.width) * 256 / 224)
    width, height = image.size
    if width <= height:
        new_size = (short_target, int(short_target * height / width))
    else:
        new_size = (int(short_target * width / height), short_target)
    if new_size != image.size:
        image = image.resize(new_size, Image.Resampling.BILINEAR)
    top = round((new_size[1] - spec.height) / 2.0)
    left = round((new_size[0] - spec.width) / 2.0)
    return image.crop((left, top, left + spec.width, top + spec.height))
