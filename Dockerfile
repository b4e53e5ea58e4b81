# syntax=docker/dockerfile:1
#
# Serving image for the defended-inference service, in two flavours chosen by the FLAVOUR build argument:
#   docker build -t defended-inference:0.1.0-cpu .
#   docker build --build-arg FLAVOUR=gpu -t defended-inference:0.1.0-gpu .
# The runtime image holds a Python virtual environment with the service and exactly one onnxruntime build,
# the shipped model repository, and nothing else: no compiler, no pip, no torch, no training or export code.
# The image build was not run on the development machines (no Docker engine there); hadolint and checkov
# lint this file in `make check-deploy` (tests/deploy/test_security.py). See docs/DEPLOY.md.

# NOTE: the CUDA image and onnxruntime-gpu must agree on the CUDA major version: onnxruntime-gpu 1.31 on
# PyPI is built for CUDA 13 and cuDNN 9 (its `cuda` extra resolves to the *-cu13 wheels).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04
ARG ORT_VERSION=1.31.1
# `cpu` (python:slim, onnxruntime) or `gpu` (CUDA runtime with cuDNN, onnxruntime-gpu).
ARG FLAVOUR=cpu

# ---------------------------------------------------------------------------------------------------------
# Builder: a venv with the service and one onnxruntime build, made on the same base image as the runtime so
# that the venv's interpreter path holds there too; pip leaves the venv once it is done.
FROM ${PYTHON_IMAGE} AS python-cpu
ENV ORT_PACKAGE=onnxruntime

FROM ${CUDA_IMAGE} AS python-gpu
ENV ORT_PACKAGE=onnxruntime-gpu
# NOTE: apt versions are not pinned: the base image tag pins the Ubuntu release, and rebuilding picks up
# its security fixes.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install --yes --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

# hadolint ignore=DL3006
FROM python-${FLAVOUR} AS build
ARG FLAVOUR
ARG ORT_VERSION
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install ".[${FLAVOUR}]" "${ORT_PACKAGE}==${ORT_VERSION}" \
    && /opt/venv/bin/pip uninstall --yes pip setuptools

# ---------------------------------------------------------------------------------------------------------
# Runtime bases: the interpreter the venv needs, without pip, and the execution provider of the flavour.
FROM ${PYTHON_IMAGE} AS base-cpu
ENV DEFENDED_PROVIDER=cpu
RUN python -m pip uninstall --yes --disable-pip-version-check pip setuptools wheel

FROM ${CUDA_IMAGE} AS base-gpu
# Every input purified for T steps: on an H100 the adaptive path, whose purifier sees a new batch shape on
# almost every call, was far slower (docs/PERFORMANCE.md, GPU section).
ENV DEFENDED_PROVIDER=cuda DEFENDED_PURIFY_SKIP_Z=none
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install --yes --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/*

# ---------------------------------------------------------------------------------------------------------
# hadolint ignore=DL3006
FROM base-${FLAVOUR} AS runtime
# NOTE: the user exists only to run the service; the venv and the model repository stay owned by root, so
# the service cannot change them.
RUN groupadd --gid 10001 defended \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin defended
COPY --from=build /opt/venv /opt/venv
COPY model_repository /opt/defended/model_repository
# The model repository lives at /opt/defended/model_repository; mount a volume over it (or set
# DEFENDED_MODEL_REPOSITORY to another path) to serve other bundles. Only /tmp must be writable (multipart
# uploads spool there), so the container runs with a read-only root filesystem and a tmpfs on /tmp.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DEFENDED_HOST=0.0.0.0 \
    DEFENDED_PORT=8000 \
    DEFENDED_MODEL_REPOSITORY=/opt/defended/model_repository
USER 10001:10001
EXPOSE 8000
# NOTE: the probe uses the venv's Python (no curl in the image); /healthz answers once the bundles are
# loaded and warmed, because uvicorn only listens after the application's start-up.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as r; r.urlopen('http://127.0.0.1:%s/healthz' % os.environ['DEFENDED_PORT'], timeout=4)"]
# Exec form, no shell in between: python is PID 1 and SIGTERM reaches uvicorn, which stops accepting, lets
# in-flight requests finish for up to DEFENDED_GRACEFUL_SHUTDOWN_SECONDS, and exits.
ENTRYPOINT ["python", "-m", "service"]
