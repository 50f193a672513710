"""The GPU settings through the real server: CUDA refusals name what is missing (this machine
has ONNX Runtime's CPU build), and IOBinding serves the same scores as plain runs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from hardscore_client import ScoringClient
from hardscore_server.pipeline.preprocess import encode_png
from hardscore_server.tools.digits import heldout_split

from server_process import start_server

NO_CUDA = ("this ONNX Runtime has no CUDA provider (the CPU build 'onnxruntime' is installed): "
           "install the 'gpu' extra, pip install 'hardscore[gpu]'")


def test_cuda_and_tensorrt_refusals_name_the_reason() -> None:
    for provider in ("cuda", "tensorrt"):
        proc = subprocess.run(
            [sys.executable, "-m", "hardscore_server.main", "--execution-provider", provider,
             "--port", "0", "--metrics-port", "-1"],
            capture_output=True, text=True, timeout=60)
        assert proc.returncode == 3, proc.stderr
        assert (f"cannot serve the model: execution_provider={provider}, but CUDA cannot run "
                f"here: {NO_CUDA}; or use auto/cpu") in proc.stderr


def test_io_binding_serves_the_same_scores() -> None:
    _, _, images, labels = heldout_split()
    pngs = [encode_png(img) for img in images[:40]]
    results = []
    for extra in ([], ["--io-binding", "--cudnn-conv-algo-search", "heuristic",
                       "--cuda-mem-limit-bytes", "1073741824"]):
        server = start_server(["--execution-provider", "cpu", *extra])
        try:
            with ScoringClient(server.target) as client:
                results.append(client.score_images(pngs, [int(v) for v in labels[:40]],
                                                   include_logits=True))
        finally:
            server.stop()
    plain, bound = results
    assert plain.logits is not None and bound.logits is not None
    np.testing.assert_array_equal(bound.logits, plain.logits)
    np.testing.assert_array_equal(bound.hardness, plain.hardness)
    np.testing.assert_array_equal(bound.mistakenness, plain.mistakenness)
