# Shared by the shell scripts (sourced): root via sudo, Debian packages, the Python that venvs
# are made from. Debian's python3 is externally managed (PEP 668): lazypull only ever goes
# into a venv, never into an interpreter itself.

# Re-run the calling script ("$@": its absolute path and arguments) through sudo when not
# root. sudo resets PATH and the environment: PYTHON and DEMO_* are kept, and every later
# step names its interpreter (.venv/bin/python), so whatever python3 sudo finds is fine.
as_root() {
  [ "$(id -u)" != 0 ] || return 0
  command -v sudo >/dev/null || { echo "${1##*/}: needs root: run it as root or install sudo" >&2; exit 1; }
  exec sudo --preserve-env=PYTHON,DEMO_SCALE,DEMO_RATE "$@"
}

die() { echo "${0##*/}: error: $*" >&2; exit 1; }

apt_install() {
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "${0##*/}: installing $*"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq "$@" >/dev/null
}

# Install those of the Debian packages "$@" that are missing.
ensure_pkgs() {
  local p missing=()
  for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
}

# Debian's python3 and its venv module, unless PYTHON names the interpreter (for ensure_pkgs).
PYTHON_PKGS=()
[ -n "${PYTHON:-}" ] || PYTHON_PKGS=(python3 python3-venv)

# Check the interpreter venvs are made from: $PYTHON, else python3. Sets PY and PY_BASE (its
# real path); adds Debian's venv module when it lacks one.
venv_python() {
  PY=${PYTHON:-python3}
  command -v "$PY" >/dev/null || die "$PY not found (PYTHON=... names another interpreter)"
  "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "$PY is older than Python 3.11"
  PY_BASE=$("$PY" -c 'import os, sys; print(os.path.realpath(sys.executable))')
  "$PY" -c 'import ensurepip, venv' 2>/dev/null && return 0
  local ver
  ver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  case "$PY_BASE" in  # Debian ships the venv module separately
    "$(readlink -f /usr/bin/python3)") apt_install python3-venv ;;
    /usr/bin/python"$ver") apt_install "python$ver-venv" ;;
    *) die "$PY ($PY_BASE) has no venv/ensurepip module; install it or pick another PYTHON" ;;
  esac
}
