"""The one-shot GPU check: is CUDA in use, how fast is ONNX Runtime on the GPU, how fast is the
served path, how fast can the front end decode. Prints one table.

    python bench/gpu_check.py [--wheels DIR] [--perf-analyzer-cache DIR] [--output FILE]
    python bench/gpu_check.py --dry [--output FILE]   # every step on the CPU, tiny settings
    python bench/gpu_check.py split WHEEL --out DIR [--part-mib 60]
    python bench/gpu_check.py prepare [--out .cache/gpu-carry]   # what a lent machine needs

Steps, each a group of rows of the table:
1. provider: a session on CUDA (``--dry``: CPU), the provider ONNX Runtime reports, and, if it
   is not CUDA, the libraries that are missing (hardscore_server.model.runner.cuda_diagnosis).
2. raw: the ResNet50 in the ImageNet layout (224x224) and the CIFAR layout (32x32), random
   weights, exported with hardscore-export's code, float32 and its float16 conversion; plain
   ``InferenceSession.run`` on host arrays (the host-to-device copy included) at batch sizes
   1..256; images/s is the median of timed runs after warm-up. The float16 model's logits are
   checked against the float32 one's on the device (FP16_TOLERANCE of
   hardscore_server.tools.parity).
3. served: the server on the CIFAR model, loaded by Triton's perf_analyzer
   (bench/perf_analyzer.sh: ``-i grpc -b 1 --concurrency-range C:C`` with 8 fixed images as
   input data) at concurrency 1..64.
4. frontend: decoding 224x224 JPEGs to model input with hardscore's CPU pipeline
   (preprocess.decode_image), in 1 process and in one process per core; then, where torch and
   torchvision are installed, ``torchvision.io.decode_jpeg`` on the CUDA device (``--dry``: on
   the CPU) in batches, then resize, crop and normalise there (images/s is that whole job, as
   for the CPU rows); its decoded pixels compared with Pillow's decode of the same files:
   max |GPU - CPU| <= DECODE_MAX_DIFF levels and mean <= DECODE_MEAN_DIFF (JPEG decoders
   may round the inverse DCT and chroma upsampling differently; the figures are
   hardscore_server.pipeline.torch_decode's, which the server's ``jpeg_decode_device=cuda`` is
   held to).

A machine without network (the lent GPU machine): ``--wheels DIR`` installs every wheel in DIR
(onnxruntime-gpu and the server's pure dependencies; ``*.whl.partNN`` files, made by the
``split`` subcommand to travel in pieces, are joined first) into ``.cache/gpu-site``
(``pip install --target``) and reruns this script with it first on PYTHONPATH and the system's
nvidia-* library directories (torch's CUDA) on LD_LIBRARY_PATH.
``--perf-analyzer-cache DIR`` is bench/perf_analyzer.sh's cache (PERF_ANALYZER_CACHE) carried
in; a ``libb64.so.0d`` in it is installed when the system lacks one.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import functools
import glob
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
for _sub in ("server", "client", "proto"):
    if str(ROOT / _sub) not in sys.path:
        sys.path.insert(0, str(ROOT / _sub))

GPU_SITE = ROOT / ".cache" / "gpu-site"
PART = re.compile(r"^(?P<wheel>.+\.whl)\.part(?P<index>\d+)$")


@dataclass(frozen=True)
class Settings:
    """What one run measures: the GPU settings, or tiny CPU ones for ``--dry``."""

    provider: str
    layouts: tuple[tuple[str, int], ...]  # (layout, input size in pixels)
    batch_sizes: tuple[int, ...]
    run_seconds: float  # timed seconds per raw measurement
    concurrency: tuple[int, ...]
    interval_ms: int
    max_trials: int
    decode_images: int
    decode_seconds: float
    tiny_model: bool
    stability_percent: int  # perf_analyzer: windows agreeing within this are stable


GPU = Settings("cuda", (("imagenet", 224), ("cifar", 32)), (1, 2, 4, 8, 16, 32, 64, 128, 256),
               0.5, (1, 2, 4, 8, 16, 32, 64), 1000, 5, 256, 3.0, False, 25)
# Dry runs share 2 loaded cores with other work: perf_analyzer takes any window as stable.
DRY = Settings("cpu", (("imagenet", 48), ("cifar", 16)), (1, 4), 0.05, (1, 2), 300, 4, 16, 0.3,
               True, 1000)
TIME_LIMIT_S = 450.0
"""Steps not started by then are listed as skipped (the lent machine gives 8 minutes)."""


@dataclass
class Table:
    """The one table: step, model, precision, load, images/s, note."""

    rows: list[tuple[str, ...]] = field(default_factory=list)

    def add(self, step: str, model: str, precision: str, load: str, rate: float | None,
            note: str = "") -> None:
        value = "" if rate is None else f"{rate:,.0f}" if rate >= 100 else f"{rate:,.1f}"
        self.rows.append((step, model, precision, load, value, note))
        print(f"  {step:9} {model:16} {precision:9} {load:18} {value:>10}  {note}", flush=True)

    def markdown(self) -> str:
        header = ("step", "model", "precision", "load", "images/s", "note")
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- wheels


def split_wheel(wheel: Path, out: Path, part_mib: int) -> list[Path]:
    """Cuts ``wheel`` into ``out/<name>.partNN`` files of at most ``part_mib`` MiB."""
    out.mkdir(parents=True, exist_ok=True)
    parts = []
    with wheel.open("rb") as f:
        for index in range(1000):
            chunk = f.read(part_mib << 20)
            if not chunk:
                break
            part = out / f"{wheel.name}.part{index:02d}"
            part.write_bytes(chunk)
            parts.append(part)
    return parts


def join_parts(directory: Path) -> list[Path]:
    """Joins every complete ``X.whl.part00..NN`` series in ``directory`` into ``X.whl``."""
    series: dict[str, list[tuple[int, Path]]] = {}
    for path in directory.iterdir():
        match = PART.match(path.name)
        if match:
            series.setdefault(match["wheel"], []).append((int(match["index"]), path))
    joined = []
    for wheel, parts in series.items():
        parts.sort()
        if [i for i, _ in parts] != list(range(len(parts))):
            raise SystemExit(f"gpu_check: parts of {wheel} are missing: have "
                             f"{[i for i, _ in parts]}")
        target = directory / wheel
        with target.open("wb") as out:
            for _, part in parts:
                out.write(part.read_bytes())
        joined.append(target)
    return joined


def nvidia_library_dirs() -> list[str]:
    """lib directories of the installed nvidia-* pip packages (torch's CUDA libraries)."""
    dirs: list[str] = []
    for base in sys.path:
        dirs += sorted(glob.glob(os.path.join(base, "nvidia", "*", "lib")))
    return list(dict.fromkeys(d for d in dirs if os.path.isdir(d)))


def install_wheels(wheels: Path, site: Path) -> list[str]:
    """Joins parts, then installs every wheel in ``wheels`` and its subfolders into ``site``
    (``pip install --target``, no dependencies, no index); returns the wheel paths."""
    for directory in [wheels, *(p for p in wheels.rglob("*") if p.is_dir())]:
        join_parts(directory)
    files = sorted(str(p) for p in wheels.rglob("*.whl"))
    if not files:
        raise SystemExit(f"gpu_check: no wheels in {wheels}")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index",
                    "--no-deps", "--disable-pip-version-check", "--upgrade", "--target",
                    str(site), *files], check=True)
    return files


