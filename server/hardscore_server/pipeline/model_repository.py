"""The loaded models: a model repository's versions loaded, routed to, swapped and unloaded.

Each loaded version is its own ``ImagePipeline`` (its own ONNX Runtime sessions and dynamic
batcher); every one shares the server's decode pool and decode budget (``DecodeShare``) and,
through the call gate, its request budget. The layout on disk and the version policy are
``model.repository_layout``'s.

Guarantees (tests/unit/test_model_repository.py, tests/e2e/test_model_repository.py):

- **Routing.** ``use(name, version)`` hands a call the pipeline of a READY version: the one
  named, or with version "" the highest READY version (MLServer's rule); with name "" the only
  model loaded. The call holds that version until it ends (a lease), so a call admitted by a
  version finishes on it, whatever is loaded or unloaded meanwhile.
- **Swaps.** A version is loaded and warmed up (in a worker thread; serving goes on) before it
  takes traffic: it enters the routing table in one step, and the versions it replaces leave it
  in the same step, then drain: their leases end, their batchers finish what they hold, and only
  then are they closed. A version that fails to load or warm up never enters the table; the
  versions serving before it serve on, and its reason is in ``index()`` and the log.
- **Limits.** A load that would leave more than ``max_loaded_models`` versions serving, or whose
  estimated memory with every version held now (those draining included: a swap holds both)
  would exceed ``model_memory_limit_bytes``, is refused before anything is read, with the reason.
  The estimate is ``instances`` x (MEMORY_FACTOR x the size of model.onnx + SESSION_BYTES); the
  resident memory each load actually added is measured and logged.

Event loop only, except the loads' worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hardscore_server.config import ServerConfig
from hardscore_server.metrics import ServerMetrics
from hardscore_server.model.model_dir import ModelManifest
from hardscore_server.model.repository_layout import (
    RepositoryLayout,
    VersionPolicy,
    VersionSource,
    version_key,
)
from hardscore_server.pipeline.decode_scheduler import DecodeShare
from hardscore_server.pipeline.errors import ModelLoadFailed, UnknownModel
from hardscore_server.pipeline.image_pipeline import ImagePipeline, ServedModel

log = logging.getLogger(__name__)

READY, LOADING, UNLOADING, UNAVAILABLE = "READY", "LOADING", "UNLOADING", "UNAVAILABLE"
"""A version's states, as the repository index names them (Triton's, MLServer's)."""

MEMORY_FACTOR = 2
"""Estimated memory of a session per byte of model.onnx: its weights, and the optimised graph's
copy of them ONNX Runtime holds while it builds the session."""
SESSION_BYTES = 16 * 1024 * 1024
"""Estimated memory of a session beyond its weights (arena, graph, threads)."""
LOAD_THREADS = 2
"""Most versions loaded at once (each in a worker thread)."""

LoadRunner = Callable[[Path], ServedModel]
"""Builds and warms up the model of a version's directory (blocking; a worker thread); raises
ModelDirError or ModelLoadError (or anything else) with the reason it cannot serve."""


