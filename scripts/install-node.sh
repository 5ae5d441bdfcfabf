#!/usr/bin/env bash
# Install lazypull on a node from this checkout: the package (not editable) in a venv at
# /opt/lazypull/venv, its commands linked into /usr/local/bin (`lazypull`,
# `containerd-lazypull-grpc` and `lazypull-fsd`, which the systemd units and the DaemonSet's
# image run, and `lazypull-fsd-ctl`), this README, docs/ and deploy/ in /opt/lazypull, the default
# config (kept if present) and both systemd units. Re-run to upgrade. What it added is listed
# in /opt/lazypull/installed, which --uninstall reads.
#   --enable      also `systemctl enable --now lazypull-fsd containerd-lazypull-grpc` (lazypull-store:
#                 installed, enabled by hand once storage.conf names it)
#   --no-systemd  no units (container images)
#   --uninstall   stop and remove the units, the links, /opt/lazypull and the config if unchanged
# PYTHON=/path/to/python3.X picks the interpreter (3.11+); default Debian's python3.
set -euo pipefail
self=$(readlink -f "$0")
cd "$(dirname "$self")/.."
. scripts/lib.sh
as_root "$self" "$@"
PREFIX=/opt/lazypull
BIN=/usr/local/bin
CMDS=(lazypull containerd-lazypull-grpc lazypull-fsd lazypull-fsd-ctl)
UNITS=(lazypull-fsd containerd-lazypull-grpc)  # the layer server first: the daemon uses it
STORE_UNIT=lazypull-store  # Podman/CRI-O: installed, enabled by hand with storage.conf (docs/operations.md)
UNIT_DIR=/etc/systemd/system
CONFIG=/etc/containerd-lazypull-grpc/config.toml
MANIFEST=$PREFIX/installed
systemd=1 enable=0 uninstall=0
for a in "$@"; do
  case "$a" in
    --enable) enable=1 ;;
    --no-systemd) systemd=0 ;;
    --uninstall) uninstall=1 ;;
    *) die "unknown option $a (--enable, --no-systemd, --uninstall)" ;;
  esac
done
[ $systemd = 1 ] || [ $enable = 0 ] || die "--enable needs the systemd units"
have_systemd() { [ -d /run/systemd/system ]; }

if [ $uninstall = 1 ]; then
  [ -e "$MANIFEST" ] || [ -e "$PREFIX" ] || { echo "install-node: lazypull is not installed here"; exit 0; }
  if have_systemd; then
    for u in $STORE_UNIT containerd-lazypull-grpc lazypull-fsd; do
      if [ -e "$UNIT_DIR/$u.service" ]; then systemctl disable --now "$u" || true; fi
    done
  fi
  for u in "${UNITS[@]}" $STORE_UNIT; do rm -f "$UNIT_DIR/$u.service"; done
  if have_systemd; then systemctl daemon-reload; fi
  for cmd in "${CMDS[@]}"; do  # only our links, never a file someone else put there
    if [ "$(readlink "$BIN/$cmd" || true)" = "$PREFIX/venv/bin/$cmd" ]; then rm -f "$BIN/$cmd"; fi
  done
  if grep -qxF "config $CONFIG" "$MANIFEST" 2>/dev/null && cmp -s "$CONFIG" "$PREFIX/deploy/config.toml"; then
    rm -f "$CONFIG" && rmdir --ignore-fail-on-non-empty "$(dirname "$CONFIG")"
  elif [ -e "$CONFIG" ]; then
    echo "install-node: kept $CONFIG (changed since it was installed, or not installed by this script)"
  fi
  pkgs=$(sed -n 's/^package //p' "$MANIFEST" 2>/dev/null | tr '\n' ' ')
  rm -rf "$PREFIX"
  echo "install-node: removed lazypull (units, ${CMDS[*]} in $BIN, $PREFIX)"
  [ -z "$pkgs" ] || echo "install-node: Debian packages it installed are kept (apt-get remove $pkgs)"
  echo "install-node: the cache and layer state in /var/lib/containerd-lazypull-grpc are kept (rm -r to free them);"
  echo "  if containerd imports /etc/containerd/conf.d/lazypull.toml, drop it from its imports and restart containerd"
  exit 0
fi

missing=()
for p in fuse3 "${PYTHON_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
ensure_pkgs fuse3 "${PYTHON_PKGS[@]}"
venv_python
"$PREFIX/venv/bin/python" -c '' 2>/dev/null || { rm -rf "$PREFIX/venv"; "$PY" -m venv "$PREFIX/venv"; }
echo "install-node: installing lazypull into $PREFIX/venv"
"$PREFIX/venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade .
# The manifest keeps what earlier runs recorded (packages, the config) across upgrades.
old=$(grep -E '^(package|config) ' "$MANIFEST" 2>/dev/null || true)
{
  [ -z "$old" ] || echo "$old"
  for p in "${missing[@]}"; do echo "package $p"; done
} >"$MANIFEST.new"
for cmd in "${CMDS[@]}"; do
  [ -x "$PREFIX/venv/bin/$cmd" ] || die "$PREFIX/venv/bin/$cmd missing after pip install"
  ln -sfn "$PREFIX/venv/bin/$cmd" "$BIN/$cmd"
  echo "link $BIN/$cmd" >>"$MANIFEST.new"
done
install -m 0644 README.md "$PREFIX/README.md"  # the units' Documentation=
rm -rf "$PREFIX/docs" && cp -r docs "$PREFIX/docs"  # what the README links to
rm -rf "$PREFIX/deploy" && cp -r deploy "$PREFIX/deploy"
if [ ! -e "$CONFIG" ]; then
  install -D -m 0644 deploy/config.toml "$CONFIG"
  echo "config $CONFIG" >>"$MANIFEST.new"
fi
"$BIN/lazypull" --version
if [ $systemd = 1 ]; then
  for u in "${UNITS[@]}" $STORE_UNIT; do
    install -m 0644 "deploy/$u.service" "$UNIT_DIR/$u.service"
    echo "unit $UNIT_DIR/$u.service" >>"$MANIFEST.new"
  done
  if have_systemd; then
    systemctl daemon-reload
    # An upgrade: running units take the new code. The layer server's reload hands every
    # layer to the new binary without failing a read (ExecReload); the daemon, which no read
    # goes through, restarts. Tested in tests/service/test_upgrade_systemd.py. A reload that
    # fails (the old server keeps serving) falls back to a restart: the fd store keeps the layers.
    for u in "${UNITS[@]}"; do systemctl try-reload-or-restart "$u" || systemctl try-restart "$u"; done
    systemctl try-restart $STORE_UNIT  # a running store takes the new code; its layers stay mounted
    [ $enable = 0 ] || systemctl enable --now "${UNITS[@]}"
  fi
  echo "install-node: ${UNITS[*]/%/.service} installed in $UNIT_DIR; next (docs/operations.md, \"Installing on a node\"):"
  [ $enable = 1 ] || echo "  systemctl enable --now ${UNITS[*]}"
  echo "  $PREFIX/venv/bin/python -m lazypull.service.containerdconf --restart 'systemctl restart containerd'"
fi
sort -u "$MANIFEST.new" >"$MANIFEST" && rm -f "$MANIFEST.new"
echo "install-node: done (remove with: $0 --uninstall)"
