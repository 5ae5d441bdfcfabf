#!/usr/bin/env bash
# The README's promise on a stock Debian 12: a fresh bookworm root (debootstrap minbase plus
# what a standard install has and the scenario needs: Debian's python3, sudo, ca-certificates),
# this checkout copied in (git ls-files), and in it, each in a fresh copy of the root:
#   root   ./scripts/test.sh -m "not e2e" (setup.sh: apt, .venv from /usr/bin/python3), the
#          venv's `lazypull --version`, then scripts/install-node.sh, each unit's ExecStart,
#          and install-node.sh --uninstall, which must leave /etc, /opt, /usr/local as before
#   sudo   the same test command (a few tests) as a user with sudo rights (test.sh re-runs itself with sudo)
# The end-to-end tests are left out: they run containerd/runc, which need a real root, not a
# chroot. The root runs under chroot in private mount and PID namespaces (unshare): the bind
# mounts (/dev, /sys) and a /proc of its own vanish with the check, whatever way it ends, and so
# does any process left inside. Network is the host's (Debian's mirror, PyPI); policy-rc.d keeps
# the installed daemons (containerd, docker-registry) from starting.
#
# The debootstrap result is cached as $CACHE/bookworm-rootfs-v$ROOTFS_VERSION.tar.zst (bump
# ROOTFS_VERSION when the root's recipe changes); downloaded .debs and pip's cache are kept
# in $CACHE too. Needs root; exits non-zero when any step inside fails.
#
#   scripts/check-stock-debian.sh              both scenarios
#   scripts/check-stock-debian.sh --run CMD    only CMD (bash, as root, in /srv/lazypull of a fresh root;
#                                              $NODE_CHECKS: the node install and uninstall after setup.sh)
set -euo pipefail
shopt -s inherit_errexit
self=$(readlink -f "$0")
cd "$(dirname "$self")/.."
. scripts/lib.sh
as_root "$self" "$@"
ROOTFS_VERSION=1
SUITE=bookworm
MIRROR=http://deb.debian.org/debian
INCLUDE=python3,sudo,ca-certificates
CACHE=${LAZYPULL_CACHE:-/var/cache/lazypull}
TARBALL=$CACHE/$SUITE-rootfs-v$ROOTFS_VERSION.tar.zst
STEP_TIMEOUT=${STEP_TIMEOUT:-1200}  # seconds per scenario
PATH_ROOT=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

say() { printf '%s: [%4ss] %s\n' "${0##*/}" "$SECONDS" "$*"; }
ensure_pkgs debootstrap zstd util-linux git
mkdir -p "$CACHE/apt" "$CACHE/pip"
work=$(mktemp -d /var/tmp/lazypull-stock.XXXXXX)
# --one-file-system: never into a bind mount, should one outlive its namespace.
trap 'rm -rf --one-file-system "$work"' EXIT

build_rootfs() {
  local root=$work/build
  say "debootstrap $SUITE (minbase + $INCLUDE) from $MIRROR"
  debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$root" "$MIRROR" >"$work/debootstrap.log" 2>&1 ||
    { tail -20 "$work/debootstrap.log" >&2; die "debootstrap failed"; }
  cat >"$root/etc/apt/sources.list" <<EOS
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
EOS
  printf '#!/bin/sh\n# No service starts inside the check'"'"'s chroot.\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
  chmod 0755 "$root/usr/sbin/policy-rc.d"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" --numeric-owner -cf - . | zstd -q -T0 -o "$TARBALL.tmp"
  mv "$TARBALL.tmp" "$TARBALL"
  rm -rf --one-file-system "$root"
  say "cached $TARBALL ($(du -h "$TARBALL" | cut -f1))"
}
(
  flock 9  # one build at a time; the others wait and reuse it
  [ -e "$TARBALL" ] || build_rootfs
) 9>"$CACHE/rootfs.lock"

# Hard-link (or copy) the .debs of $1 missing in $2: apt's downloads survive the roots.
keep_debs() {
  local f
  for f in "$1"/*.deb; do
    [ -e "$f" ] && [ ! -e "$2/${f##*/}" ] || continue
    ln "$f" "$2/" 2>/dev/null || cp "$f" "$2/"
  done
}

# A fresh root with this checkout in /srv/lazypull (tracked and new files, as they are now).
fresh_root() {
  local root=$work/$1
  mkdir "$root"
  zstd -q -dc "$TARBALL" | tar -C "$root" --numeric-owner -xf -
  cp /etc/resolv.conf /etc/hosts "$root/etc/"
  # The network's own trust anchors (e.g. a TLS-inspecting egress proxy) come along, and pip
  # is told to use the system's store: any machine on this network needs both, stock or not.
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    env -i PATH="$PATH_ROOT" chroot "$root" update-ca-certificates >/dev/null 2>&1
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$root/etc/pip.conf"
  fi
  keep_debs "$CACHE/apt" "$root/var/cache/apt/archives"
  mkdir -p "$root/srv/lazypull"
  git -c safe.directory="$PWD" ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
    tar --null -T - -cf - | tar -C "$root/srv/lazypull" -xf -
  echo "$root"
}

