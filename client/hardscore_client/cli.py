"""``hardscore``: the command line of the client.

    hardscore score-logits --logits X.npy [--labels Y.npy] --out scores.csv
    hardscore score-logits --pred-probs P.npy --labels Y.npy --out scores.csv
    hardscore score-images IMAGE... --out scores.csv
    hardscore top --by label_issue_score -k 20 scores.csv
    hardscore info
    hardscore score-dir FOLDER --server HOST:PORT [--server ...] --out scores.parquet
    hardscore report scores.parquet --out report/
    hardscore select --budget 100 --strategy per-class scores.parquet --out queue
    hardscore label-issues scores.parquet
    hardscore label-studio --server HOST:PORT --port 9090 --label-studio-url URL
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from tqdm import tqdm

from hardscore_client.client import (
    DEFAULT_CONNECT_TIMEOUT,
    TOKEN_ENV,
    TOKEN_HINT,
    ProbabilitiesAsLogitsWarning,
    ScoringClient,
    TLSConfig,
)
from hardscore_client.errors import WorkflowError
from hardscore_client.tables import read_table, result_columns, write_table
from hardscore_wire.scores import SCORE_NAMES, looks_like_probabilities

DEFAULT_SERVER = "127.0.0.1:8001"
PROGRESS_MIN_ROWS = 100_000
TIMEOUTS = {"score-logits": 600.0, "score-images": 300.0, "info": 30.0}
"""Default per-call deadline of each command, seconds (score-dir: 300 s per batch; label-studio:
--predict-deadline)."""


def _class_names(args: argparse.Namespace) -> list[str] | None:
    if args.class_names_file:
        return [line.strip() for line in Path(args.class_names_file).read_text().splitlines()
                if line.strip()]
    if args.class_names:
        return [name.strip() for name in args.class_names.split(",")]
    return None


def add_connection_flags(
    p: argparse.ArgumentParser, *, timeout: float | None, several: bool = False,
    timeout_default: str | None = None,
) -> argparse.ArgumentParser:
    """Adds the connection flags to ``p``: ``--server`` (repeatable when ``several``),
    ``--timeout`` (per-call deadline, default ``timeout`` seconds, described in the help as
    ``timeout_default`` when given), ``--connect-timeout``, ``--token``/``--token-file``,
    ``--tls*``."""
    if several:
        p.add_argument("--server", action="append", metavar="HOST:PORT",
                       help=f"server to use; repeat to spread the work (default {DEFAULT_SERVER})")
    else:
        p.add_argument("--server", default=DEFAULT_SERVER, metavar="HOST:PORT",
                       help=f"the server's gRPC address (default {DEFAULT_SERVER})")
    shown = timeout_default or ("none" if timeout is None else f"{timeout:g}")
    p.add_argument("--timeout", type=float, default=timeout,
                   help=f"per-call deadline, seconds; 0 = none (default: {shown})")
    p.add_argument("--connect-timeout", type=float, default=DEFAULT_CONNECT_TIMEOUT,
                   help="seconds to wait for the first connection before saying why it failed "
                        f"(exit 3); 0 = wait within the per-call deadline "
                        f"(default: {DEFAULT_CONNECT_TIMEOUT:g})")
    token = p.add_mutually_exclusive_group()
    token.add_argument("--token", help=f"bearer token (default: environment {TOKEN_ENV}; "
                       "prefer it or --token-file, a flag shows in the process list)")
    token.add_argument("--token-file", metavar="FILE", help="file holding the bearer token")
    p.add_argument("--tls", action="store_true",
                   help="connect over TLS (system CA roots unless --tls-ca)")
    p.add_argument("--tls-ca", help="PEM CA bundle that signed the server's certificate")
    p.add_argument("--tls-cert", help="PEM client certificate (mutual TLS)")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")
    p.add_argument("--tls-server-name", help="name to verify the server certificate against "
                   "(default: the host in --server)")
    return p


def servers(args: argparse.Namespace) -> list[str]:
    """The --server addresses (a list for every command; the default when none was given)."""
    value = args.server
    if isinstance(value, str):
        return [value]
    return list(value) if value else [DEFAULT_SERVER]


def _token(args: argparse.Namespace) -> str | None:
    if args.token:
        return str(args.token)
    if args.token_file:
        try:
            text = Path(args.token_file).read_text().strip()
        except OSError as exc:
            raise SystemExit(f"hardscore: --token-file: {exc}") from None
        if not text:
            raise SystemExit(f"hardscore: --token-file {args.token_file} is empty")
        return text
    return os.environ.get(TOKEN_ENV) or None


def client_options(args: argparse.Namespace) -> dict[str, Any]:
    """ScoringClient / AsyncScoringClient keyword options from the connection flags:
    ``timeout``, ``connect_timeout`` (seconds, None = unbounded), ``tls``, ``token``."""
    tls = None
    if args.tls or args.tls_ca or args.tls_cert or args.tls_key or args.tls_server_name:
        try:
            tls = TLSConfig.from_files(args.tls_ca, args.tls_cert, args.tls_key,
                                       args.tls_server_name)
        except (OSError, ValueError) as exc:
            raise SystemExit(f"hardscore: TLS: {exc}") from None
    for flag in ("timeout", "connect_timeout"):
        value = getattr(args, flag)
        if value is not None and value < 0:
            raise SystemExit(f"hardscore: --{flag.replace('_', '-')} must be >= 0 seconds")
    return {"timeout": args.timeout or None, "connect_timeout": args.connect_timeout or None,
            "tls": tls, "token": _token(args)}


def _client(args: argparse.Namespace) -> ScoringClient:
    """The blocking client of the first --server with the options the flags describe."""
    return ScoringClient(servers(args)[0], **client_options(args))


def rpc_error_line(exc: grpc.RpcError, args: argparse.Namespace) -> str:
    """One line for a gRPC error status that ended a command: the code, the server's message,
    then in brackets the address and a hint where the code suggests one."""
    code = exc.code() if isinstance(exc, grpc.Call) else None
    detail = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    notes = [f"server {', '.join(servers(args))}"] if hasattr(args, "server") else []
    if code == grpc.StatusCode.UNAUTHENTICATED:
        notes.append(TOKEN_HINT)
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED and getattr(args, "timeout", None):
        notes.append(f"the call took longer than --timeout {args.timeout:g} s")
    elif code == grpc.StatusCode.UNIMPLEMENTED:
        notes.append("is this a hardscore server's gRPC port?")
    suffix = f" ({'; '.join(notes)})" if notes else ""
    return f"hardscore: {getattr(code, 'name', 'error')}: {detail}{suffix}"


def cmd_score_logits(args: argparse.Namespace) -> int:
    source = args.logits or args.pred_probs
    values = np.load(source, mmap_mode="r")
    if values.ndim != 2:
        raise SystemExit(f"{source}: expected a 2-D array [N, C], got shape {values.shape}")
    values = np.asarray(values)
    if args.pred_probs and args.temperature is not None:
        raise SystemExit("--temperature applies to --logits only: probabilities are scored "
                         "as given")
    if args.logits and looks_like_probabilities(values):
        print(f"hardscore: warning: {source} looks like predicted probabilities (every value "
              "in [0, 1], every row summing to 1), not logits: scoring it as logits applies "
              "a softmax on top and the scores are wrong; pass it with --pred-probs instead",
              file=sys.stderr)
    labels = np.load(args.labels) if args.labels else None
    with _client(args) as client, tqdm(
        total=len(values), unit="rows", unit_scale=True, disable=len(values) < PROGRESS_MIN_ROWS,
        desc="scoring",
    ) as bar, warnings.catch_warnings():
        warnings.simplefilter("ignore", ProbabilitiesAsLogitsWarning)  # said above, once
        if args.pred_probs:
            result = client.score_probabilities(
                values, labels, class_names=_class_names(args),
                include_probabilities=args.probabilities, progress=bar.update)
        else:
            result = client.score_logits(
                values, labels, class_names=_class_names(args),
                temperature=args.temperature, include_probabilities=args.probabilities,
                progress=bar.update,
            )
    write_table(Path(args.out), result_columns(result))
    print(f"wrote {len(result)} rows to {args.out}", file=sys.stderr)
    return 0


def cmd_score_images(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.images]
    images = [p.read_bytes() for p in paths]
    labels: list[int | str | None] | None = list(args.labels.split(",")) if args.labels else None
    with _client(args) as client:
        result = client.score_images(images, labels, ids=[str(p) for p in paths],
                                     include_probabilities=args.probabilities)
    for error in result.errors:
        print(f"skipped {paths[error.index]}: {error.reason}: {error.message}", file=sys.stderr)
    write_table(Path(args.out), result_columns(result))
    print(f"wrote {len(result)} rows to {args.out}", file=sys.stderr)
    return 0


def cmd_top(args: argparse.Namespace) -> int:
    columns = read_table(Path(args.table))
    if args.by not in columns:
        raise SystemExit(f"{args.table} has no column {args.by!r}; it has {', '.join(columns)}")
    values = np.asarray(columns[args.by], dtype=np.float64)
    order = np.argsort(values if args.ascending else -values, kind="stable")
    order = order[~np.isnan(values[order])][: args.k]
    shown = [c for c in ("row", "id", "predicted_class", "given_label", args.by) if c in columns]
    print("\t".join(shown))
    for i in order:
        print("\t".join(_show(columns[c][i]) for c in shown))
    return 0


def _show(value: object) -> str:
    return f"{value:.6f}" if isinstance(value, float | np.floating) else str(value)


def cmd_info(args: argparse.Namespace) -> int:
    with _client(args) as client:
        print(client.get_model_info())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hardscore", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def with_server(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        return add_connection_flags(p, timeout=TIMEOUTS[p.prog.split()[-1]])

    p = with_server(sub.add_parser("score-logits",
                                   help="score a .npy file of logits (or of probabilities)"))
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--logits", help=".npy of logits, shape [N, C]")
    source.add_argument("--pred-probs", help=".npy of predicted probabilities, shape [N, C]: "
                        "values in [0, 1], rows summing to 1 within 1e-3 (scored as given)")
    p.add_argument("--labels", help=".npy of N class indices (-1 = none)")
    p.add_argument("--class-names", help="comma-separated class names, in index order")
    p.add_argument("--class-names-file", help="file with one class name per line")
    p.add_argument("--temperature", type=float, help="softmax temperature (> 0)")
    p.add_argument("--probabilities", action="store_true", help="also write p_<class> columns")
    p.add_argument("--out", required=True, help="output table: .csv, .jsonl or .parquet")
    p.set_defaults(func=cmd_score_logits)

    p = with_server(sub.add_parser("score-images", help="score image files with the model"))
    p.add_argument("images", nargs="+", help="image files (JPEG, PNG, WebP, ...)")
    p.add_argument("--labels", help="comma-separated given labels (class names), one per image")
    p.add_argument("--probabilities", action="store_true", help="also write p_<class> columns")
    p.add_argument("--out", required=True, help="output table: .csv, .jsonl or .parquet")
    p.set_defaults(func=cmd_score_images)

    p = sub.add_parser("top", help="print the k rows with the highest score")
    p.add_argument("table", help="a table written by score-logits or score-images")
    p.add_argument("--by", default="label_issue_score", choices=SCORE_NAMES[1:],
                   help="score to rank by (default: label_issue_score)")
    p.add_argument("-k", type=int, default=20, help="rows to print")
    p.add_argument("--ascending", action="store_true", help="lowest first")
    p.set_defaults(func=cmd_top)

    p = with_server(sub.add_parser("info", help="describe the served model"))
    p.set_defaults(func=cmd_info)

    from hardscore_client.workflow_cli import add_workflow_commands

    add_workflow_commands(sub, add_connection_flags, client_options)

    from hardscore_client.label_studio_cli import add_label_studio_command

    add_label_studio_command(sub, add_connection_flags, client_options)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command ``argv``; returns its exit status (argparse exits 2 on bad usage)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except WorkflowError as exc:  # the library's message, as SystemExit(message) printed it
        print(exc, file=sys.stderr)
        return exc.exit_code
    except grpc.RpcError as exc:  # a status from the server (or the channel): no traceback
        print(rpc_error_line(exc, args), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
