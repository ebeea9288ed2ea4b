#!/usr/bin/env bash
# shellcheck disable=SC2317  # build_<component>/cleanup are called indirectly
# Build the third-party binaries Tradewind's tests need (etcd, Kubernetes
# control plane + kubectl, kwok/kwokctl, helm, minio, kueue, registry, and the real node's
# kubelet, kube-proxy, pause and CoreDNS) from Go modules, and cache them outside the repo:
#
#   ${TRADEWIND_CACHE:-$HOME/.cache/tradewind}/bin/<component>-<version>/   binaries
#   ${TRADEWIND_CACHE:-$HOME/.cache/tradewind}/bin/current/                 symlinks to all of them
#   ${TRADEWIND_CACHE:-$HOME/.cache/tradewind}/logs/<component>-<version>.log
#
# Versions come from hack/versions.env only. A component whose cache entry
# exists is skipped, so a second run is instant. Each build writes into a
# temporary directory next to the final one and is renamed into place only
# when complete, so an interrupted build never leaves a half-filled cache.
#
# Usage: hack/build-binaries.sh [--list] [COMPONENT|BINARY ...]
#   components: etcd kubernetes kwok helm minio kueue registry kubernetes-node coredns
#   (default: all); built only when named: buildx (docker's BuildKit client, a CLI plugin
#   for hack/build-images.sh), training-operator (Kubeflow's, the peer of
#   bench/operator_scale.py, with its PyTorchJob CRD)
#   binary names (kubectl, kube-apiserver, kwokctl, ...) select their component.
#
# Environment:
#   TRADEWIND_CACHE   cache root (default $HOME/.cache/tradewind)
#   GO                go binary (default: go on PATH, else /usr/local/go/bin/go)
#   TRADEWIND_GO_JOBS parallel compile jobs, go build -p (default: nproc)
#   TRADEWIND_BUILD_JOBS components built at the same time (default 2)
#   GOCACHE, GOMODCACHE Go's build and module caches. Unset, both live only as long as this
#                     run (under its temp dir): a cold build of everything leaves ~15 GB
#                     there, and what is cached, by version, is the binaries.
set -euo pipefail
shopt -s inherit_errexit

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=versions.env
source "$HACK_DIR/versions.env"

CACHE_ROOT="${TRADEWIND_CACHE:-$HOME/.cache/tradewind}"
BIN_ROOT="$CACHE_ROOT/bin"
LOG_DIR="$CACHE_ROOT/logs"
CURRENT_DIR="$BIN_ROOT/current"

ALL_COMPONENTS=(etcd kubernetes kwok helm minio kueue registry kubernetes-node coredns)
ON_REQUEST_COMPONENTS=(buildx training-operator)

component_version() {
  case "$1" in
    etcd) echo "$ETCD_VERSION" ;;
    kubernetes) echo "$KUBERNETES_VERSION" ;;
    kwok) echo "$KWOK_VERSION" ;;
    helm) echo "$HELM_VERSION" ;;
    minio) echo "$MINIO_VERSION" ;;
    kueue) echo "$KUEUE_VERSION" ;;
    registry) echo "$REGISTRY_VERSION" ;;
    buildx) echo "$BUILDX_VERSION" ;;
    training-operator) echo "$TRAINING_OPERATOR_VERSION" ;;
    kubernetes-node) echo "$KUBERNETES_VERSION" ;;
    coredns) echo "$COREDNS_VERSION" ;;
    *) return 1 ;;
  esac
}

component_binaries() {
  case "$1" in
    etcd) echo "etcd" ;;
    kubernetes) echo "kube-apiserver kube-controller-manager kube-scheduler kubectl" ;;
    kwok) echo "kwok kwokctl" ;;
    helm) echo "helm" ;;
    minio) echo "minio" ;;
    kueue) echo "kueue" ;;
    registry) echo "registry" ;;
    buildx) echo "buildx" ;;
    training-operator) echo "training-operator" ;;
    kubernetes-node) echo "kubelet kube-proxy pause" ;;
    coredns) echo "coredns" ;;
    *) return 1 ;;
  esac
}

