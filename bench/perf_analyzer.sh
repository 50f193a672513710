#!/usr/bin/env bash
# Load-tests hardscore's Open Inference Protocol endpoint with Triton's stock perf_analyzer.
#
#   bench/perf_analyzer.sh [--model-dir DIR] [--concurrency 1:16:5] [--interval-ms 2000]
#                          [--batch-size 1] [--max-trials 10] [--stability 25] [--csv FILE]
#                          [--fixed-inputs N] [--protocol grpc|http] [--model NAME]
#                          [-- EXTRA perf_analyzer ARGS...]
#   bench/perf_analyzer.sh --fetch-only    # fetch perf_analyzer, print its path, exit
#
# --protocol http drives the KServe V2 REST port (binary tensors); --model picks a served name
# (default: the model's own; <model>-pixels and <model>-files take the other input forms).
# Each concurrency level is measured in windows of --interval-ms until three in a row agree
# within --stability percent, at most --max-trials windows (so at most 20 s per level by default).
#
# perf_analyzer is not in the current `perf-analyzer` PyPI package (a placeholder); the binary
# ships inside the tritonclient==2.50.0 manylinux wheel. It links libb64 (Debian: libb64-0d) and
# libcudart.so.12 even when no GPU is used; libcudart comes from the nvidia-cuda-runtime-cu12
# wheel. Both wheels are fetched once with `pip download --no-deps` into $PERF_ANALYZER_CACHE
# (default .cache/perf_analyzer in the repository); libb64-0d is installed with apt-get when running as
# root, else the script says what to install.
#
# The server runs on 127.0.0.1 with a free port and is stopped on exit. perf_analyzer sends its
# default random data: FP32 images full of NaN and infinity, which the server answers (NaN
# scores). The table printed at the end is throughput and p50/p99 latency per concurrency,
# from perf_analyzer's own CSV (kept with --csv FILE).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
[[ -x "$PYTHON" ]] || PYTHON="$(command -v python3)"
CACHE="${PERF_ANALYZER_CACHE:-$REPO/.cache/perf_analyzer}"
TRITONCLIENT_VERSION=2.50.0

MODEL_DIR=""
CONCURRENCY="1:16:5"
INTERVAL_MS=2000
BATCH_SIZE=1
MAX_TRIALS=10
STABILITY=25
CSV_OUT=""
FIXED_INPUTS=0
PROTOCOL=grpc
MODEL_NAME=""
FETCH_ONLY=0
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --model-dir) MODEL_DIR="$2"; shift 2 ;;
    --concurrency) CONCURRENCY="$2"; shift 2 ;;
    --interval-ms) INTERVAL_MS="$2"; shift 2 ;;
    --batch-size) BATCH_SIZE="$2"; shift 2 ;;
    --max-trials) MAX_TRIALS="$2"; shift 2 ;;
    --stability) STABILITY="$2"; shift 2 ;;
    --csv) CSV_OUT="$2"; shift 2 ;;
    --fixed-inputs) FIXED_INPUTS="$2"; shift 2 ;;
    --protocol) PROTOCOL="$2"; shift 2 ;;
    --model) MODEL_NAME="$2"; shift 2 ;;
    --fetch-only) FETCH_ONLY=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "perf_analyzer.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

# -- perf_analyzer and its libraries ------------------------------------------------------------
BIN="$CACHE/tritonclient-$TRITONCLIENT_VERSION.data/data/bin/perf_analyzer"
CUDART_DIR="$CACHE/nvidia/cuda_runtime/lib"
if [[ ! -x "$BIN" || ! -e "$CUDART_DIR/libcudart.so.12" ]]; then
  echo "fetching tritonclient==$TRITONCLIENT_VERSION and nvidia-cuda-runtime-cu12 into $CACHE"
  mkdir -p "$CACHE/wheels"
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
    --platform manylinux1_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --dest "$CACHE/wheels" \
    "tritonclient==$TRITONCLIENT_VERSION" nvidia-cuda-runtime-cu12
  "$PYTHON" - "$CACHE" "$TRITONCLIENT_VERSION" <<'EOF'
