"""Train the embedded default model and export it to server/hardscore_server/default_model/.

A small residual CNN (about 56 thousand parameters, ~0.2 MB as ONNX) classifies scikit-learn's
handwritten digits (``sklearn.datasets.load_digits``, shipped with scikit-learn, no download).
The 8x8 images are converted to uint8 0..255 and preprocessed exactly as the server does for the
written manifest: bilinear Pillow resize to 32x32, gray replicated to RGB, then
x = (pixel / 255 - 0.5) / 0.5. Training uses only the training part of the fixed split of
``hardscore_server.tools.digits.heldout_split()``; the held-out part gives the reported accuracy.

Deterministic (fixed seeds, CPU, 2 threads), about a minute on 2 cores. Needs the ``export``
extra (torch, torchvision, onnx, scikit-learn). Run from the repository root:

    python server/train_default_model.py [--out DIR] [--epochs N]

The export writes the ``embedding`` output (the 48 pooled features) with the logits. For a
model directory exported before that existed (the committed one), ``--add-embedding`` adds it
to the existing graph without retraining (``tools/onnx_outputs.py``: the pooled tensor becomes a
second graph output; no weight or node changes, the logits stay bit-identical, checked on the
digits data) and records it in manifest.json (``make default-model-embedding``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
SEED = 0
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
SIZE = 32
EPOCHS = 30
BATCH_SIZE = 64
MAX_SHIFT = 2
"""Augmentation: random translation by up to this many pixels (of 32) in x and y."""


def build_model(num_classes: int = 10) -> Any:
    """The digits ResNet: 3x3 stem (16 ch) and three residual stages (16, 32, 48 channels at
    32x32, 16x16, 8x8), global average pooling and a linear layer. Outputs logits."""
    import torch
    from torch import nn

    class Block(nn.Module):
        """Two 3x3 conv + BN layers with an identity (or 1x1 conv) shortcut."""

        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.shortcut: nn.Module = nn.Identity()
            if stride != 1 or cin != cout:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
                )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = torch.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return torch.relu(out + self.shortcut(x))

    class DigitsResNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(
                nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
            )
            self.stages = nn.Sequential(Block(16, 16, 1), Block(16, 32, 2), Block(32, 48, 2))
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(48, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.pool(self.stages(self.stem(x)))
            return self.fc(torch.flatten(x, 1))

    return DigitsResNet()


def _shift_batch(x: Any, rng: np.random.Generator, background: float) -> Any:
    """Translate each image by a random integer offset in [-MAX_SHIFT, MAX_SHIFT] pixels,
    filling with the (normalised) background value."""
    import torch

    n, _, h, w = x.shape
    padded = torch.full(
        (n, x.shape[1], h + 2 * MAX_SHIFT, w + 2 * MAX_SHIFT), background, dtype=x.dtype
    )
    padded[:, :, MAX_SHIFT : MAX_SHIFT + h, MAX_SHIFT : MAX_SHIFT + w] = x
    out = torch.empty_like(x)
    offsets = rng.integers(0, 2 * MAX_SHIFT + 1, size=(n, 2))
    for i, (dy, dx) in enumerate(offsets):
        out[i] = padded[i, :, dy : dy + h, dx : dx + w]
    return out


def train(epochs: int = EPOCHS) -> tuple[Any, float, dict[str, Any]]:
    """Train on the training split; return (model in eval mode, held-out accuracy in [0, 1],
    facts for the provenance)."""
    import torch
    from torch import nn

    from hardscore_server.tools.digits import heldout_split, to_model_input

    torch.manual_seed(SEED)
    np.random.seed(SEED)
    rng = np.random.default_rng(SEED)
    torch.set_num_threads(2)

    x_train_u8, y_train, x_test_u8, y_test = heldout_split()
    x_train = torch.from_numpy(to_model_input(x_train_u8, MEAN, STD, SIZE, SIZE))
    x_test = torch.from_numpy(to_model_input(x_test_u8, MEAN, STD, SIZE, SIZE))
    t_train = torch.from_numpy(y_train)
    background = (0.0 - MEAN[0]) / STD[0]

    model = build_model(10)
    n_params = sum(p.numel() for p in model.parameters())
    steps_per_epoch = (len(x_train) + BATCH_SIZE - 1) // BATCH_SIZE
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=3e-3, total_steps=epochs * steps_per_epoch
    )
    loss_fn = nn.CrossEntropyLoss()
    start = time.monotonic()
    for epoch in range(epochs):
        model.train()
        order = torch.from_numpy(rng.permutation(len(x_train)))
        total = 0.0
        for b in range(steps_per_epoch):
            idx = order[b * BATCH_SIZE : (b + 1) * BATCH_SIZE]
            xb = _shift_batch(x_train[idx], rng, background)
            loss = loss_fn(model(xb), t_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(idx)
        if (epoch + 1) % 5 == 0 or epoch == 0:
            print(f"epoch {epoch + 1:3d}/{epochs}  train loss {total / len(x_train):.4f}")
    model.eval()
    with torch.no_grad():
        predicted = model(x_test).argmax(dim=1).numpy()
    accuracy = float(np.mean(predicted == y_test))
    facts = {
        "parameters": n_params,
        "train_size": len(x_train),
        "test_size": len(x_test),
        "train_seconds": time.monotonic() - start,
    }
    return model, accuracy, facts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "server" / "hardscore_server" / "default_model",
        help="output model directory (default: the embedded default model)",
    )
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--add-embedding", action="store_true",
                        help="do not train: add the embedding output to the model in --out")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO_ROOT / "server"))
    if args.add_embedding:
        return add_embedding(args.out)
    from hardscore_server.tools.digits import SPLIT_RECIPE, SPLIT_SEED
    from hardscore_server.tools.export import export_model

    model, accuracy, facts = train(args.epochs)
    print(
        f"held-out accuracy {accuracy:.4f} on {facts['test_size']} images "
        f"({facts['parameters']} parameters, trained in {facts['train_seconds']:.0f} s)"
    )
    result = export_model(
        model,
        args.out,
        name="digits-resnet",
        version="1",
        class_names=[str(d) for d in range(10)],
        input_size=(SIZE, SIZE),
        mean=MEAN,
        std=STD,
        resize="resize",
        provenance={
            "arch": "DigitsResNet (3x3 stem 16ch; residual stages 16/32/48ch; GAP; linear)",
            "parameters": str(facts["parameters"]),
            "training_script": "server/train_default_model.py",
            "dataset": "sklearn.datasets.load_digits",
            "split": SPLIT_RECIPE + "; trained on the train part only",
            "split_function": "hardscore_server.tools.digits.heldout_split",
            "split_seed": str(SPLIT_SEED),
            "training_seed": str(SEED),
            "preprocessing": (
                "uint8 8x8 gray -> PIL resize (32, 32) BILINEAR -> replicate to RGB -> "
                "(pixel/255 - 0.5)/0.5"
            ),
            "augmentation": f"random shifts of up to {MAX_SHIFT} px",
            "epochs": str(args.epochs),
            "heldout_accuracy": f"{accuracy:.4f}",
            "heldout_size": str(facts["test_size"]),
            "checkpoint": "none (trained in memory by the training script)",
        },
    )
    size = (result.model_dir / "model.onnx").stat().st_size
    print(f"exported to {result.model_dir} (model.onnx {size} bytes)")
    return 0


def add_embedding(model_dir: Path) -> int:
    """Adds the ``embedding`` output to ``model_dir``'s model.onnx (the pooled features the
    final Gemm reads) and to its manifest; checks on the digits data that the logits are
    bit-identical and the embeddings are what the linear layer turns into those logits."""
    import dataclasses

    import onnx
    import onnxruntime as ort

    from hardscore_server.model.model_dir import (
        MODEL_FILE,
        check_io,
        load_manifest,
        write_manifest,
    )
    from hardscore_server.tools.digits import heldout_split, to_model_input
    from hardscore_server.tools.onnx_export import EMBEDDING_NAME
    from hardscore_server.tools.onnx_outputs import add_embedding_output

    manifest = load_manifest(model_dir)
    if manifest.has_embedding:
        print(f"{model_dir} already has the embedding output ({manifest.embedding_dim}-d)")
        return 0
    path = model_dir / MODEL_FILE
    original = onnx.load(str(path))
    edited, dim = add_embedding_output(original, manifest.output_name)
    x_train, _, x_test, _ = heldout_split()
    x = to_model_input(np.concatenate([x_train, x_test]), MEAN, STD)
    before = ort.InferenceSession(original.SerializeToString(), providers=["CPUExecutionProvider"])
    after = ort.InferenceSession(edited.SerializeToString(), providers=["CPUExecutionProvider"])
    want = before.run([manifest.output_name], {manifest.input_name: x})[0]
    logits, embedding = after.run([manifest.output_name, EMBEDDING_NAME],
                                  {manifest.input_name: x})
    if not np.array_equal(want, logits):
        raise SystemExit("the edited model's logits differ from the original's: not written")
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in original.graph.initializer}
    linear = embedding.astype(np.float64) @ weights["fc.weight"].T.astype(np.float64) + (
        weights["fc.bias"])
    print(f"logits bit-identical on {len(x)} digits; embedding {dim}-d, fc(embedding) - logits "
          f"max abs {np.abs(linear - logits).max():.2e}")
    manifest = dataclasses.replace(
        manifest, embedding_name=EMBEDDING_NAME, embedding_dim=dim,
        provenance={**manifest.provenance, "embedding": (
            "pooled features added as an output of the trained graph by "
            "server/train_default_model.py --add-embedding (logits unchanged)")})
    check_io(manifest, after.get_inputs(), after.get_outputs())
    onnx.save_model(edited, str(path))
    write_manifest(model_dir, manifest)
    print(f"wrote {path} ({path.stat().st_size} bytes) and its manifest")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