# Map a command-line name (component or binary) to its component.
resolve_component() {
  local name="$1" c b
  for c in "${ALL_COMPONENTS[@]}" "${ON_REQUEST_COMPONENTS[@]}"; do
    [[ "$name" == "$c" ]] && { echo "$c"; return 0; }
    for b in $(component_binaries "$c"); do
      [[ "$name" == "$b" ]] && { echo "$c"; return 0; }
    done
  done
  [[ "$name" == "k8s" ]] && { echo kubernetes; return 0; }
  return 1
}

log() { printf '[build-binaries] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- Go setup
find_go() {
  if [[ -n "${GO:-}" ]]; then echo "$GO"; return; fi
  if command -v go >/dev/null 2>&1; then command -v go; return; fi
  if [[ -x /usr/local/go/bin/go ]]; then echo /usr/local/go/bin/go; return; fi
  return 1
}

setup_go() {
  GO="$(find_go)" || die "no Go toolchain found (install Go >= $GO_MIN_VERSION or set GO=/path/to/go)"
  local have
  have="$("$GO" env GOVERSION)"      # e.g. go1.26.8
  have="${have#go}"
  if [[ "$(printf '%s\n%s\n' "$GO_MIN_VERSION" "$have" | sort -V | head -n1)" != "$GO_MIN_VERSION" ]]; then
    die "Go $have is older than the required $GO_MIN_VERSION ($GO)"
  fi
  GO_VERSION_USED="$have"
  # Never download another toolchain; build static, VCS-stamp-free binaries;
  # ignore any go.work above the temporary wrapper modules.
  export GOTOOLCHAIN=local CGO_ENABLED=0 GOWORK=off
  export GOFLAGS="-buildvcs=false -p=${TRADEWIND_GO_JOBS:-$(nproc 2>/dev/null || echo 2)}"
}

# JSON field of `go list -m -json MODULE@VERSION` (fetches only .info/.mod).
go_mod_field() {
  local mod="$1" field="$2"
  "$GO" list -m -json "$mod" | sed -n "s/^[[:space:]]*\"$field\": \"\\(.*\\)\",\{0,1\}\$/\\1/p" | head -n1
}

# Create an empty wrapper module under this run's WORK_ROOT (removed on exit);
# print its path.
new_wrapper_module() {
  local name="$1" dir
  dir="$(mktemp -d "$WORK_ROOT/$name.XXXXXX")"
  (cd "$dir" && "$GO" mod init "tradewind.local/build/$name" >/dev/null 2>&1)
  echo "$dir"
}

# ---------------------------------------------------------------- builders
# Each build_<component> OUTDIR runs in a subshell with stdout/stderr going to
# the component's log file; it must leave every binary in OUTDIR.

build_etcd() {
  local out="$1" work
  work="$(new_wrapper_module etcd)"
  cd "$work"
  # server/v3's own go.mod has replace directives (../api etc.), which makes
  # `go install ...@version` refuse it; as a dependency of a wrapper module
  # those replaces are ignored and the sibling modules resolve to the same tag.
  "$GO" get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  "$GO" build -mod=mod -trimpath -ldflags "-s -w" -o "$out/etcd" go.etcd.io/etcd/server/v3
}

# go build PKG... of k8s.io/kubernetes@$KUBERNETES_VERSION into OUT, version-stamped.
build_kubernetes_packages() {
  local out="$1" ver="$KUBERNETES_VERSION" work gomod major minor patch staging_ver build_date mods m
  shift
  local pkgs=("$@")
  [[ "$ver" =~ ^v([0-9]+)\.([0-9]+)\.([0-9]+)$ ]] || die "KUBERNETES_VERSION must be vX.Y.Z, got $ver"
  major="${BASH_REMATCH[1]}"; minor="${BASH_REMATCH[2]}"; patch="${BASH_REMATCH[3]}"
  staging_ver="v0.$minor.$patch"
  work="$(new_wrapper_module kubernetes)"
  cd "$work"

  # k8s.io/kubernetes replaces every staging module with ./staging/src/...;
  # those replaces are ignored in a dependency, so re-create them pointing at
  # the published staging module versions (derived, not hand-typed).
  gomod="$(go_mod_field "k8s.io/kubernetes@$ver" GoMod)"
  [[ -f "$gomod" ]] || die "could not fetch go.mod of k8s.io/kubernetes@$ver"
  mods="$(awk '{ for (i = 2; i < NF; i++) if ($i == "=>" && $(i+1) ~ /^\.\/staging\//) print $(i-1) }' "$gomod" | sort -u)"
  [[ -n "$mods" ]] || die "no staging replaces found in $gomod"
  {
    printf '\nrequire k8s.io/kubernetes %s\n\nreplace (\n' "$ver"
    for m in $mods; do printf '\t%s => %s %s\n' "$m" "$m" "$staging_ver"; done
    printf ')\n'
  } >> go.mod
  echo "--- wrapper go.mod"; cat go.mod

  "$GO" get "${pkgs[@]/%/@$ver}"

  # Reproducible build date: the release's commit time from the module proxy.
  build_date="$(go_mod_field "k8s.io/kubernetes@$ver" Time)"
  build_date="${build_date%%.*}"; build_date="${build_date%Z}Z"
  local ld="-s -w" p
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$ver -X $p.gitMajor=$major -X $p.gitMinor=$minor"
    ld+=" -X $p.gitTreeState=clean -X $p.buildDate=$build_date"
  done
  # One invocation: the commands share most packages.
  "$GO" build -mod=mod -trimpath -ldflags "$ld" -o "$out/" "${pkgs[@]}"
}

build_kubernetes() {
  build_kubernetes_packages "$1" k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubectl
}

# The real node's Kubernetes parts (tradewind/devstack/real_node.py), a component of their
# own so that a cached control plane stays valid: kubelet, kube-proxy, and the pod sandbox's
# `pause`, compiled from the same release's build/pause/linux/pause.c with its Makefile's
# flags (needs a C compiler and a static libc: Debian's gcc + libc6-dev).
build_kubernetes-node() {
  local out="$1" src tag cc="${CC:-cc}"
  build_kubernetes_packages "$out" k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy
  src="$(go_mod_field "k8s.io/kubernetes@$KUBERNETES_VERSION" Dir)/build/pause"
  [[ -f "$src/linux/pause.c" ]] || die "no build/pause/linux/pause.c in k8s.io/kubernetes@$KUBERNETES_VERSION"
  tag="$(sed -n 's/^TAG ?= //p' "$src/Makefile")"
  [[ -n "$tag" ]] || die "no TAG in $src/Makefile"
  command -v "$cc" >/dev/null || die "no C compiler ($cc) for pause.c: apt-get install gcc libc6-dev"
  "$cc" -Os -Wall -Werror -static -DVERSION="v$tag-tradewind" -o "$out/pause" "$src/linux/pause.c"
  echo "$tag" > "$out/pause.version"
}

build_kwok() {
  local out="$1" dir f
  cd "$(new_wrapper_module kwok)"
  # kwok's version string (pkg/consts.Version) is already set in its source.
  GOBIN="$out" "$GO" install -trimpath -ldflags "-s -w" \
    "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" "sigs.k8s.io/kwok/cmd/kwokctl@$KWOK_VERSION"
  # kwok >= v0.8 ships no default stages: keep the module's stage YAMLs
  # (kustomize/stage/<kind>/<set>/<stage>.yaml, e.g. pod/fast/pod-ready.yaml,
  # pod/chaos/pod-container-running-failed.yaml) next to the binaries so tests
  # can pass them with --config. Same layout; testdata and kustomization skipped.
  "$GO" mod download "sigs.k8s.io/kwok@$KWOK_VERSION"
  dir="$(go_mod_field "sigs.k8s.io/kwok@$KWOK_VERSION" Dir)/kustomize/stage"
  [[ -d "$dir" ]] || die "no kustomize/stage in sigs.k8s.io/kwok@$KWOK_VERSION ($dir)"
  (cd "$dir" && find . -name '*.yaml' ! -name kustomization.yaml ! -path '*/testdata/*') | sort |
    while read -r f; do
      mkdir -p "$out/stages/$(dirname "$f")"
      cp "$dir/$f" "$out/stages/$f"
      chmod u+w "$out/stages/$f"
    done
  echo "--- stages"; (cd "$out/stages" && find . -name '*.yaml' | sort)
  [[ -f "$out/stages/pod/fast/pod-ready.yaml" ]] || die "stage YAMLs missing"
}

build_helm() {
  local out="$1" gomod cg minor
  cd "$(new_wrapper_module helm)"
  # Same ldflags as helm's Makefile: version, and the Kubernetes version that
  # offline rendering (`helm template`) reports, taken from helm's client-go.
  gomod="$(go_mod_field "helm.sh/helm/v3@$HELM_VERSION" GoMod)"
  cg="$(awk '$1 == "k8s.io/client-go" { print $2; exit }' "$gomod")"   # v0.MINOR.PATCH
  minor="$(echo "$cg" | cut -d. -f2)"
  GOBIN="$out" "$GO" install -trimpath -ldflags "-s -w \
    -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION \
    -X helm.sh/helm/v3/internal/version.gitTreeState=clean \
    -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 \
    -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor \
    -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 \
    -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
}

build_minio() {
  local out="$1" ver="$MINIO_VERSION" ts commit release
  cd "$(new_wrapper_module minio)"
  # Pseudo-version v0.0.0-YYYYMMDDhhmmss-<12 hex>: stamp the same fields as
  # minio's own release build (buildscripts/gen-ldflags.go).
  [[ "$ver" =~ ^v0\.0\.0-([0-9]{4})([0-9]{2})([0-9]{2})([0-9]{2})([0-9]{2})([0-9]{2})-([0-9a-f]{12})$ ]] ||
    die "MINIO_VERSION must be a pseudo-version v0.0.0-<time>-<commit>, got $ver"
  ts="${BASH_REMATCH[1]}-${BASH_REMATCH[2]}-${BASH_REMATCH[3]}T${BASH_REMATCH[4]}:${BASH_REMATCH[5]}:${BASH_REMATCH[6]}Z"
  commit="${BASH_REMATCH[7]}"
  release="DEVELOPMENT.${BASH_REMATCH[1]}-${BASH_REMATCH[2]}-${BASH_REMATCH[3]}T${BASH_REMATCH[4]}-${BASH_REMATCH[5]}-${BASH_REMATCH[6]}Z"
  GOBIN="$out" "$GO" install -trimpath -ldflags "-s -w \
    -X github.com/minio/minio/cmd.Version=$ts \
    -X github.com/minio/minio/cmd.CopyrightYear=${BASH_REMATCH[1]} \
    -X github.com/minio/minio/cmd.ReleaseTag=$release \
    -X github.com/minio/minio/cmd.CommitID=$commit \
    -X github.com/minio/minio/cmd.ShortCommitID=$commit" \
    "github.com/minio/minio@$ver"
}

build_kueue() {
  local out="$1" dir date commit
  cd "$(new_wrapper_module kueue)"
  # Same version stamps as Kueue's Makefile; the build date and commit are the
  # release's, from the module proxy (reproducible).
  date="$(go_mod_field "sigs.k8s.io/kueue@$KUEUE_VERSION" Time)"
  date="${date%%.*}"; date="${date%Z}Z"
  commit="$(go_mod_field "sigs.k8s.io/kueue@$KUEUE_VERSION" Hash)"
  GOBIN="$out" "$GO" install -trimpath -ldflags "-s -w \
    -X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE_VERSION \
    -X sigs.k8s.io/kueue/pkg/version.GitCommit=${commit:-unknown} \
    -X sigs.k8s.io/kueue/pkg/version.BuildDate=$date" \
    "sigs.k8s.io/kueue/cmd/kueue@$KUEUE_VERSION"
  # Its CRDs (kueue.x-k8s.io_*.yaml), applied by `tradewind dev up --kueue`.
  "$GO" mod download "sigs.k8s.io/kueue@$KUEUE_VERSION"
  dir="$(go_mod_field "sigs.k8s.io/kueue@$KUEUE_VERSION" Dir)/config/components/crd/bases"
  [[ -f "$dir/kueue.x-k8s.io_workloads.yaml" ]] || die "no CRDs in sigs.k8s.io/kueue@$KUEUE_VERSION ($dir)"
  mkdir -p "$out/crds"
  cp "$dir"/*.yaml "$out/crds/"
  chmod u+w "$out"/crds/*.yaml
  echo "--- crds"; ls "$out/crds"
}

build_training-operator() {
  local out="$1" pkg=github.com/kubeflow/training-operator dir
  cd "$(new_wrapper_module training-operator)"
  # The proxy's version list stops at v1.8.1; the exact version downloads. One binary,
  # renamed from training-operator.v1; its PyTorchJob CRD (644 KB: apply server-side).
  GOBIN="$out" "$GO" install -trimpath -ldflags "-s -w" "$pkg/cmd/training-operator.v1@$TRAINING_OPERATOR_VERSION"
  mv "$out/training-operator.v1" "$out/training-operator"
  "$GO" mod download "$pkg@$TRAINING_OPERATOR_VERSION"
  dir="$(go_mod_field "$pkg@$TRAINING_OPERATOR_VERSION" Dir)/manifests/base/crds"
  [[ -f "$dir/kubeflow.org_pytorchjobs.yaml" ]] || die "no PyTorchJob CRD in $pkg@$TRAINING_OPERATOR_VERSION ($dir)"
  mkdir -p "$out/crds"
  cp "$dir/kubeflow.org_pytorchjobs.yaml" "$out/crds/"
  chmod u+w "$out"/crds/*.yaml
}

build_registry() {
  local out="$1" pkg=github.com/distribution/distribution/v3 commit
  cd "$(new_wrapper_module registry)"
  # Same version stamps as distribution's Makefile; the revision is the release's commit
  # as the module proxy reports it ("unknown" when it does not).
  commit="$(go_mod_field "$pkg@$REGISTRY_VERSION" Hash)"
  GOBIN="$out" "$GO" install -trimpath -ldflags "-s -w \
    -X $pkg/version.version=$REGISTRY_VERSION \
    -X $pkg/version.revision=${commit:-unknown} \
    -X $pkg/version.mainpkg=$pkg" \
    "$pkg/cmd/registry@$REGISTRY_VERSION"
}

build_coredns() {
  local out="$1" pkg=github.com/coredns/coredns commit
  cd "$(new_wrapper_module coredns)"
  # The stamp of CoreDNS's Makefile (coremain.GitCommit); the release's commit as the module
  # proxy reports it. All of its default plugins: the set is fixed in its source (plugin.cfg).
  commit="$(go_mod_field "$pkg@$COREDNS_VERSION" Hash)"
  GOBIN="$out" "$GO" install -trimpath -ldflags "-s -w \
    -X $pkg/coremain.GitCommit=${commit:-unknown}" \
    "$pkg@$COREDNS_VERSION"
}

build_buildx() {
  local out="$1" pkg=github.com/docker/buildx commit
  cd "$(new_wrapper_module buildx)"
  commit="$(go_mod_field "$pkg@$BUILDX_VERSION" Hash)"
  GOBIN="$out" "$GO" install -trimpath -ldflags "-s -w \
    -X $pkg/version.Version=$BUILDX_VERSION \
    -X $pkg/version.Revision=${commit:-unknown} \
    -X $pkg/version.Package=$pkg" \
    "$pkg/cmd/buildx@$BUILDX_VERSION"
}

# Quick "does it run" check after a build, output goes to the log.
smoke_test() {
  local comp="$1" dir="$2"
  case "$comp" in
    etcd) "$dir/etcd" --version ;;
    kubernetes)
      "$dir/kube-apiserver" --version
      "$dir/kube-controller-manager" --version
      "$dir/kube-scheduler" --version
      "$dir/kubectl" version --client ;;
    kwok) "$dir/kwok" --version; "$dir/kwokctl" --version ;;
    helm) "$dir/helm" version ;;
    minio) "$dir/minio" --version ;;
    kueue) "$dir/kueue" --help 2>&1 | grep -- -config ;;
    registry) "$dir/registry" --version ;;
    buildx) "$dir/buildx" version ;;
    kubernetes-node)
      "$dir/kubelet" --version
      "$dir/kube-proxy" --version
      "$dir/pause" -v ;;
    coredns) "$dir/coredns" -version ;;
    training-operator) "$dir/training-operator" --help 2>&1 | grep -- --enable-scheme ;;
  esac
}

# ---------------------------------------------------------------- cache
entry_complete() {
  local comp="$1" dir="$2" b
  [[ -d "$dir" ]] || return 1
  for b in $(component_binaries "$comp"); do
    [[ -x "$dir/$b" ]] || return 1
  done
}

# Is PID a running (non-zombie) build-binaries.sh? Guards against pid reuse.
build_running() {
  local pid="$1" state
  if [[ -d /proc ]]; then
    [[ -r "/proc/$pid/stat" ]] || return 1
    state="$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -c1)"
    [[ "$state" != Z ]] || return 1
    tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q build-binaries
  else
    kill -0 "$pid" 2>/dev/null
  fi
}

# Remove temporary dirs (<cache>/bin/.tmp-<component>-<version>.<pid>,
# $TMPDIR/tradewind-build.<pid>) left by runs that were killed hard; those of
# a run still in progress are kept.
clean_stale_temp() {
  local d pid
  for d in "$BIN_ROOT"/.tmp-* "${TMPDIR:-/tmp}"/tradewind-build.*; do
    [[ -d "$d" ]] || continue
    pid="${d##*.}"
    if [[ "$pid" =~ ^[0-9]+$ ]] && ! build_running "$pid"; then
      chmod -R u+w "$d" 2>/dev/null || true
      rm -rf "$d"
    fi
  done
}

TEMP_DIRS=()
cleanup() {
  local d
  for d in "${TEMP_DIRS[@]+"${TEMP_DIRS[@]}"}"; do
    if [[ -n "$d" && -e "$d" ]]; then
      chmod -R u+w "$d" 2>/dev/null || true
      rm -rf "$d"
    fi
  done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

RESULTS=()
FAILED=()

# build_component COMPONENT: build unless cached, record a result line.
build_component() {
  local comp="$1" ver dest tmp logf start secs rc
  ver="$(component_version "$comp")"
  dest="$BIN_ROOT/$comp-$ver"
  logf="$LOG_DIR/$comp-$ver.log"
  if entry_complete "$comp" "$dest"; then
    secs="$(sed -n 's/^build_seconds=//p' "$dest/.build-info" 2>/dev/null || true)"
    RESULTS+=("$(printf '%-15s %-36s cached  (cold build took %ss)' "$comp" "$ver" "${secs:-?}")")
    return 0
  fi

  tmp="$BIN_ROOT/.tmp-$comp-$ver.$$"
  rm -rf "$tmp"; mkdir -p "$tmp"
  TEMP_DIRS+=("$tmp")
  log "building $comp $ver (log: $logf)"
  start=$SECONDS
  # Not `if ( ... )`: errexit is ignored inside a tested subshell.
  set +e
  (
    set -euo pipefail
    echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) building $comp $ver with $("$GO" version)"
    echo "=== GOFLAGS=$GOFLAGS CGO_ENABLED=$CGO_ENABLED GOTOOLCHAIN=$GOTOOLCHAIN"
    "build_$comp" "$tmp"
    for b in $(component_binaries "$comp"); do
      [[ -x "$tmp/$b" ]] || { echo "missing binary after build: $b"; exit 1; }
    done
    echo "=== smoke test"
    smoke_test "$comp" "$tmp"
  ) >"$logf" 2>&1 </dev/null
  rc=$?
  set -e
  if ((rc == 0)); then
    secs=$((SECONDS - start))
    printf 'component=%s\nversion=%s\nbuild_seconds=%s\ngo=%s\nbuilt_at=%s\n' \
      "$comp" "$ver" "$secs" "$GO_VERSION_USED" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" > "$tmp/.build-info"
    echo "=== done in ${secs}s" >> "$logf"
    # Atomic publish: rename(2) within one filesystem. -T: never move *into*
    # an existing dir (a concurrent run may have published it first).
    if ! mv -T "$tmp" "$dest" 2>/dev/null; then
      entry_complete "$comp" "$dest" || die "could not move $tmp to $dest"
      rm -rf "$tmp"
    fi
    RESULTS+=("$(printf '%-15s %-36s built   in %ss' "$comp" "$ver" "$secs")")
  else
    secs=$((SECONDS - start))
    rm -rf "$tmp"
    log "FAILED: $comp $ver after ${secs}s; last lines of $logf:"
    tail -n 40 "$logf" | sed 's/^/    /' >&2
    log "full log: $logf"
    RESULTS+=("$(printf '%-15s %-36s FAILED  after %ss (log: %s)' "$comp" "$ver" "$secs" "$logf")")
    FAILED+=("$comp")
  fi
}

# Longest cold builds first. Two at a time by default (TRADEWIND_BUILD_JOBS): a cold build
# spends much of its time fetching modules, which the other build's compiling overlaps.
# kubernetes-node comes after kubernetes, whose compiled packages it reuses.
BUILD_ORDER=(kueue kubernetes minio buildx coredns training-operator kwok registry helm etcd kubernetes-node)

# build_all COMPONENT...: build_component for each, TRADEWIND_BUILD_JOBS at a time; results
# in the order given.
# shellcheck disable=SC2030,SC2031  # each subshell's arrays are meant to stay its own
build_all() {
  local jobs="${TRADEWIND_BUILD_JOBS:-2}" comp running=0 line
  local -A wanted=()
  for comp in "$@"; do wanted[$comp]=1; done
  for comp in "${BUILD_ORDER[@]}"; do unset "wanted[$comp]"; done
  ((${#wanted[@]} == 0)) || die "not in BUILD_ORDER: ${!wanted[*]}"
  for comp in "$@"; do wanted[$comp]=1; done
  for comp in "${BUILD_ORDER[@]}"; do
    [[ -n "${wanted[$comp]:-}" ]] || continue
    if ((running >= jobs)); then
      wait -n || true
      running=$((running - 1))
    fi
    # A subshell each: its RESULTS/FAILED reach this shell through a file.
    (
      RESULTS=(); FAILED=()
      build_component "$comp"
      printf '%s\n' "${RESULTS[@]}" > "$WORK_ROOT/result.$comp"
      ((${#FAILED[@]} == 0)) || touch "$WORK_ROOT/failed.$comp"
    ) &
    running=$((running + 1))
  done
  wait
  for comp in "$@"; do
    if [[ -f "$WORK_ROOT/result.$comp" ]]; then
      while IFS= read -r line; do RESULTS+=("$line"); done < "$WORK_ROOT/result.$comp"
    else
      RESULTS+=("$(printf '%-15s %-36s FAILED  (no result)' "$comp" "$(component_version "$comp")")")
      FAILED+=("$comp")
    fi
    [[ ! -f "$WORK_ROOT/failed.$comp" ]] || FAILED+=("$comp")
  done
}

# Point $CURRENT_DIR/<binary> at the cached entry of each pinned component.
refresh_current() {
  local comp ver dest b l missing=()
  mkdir -p "$CURRENT_DIR"
  for comp in "${ALL_COMPONENTS[@]}" "${ON_REQUEST_COMPONENTS[@]}"; do
    ver="$(component_version "$comp")"
    dest="$BIN_ROOT/$comp-$ver"
    if entry_complete "$comp" "$dest"; then
      for b in $(component_binaries "$comp"); do
        ln -sfn "../$comp-$ver/$b" "$CURRENT_DIR/$b"
      done
      if [[ "$comp" == kwok && -d "$dest/stages" ]]; then
        ln -sfn "../$comp-$ver/stages" "$CURRENT_DIR/kwok-stages"
      fi
      if [[ "$comp" == kueue || "$comp" == training-operator ]] && [[ -d "$dest/crds" ]]; then
        ln -sfn "../$comp-$ver/crds" "$CURRENT_DIR/$comp-crds"
      fi
    elif [[ " ${ON_REQUEST_COMPONENTS[*]} " != *" $comp "* ]]; then
      missing+=("$comp")
    fi
  done
  # Drop links that point at entries no longer present.
  for l in "$CURRENT_DIR"/*; do
    [[ -L "$l" && ! -e "$l" ]] && rm -f "$l"
  done
  if ((${#missing[@]})); then
    log "not built yet (no links in current/): ${missing[*]}"
  fi
}

main() {
  local selected=() arg comp
  for arg in "$@"; do
    case "$arg" in
      -h|--help) sed -n '3,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
      --list)
        for comp in "${ALL_COMPONENTS[@]}" "${ON_REQUEST_COMPONENTS[@]}"; do
          printf '%-15s %-36s %s\n' "$comp" "$(component_version "$comp")" "$(component_binaries "$comp")"
        done
        exit 0 ;;
      *)
        comp="$(resolve_component "$arg")" || die "unknown component '$arg' (known: ${ALL_COMPONENTS[*]})"
        [[ " ${selected[*]-} " == *" $comp "* ]] || selected+=("$comp") ;;
    esac
  done
  ((${#selected[@]})) || selected=("${ALL_COMPONENTS[@]}")

  setup_go
  mkdir -p "$BIN_ROOT" "$LOG_DIR"
  WORK_ROOT="${TMPDIR:-/tmp}/tradewind-build.$$"
  rm -rf "$WORK_ROOT"
  TEMP_DIRS+=("$WORK_ROOT")
  mkdir -m 700 "$WORK_ROOT"
  clean_stale_temp
  [[ -n "${GOCACHE:-}" ]] || export GOCACHE="$WORK_ROOT/go-build"
  [[ -n "${GOMODCACHE:-}" ]] || export GOMODCACHE="$WORK_ROOT/go-mod"

  build_all "${selected[@]}"
  refresh_current

  printf '%s\n' "${RESULTS[@]}"
  echo "binaries: $CURRENT_DIR"
  if ((${#FAILED[@]})); then
    log "failed: ${FAILED[*]}"
    exit 1
  fi
}

# One line, so bash has read it whole before running: editing this file
# during a (long) run cannot change what the running script does next.
{ main "$@"; exit $?; }
