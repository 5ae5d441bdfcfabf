#!/usr/bin/env bash
# Install lazypull on a node from this checkout: the package (not editable) in a venv at
# /opt/lazypull/venv, `lazypull` and `containerd-lazypull-grpc` linked into /usr/local/bin
# (where the systemd unit and the DaemonSet's image run them), this README and deploy/ in
# /opt/lazypull, the default config (kept if present) and the systemd unit. Re-run to upgrade.
#   --enable      also `systemctl enable --now containerd-lazypull-grpc`
#   --no-systemd  no unit (container images)
# PYTHON=/path/to/python3.X picks the interpreter (3.11+); default Debian's python3.
set -euo pipefail
self=$(readlink -f "$0")
cd "$(dirname "$self")/.."
. scripts/lib.sh
as_root "$self" "$@"
PREFIX=/opt/lazypull
BIN=/usr/local/bin
UNIT=/etc/systemd/system/containerd-lazypull-grpc.service
systemd=1 enable=0
for a in "$@"; do
  case "$a" in
    --enable) enable=1 ;;
    --no-systemd) systemd=0 ;;
    *) die "unknown option $a (--enable, --no-systemd)" ;;
  esac
done
[ $systemd = 1 ] || [ $enable = 0 ] || die "--enable needs the systemd unit"

ensure_pkgs fuse3 "${PYTHON_PKGS[@]}"
venv_python
"$PREFIX/venv/bin/python" -c '' 2>/dev/null || { rm -rf "$PREFIX/venv"; "$PY" -m venv "$PREFIX/venv"; }
echo "install-node: installing lazypull into $PREFIX/venv"
"$PREFIX/venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade .
for cmd in lazypull containerd-lazypull-grpc; do ln -sfn "$PREFIX/venv/bin/$cmd" "$BIN/$cmd"; done
install -m 0644 README.md "$PREFIX/README.md"  # the unit's Documentation=
rm -rf "$PREFIX/deploy" && cp -r deploy "$PREFIX/deploy"
[ -e /etc/containerd-lazypull-grpc/config.toml ] ||
  install -D -m 0644 deploy/config.toml /etc/containerd-lazypull-grpc/config.toml
"$BIN/lazypull" --version
if [ $systemd = 1 ]; then
  install -m 0644 deploy/containerd-lazypull-grpc.service "$UNIT"
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    [ $enable = 0 ] || systemctl enable --now containerd-lazypull-grpc
  fi
  echo "install-node: $UNIT installed; next (README, \"Installing on a node\"):"
  [ $enable = 1 ] || echo "  systemctl enable --now containerd-lazypull-grpc"
  echo "  merge $PREFIX/deploy/containerd-config.toml into /etc/containerd/config.toml, restart containerd"
fi
