#!/usr/bin/env bash
# Build this machine's Debian base image from Debian's packages (mmdebstrap), make it the
# image the Dockerfile's FROM names, and optionally build the two Tradewind images. Offline
# from any image registry: nothing is pulled, only Debian packages (and, in the image
# builds, PyPI wheels) are fetched.
#
#   1. Installs what is missing (docker.io, mmdebstrap, apache2-utils) when run as root;
#      links the buildx plugin (built from its Go module) when `docker` is a CLI >= 23.
#   2. Starts dockerd unless one answers: BuildKit on, no iptables rules of its own, the
#      FORWARD policy left as it is; one NAT rule (tagged "tradewind-docker") lets build
#      containers on docker0 reach the network.
#   3. Builds the base (bookworm minbase, no docs/man/locales, like the official slim image)
#      into <cache>/images/debian-bookworm-<key>.tar (+ .packages: every package=version),
#      <key> = recipe + apt sources + the trust files below; reused for BASE_MAX_AGE_DAYS.
#   4. `docker import`s it as BASE_TAG unless that tag already holds the same tarball
#      (label dev.tradewind.base.sha256).
#   5. --build: `docker build --target operator|trainer -t tradewind-<t>:0.1.0 .` and sizes.
#   6. --chart-images REGISTRY: builds the chart's bundled MinIO and MLflow on the same base
#      (images/minio, images/mlflow), pushes them as REGISTRY/minio:<MINIO_VERSION> and
#      REGISTRY/mlflow:<mlflow version of .venv>, and prints the chart's --set flags for
#      them. Needs `docker login` to REGISTRY's host, as the README's push does.
#
# The base carries this machine's trust configuration, as a corporate base image does: the
# CA bundle (/etc/ssl/certs/ca-certificates.crt) and /etc/pip.conf are copied in when the
# host has them, so apt and pip inside builds trust an inspecting proxy the host trusts.
#
# Usage: hack/build-images.sh [--build] [--chart-images REGISTRY]
#
# Environment:
#   TRADEWIND_CACHE            cache root (default $HOME/.cache/tradewind)
#   TRADEWIND_DEBIAN_SOURCES   apt sources file(s) for the base, space-separated (default: the
#                              host's own); a snapshot mirror's sources pin the base exactly
#   BASE_TAG                   tag of the base (default: the Dockerfile's DEBIAN_BASE)
#   BASE_MAX_AGE_DAYS          rebuild a cached base older than this (default 7)
#   DOCKER                     docker client (default: one whose `docker build` does BuildKit)
#   MLFLOW_VERSION             mlflow of the chart's MLflow image (default: the one in .venv)
#   BUILD_CACHE_KEEP           BuildKit cache kept, least recently used pruned first (default
#                              16gb: the trainer's dependency layers and wheels stay cached)
set -euo pipefail
shopt -s inherit_errexit

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_ROOT="${TRADEWIND_CACHE:-$HOME/.cache/tradewind}"
IMAGE_CACHE="$CACHE_ROOT/images"
DOCKER_STATE="$CACHE_ROOT/docker"
SUITE=bookworm
# docker0's subnet: fixed so the one NAT rule can name it.
DOCKER_BIP=172.31.254.1/24
DOCKER_SUBNET=172.31.254.0/24
NAT_TAG=tradewind-docker
TRUST_FILES=(/etc/ssl/certs/ca-certificates.crt /etc/pip.conf)
BASE_MAX_AGE_DAYS="${BASE_MAX_AGE_DAYS:-7}"
BUILD_CACHE_KEEP="${BUILD_CACHE_KEEP:-16gb}"

