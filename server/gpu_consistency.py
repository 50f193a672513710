#!/usr/bin/env python3
"""Checks that the GPU install's CUDA libraries match ONNX Runtime's CUDA build.

    python server/gpu_consistency.py            # check (resolves once, then reads the cache)
    python server/gpu_consistency.py --resolve  # refresh the cached resolution, then check

What it reads:
- pyproject.toml's ``gpu`` extra: onnxruntime-gpu pinned to one version with its ``cuda`` and
  ``cudnn`` extras, plus the cuBLAS requirement;
- the package index's metadata for that requirement set, resolved by ``pip install --dry-run
  --report`` for the image's Python on manylinux x86-64 (metadata only, no wheel download: a
  few seconds), cached in ``.cache/gpu-deps/`` under a name that changes with the requirements;
- the Dockerfile's GPU base image.

- from the resolved wheels themselves, by HTTP range requests (a few hundred kB, not the
  256 MB wheel): onnxruntime-gpu's ``build_and_package_info.py`` (the CUDA version it was built
  with), the libraries its CUDA provider links (the ``lib*.so*`` names in the first loadable
  segment of ``libonnxruntime_providers_cuda.so``, where ``.dynstr`` lies: its DT_NEEDED names
  and its own soname), and the file lists of the nvidia-* wheels (their zip directories).

What must hold: onnxruntime-gpu's own CUDA requirements name one CUDA major, the one it was
built with, and one cuDNN major; every CUDA-toolkit package the resolution installs (CUDA
runtime, cuBLAS, NVRTC, nvJitLink, any ``-cuNN`` package) has that major; cuBLAS is in the
resolution; every library the CUDA provider links, but the driver's ``libcuda.so.1`` and the C
and C++ runtime, is shipped by a resolved package, and so is ``libcudnn.so.<major>`` (loaded at
run time for convolutions); the resolved onnxruntime-gpu wheel is for the image's Python; the
GPU base image carries no CUDA, or the same CUDA major and cuDNN major. Exit status 0 when all
hold, 1 with one line per disagreement.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import struct
import subprocess
import sys
import tomllib
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "gpu-deps"
ORT = "onnxruntime-gpu"
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_27_x86_64", "manylinux_2_28_x86_64", "manylinux_2_34_x86_64")
# CUDA-toolkit packages versioned with the toolkit (their major is the CUDA major). cuFFT and
# cuRAND have their own version lines and are bounded by onnxruntime-gpu's requirements.
TOOLKIT_VERSIONED = ("nvidia-cuda-runtime", "nvidia-cublas", "nvidia-cuda-nvrtc",
                     "nvidia-nvjitlink")
PROVIDER = "onnxruntime/capi/libonnxruntime_providers_cuda.so"
BUILD_INFO = "onnxruntime/capi/build_and_package_info.py"
DRIVER = "libcuda.so.1"
SYSTEM_LIBS = frozenset({"libc.so.6", "libm.so.6", "libdl.so.2", "librt.so.1", "libpthread.so.0",
                         "libgcc_s.so.1", "libstdc++.so.6", "ld-linux-x86-64.so.2"})
"""The C and C++ runtime every Linux base image has."""


class ConsistencyError(Exception):
    """One or more disagreements; ``str`` has one line each."""


@dataclass(frozen=True)
class GpuStack:
    """What the check established."""

    ort_version: str
    cuda_major: int
    cudnn_major: int
    python: str  # "3.12"
    packages: dict[str, str]  # resolved name -> version
    base_image: str


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def gpu_requirements(pyproject: str) -> list[str]:
    """The gpu extra's onnxruntime-gpu and nvidia-* requirements, as written."""
    extra = tomllib.loads(pyproject)["project"]["optional-dependencies"]["gpu"]
    return [r for r in extra if normalise(r).startswith(("onnxruntime", "nvidia-"))]


def parse_dockerfile(text: str) -> tuple[dict[str, str], str]:
    """(ARG defaults, the image reference of the ``base-gpu`` stage with ARGs expanded)."""
    args: dict[str, str] = {}
    base = ""
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "ARG" and "=" in words[1]:
            key, value = words[1].split("=", 1)
            args[key] = value
        if len(words) == 4 and words[0] == "FROM" and words[2] == "AS" and words[3] == "base-gpu":
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), ""), words[1])
    return args, base


