"""The model repository on disk: ``<repo>/<model>/<version>/{model.onnx,manifest.json}``.

A repository is a folder of model folders; each model folder holds version folders named by
integers (``1``, ``2``, ...), and each version folder is a model directory (model_dir.py). The
model's served name is its folder's name and its version the version folder's name, whatever
the manifest says (as Triton names them). A single model directory (``--model-dir``) is a
repository of one: its manifest's name and version.

Which versions of a model are served is its **version policy** (Triton's): ``latest`` (the
highest version, the default), ``latest:N`` (the N highest), ``all``, or ``specific:1,3``.
Versions order numerically ("latest" is the greatest integer). Nothing here loads a model: this
module only reads folders.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from hardscore_server.model.model_dir import MANIFEST_FILE, MODEL_FILE, ModelDirError, load_manifest


class RepositoryError(ValueError):
    """The repository folder or a version policy is unusable as configured."""


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions of a model to serve: ``kind`` latest (the ``count`` highest), all, or
    specific (``versions``)."""

    kind: str = "latest"
    count: int = 1
    versions: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        """``latest``, ``latest:N``, ``all`` or ``specific:V1,V2``; RepositoryError otherwise."""
        kind, _, rest = text.strip().partition(":")
        if kind == "latest":
            if not rest:
                return cls("latest", 1)
            if rest.isdigit() and int(rest) >= 1:
                return cls("latest", int(rest))
        elif kind == "all" and not rest:
            return cls("all")
        elif kind == "specific":
            versions = tuple(v.strip() for v in rest.split(",") if v.strip())
            if versions and all(v.isdigit() for v in versions):
                return cls("specific", versions=versions)
        raise RepositoryError(
            f"version_policy {text!r}: expected latest, latest:N (N >= 1), all, or "
            "specific:V1,V2 (integer versions)")

    def select(self, versions: list[str]) -> list[str]:
        """The versions of ``versions`` to serve, in ascending order."""
        ordered = sorted(versions, key=version_key)
        if self.kind == "all":
            return ordered
        if self.kind == "specific":
            return [v for v in ordered if v in self.versions]
        return ordered[-self.count:]

    def __str__(self) -> str:
        if self.kind == "latest":
            return "latest" if self.count == 1 else f"latest:{self.count}"
        if self.kind == "specific":
            return "specific:" + ",".join(self.versions)
        return self.kind


def version_key(version: str) -> tuple[int, int | str]:
    """Sort key of a version: integers numerically, before any other string (lexicographic):
    MLServer's rule for the highest version."""
    return (1, int(version)) if version.isdigit() else (0, version)


@dataclass(frozen=True)
class VersionSource:
    """One version on disk: its model directory and a signature of its files (sizes and
    modification times), which changes when the version is rewritten."""

    name: str
    version: str
    path: Path
    signature: tuple[int, ...]

    @property
    def model_bytes(self) -> int:
        """Size of its model.onnx (bytes; 0 when missing)."""
        try:
            return (self.path / MODEL_FILE).stat().st_size
        except OSError:
            return 0


def _signature(path: Path) -> tuple[int, ...]:
    out: list[int] = []
    for name in (MODEL_FILE, MANIFEST_FILE):
        try:
            st = (path / name).stat()
            out += [st.st_size, st.st_mtime_ns]
        except OSError:
            out += [-1, -1]
    return tuple(out)


class RepositoryLayout:
    """Where the models are: a repository folder (``root``), or one model directory
    (``single``). ``scan()`` reads it afresh each time."""

    def __init__(self, root: Path | None = None, single: Path | None = None) -> None:
        if (root is None) == (single is None):
            raise ValueError("give a repository folder or one model directory")
        self.root = root
        self.single = single

    def describe(self) -> str:
        return f"repository {self.root}" if self.root is not None else (
            f"model directory {self.single}")

    def scan(self) -> dict[str, dict[str, VersionSource]]:
        """Every model on disk and its versions: {name: {version: source}}. A model folder
        without an integer-named version folder is left out; RepositoryError when the
        repository folder itself cannot be read."""
        if self.single is not None:
            manifest = load_manifest(self.single)  # ModelDirError: the server cannot start
            source = VersionSource(manifest.name, manifest.version, self.single,
                                   _signature(self.single))
            return {manifest.name: {manifest.version: source}}
        assert self.root is not None
        try:
            entries = sorted(os.scandir(self.root), key=lambda e: e.name)
        except OSError as exc:
            raise RepositoryError(
                f"model_repository {str(self.root)!r}: cannot read: {exc.strerror}") from None
        models: dict[str, dict[str, VersionSource]] = {}
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            versions: dict[str, VersionSource] = {}
            try:
                children = list(os.scandir(entry.path))
            except OSError:
                continue
            for child in children:
                if child.name.isdigit() and child.is_dir():
                    version = str(int(child.name))
                    path = Path(child.path)
                    versions[version] = VersionSource(entry.name, version, path, _signature(path))
            if versions:
                models[entry.name] = versions
        return models


__all__ = ["ModelDirError", "RepositoryError", "RepositoryLayout", "VersionPolicy",
           "VersionSource", "version_key"]
