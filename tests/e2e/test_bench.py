"""The benchmark scripts run end to end (tiny settings, the embedded model): they measure every
path they promise, report no call errors, stop every server they started, and write their
markdown. No timing is asserted here: the figures are the scripts' output, not a test's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = ROOT / "server" / "hardscore_server" / "default_model"


def run_bench(script: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args],
                          capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "benchmark stopped early" not in proc.stderr, proc.stderr
    return proc.stdout


def markdown_rows(text: str, first_header: str) -> list[dict[str, str]]:
    """The rows of the markdown table whose first column is ``first_header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (c.strip() for c in line.strip("|").split("|")),
                             strict=True)))
    return rows


def floor_servers_running() -> list[str]:
    """Command lines of running grpc_floor_server.py processes (from /proc)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # the process exited meanwhile
            continue
        if "grpc_floor_server.py" in args:
            found.append(args)
    return found


def test_image_bench_measures_every_path_and_leaves_no_server(tmp_path):
    out = tmp_path / "images.md"
    stdout = run_bench("image_throughput.py", "--quick", "--model-dir", str(DEFAULT_MODEL),
                       "--batch-sizes", "1,4", "--concurrency", "1,4", "--duration", "1",
                       "--rounds", "2", "--output", str(out))
    text = out.read_text()
    sweep = {row["path"]: row for row in markdown_rows(text, "path")}
    assert set(sweep) == {
        "raw batch 1", "raw batch 4", "served batched conc 1", "served batched conc 4",
        "served unbatched conc 1", "served unbatched conc 4"}
    for name, row in sweep.items():
        assert row["errors"] == "0", name
        assert float(row["images/s"].replace(",", "")) > 0, name
    assert float(sweep["served unbatched conc 4"]["mean batch"]) == pytest.approx(1.0)
    assert float(sweep["served batched conc 4"]["mean batch"]) >= 1.0

    rounds = markdown_rows(text, "round")
    assert [r["round"] for r in rounds] == ["1", "2", "median"]
    for r in rounds:
        assert float(r["gRPC floor p50 ms"]) > 0
        assert 0 < float(r["attainable ratio"]) < 1  # a floor above zero caps the ratio

    for check in ("served conc 1 / raw batch 1 =", "served conc 1 p50 - raw batch 1 p50 =",
                  "gRPC floor (no work behind it)", "served conc 4 / raw batch 4, paired =",
                  "served conc 4 / best raw"):
        assert check in stdout, check
    assert not floor_servers_running()


def test_logits_bench_gets_equal_results_end_to_end(tmp_path):
    out = tmp_path / "logits.md"
    stdout = run_bench("logits_throughput.py", "--cases", "10:20000,100:2000", "--repeats", "1",
                       "--output", str(out))
    rows = markdown_rows(out.read_text(), "C")
    assert [(r["C"], r["N"]) for r in rows] == [("10", "20,000"), ("100", "2,000")]
    for row in rows:
        assert float(row["max abs diff"]) == 0.0  # served scores equal the in-process ones
    assert "ratio end-to-end / in-process" in stdout


def test_oip_transports_measures_grpc_and_both_rest_forms(tmp_path):
    out = tmp_path / "oip.md"
    text = run_bench("oip_transports.py", "--rounds", "1", "--seconds", "0.5", "--batch", "4",
                     "--concurrency", "2", "--output", str(out))
    rows = {r["transport"]: r for r in markdown_rows(text, "transport")}
    assert list(rows) == ["gRPC", "REST binary", "REST JSON"]
    assert rows["gRPC"]["vs gRPC"] == "1.00"
    assert all(float(r["images/s (median)"]) > 0 for r in rows.values())
    assert "| REST JSON |" in out.read_text()


def test_embeddings_bench_pairs_windows_with_and_without(tmp_path):
    out = tmp_path / "embeddings.md"
    stdout = run_bench("embeddings_throughput.py", "--quick", "--rounds", "2", "--duration",
                       "0.5", "--callers", "2", "--images", "2", "--output", str(out))
    rows = {row["round"]: row for row in markdown_rows(out.read_text(), "round")}
    assert list(rows) == ["1", "2", "median"]
    for name, row in rows.items():
        assert row["errors"] == "0", name
        assert float(row["with images/s"].replace(",", "")) > 0, name
        assert float(row["without images/s"].replace(",", "")) > 0, name
    assert "with / without embeddings =" in stdout
    assert "embedding 48-d" in stdout


def test_collection_bench_times_every_verdict_and_measures_recall(tmp_path):
    out = tmp_path / "collection.md"
    run_bench("collection_bench.py", "--quick", "--output", str(out))
    text = out.read_text()
    steps = {row["step"]: row for row in markdown_rows(text, "step")}
    assert {"uniqueness", "representativeness (KMeans 20)", "near duplicates (FiftyOne, 0.2)",
            "Datalab outliers", "Datalab near duplicates", "kNN label check (euclidean k=10)",
            "loss + focal weight", "leaks", "exact duplicates (digests)"} <= set(steps)
    assert all(float(row["peak MiB"].replace(",", "")) > 0 for row in steps.values())
    recall = markdown_rows(text, "neighbours")
    assert [r["method"] for r in recall] == ["approximate", "approximate"]
    assert all(float(r["recall@10"]) >= 0.9 for r in recall)
    assert "planted exact copies flagged by Datalab near-duplicate: 1.000" in text


def test_verdict_truth_scores_planted_copies_and_outside_images(tmp_path):
    out, figures = tmp_path / "truth.md", tmp_path / "truth.json"
    run_bench("verdict_truth.py", "--quick", "--output", str(out), "--json", str(figures))
    text = out.read_text()
    flags = {(row["verdict"], row["variant"]): row for row in markdown_rows(text, "verdict")}
    assert {verdict for verdict, _ in flags} == {
        "exact_duplicate_of >= 0", "near_duplicate_of >= 0 (FiftyOne, 0.2)",
        "is_near_duplicate (Datalab)", "is_outlier (Datalab)", "leak"}
    exact = flags["exact_duplicate_of >= 0", "both"]  # sha256 of the bytes: must be exact
    assert (exact["precision"], exact["recall"]) == ("1.000", "1.000")
    kinds = {row["kind"]: row for row in markdown_rows(text, "kind")}
    assert set(kinds) == {"exact", "shift", "brightness", "jpeg", "cross-exact",
                          "cross-augmented", "outside: photo", "outside: noise",
                          "outside: letter"}
    for kind in ("exact", "cross-exact"):  # identical embeddings: in every near-duplicate set
        assert kinds[kind]["FiftyOne recall"] == kinds[kind]["Datalab recall"] == "1.000"
    result = json.loads(figures.read_text())
    assert result["quick"] and result["rows"] == sum(
        v["train"] + v["test"] for v in result["composition"].values())
    assert [r["threshold"] for r in result["sweep"]] == [0.2, 0.1, 0.05, 0.02, 0.01]
    assert 0.5 < next(r["AUROC"] for r in result["ranks"]
                      if r["score"].startswith("1 - outlier_score")) <= 1


def test_model_repository_bench_swaps_without_a_failed_call():
    stdout = run_bench("model_repository.py", "--swaps", "2", "--callers", "2")
    assert [row["models loaded"] for row in markdown_rows(stdout, "models loaded")] == [
        "0", "1", "2", "3", "4"]
    assert ", 0 failed; load request -> first answer" in stdout


def test_workflow_bench_measures_every_path_against_capacity():
    """bench/workflow_throughput.py --quick: local folder, S3 (moto on 127.0.0.1), Ray through
    the server and Ray in process, each with a ratio to the capacity measured in the same
    run."""
    pytest.importorskip("ray")
    stdout = run_bench("workflow_throughput.py", "--quick", "--images", "96", "--markdown")
    rows = {r["path"]: r for r in markdown_rows(stdout, "path")}
    assert set(rows) == {"local", "s3", "ray", "ray-in-process"}
    for row in rows.values():
        assert row["images"] == "96"
        assert float(row["capacity img/s (median)"]) > 0
        assert 0 < float(row["ratio (median)"]) < 5
