"""Hostile and large images, generated in the test run (none is committed), and a way to measure
what decoding one really costs.

``png`` writes PNG files directly with zlib (any bit depth and colour type, in one pass over
rows that all look alike), so a 1 x 50,000,000 image costs a second to make, not a decode.
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


def _chunk(kind: bytes, body: bytes) -> bytes:
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
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(parts))
            + _chunk(b"IEND", b""))



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
