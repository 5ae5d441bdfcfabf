.PHONY: test demo bench bench-all lint

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
