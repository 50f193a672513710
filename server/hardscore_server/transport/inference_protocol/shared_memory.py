"""System shared memory (Triton's ``system_shared_memory`` extension), transport-neutral.

A client on the same host creates a POSIX shared memory object (``/dev/shm/<key>``), registers a
region of it (offset and size, bytes) under a name, and then names that region instead of
sending tensor data: inputs are read from it, outputs written to it. Only objects directly in
/dev/shm can be registered (a key is one name, no ``/`` inside, no ``..``; opened relative to
/dev/shm without following links), only regular files, and every access is checked against the
region's bounds. At most ``MAX_REGIONS`` regions are registered at once.

No client action on its own object can crash the server: the object is read and written with
``pread``/``pwrite`` on a descriptor held open, never through a mapping (a mapping read past
an object the client has since truncated kills the process with SIGBUS). A read of an object
truncated below the region is refused (INVALID_ARGUMENT), and so is a write to it (its current
size is checked first; a truncation in the instant between grows the object, never faults). A
region unregistered while a request uses it is closed once that request is done with it.
"""

from __future__ import annotations

import os
import re
import stat
import threading
from dataclasses import dataclass
from typing import Any

from hardscore_server.pipeline.errors import InvalidRequest, NotFound

SHM_DIR = "/dev/shm"
MAX_REGIONS = 256
"""Most regions registered at once (each holds one open file descriptor)."""
MAX_NAME_CHARS = 256
_KEY = re.compile(r"^/?([A-Za-z0-9_.\-]{1,255})$")


@dataclass
class Region:
    """A registered region: ``byte_size`` bytes from ``offset`` of the object ``key``."""

    name: str
    key: str
    offset: int
    byte_size: int
    fd: int
    """The object's descriptor, open read-write until the region is unregistered and unused."""
    users: int = 0
    """Requests reading or writing the region now (under the registry's lock)."""
    unregistered: bool = False

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "offset": self.offset,
                "byte_size": self.byte_size}


