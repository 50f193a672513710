"""Generates the Python protobuf/gRPC stubs and their type stubs from proto/.

    python proto/generate.py           # write the stubs beside the hand-written modules
    python proto/generate.py --check   # exit 1 when the committed stubs are stale

Each .proto is compiled under the import path of the Python package that owns it, so the
generated modules import each other as ``<package>.<name>_pb2`` while the wire package (e.g.
hardscore.v1) is unchanged:

- ``proto/hardscore/v1/*.proto`` -> ``hardscore_wire`` (proto/hardscore_wire/), the contract that
  the client and the server both import;
- ``proto/inference/*.proto`` (the Open Inference Protocol) ->
  ``hardscore_server.transport.inference_protocol``
  (server/hardscore_server/transport/inference_protocol/).

Only the generated files are written or compared; the hand-written modules beside them are left
alone.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
# (folder of .proto files, Python package path they compile into, source folder of that package)
TARGETS = [
    (ROOT / "proto" / "hardscore" / "v1", Path("hardscore_wire"), ROOT / "proto"),
    (ROOT / "proto" / "inference", Path("hardscore_server") / "transport" / "inference_protocol",
     ROOT / "server"),
]


def generate(out_root: Path) -> list[tuple[Path, Path]]:
    """Compiles every .proto into ``out_root``; returns (generated file, committed path) pairs."""
    grpc_include = Path(protoc.__file__).parent / "_proto"
    pairs: list[tuple[Path, Path]] = []
    for proto_dir, package, source_root in TARGETS:
        files = sorted(p.name for p in proto_dir.glob("*.proto"))
        args = [
            "grpc_tools.protoc",
            f"-I{package.as_posix()}={proto_dir}",
            f"-I{grpc_include}",
            f"--python_out={out_root}",
            f"--grpc_python_out={out_root}",
            f"--pyi_out={out_root}",
            *[(package / name).as_posix() for name in files],
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {proto_dir}")
        for name in files:
            stem = name.removesuffix(".proto")
            for generated in (f"{stem}_pb2.py", f"{stem}_pb2.pyi", f"{stem}_pb2_grpc.py"):
                pairs.append((out_root / package / generated, source_root / package / generated))
    return pairs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the stubs are stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pairs = generate(Path(tmp))
        if args.check:
            stale = [str(committed.relative_to(ROOT)) for fresh, committed in pairs
                     if not committed.is_file()
                     or not filecmp.cmp(fresh, committed, shallow=False)]
            if stale:
                print(f"stale generated stubs: {', '.join(stale)}; run: make protos")
                return 1
            print("generated stubs are up to date")
            return 0
        for fresh, committed in pairs:
            committed.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(fresh, committed)
            print(f"wrote {committed.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
