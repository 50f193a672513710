"""Generates the Python protobuf/gRPC stubs and their type stubs from proto/.

    python proto/generate.py           # write client/hardscore_client/proto/
    python proto/generate.py --check   # exit 1 when the committed stubs are stale

Each .proto under proto/<package path>/ is compiled under the import path
hardscore_client/proto/, so the generated modules import each other as
``hardscore_client.proto.<name>_pb2`` while the wire package (e.g. hardscore.v1) is unchanged.
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
PROTO_DIRS = [ROOT / "proto" / "hardscore" / "v1", ROOT / "proto" / "inference"]
OUT_PACKAGE = Path("hardscore_client") / "proto"
OUT_DIR = ROOT / "client" / OUT_PACKAGE


def generate(out_root: Path) -> list[Path]:
    """Compiles every .proto into ``out_root``/hardscore_client/proto; returns the files."""
    grpc_include = Path(protoc.__file__).parent / "_proto"
    for proto_dir in PROTO_DIRS:
        if not proto_dir.is_dir():
            continue
        files = sorted(p.name for p in proto_dir.glob("*.proto"))
        args = [
            "grpc_tools.protoc",
            f"-I{OUT_PACKAGE.as_posix()}={proto_dir}",
            f"-I{grpc_include}",
            f"--python_out={out_root}",
            f"--grpc_python_out={out_root}",
            f"--pyi_out={out_root}",
            *[(OUT_PACKAGE / name).as_posix() for name in files],
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {proto_dir}")
    out = out_root / OUT_PACKAGE
    (out / "__init__.py").write_text('"""Generated protobuf and gRPC stubs: do not edit."""\n')
    return sorted(p for p in out.iterdir() if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the stubs are stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        if args.check:
            names = {p.name for p in fresh}
            committed = {p.name for p in OUT_DIR.glob("*") if p.is_file()}
            stale = sorted(
                n for n in names | committed
                if n not in names or n not in committed
                or not filecmp.cmp(Path(tmp) / OUT_PACKAGE / n, OUT_DIR / n, shallow=False)
            )
            if stale:
                print(f"stale generated stubs: {', '.join(stale)}; run: make protos")
                return 1
            print("generated stubs are up to date")
            return 0
        if OUT_DIR.exists():
            shutil.rmtree(OUT_DIR)
        shutil.copytree(Path(tmp) / OUT_PACKAGE, OUT_DIR)
    print(f"wrote {OUT_DIR.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
