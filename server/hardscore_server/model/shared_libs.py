"""Which shared library is missing: DT_NEEDED resolution with the system loader's search rules.

When ONNX Runtime's CUDA provider does not load, ONNX Runtime logs one ``dlopen`` error for the
first library it missed. This module answers the question for every library at once, without
loading anything: it reads the dynamic section of an ELF file (``DT_NEEDED``, ``DT_RPATH``,
``DT_RUNPATH``, ``DT_SONAME``) and looks each needed name up the way glibc's ``ld.so`` does:

1. a name with a ``/`` is a path;
2. an object already loaded in this process with that soname (``/proc/self/maps``) satisfies it
   (what ``onnxruntime.preload_dlls()`` relies on);
3. ``DT_RPATH`` of the object and then of the objects that loaded it, only when the object has
   no ``DT_RUNPATH``;
4. ``LD_LIBRARY_PATH``;
5. ``DT_RUNPATH`` of the object (not inherited);
6. the ``ld.so.cache`` (``ldconfig -p``);
7. the default directories ``/lib64``, ``/usr/lib64`` (64-bit) or ``/lib``, ``/usr/lib``.

``$ORIGIN`` expands to the directory of the object, ``$LIB`` to lib64/lib. A candidate of the
wrong ELF class or machine is skipped, as ``ld.so`` does. Linux only; little-endian ELF.
"""

from __future__ import annotations

import contextlib
import os
import struct
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

PT_LOAD, PT_DYNAMIC = 1, 2
DT_NULL, DT_NEEDED, DT_STRTAB, DT_STRSZ, DT_SONAME, DT_RPATH, DT_RUNPATH = 0, 1, 5, 10, 14, 15, 29
DRIVER_LIBRARY = "libcuda.so.1"
"""The NVIDIA driver's user-space library: installed with the driver (or mounted into a
container by the NVIDIA container toolkit), never by a Python package."""


class ElfError(ValueError):
    """The file is not a readable little-endian ELF shared object."""


@dataclass(frozen=True)
class ElfDynamic:
    """The loader-relevant part of one ELF file's dynamic section."""

    path: Path
    elf_class: int  # 1 = 32-bit, 2 = 64-bit
    machine: int  # e_machine (62 = x86-64, 183 = AArch64)
    needed: tuple[str, ...] = ()
    rpath: tuple[str, ...] = ()
    runpath: tuple[str, ...] = ()
    soname: str = ""


@dataclass(frozen=True)
class Missing:
    """A needed library that no search path provides."""

    name: str
    needed_by: Path
    searched: tuple[str, ...] = field(default=())

    def __str__(self) -> str:
        return f"{self.name} (needed by {self.needed_by.name})"


