"""float16 ONNX models with float32 inputs and outputs (``hardscore-export --fp16``).

The conversion turns every float32 tensor of the graph into float16: initializers, ``Constant``
values, ``Cast`` targets, declared value types. Each float32 graph input gets one ``Cast`` to
float16 in front of its consumers, each float32 output one ``Cast`` back to float32 after its
producer, so the model directory keeps its float32 contract (``images`` float32 in, ``logits``
float32 out) and clients and the server see no difference. Arithmetic then runs in float16 on
providers with float16 kernels (CUDA, TensorRT: tensor cores).

onnx is imported inside functions: it is the ``export`` extra, which the server must not need.
"""

from __future__ import annotations

from typing import Any

import numpy as np

FLOAT, FLOAT16 = 1, 10  # onnx.TensorProto.FLOAT / FLOAT16
CAST_SUFFIX = "_fp16"

UNSUPPORTED_OPS = frozenset({
    # Inputs that ONNX requires to be float32 (scales, ROIs) or ops without float16 support.
    "Resize", "Upsample", "RoiAlign", "RandomNormal", "RandomUniform", "RandomNormalLike",
    "RandomUniformLike", "Multinomial", "Loop", "If", "Scan",
})
"""Ops the conversion refuses rather than produce a graph that may not type-check."""


class Fp16Error(ValueError):
    """The graph cannot be converted (an op in UNSUPPORTED_OPS, or nested graphs)."""


def convert_to_float16(model: Any) -> Any:
    """A float16 copy of ``model`` (an onnx.ModelProto) with float32 inputs and outputs.
    Float32 values outside float16's range (|x| > 65504) saturate to +-65504. Raises
    :class:`Fp16Error` for unsupported ops."""
    import onnx
    from onnx import helper

    converted = onnx.ModelProto()
    converted.CopyFrom(model)
    graph = converted.graph
    refused = sorted({n.op_type for n in graph.node if n.op_type in UNSUPPORTED_OPS})
    if refused:
        raise Fp16Error(f"--fp16 cannot convert graphs with {', '.join(refused)}")

    for init in graph.initializer:
        if init.data_type == FLOAT:
            init.CopyFrom(_saturated(init))
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == FLOAT:
                attr.t.CopyFrom(_saturated(attr.t))
        if node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to" and attr.i == FLOAT:
                    attr.i = FLOAT16
    for info in graph.value_info:
        if info.type.tensor_type.elem_type == FLOAT:
            info.type.tensor_type.elem_type = FLOAT16

    casts_in = []
    for graph_input in graph.input:
        if graph_input.type.tensor_type.elem_type != FLOAT:
            continue
        half = graph_input.name + CAST_SUFFIX
        _rename(graph, graph_input.name, half, ("input",))
        casts_in.append(helper.make_node("Cast", [graph_input.name], [half], to=FLOAT16,
                                         name=f"cast_{graph_input.name}_to_fp16"))
    casts_out = []
    for graph_output in graph.output:
        if graph_output.type.tensor_type.elem_type != FLOAT:
            continue
        half = graph_output.name + CAST_SUFFIX
        # the node that writes it, and any that also read it inside the graph
        _rename(graph, graph_output.name, half, ("output", "input"))
        casts_out.append(helper.make_node("Cast", [half], [graph_output.name], to=FLOAT,
                                          name=f"cast_{graph_output.name}_to_fp32"))
    nodes = [*casts_in, *graph.node, *casts_out]
    del graph.node[:]
    graph.node.extend(nodes)
    return converted


def _saturated(tensor: Any) -> Any:
    """float16 copy of a float32 TensorProto, values clipped to float16's finite range."""
    from onnx import numpy_helper

    values = numpy_helper.to_array(tensor).astype(np.float32)
    finite = np.isfinite(values)
    clipped = np.where(finite, np.clip(values, -65504.0, 65504.0), values)
    return numpy_helper.from_array(clipped.astype(np.float16), tensor.name)


def _rename(graph: Any, old: str, new: str, fields: tuple[str, ...]) -> None:
    """Renames tensor ``old`` to ``new`` in the ``fields`` ("input", "output") of every node."""
    for node in graph.node:
        for field in fields:
            names = getattr(node, field)
            for k, name in enumerate(names):
                if name == old:
                    names[k] = new
