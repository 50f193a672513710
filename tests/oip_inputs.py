"""Open Inference Protocol inputs for the embedded digits model, shared by the protocol tests
(gRPC, REST, extensions): the model's float32 input and tritonclient's ``InferInput``."""

from __future__ import annotations

from typing import Any

import numpy as np

from hardscore_server.tools.digits import to_model_input

MEAN = STD = (0.5, 0.5, 0.5)
"""The embedded model's per-channel normalisation (its model.json)."""


def model_input(images: np.ndarray) -> np.ndarray:
    """uint8 digits [N, 8, 8] as the served model's FP32 input [N, 3, 32, 32]."""
    return to_model_input(images, MEAN, STD)


def infer_input(module: Any, name: str, array: np.ndarray, datatype: str,
                binary: bool | None = None) -> Any:
    """``module``'s (tritonclient.grpc or tritonclient.http) InferInput holding ``array``;
    ``binary`` (HTTP only): binary tensor data (HTTP's default) or JSON (False)."""
    tensor = module.InferInput(name, list(array.shape), datatype)
    if binary is None:
        tensor.set_data_from_numpy(array)
    else:
        tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor
