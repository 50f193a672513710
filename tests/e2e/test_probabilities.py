"""End to end: predicted probabilities in (ScoreLogits' ``probabilities`` field, its stream, the
SDK's score_probabilities, ``hardscore score-logits --pred-probs``) on a real server, against
cleanlab 2.9's functions on the same arrays; and the warning for probabilities sent as logits."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import warnings

import grpc
import numpy as np
import pytest

from hardscore_client import (
    AsyncScoringClient,
    InputError,
    ProbabilitiesAsLogitsWarning,
    ProbabilitiesRenormalisedWarning,
    ScoringClient,
)
from hardscore_client.tables import read_table
from hardscore_wire import scoring_pb2 as pb
from hardscore_wire import scoring_pb2_grpc as pb_grpc
from hardscore_wire.tensors import to_tensor

from conftest import metric, scrape

rank = pytest.importorskip("cleanlab.rank")
quality_utils = pytest.importorskip("cleanlab.internal.label_quality_utils")


def noisy_probabilities(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """[n, k] probabilities with exact zeros (a third of the entries, and one-hot rows) and
    labels in 0..k-1 (every class present)."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(k, 0.4), size=n)
    p[rng.random((n, k)) < 0.33] = 0.0
    p[np.arange(n), rng.integers(0, k, size=n)] += 1e-3  # no row left all-zero
    p /= p.sum(axis=1, keepdims=True)
    p[:5] = np.eye(k)[np.arange(5) % k]  # one-hot rows: log(0) must not reach any score
    labels = np.concatenate([np.arange(k), rng.integers(0, k, size=n - k)])
    return p, labels


