"""Runs the model: ONNX Runtime sessions (one per instance) on the chosen execution provider.

Provider choice (``execution_provider``): ``auto`` takes CUDA when the CUDA build of ONNX Runtime
is installed *and* the NVIDIA driver loads, CPU otherwise, so CPU hosts start without the CUDA
provider's load errors; ``cuda`` insists on CUDA and fails at start-up when it cannot run, naming
the libraries that are missing; ``tensorrt`` puts ONNX Runtime's TensorRT provider in front of
CUDA (nodes TensorRT cannot take run on CUDA); ``cpu`` never asks for CUDA. The provider actually
in use is read back from the session. Before the first CUDA session the CUDA and cuDNN libraries
of the ``gpu`` extra's pip packages are loaded (``onnxruntime.preload_dlls``), so no system CUDA
is needed: only the driver (``libcuda.so.1``).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from hardscore_server.model.model_dir import ModelManifest, check_io, load_manifest
from hardscore_server.model.shared_libs import DRIVER_LIBRARY, Resolver

if TYPE_CHECKING:
    from hardscore_server.config import ServerConfig

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
CUDA_PROVIDER_LIBRARY = "libonnxruntime_providers_cuda.so"
CONV_ALGO_SEARCH = {"exhaustive": "EXHAUSTIVE", "heuristic": "HEURISTIC", "default": "DEFAULT"}
ARENA_EXTEND = {"next_power_of_two": "kNextPowerOfTwo", "same_as_requested": "kSameAsRequested"}

ProviderList = list[tuple[str, dict[str, str]]]


class ModelLoadError(RuntimeError):
    """The model cannot be served as configured (bad directory, provider unavailable)."""


@dataclass(frozen=True)
class GpuSettings:
    """CUDA / TensorRT provider settings (docs/configuration.md, "GPU"). Ignored on CPU."""

    device_id: int = 0
    """CUDA device ordinal, 0..devices-1."""
    cudnn_conv_algo_search: str = "exhaustive"
    """exhaustive (benchmark every algorithm once per shape), heuristic, or default."""
    mem_limit_bytes: int = 0
    """Cap of the CUDA memory arena in bytes; 0 = no cap."""
    arena_extend_strategy: str = "next_power_of_two"
    """How the arena grows: next_power_of_two (fewer, larger allocations) or
    same_as_requested (tighter memory)."""
    tensorrt_engine_cache_dir: str = ""
    """Directory where TensorRT keeps built engines across restarts; empty = no cache."""
    tensorrt_fp16: bool = False
    """Let TensorRT run layers in float16."""


def gpu_settings(config: ServerConfig) -> GpuSettings:
    """The GPU part of the server's configuration."""
    return GpuSettings(
        device_id=config.cuda_device_id,
        cudnn_conv_algo_search=config.cudnn_conv_algo_search,
        mem_limit_bytes=config.cuda_mem_limit_bytes,
        arena_extend_strategy=config.cuda_arena_extend_strategy,
        tensorrt_engine_cache_dir=config.tensorrt_engine_cache_dir,
        tensorrt_fp16=config.tensorrt_fp16,
    )


_preloaded = False


def preload_cuda_libraries() -> str:
    """Loads the CUDA/cuDNN libraries of the nvidia-* pip packages once (before the first CUDA
    session); returns what ONNX Runtime printed while doing it ("" when all loaded)."""
    global _preloaded
    if _preloaded or not hasattr(ort, "preload_dlls"):
        return ""
    _preloaded = True
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        try:
            ort.preload_dlls()
        except Exception as exc:  # a bad nvidia package layout must not stop a CPU start
            print(f"preload_dlls failed: {exc}")
    return printed.getvalue().strip()


def cuda_loads() -> bool:
    """True when the CUDA build of ONNX Runtime is installed and the NVIDIA driver loads."""
    if CUDA not in ort.get_available_providers():
        return False
    try:
        ctypes.CDLL(DRIVER_LIBRARY)
    except OSError:
        return False
    preloaded = preload_cuda_libraries()
    if preloaded:
        log.warning("loading the CUDA libraries: %s", preloaded.replace("\n", "; "))
    return True


