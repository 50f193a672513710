"""The reply size computed from a request's shape equals the size of the reply itself."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hardscore_server.errors import ReplyTooLarge, check_reply_fits
from hardscore_server.responses import (
    encode_scores,
    image_reply_bytes,
    scores_bytes,
    scores_reply_bytes,
)
from hardscore_server.scores import score_logits
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