def python_of_image(image: str) -> str:
    """"3.12" for python:3.12-slim-bookworm; "" when the tag names no Python version."""
    match = re.match(r"(?:.*/)?python:(\d+\.\d+)", image)
    return match.group(1) if match else ""


def report_path(requirements: list[str], python: str) -> Path:
    key = hashlib.sha256(json.dumps([requirements, python, PLATFORMS]).encode()).hexdigest()
    return CACHE / f"report-{key[:16]}.json"


def resolve(requirements: list[str], python: str, out: Path) -> None:
    """Writes pip's installation report for ``requirements`` on Linux x86-64, CPython
    ``python`` (metadata only; raises ConsistencyError when pip cannot resolve)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
           "--disable-pip-version-check", "--only-binary=:all:", "--python-version", python,
           "--implementation", "cp", *platforms, "--target", str(out.parent / "unused"),
           "--report", str(out), *requirements]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    if result.returncode != 0:
        errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
        raise ConsistencyError("pip cannot resolve the gpu extra: " + "; ".join(errors))


def major(version: str) -> int:
    return int(version.split(".")[0])


def requirement_major(requirements: list[str], pattern: str) -> set[int]:
    """Majors named by requirements like ``nvidia-cuda-runtime~=13.0`` or ``...-cu13``."""
    found: set[int] = set()
    for req in requirements:
        match = re.match(pattern, normalise(req.split(";")[0]))
        if match:
            found.add(int(match.group(1)))
    return found


class RangeFile(io.RawIOBase):
    """A read-only, seekable view of a file served over HTTP(S) with Range requests."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url, self.pos = url, 0
        request = urllib.request.Request(url, method="HEAD")
        with urllib.request.urlopen(request, timeout=60) as response:
            self.size = int(response.headers["Content-Length"])

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = offset + (0, self.pos, self.size)[whence]
        return self.pos

    def read(self, size: int | None = -1) -> bytes:
        end = self.size if size is None or size < 0 else min(self.size, self.pos + size)
        if end <= self.pos:
            return b""
        data = self.fetch(self.pos, end)
        self.pos += len(data)
        return data

    def fetch(self, start: int, end: int) -> bytes:
        """Bytes start..end-1 of the file."""
        request = urllib.request.Request(self.url, headers={"Range": f"bytes={start}-{end - 1}"})
        with urllib.request.urlopen(request, timeout=60) as response:
            data: bytes = response.read()
        if len(data) != end - start:
            raise ConsistencyError(f"{self.url}: the server ignored a range request")
        return data


def provider_libraries(remote: RangeFile, archive: zipfile.ZipFile) -> list[str]:
    """``lib*.so*`` names in the first loadable segment of the CUDA provider library (its
    .dynstr: DT_NEEDED names and soname), read by inflating only the member's first bytes."""
    info = archive.getinfo(PROVIDER)
    header = remote.fetch(info.header_offset, info.header_offset + 30)
    name_len, extra_len = struct.unpack_from("<HH", header, 26)
    start = info.header_offset + 30 + name_len + extra_len
    if info.compress_type != zipfile.ZIP_DEFLATED:
        raise ConsistencyError(f"{PROVIDER}: unexpected zip compression {info.compress_type}")
    inflate = zlib.decompressobj(-15)
    head, pos = b"", start
    while len(head) < 64 or len(head) < segment_end(head):
        if pos >= start + info.compress_size or len(head) > 64 << 20:
            raise ConsistencyError(f"{PROVIDER}: no readable first segment")
        step = min(1 << 20, start + info.compress_size - pos)
        head += inflate.decompress(remote.fetch(pos, pos + step))
        pos += step
    segment = head[:segment_end(head)]
    names = re.findall(rb"(?<=\0)(lib[\w+.-]*\.so(?:\.\d+)*)(?=\0)", segment)
    return sorted({n.decode() for n in names})


def segment_end(head: bytes) -> int:
    """File size of an ELF64's first PT_LOAD segment (needs the headers in ``head``)."""
    if len(head) < 64:
        return 1 << 62
    phoff = struct.unpack_from("<Q", head, 32)[0]
    phentsize, phnum = struct.unpack_from("<HH", head, 54)
    if len(head) < phoff + phentsize * phnum:
        return 1 << 62
    for i in range(phnum):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from(
            "<IIQQQQ", head, phoff + i * phentsize)
        if p_type == 1:
            return int(p_offset + p_filesz)
    raise ConsistencyError(f"{PROVIDER}: no PT_LOAD segment")


