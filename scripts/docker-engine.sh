#!/usr/bin/env bash
# Make sure a Docker engine answers: where none does and this is root on Debian, install Debian's
# docker.io (and debootstrap, for base images without a registry) and start dockerd in the
# background (its log: outputs/dockerd.log). Exits non-zero, saying why, when it cannot.
set -euo pipefail
cd "$(dirname "$0")/.."
if docker info > /dev/null 2>&1 && command -v debootstrap > /dev/null; then
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    docker info > /dev/null 2>&1 || { echo "no Docker engine answers, and starting one needs root" >&2; exit 1; }
    echo "debootstrap is not installed (apt-get install debootstrap, as root)" >&2
    exit 1
fi
started=$(date +%s)
if ! command -v dockerd > /dev/null || ! command -v debootstrap > /dev/null; then
    echo "installing Debian's docker.io and debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap > /dev/null
fi
if ! docker info > /dev/null 2>&1; then
    mkdir -p outputs
    nohup dockerd > outputs/dockerd.log 2>&1 &
    for _ in $(seq 60); do docker info > /dev/null 2>&1 && break; sleep 1; done
    docker info > /dev/null 2>&1 || { tail -n 20 outputs/dockerd.log >&2; echo "dockerd did not start" >&2; exit 1; }
fi
echo "Docker engine ready ($(( $(date +%s) - started )) s)"
