#!/usr/bin/env bash
# The test command (README and CI): install what is missing, lint, then every test —
# unit tests and end-to-end tests against a real registry, containerd, runc and FUSE.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then exec sudo --preserve-env=PYTHON "$0" "$@"; fi  # containerd, FUSE, netns
./scripts/setup.sh
PY=${PYTHON:-python3}
$PY -m ruff check lazypull tests bench
exec $PY -m pytest -q -p no:cacheprovider "$@"
