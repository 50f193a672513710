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

With ``workers`` > 1 every worker sees the same regions: the registry is kept in a shared store,
a private directory of the supervisor's run directory (``HARDSCORE_SHM_REGISTRY_DIR`` in each
worker's environment), one small JSON file per region name, written atomically (a temporary
file renamed over it) under an exclusive lock (``flock``) for register and unregister, so the
name's uniqueness and ``MAX_REGIONS`` hold across workers. Each worker opens a region's object
itself when a request first names it (the same key and size checks as at registration) and
keeps the descriptor while the region stays registered: a request reads the region's record
first, so a region unregistered (or registered again under the same name) by any worker is
closed or reopened by every worker at its next request. One worker's shutdown closes its own
descriptors only.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from hardscore_server.pipeline.errors import InvalidRequest, NotFound

SHM_DIR = "/dev/shm"
MAX_REGIONS = 256
"""Most regions registered at once (each holds one open file descriptor)."""
MAX_NAME_CHARS = 256
SHARED_STORE_ENV = "HARDSCORE_SHM_REGISTRY_DIR"
"""Set by the supervisor in each worker's environment: the directory of the shared registry."""
_KEY = re.compile(r"^/?([A-Za-z0-9_.\-]{1,255})$")


@dataclass(frozen=True)
class _Record:
    """A registration as the store keeps it; ``token`` tells registrations of a name apart."""

    name: str
    key: str
    offset: int
    byte_size: int
    token: str

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "offset": self.offset,
                "byte_size": self.byte_size}


@dataclass
class Region:
    """A region opened by this process: ``byte_size`` bytes from ``offset`` of the object
    ``key``."""

    name: str
    key: str
    offset: int
    byte_size: int
    fd: int
    """The object's descriptor, open read-write until the region is unregistered and unused."""
    token: str = ""
    """The registration it was opened for."""
    users: int = 0
    """Requests reading or writing the region now (under the registry's lock)."""
    unregistered: bool = False

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "offset": self.offset,
                "byte_size": self.byte_size}


class _MemoryStore:
    """The registrations of a single server process."""

    def __init__(self) -> None:
        self._records: dict[str, _Record] = {}

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        yield  # the registry's own lock is enough within one process

    def get(self, name: str) -> _Record | None:
        return self._records.get(name)

    def all(self) -> list[_Record]:
        return list(self._records.values())

    def put(self, record: _Record) -> None:
        self._records[record.name] = record

    def remove(self, name: str) -> None:
        self._records.pop(name, None)


