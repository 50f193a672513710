"""The GPU install's CUDA matches ONNX Runtime's CUDA build (server/gpu_consistency.py): the
real pyproject/Dockerfile against the package index's metadata, and each kind of disagreement
it must catch."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import load_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "server" / "gpu_consistency.py"
gc = load_script(SCRIPT)

PYPROJECT = (ROOT / "pyproject.toml").read_text()
DOCKERFILE = (ROOT / "Dockerfile").read_text()
OLD_BASE = """ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
FROM ${CUDA_IMAGE} AS base-gpu
"""


@pytest.fixture(scope="module")
def resolved() -> tuple[dict[str, Any], dict[str, Any]]:
    data: tuple[dict[str, Any], dict[str, Any]] = gc.load_report(PYPROJECT, DOCKERFILE)
    return data


@pytest.fixture(scope="module")
def report(resolved: tuple[dict[str, Any], dict[str, Any]]) -> dict[str, Any]:
    return resolved[0]


@pytest.fixture(scope="module")
def facts(resolved: tuple[dict[str, Any], dict[str, Any]]) -> dict[str, Any]:
    return resolved[1]


def with_version(report: dict[str, Any], name: str, version: str) -> dict[str, Any]:
    changed = copy.deepcopy(report)
    for item in changed["install"]:
        if gc.normalise(item["metadata"]["name"]) == name:
            item["metadata"]["version"] = version
    return changed


FACTS: dict[str, Any] = {}


def failure(pyproject: str, dockerfile: str, report: dict[str, Any],
            facts: dict[str, Any] | None = None) -> str:
    with pytest.raises(gc.ConsistencyError) as exc:
        gc.check(pyproject, dockerfile, report, FACTS if facts is None else facts)
    return str(exc.value)


@pytest.fixture(autouse=True)
def real_facts(facts: dict[str, Any]) -> None:
    FACTS.clear()
    FACTS.update(facts)


def test_the_repository_agrees(report: dict[str, Any], facts: dict[str, Any]) -> None:
    stack = gc.check(PYPROJECT, DOCKERFILE, report, facts)
    assert (stack.ort_version, stack.cuda_major, stack.cudnn_major) == ("1.31.1", 13, 9)
    assert stack.python == "3.12" and stack.base_image == "python:3.12-slim-bookworm"
    assert {"nvidia-cuda-runtime", "nvidia-cublas", "nvidia-cudnn-cu13"} <= set(stack.packages)
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("gpu_consistency: onnxruntime-gpu 1.31.1 (CUDA 13, cuDNN 9)")


def test_a_cuda_12_base_image_is_caught(report: dict[str, Any]) -> None:
    old = DOCKERFILE.replace("FROM ${PYTHON_IMAGE} AS base-gpu\n", OLD_BASE)
    assert old != DOCKERFILE
    lines = failure(PYPROJECT, old, report).splitlines()
    assert lines[0].startswith("the GPU base image 'nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04'"
                               " runs Python ?, but the resolved wheel is onnxruntime_gpu-1.31.1-")
    assert lines[1] == ("the GPU base image nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 is "
                        "CUDA 12, onnxruntime-gpu 1.31.1 is built for CUDA 13")


def test_an_unpinned_or_extra_less_onnxruntime_gpu_is_caught(report: dict[str, Any]) -> None:
    pin = '"onnxruntime-gpu[cuda,cudnn]==1.31.1"'
    assert pin in PYPROJECT
    for loose in ('"onnxruntime-gpu>=1.20"', '"onnxruntime-gpu==1.31.1"'):
        assert failure(PYPROJECT.replace(pin, loose), DOCKERFILE, report) == (
            "the gpu extra must pin onnxruntime-gpu[cuda,cudnn]==VERSION, "
            f"found [{loose.replace(chr(34), chr(39))}]")


def test_cuda_libraries_of_another_major_are_caught(report: dict[str, Any]) -> None:
    assert failure(PYPROJECT, DOCKERFILE, with_version(report, "nvidia-cublas", "12.9.1.4")) \
        == ("nvidia-cublas 12.9.1.4 is CUDA 12, onnxruntime-gpu 1.31.1 is built for CUDA 13")
    assert failure(PYPROJECT, DOCKERFILE, with_version(report, "nvidia-cudnn-cu13", "8.9.7")) \
        == "nvidia-cudnn-cu13 8.9.7 is cuDNN 8, onnxruntime-gpu 1.31.1 wants cuDNN 9"
    renamed = copy.deepcopy(report)
    for item in renamed["install"]:
        if item["metadata"]["name"] == "nvidia-cudnn-cu13":
            item["metadata"]["name"] = "nvidia-cudnn-cu12"
    assert failure(PYPROJECT, DOCKERFILE, renamed) == (
        "nvidia-cudnn-cu12 9.28.1.4 is for CUDA 12, onnxruntime-gpu 1.31.1 is built for CUDA 13"
    )


def test_missing_cublas_is_caught(report: dict[str, Any], facts: dict[str, Any]) -> None:
    without = copy.deepcopy(report)
    without["install"] = [i for i in without["install"]
                          if i["metadata"]["name"] != "nvidia-cublas"]
    no_wheel = {k: v for k, v in facts.items() if k != "nvidia-cublas"}
    assert failure(PYPROJECT, DOCKERFILE, without, no_wheel).splitlines() == [
        "no cuBLAS in the gpu extra: the CUDA provider needs libcublas.so.13; "
        "add nvidia-cublas~=13.0",
        "the CUDA provider needs libcublas.so.13, libcublasLt.so.13, which no package of the "
        "gpu extra ships"]


def test_the_wheels_facts_agree(facts: dict[str, Any]) -> None:
    """What the range reads found in onnxruntime-gpu 1.31.1 and the nvidia-* wheels."""
    ort = facts["onnxruntime-gpu"]
    assert "cuda_version = '13.0'" in ort["build_info"]
    assert set(ort["provider_libraries"]) - gc.SYSTEM_LIBS == {
        "libcublas.so.13", "libcublasLt.so.13", "libcuda.so.1", "libcudart.so.13",
        "libcurand.so.10", "libonnxruntime_providers_cuda.so"}
    assert "libcudart.so.13" in facts["nvidia-cuda-runtime"]["shared_libraries"]
    assert "libcudnn.so.9" in facts["nvidia-cudnn-cu13"]["shared_libraries"]


def test_a_build_of_another_cuda_is_caught(report: dict[str, Any],
                                           facts: dict[str, Any]) -> None:
    other = copy.deepcopy(facts)
    other["onnxruntime-gpu"]["build_info"] = "cuda_version = '12.8'\n"
    assert failure(PYPROJECT, DOCKERFILE, report, other) == (
        "onnxruntime-gpu 1.31.1 was built with CUDA 12 but its cuda extra asks for CUDA 13")
    linked = copy.deepcopy(facts)
    linked["onnxruntime-gpu"]["provider_libraries"].append("libcufft.so.11")
    assert failure(PYPROJECT, DOCKERFILE, report, linked) == (
        "the CUDA provider needs libcufft.so.11, which no package of the gpu extra ships")


def test_onnxruntime_gpu_declares_cuda_13_and_cudnn_9(report: dict[str, Any]) -> None:
    ort = next(i for i in report["install"] if i["metadata"]["name"] == "onnxruntime-gpu")
    extras = [r for r in ort["metadata"]["requires_dist"] if "extra ==" in r]
    assert 'nvidia-cuda-runtime~=13.0; extra == "cuda"' in extras
    assert 'nvidia-cudnn-cu13~=9.0; extra == "cudnn"' in extras
    assert not any("cublas" in r for r in extras), "if ORT's extra adds cuBLAS, drop ours"
