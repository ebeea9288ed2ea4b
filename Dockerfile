# syntax=docker/dockerfile:1
#
# Two images from one file:
#   docker build --target operator -t tradewind-operator:0.1.0 .
#   docker build --target trainer  -t tradewind-trainer:0.1.0 .
#
# The bases are pinned by exact tag. Pin them by digest as well where you build (the
# development machines have no registry access to resolve one):
#   docker buildx imagetools inspect python:3.12.8-slim-bookworm
#   docker build --build-arg PYTHON_BASE=python:3.12.8-slim-bookworm@sha256:<digest> ...
# Each final stage is its build stage's base plus a copied virtual environment: no compiler,
# no pip cache, no package lists, no source tree.

ARG PYTHON_BASE=python:3.12.8-slim-bookworm
ARG CUDA_BASE=nvidia/cuda:12.8.1-runtime-ubuntu24.04

# ---------------------------------------------------------------- operator: build
FROM ${PYTHON_BASE} AS operator-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY tradewind ./tradewind
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir ".[operator]" \
    && /opt/venv/bin/pip uninstall --yes pip

# ---------------------------------------------------------------- operator
FROM ${PYTHON_BASE} AS operator
LABEL org.opencontainers.image.title="tradewind-operator" \
      org.opencontainers.image.description="Tradewind operator (kopf): TrainingRun, RLRun, Sweep" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 10001 tradewind \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin tradewind \
    && mkdir -p /var/lib/tradewind \
    && chown 10001:10001 /var/lib/tradewind
COPY --from=operator-build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
EXPOSE 8080 9090
ENTRYPOINT ["tradewind", "operator"]
CMD ["--json-logs", "--liveness=http://0.0.0.0:8080/healthz", "--metrics-port=9090"]

# ---------------------------------------------------------------- trainer: build
FROM ${CUDA_BASE} AS trainer-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY tradewind ./tradewind
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir ".[trainer]" \
    && /opt/venv/bin/pip uninstall --yes pip

# ---------------------------------------------------------------- trainer
# The operator runs `torchrun ... -m tradewind.trainer` (TrainingRuns) and
# `python -m tradewind.trainer.rl` (RLRuns) as the container command: both are on PATH here.
FROM ${CUDA_BASE} AS trainer
LABEL org.opencontainers.image.title="tradewind-trainer" \
      org.opencontainers.image.description="Tradewind trainer: torchrun supervised and RL training" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV DEBIAN_FRONTEND=noninteractive
# The interpreter the virtual environment was made with, and nothing else.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 tradewind \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/tradewind \
       --shell /usr/sbin/nologin tradewind \
    && mkdir -p /var/tmp/tradewind /etc/tradewind \
    && chown 10001:10001 /var/tmp/tradewind
COPY --from=trainer-build /opt/venv /opt/venv
# The operator runs training pods as 10001 (tradewind/operator/pod_security.py) with a
# read-only root: /var/tmp/tradewind, /tmp and the home folder are emptyDirs there.
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/tradewind MPLCONFIGDIR=/tmp/matplotlib
USER 10001:10001
WORKDIR /home/tradewind
CMD ["python", "-m", "tradewind.trainer", "--help"]
