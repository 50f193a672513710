"""The transport-neutral half of the Open Inference Protocol: one inference request (inputs,
requested outputs) checked, read and scored through the image pipeline, and the outputs handed
back as arrays; model checks, metadata, configuration and statistics. The gRPC servicer and the
REST server only translate their messages to and from these objects, so both answer alike."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.metadata
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from hardscore_server.pipeline.batcher import RequestTiming
from hardscore_server.pipeline.errors import (
    InvalidRequest,
    ModelLoadFailed,
    UnknownModel,
    check_reply_fits,
)
from hardscore_server.pipeline.image_pipeline import ImageBatch, ImagePipeline, SampleFailed
from hardscore_server.pipeline.model_repository import (
    READY,
    UNAVAILABLE,
    LoadedVersion,
    ModelRepository,
)
from hardscore_server.pipeline.scores import NO_LABEL
from hardscore_server.transport.inference_protocol.model_config import (
    EXTENSIONS,
    FILES_SUFFIX,
    LABEL_DATATYPES,
    LABEL_INPUT,
    OUTPUTS,
    PIXELS_SUFFIX,
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
from hardscore_server.transport.security import ControlGate

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
    """Serves the models of a ModelRepository through the Open Inference Protocol: every
    loaded model under its three served names (``served_models``), per version."""

    def __init__(self, models: ModelRepository, control: ControlGate | None = None,
                 shared_memory: SharedMemoryRegistry | None = None) -> None:
        self.models = models
        self.control = control
        self.shared_memory = shared_memory or SharedMemoryRegistry()
        self.server_version = importlib.metadata.version("hardscore")
        self._counts: dict[tuple[str, str], RequestCounts] = {}
        self._lock = threading.Lock()
        self.draining = False
        """Set when the server starts draining (SIGTERM): health turns not ready."""

    # -- served names -------------------------------------------------------------------------

    def _base(self, name: str) -> str:
        """The model a served name stands for: itself, or ``<model>`` of ``<model>-pixels``
        and ``<model>-files``."""
        if self.models.known(name):
            return name
        for suffix in (PIXELS_SUFFIX, FILES_SUFFIX):
            if name.endswith(suffix) and self.models.known(name[:-len(suffix)]):
                return name[:-len(suffix)]
        return name

    def served_names(self) -> list[str]:
        """Every served name of every loaded model."""
        return [n for m in self.models.model_names() for n in self._names_of(m)]

    @staticmethod
    def _names_of(model: str) -> tuple[str, str, str]:
        return (model, model + PIXELS_SUFFIX, model + FILES_SUFFIX)

    def resolve(self, name: str, version: str = "") -> tuple[LoadedVersion, ImageInput]:
        """The loaded version a request for served name ``name`` at ``version`` goes to (the
        highest loaded one for ""), and its image input; UnknownModel (Triton's words) if
        none."""
        base = self._base(name)
        why = ""
        try:
            entry = self.models.resolve(base, version) if base else None
        except UnknownModel as exc:
            entry = None
            why = str(exc)
        if entry is None or name not in self._names_of(base):
            served = self.served_names()
            if version and name in self._names_of(base) and self.models.known(base):
                raise UnknownModel(
                    f"Request for unknown model: '{name}' version {version} is not found; "
                    f"{why}") from None
            raise UnknownModel(
                f"Request for unknown model: '{name}' is not found; this server serves "
                f"{_quoted(served) if served else 'no model now'}") from None
        return entry, served_models(entry.pipeline)[name]

    @contextlib.contextmanager
    def use(self, name: str, version: str = "") -> Iterator[tuple[LoadedVersion, ImageInput]]:
        """``resolve``, with the version held until the block ends (see ModelRepository.use)."""
        entry, image = self.resolve(name, version)
        with self.models.use(entry.name, entry.version):
            yield entry, image

    def check_model(self, name: str, version: str = "") -> ImageInput:
        """The image input of served model ``name``; UnknownModel if not served."""
        return self.resolve(name, version)[1]

    # -- health, metadata, statistics ----------------------------------------------------------

    @property
    def ready(self) -> bool:
        """The server takes requests (not draining); each model's readiness is its own."""
        return not self.draining

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            self.resolve(name, version)
        except UnknownModel:
            return False
        return self.ready

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": self.server_version,
                "extensions": list(EXTENSIONS)}

    def model_metadata(self, name: str, version: str = "") -> dict[str, Any]:
        entry, _ = self.resolve(name, version)
        metadata = model_metadata(entry.pipeline, name)
        metadata["versions"] = self.models.versions(entry.name)  # every loaded version
        return metadata

    def model_config(self, name: str, version: str = "") -> dict[str, Any]:
        entry, _ = self.resolve(name, version)
        return model_config(entry.pipeline, name)

    def model_statistics(self, name: str = "", version: str = "") -> dict[str, Any]:
        """{"model_stats": [...]}: one entry per served name and loaded version (only
        ``version`` when given); empty ``name`` means every served name."""
        if name:
            entry, _ = self.resolve(name, version)
            pairs = [(name, e) for e in self.models.loaded() if e.name == entry.name
                     and (not version or e.version == version)]
        else:
            pairs = [(n, e) for e in self.models.loaded() for n in self._names_of(e.name)]
        with self._lock:
            counts = {(n, e.version): dataclasses.replace(
                self._counts.get((n, e.version)) or RequestCounts()) for n, e in pairs}
        # read after the requests: a request counted there has its batches counted here
        return {"model_stats": [model_statistics(e.pipeline, n, counts[(n, e.version)],
                                                 e.pipeline.batcher.stats_snapshot(n))
                                for n, e in pairs]}

    async def repository_index(self, repository: str = "", ready_only: bool = False
                               ) -> list[dict[str, str]]:
        """Every model version of the (one, unnamed) repository under each of its served names,
        with its state and, when not READY, the reason (UNAVAILABLE once draining)."""
        self._check_repository(repository)
        rows = []
        for row in await self.models.index():
            for name in self._names_of(row["name"]):
                out = {**row, "name": name}
                if self.draining and row["state"] == READY:
                    out["state"], out["reason"] = UNAVAILABLE, "the server is shutting down"
                if not ready_only or out["state"] == READY:
                    rows.append(out)
        return rows

    @staticmethod
    def _check_repository(repository: str) -> None:
        if repository:
            raise UnknownModel(f"unknown repository '{repository}': this server has one, "
                               "named ''")

    async def load(self, repository: str, name: str, headers: Sequence[tuple[str, Any]] | None,
                   parameters: Mapping[str, Any]) -> None:
        """RepositoryModelLoad: (re)loads model ``name`` (its served name, or one of its input
        forms' names). Only with model_control_mode=explicit and a control token (ControlGate).
        A configuration override (``config``) or files in the request are refused: the
        repository's folders are what is served."""
        self._check_control(headers, "loading a model")
        self._check_repository(repository)
        for key in parameters:
            if key == "config" or key.startswith("file:"):
                raise ModelLoadFailed(
                    f"load parameter '{key}' is not supported: hardscore loads the versions in "
                    "the repository's folders as they are")
        await self.models.load(self._base(name))

    async def unload(self, repository: str, name: str,
                     headers: Sequence[tuple[str, Any]] | None) -> None:
        """RepositoryModelUnload: every version of model ``name`` stops taking calls now and is
        closed once its calls in flight have finished."""
        self._check_control(headers, "unloading a model")
        self._check_repository(repository)
        await self.models.unload(self._base(name))

    def _check_control(self, headers: Sequence[tuple[str, Any]] | None, what: str) -> None:
        if self.control is None:
            raise ModelLoadFailed(f"{what} is off on this server")
        self.control.check(headers, what)

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
        timing = RequestTiming(stats_key=model_name)
        version = ""  # the version that computes it, once known
        try:
            request = await parse()
            if request.timeout_us:
                timeout = time.monotonic() + request.timeout_us / 1e6
                deadline = timeout if deadline is None else min(deadline, timeout)
            with self.use(model_name, request.model_version) as (entry, image):
                version = entry.version
                result = await self._score(request, entry.pipeline, image, deadline,
                                           max_reply_bytes, timing)
            packing = time.perf_counter_ns()
            reply = await asyncio.to_thread(encode, result)
        except UnknownModel:
            raise  # no served model's failure
        except BaseException:
            if not version:  # failed before a version took it: the one it would have gone to
                with contextlib.suppress(UnknownModel):
                    version = self.resolve(model_name)[0].version
            if version:
                self._record_failure((model_name, version), time.perf_counter_ns() - started)
            raise
        self._record_success((model_name, version), started, packing, timing, result.samples)
        return reply

    async def _score(
        self, request: InferRequest, pipeline: ImagePipeline, image: ImageInput,
        deadline: float | None, max_reply_bytes: int | None, timing: RequestTiming,
    ) -> InferResult:
        """Scores ``request`` on ``pipeline`` (the version that admitted it) and hands back its
        outputs (written to shared memory where asked)."""
        name = request.model_name
        parsed = await asyncio.to_thread(self._parse, request, image, pipeline)
        n = len(parsed.images)
        if max_reply_bytes is not None:
            check_reply_fits(self._reply_floor(parsed, n, pipeline), max_reply_bytes, n, None,
                             "images", "requests")
        batch = ImageBatch(images=parsed.images, labels=parsed.labels, on_sample_error="raise",
                           include_embeddings=any(s.embedding for s, _ in parsed.outputs))
        try:
            result = await pipeline.score(batch, deadline, timing)
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
        return InferResult(name, pipeline.manifest.version, request.id, outputs, n)

    def _reply_floor(self, parsed: _Parsed, n: int, pipeline: ImagePipeline) -> int:
        """Bytes of the requested outputs' values alone (those not written to shared memory):
        no reply to ``n`` images is smaller in any encoding (an INT64 takes at least 1 byte)."""
        itemsize = {"FP32": 4, "FP64": 8, "INT64": 1}
        return sum(n * (output_width(pipeline, spec) or 1) * itemsize[spec.datatype]
                   for spec, parameters in parsed.outputs if SHM_REGION not in parameters)

    def _record_success(self, key: tuple[str, str], started: int, packing: int,
                        timing: RequestTiming, samples: int) -> None:
        """Output time: from the scores to the transport's encoded reply; input time: the rest
        outside the queue and the model; ``samples``: the images scored."""
        now = time.perf_counter_ns()
        total = now - started
        output = now - packing
        with self._lock:
            c = self._counts.setdefault(key, RequestCounts())
            c.success += 1
            c.samples += samples
            c.success_ns += total
            c.queue_ns += timing.queue_ns
            c.compute_infer_ns += timing.compute_ns
            c.compute_output_ns += output
            c.compute_input_ns += max(0, total - output - timing.queue_ns - timing.compute_ns)

    def _record_failure(self, key: tuple[str, str], ns: int) -> None:
        with self._lock:
            c = self._counts.setdefault(key, RequestCounts())
            c.fail += 1
            c.fail_ns += ns

    def _parse(self, request: InferRequest, image: ImageInput, pipeline: ImagePipeline
               ) -> _Parsed:
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
        images, n = self._read_images(reader, by_name[image.name], image, name, pipeline)
        labels = self._read_labels(reader, by_name[LABEL_INPUT], n, name, pipeline) if (
            LABEL_INPUT in by_name) else None
        outputs = self._requested_outputs(request.outputs, labels is not None, name, pipeline)
        if labels is None and any(spec.needs_label for spec, _ in outputs):
            labels = np.full(n, NO_LABEL, dtype=np.int64)  # asked for, no labels: all NaN
        return _Parsed(images=images, labels=labels, outputs=outputs)

    def _read_images(
        self, reader: TensorReader, t: InputTensor, image: ImageInput, model: str,
        pipeline: ImagePipeline,
    ) -> tuple[np.ndarray | list[bytes], int]:
        shape = list(t.shape)
        dims = input_dims(pipeline)
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
        limit = pipeline.max_samples
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
        self, reader: TensorReader, t: InputTensor, n: int, model: str,
        pipeline: ImagePipeline,
    ) -> npt.NDArray[np.int64]:
        m = pipeline.manifest
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
        self, wanted: Sequence[RequestedOutput], has_labels: bool, model: str,
        pipeline: ImagePipeline,
    ) -> list[tuple[OutputSpec, Mapping[str, Any]]]:
        outputs = {o.name: o for o in model_outputs(pipeline)}
        if not wanted:
            return [(o, {}) for o in OUTPUTS if has_labels or not o.needs_label]
        chosen: dict[str, tuple[OutputSpec, Mapping[str, Any]]] = {}
        for output in wanted:
            spec = outputs.get(output.name)
            if spec is None:
                hint = ("; the 'embedding' output needs a model exported with it: re-export it "
                        "with hardscore-export" if output.name == "embedding" else "")
                raise InvalidRequest(
                    f"unexpected inference output '{output.name}' for model "
                    f"'{model}'; its outputs are {', '.join(outputs)}{hint}")
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
