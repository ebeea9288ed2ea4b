# Two images from one file:
#   docker build --target operator -t tradewind-operator:0.1.0 .
#   docker build --target trainer  -t tradewind-trainer:0.1.0 .
#
# One base, Debian bookworm, and Debian's own Python (3.11): no second interpreter, and no
# CUDA base image (torch's wheels bring their CUDA libraries). DEBIAN_BASE names the base:
# hack/build-images.sh makes `debian:bookworm-slim` from Debian's packages on the building
# machine, so no image registry is needed (docs/images.md); elsewhere pin the published one by
# digest: --build-arg DEBIAN_BASE=debian:bookworm-slim@sha256:<digest>.
# Each final stage is the base, python3 and a virtual environment copied from the build
# stages: no compiler, no pip, no pip cache (a BuildKit cache mount), no package lists, no
# source tree. The dependencies are one layer and Tradewind another, so a change to
# tradewind/ rebuilds and pushes in seconds.

ARG DEBIAN_BASE=debian:bookworm-slim

# ---------------------------------------------------------------- python: the runtime
FROM ${DEBIAN_BASE} AS python
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/*

# ---------------------------------------------------------------- python-build: + venvs
# /opt/venv gets no pip of its own: pip runs from /opt/pip with --python /opt/venv/bin/python.
FROM python AS python-build
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/pip \
    && python3 -m venv --without-pip /opt/venv
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# requirements-<extra>.txt: the project's dependencies plus those of one extra, read from
# pyproject.toml, so that layer is rebuilt only when pyproject.toml changes.
COPY pyproject.toml ./
RUN for extra in operator trainer; do \
      python3 -c 'import sys, tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print("\n".join(p["dependencies"] + p["optional-dependencies"][sys.argv[1]]))' \
        "$extra" > "requirements-$extra.txt"; \
    done

# ---------------------------------------------------------------- app: Tradewind itself
# Into /opt/app with /opt/venv's layout (site-packages, bin/tradewind), copied over the
# dependencies in the final stages: a change to tradewind/ makes a small layer of its own,
# not a new copy of the dependencies.
FROM python-build AS app
COPY README.md ./
COPY tradewind ./tradewind
RUN --mount=type=cache,target=/root/.cache/pip \
    site="$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    && /opt/pip/bin/pip --python /opt/venv/bin/python install --no-deps \
       --target "/opt/app${site#/opt/venv}" . \
    && mv "/opt/app${site#/opt/venv}/bin" /opt/app/bin

# ---------------------------------------------------------------- operator: dependencies
FROM python-build AS operator-deps
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/pip/bin/pip --python /opt/venv/bin/python install --requirement requirements-operator.txt

# ---------------------------------------------------------------- operator
FROM python AS operator
LABEL org.opencontainers.image.title="tradewind-operator" \
      org.opencontainers.image.description="Tradewind operator (kopf): TrainingRun, RLRun, Sweep" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 10001 tradewind \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin tradewind \
    && mkdir -p /var/lib/tradewind \
    && chown 10001:10001 /var/lib/tradewind
COPY --from=operator-deps /opt/venv /opt/venv
COPY --from=app /opt/app /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
EXPOSE 8080 9090
ENTRYPOINT ["tradewind", "operator"]
CMD ["--json-logs", "--liveness=http://0.0.0.0:8080/healthz", "--metrics-port=9090"]

# ---------------------------------------------------------------- trainer: dependencies
FROM python-build AS trainer-deps
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/pip/bin/pip --python /opt/venv/bin/python install --requirement requirements-trainer.txt

# ---------------------------------------------------------------- trainer
# The operator runs `python -m tradewind.trainer.launch` (torchrun, TrainingRuns) and
# `python -m tradewind.trainer.rl` (RLRuns) as the container command: `python` and
# `torchrun` are the virtual environment's, first on PATH.
FROM python AS trainer
LABEL org.opencontainers.image.title="tradewind-trainer" \
      org.opencontainers.image.description="Tradewind trainer: torchrun supervised and RL training" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 10001 tradewind \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/tradewind \
       --shell /usr/sbin/nologin tradewind \
    && mkdir -p /var/tmp/tradewind /etc/tradewind \
    && chown 10001:10001 /var/tmp/tradewind
COPY --from=trainer-deps /opt/venv /opt/venv
COPY --from=app /opt/app /opt/venv
# The operator runs training pods as 10001 (tradewind/operator/pod_security.py) with a
# read-only root: /var/tmp/tradewind, /tmp and the home folder are emptyDirs there.
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/tradewind MPLCONFIGDIR=/tmp/matplotlib
USER 10001:10001
WORKDIR /home/tradewind
CMD ["python", "-m", "tradewind.trainer", "--help"]
