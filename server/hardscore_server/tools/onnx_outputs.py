"""An existing ONNX classifier's pooled features made its second output, ``embedding``, without
touching a weight or a node: the tensor the final ``Gemm``/``MatMul`` reads (the flattened
pooled features) is renamed ``embedding`` and listed as a graph output float32 [N, D], so the
logits stay bit-identical. Used for the committed default model
(``python server/train_default_model.py --add-embedding``); ``hardscore-export`` writes the
output at export time instead.

onnx is imported inside the functions (the ``export`` extra).
"""

from __future__ import annotations

from typing import Any

from hardscore_server.tools.export_extra import ExportError, import_onnx
from hardscore_server.tools.onnx_export import EMBEDDING_NAME

FLOAT = 1  # onnx.TensorProto.FLOAT


def add_embedding_output(model: Any, logits: str = "logits") -> tuple[Any, int]:
    """A copy of ``model`` (an onnx.ModelProto) whose graph also outputs ``embedding``, the
    input of the ``Gemm`` (or ``MatMul``) node that writes ``logits``; returns it and D.

    Raises :class:`ExportError` when the graph already has that output, or when ``logits`` is
    not written by a Gemm/MatMul whose weight is a 2-D initializer.
    """
    onnx = import_onnx()
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    if any(o.name == EMBEDDING_NAME for o in graph.output):
        raise ExportError(f"the model already has an output named {EMBEDDING_NAME!r}")
    head = next((n for n in graph.node if logits in n.output), None)
    if head is None or head.op_type not in ("Gemm", "MatMul"):
        kind = "no node" if head is None else f"a {head.op_type} node"
        raise ExportError(f"{logits!r} is written by {kind}, not a Gemm or MatMul: cannot "
                          "tell its features")
    features, weight_name = head.input[0], head.input[1]
    weights = {i.name: i for i in graph.initializer}
    weight = weights.get(weight_name)
    if weight is None or len(weight.dims) != 2:
        raise ExportError(f"the {head.op_type} writing {logits!r} has no 2-D weight initializer")
    trans_b = any(a.name == "transB" and a.i for a in head.attribute)
    dim = int(weight.dims[1] if trans_b else weight.dims[0])
    if head.op_type == "MatMul":
        dim = int(weight.dims[0])
    for node in graph.node:
        for field in (node.input, node.output):
            for k, name in enumerate(field):
                if name == features:
                    field[k] = EMBEDDING_NAME
    batch = next((d.dim_param for d in graph.output[0].type.tensor_type.shape.dim[:1]
                  if d.dim_param), "batch")
    graph.output.append(onnx.helper.make_tensor_value_info(EMBEDDING_NAME, FLOAT, [batch, dim]))
    onnx.checker.check_model(out)
    return out, dim
