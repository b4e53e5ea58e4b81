# syntax=docker/dockerfile:1
#
# Serving image for the defended-inference service, in two flavours (build targets):
#   docker build --target cpu -t defended-inference:0.1.0-cpu .
#   docker build --target gpu -t defended-inference:0.1.0-gpu .
# Each runtime stage holds a Python virtual environment with the service and exactly one onnxruntime build,
# the shipped model repository, and nothing else: no compiler, no pip, no torch, no training or export code.
# The image build was not run on the development machines (no Docker engine there); hadolint and checkov
# lint this file in `make check-deploy` (tests/deploy/test_dockerfile.py). See docs/DEPLOY.md.

# NOTE: the CUDA image and onnxruntime-gpu must agree on the CUDA major version: onnxruntime-gpu 1.31 on
# PyPI is built for CUDA 13 and cuDNN 9 (its `cuda` extra resolves to the *-cu13 wheels).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04
ARG ORT_VERSION=1.31.1

# ---------------------------------------------------------------------------------------------------------
# CPU: builder and runtime share the python:slim base, so the venv's interpreter path is the same in both.
FROM ${PYTHON_IMAGE} AS build-cpu
ARG ORT_VERSION
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install ".[cpu]" "onnxruntime==${ORT_VERSION}" \
    && /opt/venv/bin/pip uninstall --yes pip setuptools

FROM ${PYTHON_IMAGE} AS cpu
COPY --from=build-cpu /opt/venv /opt/venv
# NOTE: the user is created before the model repository is copied so the files stay owned by root and
# read-only to the service.
RUN groupadd --gid 10001 defended \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin defended
COPY model_repository /opt/defended/model_repository
# The model repository lives at /opt/defended/model_repository; mount a volume over it (or set
# DEFENDED_MODEL_REPOSITORY to another path) to serve other bundles. Only /tmp must be writable (multipart
# uploads spool there), so the container runs with a read-only root filesystem and a tmpfs on /tmp.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DEFENDED_HOST=0.0.0.0 \
    DEFENDED_PORT=8000 \
    DEFENDED_PROVIDER=cpu \
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

# ---------------------------------------------------------------------------------------------------------
# GPU: the CUDA runtime image (CUDA + cuDNN libraries) with Ubuntu's Python; onnxruntime-gpu finds the
# libraries on the default loader path.
FROM ${CUDA_IMAGE} AS build-gpu
ARG ORT_VERSION
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install ".[gpu]" "onnxruntime-gpu==${ORT_VERSION}" \
    && /opt/venv/bin/pip uninstall --yes pip setuptools

FROM ${CUDA_IMAGE} AS gpu
ENV DEBIAN_FRONTEND=noninteractive
# NOTE: apt versions are not pinned: the base image tag pins the distribution release, and rebuilding picks
# up Ubuntu's security fixes for python3.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 defended \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin defended
COPY --from=build-gpu /opt/venv /opt/venv
COPY model_repository /opt/defended/model_repository
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DEFENDED_HOST=0.0.0.0 \
    DEFENDED_PORT=8000 \
    DEFENDED_PROVIDER=cuda \
    DEFENDED_MODEL_REPOSITORY=/opt/defended/model_repository
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as r; r.urlopen('http://127.0.0.1:%s/healthz' % os.environ['DEFENDED_PORT'], timeout=4)"]
ENTRYPOINT ["python", "-m", "service"]
