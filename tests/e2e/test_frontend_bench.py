"""bench/frontend_capacity.py end to end on smoke settings: it generates its near-zero-cost
models, drives one and two server processes for every case with the Python client, counts
every image on the server side with no errors, and leaves no server behind. No timing is
asserted: the figures are the script's output (bench/README.md)."""

from __future__ import annotations

import subprocess
import sys

import onnxruntime as ort
from test_bench import ROOT, markdown_rows

sys.path.insert(0, str(ROOT / "bench"))

from frontend_capacity import make_images, write_tiny_model


def test_the_tiny_model_is_a_valid_model_directory(tmp_path):
    from hardscore_server.model.model_dir import load_manifest

    write_tiny_model(tmp_path / "m", 224)
    manifest = load_manifest(tmp_path / "m")
    assert (manifest.input_height, manifest.num_classes, manifest.random_weights) == (224, 10, True)
    session = ort.InferenceSession(str(tmp_path / "m" / "model.onnx"))
    import numpy as np

    logits = session.run(None, {"images": np.ones((5, 3, 224, 224), np.float32)})[0]
    assert logits.shape == (5, 10)
    assert len(set(make_images("jpeg224"))) == 8 and len(set(make_images("png32"))) == 8


def test_frontend_bench_runs_every_case_with_one_and_two_processes(tmp_path):
    out = tmp_path / "frontend.md"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "frontend_capacity.py"), "--quick",
         "--client", "python", "--connections", "4", "--duration", "0.5", "--warmup", "0.3",
         "--output", str(out)],
        capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "benchmark stopped early" not in proc.stderr, proc.stderr
    rows = markdown_rows(out.read_text(), "case")
    assert [(r["case"], r["processes"]) for r in rows] == [
        (case, workers) for case in ("32x32 PNG, 1/call", "32x32 PNG, 16/call",
                                     "224x224 JPEG, 1/call", "224x224 JPEG, 16/call")
        for workers in ("1", "2")]
    for row in rows:
        assert row["errors"] == "0", row
        assert float(row["images/s (median)"].replace(",", "")) > 0, row
        assert float(row["server cores"]) > 0, row
        if row["processes"] == "2":  # each worker's share of the calls, from its own /metrics
            shares = [int(s.strip().rstrip("%")) for s in row["worker shares"].split("/")]
            assert len(shares) == 2 and 99 <= sum(shares) <= 101, row
    stdout = proc.stdout
    for case in ("32x32 PNG, 1/call", "224x224 JPEG, 16/call"):
        assert f"{case}: 2 processes / 1 = " in stdout
    leftover = subprocess.run(["pgrep", "-f", "hardscore-frontend-"], capture_output=True)
    assert leftover.returncode == 1, leftover.stdout  # no server of the run is left
