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
import threading
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import grpc
import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from hardscore_client.client import (
    DEFAULT_CONNECT_TIMEOUT,
    TOKEN_ENV,
    TOKEN_HINT,
    ProbabilitiesAsLogitsWarning,
    ScoringClient,
    TLSConfig,
)
from hardscore_client.errors import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERRUPTED,
    EXIT_PARTIAL,
    InputError,
    InputNotFoundError,
    WorkflowError,
)
from hardscore_client.probabilities import (
    ProbabilitiesRenormalisedWarning,
    prepare_probabilities,
)
from hardscore_client.tables import (
    Columns,
    check_writable,
    read_table,
    result_columns,
    write_table,
)
from hardscore_wire.scores import SCORE_NAMES, looks_like_probabilities

DEFAULT_SERVER = "127.0.0.1:8001"
PROGRESS_MIN_ROWS = 100_000
TIMEOUTS = {"score-logits": 600.0, "score-images": 300.0, "info": 30.0}
"""Default per-call deadline of each command, seconds (score-dir: 300 s per batch; label-studio:
--predict-deadline)."""


def _class_names(args: argparse.Namespace, n_classes: int) -> list[str] | None:
    """--class-names or --class-names-file; InputError when not one name per class."""
    if args.class_names_file:
        flag, source = "--class-names-file", args.class_names_file
        names = [line.strip() for line in _read_text(Path(source)).splitlines() if line.strip()]
    elif args.class_names:
        flag, source = "--class-names", args.class_names
        names = [name.strip() for name in args.class_names.split(",")]
    else:
        return None
    if len(names) != n_classes:
        raise InputError(f"{flag} {source}: {len(names)} names for {n_classes} classes "
                         "(one per class, in index order)")
    return names


def _file_error(path: Path, exc: OSError) -> InputError:
    """The one-line error for a file that cannot be read."""
    if isinstance(exc, FileNotFoundError):
        return InputNotFoundError(f"{path}: no such file")
    return InputError(f"{path}: {exc.strerror or exc}")


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise _file_error(path, exc) from None


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _file_error(path, exc) from None


def load_array(path: Path, what: str) -> npt.NDArray[Any]:
    """The .npy array at ``path`` (memory-mapped); InputError naming ``what`` it should hold
    when it is missing or not a .npy of numbers."""
    try:
        values = np.load(path, mmap_mode="r", allow_pickle=False)
    except OSError as exc:
        raise _file_error(path, exc) from None
    except ValueError:  # pickled objects, a text file, a .npz
        raise InputError(f"{path}: not a .npy array of numbers (expected {what}; write it "
                         "with numpy.save)") from None
    if not isinstance(values, np.ndarray) or values.dtype.kind not in "biuf":
        raise InputError(f"{path}: not a .npy array of numbers (expected {what})")
    return values


def _labels(path: Path, n_rows: int) -> npt.NDArray[np.int64]:
    """--labels: N class indices (-1 = none); whole-number floats are taken as indices."""
    labels = np.asarray(load_array(path, f"{n_rows} class indices"))
    if labels.ndim != 1 or len(labels) != n_rows:
        raise InputError(f"--labels {path} has shape {list(labels.shape)}, expected [{n_rows}]: "
                         "one class index per row (-1 = none)")
    whole = labels.dtype.kind != "f" or (np.isfinite(labels) & (labels == np.round(labels))).all()
    if not whole:
        raise InputError(f"--labels {path}: class indices must be whole numbers (-1 = none)")
    return labels.astype(np.int64)


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
    source = Path(args.logits or args.pred_probs)
    out = Path(args.out)
    if args.pred_probs and args.temperature is not None:
        raise InputError("--temperature applies to --logits only: probabilities are scored "
                         "as given")
    check_writable(out)  # before the work, not after it
    values = load_array(source, "an [N, C] array")
    if values.ndim != 2:
        raise InputError(f"{source}: expected a 2-D array [N, C], got shape "
                         f"{list(values.shape)}")
    values = np.asarray(values)
    labels = _labels(Path(args.labels), len(values)) if args.labels else None
    class_names = _class_names(args, values.shape[1])
    if args.pred_probs:
        try:
            values, renormalised = prepare_probabilities(
                values, as_logits="pass the file with --logits instead of --pred-probs")
        except InputError as exc:
            raise InputError(f"{source}: {exc}") from None
        if renormalised is not None:
            print(f"hardscore: warning: {source}: {renormalised.message}", file=sys.stderr)
    elif looks_like_probabilities(values):
        print(f"hardscore: warning: {source} looks like predicted probabilities (every value "
              "in [0, 1], every row summing to 1), not logits: scoring it as logits applies "
              "a softmax on top and the scores are wrong; pass it with --pred-probs instead",
              file=sys.stderr)
    with _client(args) as client, tqdm(
        total=len(values), unit="rows", unit_scale=True, disable=len(values) < PROGRESS_MIN_ROWS,
        desc="scoring",
    ) as bar, warnings.catch_warnings():
        warnings.simplefilter("ignore", ProbabilitiesAsLogitsWarning)  # said above, once
        warnings.simplefilter("ignore", ProbabilitiesRenormalisedWarning)  # likewise
        if args.pred_probs:
            result = client.score_probabilities(
                values, labels, class_names=class_names,
                include_probabilities=args.probabilities, progress=bar.update)
        else:
            result = client.score_logits(
                values, labels, class_names=class_names,
                temperature=args.temperature, include_probabilities=args.probabilities,
                progress=bar.update,
            )
    write_table(out, result_columns(result))
    print(f"wrote {len(result)} rows to {out}", file=sys.stderr)
    return 0


