#!/usr/bin/env bash
# The test command (README and CI): install what is missing, lint, then every test —
# unit tests and end-to-end tests against a real registry, containerd, runc and FUSE —
# all through the project's venv (.venv/, made by scripts/setup.sh). Arguments go to pytest.
set -euo pipefail
self=$(readlink -f "$0")
cd "$(dirname "$self")/.."
. scripts/lib.sh
as_root "$self" "$@"  # containerd, FUSE, network namespaces
./scripts/setup.sh
PY=.venv/bin/python
$PY -m ruff check lazypull tests bench
$PY -m mypy  # the package, configured in pyproject.toml ([tool.mypy])
exec $PY -m pytest -q -p no:cacheprovider "$@"