def rerun_env(site: Path) -> dict[str, str]:
    """This environment with ``site`` first on PYTHONPATH (its onnxruntime-gpu shadows the
    system's CPU build) and the nvidia-* library directories (torch's CUDA) on
    LD_LIBRARY_PATH, where onnxruntime-gpu finds them."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [env.get("PYTHONPATH")])])
    env["LD_LIBRARY_PATH"] = ":".join(
        [*nvidia_library_dirs(), *filter(None, [env.get("LD_LIBRARY_PATH")])])
    return env


def reexec_with_wheels(wheels: Path, argv: Sequence[str]) -> int:
    """Installs the wheels in ``wheels`` into GPU_SITE and reruns this script without
    ``--wheels`` in :func:`rerun_env`; returns the rerun's exit status."""
    install_wheels(wheels, GPU_SITE)
    env = rerun_env(GPU_SITE)
    rest = list(argv)
    index = rest.index("--wheels")
    del rest[index:index + 2]
    return subprocess.run([sys.executable, str(Path(__file__).resolve()), *rest], env=env,
                          check=False).returncode


_deadline = [float("inf")]


def late() -> bool:
    """True once the run's time limit has passed."""
    return time.monotonic() > _deadline[0]


CARRY_PACKAGES = ("flatbuffers", "protobuf", "grpcio", "grpcio-health-checking",
                  "grpcio-reflection", "prometheus-client", "onnx", "ml-dtypes", "numpy",
                  "pillow")
