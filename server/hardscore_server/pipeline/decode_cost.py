"""What decoding one image will cost in memory, estimated from its header before any pixel is
decoded.

Pillow opens a file lazily: ``Image.open`` reads the header (size, mode, format details) and
decodes nothing. From that, ``estimate_image`` adds up, in bytes, everything
``preprocess.decode_image`` holds at once while it turns the file into the model input:

- the decoded first frame: width x height x Pillow's bytes per pixel for its mode (1 for 1/L/P,
  2 for 16-bit I;16*, 4 for everything else: RGB is stored as 4 bytes a pixel);
- the decoder's own buffers: WebP decodes through libwebp's animation decoder (two canvases of
  4 bytes a pixel, plus the frame handed to Python); TIFF strips or tiles may be as large as the
  image; a progressive JPEG keeps every DCT coefficient (2 bytes a sample);
- the EXIF orientation's transposed copy, when the tag asks for one;
- the mode conversion to L or RGB (16-bit images pass through numpy: several 2-byte copies);
- the resize: Pillow resamples horizontally first, so its intermediate image is
  (output width) x (input height) pixels: a 1 x 50,000,000 image resized to 32 x 32 needs
  32 x 50,000,000 x 4 bytes there, whatever its file size;
- 10% on top (``MARGIN``), then a fixed slack (``SLACK_BYTES``) for row buffers and Python
  objects.

Temporaries freed before the next step are still summed, so the estimate is an upper bound on
the measured peak (tests/e2e/test_decode_cost_peaks.py measures the real peak RSS of each
format and checks estimate >= peak and estimate <= ``MAX_OVERESTIMATE`` x peak).

Only the first frame is ever decoded (multi-page TIFF, animated GIF/PNG/WebP): later frames cost
nothing, and the frame count is never read (reading it walks every frame of a GIF or TIFF).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Final

import numpy as np
from PIL import Image

from hardscore_server.pipeline.preprocess import ALLOWED_FORMATS, InputSpec

SLACK_BYTES: Final = 4 * 1024 * 1024
"""Added to every estimate: decoder row buffers, the float32 output, Python objects (bytes)."""

MARGIN: Final = 1.1
"""Every estimate is multiplied by this before the slack is added: allocator rounding."""

MAX_OVERESTIMATE: Final = 3.0
"""The estimate stays within this factor of the measured peak for large images (tested)."""

_ONE_BYTE_MODES: Final = frozenset({"1", "L", "P"})
_ORIENTATION_TAG: Final = 0x0112


@dataclass(frozen=True)
class DecodeCost:
    """An image's estimated decode cost. ``bytes``: peak memory of decoding and preprocessing it
    (>= 0); ``describe``: e.g. "PNG 1x50000000 L", for error messages; ``pixels``: width x height
    (0 when the header could not be read)."""

    bytes: int
    describe: str
    pixels: int


def bytes_per_pixel(mode: str) -> int:
    """Pillow's storage per pixel for ``mode``: 1, 2 (16-bit I;16*) or 4 (bytes)."""
    if mode in _ONE_BYTE_MODES:
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4


def resized_size(width: int, height: int, spec: InputSpec) -> tuple[int, int]:
    """The size ``preprocess`` resizes a width x height image to, before any crop (pixels)."""
    if spec.resize == "resize":
        return spec.width, spec.height
    short_target = round(max(spec.height, spec.width) * 256 / 224)
    if width <= height:
        return short_target, int(short_target * height / width)
    return int(short_target * width / height), short_target


def image_bytes(width: int, height: int, mode: str) -> int:
    """Bytes of one Pillow image: its pixels plus a row pointer (8 bytes) per row."""
    return width * height * bytes_per_pixel(mode) + 8 * height


def _coefficient_bytes(size_in: int, size_out: int) -> int:
    """Bytes of Pillow's bilinear resampling weights along one axis (doubles)."""
    if size_in == size_out:
        return 0
    support = max(1.0, size_in / size_out)
    return 8 * size_out * (2 * int(support + 1) + 1)


