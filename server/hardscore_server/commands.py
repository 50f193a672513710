"""``hardscore-server``'s entry point: it checks that the server extra is installed before it
imports the server, so that a client-only install (``pip install hardscore``) answers with one
line that says what to install, not a traceback. (``hardscore-export`` checks its own extra.)"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence

SERVER_MODULES = ("onnxruntime", "PIL", "prometheus_client", "grpc_health", "grpc_reflection")
"""Modules of the ``server`` (or ``gpu``) extra, by their import names."""


def missing_server_modules() -> list[str]:
    """The modules of the server extra that cannot be imported here."""
    return [m for m in SERVER_MODULES if importlib.util.find_spec(m) is None]


def server(argv: Sequence[str] | None = None) -> int:
    """``hardscore-server``: exits 2 with one line when the server extra is missing."""
    absent = missing_server_modules()
    if absent:
        print("hardscore-server needs the server extra: pip install 'hardscore[server]' "
              f"(or 'hardscore[gpu]'); missing: {', '.join(absent)}", file=sys.stderr)
        return 2
    from hardscore_server.main import main

    return main(argv)


if __name__ == "__main__":
    sys.exit(server())
