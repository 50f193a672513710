"""What the Open Inference Protocol says about the served model: its metadata (inputs and
outputs), its Triton-style configuration, and its statistics, built from the image pipeline's
manifest, batching settings and counters."""

from __future__ import annotations

import json
from dataclasses import dataclass

from hardscore_server.image_pipeline import ImagePipeline
from hardscore_server.inference_protocol import grpc_service_pb2 as oip

SERVER_NAME = "hardscore"
EXTENSIONS = ("model_configuration", "statistics")
"""Triton protocol extensions served besides the core protocol."""
PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"
LABEL_INPUT = "label"
IMAGE_DATATYPES = ("FP32", "UINT8", "BYTES")
LABEL_DATATYPES = ("INT32", "INT64")
_CONFIG_TYPES = {"FP32": oip.TYPE_FP32, "FP64": oip.TYPE_FP64, "INT64": oip.TYPE_INT64,
                 "UINT8": oip.TYPE_UINT8, "INT32": oip.TYPE_INT32, "BYTES": oip.TYPE_STRING}


@dataclass(frozen=True)
class OutputSpec:
    """One output tensor: name, datatype, per-sample shape (() or (classes,)), needs a label."""

    name: str
    datatype: str
    per_class: bool = False
    needs_label: bool = False


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


def input_dims(pipeline: ImagePipeline) -> list[int]:
    """The model input's per-sample shape [C, H, W]."""
    m = pipeline.manifest
    return [m.input_channels, m.input_height, m.input_width]


def model_metadata(pipeline: ImagePipeline) -> oip.ModelMetadataResponse:
    """ModelMetadata: the FP32 model input and every output, batch axis -1."""
    m = pipeline.manifest
    meta = oip.ModelMetadataResponse.TensorMetadata
    return oip.ModelMetadataResponse(
        name=m.name, versions=[m.version], platform=PLATFORM,
        inputs=[meta(name=m.input_name, datatype="FP32", shape=[-1, *input_dims(pipeline)])],
        outputs=[meta(name=o.name, datatype=o.datatype,
                      shape=[-1, m.num_classes] if o.per_class else [-1])
                 for o in OUTPUTS],
    )


def model_config(pipeline: ImagePipeline) -> oip.ModelConfig:
    """ModelConfig as Triton writes it; the UINT8 and BYTES input forms, the label input and the
    class names are in ``parameters``."""
    m = pipeline.manifest
    b = pipeline.batcher
    reshape_scalar = oip.ModelTensorReshape(shape=[])
    outputs = []
    for o in OUTPUTS:
        out = oip.ModelOutput(name=o.name, data_type=_CONFIG_TYPES[o.datatype],
                              dims=[m.num_classes] if o.per_class else [1])
        if not o.per_class:  # a batched scalar: [N] on the wire, as Triton writes it
            out.reshape.CopyFrom(reshape_scalar)
        outputs.append(out)
    parameters = {
        "class_names": json.dumps(list(m.class_names)),
        "input_datatypes": json.dumps({
            "FP32": f"[N,{m.input_channels},{m.input_height},{m.input_width}] normalised",
            "UINT8": f"[N,{m.input_channels},{m.input_height},{m.input_width}] pixels",
            "BYTES": "[N] encoded images",
        }),
        "optional_inputs": json.dumps({LABEL_INPUT: "INT32 or INT64 [N], -1 = no label"}),
        "temperature": repr(m.temperature),
        "execution_provider": pipeline.provider,
    }
    return oip.ModelConfig(
        name=m.name, platform=PLATFORM, backend=BACKEND, max_batch_size=b.max_batch_size,
        input=[oip.ModelInput(name=m.input_name, data_type=oip.TYPE_FP32,
                              format=oip.ModelInput.FORMAT_NCHW, dims=input_dims(pipeline))],
        output=outputs,
        instance_group=[oip.ModelInstanceGroup(
            name=m.name, count=b.instances,
            kind=(oip.ModelInstanceGroup.KIND_GPU if pipeline.provider.startswith("CUDA")
                  else oip.ModelInstanceGroup.KIND_CPU))],
        dynamic_batching=oip.ModelDynamicBatching(
            preferred_batch_size=list(b.preferred_batch_sizes),
            max_queue_delay_microseconds=round(b.max_queue_delay_s * 1e6),
            preserve_ordering=True,
        ),
        parameters={k: oip.ModelParameter(string_value=v) for k, v in parameters.items()},
    )


def model_statistics(pipeline: ImagePipeline) -> oip.ModelStatistics:
    """The batcher's cumulative counts (ScoreImages traffic included: one model, one batcher),
    in samples: durations sum each sample's queue wait and the duration of its batch."""
    m = pipeline.manifest
    stats = pipeline.batcher.stats_snapshot()
    # list() copies under the GIL: the worker thread may add a batch size meanwhile.
    by_size = sorted(list(stats.by_batch_size.items()))
    samples = stats.samples
    compute_ns = sum(size * s.compute_ns for size, s in by_size)  # per sample, summed
    duration = oip.StatisticDuration
    return oip.ModelStatistics(
        name=m.name, version=m.version,
        last_inference=stats.last_batch_unix_ms,
        inference_count=samples, execution_count=stats.batches,
        inference_stats=oip.InferStatistics(
            success=duration(count=samples, ns=stats.queue_ns + compute_ns),
            fail=duration(),
            queue=duration(count=samples, ns=stats.queue_ns),
            # Clients (perf_analyzer) require the three compute counts to be equal; input
            # and output copies are not timed apart from the model run: 0 ns.
            compute_input=duration(count=samples),
            compute_infer=duration(count=samples, ns=compute_ns),
            compute_output=duration(count=samples),
        ),
        batch_stats=[
            oip.InferBatchStatistics(
                batch_size=size, compute_input=duration(count=s.count),
                compute_infer=duration(count=s.count, ns=s.compute_ns),
                compute_output=duration(count=s.count))
            for size, s in by_size
        ],
    )
