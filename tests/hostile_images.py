"""Hostile and large images, generated in the test run (none is committed), and a way to measure
what decoding one really costs.

``png`` writes PNG files directly with zlib (any bit depth and colour type, in one pass over
rows that all look alike), so a 1 x 50,000,000 image costs a second to make, not a decode.
``chunk_bomb_png``, ``jpeg_marker_bomb``, ``gif_comment_bomb`` and ``tiff_strip_bomb`` make small
valid images whose structure has as many pieces as asked (PNG chunks, JPEG segments, GIF
sub-blocks, TIFF strips), each of which Pillow parses in Python.
``measure_peak`` runs ``preprocess.decode_image`` in a fresh interpreter and reads its peak
resident memory from /proc (Linux).
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

_COLOUR_TYPES = {"L": 0, "RGB": 2, "RGBA": 6}


def png_chunk(kind: bytes, body: bytes) -> bytes:
    """One PNG chunk: length, ``kind``, ``body`` and its CRC."""
    return (struct.pack(">I", len(body)) + kind + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))


def png(width: int, height: int, mode: str = "L", bit_depth: int = 8, seed: int = 0) -> bytes:
    """A PNG of width x height in ``mode`` (L, RGB, RGBA) at ``bit_depth`` (8 or 16): every row
    the same short pattern repeated, so it compresses ~1000:1 whatever its size."""
    samples = {"L": 1, "RGB": 3, "RGBA": 4}[mode] * (bit_depth // 8)
    rng = np.random.default_rng(seed)
    period = rng.integers(0, 4, 48, dtype=np.uint8)  # short: zlib's window sees it repeat
    row = b"\x00" + np.resize(period, width * samples).tobytes()
    compressor = zlib.compressobj(9)
    parts = []
    rows_at_once = max(1, (1 << 20) // len(row))
    block = row * rows_at_once
    left = height
    while left:
        n = min(left, rows_at_once)
        parts.append(compressor.compress(block if n == rows_at_once else row * n))
        left -= n
    parts.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, _COLOUR_TYPES[mode], 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", b"".join(parts))
            + png_chunk(b"IEND", b""))


def chunk_bomb_png(n_chunks: int, kind: bytes = b"prVt", after: bool = False) -> bytes:
    """A valid 32 x 32 grey PNG with ``n_chunks`` empty chunks of type ``kind`` (default a
    private ancillary one, which Pillow keeps a copy of) before its IDAT (``after``: between
    IDAT and IEND), CRCs correct: 12 bytes a chunk, so 5,000,000 of them make 60 MB."""
    plain = png(32, 32)
    idat = plain.index(b"IDAT") - 4
    iend = len(plain) - 12
    chunks = png_chunk(kind, b"") * n_chunks
    if after:
        return plain[:iend] + chunks + plain[iend:]
    return plain[:idat] + chunks + plain[idat:]


def jpeg_marker_bomb(n_markers: int) -> bytes:
    """A valid 32 x 32 JPEG with ``n_markers`` empty APP1 segments after its SOI (4 bytes each;
    Pillow keeps every one)."""
    plain = encode(gradient(32, 32), "JPEG")
    return plain[:2] + b"\xff\xe1\x00\x02" * n_markers + plain[2:]


def gif_comment_bomb(n_sub_blocks: int) -> bytes:
    """A valid 32 x 32 GIF with a comment of ``n_sub_blocks`` one-byte sub-blocks before its
    first frame (2 bytes each; Pillow keeps every one)."""
    plain = encode(gradient(32, 32, "L").convert("P"), "GIF")
    flags = plain[10]
    start = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # after the global palette
    return plain[:start] + b"!\xfe" + b"\x01c" * n_sub_blocks + b"\x00" + plain[start:]


def tiff_strip_bomb(n_strips: int) -> bytes:
    """An uncompressed 1 x 2 grey TIFF whose first page lists ``n_strips`` strips (8 bytes each),
    all the same byte: Pillow makes a tile of each when it opens the file."""
    entries = [(256, 3, 1, 1), (257, 3, 1, 2), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, n_strips, 0), (277, 3, 1, 1), (278, 4, 1, 1), (279, 4, n_strips, 0)]
    offsets = 8 + 2 + 12 * len(entries) + 4
    counts = offsets + 4 * n_strips
    pixel = counts + 4 * n_strips
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        if tag == 273:
            value = offsets if n_strips > 1 else pixel
        elif tag == 279:
            value = counts if n_strips > 1 else 1
        ifd += struct.pack("<HHI", tag, kind, count) + (
            struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value))
    return (b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0)
            + struct.pack("<I", pixel) * n_strips + struct.pack("<I", 1) * n_strips + b"\x80")


def slow_pngs(n: int, side: int = 1024) -> list[bytes]:
    """``n`` distinct grey PNGs of ~3 KB that take ~10 ms each to decode and resize: enough of
    them keep a server's decode thread busy for seconds (cancellation, deadline, drain tests)."""
    y, x = np.mgrid[0:side, 0:side]
    out = []
    for k in range(n):
        buffer = io.BytesIO()
        Image.fromarray(((x * 7 + y * 3 + k) % 256).astype(np.uint8)).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out

def gradient(width: int, height: int, mode: str = "RGB") -> Image.Image:
    """A smooth image (cheap to encode losslessly) of width x height in ``mode``."""
    x = (np.arange(width, dtype=np.uint32) * 255 // max(width - 1, 1)).astype(np.uint8)
    y = (np.arange(height, dtype=np.uint32) * 255 // max(height - 1, 1)).astype(np.uint8)
    grey = np.add.outer(y // 2, x // 2).astype(np.uint8)
    image = Image.fromarray(grey)
    return image if mode == "L" else image.convert(mode)


def encode(image: Image.Image | list[Image.Image], fmt: str, **options: object) -> bytes:
    """``image`` saved as ``fmt`` (a list: a multi-page file of those pages)."""
    buffer = io.BytesIO()
    if isinstance(image, list):
        image[0].save(buffer, format=fmt, save_all=True, append_images=image[1:], **options)
    else:
        image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


_MEASURE = """\
import sys
from pathlib import Path
from hardscore_server.pipeline.preprocess import InputSpec, SampleError, decode_image

def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise KeyError(key)

data = Path(sys.argv[1]).read_bytes()
c, h, w, resize = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
spec = InputSpec(channels=c, height=h, width=w, mean=(0.5,) * c, std=(0.5,) * c, resize=resize)
with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')  # resets VmHWM to the current resident size
base = status('VmRSS')
try:
    decode_image(data, spec)
except SampleError:
    pass
print(status('VmHWM') - base)
"""


def measure_peak(data: bytes, tmp: Path, channels: int = 3, height: int = 32, width: int = 32,
                 resize: str = "resize") -> int:
    """Peak resident bytes that decoding ``data`` adds, in a fresh interpreter (Linux only)."""
    path = tmp / "image.bin"
    path.write_bytes(data)
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path), str(channels), str(height), str(width),
         resize],
        capture_output=True, text=True, timeout=120, check=True)
    return int(result.stdout.strip())
