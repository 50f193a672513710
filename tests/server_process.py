"""The tests start servers with hardscore_server.tools.local_server (re-exported here)."""

from hardscore_server.tools.local_server import SERVING, ServerProcess, start_server

__all__ = ["SERVING", "ServerProcess", "start_server"]
