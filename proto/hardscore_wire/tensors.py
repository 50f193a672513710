"""Conversion between numpy arrays and the wire ``hardscore.v1.Tensor`` (dtype, shape, bytes).

Bytes are little-endian and row-major, so encoding and decoding are one memory copy each.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from hardscore_wire import scoring_pb2 as pb

_TO_NUMPY: dict[int, np.dtype] = {
    pb.DATA_TYPE_FLOAT32: np.dtype("<f4"),
    pb.DATA_TYPE_FLOAT64: np.dtype("<f8"),
    pb.DATA_TYPE_INT32: np.dtype("<i4"),
    pb.DATA_TYPE_UINT8: np.dtype("u1"),
}
_FROM_NUMPY: dict[str, int] = {dt.str.lstrip("<|"): code for code, dt in _TO_NUMPY.items()}


class TensorError(ValueError):
    """A Tensor message that cannot be read as an array (unknown dtype, shape/bytes mismatch)."""


def dtype_name(code: int) -> str:
    """The enum name of a wire data type code, or the number when it is not a known type."""
    return pb.DataType.Name(code) if code in pb.DataType.values() else str(code)  # type: ignore[arg-type]


def to_tensor(array: npt.ArrayLike, dtype: npt.DTypeLike | None = None) -> pb.Tensor:
    """Encodes ``array`` (cast to ``dtype`` when given) as a new Tensor message."""
    return fill_tensor(pb.Tensor(), array, dtype)


def fill_tensor(
    target: pb.Tensor, array: npt.ArrayLike, dtype: npt.DTypeLike | None = None
) -> pb.Tensor:
    """Writes ``array`` (cast to ``dtype`` when given) into the Tensor message ``target``."""
    arr = np.asarray(array, dtype=dtype)
    key = arr.dtype.newbyteorder("<").str.lstrip("<|")
    if key not in _FROM_NUMPY:
        raise TensorError(f"dtype {arr.dtype} has no wire type; use float32, float64, int32, uint8")
    wire = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
    target.dtype = _FROM_NUMPY[key]  # type: ignore[assignment]
    target.shape[:] = wire.shape
    target.data = wire.tobytes()
    return target


def from_tensor(tensor: pb.Tensor, field: str = "tensor") -> npt.NDArray[np.generic]:
    """Decodes a Tensor message to a read-only numpy array (a view on the message's bytes).

    Raises TensorError naming ``field`` when the dtype is unknown, a dimension is negative, or
    the byte length is not product(shape) * itemsize.
    """
    dtype = _TO_NUMPY.get(tensor.dtype)
    if dtype is None:
        raise TensorError(f"{field}.dtype: unsupported data type {dtype_name(tensor.dtype)}")
    shape = tuple(int(d) for d in tensor.shape)
    if any(d < 0 for d in shape):
        raise TensorError(f"{field}.shape: negative dimension in {list(shape)}")
    expected = math.prod(shape) * dtype.itemsize  # exact: np.prod would wrap around
    if len(tensor.data) != expected:
        raise TensorError(
            f"{field}.data: {len(tensor.data)} bytes, expected {expected} for shape {list(shape)} "
            f"of {np.dtype(dtype).name}"
        )
    try:
        return np.frombuffer(tensor.data, dtype=dtype).reshape(shape)
    except ValueError:  # e.g. [0, 2**40, 2**40]: empty, but too large a shape for numpy
        raise TensorError(f"{field}.shape: {list(shape)} is too large") from None
