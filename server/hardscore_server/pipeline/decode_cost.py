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

Before Pillow sees a file, ``structure_bytes`` walks its structure with ``struct`` alone
(lengths and types, jumping over bodies): Pillow parses each PNG chunk, JPEG marker, GIF
sub-block and TIFF strip in Python, and keeps a copy of some, so a 60 MB PNG of 5,000,000 empty
chunks, 4 MiB by its header, took ~10 s of CPU and ~540 MiB to read the header alone, and as
much again to decode. A file with more pieces than the limits below is a "size" SampleError and
never reaches Pillow; otherwise what Pillow keeps while parsing (``structure_bytes``) is added
to the estimate. The walk does a bounded amount of work: it stops at the first limit passed,
and it inflates nothing.
"""

from __future__ import annotations

import io
import re
import struct
from dataclasses import dataclass
from typing import Final

import numpy as np
from PIL import Image, JpegImagePlugin, PngImagePlugin

from hardscore_server.pipeline.preprocess import ALLOWED_FORMATS, InputSpec, SampleError

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
    """The decode cost of encoded image ``data`` read from its header (no pixel decoded), what
    Pillow keeps of its structure included (``structure_bytes``, walked first).

    Bytes Pillow cannot read as an allowed format cost only ``SLACK_BYTES`` (and what it keeps
    of their structure): decoding them fails at the same header, before any pixel. Raises
    SampleError ("size") for a file whose structure exceeds the limits (``structure_bytes``):
    Pillow never opens it.
    """
    kept = structure_bytes(data)
    try:
        with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as image:
            width, height = (int(v) for v in image.size)
            mode = image.mode
            pixels = width * height
            transposed = _may_transpose(image, data)
            cost = pixels_cost(width, height, mode, spec, _decoder_bytes(image, pixels),
                               transposed)
            return DecodeCost(cost + int(kept * MARGIN),
                              f"{image.format} {width}x{height} {mode}", pixels)
    except Exception:  # not an image Pillow reads: decode_image reports it
        return DecodeCost(SLACK_BYTES + int(kept * MARGIN), "unreadable", 0)


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


# -- structure: what Pillow walks in Python before (and, for PNG, after) the pixels ------------

MAX_CHUNKS: Final = 10_000
"""At most this many PNG chunks besides image data (anywhere in the file: Pillow parses those
after the pixels too), JPEG markers before the scan, and TIFF tags in the first directory.
Pillow parses each in Python (~2 us) and keeps a copy of PNG private chunks and JPEG APPn/COM
segments."""

MAX_BLOCKS: Final = 100_000
"""At most this many PNG image-data chunks (IDAT, DDAT, fdAT; encoders write 8-64 KiB each), GIF
sub-blocks before the first frame (up to 255 bytes each), and values of one numeric TIFF tag
(strip and tile offsets included): Pillow handles each in a few Python steps (~0.2-2 us) and
keeps a tile per TIFF strip."""

MAX_COMPRESSED_CHUNKS: Final = 64
"""At most this many PNG chunks Pillow inflates (iCCP, zTXt, compressed iTXt), up to
``PngImagePlugin.MAX_TEXT_CHUNK`` (1 MiB) each: 64 MiB of inflating at most."""

MAX_STRAY_BYTES: Final = 1024 * 1024
"""At most this many bytes between JPEG markers or GIF blocks (fill, junk), which Pillow steps
over one at a time (~70 ns each)."""

PNG_PRIVATE_CHUNK_BYTES: Final = 160
"""What Pillow keeps of a PNG private chunk besides its body (bytes; measured ~113)."""

TEXT_ENTRY_BYTES: Final = 256
"""What Pillow keeps of a PNG text chunk or JPEG APPn/COM segment besides its value (bytes;
dictionary and list entries, key; measured ~144)."""

TEXT_BYTES_PER_BYTE: Final = 5
"""Bytes Pillow keeps per byte of a PNG text value: the value as str (up to 4 bytes a character
for iTXt) and, for XMP and "exif" keys, as bytes too."""

GIF_SUB_BLOCK_BYTES: Final = 64
"""What Pillow keeps of a GIF comment sub-block besides its bytes (bytes)."""

TIFF_STRIP_BYTES: Final = 320
"""What Pillow keeps per TIFF strip or tile: its tile tuple, offset and byte count (bytes;
measured ~220)."""

INFLATE_RATIO: Final = 1032
"""Deflate's largest expansion: a compressed PNG chunk inflates to at most this many bytes per
byte (and ``PngImagePlugin.MAX_TEXT_CHUNK``)."""

_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
_PNG_KNOWN: Final = frozenset(
    name[6:].encode("ascii") for name in dir(PngImagePlugin.PngStream)
    if name.startswith("chunk_"))
_PNG_CHUNK_TYPE: Final = re.compile(rb"\w\w\w\w")  # what Pillow accepts as a chunk type
_JPEG_MARKERS: Final = JpegImagePlugin.MARKER
_TIFF_PREFIXES: Final = (b"MM\x00\x2a", b"II\x2a\x00", b"MM\x2a\x00", b"II\x00\x2a",
                         b"MM\x00\x2b", b"II\x2b\x00")
_TIFF_VALUE_BYTES: Final = {3: 2, 4: 4, 5: 8, 6: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4,
                             16: 8, 17: 8, 18: 8}
"""Bytes a value of each numeric TIFF type takes in the file; Pillow unpacks these to tuples."""
_TIFF_STRIP_TAGS: Final = frozenset({273, 324})  # StripOffsets, TileOffsets
_NOT_FF: Final = re.compile(rb"[^\xff]*")
_FF: Final = re.compile(rb"\xff*")
_NOT_GIF_BLOCK: Final = re.compile(rb"[^,!;]*")


def structure_bytes(data: bytes) -> int:
    """Bytes Pillow keeps while it parses the structure of PNG (APNG), JPEG, GIF or TIFF
    ``data`` and holds until the image is closed, walked without Pillow; 0 for other formats.

    Counted: PNG private chunks (body + ``PNG_PRIVATE_CHUNK_BYTES``), text chunks
    (``TEXT_BYTES_PER_BYTE`` x the value, inflated at most ``INFLATE_RATIO`` x or 1 MiB, +
    ``TEXT_ENTRY_BYTES``), iCCP inflated and eXIf; JPEG APPn and COM segments (body +
    ``TEXT_ENTRY_BYTES``); GIF comment sub-blocks before the first frame (twice their bytes +
    ``GIF_SUB_BLOCK_BYTES``); TIFF strips or tiles of the first page (``TIFF_STRIP_BYTES``
    each); and twice the largest piece read whole. Raises SampleError ("size") when the file
    has more pieces than ``MAX_CHUNKS``, ``MAX_BLOCKS``, ``MAX_COMPRESSED_CHUNKS`` or
    ``MAX_STRAY_BYTES`` allow: the walk stops there.
    """
    if data.startswith(_PNG_SIGNATURE):
        return _png_structure(data)
    if data.startswith(b"\xff\xd8\xff"):
        return _jpeg_structure(data)
    if data.startswith((b"GIF87a", b"GIF89a")):
        return _gif_structure(data)
    if data.startswith(_TIFF_PREFIXES):
        return _tiff_structure(data)
    return 0


def _too_many(fmt: str, what: str, limit: int, pos: int, size: int) -> SampleError:
    """The "size" error of a file with more than ``limit`` pieces, found walking up to byte
    ``pos`` of ``size``."""
    return SampleError(
        "size", f"image ({fmt}): over the limit of {limit} {what} (counted up to byte {pos} of "
        f"{size}); Pillow reads each one in Python, so it is not decoded")


def _run_end(run: re.Pattern[bytes], data: bytes, pos: int) -> int:
    """Where the run of bytes ``run`` matches from ``pos`` ends (``run`` matches empty runs)."""
    match = run.match(data, pos)
    return pos if match is None else match.end()


def _inflated(length: int) -> int:
    """The most bytes Pillow inflates a ``length``-byte compressed PNG chunk to."""
    return min(PngImagePlugin.MAX_TEXT_CHUNK, INFLATE_RATIO * length)


def _png_structure(data: bytes) -> int:
    """``structure_bytes`` of a PNG: every chunk up to IEND, in order (Pillow parses the chunks
    after the image data too; an APNG counts every frame's)."""
    size = len(data)
    pos, chunks, blocks, compressed, kept, largest = 8, 0, 0, 0, 0, 0
    while pos + 8 <= size:
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length  # length, type, body, CRC
        if not _PNG_CHUNK_TYPE.match(kind) or kind == b"IEND" or end > size:
            break  # Pillow stops here too (IEND, or a broken file it refuses)
        if kind in (b"IDAT", b"DDAT", b"fdAT"):  # image data: read a block at a time
            blocks += 1
            if blocks > MAX_BLOCKS:
                raise _too_many("PNG", "image-data chunks", MAX_BLOCKS, end, size)
            pos = end
            continue
        chunks += 1
        if chunks > MAX_CHUNKS:
            raise _too_many("PNG", "chunks besides image data", MAX_CHUNKS, end, size)
        largest = max(largest, length)
        body = pos + 8
        if kind in (b"iCCP", b"zTXt") or (kind == b"iTXt" and _itxt_compressed(data, body, end)):
            compressed += 1
            if compressed > MAX_COMPRESSED_CHUNKS:
                raise _too_many("PNG", "compressed chunks", MAX_COMPRESSED_CHUNKS, end, size)
            value = _inflated(length)
        else:
            value = length
        if kind in (b"tEXt", b"zTXt", b"iTXt"):
            kept += TEXT_BYTES_PER_BYTE * value + TEXT_ENTRY_BYTES
        elif kind in (b"iCCP", b"eXIf"):
            kept += value
        elif kind not in _PNG_KNOWN and kind[1:2].islower():  # private: Pillow keeps a copy
            kept += length + PNG_PRIVATE_CHUNK_BYTES
        pos = end
    return kept + 2 * largest


def _itxt_compressed(data: bytes, body: int, end: int) -> bool:
    """Whether the iTXt chunk whose body starts at ``body`` has its compression flag set."""
    keyword_end = data.find(b"\x00", body, end - 4)
    return 0 <= keyword_end < end - 5 and data[keyword_end + 1] != 0


def _jpeg_structure(data: bytes) -> int:
    """``structure_bytes`` of a JPEG: its markers up to the start of scan, walked as Pillow's
    JpegImageFile walks them (libjpeg, in C, reads the rest)."""
    size = len(data)
    pos, markers, stray, kept, largest = 3, 0, 0, 0, 0
    current = 0xFF  # Pillow starts on the third byte's 0xFF
    while True:
        if current != 0xFF:  # junk: stepped over a byte at a time
            end = _run_end(_NOT_FF, data, pos)
            stray += end - pos + 1
            if stray > MAX_STRAY_BYTES:
                raise _too_many("JPEG", "stray bytes", MAX_STRAY_BYTES, end, size)
            if end >= size:
                break
            pos, current = end + 1, 0xFF
            continue
        if pos >= size:
            break
        marker = 0xFF00 | data[pos]
        pos += 1
        if marker in _JPEG_MARKERS:
            markers += 1
            if markers > MAX_CHUNKS:
                raise _too_many("JPEG", "markers", MAX_CHUNKS, pos, size)
            if _JPEG_MARKERS[marker][2] is not None:  # a segment: its length, then its body
                if pos + 2 > size:
                    break
                length = max(0, int.from_bytes(data[pos:pos + 2], "big") - 2)
                largest = max(largest, length)
                if 0xFFE0 <= marker <= 0xFFEF or marker == 0xFFFE:  # APPn, COM: kept
                    kept += length + TEXT_ENTRY_BYTES
                pos += 2 + length
            if marker == 0xFFDA or pos >= size:  # start of scan
                break
            current = data[pos]
            pos += 1
        elif marker == 0xFFFF:  # fill bytes: stepped over a byte at a time
            end = _run_end(_FF, data, pos)
            stray += end - pos + 1
            if stray > MAX_STRAY_BYTES:
                raise _too_many("JPEG", "stray bytes", MAX_STRAY_BYTES, end, size)
            pos = end  # the byte after the fill is read as the marker
        elif marker == 0xFF00:
            if pos >= size:
                break
            current = data[pos]
            pos += 1
        else:
            break  # Pillow: "no marker found"
    return kept + 2 * largest


def _gif_structure(data: bytes) -> int:
    """``structure_bytes`` of a GIF: the blocks before its first image descriptor, walked as
    Pillow walks them (the first frame's data is read in C; later frames never)."""
    size = len(data)
    if size < 13:
        return 0
    flags = data[10]
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # after the global palette
    blocks, stray, comments, kept = 0, 0, 0, 0
    while pos < size:
        byte = data[pos]
        if byte in b",;":  # the first image, or the end
            break
        if byte != 0x21:  # not an extension: stepped over a byte at a time
            end = _run_end(_NOT_GIF_BLOCK, data, pos)
            stray += end - pos
            if stray > MAX_STRAY_BYTES:
                raise _too_many("GIF", "stray bytes", MAX_STRAY_BYTES, end, size)
            pos = end
            continue
        comment = pos + 1 < size and data[pos + 1] == 0xFE
        pos += 2
        while pos < size and data[pos]:  # sub-blocks, up to a zero length
            blocks += 1
            if blocks > MAX_BLOCKS:
                raise _too_many("GIF", "sub-blocks before the first frame", MAX_BLOCKS, pos,
                                size)
            if comment:
                comments += data[pos]
                kept += GIF_SUB_BLOCK_BYTES
            pos += 1 + data[pos]
        pos += 1
    return kept + 2 * comments


def _tiff_structure(data: bytes) -> int:
    """``structure_bytes`` of a TIFF: the tags of its first directory (the only one Pillow
    reads), their number and the number of values of each numeric one limited."""
    size = len(data)
    endian = "<" if data[:2] == b"II" else ">"
    big = data[2] == 0x2B  # as Pillow tells BigTIFF
    count_format, entry, value_count = ("Q", 20, "Q") if big else ("H", 12, "L")
    if size < (16 if big else 8):
        return 0  # a broken header: Pillow refuses it
    (ifd,) = struct.unpack_from(endian + ("Q" if big else "L"), data, 8 if big else 4)
    first = ifd + struct.calcsize(count_format)
    if first > size:
        return 0  # no directory: Pillow refuses it
    (tags,) = struct.unpack_from(endian + count_format, data, ifd)
    tags = min(tags, (size - first) // entry)  # Pillow stops at the end of the file
    if tags > MAX_CHUNKS:
        raise _too_many("TIFF", "tags in a directory", MAX_CHUNKS, ifd, size)
    strips = 0
    entry_format = endian + "HH" + value_count
    for i in range(tags):
        at = first + i * entry
        tag, kind, values = struct.unpack_from(entry_format, data, at)
        unpacked = _TIFF_VALUE_BYTES.get(kind)  # None: kept as bytes, or a type Pillow skips
        if unpacked is None or values * unpacked > size:
            continue  # Pillow skips values that are not in the file
        if values > MAX_BLOCKS:
            raise _too_many("TIFF", f"values in tag {tag}", MAX_BLOCKS, at, size)
        if tag in _TIFF_STRIP_TAGS:
            strips = max(strips, values)
    return strips * TIFF_STRIP_BYTES
