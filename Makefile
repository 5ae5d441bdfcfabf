.PHONY: setup test demo bench bench-all bench-parts lint install-node check-stock-debian stress

# Everything runs through the project's venv (.venv/, made by scripts/setup.sh).
PY := .venv/bin/python

setup:
	./scripts/setup.sh

test:
	./scripts/test.sh

demo:
	./demo.sh

lint: setup
	$(PY) -m ruff check lazypull tests bench

# Install the daemon and CLI on this node (/opt/lazypull, /usr/local/bin, the systemd unit).
install-node:
	./scripts/install-node.sh

# The README's commands on a fresh Debian 12 root, as root and through sudo (also a test in tests/e2e).
check-stock-debian:
	./scripts/check-stock-debian.sh

# The benchmark (by hand; never part of the tests): see `lazypull bench --help`.
bench: setup
	.venv/bin/lazypull bench --images seed-large --runs 3

bench-all: setup
	.venv/bin/lazypull bench --images all --runs 3

# Component benchmarks (by hand): conversion vs ctr-remote, registry client vs curl, one layer vs ext4,
# a large layer's TOC opened (what a lazy Prepare spends without the network).
bench-parts: setup
	$(PY) bench/bench_convert.py
	$(PY) bench/bench_convert.py --registry
	$(PY) bench/bench_registry.py
	$(PY) bench/bench_layer.py
	$(PY) bench/bench_toc_build.py

# The layer lifecycle under a node's concurrency, by hand (CI runs a few hundred operations):
# images sharing layers pulled, run and removed by four workers; STRESS_ARGS=--faults adds kill -9s.
stress: setup
	$(PY) -m tests.support.stress --ops 10000 $(STRESS_ARGS)