import glob, os, sys, zipfile
cache, version = sys.argv[1], sys.argv[2]
wanted = {
    "tritonclient-*.whl": f"tritonclient-{version}.data/data/bin/perf_analyzer",
    "nvidia_cuda_runtime_cu12-*.whl": "nvidia/cuda_runtime/lib/libcudart.so.12",
}
for pattern, member in wanted.items():
    (wheel,) = sorted(glob.glob(os.path.join(cache, "wheels", pattern)))[-1:]
    with zipfile.ZipFile(wheel) as z:
        path = z.extract(member, cache)
    os.chmod(path, 0o755)
EOF
fi
if ! ldconfig -p | grep -q 'libb64\.so\.0d'; then
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    echo "installing libb64-0d (perf_analyzer links libb64.so.0d)"
    apt-get install -y -q libb64-0d >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null && apt-get install -y -q libb64-0d >/dev/null; }
  else
    echo "perf_analyzer needs libb64.so.0d: install it (Debian/Ubuntu: apt-get install" \
      "libb64-0d) and run again" >&2
    exit 3
  fi
fi
export LD_LIBRARY_PATH="$CUDART_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [[ "$FETCH_ONLY" == 1 ]]; then
  echo "$BIN"
  exit 0
fi
[[ "$PROTOCOL" == grpc || "$PROTOCOL" == http ]] \
  || { echo "perf_analyzer.sh: --protocol must be grpc or http" >&2; exit 2; }

# -- the server ---------------------------------------------------------------------------------
MODEL="$("$PYTHON" - "$MODEL_DIR" <<'EOF'
import sys
from pathlib import Path
from hardscore_server.model.model_dir import DEFAULT_MODEL_DIR, load_manifest
print(load_manifest(Path(sys.argv[1]) if sys.argv[1] else DEFAULT_MODEL_DIR).name)
EOF
)"
WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

SERVER_ARGS=(--host 127.0.0.1 --port 0 --http-port 0 --metrics-port -1 --grace-period-s 5)
[[ -n "$MODEL_DIR" ]] && SERVER_ARGS+=(--model-dir "$MODEL_DIR")
# Created here, not by the background server's redirect: the loop below may read it before
# the server process has opened it.
: >"$WORK/server.log"
PYTHONUNBUFFERED=1 "$PYTHON" -m hardscore_server.main "${SERVER_ARGS[@]}" >>"$WORK/server.log" 2>&1 &
SERVER_PID=$!
PORT=""
HTTP_PORT=""
for _ in $(seq 1 600); do
  PORT="$(sed -n 's/.*serving gRPC on [^ ]*:\([0-9]*\),.*/\1/p' "$WORK/server.log" | head -n1)"
  HTTP_PORT="$(sed -n 's/.*serving HTTP (KServe V2 REST) on [^ ]*:\([0-9]*\).*/\1/p' \
    "$WORK/server.log" | head -n1)"
  [[ -n "$PORT" ]] && break
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "the server did not start:" >&2; cat "$WORK/server.log" >&2; exit 4
  fi
  sleep 0.1
done
[[ -n "$PORT" ]] || { echo "the server did not start in 60 s" >&2; cat "$WORK/server.log" >&2; exit 4; }
echo "server: model $MODEL on 127.0.0.1:$PORT ($(grep -o 'on [A-Za-z]*ExecutionProvider' \
  "$WORK/server.log" | head -n1 | cut -c4-))"

# --fixed-inputs N: N seeded normal FP32 images of the model's input shape as --input-data
# (perf_analyzer cycles through them) instead of its random NaN/Inf data.
if [[ "$FIXED_INPUTS" -gt 0 ]]; then
  "$PYTHON" - "$MODEL_DIR" "$FIXED_INPUTS" "$WORK/inputs.json" <<'EOF'
import json, sys
from pathlib import Path
import numpy as np
from hardscore_server.model.model_dir import DEFAULT_MODEL_DIR, load_manifest
m = load_manifest(Path(sys.argv[1]) if sys.argv[1] else DEFAULT_MODEL_DIR)
shape = [m.input_channels, m.input_height, m.input_width]
rng = np.random.default_rng(0)
data = [{m.input_name: {"content": rng.normal(size=shape).astype(np.float32).ravel().tolist(),
                        "shape": shape}} for _ in range(int(sys.argv[2]))]
Path(sys.argv[3]).write_text(json.dumps({"data": data}))
EOF
  EXTRA+=(--input-data "$WORK/inputs.json")
