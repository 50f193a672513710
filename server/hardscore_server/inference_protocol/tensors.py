"""Tensors of the Open Inference Protocol: input tensors read into numpy arrays (checked against
their declared datatype and shape, raw or typed contents) and numpy arrays written as output
tensors. Error messages follow Triton's wording."""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hardscore_server.errors import InvalidRequest
from hardscore_server.inference_protocol import grpc_service_pb2 as oip

#: Little-endian numpy dtype of each fixed-size datatype (the raw encoding).
NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
#: The ``InferTensorContents`` field holding each datatype's typed values.
CONTENTS_FIELDS: dict[str, str] = {
    "BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
    "UINT32": "uint_contents", "UINT64": "uint64_contents", "INT8": "int_contents",
    "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}
_ALL_CONTENTS_FIELDS = tuple(dict.fromkeys(CONTENTS_FIELDS.values()))


def shape_text(shape: Sequence[int]) -> str:
    """A shape as Triton prints it in messages: [2,3]."""
    return "[" + ",".join(str(d) for d in shape) + "]"


@dataclass
class InputTensor:
    """One input tensor of a request: its message and its raw bytes (None when typed)."""

    tensor: oip.ModelInferRequest.InferInputTensor
    raw: bytes | None


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
        t = item.tensor
        dtype = NUMPY_DTYPES[t.datatype]
        count = self.element_count(t.name, shape)
        if item.raw is not None:
            expected = count * dtype.itemsize
            if len(item.raw) != expected:
                raise InvalidRequest(
                    f"input byte size mismatch for input '{t.name}' for model '{self.model}'. "
                    f"Expected {expected}, got {len(item.raw)}")
            flat = np.frombuffer(item.raw, dtype=dtype)
        else:
            field = self._typed_field(item)
            values = getattr(t.contents, field)
            if len(values) != count:
                raise InvalidRequest(
                    f"unexpected number of elements in contents.{field} for input '{t.name}' "
                    f"for model '{self.model}'. Expected {count} (shape "
                    f"{shape_text(shape)}), got {len(values)}")
            wide = np.array(values, dtype=np.float64 if dtype.kind == "f" else np.int64)
            if dtype.kind in "iu" and len(wide):
                info = np.iinfo(dtype)
                bad = np.flatnonzero((wide < info.min) | (wide > info.max))
                if len(bad):
                    raise InvalidRequest(
                        f"contents.{field} of input '{t.name}' holds {wide[bad[0]]} at index "
                        f"{bad[0]}, out of range for {t.datatype}")
            flat = wide.astype(dtype)
        return np.array(flat.reshape(shape), dtype=dtype.newbyteorder("="))

    def strings(self, item: InputTensor, shape: Sequence[int]) -> list[bytes]:
        """A BYTES tensor's elements."""
        t = item.tensor
        count = self.element_count(t.name, shape)
        if item.raw is None:
            elements = list(getattr(t.contents, self._typed_field(item)))
        else:
            elements = self._split_raw_bytes(t.name, item.raw)
        if len(elements) != count:
            raise InvalidRequest(
                f"expected {count} string elements for inference input '{t.name}' for model "
                f"'{self.model}' (shape {shape_text(shape)}), got {len(elements)}")
        return elements

    def _split_raw_bytes(self, name: str, raw: bytes) -> list[bytes]:
        """Raw BYTES: each element is a 4-byte little-endian length, then that many bytes."""
        out: list[bytes] = []
        offset = 0
        view = memoryview(raw)
        while offset < len(raw):
            if offset + 4 > len(raw):
                raise InvalidRequest(
                    f"raw data of BYTES input '{name}' is malformed: element {len(out)} at byte "
                    f"{offset} needs a 4-byte length, only {len(raw) - offset} bytes remain")
            (size,) = struct.unpack_from("<I", raw, offset)
            offset += 4
            if offset + size > len(raw):
                raise InvalidRequest(
                    f"raw data of BYTES input '{name}' is malformed: element {len(out)} "
                    f"declares {size} bytes, only {len(raw) - offset} remain")
            out.append(bytes(view[offset:offset + size]))
            offset += size
        return out

    def _typed_field(self, item: InputTensor) -> str:
        """The contents field of the tensor's datatype; refuses data in any other field."""
        t = item.tensor
        field = CONTENTS_FIELDS.get(t.datatype)
        if field is None:
            raise InvalidRequest(
                f"input '{t.name}' of datatype {t.datatype} has no typed contents field in the "
                "protocol; send it in raw_input_contents")
        for other in _ALL_CONTENTS_FIELDS:
            if other != field and len(getattr(t.contents, other)):
                raise InvalidRequest(
                    f"input '{t.name}' has datatype {t.datatype}, whose typed data belongs in "
                    f"contents.{field}, but contents.{other} is set")
        return field


def write_output(
    response: oip.ModelInferResponse, name: str, datatype: str, values: np.ndarray, raw: bool
) -> None:
    """Appends ``values`` as the output tensor ``name`` of ``datatype``: in
    ``raw_output_contents`` when ``raw`` (the request was raw), else in typed contents."""
    array = np.ascontiguousarray(values, dtype=NUMPY_DTYPES[datatype])
    tensor = response.outputs.add(name=name, datatype=datatype, shape=array.shape)
    if raw:
        response.raw_output_contents.append(array.tobytes())
    else:
        getattr(tensor.contents, CONTENTS_FIELDS[datatype]).extend(array.ravel().tolist())
