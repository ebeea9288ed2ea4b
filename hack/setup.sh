#!/usr/bin/env bash
# Everything a fresh machine needs: the Python environment (.venv), the binaries of the
# local stack (etcd, Kubernetes, kwok, helm, MinIO, Kueue, the registry, kubelet, CoreDNS),
# each cached outside the repo by version, the real node's Debian packages and the images'
# Debian base (hack/build-images.sh), cached by recipe.
set -euo pipefail
cd "$(dirname "$0")/.."
node_and_images() {
  # The real node (tradewind dev up --real-node) runs Debian's containerd, runc and CNI plugins;
  # busybox-static makes its test image. Installed when missing (as root; otherwise
  # `dev up --real-node` names what to install).
  node_packages=(containerd runc containernetworking-plugins busybox-static)
  missing=()
  for package in "${node_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
  done
  if ((${#missing[@]})); then
    if ((EUID == 0)); then
      echo "[setup] installing ${missing[*]}" >&2
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
      echo "[setup] not root: the real node needs ${missing[*]} (apt-get install)" >&2
    fi
  fi
  if ((EUID == 0)); then
    hack/build-images.sh
  else
    echo "[setup] not root: run hack/build-images.sh as root for the images' base" >&2
  fi
}

# Three things side by side (on a cold machine they spend much of their time downloading):
# the Python environment, the Go builds, and the node's packages with the images' base.
hack/setup-python.sh "${1:-operator,trainer,dev}" &
python_env=$!
node_and_images &
node_images=$!
hack/build-binaries.sh
wait "$python_env"
wait "$node_images"