def cleanlab_scores(p: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """cleanlab's numbers for the rows of ``labels`` >= 0, in this service's direction."""
    rows = labels >= 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc = rank.get_label_quality_scores(labels[rows], p[rows], method="self_confidence")
        nm = rank.get_label_quality_scores(labels[rows], p[rows], method="normalized_margin")
    return {
        "label_issue_score": 1.0 - sc,
        "margin_issue_score": 1.0 - nm,
        "hardness_normalized": quality_utils.get_normalized_entropy(p),
    }


def assert_equals_cleanlab(result, p: np.ndarray, labels: np.ndarray) -> None:
    ref = cleanlab_scores(p, labels)
    rows = labels >= 0
    np.testing.assert_allclose(result.label_issue_score[rows], ref["label_issue_score"],
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.margin_issue_score[rows], ref["margin_issue_score"],
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.hardness_normalized, ref["hardness_normalized"],
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.hardness, ref["hardness_normalized"] * np.log(p.shape[1]),
                               rtol=0, atol=1e-12)
    top2 = np.sort(p, axis=1)[:, -2:]
    np.testing.assert_array_equal(result.confidence, top2[:, 1])
    np.testing.assert_allclose(result.margin, top2[:, 1] - top2[:, 0], rtol=0, atol=1e-15)
    np.testing.assert_array_equal(result.predicted_class, p.argmax(axis=1))
    # FiftyOne Brain's formulas on the entropy of the given probabilities.
    sign = np.where(p.argmax(axis=1) == labels, -1.0, 1.0)
    np.testing.assert_allclose(result.mistakenness[rows],
                               ((sign * np.exp(-result.hardness) + 1) / 2)[rows], atol=1e-15)
    assert np.isnan(result.label_issue_score[~rows]).all()
    for name in ("confidence", "margin", "hardness", "hardness_normalized"):
        assert np.isfinite(getattr(result, name)).all(), name


def test_probabilities_score_like_cleanlab_float64_and_float32(logits_client):
    p, labels = noisy_probabilities(2000, 7, seed=1)
    labels[[10, 11]] = -1
    result = logits_client.score_probabilities(p, labels, include_probabilities=True)
    assert_equals_cleanlab(result, p, labels)
    np.testing.assert_array_equal(result.hardness[:5], 0.0)  # one-hot rows: exactly 0
    np.testing.assert_array_equal(result.label_issue_score[:5], 0.0)
    np.testing.assert_allclose(result.probabilities, p.astype(np.float32), rtol=0, atol=0)
    # float32 goes over the wire as float32; cleanlab gets the same values in float64.
    p32 = p.astype(np.float32)
    result32 = logits_client.score_probabilities(p32, labels)
    assert_equals_cleanlab(result32, p32.astype(np.float64), labels)


def test_stream_and_asyncio_client_score_like_cleanlab(logits_server):
    p, labels = noisy_probabilities(3001, 4, seed=2)

    async def run() -> object:
        async with AsyncScoringClient(logits_server.target) as client:
            return await client.score_probabilities(p, labels, chunk_rows=700)

    seen: list[int] = []
    with ScoringClient(logits_server.target) as client:
        streamed = client.score_probabilities(p, labels, chunk_rows=1000, progress=seen.append)
    assert seen == [1000, 1000, 1000, 1]  # four messages over ScoreLogitsStream
    assert_equals_cleanlab(streamed, p, labels)
    assert_equals_cleanlab(asyncio.run(run()), p, labels)


def test_labels_by_name_and_the_samples_metric(logits_server, logits_client):
    before = scrape(logits_server.metrics_url)
    p = np.array([[0.7, 0.3, 0.0], [0.0, 0.0, 1.0], [0.2, 0.5, 0.3]])
    result = logits_client.score_probabilities(p, ["cat", "cat", ""],
                                               class_names=["cat", "dog", "fox"])
    after = scrape(logits_server.metrics_url)
    np.testing.assert_allclose(result.label_issue_score[:2], [0.3, 1.0], rtol=0, atol=1e-15)
    np.testing.assert_allclose(result.margin_issue_score[:2], [0.3, 1.0], rtol=0, atol=1e-15)
    assert np.isnan(result.label_issue_score[2]) and result.class_names == ["cat", "dog", "fox"]
    kind = {"kind": "probabilities"}
    assert (metric(after, "hardscore_samples_scored_total", **kind)
            - metric(before, "hardscore_samples_scored_total", **kind)) == 3


def _request(**fields: object) -> pb.ScoreLogitsRequest:
    return pb.ScoreLogitsRequest(**fields)  # type: ignore[arg-type]


GOOD = np.full((4, 3), 1 / 3)
NEGATIVE = GOOD.copy()
NEGATIVE[2] = [1.1, -0.1, 0.0]
ABOVE_ONE = np.array([[0.5, 0.5], [0.5, 0.5], [0.5, 0.5], [1.0000001, 0.0]], dtype=np.float32)
SHORT_SUM = GOOD.copy()
SHORT_SUM[1] = [0.5, 0.2, 0.2]
NAN_ROW = GOOD.copy()
NAN_ROW[3, 0] = np.nan

BAD_REQUESTS = {
    "negative": (_request(probabilities=to_tensor(NEGATIVE)),
                 "probabilities row 2 has a value outside [0, 1] (1.1 in class 0): these look "
                 "like logits or log-probabilities: send them in the logits field"),
    "above one": (_request(probabilities=to_tensor(ABOVE_ONE)),
                  "probabilities row 3 has a value outside [0, 1] (1.00000012 in class 0): a "
                  "rounding error? clip the values to [0, 1] and divide each row by its sum"),
    "sum": (_request(probabilities=to_tensor(SHORT_SUM)),
            "probabilities row 1 sums to 0.9, expected 1 within 0.001: if these are "
            "probabilities, divide each row by its sum; otherwise check where they came from"),
    "nan": (_request(probabilities=to_tensor(NAN_ROW)),
            "probabilities row 3 has a non-finite value (nan in class 0)"),
    "both": (_request(logits=to_tensor(GOOD), probabilities=to_tensor(GOOD)),
             "set logits or probabilities, not both"),
    "temperature": (_request(probabilities=to_tensor(GOOD),
                             options=pb.ScoringOptions(temperature=2.0)),
                    "options.temperature applies to logits only"),
    "one class": (_request(probabilities=to_tensor(np.ones((2, 1)))),
                  "probabilities must have at least 2 classes, got C = 1"),
    "dtype": (_request(probabilities=to_tensor(np.ones((2, 2), dtype=np.uint8))),
              "probabilities.dtype must be DATA_TYPE_FLOAT32 or DATA_TYPE_FLOAT64"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_probabilities_are_invalid_argument_naming_the_row(case, logits_server):
    request, message = BAD_REQUESTS[case]
    with grpc.insecure_channel(logits_server.target) as channel:
        stub = pb_grpc.ScoringServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ScoreLogits(request, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in info.value.details()
        reply = stub.ScoreLogits(_request(probabilities=to_tensor(GOOD)), timeout=10)
    assert reply.scores.num_rows == 4


def test_bad_chunk_of_a_probabilities_stream_names_chunk_and_row(logits_server):
    chunks = [_request(probabilities=to_tensor(GOOD)), _request(probabilities=to_tensor(SHORT_SUM))]
    with grpc.insecure_channel(logits_server.target) as channel:
        stub = pb_grpc.ScoringServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            list(stub.ScoreLogitsStream((pb.ScoreLogitsStreamRequest(chunk=c) for c in chunks),
                                        timeout=10))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "chunk 1 (stream rows from 4): probabilities row 1 sums to 0.9" in info.value.details()


def test_probabilities_sent_as_logits_warn_in_the_sdk(logits_client):
    p, labels = noisy_probabilities(300, 5, seed=3)
    with pytest.warns(ProbabilitiesAsLogitsWarning, match="looks like predicted probabilities"):
        wrong = logits_client.score_logits(p, labels)
    # What the warning is about: softmax on top of probabilities flattens every row.
    assert wrong.confidence.max() < 0.5 < p.max(axis=1).max()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # real logits, and probabilities sent as such: no warning
        logits_client.score_logits(np.log(p + 1e-9) * 3.0, labels)
        logits_client.score_logits(np.abs(np.log(p + 1e-9)), labels)  # non-negative logits
        logits_client.score_probabilities(p, labels)


def hardscore(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hardscore_client.cli", *args],
                          capture_output=True, text=True, timeout=120)


def test_cli_pred_probs_equals_cleanlab_and_logits_that_are_probabilities_warn(
    tmp_path, logits_server
):
    p, labels = noisy_probabilities(400, 3, seed=4)
    np.save(tmp_path / "p.npy", p)
    np.save(tmp_path / "y.npy", labels)
    out = tmp_path / "scores.csv"
    proc = hardscore("score-logits", "--server", logits_server.target, "--pred-probs",
                     str(tmp_path / "p.npy"), "--labels", str(tmp_path / "y.npy"),
                     "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr
    table = read_table(out)
    ref = cleanlab_scores(p, labels)
    np.testing.assert_allclose(table["label_issue_score"], ref["label_issue_score"], rtol=0,
                               atol=1e-12)
    np.testing.assert_allclose(table["margin_issue_score"], ref["margin_issue_score"], rtol=0,
                               atol=1e-12)

    proc = hardscore("score-logits", "--server", logits_server.target, "--logits",
                     str(tmp_path / "p.npy"), "--out", str(tmp_path / "wrong.csv"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("looks like predicted probabilities") == 1
    assert "pass it with --pred-probs instead" in proc.stderr

    bad = p.copy()
    bad[17] *= 0.5
    np.save(tmp_path / "bad.npy", bad)
    proc = hardscore("score-logits", "--server", logits_server.target, "--pred-probs",
                     str(tmp_path / "bad.npy"), "--out", str(tmp_path / "bad.csv"))
    assert proc.returncode == 1
    assert proc.stderr == (  # refused by the client, before anything is sent
        f"{tmp_path / 'bad.npy'}: probabilities row 17 sums to 0.5, expected 1 within 0.001: "
        "if these are probabilities, divide each row by its sum; otherwise check where they "
        "came from\n")
    assert not (tmp_path / "bad.csv").exists()


def drifting_float16(n: int, k: int, seed: int) -> np.ndarray:
    """Softmax rows scaled by 1 +- up to 1.4e-2 (capped at 1) and stored as float16: off the
    sum as far as the published float16 CIFAR-10 probabilities of the confident-learning paper
    (refused before: the server takes 1e-3)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3.0, size=(n, k))
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p = np.minimum(p * (1.0 + rng.uniform(-0.014, 0.014, size=(n, 1))), 1.0)
    return p.astype(np.float16)


def renormalised(p16: np.ndarray) -> np.ndarray:
    p = p16.astype(np.float64)
    return p / p.sum(axis=1, keepdims=True)


SCORES = ("predicted_class", "confidence", "margin", "hardness", "hardness_normalized",
          "mistakenness", "mistakenness_confidence", "label_issue_score", "margin_issue_score")


def test_float16_probabilities_are_renormalised_and_scored_in_the_sdk(logits_server,
                                                                      logits_client):
    p16 = drifting_float16(3000, 10, seed=6)
    off = np.abs(p16.sum(axis=1, dtype=np.float64) - 1.0)
    assert 1e-3 < off.max() < 0.0234  # more than the server takes, less than float16 explains
    labels = np.random.default_rng(6).integers(0, 10, size=3000)
    reference = logits_client.score_probabilities(renormalised(p16), labels)

    with pytest.warns(ProbabilitiesRenormalisedWarning) as caught:
        result = logits_client.score_probabilities(p16, labels, include_probabilities=True)
    assert [str(w.message) for w in caught] == [
        f"float16 probabilities of 10 classes: {int((off > 1e-3).sum())} of 3000 rows sum to 1 "
        f"only within {off.max():.3g} (largest |row sum - 1|; the server takes 0.001, float16 "
        "rounding explains up to 0.0234): every row was divided by its sum in float64 before "
        "scoring"]
    assert caught[0].filename == __file__  # points at the caller's line
    for name in SCORES:
        np.testing.assert_array_equal(getattr(result, name), getattr(reference, name), name)
    np.testing.assert_array_equal(result.probabilities, renormalised(p16).astype(np.float32))
    assert_equals_cleanlab(result, renormalised(p16), labels)

    async def run() -> object:
        async with AsyncScoringClient(logits_server.target) as client:
            return await client.score_probabilities(p16, labels, chunk_rows=1000)

    with pytest.warns(ProbabilitiesRenormalisedWarning):
        streamed = asyncio.run(run())
    np.testing.assert_array_equal(streamed.label_issue_score, reference.label_issue_score)

    far = p16.copy()
    far[11] = (far[11] * 0.9).astype(np.float16)
    with pytest.raises(InputError) as refused:
        logits_client.score_probabilities(far, labels)
    assert str(refused.value) == (
        f"probabilities row 11 sums to {far[11].sum(dtype=np.float64):.9g}, expected 1 within "
        "0.0234: if these are probabilities, divide each row by its sum; otherwise check where "
        "they came from")


def test_float16_probabilities_through_the_cli(tmp_path, logits_client, logits_server):
    p16 = drifting_float16(500, 10, seed=7)
    labels = np.random.default_rng(7).integers(0, 10, size=500)
    np.save(tmp_path / "p16.npy", p16)
    np.save(tmp_path / "y.npy", labels)
    out = tmp_path / "scores.csv"
    proc = hardscore("score-logits", "--server", logits_server.target, "--pred-probs",
                     str(tmp_path / "p16.npy"), "--labels", str(tmp_path / "y.npy"),
                     "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    off = np.abs(p16.sum(axis=1, dtype=np.float64) - 1.0)
    assert proc.stderr.splitlines() == [
        f"hardscore: warning: {tmp_path / 'p16.npy'}: float16 probabilities of 10 classes: "
        f"{int((off > 1e-3).sum())} of 500 rows sum to 1 only within {off.max():.3g} (largest "
        "|row sum - 1|; the server takes 0.001, float16 rounding explains up to 0.0234): every "
        "row was divided by its sum in float64 before scoring",
        f"wrote 500 rows to {out}",
    ]
    table = read_table(out)
    reference = logits_client.score_probabilities(renormalised(p16), labels)
    for name in SCORES:
        np.testing.assert_array_equal(table[name], getattr(reference, name), name)
