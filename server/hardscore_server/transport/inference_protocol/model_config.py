"""What the Open Inference Protocol says about the served model: its metadata (inputs and
outputs), its Triton-style configuration, and its statistics, built from the image pipeline's
manifest, batching settings and counters, as the plain JSON-like dicts of Triton's REST API (the
gRPC servicer parses the same dicts into its messages: both transports say the same)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hardscore_server.pipeline.batcher import BatcherStats
from hardscore_server.pipeline.image_pipeline import ImagePipeline

SERVER_NAME = "hardscore"
EXTENSIONS = ("model_configuration", "statistics", "binary_tensor_data", "system_shared_memory",
              "model_repository")
"""Triton protocol extensions served besides the core protocol."""
PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"
LABEL_INPUT = "label"
IMAGE_DATATYPES = ("FP32", "UINT8", "BYTES")
PIXELS_SUFFIX, PIXELS_INPUT = "-pixels", "image_pixels"
"""Model ``<name>-pixels`` takes the UINT8 pixels [N, C, H, W] as its input ``image_pixels``."""
FILES_SUFFIX, FILES_INPUT = "-files", "image_files"
"""Model ``<name>-files`` takes encoded image files [N, 1] (BYTES) as its input ``image_files``."""
LABEL_DATATYPES = ("INT32", "INT64")
_CONFIG_TYPES = {"FP32": "TYPE_FP32", "FP64": "TYPE_FP64", "INT64": "TYPE_INT64",
                 "UINT8": "TYPE_UINT8", "INT32": "TYPE_INT32", "BYTES": "TYPE_STRING"}


@dataclass(frozen=True)
class OutputSpec:
    """One output tensor: name, datatype, per-sample shape (() or (classes,), or (D,) for the
    embedding), needs a label."""

    name: str
    datatype: str
    per_class: bool = False
    needs_label: bool = False
    embedding: bool = False


OUTPUTS: tuple[OutputSpec, ...] = (
    OutputSpec("logits", "FP32", per_class=True),
    OutputSpec("probabilities", "FP64", per_class=True),
    OutputSpec("predicted_class", "INT64"),
    OutputSpec("confidence", "FP64"),
    OutputSpec("margin", "FP64"),
    OutputSpec("hardness", "FP64"),
    OutputSpec("hardness_normalized", "FP64"),
    OutputSpec("mistakenness", "FP64", needs_label=True),
    OutputSpec("mistakenness_confidence", "FP64", needs_label=True),
    OutputSpec("label_issue_score", "FP64", needs_label=True),
    OutputSpec("margin_issue_score", "FP64", needs_label=True),
)
OUTPUTS_BY_NAME = {o.name: o for o in OUTPUTS}
"""The outputs every model has; a request that names none gets these (with labels: all)."""
EMBEDDING_OUTPUT = OutputSpec("embedding", "FP32", embedding=True)
"""The model's embeddings FP32 [N, D], for a model that has them, only when named."""


def model_outputs(pipeline: ImagePipeline) -> tuple[OutputSpec, ...]:
    """Every output of the served model: OUTPUTS, then ``embedding`` when it has one."""
    return (*OUTPUTS, EMBEDDING_OUTPUT) if pipeline.has_embeddings else OUTPUTS


def output_width(pipeline: ImagePipeline, spec: OutputSpec) -> int | None:
    """Values per sample of an output: the class count, the embedding width, or None (one)."""
    if spec.embedding:
        return pipeline.embedding_dim
    return pipeline.manifest.num_classes if spec.per_class else None


def input_dims(pipeline: ImagePipeline) -> list[int]:
    """The model input's per-sample shape [C, H, W]."""
    m = pipeline.manifest
    return [m.input_channels, m.input_height, m.input_width]


@dataclass(frozen=True)
class ImageInput:
    """The image input of one served model name: its name, the datatypes it takes, and the
    datatype and shape (batch axis -1) its metadata gives."""

    name: str
    datatypes: tuple[str, ...]
    datatype: str
    shape: tuple[int, ...]


def served_models(pipeline: ImagePipeline) -> dict[str, ImageInput]:
    """The model names served, one per input form, all the same model and batcher: the model's
    own name (FP32 ``images``, which also takes UINT8 pixels and BYTES files), ``<name>-pixels``
    and ``<name>-files``, so that metadata-driven tools find every form from the metadata."""
    m = pipeline.manifest
    dims = tuple(input_dims(pipeline))
    return {
        m.name: ImageInput(m.input_name, IMAGE_DATATYPES, "FP32", (-1, *dims)),
        m.name + PIXELS_SUFFIX: ImageInput(PIXELS_INPUT, ("UINT8",), "UINT8", (-1, *dims)),
        m.name + FILES_SUFFIX: ImageInput(FILES_INPUT, ("BYTES",), "BYTES", (-1, 1)),
    }