"""What the lent machine may lack besides onnxruntime-gpu: the server's and the export's
dependencies, at this environment's versions (installed first on PYTHONPATH, they shadow the
system's copies). torchvision must match the machine's torch build, so it is not carried."""


def carry_size(path: Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    return sum(p.stat().st_size for p in [path, *path.rglob("*")] if p.is_file())


def prepare(out: Path, part_mib: int, perf_analyzer_cache: Path) -> list[list[Path]]:
    """Fetches what the lent machine needs into ``out``: ``parts/`` (wheels over ``part_mib``
    MiB, split), ``wheels/`` (the others; CPython 3.12, manylinux x86-64), ``perf_analyzer/``
    (the binary, its libcudart and libb64). Returns the paths to carry, one call per group of
    at most ``part_mib`` MiB (a folder travels whole)."""
    import tomllib
    from importlib import metadata

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["gpu"]
    ort = next(r for r in extra if r.startswith("onnxruntime-gpu"))
    pins = [re.sub(r"\[.*\]", "", ort)]
    pins += [f"{name}=={metadata.version(name)}" for name in CARRY_PACKAGES]
    parts, wheels, pa = out / "parts", out / "wheels", out / "perf_analyzer"
    for directory in (parts, wheels, pa):
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
    platforms = [a for p in ("manylinux2014_x86_64", "manylinux_2_17_x86_64",
                             "manylinux_2_27_x86_64", "manylinux_2_28_x86_64")
                 for a in ("--platform", p)]
    with tempfile.TemporaryDirectory(prefix="hardscore-wheels-") as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "--disable-pip-version-check", "--only-binary=:all:", "--python-version",
                        "3.12", "--implementation", "cp", *platforms, "--dest", tmp, *pins],
                       check=True)
        for wheel in sorted(Path(tmp).glob("*.whl")):
            if wheel.stat().st_size > part_mib << 20:
                split_wheel(wheel, parts, part_mib)
            else:
                shutil.copyfile(wheel, wheels / wheel.name)
    for item in ("tritonclient-*.data", "nvidia"):
        for source in perf_analyzer_cache.glob(item):
            shutil.copytree(source, pa / source.name)
    listed = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True,
                            check=False).stdout
    libb64 = re.search(r"libb64\.so\.0d .*=> (\S+)", listed)
    if libb64:
        shutil.copyfile(libb64.group(1), pa / "libb64.so.0d")

    # First fit, largest first, into carries of at most part_mib MiB.
    groups: list[list[Path]] = []
    for entry in sorted([*parts.iterdir(), wheels, pa], key=carry_size, reverse=True):
        fits = [g for g in groups
                if sum(map(carry_size, g)) + carry_size(entry) <= part_mib << 20]
        if fits:
            fits[0].append(entry)
        else:
            groups.append([entry])
    return groups


# --------------------------------------------------------------------------- models


def export_models(settings: Settings, work: Path, log: Callable[[str], None]) -> dict[str, Path]:
    """Model directories "<layout>-fp32" and "<layout>-fp16", exported with hardscore's code."""
    from hardscore_server.tools import export
    from hardscore_server.tools.torch_models import CIFAR10_MEAN, CIFAR10_STD

    quiet = lambda _line: None  # noqa: E731
    dirs: dict[str, Path] = {}
    for layout, size in settings.layouts:
        fp32 = work / f"{layout}-fp32"
        if settings.tiny_model:
            import torch

            torch.manual_seed(0)
            nn = torch.nn
            model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8),
                                  nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
            export.export_model(model, fp32, name=f"tiny-{layout}", version="1",
                                class_names=[f"c{i}" for i in range(10)],
                                input_size=(size, size), mean=CIFAR10_MEAN,
                                std=CIFAR10_STD, random_weights=True, log=quiet)
        else:
            parser = argparse.ArgumentParser()
            export.add_export_arguments(parser)
            export.export_resnet50(parser.parse_args(
                ["--layout", layout, "--random-weights", "--out", str(fp32)]), log=quiet)
        dirs[f"{layout}-fp32"] = fp32
        dirs[f"{layout}-fp16"] = to_fp16_dir(fp32, work / f"{layout}-fp16")
        log(f"exported {layout} ({size}x{size}) float32 and float16")
    return dirs


