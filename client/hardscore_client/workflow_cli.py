"""The data-set subcommands of ``hardscore``: score-dir, verdicts, select, label-issues, report
(registered on the main parser by cli.build_parser)."""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hardscore_client.analysis import Analysis, ScoreTable, analyse
from hardscore_client.collection import (
    find_store,
    no_embeddings_message,
    summary_lines,
    write_verdicts,
)
from hardscore_client.dataset import (
    BATCH_SIZE,
    CHECKPOINT_S,
    CONCURRENCY,
    IMAGE_SUFFIXES,
    Failure,
    Item,
    read_list,
    read_manifest_items,
    scan_folder,
    score_items,
)
from hardscore_client.errors import (
    EXIT_INTERRUPTED,
    EXIT_PARTIAL,
    InputError,
    InputNotFoundError,
)
from hardscore_client.label_quality import DEFAULT_METHOD, METHODS
from hardscore_client.report import ReportOptions, write_report
from hardscore_client.report_verdicts import report_embeddings
from hardscore_client.selection import (
    NEEDS_EMBEDDINGS,
    STRATEGIES,
    needed_column,
    order_score,
    select,
    write_queue,
)
from hardscore_client.tables import check_writable, read_table

DEFAULT_SERVER = "127.0.0.1:8001"
SCORE_DIR_TIMEOUT = 300.0
"""score-dir's default per-call deadline (one batch), seconds."""


def count(text: str) -> int:
    """An argparse type: a whole number >= 0 (bad usage, exit 2, otherwise)."""
    return _at_least(text, 0)


def positive(text: str) -> int:
    """An argparse type: a whole number >= 1 (bad usage, exit 2, otherwise)."""
    return _at_least(text, 1)


def _at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
    return value


def _saved_rows(out: Path) -> int:
    """Rows in the table ``out`` (0 when there is none yet)."""
    if not out.exists():
        return 0
    columns = read_table(out)
    return len(next(iter(columns.values()))) if columns else 0


