"""The transport-neutral half of the Open Inference Protocol: one inference request (inputs,
requested outputs) checked, read and scored through the image pipeline, and the outputs handed
back as arrays; model checks, metadata, configuration and statistics. The gRPC servicer and the
REST server only translate their messages to and from these objects, so both answer alike."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.metadata
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from hardscore_server.pipeline.batcher import RequestTiming
from hardscore_server.pipeline.errors import InvalidRequest, UnknownModel, check_reply_fits
from hardscore_server.pipeline.image_pipeline import ImageBatch, ImagePipeline, SampleFailed
from hardscore_server.pipeline.scores import NO_LABEL
from hardscore_server.transport.inference_protocol.model_config import (
    EXTENSIONS,
    LABEL_DATATYPES,
    LABEL_INPUT,
    OUTPUTS,
    SERVER_NAME,
    ImageInput,
    OutputSpec,
    RequestCounts,
    input_dims,
    model_config,
    model_metadata,
    model_outputs,
    model_statistics,
    output_width,
    served_models,
)
from hardscore_server.transport.inference_protocol.shared_memory import SharedMemoryRegistry
from hardscore_server.transport.inference_protocol.tensors import (
    InputTensor,
    TensorReader,
    output_array,
    shape_text,
)

R = TypeVar("R")

SHM_REGION = "shared_memory_region"
SHM_OFFSET = "shared_memory_offset"
SHM_BYTE_SIZE = "shared_memory_byte_size"


@dataclass
class RequestedOutput:
    """An output the request names, with its parameters (e.g. REST's ``binary_data``)."""

    name: str
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class InferRequest:
    """One inference request, whatever the transport; ``timeout_us`` is the request's own
    time limit in the queue (microseconds, Triton's ``timeout`` parameter; None = none)."""

    model_name: str
    model_version: str = ""
    id: str = ""
    inputs: Sequence[InputTensor] = ()
    outputs: Sequence[RequestedOutput] = ()
    timeout_us: int | None = None


@dataclass
class OutputTensor:
    """One output: its spec, its values (C-contiguous, the datatype's little-endian dtype) and
    the parameters the request gave it."""

    spec: OutputSpec
    array: np.ndarray
    parameters: Mapping[str, Any]
    in_shared_memory: bool = False


@dataclass
class InferResult:
    model_name: str
    model_version: str
    id: str
    outputs: list[OutputTensor]
    samples: int = 0
    """Images scored."""


@dataclass
class _Parsed:
    images: np.ndarray | list[bytes]
    labels: npt.NDArray[np.int64] | None
    outputs: list[tuple[OutputSpec, Mapping[str, Any]]]


def _quoted(names: Sequence[str]) -> str:
    return ", ".join(f"'{n}'" for n in names)


class InferenceCore:
    """Serves the one model of an ImagePipeline through the Open Inference Protocol."""

    def __init__(self, pipeline: ImagePipeline,
                 shared_memory: SharedMemoryRegistry | None = None) -> None:
        self.pipeline = pipeline
        self.shared_memory = shared_memory or SharedMemoryRegistry()
        self.manifest = pipeline.manifest
        self.server_version = importlib.metadata.version("hardscore")
        self.models = served_models(pipeline)
        self.outputs = {o.name: o for o in model_outputs(pipeline)}
        self._counts = {name: RequestCounts() for name in self.models}
        self._lock = threading.Lock()
        self.draining = False
        """Set when the server starts draining (SIGTERM): health turns not ready."""

    # -- health, metadata, statistics ----------------------------------------------------------

    @property
    def ready(self) -> bool:
        """The model is loaded (always, once serving) and the server is not draining."""
        return not self.draining and self.pipeline.batcher.accepting

    def model_ready(self, name: str, version: str = "") -> bool:
        m = self.manifest
        return name in self.models and version in ("", m.version) and self.ready

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": self.server_version,
                "extensions": list(EXTENSIONS)}

    def model_metadata(self, name: str, version: str = "") -> dict[str, Any]:
        self.check_model(name, version)
        return model_metadata(self.pipeline, name)

    def model_config(self, name: str, version: str = "") -> dict[str, Any]:
        self.check_model(name, version)
        return model_config(self.pipeline, name)

    def model_statistics(self, name: str = "", version: str = "") -> dict[str, Any]:
        """{"model_stats": [...]}: empty ``name`` means every served model name."""
        if name or version:
            self.check_model(name, version)
        names = [name] if name else list(self.models)
        with self._lock:
            counts = {n: dataclasses.replace(self._counts[n]) for n in names}
        # read after the requests: a request counted there has its batches counted here
        batcher = self.pipeline.batcher
        return {"model_stats": [model_statistics(self.pipeline, n, counts[n],
                                                 batcher.stats_snapshot(n))
                                for n in names]}

    def repository_index(self, repository: str = "", ready_only: bool = False
                         ) -> list[dict[str, str]]:
        """The models of the (one, unnamed) repository: every served name, READY while serving
        (UNAVAILABLE once draining)."""
        if repository:
            raise UnknownModel(f"unknown repository '{repository}': this server has one, "
                               "named ''")
        version = self.manifest.version
        if self.ready:
            return [{"name": n, "version": version, "state": "READY"} for n in self.models]
        if ready_only:
            return []
        return [{"name": n, "version": version, "state": "UNAVAILABLE",
                 "reason": "the server is shutting down"} for n in self.models]

    def check_model(self, name: str, version: str = "") -> ImageInput:
        """The image input of served model ``name``; UnknownModel if not served."""
        m = self.manifest
        image = self.models.get(name)
        if image is None:
            raise UnknownModel(
                f"Request for unknown model: '{name}' is not found; this server serves "
                f"{_quoted(list(self.models))}")
        if version not in ("", m.version):
            raise UnknownModel(
                f"Request for unknown model: '{name}' version {version} is not found; this "
                f"server serves version {m.version}")
        return image

    # -- inference ----------------------------------------------------------------------------

    async def infer(
        self, model_name: str, parse: Callable[[], Awaitable[InferRequest]],
        encode: Callable[[InferResult], R], deadline: float | None = None,
        max_reply_bytes: int | None = None,
    ) -> R:
        """One inference request of a transport, recorded once in the statistics of served model
        ``model_name`` (as a success with its samples and its queue, compute and output times,
        or as a failure, whichever step failed; nothing is recorded for a name that is not
        served). The batches its samples run in count in that name's batch statistics.

        ``parse()`` reads the transport's message into an InferRequest (the transport's own
        checks: InvalidRequest); ``encode(result)`` turns the result into the transport's reply
        in a worker thread (it may refuse a reply over its limit: ReplyTooLarge). ``deadline``
        is a time.monotonic() instant; the request's own ``timeout_us`` shortens it. Before any
        image is decoded, a request whose requested outputs' values alone exceed
        ``max_reply_bytes`` is refused (ReplyTooLarge). Raises UnknownModel, InvalidRequest,
        QueueFull, DecodeBudgetExceeded, DeadlineExpired.
        """
        started = time.perf_counter_ns()
        timing = RequestTiming(stats_key=model_name if model_name in self._counts else None)
        try:
            request = await parse()
            if request.timeout_us:
                timeout = time.monotonic() + request.timeout_us / 1e6
                deadline = timeout if deadline is None else min(deadline, timeout)
            result = await self._score(request, deadline, max_reply_bytes, timing)
            packing = time.perf_counter_ns()
            reply = await asyncio.to_thread(encode, result)
        except UnknownModel:
            raise  # no served model's failure
        except BaseException:
            if model_name in self._counts:
                self._record_failure(model_name, time.perf_counter_ns() - started)
            raise
        self._record_success(model_name, started, packing, timing, result.samples)
        return reply

    async def _score(
        self, request: InferRequest, deadline: float | None, max_reply_bytes: int | None,
        timing: RequestTiming,
    ) -> InferResult:
        """Scores ``request`` and hands back its outputs (written to shared memory where asked)."""
        name = request.model_name
        image = self.check_model(name, request.model_version)
        parsed = await asyncio.to_thread(self._parse, request, image)
        n = len(parsed.images)
        if max_reply_bytes is not None:
            check_reply_fits(self._reply_floor(parsed, n), max_reply_bytes, n, None,
                             "images", "requests")
        batch = ImageBatch(images=parsed.images, labels=parsed.labels, on_sample_error="raise",
                           include_embeddings=any(s.embedding for s, _ in parsed.outputs))
        try:
            result = await self.pipeline.score(batch, deadline, timing)
        except SampleFailed as exc:
            raise InvalidRequest(
                f"input '{image.name}' element {exc.index} cannot be used: {exc.error}") from None
        outputs = []
        scores = result.scores
        for spec, parameters in parsed.outputs:
            if spec.embedding:
                values = result.embeddings
            else:
                values = result.logits if spec.name == "logits" else getattr(scores, spec.name)
            assert values is not None, f"{spec.name} needs labels"  # _parse fills them
            out = OutputTensor(spec, output_array(spec.datatype, values), parameters)
            if SHM_REGION in parameters:
                self.shared_memory.write(
                    parameters[SHM_REGION], parameters.get(SHM_OFFSET, 0),
                    parameters.get(SHM_BYTE_SIZE), out.array.tobytes(), f"output '{spec.name}'")
                out.in_shared_memory = True
            outputs.append(out)
        return InferResult(name, self.manifest.version, request.id, outputs, n)

    def _reply_floor(self, parsed: _Parsed, n: int) -> int:
        """Bytes of the requested outputs' values alone (those not written to shared memory):
        no reply to ``n`` images is smaller in any encoding (an INT64 takes at least 1 byte)."""
        itemsize = {"FP32": 4, "FP64": 8, "INT64": 1}
        return sum(n * (output_width(self.pipeline, spec) or 1) * itemsize[spec.datatype]
                   for spec, parameters in parsed.outputs if SHM_REGION not in parameters)

    def _record_success(self, name: str, started: int, packing: int, timing: RequestTiming,
                        samples: int) -> None:
        """Output time: from the scores to the transport's encoded reply; input time: the rest
        outside the queue and the model; ``samples``: the images scored."""
        now = time.perf_counter_ns()
        total = now - started
        output = now - packing
        with self._lock:
            c = self._counts[name]
            c.success += 1
            c.samples += samples
            c.success_ns += total
            c.queue_ns += timing.queue_ns
            c.compute_infer_ns += timing.compute_ns
            c.compute_output_ns += output
            c.compute_input_ns += max(0, total - output - timing.queue_ns - timing.compute_ns)

    def _record_failure(self, name: str, ns: int) -> None:
        with self._lock:
            c = self._counts[name]
            c.fail += 1
            c.fail_ns += ns

    def _parse(self, request: InferRequest, image: ImageInput) -> _Parsed:
        """Checks the request's inputs and outputs and reads the tensors' data (worker thread)."""
        name = request.model_name
        by_name: dict[str, InputTensor] = {}
        for tensor in request.inputs:
            if tensor.name not in (image.name, LABEL_INPUT):
                raise InvalidRequest(
                    f"unexpected inference input '{tensor.name}' for model '{name}'; its "
                    f"inputs are '{image.name}' and the optional '{LABEL_INPUT}'")
            if tensor.name in by_name:
                raise InvalidRequest(
                    f"input '{tensor.name}' is given more than once for model '{name}'")
            if SHM_REGION in tensor.parameters:
                if tensor.raw is not None or tensor.values is not None:
                    raise InvalidRequest(
                        f"input '{tensor.name}' has both data and a shared memory region")
                p = tensor.parameters
                tensor.raw = self.shared_memory.read(
                    p[SHM_REGION], p.get(SHM_OFFSET, 0), p.get(SHM_BYTE_SIZE),
                    f"input '{tensor.name}'")
            by_name[tensor.name] = tensor
        if image.name not in by_name:
            got = [t.name for t in request.inputs]
            raise InvalidRequest(
                f"expected 1 or 2 inputs but got {len(got)} inputs for model '{name}'. Got "
                f"input(s) {got}, but missing required input(s) ['{image.name}']. Please "
                "provide all required input(s).")
        reader = TensorReader(name)
        images, n = self._read_images(reader, by_name[image.name], image, name)
        labels = self._read_labels(reader, by_name[LABEL_INPUT], n, name) if (
            LABEL_INPUT in by_name) else None
        outputs = self._requested_outputs(request.outputs, labels is not None, name)
        if labels is None and any(spec.needs_label for spec, _ in outputs):
            labels = np.full(n, NO_LABEL, dtype=np.int64)  # asked for, no labels: all NaN
        return _Parsed(images=images, labels=labels, outputs=outputs)

    def _read_images(
        self, reader: TensorReader, t: InputTensor, image: ImageInput, model: str
    ) -> tuple[np.ndarray | list[bytes], int]:
        shape = list(t.shape)
        dims = input_dims(self.pipeline)
        if t.datatype not in image.datatypes:
            if len(image.datatypes) == 1:
                raise InvalidRequest(
                    f"inference input '{t.name}' data-type is '{t.datatype}', but model "
                    f"'{model}' expects '{image.datatype}'")
            raise InvalidRequest(
                f"inference input '{t.name}' data-type is '{t.datatype}', but model '{model}' "
                f"expects 'FP32' (normalised), 'UINT8' (pixels) or 'BYTES' (encoded images)")
        if t.datatype == "BYTES":
            if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
                raise InvalidRequest(
                    f"unexpected shape for input '{t.name}' for model '{model}'. Expected [-1] "
                    f"or [-1,1] (one encoded image per element), got {shape_text(shape)}")
        elif len(shape) != 4 or shape[1:] != dims:
            raise InvalidRequest(
                f"unexpected shape for input '{t.name}' for model '{model}'. Expected "
                f"{shape_text([-1, *dims])}, got {shape_text(shape)}")
        n = shape[0]
        limit = self.pipeline.max_samples
        if n < 1:
            raise InvalidRequest(
                f"input '{t.name}' for model '{model}' holds {n} images; send at least one")
        if n > limit:
            raise InvalidRequest(
                f"input '{t.name}' holds {n} images, more than this server takes in one "
                f"request ({limit}); send smaller requests")
        if t.datatype == "BYTES":
            return reader.strings(t, shape), n
        return reader.numeric(t, shape), n

    def _read_labels(
        self, reader: TensorReader, t: InputTensor, n: int, model: str
    ) -> npt.NDArray[np.int64]:
        m = self.manifest
        shape = list(t.shape)
        if t.datatype not in LABEL_DATATYPES:
            raise InvalidRequest(
                f"inference input '{t.name}' data-type is '{t.datatype}', but model '{model}' "
                "expects 'INT32' or 'INT64'")
        if shape not in ([n], [n, 1]):
            raise InvalidRequest(
                f"unexpected shape for input '{t.name}' for model '{model}'. Expected [{n}] "
                f"(one label per image, -1 = none), got {shape_text(shape)}")
        labels = reader.numeric(t, shape).reshape(n).astype(np.int64)
        bad = np.flatnonzero((labels < NO_LABEL) | (labels >= m.num_classes))
        if len(bad):
            raise InvalidRequest(
                f"input '{t.name}' element {bad[0]} is {labels[bad[0]]}: labels are class "
                f"indices 0..{m.num_classes - 1}, or -1 for none")
        return labels

    def _requested_outputs(
        self, wanted: Sequence[RequestedOutput], has_labels: bool, model: str
    ) -> list[tuple[OutputSpec, Mapping[str, Any]]]:
        if not wanted:
            return [(o, {}) for o in OUTPUTS if has_labels or not o.needs_label]
        chosen: dict[str, tuple[OutputSpec, Mapping[str, Any]]] = {}
        for output in wanted:
            spec = self.outputs.get(output.name)
            if spec is None:
                hint = ("; the 'embedding' output needs a model exported with it: re-export it "
                        "with hardscore-export" if output.name == "embedding" else "")
                raise InvalidRequest(
                    f"unexpected inference output '{output.name}' for model "
                    f"'{model}'; its outputs are {', '.join(self.outputs)}{hint}")
            if "classification" in output.parameters:
                raise InvalidRequest(
                    f"output '{output.name}' asks for 'classification', which this server does "
                    "not support (ask for 'predicted_class' and 'probabilities' instead)")
            if SHM_REGION in output.parameters and SHM_BYTE_SIZE not in output.parameters:
                raise InvalidRequest(
                    f"output '{output.name}' names a shared memory region without "
                    f"'{SHM_BYTE_SIZE}'")
            chosen.setdefault(spec.name, (spec, output.parameters))
        return list(chosen.values())