def read_dynamic(path: Path) -> ElfDynamic:
    """Reads ``path``'s dynamic section; raises :class:`ElfError` for a non-ELF file."""
    path = Path(path)
    with path.open("rb") as f:
        ident = f.read(64)
        if len(ident) < 52 or ident[:4] != b"\x7fELF":
            raise ElfError(f"{path}: not an ELF file")
        elf_class, data = ident[4], ident[5]
        if data != 1 or elf_class not in (1, 2):
            raise ElfError(f"{path}: not a little-endian 32/64-bit ELF file")
        wide = elf_class == 2
        machine = struct.unpack_from("<H", ident, 18)[0]
        if wide:
            phoff, = struct.unpack_from("<Q", ident, 32)
            phentsize, phnum = struct.unpack_from("<HH", ident, 54)
        else:
            phoff, = struct.unpack_from("<I", ident, 28)
            phentsize, phnum = struct.unpack_from("<HH", ident, 42)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
        loads: list[tuple[int, int, int]] = []  # (vaddr, filesz, offset)
        dynamic: tuple[int, int] | None = None
        for i in range(phnum):
            base = i * phentsize
            if wide:
                p_type, _, p_offset, p_vaddr, _, p_filesz = struct.unpack_from(
                    "<IIQQQQ", table, base)
            else:
                p_type, p_offset, p_vaddr, _, p_filesz = struct.unpack_from("<IIIII", table, base)
            if p_type == PT_LOAD:
                loads.append((p_vaddr, p_filesz, p_offset))
            elif p_type == PT_DYNAMIC:
                dynamic = (p_offset, p_filesz)
        if dynamic is None:
            return ElfDynamic(path, elf_class, machine)
        f.seek(dynamic[0])
        raw = f.read(dynamic[1])
        entry = "<qQ" if wide else "<iI"
        size = struct.calcsize(entry)
        entries: list[tuple[int, int]] = []
        for pos in range(0, len(raw) - size + 1, size):
            tag, value = struct.unpack_from(entry, raw, pos)
            if tag == DT_NULL:
                break
            entries.append((tag, value))
        tags = dict(entries)
        if DT_STRTAB not in tags:
            return ElfDynamic(path, elf_class, machine)
        strtab = _file_offset(tags[DT_STRTAB], loads)
        f.seek(strtab)
        strings = f.read(tags.get(DT_STRSZ, 1 << 20))

    def text(offset: int) -> str:
        end = strings.find(b"\0", offset)
        return strings[offset:end if end >= 0 else None].decode("utf-8", "replace")

    def paths(tag: int) -> tuple[str, ...]:
        return tuple(p for t, v in entries if t == tag for p in text(v).split(":") if p)

    return ElfDynamic(
        path=path, elf_class=elf_class, machine=machine,
        needed=tuple(text(v) for t, v in entries if t == DT_NEEDED),
        rpath=paths(DT_RPATH), runpath=paths(DT_RUNPATH),
        soname=next((text(v) for t, v in entries if t == DT_SONAME), ""),
    )


def _file_offset(vaddr: int, loads: Iterable[tuple[int, int, int]]) -> int:
    for start, size, offset in loads:
        if start <= vaddr < start + size:
            return offset + vaddr - start
    raise ElfError(f"address {vaddr:#x} lies in no loaded segment")


def expand(entry: str, obj: ElfDynamic) -> str:
    """One RPATH/RUNPATH entry with ``$ORIGIN`` and ``$LIB`` substituted for ``obj``."""
    origin = str(Path(os.path.abspath(obj.path)).parent)
    lib = "lib64" if obj.elf_class == 2 else "lib"
    for token, value in (("ORIGIN", origin), ("LIB", lib)):
        entry = entry.replace("${" + token + "}", value).replace("$" + token, value)
    return entry


LD_CACHE = Path("/etc/ld.so.cache")
_NEW_MAGIC = b"glibc-ld.so.cache1.1"


def read_ld_cache(data: bytes) -> dict[str, list[str]]:
    """soname -> paths from the bytes of an ``ld.so.cache`` in glibc's format 1.1 (alone or
    after the old format); empty when the bytes are in no format known here."""
    start = data.find(_NEW_MAGIC)
    if start < 0 or len(data) < start + 48:
        return {}
    nlibs, = struct.unpack_from("<I", data, start + 20)
    cache: dict[str, list[str]] = {}

    def text(offset: int) -> str:
        end = data.find(b"\0", offset)
        return data[offset:end].decode("utf-8", "replace")

    for i in range(nlibs):
        pos = start + 48 + 24 * i
        if pos + 24 > len(data):
            break
        _, key, value = struct.unpack_from("<iII", data, pos)
        cache.setdefault(text(start + key), []).append(text(start + value))
    return cache


def ld_cache() -> dict[str, list[str]]:
    """soname -> paths in the loader's cache (/etc/ld.so.cache, as ``ldconfig -p`` lists it);
    ``ldconfig -p`` when the file is in an unknown format; empty if neither is readable."""
    with contextlib.suppress(OSError):
        cache = read_ld_cache(LD_CACHE.read_bytes())
        if cache:
            return cache
    for ldconfig in ("/sbin/ldconfig", "/usr/sbin/ldconfig", "ldconfig"):
        try:
            out = subprocess.run([ldconfig, "-p"], capture_output=True, text=True,
                                 timeout=10, check=False).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        cache = {}
        for line in out.splitlines()[1:]:
            name, sep, target = line.strip().partition(" => ")
            if sep:
                cache.setdefault(name.split(" (")[0], []).append(target.strip())
        return cache
    return {}


