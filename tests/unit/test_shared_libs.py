"""The DT_NEEDED resolver, on real ELF files of this environment (ONNX Runtime, PyTorch)."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import onnxruntime as ort
import pytest

from hardscore_server.model.shared_libs import (
    LD_CACHE,
    ElfError,
    Missing,
    Resolver,
    expand,
    read_dynamic,
    read_ld_cache,
)

ORT_CAPI = Path(ort.__file__).parent / "capi"
ORT_MODULE = next(ORT_CAPI.glob("onnxruntime_pybind11_state*.so"))


def torch_lib() -> Path:
    torch = pytest.importorskip("torch")
    return Path(torch.__file__).parent / "lib"


def test_reads_the_dynamic_section_of_onnxruntime() -> None:
    elf = read_dynamic(ORT_MODULE)
    assert (elf.elf_class, elf.machine) == (2, 62)  # ELF64, x86-64
    assert elf.runpath == ("$ORIGIN",) and elf.rpath == ()
    assert {"libc.so.6", "libstdc++.so.6", "libm.so.6"} <= set(elf.needed)
    assert expand("$ORIGIN/x", elf) == f"{ORT_CAPI}/x"
    assert expand("${ORIGIN}/$LIB", elf) == f"{ORT_CAPI}/lib64"


def test_onnxruntime_resolves_completely() -> None:
    resolver = Resolver({}, use_loaded=False)
    elf = read_dynamic(ORT_MODULE)
    assert resolver.missing(ORT_MODULE) == []
    libc = resolver.find("libc.so.6", elf)
    assert libc is not None and read_dynamic(Path(libc)).soname == "libc.so.6"


def test_rpath_with_origin_finds_the_pip_cuda_runtime() -> None:
    lib = torch_lib()
    cuda = lib / "libtorch_cuda.so"
    elf = read_dynamic(cuda)
    assert "$ORIGIN/../../nvidia/cu13/lib" in elf.rpath and elf.runpath == ()
    assert "libcudart.so.13" in elf.needed and "libcublas.so.13" in elf.needed
    resolver = Resolver({}, use_loaded=False)
    found = resolver.find("libcudart.so.13", elf)
    assert found == f"{lib}/../../nvidia/cu13/lib/libcudart.so.13"
    assert resolver.missing(cuda) == []


def test_a_moved_library_names_exactly_what_is_missing(tmp_path: Path) -> None:
    moved = tmp_path / "libtorch.so"
    shutil.copyfile(torch_lib() / "libtorch.so", moved)
    elf = read_dynamic(moved)
    assert elf.needed == ("libtorch_cpu.so", "libtorch_cuda.so", "libgcc_s.so.1",
                          "libpthread.so.0", "libc.so.6")
    missing = Resolver({}, use_loaded=False).missing(moved)
    assert [m.name for m in missing] == ["libtorch_cpu.so", "libtorch_cuda.so"]
    assert str(missing[0]) == "libtorch_cpu.so (needed by libtorch.so)"
    assert f"{tmp_path}/../../nvidia/cu13/lib" in missing[0].searched


def test_ld_library_path_is_searched_and_ignore_skips(tmp_path: Path) -> None:
    moved = tmp_path / "app" / "libtorch.so"
    moved.parent.mkdir()
    shutil.copyfile(torch_lib() / "libtorch.so", moved)
    env = {"LD_LIBRARY_PATH": str(torch_lib())}
    resolver = Resolver(env, use_loaded=False)
    assert resolver.find("libtorch_cpu.so", read_dynamic(moved)) == \
        f"{torch_lib()}/libtorch_cpu.so"
    assert resolver.missing(moved) == []
    alone = Resolver({}, use_loaded=False)
    assert alone.missing(moved, ignore=["libtorch_cpu.so", "libtorch_cuda.so"]) == []


def test_a_loaded_soname_satisfies_a_need(tmp_path: Path) -> None:
    moved = tmp_path / "libtorch.so"
    shutil.copyfile(torch_lib() / "libtorch.so", moved)
    resolver = Resolver({}, use_loaded=False)
    resolver.loaded = {"libtorch_cpu.so": "/x/libtorch_cpu.so"}
    assert [m.name for m in resolver.missing(moved)] == ["libtorch_cuda.so"]


def test_non_elf_files_are_refused(tmp_path: Path) -> None:
    text = tmp_path / "notes.so"
    text.write_text("not a library\n")
    with pytest.raises(ElfError, match="not an ELF file"):
        read_dynamic(text)
    assert str(Missing("a.so", text)) == "a.so (needed by notes.so)"


def test_the_loader_cache_of_this_machine_is_read() -> None:
    cache = read_ld_cache(LD_CACHE.read_bytes())
    libc = cache["libc.so.6"][0]
    assert read_dynamic(Path(libc)).soname == "libc.so.6"
    assert read_ld_cache(b"not a cache") == {}


def test_a_format_1_1_cache_is_parsed() -> None:
    strings = b"liba.so.1\0/opt/a/liba.so.1\0libb.so.2\0/opt/b/libb.so.2\0"
    base = 48 + 2 * 24
    offsets = [base, base + 10, base + 27, base + 37]
    header = b"glibc-ld.so.cache1.1" + struct.pack("<II4xI12x", 2, len(strings), 0)
    entries = b"".join(struct.pack("<iIIIQ", 0x303, key, value, 0, 0)
                       for key, value in ((offsets[0], offsets[1]), (offsets[2], offsets[3])))
    old = b"ld.so-1.7.0" + b"\0" * 5  # an old-format prefix is skipped
    assert read_ld_cache(old + header + entries + strings) == {
        "liba.so.1": ["/opt/a/liba.so.1"], "libb.so.2": ["/opt/b/libb.so.2"]}
