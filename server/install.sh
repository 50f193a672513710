#!/usr/bin/env bash
# Installs hardscore into a Python environment: the one install step that both the Docker image
# (Dockerfile, builder stage) and CI (Makefile's venv, run by `make test`) go through.
#
#   server/install.sh [--python PY] [--flavor cpu|gpu] [--editable] [--extras a,b] [--dry-run]
#
#   --python PY     the environment's interpreter (default: python3)
#   --flavor cpu    the server extra, with ONNX Runtime's CPU build (default)
#   --flavor gpu    the gpu extra: ONNX Runtime's CUDA build, onnxruntime-gpu, in place of the
#                   CPU one: both ship the module `onnxruntime`, so only one may be installed
#   --editable      install the working tree in development mode (pip install -e)
#   --extras a,b    optional dependency groups of pyproject.toml (dev, export, demo, ...)
#   --dry-run       print the commands instead of running them
#
# Versions are bounded by constraints.txt. After installing, it imports the package and ONNX
# Runtime and checks that the build the flavor asks for is the importable one.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

python=python3
flavor=cpu
editable=0
extras=""
dry_run=0

usage() {
    sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --python) python="${2:?--python needs a value}"; shift 2 ;;
        --flavor) flavor="${2:?--flavor needs a value}"; shift 2 ;;
        --editable) editable=1; shift ;;
        --extras) extras="${2?--extras needs a value}"; shift 2 ;;
        --dry-run) dry_run=1; shift ;;
        -h | --help) usage 0 ;;
        *) echo "install.sh: unknown argument: $1" >&2; usage 2 ;;
    esac
done

case "$flavor" in
    cpu) keep=onnxruntime; drop=onnxruntime-gpu; extras="${extras:+$extras,}server" ;;
    gpu) keep=onnxruntime-gpu; drop=onnxruntime; extras="${extras:+$extras,}gpu" ;;
    *) echo "install.sh: --flavor must be cpu or gpu, got '$flavor'" >&2; exit 2 ;;
esac

run() {
    if [[ $dry_run -eq 1 ]]; then
        echo "+ $*"
    else
        "$@"
    fi
}

# The version of an installed distribution, empty when it is not installed.
installed_version() {
    if [[ $dry_run -eq 1 ]]; then
        echo "VERSION"
        return
    fi
    "$python" - "$1" <<'EOF'
import sys
from importlib import metadata

try:
    print(metadata.version(sys.argv[1]))
except metadata.PackageNotFoundError:
    print("")
EOF
}

pip=("$python" -m pip --quiet --disable-pip-version-check)
target="."
[[ -n "$extras" ]] && target=".[$extras]"

run "${pip[@]}" install --upgrade pip
if [[ $editable -eq 1 ]]; then
    run "${pip[@]}" install -c constraints.txt -e "$target"
else
    run "${pip[@]}" install -c constraints.txt "$target"
fi

# An environment may hold the other build from an earlier install. Both builds write the same
# module directory, so removing the unwanted one deletes files of the wanted one: reinstall the
# wanted one after.
[[ $dry_run -eq 1 ]] && echo "# only when $drop is installed:"
dropped_version="$(installed_version "$drop")"
if [[ -n "$dropped_version" ]]; then
    run "${pip[@]}" uninstall --yes "$drop"
    kept_version="$(installed_version "$keep")"
    if [[ -z "$kept_version" ]]; then
        run "${pip[@]}" install -c constraints.txt "$keep"
    else
        run "${pip[@]}" install --force-reinstall --no-deps -c constraints.txt \
            "$keep==$kept_version"
    fi
fi

# The installed environment imports, and its ONNX Runtime is the flavor's build.
run "$python" - "$flavor" <<'EOF'
import sys
from importlib import metadata

import onnxruntime

import hardscore_client  # noqa: F401
import hardscore_server  # noqa: F401

flavor = sys.argv[1]
dists = {}
for dist in ("onnxruntime", "onnxruntime-gpu"):
    try:
        dists[dist] = metadata.version(dist)
    except metadata.PackageNotFoundError:
        pass
want = "onnxruntime-gpu" if flavor == "gpu" else "onnxruntime"
if list(dists) != [want]:
    sys.exit(f"install.sh: expected only {want} installed, found {dists}")
providers = onnxruntime.get_available_providers()
if flavor == "gpu" and "CUDAExecutionProvider" not in providers:
    sys.exit(f"install.sh: onnxruntime-gpu lacks CUDAExecutionProvider: {providers}")
print(f"install.sh: hardscore ({flavor}) with {want} {dists[want]}, providers {providers}")
EOF