def cmd_score_dir(
    args: argparse.Namespace,
    client_options: Callable[[argparse.Namespace], dict[str, Any]],
) -> int:
    """score-dir; ``client_options`` reads the connection flags (cli.client_options).

    Exit 0 when every image found is scored in the table, EXIT_PARTIAL when some failed (each
    listed, each a row with its reason), 1 when none is scored (nothing found, or every one
    failed), EXIT_INTERRUPTED on Ctrl-C (the rows so far saved)."""
    failures: list[Failure] = []
    options = client_options(args)
    out = Path(args.out)
    if sum(map(bool, (args.path, args.from_list, args.manifest))) > 1:
        raise InputError("score-dir takes one of a folder, --from-list FILE or --manifest FILE")
    check_writable(out)
    if args.from_list or args.manifest:
        items, failures = (read_manifest_items(args.manifest) if args.manifest
                           else read_list(Path(args.from_list)))
        for failure in failures:
            print(f"failed {failure.path}: {failure.reason}: {failure.message}",
                  file=sys.stderr)
    else:
        if not args.path:
            raise InputError("score-dir needs a folder, --from-list FILE or --manifest FILE")
        items = scan_folder(Path(args.path))
    if not items and not failures:
        if args.manifest:
            raise InputError(f"{args.manifest}: no images to score (the manifest has no rows)")
        where = args.from_list or args.path
        raise InputError(f"{where}: no images to score (files ending "
                         f"{', '.join(sorted(IMAGE_SUFFIXES))})")
    if args.unlabelled:
        items = [Item(it.path, "", it.split) for it in items]
    labelled = sum(1 for it in items if it.label)
    print(f"found {len(items)} images ({labelled} with a given label)", file=sys.stderr)
    try:
        summary = score_items(
            items, args.server or [DEFAULT_SERVER], out, batch_size=args.batch_size,
            concurrency=args.concurrency, checkpoint_s=args.checkpoint_s,
            progress=not args.no_progress, failures=failures, embeddings=args.embeddings,
            model_name=args.model, model_version=args.model_version, **options,
        )
    except KeyboardInterrupt:  # score_items saved what it had scored before it stopped
        print(f"interrupted: saved {_saved_rows(out)} rows to {out}, run the same command "
              "again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    rate = summary.scored / summary.seconds if summary.seconds else 0.0
    spread = ", ".join(f"{k}: {v}" for k, v in summary.per_server.items())
    failed = len(summary.failures) + summary.already_failed
    retried = f", {summary.retries} batches sent again" if summary.retries else ""
    print(f"scored {summary.scored} images in {summary.seconds:.1f} s ({rate:.0f} img/s; "
          f"{summary.model_name} version {summary.model_version}; {spread}{retried}); "
          f"{summary.already_scored + summary.already_failed} already in "
          f"{out}; {failed} failed (rows with their reason in 'error')", file=sys.stderr)
    if not failed:
        return 0
    return EXIT_PARTIAL if summary.scored + summary.already_scored else 1


def cmd_score_ray(
    args: argparse.Namespace,
    client_options: Callable[[argparse.Namespace], dict[str, Any]],
) -> int:
    """score-ray: exit 0 when every image is scored, EXIT_PARTIAL when some failed (rows with
    their reason), 1 when none is."""
    from hardscore_client.ray_scoring import score_ray

    options = client_options(args)
    items, failures = read_manifest_items(args.manifest)
    for failure in failures:
        print(f"failed {failure.path}: {failure.reason}: {failure.message} (not scored)",
              file=sys.stderr)
    if args.table:
        check_writable(Path(args.table))
    print(f"found {len(items)} images", file=sys.stderr)
    summary = score_ray(items, args.server or [DEFAULT_SERVER], Path(args.out),
                        address=args.ray_address, actors=args.actors,
                        batch_size=args.batch_size, embeddings=args.embeddings,
                        timeout=args.timeout, token=options.get("token"),
                        tls=options.get("tls"),
                        table=Path(args.table) if args.table else None,
                        progress=not args.no_progress, model_name=args.model,
                        model_version=args.model_version)
    failed = sum(summary.failed.values()) + summary.already_failed
    rate = summary.scored / summary.seconds if summary.seconds else 0.0
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(summary.failed.items()))
    print(f"scored {summary.scored} images in {summary.seconds:.1f} s ({rate:.0f} img/s); "
          f"{summary.already} already in {args.out}; {failed} failed"
          + (f" ({reasons})" if reasons else ""), file=sys.stderr)
    if not failed and not failures:
        return 0
    return EXIT_PARTIAL if summary.scored + summary.already else 1


def _analyse(args: argparse.Namespace, keep: Callable[[str], bool] | None = None) -> Analysis:
    """The table of ``args.table`` analysed with the ranking of --method/--adjust-pred-probs;
    ``keep`` picks the columns read (default: all)."""
    table = ScoreTable.load(Path(args.table), keep)
    analysis = analyse(table, args.method, args.adjust_pred_probs)
    custom = args.method != DEFAULT_METHOD or args.adjust_pred_probs
    if custom and analysis.table.probabilities is None:
        raise SystemExit(f"{args.table}: --method {analysis.ranking} needs p_<class> "
                         "probability columns")
    return analysis


PREVIEW_ROWS = 10
"""Rows of the queue that select prints."""


