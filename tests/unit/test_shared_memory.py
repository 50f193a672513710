"""System shared memory regions (transport/inference_protocol/shared_memory.py): what a client
does to its own object (truncate, grow, remove) never crashes the server, every bound holds,
and a region unregistered while in use stays readable until its request is done."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hardscore_server.pipeline.errors import InvalidRequest
from hardscore_server.transport.inference_protocol.shared_memory import SharedMemoryRegistry

SIZE = 4096


@pytest.fixture
def registry(tmp_path: Path) -> SharedMemoryRegistry:
    (tmp_path / "obj").write_bytes(bytes(range(256)) * (SIZE // 256))
    registry = SharedMemoryRegistry(str(tmp_path))
    registry.register("r", "/obj", 1024, 2048)
    return registry


def test_reads_and_writes_stay_within_the_region(registry: SharedMemoryRegistry,
                                                  tmp_path: Path) -> None:
    assert registry.read("r", 0, 4, "input 'x'") == bytes([0, 1, 2, 3])  # 1024 % 256 == 0
    registry.write("r", 8, 4, b"abcd", "output 'y'")
    assert (tmp_path / "obj").read_bytes()[1032:1036] == b"abcd"
    with pytest.raises(InvalidRequest, match=r"needs 8 bytes at offset 2044 .* holds 2048"):
        registry.read("r", 2044, 8, "input 'x'")


def test_a_truncated_object_is_refused_not_a_crash(registry: SharedMemoryRegistry,
                                                   tmp_path: Path) -> None:
    os.truncate(tmp_path / "obj", 1500)  # the client shrinks its object under the region
    with pytest.raises(InvalidRequest, match=r"no longer holds the 2048 bytes .* truncated"):
        registry.read("r", 0, 1024, "input 'x'")
    with pytest.raises(InvalidRequest, match="truncated"):
        registry.write("r", 1000, 8, b"12345678", "output 'y'")
    assert (tmp_path / "obj").stat().st_size == 1500  # the refused write did not grow it
    assert registry.read("r", 0, 4, "input 'x'") == bytes([0, 1, 2, 3])  # what is left reads
    os.truncate(tmp_path / "obj", SIZE)  # grown back: the region works again
    assert registry.read("r", 2040, 8, "input 'x'") == bytes(8)


def test_a_removed_object_still_reads_through_the_open_region(
        registry: SharedMemoryRegistry, tmp_path: Path) -> None:
    (tmp_path / "obj").unlink()
    assert registry.read("r", 0, 2, "input 'x'") == bytes([0, 1])


def test_unregistering_a_region_in_use_closes_it_after_its_request(
        registry: SharedMemoryRegistry) -> None:
    region = registry._use("r", 0, 4, "input 'x'")
    registry.unregister("r")
    assert os.pread(region.fd, 2, region.offset) == bytes([0, 1])  # still open for it
    registry._done(region)
    with pytest.raises(OSError):
        os.fstat(region.fd)
    with pytest.raises(InvalidRequest, match="not registered"):
        registry.read("r", 0, 4, "input 'x'")


@pytest.mark.parametrize("key", ["/obj\n", "obj/..", "../obj", "/", ""])
def test_keys_that_are_not_one_plain_name_are_refused(registry: SharedMemoryRegistry,
                                                     key: str) -> None:
    with pytest.raises(InvalidRequest, match="is not a POSIX shared memory name"):
        registry.register("other", key, 0, 16)


# -- workers > 1: one registry in a shared store ----------------------------------------------

@pytest.fixture
def workers(tmp_path: Path) -> tuple[SharedMemoryRegistry, SharedMemoryRegistry]:
    """Two workers' registries over one store (what the supervisor gives its workers)."""
    (tmp_path / "obj").write_bytes(bytes(range(256)) * (SIZE // 256))
    (tmp_path / "other").write_bytes(b"\x07" * SIZE)
    store = str(tmp_path / "store")
    return (SharedMemoryRegistry(str(tmp_path), shared_store=store),
            SharedMemoryRegistry(str(tmp_path), shared_store=store))


def test_a_region_registered_by_one_worker_serves_every_worker(workers, tmp_path) -> None:
    first, second = workers
    first.register("r", "/obj", 1024, 2048)
    assert second.read("r", 0, 4, "input 'x'") == bytes([0, 1, 2, 3])
    second.write("r", 8, 4, b"abcd", "output 'y'")
    assert first.read("r", 8, 4, "input 'x'") == b"abcd"
    assert second.status() == [{"name": "r", "key": "/obj", "offset": 1024, "byte_size": 2048}]
    with pytest.raises(InvalidRequest, match="already registered"):
        second.register("r", "/other", 0, 16)
    with pytest.raises(InvalidRequest, match=r"needs 8 bytes at offset 2044 .* holds 2048"):
        second.read("r", 2044, 8, "input 'x'")
    os.truncate(tmp_path / "obj", 1500)  # the key check and truncation hold in every worker
    with pytest.raises(InvalidRequest, match="truncated"):
        second.read("r", 0, 1024, "input 'x'")
    os.truncate(tmp_path / "obj", SIZE)

    second.unregister("r")  # for every worker
    for registry in workers:
        with pytest.raises(InvalidRequest, match="'r', which is not registered"):
            registry.read("r", 0, 4, "input 'x'")
    assert first.status() == []
    assert not first._regions and not second._regions  # both closed their descriptors

    first.register("r", "/other", 0, 16)  # the same name again, another object
    assert second.read("r", 0, 2, "input 'x'") == b"\x07\x07"
    first.close()  # one worker's shutdown: the region stays for the others
    assert second.read("r", 0, 2, "input 'x'") == b"\x07\x07"
    assert [r["name"] for r in second.status()] == ["r"]


def test_the_region_limit_holds_across_workers(tmp_path: Path) -> None:
    (tmp_path / "obj").write_bytes(bytes(SIZE))
    store = str(tmp_path / "store")
    first, second = (SharedMemoryRegistry(str(tmp_path), max_regions=2, shared_store=store)
                     for _ in range(2))
    first.register("a", "/obj", 0, 16)
    second.register("b", "/obj", 0, 16)
    with pytest.raises(InvalidRequest, match="2 shared memory regions are registered"):
        first.register("c", "/obj", 0, 16)
    first.unregister()
    assert second.status() == []
    with pytest.raises(InvalidRequest, match="not registered"):
        second.read("b", 0, 1, "input 'x'")
