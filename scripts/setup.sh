#!/usr/bin/env bash
# Install what lazypull and its tests need on Debian 12: containerd, runc, the CNCF
# registry, fuse3, the reference stargz-snapshotter tools, and the Python package.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
pkgs=(containerd runc docker-registry stargz-snapshotter fuse3 libfuse3-dev pkg-config gcc python3-dev
      busybox-static iproute2 debootstrap openssl apache2-utils e2fsprogs attr curl
      buildah skopeo git)
missing=()
for p in "${pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
PY=${PYTHON:-python3}
$PY -m pip install -q --disable-pip-version-check -e '.[test]'