def cmd_select(args: argparse.Namespace) -> int:
    analysis = _analyse(args, needed_column)
    if args.strategy == "mistakes" and not analysis.table.labelled.any():
        raise SystemExit(f"{args.table} has no given labels: 'mistakes' needs them")
    embeddings = None
    if args.strategy in NEEDS_EMBEDDINGS:
        from hardscore_client.embedding_store import aligned

        table = Path(args.table)
        source = Path(args.embeddings) if args.embeddings else find_store(table)
        if source is None:
            raise InputNotFoundError(no_embeddings_message(table))
        embeddings, _ = aligned(analysis.table.paths, source)
    rows = select(analysis, args.budget, args.strategy, embeddings)
    written = write_queue(analysis, rows, args.strategy, Path(args.out), args.label_studio_json)
    files = f"{written.csv}, {written.json}" if written.json else str(written.csv)
    print(f"selected {written.rows} of {len(analysis.table)} rows ({args.strategy}): {files}",
          file=sys.stderr)
    stale = written.csv.with_suffix(".json")
    if written.json is None and stale.exists():
        print(f"note: {stale} is from an earlier run, not this queue (--label-studio-json "
              "rewrites it)", file=sys.stderr)
    name, score = order_score(analysis, args.strategy)
    top = rows[:PREVIEW_ROWS]
    if len(top):
        t = analysis.table
        print(f"first {len(top)}: rank, {name}, given -> predicted label, path", file=sys.stderr)
        texts = score_texts(score[top].tolist())
        width = max(len(text) for text in texts)
        for rank, (i, text) in enumerate(zip(top.tolist(), texts, strict=True), start=1):
            print(f"{rank:>4}  {text:<{width}}  {t.name(int(t.labels[i])) or '-'} -> "
                  f"{t.name(int(t.predicted[i])) or '-'}  {t.paths[i]}", file=sys.stderr)
    return 0


def _value(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:.3f}"


def score_texts(values: Sequence[float], digits: int = 4) -> list[str]:
    """``values`` as text with ``digits`` significant digits, or as many more as it takes
    (up to 17) for different values to read differently; a value just under 1 reads
    ``1 - 2.345e-05``, NaN ``n/a``."""
    distinct = len({v for v in values if not math.isnan(v)})
    texts: list[str] = []
    for d in range(digits, 18):
        texts = [_score_text(v, d) for v in values]
        if len({t for t, v in zip(texts, values, strict=True) if not math.isnan(v)}) == distinct:
            break
    return texts


def _score_text(value: float, digits: int) -> str:
    if math.isnan(value):
        return "n/a"
    if 0.999 < value < 1.0:  # 1 - value is exact here: its digits tell such values apart
        return f"1 - {1.0 - value:.{digits}g}"
    return f"{value:.{digits}g}"


def cmd_label_issues(args: argparse.Namespace) -> int:
    analysis = _analyse(args)
    issues = analysis.issues
    if issues is None:
        raise SystemExit(f"{args.table}: confident learning needs p_<class> probability columns "
                         "and given labels of at least two classes")
    n = len(issues.labels)
    summary: dict[str, Any] = {
        "samples": n, "estimated_label_issues": issues.num_issues,
        "flagged": int(analysis.flagged.sum()), "label_health_score": issues.health,
        "classes": [c.__dict__ for c in issues.class_noise()],
        "ranking": analysis.ranking,
        "flagged_paths": [analysis.table.paths[i] for i in analysis.issue_rows],
    }
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    print(f"{n} labelled samples: {issues.num_issues} estimated label issues, "
          f"{summary['flagged']} flagged, label health score {issues.health:.3f}")
    print(f"\n{'class':>12} {'count':>6} {'flagged':>7} {'est. issues':>11} {'noise':>6}  "
          "likely true label of the wrong ones")
    for c in issues.class_noise():
        print(f"{c.name:>12} {c.count:>6} {c.flagged:>7} {c.estimated_issues:>11} "
              f"{_value(c.noise_rate):>6}  {c.likely_true or '-'}"
              + (f" ({c.likely_true_count})" if c.likely_true else ""))
    t = analysis.table
    if args.method == DEFAULT_METHOD and not args.adjust_pred_probs:
        print("\nmost likely label mistakes (given -> predicted, label_issue_score):")
        score = analysis.issue_score()
    else:
        print(f"\nmost likely label mistakes (given -> predicted, label quality by "
              f"{analysis.ranking}, lowest first):")
        score = analysis.label_quality()
    shown = analysis.issue_rows[: args.k]
    for i, text in zip(shown.tolist(), score_texts(score[shown].tolist()), strict=True):
        print(f"  {t.paths[i]}  {t.name(int(t.labels[i]))} -> {t.name(int(t.predicted[i]))}"
              f"  {text}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    options = ReportOptions(hardest=args.hardest, easiest=args.easiest,
                            mistakes_per_class=args.mistakes_per_class, title=args.title)
    analysis = _analyse(args)
    embeddings = report_embeddings(analysis, Path(args.table),
                                   Path(args.embeddings) if args.embeddings else None)
    index = write_report(analysis, Path(args.out), options, source=str(args.table),
                         embeddings=embeddings)
    print(index)
    return 0


