"""``hardscore label-studio``: the command line of the Label Studio ML backend (the server
module, which needs the ``label-studio`` extra, is imported only when the command runs)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

from hardscore_client.label_studio import SCORE_CHOICES


def add_label_studio_command(
    sub: Any, with_server: Callable[..., argparse.ArgumentParser],
    client_options: Callable[[argparse.Namespace], dict[str, Any]],
) -> None:
    """Adds ``hardscore label-studio`` to the CLI (the server module is imported on use);
    ``with_server`` adds the connection flags (cli.add_connection_flags), ``client_options``
    reads them (cli.client_options)."""
    p = with_server(sub.add_parser(
        "label-studio", help="run a Label Studio ML backend that scores through the server"),
        timeout=None, timeout_default="--predict-deadline")
    p.add_argument("action", nargs="?", choices=("serve", "rescore", "qa-tasks"),
                   default="serve",
                   help="serve (default): run the backend; rescore: score every annotated "
                        "task of --project again, replace its label-QA prediction and exit "
                        "(for annotations saved while the webhook could not reach the backend; "
                        "needs --label-studio-url and LABEL_STUDIO_API_KEY); qa-tasks TABLE: "
                        "write the duplicates and outliers of a verdicts table as Label Studio "
                        "tasks (--out PREFIX: PREFIX.json) with their label config "
                        "(PREFIX.xml); no server needed")
    p.add_argument("table", nargs="?", default=None,
                   help="qa-tasks: a table with collection verdicts (hardscore verdicts)")
    p.add_argument("--out", default="qa", help="qa-tasks: writes OUT.json and OUT.xml")
    p.add_argument("--image-root", default=None, metavar="DIR",
                   help="qa-tasks: image paths under DIR become --image-url + their relative "
                        "path (others stay file:// URIs)")
    p.add_argument("--image-url", default=None, metavar="PREFIX",
                   help="qa-tasks: URL prefix for --image-root, e.g. /data/local-files/?d= "
                        "(Label Studio's local files, DIR its LOCAL_FILES_DOCUMENT_ROOT)")
    p.add_argument("--kinds", default="duplicates,outliers",
                   help="qa-tasks: duplicates, outliers or both (comma-separated; default both)")
    p.add_argument("--limit", type=int, default=None, help="qa-tasks: at most this many tasks")
    p.add_argument("--project", type=int, default=None,
                   help="rescore: the Label Studio project id (in its URL: /projects/ID)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: "
                   "127.0.0.1; 0.0.0.0 to be reached from other machines or containers)")
    p.add_argument("--port", type=int, default=9090, help="HTTP port (default: 9090)")
    p.add_argument("--label-studio-url", default=None,
                   help="Label Studio's base URL for images and the API (default: environment "
                        "LABEL_STUDIO_URL, else the hostname Label Studio sends in /setup)")
    p.add_argument("--score", choices=list(SCORE_CHOICES), default="hardness",
                   help="score each prediction carries: hardness (default; sort descending "
                        "for hardest first), hardness_normalized, margin or confidence "
                        "(ascending for hardest first)")
    p.add_argument("--model", default="", help="model of a server with several (model "
                   "repository); default: the only one loaded")
    p.add_argument("--model-version", default="", help="version of --model, named in every "
                   "call; default: the highest loaded, followed through swaps (each "
                   "prediction's model version names the version that computed it)")
    p.add_argument("--no-qa", action="store_true",
                   help="no label-QA prediction (model version <version>-label-qa) on "
                        "annotated tasks")
    p.add_argument("--batch-size", type=int, default=64,
                   help="tasks fetched and scored per call to the server (default: 64)")
    p.add_argument("--fetch-concurrency", type=int, default=8,
                   help="images fetched at once (default: 8)")
    p.add_argument("--max-image-mb", type=float, default=8.0,
                   help="largest image fetched, MiB (default: 8)")
    p.add_argument("--fetch-timeout", type=float, default=20.0,
                   help="seconds per image fetch (default: 20)")
    p.add_argument("--basic-auth-user", default=None,
                   help="ask Label Studio for HTTP basic auth with this user (connect the "
                        "backend with 'Basic auth'); the password comes from the environment "
                        "variable HARDSCORE_LABEL_STUDIO_PASSWORD, never the command line")
    p.add_argument("--predict-deadline", type=float, default=90.0,
                   help="seconds a /predict call may take; keep it under Label Studio's "
                        "ML_TIMEOUT_PREDICT (100 s by default) (default: 90)")

    def run(args: argparse.Namespace) -> int:
        if args.action == "qa-tasks":
            return qa_tasks(args)
        try:
            from hardscore_client import label_studio_server as server
        except ImportError as exc:
            raise SystemExit("hardscore label-studio needs the label-studio extra: pip install "
                             f"'hardscore[label-studio]' ({exc})") from None
        options = client_options(args)
        if options.get("timeout") is None:
            options["timeout"] = args.predict_deadline
        try:
            settings = server.BackendSettings(
                score=args.score, qa=not args.no_qa,
                label_studio_url=args.label_studio_url or os.environ.get(server.URL_ENV),
                api_key=os.environ.get(server.API_KEY_ENV) or None,
                batch_size=args.batch_size, fetch_concurrency=args.fetch_concurrency,
                max_image_bytes=int(args.max_image_mb * 1024 * 1024),
                fetch_timeout=args.fetch_timeout, predict_deadline=args.predict_deadline,
                basic_auth_user=args.basic_auth_user,
                basic_auth_password=os.environ.get(server.BASIC_AUTH_PASSWORD_ENV) or None,
                model_name=args.model, model_version=args.model_version,
            )
        except ValueError as exc:
            raise SystemExit(f"hardscore label-studio: {exc}") from None
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        if args.action == "rescore":
            return rescore(args, settings, options)
        server.serve(settings, args.host, args.port, args.server, **options)
        return 0

    def rescore(args: argparse.Namespace, settings: Any, options: dict[str, Any]) -> int:
        from hardscore_client import label_studio_server as server

        if args.project is None or args.project < 1:
            raise SystemExit("hardscore label-studio rescore: --project ID is required (the "
                             "number in the project's URL, /projects/ID)")
        if not settings.label_studio_url:
            raise SystemExit("hardscore label-studio rescore: pass --label-studio-url (or set "
                             f"{server.URL_ENV}) and {server.API_KEY_ENV}")
        try:
            counts = asyncio.run(server.rescore_project(settings, args.project, args.server,
                                                        **options))
        except (server.FetchError, server.LabelConfigError, ValueError) as exc:
            raise SystemExit(f"hardscore label-studio rescore: {exc}") from None
        except aiohttp_errors() as exc:
            raise SystemExit(f"hardscore label-studio rescore: Label Studio refused a "
                             f"prediction: {exc}") from None
        print(f"project {counts['project']}: {counts['annotated']} annotated tasks, "
              f"{counts['rescored']} label-QA predictions replaced, {counts['not_scored']} not "
              "scored" + (" (the log above says why)" if counts["not_scored"] else ""))
        return 4 if counts["not_scored"] else 0

    p.set_defaults(func=run)


def qa_tasks(args: argparse.Namespace) -> int:
    """``hardscore label-studio qa-tasks TABLE --out PREFIX``: PREFIX.json and PREFIX.xml."""
    import json
    from pathlib import Path

    from hardscore_client.analysis import ScoreTable, analyse
    from hardscore_client.label_studio_qa import QA_LABEL_CONFIG, image_url_for
    from hardscore_client.label_studio_qa import qa_tasks as make_tasks
    from hardscore_client.report_verdicts import has_verdicts

    if not args.table:
        raise SystemExit("hardscore label-studio qa-tasks: name the verdicts table "
                         "(hardscore label-studio qa-tasks TABLE --out PREFIX)")
    if (args.image_root is None) != (args.image_url is None):
        raise SystemExit("hardscore label-studio qa-tasks: --image-root and --image-url go "
                         "together")
    analysis = analyse(ScoreTable.load(Path(args.table)))
    if not has_verdicts(analysis):
        raise SystemExit(f"{args.table}: no collection-verdict columns (run `hardscore "
                         "verdicts` on the score table first)")
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    url = image_url_for(Path(args.image_root) if args.image_root else None, args.image_url)
    try:
        tasks = make_tasks(analysis, url, kinds, args.limit)
    except ValueError as exc:
        raise SystemExit(f"hardscore label-studio qa-tasks: {exc}") from None
    out = Path(args.out)
    if out.suffix.lower() in (".json", ".xml"):
        out = out.with_suffix("")
    out.parent.mkdir(parents=True, exist_ok=True)
    tasks_path, config_path = out.with_name(out.name + ".json"), out.with_name(out.name + ".xml")
    tasks_path.write_text(json.dumps(tasks, allow_nan=False, indent=1) + "\n")
    config_path.write_text(QA_LABEL_CONFIG)
    kinds_seen: dict[str, int] = {}
    for task in tasks:
        kinds_seen[task["data"]["kind"]] = kinds_seen.get(task["data"]["kind"], 0) + 1
    spread = ", ".join(f"{k}: {n}" for k, n in kinds_seen.items()) or "none"
    leaks = sum(1 for task in tasks if task["data"]["leak"])
    print(f"{len(tasks)} QA tasks ({spread}; {leaks} leaks): {tasks_path}, label config "
          f"{config_path}")
    return 0


def aiohttp_errors() -> tuple[type[Exception], ...]:
    """aiohttp's response error (imported with the extra, on use)."""
    import aiohttp

    return (aiohttp.ClientResponseError,)