def cuda_diagnosis(capi_dir: Path | None = None, resolver: Resolver | None = None) -> str:
    """Why the CUDA provider cannot load here, naming each missing library (the driver's
    ``libcuda.so.1`` included); says so when nothing is missing."""
    capi = capi_dir or Path(ort.__file__).parent / "capi"
    provider = capi / CUDA_PROVIDER_LIBRARY
    if not provider.is_file():
        return ("this ONNX Runtime has no CUDA provider (the CPU build 'onnxruntime' is "
                "installed): install the 'gpu' extra, pip install 'hardscore[gpu]'")
    problems: list[str] = []
    try:
        ctypes.CDLL(DRIVER_LIBRARY)
    except OSError:
        problems.append(f"{DRIVER_LIBRARY} (the NVIDIA driver: not installed, or not mounted "
                        "into the container)")
    preload_cuda_libraries()
    resolver = resolver or Resolver()
    problems += [str(m) for m in resolver.missing(provider, ignore=[DRIVER_LIBRARY])]
    if not problems:
        return f"every library {CUDA_PROVIDER_LIBRARY} needs is found"
    return "missing " + ", ".join(problems)


def provider_options(setting: str, gpu: GpuSettings | None = None) -> ProviderList:
    """The (provider, options) list an ``execution_provider`` setting asks ONNX Runtime for,
    without checking that it can run. ``auto`` is resolved by :func:`choose_providers`."""
    gpu = gpu or GpuSettings()
    if setting == "cpu":
        return [(CPU, {})]
    cuda: dict[str, str] = {
        "device_id": str(gpu.device_id),
        "cudnn_conv_algo_search": CONV_ALGO_SEARCH[gpu.cudnn_conv_algo_search],
        "arena_extend_strategy": ARENA_EXTEND[gpu.arena_extend_strategy],
    }
    if gpu.mem_limit_bytes > 0:
        cuda["gpu_mem_limit"] = str(gpu.mem_limit_bytes)
    providers: ProviderList = [(CUDA, cuda), (CPU, {})]
    if setting == "tensorrt":
        trt = {"device_id": str(gpu.device_id), "trt_fp16_enable": str(gpu.tensorrt_fp16)}
        if gpu.tensorrt_engine_cache_dir:
            trt["trt_engine_cache_enable"] = "True"
            trt["trt_engine_cache_path"] = gpu.tensorrt_engine_cache_dir
        providers.insert(0, (TENSORRT, trt))
    return providers


