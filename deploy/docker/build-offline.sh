#!/usr/bin/env bash
# Build the GPO images where no container registry can be reached (air-gapped clusters, mirrors
# behind a TLS-inspecting proxy): the base images come from Debian's packages (debootstrap), pip
# gets the machine's CA bundle as a BuildKit secret (never a layer) and a local wheels folder as
# extra links. Needs root (debootstrap), a running Docker engine and `debootstrap` installed.
#
#   deploy/docker/build-offline.sh            # gpo-base:bookworm, gpo-redis:bookworm, gpo-platform:cpu
#
# Environment (all optional):
#   DEBIAN_MIRROR   the Debian mirror debootstrap uses (default: the one apt is configured with)
#   PIP_CERT        CA bundle pip inside the build trusts (default: the host's pip setting)
#   PIP_FIND_LINKS  a folder of local wheels, e.g. torch's CPU build (default: the host's pip setting)
#   PIP_INDEX_URL   an internal PyPI mirror (default: PyPI)
#   GPO_IMAGE       the platform image's tag (default gpo-platform:cpu)
#   REBUILD_BASE=1  make the base images again even when they exist
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
base_image="gpo-base:bookworm"
redis_image="gpo-redis:bookworm"
image="${GPO_IMAGE:-gpo-platform:cpu}"
# Docker 20.10's own BuildKit (Debian's docker.io): secrets and bind mounts without buildx.
docker_cli="$(command -v /usr/bin/docker || command -v docker)"
export DOCKER_BUILDKIT=1

configured_mirror() {
    # deb822 sources (URIs: ...) or a classic sources.list line; the first Debian main archive.
    cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null | grep -E '^(URIs:|deb )' \
        | grep -v security | sed -E 's/^URIs:[[:space:]]*//; s/^deb (\[[^]]*\] )?//; s/[[:space:]].*//' | head -n1 \
        || true
}

pip_setting() {  # the host pip's value of $1 (e.g. cert, find-links), if any
    { python3 -m pip config list 2>/dev/null || true; } | sed -nE "s/^[^=]*\.$1='([^']*)'$/\1/p" | head -n1
}

seconds() { date +%s; }
started=$(seconds)

if [[ "${REBUILD_BASE:-0}" == 1 ]] || ! "$docker_cli" image inspect "$base_image" > /dev/null 2>&1; then
    mirror="${DEBIAN_MIRROR:-$(configured_mirror)}"
    mirror="${mirror:-http://deb.debian.org/debian}"
    rootfs="$(mktemp -d)"
    trap 'rm -rf "$rootfs"' EXIT
    echo "base image: debootstrap bookworm from $mirror"
    debootstrap --variant=minbase \
        --include=ca-certificates,libnuma1,passwd,python3,python3-venv,python-is-python3 \
        bookworm "$rootfs" "$mirror" > "$rootfs.log" 2>&1 \
        || { tail -n 20 "$rootfs.log"; echo "debootstrap failed (log: $rootfs.log)"; exit 1; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | "$docker_cli" import \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["bash"]' - "$base_image" > /dev/null
    rm -rf "$rootfs"
    trap - EXIT
    "$docker_cli" build -q -t "$redis_image" --build-arg BASE="$base_image" \
        -f "$here/redis.Dockerfile" "$here" > /dev/null
    echo "base images: $base_image, $redis_image ($(( $(seconds) - started )) s)"
fi

cert="${PIP_CERT:-$(pip_setting cert)}"
links="${PIP_FIND_LINKS:-$(pip_setting find-links)}"
wheels="$root/deploy/docker/wheels"
mkdir -p "$wheels"
if [[ -n "$links" && -d "$links" ]]; then
    # Hard links where the file system allows (no copy), else copies: the build context's wheels.
    cp -ul "$links"/*.whl "$wheels"/ 2>/dev/null || cp -u "$links"/*.whl "$wheels"/
fi
secret=()
if [[ -n "$cert" && -f "$cert" ]]; then
    secret=(--secret "id=pip_cert,src=$cert")
fi

build_started=$(seconds)
"$docker_cli" build -f "$root/deploy/docker/Dockerfile" -t "$image" \
    --build-arg BASE="$base_image" \
    --build-arg PIP_INDEX_URL="${PIP_INDEX_URL:-https://pypi.org/simple}" \
    --build-arg TORCH_CPU_INDEX="${TORCH_CPU_INDEX-}" \
    "${secret[@]}" "$root"
size=$("$docker_cli" image inspect -f '{{.Size}}' "$image")
echo "built $image: $(( size / 1000000 )) MB in $(( $(seconds) - build_started )) s" \
     "(total with base images $(( $(seconds) - started )) s)"
echo "run it: GPO_REDIS_IMAGE=$redis_image docker compose --profile cpu up -d"
