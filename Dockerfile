# syntax=docker/dockerfile:1
# hardscore: the CPU image by default, the GPU image (onnxruntime-gpu on CUDA) with FLAVOR=gpu.
#
#   docker build -t hardscore:0.1.0 .
#   docker build -t hardscore:0.1.0-gpu --build-arg FLAVOR=gpu .
#   docker run --rm -p 8001:8001 -p 8000:8000 -p 8002:8002 hardscore:0.1.0
#   docker run --rm --gpus all -p 8001:8001 -p 8000:8000 -p 8002:8002 hardscore:0.1.0-gpu
#
# Stages: base-cpu or base-gpu (the Python the image runs) -> builder (a virtual environment
# made by server/install.sh, the script `make test` runs too, so CI proves the install) ->
# runtime (that environment on a clean base, run by an unprivileged user). The embedded default
# model is package data of hardscore_server, so it is inside the image; mount another model and
# point HARDSCORE_MODEL_DIR (or --model-dir) at it.

ARG FLAVOR=cpu
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# ---- CPU base: Debian's slim Python image ------------------------------------------------------
FROM ${PYTHON_IMAGE} AS base-cpu

# ---- GPU base: the same Python image, no CUDA in it. The gpu extra installs onnxruntime-gpu
# with the CUDA runtime, cuBLAS and cuDNN it was built against (pip packages, loaded by
# onnxruntime.preload_dlls at start-up), so the image cannot drift from ONNX Runtime's CUDA
# major; the host's NVIDIA driver (libcuda.so.1) is mounted by the NVIDIA container toolkit.
# server/gpu_consistency.py (make test) fails if this base ever carries another CUDA.
FROM ${PYTHON_IMAGE} AS base-gpu
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# ---- the flavor's base, shared by the builder and the runtime (same interpreter path) --------
# base-${FLAVOR} names one of the two stages above, not a registry image, so DL3006 (tag the
# image) does not apply.
# hadolint ignore=DL3006
FROM base-${FLAVOR} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# ---- builder: the virtual environment ---------------------------------------------------------
FROM base AS builder
ARG FLAVOR
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY proto/hardscore_wire/ proto/hardscore_wire/
COPY server/ server/
COPY client/ client/
RUN python3 -m venv /opt/hardscore \
    && bash server/install.sh --python /opt/hardscore/bin/python --flavor "${FLAVOR}"

# ---- runtime -----------------------------------------------------------------------------------
FROM base AS runtime
ARG FLAVOR
LABEL org.opencontainers.image.title="hardscore" \
      org.opencontainers.image.description="gRPC scoring service: predictions, hardness and mistakenness for image classifiers" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.hardscore.flavor="${FLAVOR}"
RUN groupadd --system --gid 10001 hardscore \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin hardscore
# Owned by root and read-only to the server: nothing in the image is writable at run time
# (the Helm chart also mounts the root filesystem read-only; only /tmp is writable there).
COPY --from=builder /opt/hardscore /opt/hardscore
# A bare hardscore-server listens on 127.0.0.1 only; in a container it must take every
# interface for published ports to reach it. As environment, not CMD arguments, so that
# `docker run IMAGE --port 9001` keeps it (and --host or -e HARDSCORE_HOST=... still override).
ENV PATH=/opt/hardscore/bin:${PATH} \
    HARDSCORE_HOST=0.0.0.0 \
    HARDSCORE_METRICS_HOST=0.0.0.0
USER 10001:10001
WORKDIR /tmp
# gRPC (hardscore.v1, the Open Inference Protocol, health, reflection), the Open Inference
# Protocol over HTTP/REST, and Prometheus /metrics.
EXPOSE 8001 8000 8002
# The gRPC health service (SERVING once the model is loaded and warmed up) on 127.0.0.1, at the
# port the server (PID 1) was configured with by its flags, environment or --config file: the
# plaintext health-only port when on (it works with TLS on), else the gRPC port; so
# `docker run IMAGE --port 9001` is checked on 9001. Kubernetes runs the chart's own probes.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "hardscore_server.tools.health_probe", "--timeout", "3"]
# Exec form: the server is PID 1 and receives SIGTERM itself (docker stop, Kubernetes), turns
# its health NOT_SERVING, stops accepting and lets accepted calls finish (grace_period_s).
STOPSIGNAL SIGTERM
ENTRYPOINT ["hardscore-server"]
CMD []