def to_fp16_dir(fp32: Path, out: Path) -> Path:
    """The float16 conversion of a model directory (manifest copied)."""
    import onnx

    from hardscore_server.model.model_dir import MANIFEST_FILE, MODEL_FILE
    from hardscore_server.tools.fp16 import convert_to_float16

    out.mkdir(parents=True, exist_ok=True)
    half = convert_to_float16(onnx.load(str(fp32 / MODEL_FILE)))
    onnx.save_model(half, str(out / MODEL_FILE))
    shutil.copyfile(fp32 / MANIFEST_FILE, out / MANIFEST_FILE)
    return out


# --------------------------------------------------------------------------- steps


def step_provider(settings: Settings, model_dir: Path, table: Table) -> bool:
    from hardscore_server.model.runner import ModelLoadError, ModelRunner, cuda_diagnosis

    try:
        runner = ModelRunner(model_dir, execution_provider=settings.provider, intra_op_threads=0)
    except ModelLoadError as exc:
        table.add("provider", model_dir.name, "", "", None, f"FAILED: {exc}")
        return False
    note = runner.provider
    if settings.provider == "cuda":
        import onnxruntime as ort

        note += f" (onnxruntime {ort.__version__}; {cuda_diagnosis()})"
    table.add("provider", model_dir.name, "", "", None, note)
    return True


def timed_rate(run: Callable[[], Any], batch: int, seconds: float) -> float:
    """Median images/s over runs of ``run`` (warm-up first) for about ``seconds``."""
    for _ in range(3):
        run()
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < 3 or time.perf_counter() < deadline:
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return batch / float(np.median(times))


def step_raw(settings: Settings, dirs: dict[str, Path], table: Table) -> None:
    from hardscore_server.model.runner import ModelRunner
    from hardscore_server.tools.parity import FP16_TOLERANCE

    for layout, size in settings.layouts:
        runners = {p: ModelRunner(dirs[f"{layout}-{p}"], execution_provider=settings.provider)
                   for p in ("fp32", "fp16")}
        x = np.random.default_rng(0).standard_normal((4, 3, size, size)).astype(np.float32)
        want, got = runners["fp32"].run(0, x), runners["fp16"].run(0, x)
        diff = float(np.abs(got - want).max())
        bound = FP16_TOLERANCE * max(1.0, float(np.abs(want).max()))
        parity = f"fp16 parity {diff:.2e} <= {bound:.2e}: {'ok' if diff <= bound else 'FAIL'}"
        for precision, runner in runners.items():
            for batch in settings.batch_sizes:
                if late():
                    table.add("raw", f"{layout} {size}px", precision, f"batch {batch}", None,
                              "skipped: time limit")
                    continue
                inputs = np.random.default_rng(batch).standard_normal(
                    (batch, 3, size, size)).astype(np.float32)
                rate = timed_rate(functools.partial(runner.run, 0, inputs), batch,
                                  settings.run_seconds)
                note = parity if precision == "fp16" and batch == settings.batch_sizes[0] else ""
                table.add("raw", f"{layout} {size}px", precision, f"batch {batch}", rate, note)


def input_data(path: Path, size: int, name: str) -> Path:
    """perf_analyzer input data: 8 fixed float32 images [3, size, size] (seeded normal)."""
    rng = np.random.default_rng(8)
    data = [{name: {"content": [round(float(v), 4) for v in
                                rng.standard_normal(3 * size * size)],
                    "shape": [3, size, size]}} for _ in range(8)]
    path.write_text(json.dumps({"data": data}))
    return path