def cmd_score_images(args: argparse.Namespace) -> int:
    """Exit 0 when every image was scored, EXIT_PARTIAL when some were skipped (each listed),
    1 when none was (the table is written in every case, skipped rows with class -1)."""
    paths = [Path(p) for p in args.images]
    out = Path(args.out)
    labels: list[int | str | None] | None = list(args.labels.split(",")) if args.labels else None
    if labels is not None and len(labels) != len(paths):
        raise InputError(f"--labels has {len(labels)} labels for {len(paths)} images: one "
                         "class name per image, in order, separated by commas")
    check_writable(out)
    images: list[bytes | npt.NDArray[np.generic]] = [_read_bytes(p) for p in paths]
    with _client(args) as client:
        result = client.score_images(images, labels, ids=[str(p) for p in paths],
                                     include_probabilities=args.probabilities,
                                     model_name=args.model, model_version=args.model_version)
    for error in result.errors:
        print(f"skipped {paths[error.index]}: {error.reason}: {error.message}", file=sys.stderr)
    write_table(out, result_columns(result))
    skipped = len({error.index for error in result.errors})
    if skipped == len(result):
        print(f"wrote {len(result)} rows to {out}, but no image was scored: every one was "
              "skipped (reasons above)", file=sys.stderr)
        return 1
    print(f"wrote {len(result)} rows to {out}"
          + (f"; {skipped} of {len(result)} images skipped (listed above; class -1, no "
             "scores)" if skipped else ""), file=sys.stderr)
    return EXIT_PARTIAL if skipped else 0


def cmd_top(args: argparse.Namespace) -> int:
    columns = read_table(Path(args.table))
    if args.by not in columns:
        raise SystemExit(f"{args.table} has no column {args.by!r}; it has {', '.join(columns)}")
    values = np.asarray(columns[args.by], dtype=np.float64)
    order = np.argsort(values if args.ascending else -values, kind="stable")
    order = order[~np.isnan(values[order])][: args.k]
    shown = top_columns(columns, args.by)
    print("\t".join(shown))
    for i in order:
        print("\t".join(_show(columns[c][i]) for c in shown))
    return 0


def top_columns(columns: Columns, by: str) -> list[str]:
    """What ``top`` prints of a table: what names the sample (row, id, path), the predicted
    and the given class (by name where the table has names), and the ``by`` score."""
    shown: list[str] = [c for c in ("row", "id", "path") if c in columns]
    for named, index in (("prediction", "predicted_class"), ("label", "given_label")):
        shown += [named] if named in columns else [index] if index in columns else []
    return shown + ([by] if by not in shown else [])


def _show(value: object) -> str:
    return f"{value:.6f}" if isinstance(value, float | np.floating) else str(value)