def cmd_verdicts(args: argparse.Namespace) -> int:
    """verdicts: the table with every collection verdict (collection.write_verdicts)."""
    out, found = write_verdicts(
        Path(args.table), Path(args.out) if args.out else None,
        embeddings=Path(args.embeddings) if args.embeddings else None,
        split_column=args.split_column, variant=args.variant, method=args.method,
        near_duplicate_threshold=args.near_duplicate_threshold)
    for line in summary_lines(found):
        print(line, file=sys.stderr)
    print(out)
    return 0


def _ranking_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD,
                   help="label-quality score that orders likely label mistakes (cleanlab's; "
                   "default self_confidence; which to pick: docs/dataset-workflow.md)")
    p.add_argument("--adjust-pred-probs", action="store_true",
                   help="correct the probabilities for class imbalance before ranking")


def _model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="", help="model of a server with several (model "
                   "repository); default: the only one loaded")
    p.add_argument("--model-version", default="", help="version of --model; default: its "
                   "highest loaded version when the run starts (every call then names it, so "
                   "a swap cannot mix versions in the table)")


def add_workflow_commands(
    sub: Any, with_server: Callable[..., argparse.ArgumentParser],
    client_options: Callable[[argparse.Namespace], dict[str, Any]],
) -> None:
    """Registers the data-set subcommands on ``sub`` (argparse subparsers); ``with_server`` adds
    the connection flags to a parser (cli.add_connection_flags), ``client_options`` reads them
    (cli.client_options)."""
    p = sub.add_parser("score-dir", help="score every image of a folder (or list) into a table")
    p.add_argument("path", nargs="?", help="folder: one subfolder per class, or flat")
    p.add_argument("--from-list", metavar="FILE",
                   help="read image paths / file:// URIs from FILE (PATH[<TAB>LABEL[<TAB>SPLIT]] "
                   "a line)")
    p.add_argument("--manifest", metavar="FILE",
                   help="read the images from a manifest: .csv, .jsonl or .parquet with a "
                   "'uri' (or 'path') column and optional label, split, id; a local file or "
                   "a URI (s3://...; credentials and AWS_ENDPOINT_URL_S3 from the environment)")
    p.add_argument("--out", required=True, help="table to write: .parquet, .csv or .jsonl "
                   "(existing rows are kept and their paths skipped)")
    p.add_argument("--unlabelled", action="store_true", help="ignore the class folder names")
    p.add_argument("--batch-size", type=positive, default=BATCH_SIZE, help="images per call")
    p.add_argument("--concurrency", type=positive, default=CONCURRENCY,
                   help="calls in flight per server")
    p.add_argument("--checkpoint-s", type=float, default=CHECKPOINT_S,
                   help="seconds between rewrites of the table (resumable progress)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--embeddings", action="store_true",
                   help="keep each image's embedding (the model's pooled features) in the "
                   "folder OUT.embeddings beside the table, for `hardscore verdicts`")
    _model_flags(p)
    with_server(p, timeout=SCORE_DIR_TIMEOUT, several=True)
    p.set_defaults(func=functools.partial(cmd_score_dir, client_options=client_options))

    p = sub.add_parser("score-ray", help="score a manifest on a Ray cluster (the ray extra) "
                       "into a folder of Parquet files")
    p.add_argument("--manifest", metavar="FILE", required=True,
                   help="the images: as score-dir --manifest (a local file or a URI)")
    p.add_argument("--out", required=True, help="folder of Parquet files (rows already there "
                   "are skipped, as score-dir does)")
    p.add_argument("--table", metavar="T", help="also merge the folder into this score-dir "
                   "table (.parquet, .csv, .jsonl) at the end")
    p.add_argument("--ray-address", metavar="ADDR", default=None,
                   help="the Ray cluster (default: RAY_ADDRESS, else a local one)")
    p.add_argument("--actors", type=positive, default=2,
                   help="scoring actors (each one client per server)")
    p.add_argument("--batch-size", type=positive, default=BATCH_SIZE, help="images per call")
    p.add_argument("--embeddings", action="store_true", help="an 'embedding' column")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _model_flags(p)
    with_server(p, timeout=SCORE_DIR_TIMEOUT, several=True)
    p.set_defaults(func=functools.partial(cmd_score_ray, client_options=client_options))

    p = sub.add_parser("verdicts", help="collection verdicts (uniqueness, duplicates, leaks, "
                       "outliers...) of a score table, from its embeddings")
    p.add_argument("table", help="a score table (score-dir's, score-images')")
    p.add_argument("--embeddings", metavar="SRC",
                   help="the embeddings: a .embeddings folder, a .npy in the table's row order "
                   "or a .npz with 'embedding' and 'path' or 'id' (default: the table's own, "
                   "written by score-dir --embeddings)")
    p.add_argument("--out", help="table to write (default: TABLE with .verdicts before its "
                   "suffix, e.g. scores.verdicts.parquet)")
    p.add_argument("--split-column", metavar="NAME",
                   help="the column naming each row's split (default: split)")
    p.add_argument("--variant", choices=("corrected", "fiftyone"), default="corrected",
                   help="FiftyOne's scores as documented (corrected, the default) or as "
                   "FiftyOne Brain 0.25.0 computes them (fiftyone)")
    p.add_argument("--method", choices=("auto", "exact", "approximate"), default="auto",
                   help="nearest neighbours: exact, approximate (faiss HNSW), or auto (exact "
                   "up to N*N*D = 1e12)")
    p.add_argument("--near-duplicate-threshold", type=float, default=0.2,
                   help="cosine distance (centred embeddings) under which a row is a near "
                   "duplicate (FiftyOne's default 0.2)")
    p.set_defaults(func=cmd_verdicts)

    p = sub.add_parser("select", help="pick an annotation queue from a score table")
    p.add_argument("table", help="a table written by score-dir")
    p.add_argument("--budget", type=count, required=True,
                   help="how many samples to select (>= 0)")
    p.add_argument("--strategy", choices=STRATEGIES, default="hardest")
    p.add_argument("--out", default="selection",
                   help="writes OUT.csv (and OUT.json with --label-studio-json)")
    p.add_argument("--label-studio-json", action="store_true",
                   help="also write OUT.json, the queue as a Label Studio task list")
    p.add_argument("--embeddings", metavar="SRC",
                   help="diverse-hard: the embeddings (default: the table's store, or for a "
                   ".verdicts table the store of the table it came from)")
    _ranking_options(p)
    p.set_defaults(func=cmd_select)

    p = sub.add_parser("label-issues", help="confident learning: estimated label issues")
    p.add_argument("table", help="a table with given labels and p_<class> probabilities")
    p.add_argument("-k", type=count, default=20, help="flagged samples to list")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    _ranking_options(p)
    p.set_defaults(func=cmd_label_issues)

    p = sub.add_parser("report", help="write the HTML data-set report")
    p.add_argument("table", help="a table written by score-dir")
    p.add_argument("--out", required=True, help="report folder (index.html inside)")
    p.add_argument("--hardest", type=count, default=24, help="samples in the hardest gallery")
    p.add_argument("--easiest", type=count, default=12, help="samples in the easiest gallery")
    p.add_argument("--mistakes-per-class", type=count, default=8,
                   help="likely label mistakes shown per class")
    p.add_argument("--title", default="hardscore data-set report")
    p.add_argument("--embeddings", metavar="SRC", default=None,
                   help="embeddings for the collection map of a verdicts table: a "
                   ".embeddings folder, .npy or .npz (default: the table's own store, or that "
                   "of the table the verdicts came from)")
    _ranking_options(p)
    p.set_defaults(func=cmd_report)