def step_served(settings: Settings, model_dir: Path, cache: Path | None, work: Path,
                table: Table) -> None:
    from hardscore_server.model.model_dir import load_manifest

    manifest = load_manifest(model_dir)
    data = input_data(work / "input.json", manifest.input_height, manifest.input_name)
    env = dict(os.environ)
    env["HARDSCORE_EXECUTION_PROVIDER"] = settings.provider
    env["PYTHONPATH"] = os.pathsep.join([*(str(ROOT / s) for s in ("server", "client", "proto")),
                                         *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("PYTHON", sys.executable)
    if cache is not None:
        env["PERF_ANALYZER_CACHE"] = str(cache)
        install_libb64(cache)
        missing = perf_analyzer_missing(cache)
        if missing:
            table.add("served", model_dir.name, "fp32", "", None,
                      f"FAILED: perf_analyzer cannot load: {missing}")
            return
    for concurrency in settings.concurrency:
        if late():
            table.add("served", model_dir.name, "fp32", f"concurrency {concurrency}", None,
                      "skipped: time limit")
            continue
        csv = work / f"served-{concurrency}.csv"
        proc = subprocess.run(
            ["bash", str(ROOT / "bench" / "perf_analyzer.sh"), "--model-dir", str(model_dir),
             "--concurrency", f"{concurrency}:{concurrency}", "--interval-ms",
             str(settings.interval_ms), "--max-trials", str(settings.max_trials),
             "--stability", str(settings.stability_percent), "--csv",
             str(csv), "--", "--input-data", str(data)],
            env=env, capture_output=True, text=True, timeout=300, check=False)
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
            table.add("served", model_dir.name, "fp32", f"concurrency {concurrency}", None,
                      "FAILED: " + " / ".join(tail))
            continue
        import csv as csv_module

        (row,) = list(csv_module.DictReader(csv.open()))
        provider = re.search(r"\((\w+ExecutionProvider)\)", proc.stdout)
        table.add("served", model_dir.name, "fp32", f"concurrency {concurrency}",
                  float(row["Inferences/Second"]),
                  f"p50 {int(row['p50 latency']) / 1000:.2f} ms"
                  + (f", {provider.group(1)}" if provider else ""))


def perf_analyzer_missing(cache: Path) -> str:
    """The libraries the carried perf_analyzer binary would not find ("" when none)."""
    from hardscore_server.model.shared_libs import Resolver

    binary = next(iter(cache.glob("tritonclient-*.data/data/bin/perf_analyzer")), None)
    if binary is None:
        return ""  # perf_analyzer.sh fetches it (needs the network)
    cudart = [str(p.parent) for p in cache.rglob("libcudart.so.12")]
    env = {"LD_LIBRARY_PATH": ":".join([*cudart, os.environ.get("LD_LIBRARY_PATH", "")])}
    return ", ".join(str(m) for m in Resolver(env).missing(binary))


def install_libb64(cache: Path) -> None:
    """Puts a carried libb64.so.0d where the loader finds it (root only, no network)."""
    carried = next(iter(cache.rglob("libb64.so.0d")), None)
    listed = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True,
                            check=False).stdout
    if carried is None or "libb64.so.0d" in listed or os.geteuid() != 0:
        return
    shutil.copy(carried, "/usr/local/lib/libb64.so.0d")
    subprocess.run(["ldconfig"], check=False)


def jpeg_files(count: int, size: int) -> list[bytes]:
    """Seeded smooth-gradient-plus-noise 4:2:0 JPEGs (quality 90) of size x size pixels."""
    from PIL import Image

    rng = np.random.default_rng(1)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    files = []
    for i in range(count):
        base = (ramp[None, :, None] * [1.0, 0.5, 0.2] + ramp[:, None, None] * [0.0, 0.5, 0.8])
        noisy = base + rng.normal(0, 12, (size, size, 3)) + i % 7
        out = io.BytesIO()
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
        files.append(out.getvalue())
    return files


def _decode_all(files: list[bytes], seconds: float) -> int:
    """Decodes ``files`` to 224x224 ImageNet model input in a loop; returns images done."""
    from hardscore_server.pipeline.preprocess import InputSpec, decode_image
    from hardscore_server.tools.torch_models import IMAGENET_MEAN, IMAGENET_STD

    spec = InputSpec(3, 224, 224, IMAGENET_MEAN, IMAGENET_STD, "resize_shorter_center_crop")
    done = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for data in files:
            decode_image(data, spec)
        done += len(files)
    return done


def step_frontend(settings: Settings, table: Table) -> None:
    files = jpeg_files(settings.decode_images, 224)
    cores = len(os.sched_getaffinity(0))
    for workers in sorted({1, cores}):
        with cf.ProcessPoolExecutor(workers) as pool:
            started = time.perf_counter()
            done = sum(pool.map(_decode_all, [files] * workers,
                                [settings.decode_seconds] * workers))
            rate = done / (time.perf_counter() - started)
        table.add("frontend", "jpeg 224px", "uint8", f"CPU decode x{workers} proc", rate,
                  f"{rate / workers:,.0f}/s per process")
    with contextlib.suppress(ImportError):
        import torch
        import torchvision  # noqa: F401

        step_gpu_decode(settings, files, torch, table)
        return
    table.add("frontend", "jpeg 224px", "uint8", "GPU decode", None,
              "skipped: torch/torchvision not installed")


def step_gpu_decode(settings: Settings, files: list[bytes], torch: Any, table: Table) -> None:
    from PIL import Image
    from torchvision.io import decode_jpeg

    # the server's jpeg_decode_device=cuda checks its results against the same figures
    from hardscore_server.pipeline.torch_decode import DECODE_MAX_DIFF_LEVELS as DECODE_MAX_DIFF
    from hardscore_server.pipeline.torch_decode import DECODE_MEAN_DIFF_LEVELS as DECODE_MEAN_DIFF

    device = "cuda" if settings.provider == "cuda" and torch.cuda.is_available() else "cpu"
    tensors = [torch.frombuffer(bytearray(f), dtype=torch.uint8) for f in files]
    batch = 64 if device == "cuda" else 8
    chunks = [tensors[i:i + batch] for i in range(0, len(tensors), batch)]

    from hardscore_server.tools.torch_models import IMAGENET_MEAN, IMAGENET_STD

    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255

    def decode() -> list[Any]:
        out: list[Any] = []
        for chunk in chunks:
            out += decode_jpeg(chunk, device=device)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    def model_input() -> None:
        """Decode, shorter side to 256 (bilinear, antialiased), center crop 224, normalise:
        the CPU rows' work, batched on the device."""
        for chunk in chunks:
            images = torch.stack(decode_jpeg(chunk, device=device)).float()
            resized = torch.nn.functional.interpolate(images, size=(256, 256), mode="bilinear",
                                                      antialias=True, align_corners=False)
            ((resized[:, :, 16:240, 16:240] - mean) / std).contiguous()
        if device == "cuda":
            torch.cuda.synchronize()

    rate = timed_rate(model_input, len(files), settings.decode_seconds)
    worst, mean = 0, 0.0
    for data, image in zip(files, decode(), strict=True):
        cpu = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)
        gpu = image.cpu().numpy().transpose(1, 2, 0).astype(np.int16)
        diff = np.abs(gpu - cpu)
        worst, mean = max(worst, int(diff.max())), max(mean, float(diff.mean()))
    ok = worst <= DECODE_MAX_DIFF and mean <= DECODE_MEAN_DIFF
    step_server_decoder(settings, files, device, table)
    table.add("frontend", "jpeg 224px", "uint8", f"{device.upper()} decode_jpeg b{batch}",
              rate, f"vs Pillow: max {worst} mean {mean:.3f} levels "
              f"(<= {DECODE_MAX_DIFF} / {DECODE_MEAN_DIFF}): {'ok' if ok else 'FAIL'}")


