"""The reply size computed from a request's shape equals the size of the reply itself."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hardscore_client.messages import (
    MAX_CHUNK_ROWS,
    chunk_rows_for,
    logits_request,
    options_message,
)
from hardscore_server.pipeline.errors import ReplyTooLarge, check_reply_fits
from hardscore_server.pipeline.scores import score_logits
from hardscore_server.transport.hardscore_v1.replies import (
    encode_scores,
    image_reply_bytes,
    scores_bytes,
    scores_reply_bytes,
)
from hardscore_wire import scoring_pb2 as pb

names = st.lists(st.text(max_size=200), max_size=5)


@settings(max_examples=150, deadline=None)
@given(
    n_rows=st.sampled_from([0, 1, 2, 127, 128, 300]),
    n_classes=st.integers(2, 20),
    labelled=st.booleans(),
    probabilities=st.booleans(),
    logits=st.booleans(),
    ids=st.lists(st.text(max_size=300), min_size=1, max_size=1) | st.just([]),
    class_names=names,
    first_row=st.none() | st.sampled_from([0, 1, 127, 128, 2**40]),
    model=st.sampled_from(["", "digits", "x" * 200]),
)
def test_computed_sizes_equal_encoded_sizes(
    n_rows, n_classes, labelled, probabilities, logits, ids, class_names, first_row, model
):
    values = np.random.default_rng(n_rows).normal(size=(n_rows, n_classes))
    labels = np.zeros(n_rows, dtype=np.int64) if labelled else None
    batch = score_logits(values, labels)
    ids = ids * n_rows  # one per row, or none
    scores = encode_scores(batch, ids, class_names, probabilities,
                           values.astype(np.float32) if logits else None)
    size = scores_bytes(n_rows, n_classes, labelled=labelled, include_probabilities=probabilities,
                        include_logits=logits, ids=ids, class_names=class_names)
    assert size == scores.ByteSize()
    if first_row is None:
        assert scores_reply_bytes(size) == pb.ScoreLogitsResponse(scores=scores).ByteSize()
        image = pb.ScoreImagesResponse(scores=scores, model_name=model, model_version=model)
        assert image_reply_bytes(size, model, model) == image.ByteSize()
    else:
        stream = pb.ScoreLogitsStreamResponse(scores=scores, first_row=first_row)
        assert scores_reply_bytes(size, first_row) == stream.ByteSize()
        image_stream = pb.ScoreImagesStreamResponse(
            result=pb.ScoreImagesResponse(scores=scores, model_name=model), first_row=first_row)
        assert image_reply_bytes(size, model, "", first_row) == image_stream.ByteSize()


@pytest.mark.parametrize("n_rows", [0, 1, 3, 300])
@pytest.mark.parametrize("dim", [1, 48, 2048])
def test_embeddings_size_is_exact(n_rows, dim):
    values = np.random.default_rng(n_rows).normal(size=(n_rows, 10))
    embeddings = np.full((n_rows, dim), np.nan, dtype=np.float32)
    scores = encode_scores(score_logits(values, None), embeddings=embeddings)
    assert scores_bytes(n_rows, 10, labelled=False, embedding_dim=dim) == scores.ByteSize()


def test_a_million_labelled_rows_reply_is_72_mb():
    # the case the limit was found with (8.6 MB of request): 2 int32 and 8 float64 columns of
    # 1e6 rows, plus 174 bytes of framing
    assert scores_bytes(1_000_000, 2, labelled=True) == 72_000_000 + 174


def test_check_names_the_stream_rpc_or_asks_for_smaller_chunks():
    check_reply_fits(1000, 1000, 10, "ScoreLogitsStream")  # exactly the limit fits
    with pytest.raises(ReplyTooLarge, match=r"1001 bytes, more than the server's "
                       r"max_message_bytes \(1000\); send at most about 9 rows per chunk with "
                       r"ScoreLogitsStream"):
        check_reply_fits(1001, 1000, 10, "ScoreLogitsStream")
    with pytest.raises(ReplyTooLarge, match=r"send smaller chunks \(at most about 5 samples"):
        check_reply_fits(2000, 1000, 10, None, "samples")


@settings(max_examples=60, deadline=None)
@given(
    n_classes=st.integers(2, 3000),
    float64=st.booleans(),
    labels=st.sampled_from(["none", "indices", "names"]),
    id_length=st.sampled_from([0, 1, 40, 300]),
    probabilities=st.booleans(),
    limit=st.sampled_from([64 * 1024, 1024 * 1024]),
)
def test_sdk_chunks_fit_both_ways(n_classes, float64, labels, id_length, probabilities, limit):
    """Every chunk the SDK plans fits the limit as a request and as a reply (worst case: every
    label -1, every id as long as the longest)."""
    names = [f"class-{i}" for i in range(n_classes)] if labels == "names" else None

    def columns(n: int) -> tuple[np.ndarray | None, list[str] | None]:
        label_arr = (None if labels == "none" else
                     np.array([""] * n if labels == "names" else [-1] * n))
        return label_arr, ["é" * id_length] * n if id_length else None

    label_arr, ids = columns(10)  # the plan looks at the longest id and label only
    rows = chunk_rows_for(n_classes, limit, probabilities, logits_itemsize=8 if float64 else 4,
                          labels=label_arr, ids=ids, class_names=names)
    label_arr, ids = columns(rows)
    logits = np.zeros((rows, n_classes), dtype=np.float64 if float64 else np.float32)
    options = options_message(names, None, probabilities)
    request = logits_request(logits, None if label_arr is None else label_arr[:rows],
                             None if ids is None else ids[:rows], options)
    reply = scores_reply_bytes(scores_bytes(
        rows, n_classes, labelled=label_arr is not None, include_probabilities=probabilities,
        ids=[] if ids is None else ids[:rows], class_names=names or []), first_row=10**9)
    if rows > 1:
        assert request.ByteSize() <= limit and reply <= limit
    assert rows == MAX_CHUNK_ROWS or max(request.ByteSize(), reply) > limit / 2 or rows == 1