def resident_bytes() -> int:
    """This process's resident memory (bytes; 0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class _Renamed:
    """A model served under its repository name and version (the folders'), whatever its
    manifest says; everything else is the model's own."""

    def __init__(self, model: ServedModel, manifest: ModelManifest) -> None:
        self._model = model
        self.manifest = manifest

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


@dataclass(eq=False)
class LoadedVersion:
    """One version in memory: its pipeline, its state and its leases (calls using it)."""

    name: str
    version: str
    source: VersionSource
    pipeline: ImagePipeline
    estimate_bytes: int
    state: str = READY
    in_flight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    loaded_s: float = 0.0


@dataclass
class VersionStatus:
    """What the index says of a version that is not serving (or of a failed reload)."""

    state: str
    reason: str


class ModelRepository:
    """The server's models: what is loaded, routing, loads, unloads and the index.

    ``layout`` says where the models are; ``load_runner`` builds one (see LoadRunner);
    ``close()`` it at the end.
    """

    def __init__(self, config: ServerConfig, metrics: ServerMetrics, layout: RepositoryLayout,
                 load_runner: LoadRunner, policy: VersionPolicy | None = None) -> None:
        self._config = config
        self._metrics = metrics
        self.layout = layout
        self.policy = policy or VersionPolicy.parse(config.version_policy)
        self._load_runner = load_runner
        self.decode_share = DecodeShare(config, metrics)
        self._serving: dict[tuple[str, str], LoadedVersion] = {}
        self._status: dict[tuple[str, str], VersionStatus] = {}
        self._retiring: set[LoadedVersion] = set()
        self._retirements: set[asyncio.Task[None]] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        self._load_slots = asyncio.Semaphore(LOAD_THREADS)
        self._known: dict[str, dict[str, VersionSource]] = {}
        self._poller: asyncio.Task[None] | None = None
        self._failed_polls: dict[str, tuple[tuple[str, tuple[int, ...]], ...]] = {}
        self._closed = False

    # -- routing ----------------------------------------------------------------------------

    def resolve(self, name: str, version: str = "") -> LoadedVersion:
        """The READY version a call for ``name`` at ``version`` goes to; UnknownModel why not."""
        if not name:
            names = self.model_names()
            if len(names) != 1:
                raise UnknownModel(
                    "name a model: this server serves " + (", ".join(repr(n) for n in names)
                                                           if names else "no model now"))
            name = names[0]
        if version:
            entry = self._serving.get((name, version))
            if entry is not None:
                return entry
            status = self._status.get((name, version))
            loaded = self.versions(name)
            raise UnknownModel(
                f"model '{name}' version {version} is not ready"
                + (f" ({status.state}: {status.reason})" if status else "")
                + (f"; loaded versions: {', '.join(loaded)}" if loaded else
                   f"; no version of '{name}' is loaded" if self._known_name(name) else
                   f"; this server serves {self._served_names()}"))
        versions = self.versions(name)
        if not versions:
            if self._known_name(name):
                raise UnknownModel(f"model '{name}' is not loaded (no version is READY); "
                                   f"this server serves {self._served_names()}")
            raise UnknownModel(f"model '{name}' is not served here; this server serves "
                               f"{self._served_names()}")
        return self._serving[(name, versions[-1])]

    @contextlib.contextmanager
    def use(self, name: str, version: str = "") -> Iterator[ImagePipeline]:
        """The pipeline of the version ``resolve`` picks, held (a lease) until the block ends:
        an unload or swap waits for it."""
        entry = self.resolve(name, version)
        entry.in_flight += 1
        entry.idle.clear()
        try:
            yield entry.pipeline
        finally:
            entry.in_flight -= 1
            if entry.in_flight == 0:
                entry.idle.set()

    def model_names(self) -> list[str]:
        """Names with a READY version, sorted."""
        return sorted({name for name, _ in self._serving})

    def versions(self, name: str) -> list[str]:
        """READY versions of ``name``, lowest first."""
        return sorted((v for n, v in self._serving if n == name), key=version_key)

    def ready(self, name: str, version: str = "") -> bool:
        try:
            self.resolve(name, version)
        except UnknownModel:
            return False
        return True

    def loaded(self) -> list[LoadedVersion]:
        """Every READY version, by name then version."""
        return sorted(self._serving.values(), key=lambda e: (e.name, version_key(e.version)))

    def known(self, name: str) -> bool:
        """Whether ``name`` is loaded, or was found in the repository."""
        return self._known_name(name)

    def _known_name(self, name: str) -> bool:
        return name in self._known or any(n == name for n, _ in self._serving)

    def _served_names(self) -> str:
        names = self.model_names()
        return ", ".join(f"'{n}'" for n in names) if names else "no model now"

    # -- the index --------------------------------------------------------------------------

    async def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Every version known (on disk, loaded, failed), by name then version: name, version,
        state and, when not READY, the reason. A failed reload of a version still serving shows
        READY with the failure as its reason."""
        with contextlib.suppress(Exception):  # the repository may be unreadable now
            self._known = await asyncio.to_thread(self.layout.scan)
        keys = set(self._serving) | set(self._status) | {
            (n, v) for n, versions in self._known.items() for v in versions}
        keys |= {(e.name, e.version) for e in self._retiring}
        rows = []
        for name, version in sorted(keys, key=lambda k: (k[0], version_key(k[1]))):
            row = {"name": name, "version": version}
            status = self._status.get((name, version))
            if (name, version) in self._serving:
                row["state"] = READY
                if status is not None and status.reason:
                    row["reason"] = status.reason
            elif any(e.name == name and e.version == version for e in self._retiring):
                row["state"], row["reason"] = UNLOADING, "in-flight calls finishing"
            elif status is not None:
                row["state"], row["reason"] = status.state, status.reason
            else:
                selected = self.policy.select(list(self._known.get(name, {})))
                row["state"] = UNAVAILABLE
                row["reason"] = ("not loaded" if version in selected else
                                 f"not selected by the version policy ({self.policy})")
            if ready_only and row["state"] != READY:
                continue
            rows.append(row)
        return rows

    # -- loading ----------------------------------------------------------------------------

    async def load_all(self) -> list[ModelLoadFailed]:
        """Loads every model of the repository (control modes none and poll, at start);
        returns the failures."""
        self._known = await asyncio.to_thread(self.layout.scan)
        return await self._load_names(list(self._known))

    async def load_names(self, names: Sequence[str]) -> list[ModelLoadFailed]:
        """Loads the models named (``*`` = every one); returns the failures."""
        self._known = await asyncio.to_thread(self.layout.scan)
        return await self._load_names(list(self._known) if "*" in names else list(names))

    async def _load_names(self, names: list[str]) -> list[ModelLoadFailed]:
        failures = []
        for name in names:
            try:
                await self.load(name)
            except ModelLoadFailed as exc:
                failures.append(exc)
        return failures

    async def load(self, name: str) -> None:
        """Loads (or reloads) model ``name``: every version its policy selects that is not
        serving already with the same files is loaded and warmed up, then takes traffic; the
        versions it replaces (no longer selected) drain and are closed. Returns once the new
        versions serve. ModelLoadFailed (reason in the index too) when a version cannot load;
        the versions serving before it serve on."""
        if self._closed:
            raise ModelLoadFailed("the server is shutting down")
        async with self._lock(name):
            try:
                self._known = await asyncio.to_thread(self.layout.scan)
            except Exception as exc:
                raise ModelLoadFailed(f"cannot read the model repository: {exc}") from None
            on_disk = self._known.get(name)
            if not on_disk:
                raise ModelLoadFailed(
                    f"failed to load '{name}': no model '{name}' with a version folder in the "
                    f"{self.layout.describe()}")
            wanted = self.policy.select(list(on_disk))
            if not wanted:
                raise ModelLoadFailed(
                    f"failed to load '{name}': the version policy ({self.policy}) selects none "
                    f"of its versions ({', '.join(sorted(on_disk, key=version_key))})")
            retire = [e for (n, v), e in self._serving.items() if n == name and v not in wanted]
            failures: list[ModelLoadFailed] = []
            for version in wanted:
                source = on_disk[version]
                current = self._serving.get((name, version))
                if current is not None and current.source.signature == source.signature:
                    continue
                try:
                    entry = await self._load_version(source, retiring=len(retire) + (
                        current is not None))
                except ModelLoadFailed as exc:
                    failures.append(exc)
                    state = READY if current is not None else UNAVAILABLE
                    self._status[(name, version)] = VersionStatus(state, str(exc))
                    self._metrics.model_loads.labels(name, version, "failed").inc()
                    continue
                self._status.pop((name, version), None)
                self._serving[(name, version)] = entry  # takes traffic from here on
                if current is not None:
                    self._retire(current, "reloaded")
                self._metrics.model_loads.labels(name, version, "loaded").inc()
            if any((name, v) in self._serving for v in wanted):
                for entry in retire:  # superseded: drained once the new version serves
                    if self._serving.get((entry.name, entry.version)) is entry:
                        del self._serving[(entry.name, entry.version)]
                        self._status[(entry.name, entry.version)] = VersionStatus(
                            UNAVAILABLE, f"unloaded: not selected by the version policy "
                            f"({self.policy}) once version {wanted[-1]} loaded")
                        self._retire(entry, "superseded")
            self._metrics.models_loaded.set(len(self._serving))
            if failures:  # the first failure's cause kept: the start-up error names it
                raise ModelLoadFailed("; ".join(map(str, failures))) from failures[0].__cause__

    def _estimate(self, source: VersionSource) -> int:
        return self._config.instances * (MEMORY_FACTOR * source.model_bytes + SESSION_BYTES)

    def _check_limits(self, source: VersionSource, retiring: int) -> int:
        """The version's memory estimate; ModelLoadFailed when a limit refuses it."""
        label = f"'{source.name}' version {source.version}"
        limit = self._config.max_loaded_models
        after = len(self._serving) - retiring + 1
        if limit and after > limit:
            raise ModelLoadFailed(
                f"failed to load {label}: it would make {after} model versions loaded, more "
                f"than max_loaded_models ({limit}); unload one first")
        estimate = self._estimate(source)
        memory = self._config.model_memory_limit_bytes
        held = sum(e.estimate_bytes for e in (*self._serving.values(), *self._retiring))
        if memory and held + estimate > memory:
            raise ModelLoadFailed(
                f"failed to load {label}: its estimated memory ({_mib(estimate)}: model.onnx "
                f"{_mib(source.model_bytes)}) with the {_mib(held)} the loaded versions hold "
                f"exceeds model_memory_limit_bytes ({_mib(memory)}); unload one first")
        return estimate

    async def _load_version(self, source: VersionSource, retiring: int) -> LoadedVersion:
        label = f"'{source.name}' version {source.version}"
        estimate = self._check_limits(source, retiring)
        async with self._load_slots:
            log.info("loading model %s from %s", label, source.path)
            started = time.perf_counter()
            before = resident_bytes()
            try:
                model = await asyncio.to_thread(self._load_runner, source.path)
            except Exception as exc:
                log.error("model %s failed to load: %s", label, exc)
                raise ModelLoadFailed(f"failed to load {label}: {exc}") from exc
            grown = resident_bytes() - before
        manifest = model.manifest
        if self.layout.root is not None:  # served as the folders name it
            manifest = replace(manifest, name=source.name, version=source.version)
            model = _Renamed(model, manifest)
        try:
            pipeline = ImagePipeline(model, self._config, self._metrics, self.decode_share)
        except Exception as exc:
            log.error("model %s failed to load: %s", label, exc)
            raise ModelLoadFailed(f"failed to load {label}: {exc}") from exc
        seconds = time.perf_counter() - started
        log.info("model %s loaded and warmed up in %.2fs on %s (estimated %s, resident memory "
                 "grew %s)", label, seconds, pipeline.provider, _mib(estimate), _mib(grown))
        entry = LoadedVersion(manifest.name, manifest.version, source, pipeline, estimate,
                              loaded_s=seconds)
        entry.idle.set()
        return entry

    # -- unloading --------------------------------------------------------------------------

    async def unload(self, name: str) -> None:
        """Unloads every version of ``name``: none takes a new call from now on; each is closed
        once its calls have finished (in the background). ModelLoadFailed when none is
        loaded."""
        async with self._lock(name):
            entries = [e for (n, _), e in self._serving.items() if n == name]
            if not entries:
                raise ModelLoadFailed(f"failed to unload '{name}': no version of it is loaded")
            for entry in entries:
                del self._serving[(entry.name, entry.version)]
                self._status[(entry.name, entry.version)] = VersionStatus(
                    UNAVAILABLE, "unloaded")
                self._retire(entry, "unloaded")
            self._metrics.models_loaded.set(len(self._serving))

    def _retire(self, entry: LoadedVersion, why: str) -> None:
        """Drains ``entry`` (already out of the routing table) and closes it, in a task."""
        entry.state = UNLOADING
        self._retiring.add(entry)
        task = asyncio.ensure_future(self._drain(entry, why))
        self._retirements.add(task)
        task.add_done_callback(self._retirements.discard)

    async def _drain(self, entry: LoadedVersion, why: str) -> None:
        try:
            await entry.idle.wait()
            await entry.pipeline.close()
        except Exception:
            log.exception("closing model '%s' version %s failed", entry.name, entry.version)
        finally:
            self._retiring.discard(entry)
            entry.state = UNAVAILABLE
            with contextlib.suppress(KeyError):
                self._metrics.model_info.remove(entry.name, entry.version,
                                                entry.pipeline.provider)
            log.info("model '%s' version %s %s and drained", entry.name, entry.version, why)

    async def wait_retired(self) -> None:
        """Waits until every version leaving has drained and closed."""
        while self._retirements:
            await asyncio.gather(*list(self._retirements), return_exceptions=True)

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    # -- poll mode --------------------------------------------------------------------------

    def start_polling(self, every_s: float) -> None:
        """model_control_mode=poll: reloads what changed on disk every ``every_s`` seconds."""
        self._poller = asyncio.ensure_future(self._poll(every_s))

    async def _poll(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.poll_once()
            except Exception:
                log.exception("polling the model repository failed")

    async def poll_once(self) -> None:
        """One look at the repository: models whose selected versions or files changed are
        (re)loaded, models gone are unloaded. A load that failed is tried again only once its
        files change."""
        on_disk = await asyncio.to_thread(self.layout.scan)
        self._known = on_disk
        for name, versions in on_disk.items():
            wanted = tuple((v, versions[v].signature)
                           for v in self.policy.select(list(versions)))
            serving = tuple(sorted(((v, e.source.signature) for (n, v), e in
                                    self._serving.items() if n == name),
                                   key=lambda item: version_key(item[0])))
            if wanted == serving or self._failed_polls.get(name) == wanted:
                continue
            try:
                await self.load(name)
                self._failed_polls.pop(name, None)
            except ModelLoadFailed as exc:
                self._failed_polls[name] = wanted
                log.warning("poll: %s", exc)
        for name in {n for n, _ in self._serving} - set(on_disk):
            with contextlib.suppress(ModelLoadFailed):
                await self.unload(name)

    # -- the end ----------------------------------------------------------------------------

    async def close(self) -> None:
        """Finishes every queued request of every version, then releases the threads (the
        server has drained its calls first)."""
        self._closed = True
        if self._poller is not None:
            self._poller.cancel()
        entries = list(self._serving.values())
        self._serving.clear()
        await asyncio.gather(*(e.pipeline.close() for e in entries),
                             self.wait_retired(), return_exceptions=True)
        self.decode_share.close()


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"