def step_server_decoder(settings: Settings, files: list[bytes], device: str,
                        table: Table) -> None:
    """The server's own torch path (``jpeg_decode_device=cuda``; on the CPU: the test-only
    torch_cpu): model input per second, and its model input against decode_image's within
    torch_decode.tolerance."""
    from hardscore_server.pipeline.preprocess import InputSpec, decode_image
    from hardscore_server.pipeline.torch_decode import BATCH_SIZE, build_decoder, tolerance
    from hardscore_server.tools.torch_models import IMAGENET_MEAN, IMAGENET_STD

    spec = InputSpec(3, 224, 224, IMAGENET_MEAN, IMAGENET_STD, "resize_shorter_center_crop")
    decoder = build_decoder("cuda" if device == "cuda" else "torch_cpu", spec)
    assert decoder is not None
    groups = [files[i:i + BATCH_SIZE] for i in range(0, len(files), BATCH_SIZE)]
    rate = timed_rate(lambda: [decoder.decode(g) for g in groups], len(files),
                      settings.decode_seconds)
    got = [x for group in groups for x in decoder.decode(group)]
    worst, mean, taken = 0.0, 0.0, 0
    for data, x in zip(files, got, strict=True):
        if x is not None:
            diff = np.abs(x - decode_image(data, spec))
            worst, mean, taken = max(worst, float(diff.max())), max(mean, float(diff.mean())), \
                taken + 1
    max_tol, mean_tol = tolerance(spec)
    ok = taken == len(files) and worst <= max_tol and mean <= mean_tol
    table.add("frontend", "jpeg 224px", "float32", f"server {device} path b{BATCH_SIZE}", rate,
              f"model input vs Pillow's: max {worst:.4f} mean {mean:.4f} "
              f"(<= {max_tol:.4f} / {mean_tol:.4f}), {taken}/{len(files)} taken: "
              f"{'ok' if ok else 'FAIL'}")