def model_metadata(pipeline: ImagePipeline, name: str) -> dict[str, Any]:
    """Model metadata of served model ``name``: its image input and every output, batch axis
    -1 (the optional ``label`` input is in the configuration's parameters)."""
    m = pipeline.manifest
    image = served_models(pipeline)[name]
    return {
        "name": name, "versions": [m.version], "platform": PLATFORM,
        "inputs": [{"name": image.name, "datatype": image.datatype,
                    "shape": list(image.shape)}],
        "outputs": [{"name": o.name, "datatype": o.datatype,
                     "shape": [-1] if (w := output_width(pipeline, o)) is None else [-1, w]}
                    for o in model_outputs(pipeline)],
    }


def model_config(pipeline: ImagePipeline, name: str) -> dict[str, Any]:
    """The configuration of served model ``name`` as Triton writes it; the input forms, the
    label input and the class names are in ``parameters``."""
    m = pipeline.manifest
    image = served_models(pipeline)[name]
    b = pipeline.batcher
    outputs = []
    for o in model_outputs(pipeline):
        width = output_width(pipeline, o)
        out: dict[str, Any] = {"name": o.name, "data_type": _CONFIG_TYPES[o.datatype],
                               "dims": [1] if width is None else [width]}
        if width is None:  # a batched scalar: [N] on the wire, as Triton writes it
            out["reshape"] = {"shape": []}
        outputs.append(out)
    parameters = {
        "class_names": json.dumps(list(m.class_names)),
        "input_datatypes": json.dumps({
            "FP32": f"[N,{m.input_channels},{m.input_height},{m.input_width}] normalised",
            "UINT8": f"[N,{m.input_channels},{m.input_height},{m.input_width}] pixels",
            "BYTES": "[N] encoded images",
        } if name == m.name else {image.datatype: "as the input's shape"}),
        "models": json.dumps({n: i.name for n, i in served_models(pipeline).items()}),
        "optional_inputs": json.dumps({LABEL_INPUT: "INT32 or INT64 [N], -1 = no label"}),
        "temperature": repr(m.temperature),
        "execution_provider": pipeline.provider,
    }
    return {
        "name": name, "platform": PLATFORM, "backend": BACKEND,
        "max_batch_size": b.max_batch_size,
        "input": [{"name": image.name, "data_type": _CONFIG_TYPES[image.datatype],
                   "format": "FORMAT_NONE" if image.datatype == "BYTES" else "FORMAT_NCHW",
                   "dims": list(image.shape[1:])}],
        "output": outputs,
        "instance_group": [{
            "name": m.name, "count": b.instances,
            "kind": "KIND_GPU" if pipeline.provider.startswith("CUDA") else "KIND_CPU"}],
        "dynamic_batching": {
            "preferred_batch_size": list(b.preferred_batch_sizes),
            "max_queue_delay_microseconds": round(b.max_queue_delay_s * 1e6),
            "preserve_ordering": True,
        },
        "parameters": {k: {"string_value": v} for k, v in parameters.items()},
    }


def _duration(count: int, ns: int = 0) -> dict[str, int]:
    return {"count": count, "ns": ns}


def model_statistics(
    pipeline: ImagePipeline, name: str, requests: RequestCounts, batches: BatcherStats
) -> dict[str, Any]:
    """Statistics of served model ``name`` with Triton's meanings, counting only requests to
    that name (of either transport; never ScoreImages): ``success``/``fail`` and the queue and
    compute durations count requests, ``inference_count`` the samples of its successful
    requests. ``batches`` holds the shared batcher's batches that ran samples of its requests
    (a batch mixing names counts for each): ``execution_count``, ``batch_stats`` (the whole
    batch's size) and ``last_inference`` (when the last of them finished, ms since the epoch)."""
    m = pipeline.manifest
    by_size = sorted(batches.by_batch_size.items())
    r = requests
    return {
        "name": name, "version": m.version,
        "last_inference": batches.last_batch_unix_ms,
        "inference_count": r.samples, "execution_count": batches.batches,
        "inference_stats": {
            "success": _duration(r.success, r.success_ns),
            "fail": _duration(r.fail, r.fail_ns),
            "queue": _duration(r.success, r.queue_ns),
            "compute_input": _duration(r.success, r.compute_input_ns),
            "compute_infer": _duration(r.success, r.compute_infer_ns),
            "compute_output": _duration(r.success, r.compute_output_ns),
            "cache_hit": _duration(0), "cache_miss": _duration(0),
        },
        "batch_stats": [
            {"batch_size": size, "compute_input": _duration(s.count),
             "compute_infer": _duration(s.count, s.compute_ns),
             "compute_output": _duration(s.count)}
            for size, s in by_size
        ],
    }


@dataclass
class RequestCounts:
    """Cumulative inference requests (nanoseconds summed over requests): ``success`` and
    ``fail`` requests with their total server time; for the successes, their ``samples``
    (images), time in the batcher's queue, in the model (``compute_infer``), packing the
    outputs (``compute_output``) and everything else (``compute_input``: reading tensors,
    decoding images, scoring). Failures by cause are in hardscore_requests_total's ``code``
    label."""

    success: int = 0
    samples: int = 0
    success_ns: int = 0
    fail: int = 0
    fail_ns: int = 0
    queue_ns: int = 0
    compute_input_ns: int = 0
    compute_infer_ns: int = 0
    compute_output_ns: int = 0