log() { printf '[build-images] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- packages
ensure_packages() {
  local missing=() cmd pkg
  for pair in dockerd:docker.io mmdebstrap:mmdebstrap htpasswd:apache2-utils; do
    cmd="${pair%%:*}"; pkg="${pair#*:}"
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
  done
  ((${#missing[@]})) || return 0
  ((EUID == 0)) || die "missing packages: ${missing[*]} (run as root, or apt-get install them)"
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# `docker build` must use BuildKit (RUN --mount). Debian's 20.10 CLI does when the daemon
# announces BuildKit as its builder; a docker >= 23 CLI only through the buildx plugin, which
# is built from its Go module (hack/build-binaries.sh buildx) and linked where every docker
# CLI of this user finds it, so `docker build` works whichever docker is first on PATH.
docker_major() {
  "$1" version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1
}

ensure_buildx_plugin() {
  local docker plugins
  docker="$(command -v docker || true)"
  [[ -n "$docker" ]] || return 0
  [[ "$(docker_major "$docker")" -ge 23 ]] 2>/dev/null || return 0
  "$docker" buildx version >/dev/null 2>&1 && return 0
  log "$docker needs the buildx plugin for BuildKit: building it (cached)"
  "$REPO_DIR/hack/build-binaries.sh" buildx >&2
  plugins="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
  mkdir -p "$plugins"
  ln -sfn "$CACHE_ROOT/bin/current/buildx" "$plugins/docker-buildx"
  "$docker" buildx version >/dev/null 2>&1 || die "docker buildx does not run ($plugins/docker-buildx)"
}

find_docker() {
  if [[ -n "${DOCKER:-}" ]]; then echo "$DOCKER"; return; fi
  if docker buildx version >/dev/null 2>&1; then command -v docker; return; fi
  if [[ "$(docker_major docker)" -lt 23 ]] 2>/dev/null; then command -v docker; return; fi
  [[ -x /usr/bin/docker ]] && { echo /usr/bin/docker; return; }
  die "no docker client with BuildKit (install docker.io, or the buildx plugin)"
}

# ---------------------------------------------------------------- dockerd
write_daemon_config() {
  mkdir -p "$DOCKER_STATE"
  # No iptables/ip6tables rules and no masquerading from dockerd: it would set the
  # FORWARD policy to DROP, which cuts the dev stack's own bridge. BuildKit's RUN steps
  # use the "bridge" network (docker0), so docker0 stays, on a fixed subnet.
  cat > "$DOCKER_STATE/daemon.json.tmp" <<EOF
{
  "iptables": false,
  "ip6tables": false,
  "ip-masq": false,
  "bip": "$DOCKER_BIP",
  "features": {"buildkit": true}
}
EOF
  mv "$DOCKER_STATE/daemon.json.tmp" "$DOCKER_STATE/daemon.json"
}

ensure_dockerd() {
  if "$DOCKER_CLI" version --format '{{.Server.Version}}' >/dev/null 2>&1; then
    return 0
  fi
  ((EUID == 0)) || die "no docker daemon answers and only root can start one"
  write_daemon_config
  log "starting dockerd (log: $DOCKER_STATE/dockerd.log)"
  setsid nohup dockerd --config-file "$DOCKER_STATE/daemon.json" \
    >>"$DOCKER_STATE/dockerd.log" 2>&1 </dev/null &
  echo $! > "$DOCKER_STATE/dockerd.pid"
  for _ in $(seq 1 60); do
    "$DOCKER_CLI" version --format '{{.Server.Version}}' >/dev/null 2>&1 && return 0
    sleep 1
  done
  tail -n 20 "$DOCKER_STATE/dockerd.log" >&2
  die "dockerd did not answer within 60 s"
}

# Build containers sit on docker0 behind this one rule; dockerd itself adds none.
ensure_build_nat() {
  ((EUID == 0)) || return 0
  command -v iptables >/dev/null 2>&1 || return 0
  local rule=(-s "$DOCKER_SUBNET" ! -o docker0 -m comment --comment "$NAT_TAG" -j MASQUERADE)
  iptables -t nat -C POSTROUTING "${rule[@]}" 2>/dev/null || iptables -t nat -A POSTROUTING "${rule[@]}"
}

# Every build adds to BuildKit's cache and every rebuild leaves an untagged image: without a
# bound they filled this machine's disk (37 GB of cache after a day of builds).
bound_build_storage() {
  "$DOCKER_CLI" image prune --force >/dev/null
  "$DOCKER_CLI" builder prune --force --keep-storage "$BUILD_CACHE_KEEP" >/dev/null
}

# ---------------------------------------------------------------- base image
sources_files() {
  local f
  if [[ -n "${TRADEWIND_DEBIAN_SOURCES:-}" ]]; then
    # shellcheck disable=SC2086  # a space-separated list by design
    printf '%s\n' $TRADEWIND_DEBIAN_SOURCES
    return
  fi
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [[ -s "$f" ]] && grep -qE "^[^#]*\b$SUITE\b" "$f" && echo "$f"
  done
  return 0
}

# Everything that decides the base's content, as text: its hash is the cache key. Debian's
# package versions are not in it: a cached base is kept BASE_MAX_AGE_DAYS (point releases
# and security updates arrive at the next rebuild), or pinned for good with a snapshot
# mirror in TRADEWIND_DEBIAN_SOURCES.
base_recipe() {
  local f
  echo "recipe=6 suite=$SUITE variant=minbase"
  declare -f mmdebstrap_base
  for f in $(sources_files); do echo "--- $f"; cat "$f"; done
  for f in "${TRUST_FILES[@]}"; do [[ -f "$f" ]] && sha256sum "$f"; done
  return 0
}

# shellcheck disable=SC2016  # the hooks are shell code that mmdebstrap runs: $1 is the chroot
mmdebstrap_base() {
  local out="$1" manifest="$2" hook trust
  local mirrors=()
  mapfile -t mirrors < <(sources_files)
  # Copy the host's trust files in, when it has them (see the header).
  # The bundle goes to /usr/local/share/ca-certificates too: a later install of the
  # ca-certificates package (python3-venv pulls it in) rebuilds the bundle from there.
  trust='for f in '"${TRUST_FILES[*]}"'; do [ -f "$f" ] || continue; mkdir -p "$1$(dirname "$f")"; cp "$f" "$1$f"; done'
  trust+='; f=/etc/ssl/certs/ca-certificates.crt; [ ! -f "$f" ] || { mkdir -p "$1/usr/local/share/ca-certificates"; cp "$f" "$1/usr/local/share/ca-certificates/host-trust.crt"; }'
  # The package list, next to the tarball: what this base pins.
  hook='chroot "$1" dpkg-query -W -f '"'"'${Package}=${Version}\n'"'"' > '"'$manifest'"'; '
  hook+='rm -f "$1/etc/resolv.conf" "$1/etc/hostname"; rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/log/apt/* "$1"/tmp/*'
  # The official slim image's dpkg and apt settings: no docs, man pages or locales, no
  # translations, no package cache kept after install.
  # merged-usr hook: /usr merged up front with usr-is-merged, instead of the usrmerge
  # package, which pulls in perl (50 MB).
  # File times are the build day's: two builds of one day from one index are identical.
  SOURCE_DATE_EPOCH="$(date -u -d "$(date -u +%Y-%m-%d)" +%s)" mmdebstrap --variant=minbase --quiet \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/groff/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/lintian/*' \
    --dpkgopt='path-exclude=/usr/share/linda/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --aptopt='Acquire::Languages "none"' \
    --aptopt='APT::AutoRemove::SuggestsImportant "false"' \
    --aptopt='Dir::Cache::pkgcache ""' \
    --aptopt='Dir::Cache::srcpkgcache ""' \
    --aptopt='DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb || true"; }' \
    --customize-hook="$trust" \
    --customize-hook="$hook" \
    "$SUITE" "$out" "${mirrors[@]}"
}

# Print the path of the cached base tarball, building it if needed.
ensure_base_tar() {
  local key tar tmp start
  key="$(base_recipe | sha256sum | cut -c1-16)"
  tar="$IMAGE_CACHE/debian-$SUITE-$key.tar"
  if [[ -s "$tar" && -z "$(find "$tar" -mtime "+$BASE_MAX_AGE_DAYS")" ]]; then
    log "base: cached $tar"
  else
    mkdir -p "$IMAGE_CACHE"
    tmp="$IMAGE_CACHE/.tmp-debian-$SUITE-$key.$$.tar"
    log "base: mmdebstrap $SUITE minbase -> $tar"
    start=$SECONDS
    mmdebstrap_base "$tmp" "$tar.packages" >"$tar.log" 2>&1 || { rm -f "$tmp"; tail -n 30 "$tar.log" >&2; die "mmdebstrap failed (log: $tar.log)"; }
    mv -f "$tmp" "$tar"
    sha256sum "$tar" | cut -d' ' -f1 > "$tar.sha256"
    # Bases of other recipes are never used again.
    find "$IMAGE_CACHE" -maxdepth 1 -name "debian-$SUITE-*.tar*" ! -name "${tar##*/}*" -delete
    log "base: built in $((SECONDS - start))s ($(du -h "$tar" | cut -f1))"
  fi
  [[ -s "$tar.sha256" ]] || sha256sum "$tar" | cut -d' ' -f1 > "$tar.sha256"
  echo "$tar"
}

dockerfile_base_tag() {
  sed -n 's/^ARG DEBIAN_BASE=//p' "$REPO_DIR/Dockerfile" | head -n1
}

import_base() {
  local tar="$1" tag="$2" want have
  want="$(cat "$tar.sha256")"
  have="$("$DOCKER_CLI" image inspect --format '{{ index .Config.Labels "dev.tradewind.base.sha256" }}' "$tag" 2>/dev/null || true)"
  if [[ "$have" == "$want" ]]; then
    log "base: $tag already holds ${want:0:12}"
    return 0
  fi
  # The same tarball imported before (tradewind-base:<sha>): tag that image, so that the
  # image builds on top of it stay cached (every import makes a new image ID).
  have="$("$DOCKER_CLI" image inspect --format '{{ index .Config.Labels "dev.tradewind.base.sha256" }}' "tradewind-base:${want:0:12}" 2>/dev/null || true)"
  if [[ "$have" == "$want" ]]; then
    log "base: $tag <- tradewind-base:${want:0:12}"
    "$DOCKER_CLI" tag "tradewind-base:${want:0:12}" "$tag"
    return 0
  fi
  log "base: docker import -> $tag (sha256 ${want:0:12})"
  "$DOCKER_CLI" import \
    --change "LABEL dev.tradewind.base.sha256=$want dev.tradewind.base.suite=$SUITE" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' \
    "$tar" "$tag" >/dev/null
  # Older bases keep their tradewind-base:<sha> tag only until the next import.
  "$DOCKER_CLI" images --format '{{.Repository}}:{{.Tag}}' tradewind-base |
    grep -v ":${want:0:12}\$" | xargs -r "$DOCKER_CLI" rmi >/dev/null 2>&1 || true
  "$DOCKER_CLI" tag "$tag" "tradewind-base:${want:0:12}"
}

# ---------------------------------------------------------------- images
build_images() {
  local t start
  for t in operator trainer; do
    start=$SECONDS
    log "docker build --target $t -t tradewind-$t:0.1.0 ."
    (cd "$REPO_DIR" && "$DOCKER_CLI" build --target "$t" -t "tradewind-$t:0.1.0" .)
    log "$t: built in $((SECONDS - start))s"
  done
  "$DOCKER_CLI" images --format 'table {{.Repository}}:{{.Tag}}\t{{.ID}}\t{{.Size}}' |
    grep -E 'REPOSITORY|tradewind|debian' >&2
}

# The chart's bundled MinIO and MLflow (values minio.image, mlflowServer.image), built on the
# same base as the Tradewind images, tagged with the versions they hold, and pushed.
build_chart_images() {
  local registry="$1" minio_bin minio_version mlflow_version start
  minio_bin="$(readlink -f "$CACHE_ROOT/bin/current/minio" || true)"
  [[ -x "$minio_bin" ]] || die "no minio binary in $CACHE_ROOT/bin/current: hack/build-binaries.sh minio"
  minio_version="$(sed -n 's/^version=//p' "$(dirname "$minio_bin")/.build-info" 2>/dev/null || true)"
  [[ -n "$minio_version" ]] || die "no version in $(dirname "$minio_bin")/.build-info"
  mlflow_version="${MLFLOW_VERSION:-$("$REPO_DIR/.venv/bin/python" -c 'import importlib.metadata as m; print(m.version("mlflow"))' 2>/dev/null || true)}"
  [[ -n "$mlflow_version" ]] || die "no mlflow in $REPO_DIR/.venv: set MLFLOW_VERSION"
  start=$SECONDS
  log "docker build images/minio -> $registry/minio:$minio_version"
  # The context is the binary's own folder: nothing else is sent to the builder.
  "$DOCKER_CLI" build -f "$REPO_DIR/images/minio/Dockerfile" --build-arg "MINIO_VERSION=$minio_version" \
    -t "$registry/minio:$minio_version" "$(dirname "$minio_bin")"
  log "docker build images/mlflow -> $registry/mlflow:$mlflow_version"
  "$DOCKER_CLI" build --build-arg "MLFLOW_VERSION=$mlflow_version" \
    -t "$registry/mlflow:$mlflow_version" "$REPO_DIR/images/mlflow"
  log "chart images: built in $((SECONDS - start))s"
  start=$SECONDS
  "$DOCKER_CLI" push "$registry/minio:$minio_version"
  "$DOCKER_CLI" push "$registry/mlflow:$mlflow_version"
  log "chart images: pushed in $((SECONDS - start))s"
  "$DOCKER_CLI" images --format 'table {{.Repository}}:{{.Tag}}\t{{.ID}}\t{{.Size}}' |
    grep -E "REPOSITORY|$registry/(minio|mlflow):" >&2
  log "helm flags: --set minio.image.repository=$registry/minio --set minio.image.tag=$minio_version" \
    "--set mlflowServer.image.repository=$registry/mlflow --set mlflowServer.image.tag=$mlflow_version"
}

main() {
  local build=0 chart_registry="" tar tag
  while (($#)); do
    case "$1" in
      --build) build=1 ;;
      --chart-images)
        (($# >= 2)) || die "--chart-images needs a registry (e.g. 127.0.0.1:5000/ml)"
        chart_registry="$2"; shift ;;
      -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
      *) die "unknown argument '$1' (see --help)" ;;
    esac
    shift
  done
  ensure_packages
  ensure_buildx_plugin
  DOCKER_CLI="$(find_docker)"
  ensure_dockerd
  ensure_build_nat
  bound_build_storage
  tag="${BASE_TAG:-$(dockerfile_base_tag)}"
  [[ -n "$tag" ]] || die "no ARG DEBIAN_BASE=... in Dockerfile and no BASE_TAG"
  tar="$(ensure_base_tar)"
  import_base "$tar" "$tag"
  ((build)) && build_images
  [[ -z "$chart_registry" ]] || build_chart_images "$chart_registry"
  log "ready: base $tag; docker client $DOCKER_CLI"
}

{ main "$@"; exit $?; }