# --------------------------------------------------------------------------- main


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="hardscore-gpu-check-") as tmp:
        yield Path(tmp)


def run_checks(args: argparse.Namespace) -> int:
    settings = DRY if args.dry else GPU
    table = Table()
    started = time.perf_counter()
    _deadline[0] = time.monotonic() + args.time_limit
    logging.getLogger("hardscore_server").setLevel(logging.ERROR)  # random-weights warnings

    def log(line: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {line}", flush=True)

    log(f"gpu_check ({'dry: CPU, tiny settings' if args.dry else 'CUDA'}), "
        f"{len(os.sched_getaffinity(0))} cores, load {os.getloadavg()[0]:.2f}")
    with workdir() as work:
        if not args.dry:
            with contextlib.suppress(ImportError):
                import torch  # noqa: F401  (loads the CUDA libraries torch ships, if any)
        try:
            dirs = export_models(settings, work, log)
        except Exception as exc:  # ExportError, a missing torchvision, ...
            table.add("export", "resnet50", "", "", None,
                      f"FAILED: {type(exc).__name__}: {exc}")
            print(table.markdown())
            return 1
        cifar = dirs["cifar-fp32"]
        if not step_provider(settings, cifar, table):
            print(table.markdown())
            return 1
        log("raw ONNX Runtime")
        step_raw(settings, dirs, table)
        log("served path (perf_analyzer)")
        step_served(settings, cifar, args.perf_analyzer_cache, work, table)
        log("front end")
        step_frontend(settings, table)
    text = table.markdown()
    print(f"\n{text}")
    if args.output:
        args.output.write_text(text)
    log("done")
    return 1 if any("FAIL" in row[-1] for row in table.rows) else 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["split"]:
        parser = argparse.ArgumentParser(prog="gpu_check.py split")
        parser.add_argument("wheel", type=Path)
        parser.add_argument("--out", type=Path, required=True)
        parser.add_argument("--part-mib", type=int, default=60)
        split = parser.parse_args(argv[1:])
        for part in split_wheel(split.wheel, split.out, split.part_mib):
            print(part)
        return 0
    if argv[:1] == ["prepare"]:
        parser = argparse.ArgumentParser(prog="gpu_check.py prepare")
        parser.add_argument("--out", type=Path, default=ROOT / ".cache" / "gpu-carry")
        parser.add_argument("--part-mib", type=int, default=60)
        parser.add_argument("--perf-analyzer-cache", type=Path,
                            default=ROOT / ".cache" / "perf_analyzer")
        prep = parser.parse_args(argv[1:])
        for i, group in enumerate(prepare(prep.out, prep.part_mib, prep.perf_analyzer_cache)):
            total = sum(carry_size(p) for p in group) / (1 << 20)
            print(f"carry {i + 1} ({total:.1f} MiB): "
                  + " ".join(str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)
                             for p in group))
        return 0
    parser = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.splitlines()[0])
    parser.add_argument("--dry", action="store_true", help="CPU provider, tiny settings")
    parser.add_argument("--wheels", type=Path, help="install these wheels (and joined parts) "
                        "into a venv seeing the system's packages, and rerun there")
    parser.add_argument("--perf-analyzer-cache", type=Path,
                        help="bench/perf_analyzer.sh's cache (PERF_ANALYZER_CACHE) carried in")
    parser.add_argument("--output", type=Path, help="write the table (markdown) here")
    parser.add_argument("--time-limit", type=float, default=TIME_LIMIT_S,
                        help="seconds after which remaining measurements are skipped")
    args = parser.parse_args(argv)
    if args.wheels is not None:
        return reexec_with_wheels(args.wheels, argv)
    return run_checks(args)


if __name__ == "__main__":
    sys.exit(main())