def loaded_sonames() -> dict[str, str]:
    """soname (or file name) -> path of every shared object mapped into this process."""
    found: dict[str, str] = {}
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return found
    for line in maps.splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[5].startswith("/") and ".so" in parts[5]:
            found.setdefault(os.path.basename(parts[5]), parts[5])
    for target in list(found.values()):
        try:
            soname = read_dynamic(Path(target)).soname
        except (OSError, ElfError):
            continue
        if soname:
            found.setdefault(soname, target)
    return found


class Resolver:
    """Resolves needed libraries with ld.so's order; ``environ`` supplies LD_LIBRARY_PATH."""

    def __init__(self, environ: Mapping[str, str] | None = None, *,
                 use_loaded: bool = True, cache: Mapping[str, list[str]] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.library_path = [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p]
        self.cache = ld_cache() if cache is None else dict(cache)
        self.loaded = loaded_sonames() if use_loaded else {}
        self._elf: dict[str, ElfDynamic | None] = {}

    def _compatible(self, candidate: str, obj: ElfDynamic) -> bool:
        if candidate not in self._elf:
            try:
                self._elf[candidate] = read_dynamic(Path(candidate))
            except (OSError, ElfError):
                self._elf[candidate] = None
        found = self._elf[candidate]
        return found is not None and (found.elf_class, found.machine) == (
            obj.elf_class, obj.machine)

    def search_dirs(self, obj: ElfDynamic, chain: tuple[ElfDynamic, ...] = ()) -> list[str]:
        """Directories searched for ``obj``'s needs, in order (cache and defaults excluded)."""
        dirs: list[str] = []
        if not obj.runpath:
            for holder in (obj, *chain):
                dirs += [expand(e, holder) for e in holder.rpath]
        dirs += self.library_path
        dirs += [expand(e, obj) for e in obj.runpath]
        return dirs

    def find(self, name: str, obj: ElfDynamic,
             chain: tuple[ElfDynamic, ...] = ()) -> str | None:
        """Path ``ld.so`` would load for ``name`` needed by ``obj``; None when none."""
        if "/" in name:
            return name if self._compatible(name, obj) else None
        if name in self.loaded:
            return self.loaded[name]
        for directory in self.search_dirs(obj, chain):
            candidate = os.path.join(directory, name)
            if os.path.isfile(candidate) and self._compatible(candidate, obj):
                return candidate
        for candidate in self.cache.get(name, []):
            if os.path.isfile(candidate) and self._compatible(candidate, obj):
                return candidate
        defaults = ("/lib64", "/usr/lib64") if obj.elf_class == 2 else ("/lib", "/usr/lib")
        for directory in defaults:
            candidate = os.path.join(directory, name)
            if os.path.isfile(candidate) and self._compatible(candidate, obj):
                return candidate
        return None

    def missing(self, path: Path, ignore: Iterable[str] = ()) -> list[Missing]:
        """Every library ``path`` needs, directly or through what it loads, that is not found
        (breadth first, each name once); ``ignore`` names are not looked up."""
        skip = set(ignore)
        root = read_dynamic(Path(path))
        queue: list[tuple[ElfDynamic, tuple[ElfDynamic, ...]]] = [(root, ())]
        seen_names: set[str] = set()
        seen_files: set[str] = {os.path.realpath(root.path)}
        result: list[Missing] = []
        while queue:
            obj, chain = queue.pop(0)
            for name in obj.needed:
                if name in seen_names or name in skip:
                    continue
                seen_names.add(name)
                found = self.find(name, obj, chain)
                if found is None:
                    result.append(Missing(name, obj.path, tuple(self.search_dirs(obj, chain))))
                    continue
                real = os.path.realpath(found)
                if real in seen_files or name in self.loaded:
                    continue
                seen_files.add(real)
                try:
                    queue.append((read_dynamic(Path(found)), (obj, *chain)))
                except (OSError, ElfError):
                    continue
        return result


def describe_missing(path: Path, environ: Mapping[str, str] | None = None,
                     ignore: Iterable[str] = ()) -> str:
    """One line naming the libraries ``path`` cannot load, or "" when all are found."""
    missing = Resolver(environ).missing(path, ignore=ignore)
    if not missing:
        return ""
    return "cannot find " + ", ".join(str(m) for m in missing)
