"""Tensors of the Open Inference Protocol, transport-neutral: input tensors (raw little-endian
bytes, or typed values from gRPC contents or JSON ``data``) read into numpy arrays, checked
against their declared datatype and shape, and output arrays encoded as raw bytes. Error
messages follow Triton's wording. No protobuf and no HTTP here: the gRPC servicer and the REST
server translate their messages to and from these."""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hardscore_server.pipeline.errors import InvalidRequest

#: Little-endian numpy dtype of each fixed-size datatype (the raw encoding).
NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}


def shape_text(shape: Sequence[int]) -> str:
    """A shape as Triton prints it in messages: [2,3]."""
    return "[" + ",".join(str(d) for d in shape) + "]"


@dataclass
class InputTensor:
    """One input tensor of a request, whatever the transport.

    ``raw`` holds the little-endian bytes (gRPC raw contents, HTTP binary data, shared memory);
    else ``values`` holds the typed values (gRPC contents, JSON ``data``, flat or nested) and
    ``source`` names where they came from, for messages.
    """

    name: str
    datatype: str
    shape: list[int]
    raw: bytes | memoryview | None = None
    values: Any = None
    source: str = "data"
    parameters: Mapping[str, Any] = field(default_factory=dict)


class TensorReader:
    """Reads input tensors' data, checking it against the declared datatype and shape."""

    def __init__(self, model: str) -> None:
        self.model = model

    def element_count(self, name: str, shape: Sequence[int]) -> int:
        if any(d < 0 for d in shape):
            raise InvalidRequest(
                f"invalid shape {shape_text(shape)} for input '{name}' for model "
                f"'{self.model}': dimensions must be >= 0")
        return math.prod(shape)

    def numeric(self, item: InputTensor, shape: Sequence[int]) -> np.ndarray:
        """A fixed-size datatype's values as a native-endian array of ``shape`` (a copy)."""
        dtype = NUMPY_DTYPES[item.datatype]
        count = self.element_count(item.name, shape)
        if item.raw is not None:
            expected = count * dtype.itemsize
            if len(item.raw) != expected:
                raise InvalidRequest(
                    f"input byte size mismatch for input '{item.name}' for model "
                    f"'{self.model}'. Expected {expected}, got {len(item.raw)}")
            flat = np.frombuffer(item.raw, dtype=dtype)
        else:
            flat = self._typed(item, dtype, count, shape)
        return np.array(flat.reshape(shape), dtype=dtype.newbyteorder("="))

    def _typed(self, item: InputTensor, dtype: np.dtype[Any], count: int,
               shape: Sequence[int]) -> np.ndarray:
        """Typed values (flat or nested lists) as a flat array of ``dtype``, range-checked."""
        wide_type = np.float64 if dtype.kind == "f" else np.int64
        values = [] if item.values is None else item.values
        try:
            wide = np.asarray(values, dtype=wide_type).ravel()
        except (TypeError, ValueError, OverflowError):
            raise InvalidRequest(
                f"{item.source} of input '{item.name}' for model '{self.model}' must be "
                f"{'numbers' if dtype.kind == 'f' else 'integers'} (a flat or nested list of "
                f"{item.datatype} values)") from None
        if len(wide) != count:
            raise InvalidRequest(
                f"unexpected number of elements in {item.source} for input '{item.name}' "
                f"for model '{self.model}'. Expected {count} (shape {shape_text(shape)}), "
                f"got {len(wide)}")
        if dtype.kind in "iu" and len(wide):
            info = np.iinfo(dtype)
            bad = np.flatnonzero((wide < info.min) | (wide > info.max))
            if len(bad):
                raise InvalidRequest(
                    f"{item.source} of input '{item.name}' holds {wide[bad[0]]} at index "
                    f"{bad[0]}, out of range for {item.datatype}")
        return wide.astype(dtype)

    def strings(self, item: InputTensor, shape: Sequence[int]) -> list[bytes]:
        """A BYTES tensor's elements (JSON strings are taken as UTF-8)."""
        count = self.element_count(item.name, shape)
        if item.raw is None:
            values = item.values if isinstance(item.values, list) else list(item.values or [])
            elements = [_as_bytes(item, v) for v in _flatten(values)]
        else:
            elements = split_raw_bytes(item.name, item.raw)
        if len(elements) != count:
            raise InvalidRequest(
                f"expected {count} string elements for inference input '{item.name}' for model "
                f"'{self.model}' (shape {shape_text(shape)}), got {len(elements)}")
        return elements


def _flatten(values: Any) -> list[Any]:
    out: list[Any] = []
    stack = [values]
    while stack:  # iterative: a deeply nested JSON list cannot exhaust the C stack
        value = stack.pop()
        if isinstance(value, list):
            stack.extend(reversed(value))
        else:
            out.append(value)
    return out


def _as_bytes(item: InputTensor, value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise InvalidRequest(
        f"{item.source} of BYTES input '{item.name}' must hold strings, got "
        f"{type(value).__name__}")


def split_raw_bytes(name: str, raw: bytes | memoryview) -> list[bytes]:
    """Raw BYTES: each element is a 4-byte little-endian length, then that many bytes."""
    out: list[bytes] = []
    offset = 0
    view = memoryview(raw)
    while offset < len(view):
        if offset + 4 > len(view):
            raise InvalidRequest(
                f"raw data of BYTES input '{name}' is malformed: element {len(out)} at byte "
                f"{offset} needs a 4-byte length, only {len(view) - offset} bytes remain")
        (size,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if offset + size > len(view):
            raise InvalidRequest(
                f"raw data of BYTES input '{name}' is malformed: element {len(out)} "
                f"declares {size} bytes, only {len(view) - offset} remain")
        out.append(bytes(view[offset:offset + size]))
        offset += size
    return out


def output_array(datatype: str, values: np.ndarray) -> np.ndarray:
    """``values`` as a C-contiguous little-endian array of ``datatype`` (the raw encoding)."""
    return np.ascontiguousarray(values, dtype=NUMPY_DTYPES[datatype])