def _size(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidRequest(f"{what} must be an integer >= 0, got {value!r}")
    return value


class SharedMemoryRegistry:
    """The registered system shared memory regions of one server."""

    def __init__(self, directory: str = SHM_DIR, max_regions: int = MAX_REGIONS) -> None:
        self._dir = directory
        self._max = max_regions
        self._regions: dict[str, Region] = {}
        self._lock = threading.Lock()

    def register(self, name: str, key: str, offset: Any, byte_size: Any) -> None:
        """Maps ``byte_size`` bytes from ``offset`` of /dev/shm/<key> as region ``name``."""
        offset = _size(offset, "offset")
        byte_size = _size(byte_size, "byte_size")
        if not name or len(name) > MAX_NAME_CHARS:
            raise InvalidRequest(
                f"a shared memory region needs a name of 1..{MAX_NAME_CHARS} characters")
        match = _KEY.fullmatch(key)
        if match is None or match[1] in (".", ".."):
            raise InvalidRequest(
                f"shared memory key '{key[:300]}' is not a POSIX shared memory name: give "
                "'/name' (letters, digits, '.', '_', '-'), an object directly in /dev/shm")
        if byte_size == 0:
            raise InvalidRequest(f"shared memory region '{name}' must have byte_size > 0")
        with self._lock:
            if name in self._regions:
                raise InvalidRequest(
                    f"shared memory region '{name}' is already registered; unregister it first")
            if len(self._regions) >= self._max:
                raise InvalidRequest(
                    f"{self._max} shared memory regions are registered, the most this server "
                    "holds; unregister some first")
            fd = self._open(match[1], key, offset, byte_size)
            self._regions[name] = Region(name, key, offset, byte_size, fd)

    def _open(self, filename: str, key: str, offset: int, byte_size: int) -> int:
        """A read-write descriptor of /dev/shm/<filename>, checked to hold the region."""
        try:
            dir_fd = os.open(self._dir, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise InvalidRequest(f"cannot open {self._dir}: {exc.strerror}") from None
        try:
            fd = os.open(filename, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError as exc:
            raise InvalidRequest(
                f"unable to open shared memory key '{key}': {exc.strerror}") from None
        finally:
            os.close(dir_fd)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise InvalidRequest(f"shared memory key '{key}' is not a shared memory object")
            if offset + byte_size > info.st_size:
                raise InvalidRequest(
                    f"shared memory key '{key}' holds {info.st_size} bytes: too small for "
                    f"{byte_size} bytes at offset {offset}")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def unregister(self, name: str = "") -> None:
        """Unregisters region ``name`` ("" = every region); an unknown name is no error."""
        with self._lock:
            names = list(self._regions) if not name else [name]
            regions = [self._regions.pop(n) for n in names if n in self._regions]
            for region in regions:
                region.unregistered = True
            idle = [region for region in regions if region.users == 0]
        for region in idle:  # in use: the last request using it closes it (_done)
            os.close(region.fd)

    def close(self) -> None:
        self.unregister()

    def status(self, name: str = "") -> list[dict[str, Any]]:
        """Every region's status, or region ``name``'s (NotFound if not registered)."""
        with self._lock:
            if not name:
                return [r.status() for r in self._regions.values()]
            region = self._regions.get(name)
        if region is None:
            raise NotFound(f"Unable to find system shared memory region: '{name}'")
        return [region.status()]

    def _use(self, name: Any, offset: int, byte_size: int, what: str) -> Region:
        """Region ``name``, checked to hold ``byte_size`` bytes at ``offset``, counted as in
        use until ``_done``."""
        if not isinstance(name, str):
            raise InvalidRequest(f"shared_memory_region of {what} must be a region's name")
        with self._lock:
            region = self._regions.get(name)
            if region is None:
                raise InvalidRequest(
                    f"{what} names shared memory region '{name}', which is not registered")
            if offset + byte_size > region.byte_size:
                raise InvalidRequest(
                    f"{what} needs {byte_size} bytes at offset {offset} of shared memory region "
                    f"'{name}', which holds {region.byte_size} bytes")
            region.users += 1
        return region

    def _done(self, region: Region) -> None:
        with self._lock:
            region.users -= 1
            close = region.unregistered and region.users == 0
        if close:
            os.close(region.fd)

    def read(self, name: str, offset: Any, byte_size: Any, what: str) -> bytes:
        """A copy of ``byte_size`` bytes at ``offset`` of region ``name``."""
        offset = _size(offset, f"shared_memory_offset of {what}")
        byte_size = _size(byte_size, f"shared_memory_byte_size of {what}")
        region = self._use(name, offset, byte_size, what)
        try:
            start = region.offset + offset
            parts = []
            got = 0
            while got < byte_size:  # a regular file reads short only at its end
                part = os.pread(region.fd, byte_size - got, start + got)
                if not part:
                    raise InvalidRequest(_truncated(region, what, start + byte_size))
                parts.append(part)
                got += len(part)
            return parts[0] if len(parts) == 1 else b"".join(parts)
        finally:
            self._done(region)

    def write(self, name: str, offset: Any, byte_size: Any, data: bytes, what: str) -> None:
        """Writes ``data`` at ``offset`` of region ``name``, which the request says holds
        ``byte_size`` bytes for it."""
        offset = _size(offset, f"shared_memory_offset of {what}")
        byte_size = _size(byte_size, f"shared_memory_byte_size of {what}")
        if len(data) > byte_size:
            raise InvalidRequest(
                f"{what} is {len(data)} bytes, more than its shared_memory_byte_size "
                f"{byte_size}")
        region = self._use(name, offset, byte_size, what)
        try:
            start = region.offset + offset
            if os.fstat(region.fd).st_size < start + len(data):
                raise InvalidRequest(_truncated(region, what, start + len(data)))
            view = memoryview(data)
            while view:
                view = view[os.pwrite(region.fd, view, start + len(data) - len(view)):]
        finally:
            self._done(region)


def _truncated(region: Region, what: str, needed: int) -> str:
    return (f"{what}: shared memory key '{region.key}' of region '{region.name}' no longer "
            f"holds the {needed} bytes the region needs (the object was truncated); register "
            "the region again once the object is large enough")
