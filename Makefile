.PHONY: test demo bench bench-all bench-parts lint

test:
	./scripts/test.sh

demo:
	./demo.sh

lint:
	python3 -m ruff check lazypull tests bench

# The benchmark (by hand; never part of the tests): see `lazypull bench --help`.
bench:
	lazypull bench --images seed-large --runs 3

bench-all:
	lazypull bench --images all --runs 3

# Component benchmarks (by hand): conversion vs ctr-remote, registry client vs curl, one layer vs ext4.
bench-parts:
	python3 bench/bench_convert.py
	python3 bench/bench_convert.py --registry
	python3 bench/bench_registry.py
	python3 bench/bench_layer.py
