#!/usr/bin/env bash
# Install what lazypull and its tests need on Debian 12: containerd, runc, the CNCF
# registry, fuse3, the reference stargz-snapshotter tools (apt), and the package (editable)
# with its test extras in the project's virtual environment .venv/.
# PYTHON=/path/to/python3.X picks the interpreter (3.11+) the venv is made from.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
VENV=.venv

ensure_pkgs containerd runc docker-registry stargz-snapshotter fuse3 libfuse3-dev pkg-config gcc python3-dev \
  busybox-static iproute2 debootstrap zstd openssl apache2-utils e2fsprogs attr curl buildah skopeo git podman prometheus \
  flatbuffers-compiler systemd \
  "${PYTHON_PKGS[@]}"
venv_python

# Keep a working venv (whichever 3.11+ made it) unless PYTHON names a different interpreter.
venv_ok() {
  "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || return 1
  [ -z "${PYTHON:-}" ] || grep -qxF "executable = $PY_BASE" "$VENV/pyvenv.cfg"
}
if ! venv_ok; then
  echo "setup: creating $VENV from $PY_BASE"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
fi

# pip runs again only when the dependencies or the checkout's place changed.
stamp="$(sha256sum pyproject.toml | cut -d' ' -f1) $PWD"
if [ "$(cat "$VENV/.lazypull-setup" 2>/dev/null)" != "$stamp" ]; then
  echo "setup: installing lazypull[test] into $VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]'
  echo "$stamp" >"$VENV/.lazypull-setup"
  # Run through sudo in a user's checkout: leave the venv owned like the checkout.
  [ "$(stat -c %u .)" = "$(id -u)" ] || chown -R --reference=. "$VENV"
fi
