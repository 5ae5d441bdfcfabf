#!/usr/bin/env bash
# The main job: install everything, build the seed's 1.2 GB image, convert it to eStargz,
# then start it through containerd twice over a 150 Mbit/s link - full pull vs lazy pull -
# and print both times and the bytes fetched. DEMO_SCALE=0.1 makes a ~140 MB image.
set -euo pipefail
self=$(readlink -f "$0")
cd "$(dirname "$self")"
. scripts/lib.sh
as_root "$self" "$@"
echo "demo: [1/2] installing dependencies"
./scripts/setup.sh
echo "demo: [2/2] running: build an image, convert it to eStargz, then start it by a full pull and by a"
echo "demo:       lazy pull through containerd (a registry behind a shaped link; each step says what it does)"
exec .venv/bin/python -m lazypull.bench.demo
