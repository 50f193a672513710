"""A fleet behind one target: two real servers on 127.0.0.1 named by one gRPC target that
resolves to both (``ipv4:127.0.0.1:P1,127.0.0.1:P2``, the form a ``dns:///`` name of a headless
Service resolves to), spread by the channel's round_robin policy. Both servers take calls (their
/metrics say so), and one killed mid-run costs retries, not rows."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hardscore_client import ScoringClient, dataset
from hardscore_client.client import channel_options, load_balanced
from hardscore_client.dataset import Item, scan_folder, score_items
from hardscore_client.tables import read_table

from conftest import scrape
from digits_example import write_digits_example
from server_process import ServerProcess, start_server

SERVER_ARGS = ["--max-batch-size", "16", "--max-queue-delay-ms", "5", "--max-queue-size", "256"]
IMAGES = 96


def _calls(server: ServerProcess) -> float:
    """The ScoreImages calls a server finished (hardscore_requests_total, any code)."""
    return sum(value for (name, labels), value in scrape(server.metrics_url).items()
               if name == "hardscore_requests_total"
               and dict(labels).get("method", "").endswith("ScoreImages"))


@pytest.fixture()
def fleet() -> Iterator[tuple[ServerProcess, ServerProcess, str]]:
    first, second = start_server(SERVER_ARGS), start_server(SERVER_ARGS)
    try:
        yield first, second, f"ipv4:{first.target},{second.target}"
    finally:
        first.stop()
        second.stop()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Item]:
    root = tmp_path_factory.mktemp("fleet") / "digits"
    write_digits_example(root)
    return scan_folder(root)[:: 540 // IMAGES][:IMAGES]


def test_fleet_targets_get_round_robin() -> None:
    assert load_balanced("dns:///scorer-headless:8001")
    assert load_balanced("ipv4:10.0.0.1:8001,10.0.0.2:8001")
    assert not load_balanced("scorer:8001")
    config = dict(channel_options(1024, 4, "round_robin"))["grpc.service_config"]
    assert '"loadBalancingConfig": [{"round_robin": {}}]' in str(config)
    assert "loadBalancingConfig" not in str(dict(channel_options(1024, 4))["grpc.service_config"])


def test_sdk_spreads_calls_over_every_address(fleet, images) -> None:
    first, second, target = fleet
    before = (_calls(first), _calls(second))
    blobs = [Path(it.path).read_bytes() for it in images[:8]]
    with ScoringClient(target, timeout=60) as client:
        for _ in range(12):
            result = client.score_images(blobs)
            assert len(result) == 8 and not result.errors
    took = (_calls(first) - before[0], _calls(second) - before[1])
    assert took[0] > 0 and took[1] > 0 and sum(took) == 12, took


def test_score_dir_on_a_fleet_with_one_killed_mid_run(fleet, images, tmp_path,
                                                      monkeypatch) -> None:
    first, second, target = fleet
    # Every batch read after the 4th waits until the first server is killed.
    reached, go = threading.Event(), threading.Event()
    batches = 0
    lock = threading.Lock()
    real = dataset._read_batch

    def gated(batch: list[Item]) -> list[bytes | dataset.Failure]:
        nonlocal batches
        with lock:
            batches += 1
            count = batches
        if count >= 5:
            reached.set()
            go.wait(60)
        return real(batch)

    monkeypatch.setattr(dataset, "_read_batch", gated)
    out = tmp_path / "scores.parquet"
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["summary"] = score_items(images, [target], out, batch_size=4,
                                             concurrency=3, checkpoint_s=0.0, progress=False,
                                             timeout=60.0)
        except BaseException as e:  # reported by the assertion below
            outcome["error"] = e

    runner = threading.Thread(target=run)
    runner.start()
    try:
        assert reached.wait(60), "the run did not start"
        took_first = _calls(first)
        assert took_first > 0 and _calls(second) > 0  # both took calls before the kill
        assert first.proc is not None
        first.proc.kill()  # dies: no drain
        first.wait()
        before = _calls(second)
        go.set()
        runner.join(120)
        assert not runner.is_alive() and "error" not in outcome, outcome
    finally:
        go.set()
    summary = outcome["summary"]
    assert isinstance(summary, dataset.ScoreDirSummary)
    assert summary.scored == IMAGES and not summary.failures
    assert _calls(second) > before  # the rest went to the live one
    table = read_table(out)
    assert sorted(table["path"]) == sorted(it.path for it in images)  # every row, once
    assert set(table["error"]) == {""}