def wheel_facts(url: str) -> dict[str, Any]:
    """The shared libraries a wheel ships; for onnxruntime-gpu also its build info and the
    CUDA provider's linked libraries. Reads the zip directory and two members by range."""
    remote = RangeFile(url)
    with zipfile.ZipFile(remote) as archive:
        names = archive.namelist()
        facts: dict[str, Any] = {
            "shared_libraries": sorted({n.rsplit("/", 1)[-1] for n in names
                                        if re.search(r"\.so(\.\d+)*$", n)})}
        if BUILD_INFO in names:
            facts["build_info"] = archive.read(BUILD_INFO).decode()
        if PROVIDER in names:
            facts["provider_libraries"] = provider_libraries(remote, archive)
    return facts


def collect_facts(report: dict[str, Any], out: Path) -> None:
    """Writes wheel_facts of onnxruntime-gpu and every nvidia-* wheel of ``report``."""
    facts = {}
    for item in report["install"]:
        name = normalise(item["metadata"]["name"])
        if name == ORT or name.startswith("nvidia-"):
            facts[name] = wheel_facts(item["download_info"]["url"])
    out.write_text(json.dumps(facts, indent=1, sort_keys=True))


def check(pyproject: str, dockerfile: str, report: dict[str, Any],
          facts: dict[str, Any]) -> GpuStack:
    """Returns the agreed stack, or raises ConsistencyError listing every disagreement."""
    problems: list[str] = []
    requirements = gpu_requirements(pyproject)
    pins = [r for r in requirements if normalise(r).startswith(ORT)]
    pin = re.fullmatch(r"onnxruntime[-_]gpu\[([\w,]+)\]==([\w.]+)", pins[0].lower()) \
        if len(pins) == 1 else None
    if pin is None or not {"cuda", "cudnn"} <= set(pin.group(1).split(",")):
        raise ConsistencyError(
            f"the gpu extra must pin onnxruntime-gpu[cuda,cudnn]==VERSION, found {pins}")
    pinned = pin.group(2)
    _, base = parse_dockerfile(dockerfile)
    python = python_of_image(base)
    installs = {normalise(i["metadata"]["name"]): i for i in report.get("install", [])}
    packages = {name: i["metadata"]["version"] for name, i in installs.items()}
    ort = installs.get(ORT)
    if ort is None:
        raise ConsistencyError(f"the resolution has no {ORT}")
    if ort["metadata"]["version"] != pinned:
        problems.append(f"{ORT} resolved to {ort['metadata']['version']}, pinned {pinned}")
    wheel = ort["download_info"]["url"].rsplit("/", 1)[-1]
    tag = "cp" + python.replace(".", "")
    if not python or f"-{tag}-" not in wheel:
        problems.append(f"the GPU base image {base!r} runs Python {python or '?'}, but the "
                        f"resolved wheel is {wheel}")

    ort_reqs = [r for r in ort["metadata"].get("requires_dist", []) if "extra ==" in r]
    cuda_majors = requirement_major(ort_reqs, r"nvidia-cuda-runtime(?:-cu\d+)?~=(\d+)")
    cudnn_majors = requirement_major(ort_reqs, r"nvidia-cudnn-cu\d+~=(\d+)")
    if len(cuda_majors) != 1 or len(cudnn_majors) != 1:
        raise ConsistencyError(f"{ORT} {pinned} names no single CUDA/cuDNN major in its "
                               f"extras: {ort_reqs}")
    cuda = cuda_majors.pop()
    cudnn = cudnn_majors.pop()

    for name, version in sorted(packages.items()):
        suffix = re.search(r"-cu(\d+)$", name)
        if suffix and int(suffix.group(1)) != cuda:
            problems.append(f"{name} {version} is for CUDA {suffix.group(1)}, "
                            f"{ORT} {pinned} is built for CUDA {cuda}")
        if name in TOOLKIT_VERSIONED and major(version) != cuda:
            problems.append(f"{name} {version} is CUDA {major(version)}, "
                            f"{ORT} {pinned} is built for CUDA {cuda}")
        if name.startswith("nvidia-cudnn") and major(version) != cudnn:
            problems.append(f"{name} {version} is cuDNN {major(version)}, {ORT} {pinned} "
                            f"wants cuDNN {cudnn}")
    if "nvidia-cublas" not in packages:
        problems.append(f"no cuBLAS in the gpu extra: the CUDA provider needs "
                        f"libcublas.so.{cuda}; add nvidia-cublas~={cuda}.0")

    problems += wheel_problems(facts, pinned, cuda, cudnn)

    image = re.match(r"(?:.*/)?nvidia/cuda:(\d+)\.[\w.-]*", base)
    if image and int(image.group(1)) != cuda:
        problems.append(f"the GPU base image {base} is CUDA {image.group(1)}, "
                        f"{ORT} {pinned} is built for CUDA {cuda}")
    # nvidia/cuda tags name cuDNN as "cudnn8" up to CUDA 12.3, as "cudnn" (cuDNN 9) after.
    tagged = re.search(r"-cudnn(\d*)-", base)
    if image and tagged and int(tagged.group(1) or 9) != cudnn:
        problems.append(f"the GPU base image {base} carries cuDNN {tagged.group(1) or 9}, "
                        f"{ORT} {pinned} wants cuDNN {cudnn}")
    if problems:
        raise ConsistencyError("\n".join(problems))
    return GpuStack(pinned, cuda, cudnn, python, packages, base)