fi

# -- the load test ------------------------------------------------------------------------------
[[ -n "$MODEL_NAME" ]] && MODEL="$MODEL_NAME"
[[ "$PROTOCOL" == http ]] && PORT="$HTTP_PORT"
echo "perf_analyzer -m $MODEL -i $PROTOCOL -u 127.0.0.1:$PORT --concurrency-range $CONCURRENCY" \
  "-b $BATCH_SIZE -p $INTERVAL_MS --max-trials $MAX_TRIALS --stability-percentage $STABILITY" \
  "${EXTRA[*]}"
"$BIN" -m "$MODEL" -i "$PROTOCOL" -u "127.0.0.1:$PORT" --concurrency-range "$CONCURRENCY" \
  -b "$BATCH_SIZE" -p "$INTERVAL_MS" --max-trials "$MAX_TRIALS" \
  --stability-percentage "$STABILITY" -f "$WORK/results.csv" \
  ${EXTRA[@]+"${EXTRA[@]}"} >"$WORK/perf_analyzer.log" 2>&1 \
  || { cat "$WORK/perf_analyzer.log" >&2; echo "perf_analyzer failed" >&2; exit 5; }
# the server's own counts (ModelStatistics), per concurrency: samples / model runs = mean batch
awk '/^Request concurrency:/ {c=$3} /Inference count:/ {i=$3} /Execution count:/ {
  if ($3 > 0) printf "concurrency %s: mean batch %.2f (%d inferences / %d executions)\n", c, i/$3, i, $3}' \
  "$WORK/perf_analyzer.log"
if grep -qE 'Traceback|ERROR' "$WORK/server.log"; then
  echo "the server logged errors:" >&2; grep -E -A3 'Traceback|ERROR' "$WORK/server.log" >&2
fi
[[ -n "$CSV_OUT" ]] && cp "$WORK/results.csv" "$CSV_OUT"

# What was sent, for the table's heading: by the served name's input form and --input-data.
case "$MODEL" in
  *-pixels) INPUTS="perf_analyzer's default random UINT8 pixels" ;;
  *-files) INPUTS="perf_analyzer's default random bytes (no image: each sample fails)" ;;
  *) INPUTS="perf_analyzer's default random FP32 input" ;;
esac
for ((i = 0; i + 1 < ${#EXTRA[@]}; i++)); do
  if [[ "${EXTRA[$i]}" == --input-data ]]; then
    case "$MODEL" in
      *-files) INPUTS="encoded image files (PNG, JPEG...) from --input-data ${EXTRA[$((i + 1))]##*/}" ;;
      *-pixels) INPUTS="UINT8 pixels from --input-data ${EXTRA[$((i + 1))]##*/}" ;;
      *) INPUTS="FP32 tensors from --input-data ${EXTRA[$((i + 1))]##*/}" ;;
    esac
  fi
done
[[ "$FIXED_INPUTS" -gt 0 ]] && INPUTS="$FIXED_INPUTS fixed seeded FP32 images (--fixed-inputs)"
"$PYTHON" - "$WORK/results.csv" "$BATCH_SIZE" "$INPUTS" <<'EOF'
import csv, sys
rows = sorted(csv.DictReader(open(sys.argv[1])), key=lambda r: int(r["Concurrency"]))
print(f"batch size {sys.argv[2]}, {sys.argv[3]}; latencies in ms")
print(f"{'concurrency':>11} {'infer/s':>9} {'p50':>7} {'p99':>7} {'avg':>7} "
      f"{'server queue':>12} {'server compute':>14}")
for r in rows:
    def ms(*keys: str) -> float:
        return sum(int(r[k]) for k in keys) / 1000.0
    compute = ms("Server Compute Input", "Server Compute Infer", "Server Compute Output")
    avg = ms("Client Send", "Network+Server Send/Recv", "Server Queue", "Server Compute Input",
             "Server Compute Infer", "Server Compute Output", "Client Recv")
    print(f"{r['Concurrency']:>11} {float(r['Inferences/Second']):>9.1f} "
          f"{ms('p50 latency'):>7.2f} {ms('p99 latency'):>7.2f} {avg:>7.2f} "
          f"{ms('Server Queue'):>12.2f} {compute:>14.2f}")
EOF
