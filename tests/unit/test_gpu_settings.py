"""GPU settings become provider options; I/O binding gives the same logits; CUDA refusals name
what is missing."""

from __future__ import annotations

import ctypes
import shutil
from pathlib import Path

import numpy as np
import pytest

from hardscore_server.config import ConfigError, load_config
from hardscore_server.model.model_dir import DEFAULT_MODEL_DIR
from hardscore_server.model.runner import (
    CUDA_PROVIDER_LIBRARY,
    GpuSettings,
    ModelLoadError,
    ModelRunner,
    cuda_diagnosis,
    gpu_settings,
    provider_options,
)
from hardscore_server.model.shared_libs import Resolver


def test_defaults_become_cuda_options() -> None:
    assert provider_options("cuda") == [
        ("CUDAExecutionProvider", {"device_id": "0", "cudnn_conv_algo_search": "EXHAUSTIVE",
                                   "arena_extend_strategy": "kNextPowerOfTwo"}),
        ("CPUExecutionProvider", {}),
    ]
    assert provider_options("cpu", GpuSettings(device_id=3)) == [("CPUExecutionProvider", {})]


def test_configured_settings_become_tensorrt_and_cuda_options() -> None:
    config = load_config(environ={
        "HARDSCORE_EXECUTION_PROVIDER": "tensorrt",
        "HARDSCORE_CUDA_DEVICE_ID": "1",
        "HARDSCORE_CUDNN_CONV_ALGO_SEARCH": "heuristic",
        "HARDSCORE_CUDA_MEM_LIMIT_BYTES": str(8 << 30),
        "HARDSCORE_CUDA_ARENA_EXTEND_STRATEGY": "same_as_requested",
        "HARDSCORE_TENSORRT_ENGINE_CACHE_DIR": "/var/cache/trt",
        "HARDSCORE_TENSORRT_FP16": "true",
        "HARDSCORE_IO_BINDING": "true",
    })
    assert config.io_binding is True
    assert provider_options(config.execution_provider, gpu_settings(config)) == [
        ("TensorrtExecutionProvider", {"device_id": "1", "trt_fp16_enable": "True",
                                       "trt_engine_cache_enable": "True",
                                       "trt_engine_cache_path": "/var/cache/trt"}),
        ("CUDAExecutionProvider", {"device_id": "1", "cudnn_conv_algo_search": "HEURISTIC",
                                   "arena_extend_strategy": "kSameAsRequested",
                                   "gpu_mem_limit": "8589934592"}),
        ("CPUExecutionProvider", {}),
    ]
    no_cache = provider_options("tensorrt", GpuSettings())[0]
    assert no_cache == ("TensorrtExecutionProvider", {"device_id": "0",
                                                      "trt_fp16_enable": "False"})


@pytest.mark.parametrize(("env", "message"), [
    ({"HARDSCORE_CUDA_DEVICE_ID": "-1"}, "cuda_device_id must be >= 0, got -1"),
    ({"HARDSCORE_CUDNN_CONV_ALGO_SEARCH": "fast"},
     "cudnn_conv_algo_search must be one of exhaustive, heuristic, default, got 'fast'"),
    ({"HARDSCORE_CUDA_MEM_LIMIT_BYTES": "-5"}, "cuda_mem_limit_bytes must be >= 0, got -5"),
    ({"HARDSCORE_CUDA_ARENA_EXTEND_STRATEGY": "double"},
     "cuda_arena_extend_strategy must be one of next_power_of_two, same_as_requested, "
     "got 'double'"),
])
def test_bad_gpu_settings_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(environ=env)
    assert str(exc.value) == message


def test_cpu_session_reads_back_its_provider() -> None:
    runner = ModelRunner(DEFAULT_MODEL_DIR, execution_provider="cpu", intra_op_threads=1)
    assert runner.provider == "CPUExecutionProvider"
    assert list(runner.sessions[0].get_provider_options()) == ["CPUExecutionProvider"]


def test_io_binding_gives_the_same_logits_into_a_fresh_array() -> None:
    plain = ModelRunner(DEFAULT_MODEL_DIR, execution_provider="cpu", intra_op_threads=1)
    bound = ModelRunner(DEFAULT_MODEL_DIR, execution_provider="cpu", intra_op_threads=1,
                        io_binding=True)
    rng = np.random.default_rng(0)
    for size in (1, 3, 8):
        batch = rng.standard_normal((size, *plain.input_shape)).astype(np.float32)
        want = plain.run(0, batch)
        got = bound.run(0, batch)
        assert got.dtype == np.float32 and got.shape == (size, plain.num_classes)
        assert got.flags.owndata and got.flags.c_contiguous
        np.testing.assert_array_equal(got, want)
    first = bound.run(0, batch)
    second = bound.run(0, batch)
    assert not np.shares_memory(first, second), "each call gets its own output array"


def test_cuda_on_the_cpu_build_is_refused_with_the_reason() -> None:
    with pytest.raises(ModelLoadError) as exc:
        ModelRunner(DEFAULT_MODEL_DIR, execution_provider="cuda")
    assert str(exc.value) == (
        "execution_provider=cuda, but CUDA cannot run here: this ONNX Runtime has no CUDA "
        "provider (the CPU build 'onnxruntime' is installed): install the 'gpu' extra, "
        "pip install 'hardscore[gpu]'; or use auto/cpu")


def test_diagnosis_names_each_missing_library(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    # A real ELF file standing in for the provider library, whose neighbours are absent.
    shutil.copyfile(Path(torch.__file__).parent / "lib" / "libtorch.so",
                    tmp_path / CUDA_PROVIDER_LIBRARY)
    try:
        ctypes.CDLL("libcuda.so.1")
        driver = []
    except OSError:
        driver = ["libcuda.so.1 (the NVIDIA driver: not installed, or not mounted into the "
                  "container)"]
    text = cuda_diagnosis(tmp_path, Resolver({}, use_loaded=False))
    assert text == "missing " + ", ".join([
        *driver,
        f"libtorch_cpu.so (needed by {CUDA_PROVIDER_LIBRARY})",
        f"libtorch_cuda.so (needed by {CUDA_PROVIDER_LIBRARY})",
    ])