# Run bash -c CMD as root inside ROOT, with a clean environment (no host PATH, PYTHONPATH, pyenv).
in_root() {
  local root=$1 cmd=$2 rc=0
  timeout --kill-after=30 "$STEP_TIMEOUT" unshare --mount --pid --fork --kill-child --propagation private -- \
    bash -euc '
      root=$1
      mount --rbind /dev "$root/dev"
      mount --rbind /sys "$root/sys"
      mount -t proc proc "$root/proc"
      mkdir -p "$root/root/.cache/pip"
      mount --bind "$3" "$root/root/.cache/pip"
      exec chroot "$root" /usr/bin/env -i PATH="$4" HOME=/root LANG=C.UTF-8 TERM=dumb \
        /bin/bash -euo pipefail -c "$2"' bash "$root" "$cmd" "$CACHE/pip" "$PATH_ROOT" || rc=$?
  keep_debs "$root/var/cache/apt/archives" "$CACHE/apt"
  rm -rf --one-file-system "$root"
  return $rc
}

# The README's test command and the CLI, from a stock system's point of view (run in the checkout).
# Through sudo the same command runs with a few of the tests: what differs there is the
# setup and the re-run through sudo, not the tests (the root run above runs them all).
ROOT_TESTS='-m "not e2e"'
SUDO_TESTS='-m "not e2e" tests/test_imports.py tests/cli/test_errors.py'
readme_checks='
  test "$(command -v python3)" = /usr/bin/python3
  ./scripts/test.sh -m "not e2e"
  grep -qxF "executable = $(readlink -f /usr/bin/python3)" .venv/pyvenv.cfg
  .venv/bin/lazypull --version
  .venv/bin/python -c "import lazypull.bench.demo"
  ./scripts/setup.sh
'

# The node install (run in the checkout, after setup.sh): every binary the units run is there
# and starts, the README they name exists, and --uninstall leaves /etc, /opt and /usr/local
# as they were before the install.
node_checks='
  listing() { find /etc /opt /usr/local -xdev | grep -vxF /etc/ld.so.cache | sort; }
  listing >/tmp/before
  ./scripts/install-node.sh
  for unit in lazypull-fsd containerd-lazypull-grpc; do
    exec_start=$(sed -n "s/^ExecStart=\([^ ]*\).*/\1/p" /etc/systemd/system/$unit.service)
    echo "install-node check: $unit.service runs $exec_start"
    "$exec_start" --help >/dev/null
  done
  lazypull-fsd-ctl --help >/dev/null
  lazypull --version
  doc=$(sed -n "s/^Documentation=file://p" /etc/systemd/system/containerd-lazypull-grpc.service)
  test -s "$doc"
  ./scripts/install-node.sh
  ./scripts/install-node.sh --uninstall
  listing >/tmp/after
  diff /tmp/before /tmp/after
  echo "install-node check: --uninstall removed everything it added"
'

if [ "${1:-}" = --run ]; then
  [ $# = 2 ] || die "usage: ${0##*/} --run 'COMMANDS'"
  root=$(fresh_root run)
  in_root "$root" "cd /srv/lazypull; ${2//'$NODE_CHECKS'/$node_checks}"
  say "done"
  exit 0
fi

say "root: scripts/test.sh, lazypull --version, scripts/install-node.sh and --uninstall"
t0=$SECONDS
root=$(fresh_root as-root)
in_root "$root" "
  cd /srv/lazypull
  if python3 -c 'import ensurepip' 2>/dev/null; then echo 'not stock: python3 has a venv module' >&2; exit 1; fi
  $readme_checks
  $node_checks
"
say "root: passed in $((SECONDS - t0)) s"

say "sudo: a user with sudo rights runs scripts/test.sh"
t0=$SECONDS
root=$(fresh_root as-user)
in_root "$root" "
  useradd --create-home --shell /bin/bash --groups sudo dev
  echo 'dev ALL=(ALL:ALL) NOPASSWD: ALL' >/etc/sudoers.d/dev
  cp -r /srv/lazypull /home/dev/lazypull
  chown -R dev:dev /home/dev/lazypull
  su - dev -c 'cd ~/lazypull && set -euo pipefail && ${readme_checks//$ROOT_TESTS/$SUDO_TESTS}'
  test \"\$(stat -c %U /home/dev/lazypull/.venv)\" = dev
"
say "sudo: passed in $((SECONDS - t0)) s"
say "done"