def cmd_info(args: argparse.Namespace) -> int:
    """The model's description; a server with several model versions (a model repository)
    first lists them (ListModels: name, version, state, why not serving)."""
    with _client(args) as client:
        try:
            models = list(client.list_models().models)
        except grpc.RpcError:  # a server before ListModels, or one serving no model
            models = []
        if len(models) > 1:
            print("model versions (ListModels):")
            for m in models:
                print(f"  {m.name}\t{m.version}\t{m.state}" + (f"\t{m.reason}" if m.reason
                                                               else ""))
            ready = {m.name for m in models if m.state == "READY"}
            if not args.model and len(ready) != 1:
                print("several models are loaded: pass --model NAME (and --model-version V) "
                      "for one's description", file=sys.stderr)
                return 0
            print()
        print(client.get_model_info(args.model, args.model_version))
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with bad usage told in one line (exit 2), pointing at --help for the rest."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from hardscore_client.workflow_cli import add_workflow_commands, count

    parser = _Parser(prog="hardscore", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def with_server(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        return add_connection_flags(p, timeout=TIMEOUTS[p.prog.split()[-1]])

    p = with_server(sub.add_parser("score-logits",
                                   help="score a .npy file of logits (or of probabilities)"))
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--logits", help=".npy of logits, shape [N, C]")
    source.add_argument("--pred-probs", help=".npy of predicted probabilities, shape [N, C]: "
                        "values in [0, 1], rows summing to 1 within 1e-3 (scored as given); "
                        "float16/float32 rows further off by what rounding explains (float16, "
                        "10 classes: 0.0234) are renormalised, with a warning")
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
    p.add_argument("--model", default="", help="model of a server with several (model "
                   "repository); default: the only one loaded")
    p.add_argument("--model-version", default="", help="version of --model; default: its "
                   "highest loaded version")
    p.add_argument("--out", required=True, help="output table: .csv, .jsonl or .parquet")
    p.set_defaults(func=cmd_score_images)

    p = sub.add_parser("top", help="print the k rows with the highest score")
    p.add_argument("table", help="a table written by score-logits, score-images or score-dir")
    p.add_argument("--by", default="label_issue_score", choices=SCORE_NAMES[1:],
                   help="score to rank by (default: label_issue_score)")
    p.add_argument("-k", type=count, default=20, help="rows to print")
    p.add_argument("--ascending", action="store_true", help="lowest first")
    p.set_defaults(func=cmd_top)

    p = with_server(sub.add_parser("info", help="describe the served model (and list the "
                                   "loaded ones when there are several)"))
    p.add_argument("--model", default="", help="model to describe on a server with several")
    p.add_argument("--model-version", default="", help="version of --model; default: its "
                   "highest loaded version")
    p.set_defaults(func=cmd_info)

    add_workflow_commands(sub, add_connection_flags, client_options)

    from hardscore_client.label_studio_cli import add_label_studio_command

    add_label_studio_command(sub, add_connection_flags, client_options)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command ``argv``; returns its exit status (argparse exits 2 on bad usage; the
    table is in docs/api.md). Errors end it with one line on stderr, never a traceback."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except WorkflowError as exc:  # the library's message, as SystemExit(message) printed it
        print(exc, file=sys.stderr)
        return exc.exit_code
    except grpc.RpcError as exc:  # a status from the server (or the channel): no traceback
        print(rpc_error_line(exc, args), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return _interrupted(args.command)
    except RuntimeError as exc:  # Ctrl-C inside a lock's wait can surface as a lock error
        if isinstance(exc.__context__, KeyboardInterrupt):
            return _interrupted(args.command)
        raise
    except BrokenPipeError:  # `hardscore top ... | head`: the reader has all it wanted
        _discard_stdout()
        return EXIT_BROKEN_PIPE
    except OSError as exc:  # a file or folder the command could not read or write
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"hardscore {args.command}: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1


def _interrupted(command: str) -> int:
    """Ctrl-C: one line, EXIT_INTERRUPTED, and gRPC's own threads quiet while the process
    ends (see _quiet_closed_channel_watch)."""
    threading.excepthook = _quiet_closed_channel_watch
    print(f"hardscore {command}: interrupted", file=sys.stderr)
    return EXIT_INTERRUPTED


def _quiet_closed_channel_watch(args: threading.ExceptHookArgs) -> None:
    """Interrupted while the first call waited for a server that never answered: older grpcio
    releases (1.62) let the thread watching the channel's state raise ("Channel closed!", or a
    lock error) once the client closes the channel. Such a traceback from gRPC's own thread
    says nothing to the user; any other goes on to the default hook."""
    frames = traceback.extract_tb(args.exc_traceback)
    if any("grpc" in frame.filename for frame in frames):
        return
    threading.__excepthook__(args)


def _discard_stdout() -> None:
    """Points stdout at /dev/null, so the flush at exit does not fail on the closed pipe again
    (nothing to do where stdout is not a file descriptor, e.g. captured by a test)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
