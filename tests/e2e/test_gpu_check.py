"""bench/gpu_check.py: the dry mode runs every step on the CPU (export, provider, raw ONNX
Runtime in float32 and float16, the served path under perf_analyzer, CPU and torchvision
decode) and prints one table; wheels travel in parts and are joined."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import load_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.py"
gpu_check = load_script(SCRIPT)


def table_rows(text: str) -> list[dict[str, str]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True))
            for line in lines[2:]]


def test_dry_run_measures_every_step(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    out = tmp_path / "table.md"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry", "--output", str(out),
         "--perf-analyzer-cache", str(ROOT / ".cache" / "perf_analyzer")],
        capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = table_rows(out.read_text())
    assert out.read_text() in proc.stdout, "the table is printed too"
    by_step: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_step.setdefault(row["step"], []).append(row)
    assert [r["note"] for r in by_step["provider"]] == ["CPUExecutionProvider"]

    raw = by_step["raw"]
    assert [(r["model"], r["precision"], r["load"]) for r in raw] == [
        (model, precision, f"batch {b}")
        for model in ("imagenet 48px", "cifar 16px") for precision in ("fp32", "fp16")
        for b in (1, 4)]
    assert all(float(r["images/s"].replace(",", "")) > 0 for r in raw)
    parity = [r["note"] for r in raw if r["note"]]
    assert len(parity) == 2 and all(n.startswith("fp16 parity ") and n.endswith(": ok")
                                    for n in parity)

    served = by_step["served"]
    assert [r["load"] for r in served] == ["concurrency 1", "concurrency 2"]
    for r in served:
        assert float(r["images/s"].replace(",", "")) > 0, r
        assert r["note"].endswith(", CPUExecutionProvider"), r

    front = by_step["frontend"]
    assert front[0]["load"] == "CPU decode x1 proc"
    assert float(front[0]["images/s"].replace(",", "")) > 0
    server = front[-2]  # jpeg_decode_device's torch path, on the CPU here
    assert server["load"] == "server cpu path b64" and server["precision"] == "float32"
    assert server["note"].endswith(" (<= 0.1576 / 0.0175), 16/16 taken: ok"), server
    decode = front[-1]
    assert decode["load"] == "CPU decode_jpeg b8"
    assert decode["note"] == "vs Pillow: max 0 mean 0.000 levels (<= 8 / 0.5): ok"


def test_wheel_parts_are_joined_exactly(tmp_path: Path) -> None:
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    payload = bytes(range(256)) * 9000  # 2.2 MiB
    wheel.write_bytes(payload)
    parts = gpu_check.split_wheel(wheel, tmp_path / "carry", 1)
    assert [p.name for p in parts] == [f"{wheel.name}.part0{i}" for i in range(3)]
    assert [p.stat().st_size for p in parts] == [1 << 20, 1 << 20, len(payload) - (2 << 20)]
    (joined,) = gpu_check.join_parts(tmp_path / "carry")
    assert joined.name == wheel.name and joined.read_bytes() == payload

    parts[1].unlink()
    with pytest.raises(SystemExit) as exc:
        gpu_check.join_parts(tmp_path / "carry")
    assert str(exc.value) == f"gpu_check: parts of {wheel.name} are missing: have [0, 2]"


def test_carried_wheels_install_and_shadow_the_system(tmp_path: Path) -> None:
    """A hand-made wheel, carried in two parts, installed into a site directory that the
    rerun's interpreter imports first."""
    wheel = tmp_path / "build" / "hs_gpu_probe-1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    info = "hs_gpu_probe-1.0.dist-info"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("hs_gpu_probe.py", "ORIGIN = 'carried'\n" + "#" * 3000 + "\n")
        z.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: hs-gpu-probe\n"
                   "Version: 1.0\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\n"
                   "Root-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    carry = tmp_path / "carry"
    parts = gpu_check.split_wheel(wheel, carry, 1)
    assert len(parts) == 1
    # Two parts: cut the single part in the middle by hand (split works in whole MiB).
    data = parts[0].read_bytes()
    parts[0].write_bytes(data[:700])
    (carry / f"{wheel.name}.part01").write_bytes(data[700:])
    site = tmp_path / "site"
    assert gpu_check.install_wheels(carry, site) == [str(carry / wheel.name)]
    env = gpu_check.rerun_env(site)
    assert env["PYTHONPATH"].split(":")[0] == str(site)
    out = subprocess.run([sys.executable, "-c", "import hs_gpu_probe; print(hs_gpu_probe.ORIGIN,"
                          " hs_gpu_probe.__file__)"], env=env, capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()
    assert out == ["carried", str(site / "hs_gpu_probe.py")]