def choose_providers(setting: str, gpu: GpuSettings | None = None) -> ProviderList:
    """ONNX Runtime (provider, options) list for ``execution_provider`` (auto, cpu, cuda,
    tensorrt); raises ModelLoadError when cuda/tensorrt cannot run here."""
    if setting == "cpu":
        return provider_options("cpu")
    if setting in ("cuda", "tensorrt"):
        if not cuda_loads():
            raise ModelLoadError(
                f"execution_provider={setting}, but CUDA cannot run here: {cuda_diagnosis()}; "
                "or use auto/cpu")
        if setting == "tensorrt" and TENSORRT not in ort.get_available_providers():
            raise ModelLoadError("execution_provider=tensorrt, but this ONNX Runtime build has "
                                 "no TensorRT provider")
        return provider_options(setting, gpu)
    return provider_options("cuda", gpu) if cuda_loads() else provider_options("cpu")


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota (the
    container's CPU limit), which ``os.cpu_count()`` does not see."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus or 1, max(1, int(int(quota) / int(period) + 0.5)))
    except (OSError, ValueError):
        pass
    return max(1, cpus or 1)


class ModelRunner:
    """The served model: ``instances`` ONNX Runtime sessions over one model directory."""

    def __init__(
        self,
        model_dir: Path,
        *,
        execution_provider: str = "auto",
        instances: int = 1,
        intra_op_threads: int = 0,
        allow_spinning: bool = False,
        gpu: GpuSettings | None = None,
        io_binding: bool = False,
    ) -> None:
        self.model_dir = model_dir
        self.manifest: ModelManifest = load_manifest(model_dir)
        providers = choose_providers(execution_provider, gpu)
        threads = intra_op_threads or max(1, available_cpus() // instances)
        self.sessions = [
            self._session(model_dir / "model.onnx", providers, threads, allow_spinning)
            for _ in range(instances)
        ]
        first = self.sessions[0]
        check_io(self.manifest, first.get_inputs(), first.get_outputs())
        self.provider: str = first.get_providers()[0]
        wanted = providers[0][0]
        if wanted != CPU and self.provider != wanted:
            message = (f"asked for {wanted} but ONNX Runtime runs on {self.provider}: "
                       f"{cuda_diagnosis()}")
            if execution_provider != "auto":
                raise ModelLoadError(message)
            log.warning("%s", message)
        self.intra_op_threads = threads
        self.io_binding = io_binding
        self.num_classes = len(self.manifest.class_names)
        self.embedding_dim = self.manifest.embedding_dim
        if self.manifest.random_weights:
            log.warning(
                "model %s was exported with RANDOM weights: its predictions and scores are "
                "meaningless (benchmarking only)", self.manifest.name)

    @staticmethod
    def _session(
        path: Path, providers: ProviderList, threads: int, allow_spinning: bool
    ) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        spin = "1" if allow_spinning else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        options.add_session_config_entry("session.inter_op.allow_spinning", spin)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            return ort.InferenceSession(
                str(path), sess_options=options, providers=[name for name, _ in providers],
                provider_options=[opts for _, opts in providers])
        except Exception as exc:  # ORT raises its own exception types for bad files
            raise ModelLoadError(f"{path}: ONNX Runtime cannot load the model: {exc}") from exc

    @property
    def input_shape(self) -> tuple[int, int, int]:
        m = self.manifest
        return (m.input_channels, m.input_height, m.input_width)

    def run(self, instance: int, inputs: npt.NDArray[np.generic]) -> npt.NDArray[np.float32]:
        """Logits float32 [b, classes] for normalised inputs float32 [b, C, H, W]."""
        batch = np.ascontiguousarray(inputs, dtype=np.float32)
        if self.io_binding:
            return self._run_bound(self.sessions[instance], batch)[0]
        (out,) = self.sessions[instance].run(
            [self.manifest.output_name], {self.manifest.input_name: batch}
        )
        return np.asarray(out, dtype=np.float32)

    def run_with_embedding(
        self, instance: int, inputs: npt.NDArray[np.generic]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Logits float32 [b, classes] and embeddings float32 [b, embedding_dim] of one run
        (the same compute as :meth:`run`: the embedding is the logits' input). Only for a
        model whose manifest has an ``embedding``."""
        m = self.manifest
        if m.embedding_name is None:
            raise ValueError(f"model {m.name} has no embedding output")
        batch = np.ascontiguousarray(inputs, dtype=np.float32)
        if self.io_binding:
            logits, embedding = self._run_bound(self.sessions[instance], batch, True)
            assert embedding is not None
            return logits, embedding
        out, emb = self.sessions[instance].run(
            [m.output_name, m.embedding_name], {m.input_name: batch})
        return np.asarray(out, dtype=np.float32), np.asarray(emb, dtype=np.float32)

    def _run_bound(
        self, session: ort.InferenceSession, batch: npt.NDArray[np.float32],
        embedding: bool = False,
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32] | None]:
        """One run through an IOBinding: ONNX Runtime reads the input from this host array
        (on CUDA: one host-to-device copy) and writes the logits (and with ``embedding`` the
        embeddings) straight into host arrays allocated here (on CUDA: one device-to-host copy
        each), with no output allocation or copy of its own."""
        m = self.manifest
        out = np.empty((batch.shape[0], self.num_classes), dtype=np.float32)
        binding = session.io_binding()
        binding.bind_cpu_input(m.input_name, batch)
        binding.bind_output(m.output_name, "cpu", 0, np.float32, list(out.shape),
                            out.ctypes.data)
        emb = None
        if embedding and m.embedding_name is not None:
            emb = np.empty((batch.shape[0], self.embedding_dim), dtype=np.float32)
            binding.bind_output(m.embedding_name, "cpu", 0, np.float32, list(emb.shape),
                                emb.ctypes.data)
        session.run_with_iobinding(binding)
        return out, emb

    def warm_up(self, batch_sizes: tuple[int, ...] = (1,)) -> float:
        """Runs every instance once per batch size on zeros; returns the seconds it took."""
        started = time.perf_counter()
        for instance in range(len(self.sessions)):
            for size in batch_sizes:
                self.run(instance, np.zeros((size, *self.input_shape), dtype=np.float32))
        return time.perf_counter() - started