class _DirectoryStore:
    """The registrations every worker shares: one JSON file per region name in ``path``."""

    def __init__(self, path: str) -> None:
        os.makedirs(path, mode=0o700, exist_ok=True)
        self._path = path

    def _file(self, name: str) -> str:
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()
        return os.path.join(self._path, f"{digest}.json")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Held by register and unregister: one worker at a time changes the store."""
        fd = os.open(os.path.join(self._path, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                     0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    @staticmethod
    def _read(path: str) -> _Record | None:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            return _Record(str(data["name"]), str(data["key"]), int(data["offset"]),
                           int(data["byte_size"]), str(data["token"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None  # gone (unregistered meanwhile): not registered

    def get(self, name: str) -> _Record | None:
        record = self._read(self._file(name))
        return record if record is not None and record.name == name else None

    def all(self) -> list[_Record]:
        with os.scandir(self._path) as entries:
            paths = [e.path for e in entries if e.name.endswith(".json")]
        records = [r for r in map(self._read, paths) if r is not None]
        return sorted(records, key=lambda r: r.name)

    def put(self, record: _Record) -> None:
        path = self._file(record.name)
        temporary = f"{path}.{os.getpid()}.tmp"
        with open(temporary, "w", encoding="utf-8") as f:
            json.dump({"name": record.name, "key": record.key, "offset": record.offset,
                       "byte_size": record.byte_size, "token": record.token}, f)
        os.replace(temporary, path)  # atomic: a reader sees the whole record or none

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._file(name))


def _size(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidRequest(f"{what} must be an integer >= 0, got {value!r}")
    return value


class SharedMemoryRegistry:
    """The registered system shared memory regions of one server (of every worker, with
    ``shared_store``: by default the directory named by ``HARDSCORE_SHM_REGISTRY_DIR``)."""

    def __init__(self, directory: str = SHM_DIR, max_regions: int = MAX_REGIONS,
                 shared_store: str | None = None) -> None:
        self._dir = directory
        self._max = max_regions
        store = shared_store if shared_store is not None else os.environ.get(SHARED_STORE_ENV)
        self._shared = bool(store)
        self._store: _MemoryStore | _DirectoryStore = (
            _DirectoryStore(store) if store else _MemoryStore())
        self._regions: dict[str, Region] = {}
        """The regions this process has open, by name."""
        self._lock = threading.Lock()

    def register(self, name: str, key: str, offset: Any, byte_size: Any) -> None:
        """Registers ``byte_size`` bytes from ``offset`` of /dev/shm/<key> as region ``name``."""
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
        with self._lock, self._store.locked():
            if self._store.get(name) is not None:
                raise InvalidRequest(
                    f"shared memory region '{name}' is already registered; unregister it first")
            if len(self._store.all()) >= self._max:
                raise InvalidRequest(
                    f"{self._max} shared memory regions are registered, the most this server "
                    "holds; unregister some first")
            fd = self._open(match[1], key, offset, byte_size)
            record = _Record(name, key, offset, byte_size, secrets.token_hex(8))
            try:
                self._store.put(record)
            except BaseException:
                os.close(fd)
                raise
            self._retire(name)  # a stale region of an earlier registration of the name
            self._regions[name] = Region(name, key, offset, byte_size, fd, record.token)

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

    def _retire(self, name: str) -> None:
        """Forgets this process's region ``name``, if open: closed now, or by the last request
        using it (``_done``). Call with the lock held."""
        region = self._regions.pop(name, None)
        if region is not None:
            region.unregistered = True
            if region.users == 0:
                os.close(region.fd)

    def unregister(self, name: str = "") -> None:
        """Unregisters region ``name`` ("" = every region), for every worker; an unknown name is
        no error."""
        with self._lock, self._store.locked():
            names = [r.name for r in self._store.all()] if not name else [name]
            for each in names:
                self._store.remove(each)
            for each in list(self._regions) if not name else [name]:
                self._retire(each)

    def close(self) -> None:
        """This server's shutdown: closes its regions; with a shared store the registrations
        stay for the other workers."""
        if not self._shared:
            self.unregister()
            return
        with self._lock:
            for name in list(self._regions):
                self._retire(name)

    def status(self, name: str = "") -> list[dict[str, Any]]:
        """Every region's status, or region ``name``'s (NotFound if not registered)."""
        if not name:
            with self._lock:
                return [r.status() for r in sorted(self._store.all(), key=lambda r: r.name)]
        with self._lock:
            record = self._store.get(name)
        if record is None:
            raise NotFound(f"Unable to find system shared memory region: '{name}'")
        return [record.status()]

    def _use(self, name: Any, offset: int, byte_size: int, what: str) -> Region:
        """Region ``name``, checked to hold ``byte_size`` bytes at ``offset``, counted as in
        use until ``_done`` (opened by this process first if another one registered it)."""
        if not isinstance(name, str):
            raise InvalidRequest(f"shared_memory_region of {what} must be a region's name")
        with self._lock:
            record = self._store.get(name)
            region = self._regions.get(name)
            if region is not None and (record is None or record.token != region.token):
                self._retire(name)  # unregistered, or registered again, by another worker
                region = None
            match = None if record is None else _KEY.fullmatch(record.key)
            if record is None or match is None:
                raise InvalidRequest(
                    f"{what} names shared memory region '{name}', which is not registered")
            if offset + byte_size > record.byte_size:
                raise InvalidRequest(
                    f"{what} needs {byte_size} bytes at offset {offset} of shared memory region "
                    f"'{name}', which holds {record.byte_size} bytes")
            if region is None:
                fd = self._open(match[1], record.key, record.offset, record.byte_size)
                region = Region(name, record.key, record.offset, record.byte_size, fd,
                                record.token)
                self._regions[name] = region
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