def pixels_cost(
    width: int, height: int, mode: str, spec: InputSpec, decoder_bytes: int = 0,
    transposed: bool = False,
) -> int:
    """Peak bytes of preprocessing a decoded width x height image in ``mode`` (a Pillow mode) to
    the model input of ``spec``; ``decoder_bytes`` are the decoder's buffers on top, and
    ``transposed`` adds an EXIF-orientation copy."""
    pixels = width * height
    decoded = image_bytes(width, height, mode)
    target = "L" if spec.channels == 1 else "RGB"
    total = decoded + decoder_bytes + (decoded if transposed else 0)
    if mode != target:
        if mode.startswith("I;16"):
            # at most three 2-byte copies at once (tobytes() and its join, then astype(uint16)
            # and >> 8), then the high bytes as an L image
            total += pixels * (2 + 2 + 2) + image_bytes(width, height, "L")
        elif mode == "F":
            total += pixels * 5  # the finiteness check: a float32 copy and a bool mask
        if mode in ("P", "PA", "LA", "RGBA", "I", "F"):
            total += image_bytes(width, height, "RGBA")  # via RGBA (P) or L (I, F)
        total += image_bytes(width, height, target)
    out_w, out_h = resized_size(width, height, spec)
    if (out_w, out_h) != (width, height):
        # one pass's intermediate image (Pillow takes the smaller order), the weights, the output
        total += min(image_bytes(out_w, height, target), image_bytes(width, out_h, target))
        total += _coefficient_bytes(width, out_w) + _coefficient_bytes(height, out_h)
        total += image_bytes(out_w, out_h, target)
    total += 3 * spec.channels * spec.height * spec.width * 4  # asarray, transpose, normalise
    return int(total * MARGIN) + SLACK_BYTES


def _decoder_bytes(image: Image.Image, pixels: int) -> int:
    """The decoder's buffers beyond the decoded image (bytes), by format."""
    fmt = image.format
    if fmt == "WEBP":  # libwebp's canvas and disposed-frame copy, the frame bytes in Python
        return pixels * 4 * 3
    if fmt == "TIFF":  # one strip or tile may hold the whole image, raw
        return pixels * bytes_per_pixel(image.mode)
    if fmt in ("JPEG", "MPO") and image.info.get("progressive"):
        return pixels * len(image.getbands()) * 2  # DCT coefficients, 2 bytes each
    return 0


def _may_transpose(image: Image.Image, data: bytes) -> bool:
    """Whether decode_image may make an EXIF-orientation copy of ``image``. A PNG's eXIf chunk
    may follow the pixels, and Pillow's getexif() would decode them to find it: any PNG holding
    the chunk's name anywhere counts as transposed (an upper bound, found without decoding)."""
    if image.format == "PNG":
        return b"eXIf" in data
    try:
        return image.getexif().get(_ORIENTATION_TAG, 1) not in (1, None)
    except Exception:  # an unreadable EXIF block: assume the worst
        return True


def estimate_image(data: bytes, spec: InputSpec) -> DecodeCost:
    """The decode cost of encoded image ``data`` read from its header (no pixel decoded).

    Bytes Pillow cannot read as an allowed format cost only ``SLACK_BYTES``: decoding them fails
    at the same header, before any pixel.
    """
    try:
        with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as image:
            width, height = (int(v) for v in image.size)
            mode = image.mode
            pixels = width * height
            transposed = _may_transpose(image, data)
            cost = pixels_cost(width, height, mode, spec, _decoder_bytes(image, pixels),
                               transposed)
            return DecodeCost(cost, f"{image.format} {width}x{height} {mode}", pixels)
    except Exception:  # not an image Pillow reads: decode_image reports it
        return DecodeCost(SLACK_BYTES, "unreadable", 0)


_ARRAY_MODES: Final = {1: "L", 3: "RGB", 4: "RGBA"}


def estimate_array(pixels: np.ndarray, spec: InputSpec) -> DecodeCost:
    """The preprocessing cost of a uint8 [H, W] / [H, W, C] array (Pillow's copy of it
    included); float32 model inputs and malformed arrays cost nothing."""
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3):
        return DecodeCost(0, "array", 0)
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    mode = _ARRAY_MODES.get(channels)
    height, width = pixels.shape[:2]
    if mode is None or height == 0 or width == 0:
        return DecodeCost(0, "array", 0)
    cost = pixels_cost(width, height, mode, spec)
    return DecodeCost(cost, f"pixels {width}x{height} {mode}", width * height)
