"""Runs the model: ONNX Runtime sessions (one per instance) on the chosen execution provider.

Provider choice (``execution_provider``): ``auto`` takes CUDA when the CUDA build of ONNX Runtime
is installed *and* the NVIDIA driver loads, CPU otherwise, so CPU hosts start without the CUDA
provider's load errors; ``cuda`` insists on CUDA and fails at start-up when it cannot run;
``cpu`` never asks for CUDA. The provider actually in use is read back from the session.
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from hardscore_server.model_dir import ModelManifest, check_io, load_manifest

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class ModelLoadError(RuntimeError):
    """The model cannot be served as configured (bad directory, provider unavailable)."""


def cuda_loads() -> bool:
    """True when the CUDA build of ONNX Runtime is installed and the NVIDIA driver loads."""
    if CUDA not in ort.get_available_providers():
        return False
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def choose_providers(setting: str) -> list[str]:
    """ONNX Runtime provider list for the ``execution_provider`` setting (auto, cpu, cuda)."""
    if setting == "cpu":
        return [CPU]
    if setting == "cuda":
        if not cuda_loads():
            raise ModelLoadError(
                "execution_provider=cuda, but CUDA cannot run here: install the 'gpu' extra "
                "(onnxruntime-gpu) on a host with an NVIDIA driver, or use auto/cpu"
            )
        return [CUDA, CPU]
    return [CUDA, CPU] if cuda_loads() else [CPU]


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
    ) -> None:
        self.model_dir = model_dir
        self.manifest: ModelManifest = load_manifest(model_dir)
        providers = choose_providers(execution_provider)
        threads = intra_op_threads or max(1, available_cpus() // instances)
        self.sessions = [
            self._session(model_dir / "model.onnx", providers, threads, allow_spinning)
            for _ in range(instances)
        ]
        first = self.sessions[0]
        check_io(self.manifest, first.get_inputs(), first.get_outputs())
        self.provider: str = first.get_providers()[0]
        if execution_provider == "cuda" and self.provider != CUDA:
            raise ModelLoadError(f"asked for CUDA but ONNX Runtime runs on {self.provider}")
        self.intra_op_threads = threads
        if self.manifest.random_weights:
            log.warning(
                "model %s was exported with RANDOM weights: its predictions and scores are "
                "meaningless (benchmarking only)", self.manifest.name)

    @staticmethod
    def _session(
        path: Path, providers: list[str], threads: int, allow_spinning: bool
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
            return ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # ORT raises its own exception types for bad files
            raise ModelLoadError(f"{path}: ONNX Runtime cannot load the model: {exc}") from exc

    @property
    def input_shape(self) -> tuple[int, int, int]:
        m = self.manifest
        return (m.input_channels, m.input_height, m.input_width)

    def run(self, instance: int, inputs: npt.NDArray[np.generic]) -> npt.NDArray[np.float32]:
        """Logits float32 [b, classes] for normalised inputs float32 [b, C, H, W]."""
        batch = np.ascontiguousarray(inputs, dtype=np.float32)
        (out,) = self.sessions[instance].run(
            [self.manifest.output_name], {self.manifest.input_name: batch}
        )
        return np.asarray(out, dtype=np.float32)

    def warm_up(self, batch_sizes: tuple[int, ...] = (1,)) -> float:
        """Runs every instance once per batch size on zeros; returns the seconds it took."""
        started = time.perf_counter()
        for instance in range(len(self.sessions)):
            for size in batch_sizes:
                self.run(instance, np.zeros((size, *self.input_shape), dtype=np.float32))
        return time.perf_counter() - started
