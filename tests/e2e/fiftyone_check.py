"""Runs inside the FiftyOne venv (make fiftyone-venv), called by test_fiftyone.py: writes the
fields with hardscore_client.fiftyone_fields against a running hardscore server, computes the
same fields with FiftyOne Brain's own functions on the same samples, and prints a JSON report
of the differences. Usage: fiftyone_check.py INPUT.json (written by the test)."""

from __future__ import annotations

import json
import math
import sys
import time

import fiftyone as fo
import fiftyone.brain as fob
import numpy as np

from hardscore_client import ScoringClient
from hardscore_client.fiftyone_fields import Fields, score_images, score_logits


def compare(samples: fo.DatasetView, ours: str, theirs: str) -> dict[str, object]:
    """Largest |ours - theirs| over samples where both are set, and where only one is."""
    a, b = samples.values(ours), samples.values(theirs)
    one_missing = sum((x is None) != (y is None) for x, y in zip(a, b, strict=True))
    diffs = [abs(x - y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    return {"max_abs_diff": max(diffs) if diffs else None, "compared": len(diffs),
            "none_mismatch": one_missing, "nones": sum(x is None for x in a)}


def brain_fields(samples: fo.Dataset, pred_field: str) -> None:
    # Declared first: Brain sets None on a sample without a prediction, which FiftyOne cannot
    # type when that sample comes first (the values are not changed by declaring).
    for name in ("fo_hardness", "fo_mistakenness", "fo_mistakenness_logits"):
        samples.add_sample_field(name, fo.FloatField)
    fob.compute_hardness(samples, pred_field, hardness_field="fo_hardness")
    fob.compute_mistakenness(samples, pred_field, label_field="ground_truth",
                             mistakenness_field="fo_mistakenness")
    fob.compute_mistakenness(samples, pred_field, label_field="ground_truth",
                             mistakenness_field="fo_mistakenness_logits", use_logits=True)


def collection_check() -> dict[str, object]:
    """3. Collection verdicts (variant "fiftyone") written by collection_fields_from_embeddings
    beside Brain's own compute_uniqueness, compute_representativeness, compute_near_duplicates
    (duplicates_view's fields) and compute_leaky_splits (tag_leaks) on the same embeddings."""
    from hardscore_client.fiftyone_fields import collection_fields_from_embeddings

    rng = np.random.default_rng(21)
    n, d = 200, 16
    centres = rng.normal(size=(5, d)) * 3
    x = centres[rng.integers(5, size=n)] + rng.normal(size=(n, d))
    x[1] = x[0] + 1e-3 * rng.normal(size=d)
    x[13] = x[12]
    x[40] = x[30] + 1e-3 * rng.normal(size=d)
    splits = np.where(rng.random(n) < 0.7, "train", "test")
    splits[[0, 12, 30]], splits[[1, 13, 40]] = "train", ["train", "test", "test"]
    ds = fo.Dataset()
    ds.add_samples([fo.Sample(filepath=f"/nonexistent/c{i}.png", split=str(s))
                    for i, s in enumerate(splits)])
    written = collection_fields_from_embeddings(ds, x, split_field="split", variant="fiftyone")
    fob.compute_uniqueness(ds, embeddings=x.copy(), uniqueness_field="fo_uniqueness")
    fob.compute_representativeness(ds, embeddings=x.copy(),
                                   representativeness_field="fo_representativeness")
    index = fob.compute_near_duplicates(ds, embeddings=x.copy(), threshold=0.2)
    index.duplicates_view(type_field="fo_dup_type", id_field="fo_dup_id",
                          dist_field="fo_dup_dist")
    leaky = fob.compute_leaky_splits(ds, splits="split", embeddings=x.copy(), threshold=0.2)
    leaky.tag_leaks("fo_leak")
    out = {
        "fields": written,
        "uniqueness": compare(ds, "uniqueness", "fo_uniqueness"),
        "representativeness": compare(ds, "representativeness", "fo_representativeness"),
        "dup_dist": compare(ds, "dup_dist", "fo_dup_dist"),
        "dup_type_equal": ds.values("dup_type") == ds.values("fo_dup_type"),
        "dup_id_equal": ds.values("dup_id") == ds.values("fo_dup_id"),
        "duplicates": ds.values("dup_type").count("duplicate"),
        "planted": [ds.values("dup_type")[i] for i in (1, 13, 40)],
        "leaks": sorted(ds.match_tags("leak").values("id")),
        "fo_leaks": sorted(ds.match_tags("fo_leak").values("id")),
    }
    ds.delete()
    return out


def main() -> int:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    started = time.perf_counter()
    report: dict[str, object] = {"fiftyone": fo.__version__}
    logits_names = Fields(hardness="hardness_l", mistakenness="mistakenness_logits",
                          label_issue="label_issue_l", margin_issue="margin_issue_l")
    with ScoringClient(spec["server"], timeout=120) as client:
        # 1. Images scored by the served model.
        images = fo.Dataset()
        images.add_samples([
            fo.Sample(filepath=s["path"], ground_truth=(
                fo.Classification(label=s["label"]) if s["label"] is not None else None))
            for s in spec["images"]
        ])
        report["database_ready_s"] = round(time.perf_counter() - started, 1)
        written = score_images(images, client, pred_field="hardscore")
        score_images(images, client, pred_field="hardscore", use_logits=True,
                     names=logits_names)
        brain_fields(images, "hardscore")
        report["images"] = {
            "scored": written.scored, "failed": [reason for _, reason in written.failed],
            "fields": written.fields,
            "hardness": compare(images, "hardness", "fo_hardness"),
            "mistakenness": compare(images, "mistakenness", "fo_mistakenness"),
            "mistakenness_logits": compare(images, "mistakenness_logits",
                                           "fo_mistakenness_logits"),
            "label_issue_score": images.values("label_issue_score"),
            "margin_issue_score": images.values("margin_issue_score"),
            "predicted": images.values("hardscore.label"),
        }
        if spec.get("repository"):  # a model version of a server with several, named
            repo = spec["repository"]
            named_fields = Fields(hardness="hardness_named", mistakenness="mistakenness_named",
                                  label_issue="label_issue_named",
                                  margin_issue="margin_issue_named")
            with ScoringClient(repo["server"], timeout=120) as repo_client:
                named = score_images(images, repo_client, pred_field="hardscore_named",
                                     names=named_fields, model_name=repo["model"],
                                     model_version=repo["version"])
            report["named"] = {
                "model_name": named.model_name, "model_version": named.model_version,
                "scored": named.scored, "failed": [reason for _, reason in named.failed],
                "hardness": images.values("hardness_named"),
                "mistakenness": images.values("mistakenness_named"),
                "label_issue_score": images.values("label_issue_named"),
                "predicted": images.values("hardscore_named.label"),
            }

        # 2. Logits stored on the samples (no images needed).
        rng = np.random.default_rng(spec["seed"])
        classes = [f"c{k}" for k in range(spec["classes"])]
        stored = fo.Dataset()
        rows = []
        for i in range(spec["logits_rows"]):
            logits = rng.normal(scale=3.0, size=len(classes))
            p = np.exp(logits - logits.max())
            p /= p.sum()
            top = int(np.argmax(p))
            label = classes[top] if i % 7 else classes[(top + 1) % len(classes)]  # not argmax
            prediction = (fo.Classification(label=label, confidence=float(p[top]),
                                            logits=logits.tolist()) if i % 11 else None)
            truth = (fo.Classification(label=classes[int(rng.integers(len(classes)))])
                     if i % 5 else None)
            rows.append(fo.Sample(filepath=f"/nonexistent/{i}.png", predictions=prediction,
                                  ground_truth=truth))
        stored.add_samples(rows)
        written = score_logits(stored, client, "predictions", class_names=classes)
        score_logits(stored, client, "predictions", class_names=classes, use_logits=True,
                     names=logits_names)
        brain_fields(stored, "predictions")
        # Reference for the label scores: numpy on the stored logits.
        ref_issue, got_issue = [], []
        for sample in stored.select_fields(["predictions", "ground_truth", "label_issue_score"]):
            if sample.predictions is None or sample.ground_truth is None:
                continue
            z = np.asarray(sample.predictions.logits)
            p = np.exp(z - z.max())
            p /= p.sum()
            ref_issue.append(1.0 - p[classes.index(sample.ground_truth.label)])
            got_issue.append(sample.label_issue_score)
        report["logits"] = {
            "scored": written.scored, "fields": written.fields,
            "hardness": compare(stored, "hardness", "fo_hardness"),
            "mistakenness": compare(stored, "mistakenness", "fo_mistakenness"),
            "mistakenness_logits": compare(stored, "mistakenness_logits",
                                           "fo_mistakenness_logits"),
            "label_issue_vs_numpy": max(abs(a - b) for a, b in
                                        zip(got_issue, ref_issue, strict=True)),
            "label_issue_compared": len(ref_issue),
        }
        images.delete()
        stored.delete()
    if spec.get("collection"):
        report["collection"] = collection_check()
    report["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, default=lambda v: None if isinstance(v, float) and math.isnan(v)
                     else v))
    return 0


if __name__ == "__main__":
    sys.exit(main())
