"""docs/development.md names every hand-written module of the server and the client, so the map
a newcomer reads is the tree that is there (a module added or moved without the map fails)."""

from __future__ import annotations

from pathlib import Path

from conftest import REPO

PACKAGES = {"server": REPO / "server" / "hardscore_server",
            "client": REPO / "client" / "hardscore_client"}
MAP = REPO / "docs" / "development.md"


def hand_written(root: Path) -> list[str]:
    """Paths of the package's modules relative to it, generated stubs and __init__ left out."""
    return sorted(
        path.relative_to(root).as_posix() for path in root.rglob("*.py")
        if path.name != "__init__.py" and "_pb2" not in path.name)


def test_every_module_is_on_the_map() -> None:
    text = MAP.read_text()
    missing = [f"{side}: {module}" for side, root in PACKAGES.items()
               for module in hand_written(root) if f"`{module}`" not in text]
    assert not missing, f"docs/development.md does not name {missing}"


def test_the_map_names_no_module_that_is_gone() -> None:
    text = MAP.read_text()
    rows = [line.split("|")[1].strip() for line in text.splitlines()
            if line.startswith("| `") and line.split("|")[1].strip().endswith(".py`")]
    known = {f"`{m}`" for root in PACKAGES.values() for m in hand_written(root)}
    gone = [row for row in rows if row not in known]
    assert len(rows) > 40 and not gone, gone