def wheel_problems(facts: dict[str, Any], pinned: str, cuda: int, cudnn: int) -> list[str]:
    """Disagreements between onnxruntime-gpu's build, its CUDA provider's libraries and the
    libraries the resolved nvidia-* wheels ship."""
    ort = facts.get(ORT, {})
    built = re.search(r"cuda_version\s*=\s*['\"](\d+)", ort.get("build_info", ""))
    problems = []
    if built is None:
        problems.append(f"{ORT} {pinned} states no cuda_version in {BUILD_INFO}")
    elif int(built.group(1)) != cuda:
        problems.append(f"{ORT} {pinned} was built with CUDA {built.group(1)} but its cuda "
                        f"extra asks for CUDA {cuda}")
    shipped = {lib for name, f in facts.items() if name != ORT
               for lib in f.get("shared_libraries", [])}
    linked = set(ort.get("provider_libraries", []))
    if not linked:
        problems.append(f"no linked libraries found in {ORT} {pinned}'s {PROVIDER}")
    wanted = sorted((linked | {f"libcudnn.so.{cudnn}"}) - SYSTEM_LIBS - {DRIVER}
                    - {PROVIDER.rsplit("/", 1)[-1]})
    unshipped = [lib for lib in wanted if lib not in shipped]
    if unshipped:
        problems.append(f"the CUDA provider needs {', '.join(unshipped)}, which no package of "
                        "the gpu extra ships")
    return problems


def load_report(pyproject: str, dockerfile: str,
                refresh: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """The cached resolution of the gpu extra for the Dockerfile's Python and the facts read
    from its wheels (made when absent or when ``refresh``)."""
    requirements = gpu_requirements(pyproject)
    python = python_of_image(parse_dockerfile(dockerfile)[1]) or "3.12"
    path = report_path(requirements, python)
    facts_path = path.with_name(path.name.replace("report-", "wheels-"))
    if refresh or not path.is_file():
        resolve(requirements, python, path)
    report: dict[str, Any] = json.loads(path.read_text())
    if refresh or not facts_path.is_file():
        collect_facts(report, facts_path)
    facts: dict[str, Any] = json.loads(facts_path.read_text())
    return report, facts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolve", action="store_true", help="refresh the cached resolution")
    args = parser.parse_args(argv)
    pyproject = (ROOT / "pyproject.toml").read_text()
    dockerfile = (ROOT / "Dockerfile").read_text()
    try:
        stack = check(pyproject, dockerfile, *load_report(pyproject, dockerfile, args.resolve))
    except ConsistencyError as exc:
        print(f"gpu_consistency: FAILED\n{exc}", file=sys.stderr)
        return 1
    nvidia = ", ".join(f"{n} {v}" for n, v in sorted(stack.packages.items())
                       if n.startswith("nvidia-"))
    print(f"gpu_consistency: {ORT} {stack.ort_version} (CUDA {stack.cuda_major}, cuDNN "
          f"{stack.cudnn_major}) on Python {stack.python}, base {stack.base_image}; {nvidia}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
