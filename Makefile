# Cell instance segmentation stack: `make demo` runs the whole path on synthetic data, `make test` the tests.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.install-stamp
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: install demo test test-slow bench bench-study lint format clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt requirements-compress.txt pyproject.toml tools/install.sh
	VENV=$(VENV) bash tools/install.sh
	@touch $(STAMP)

demo: install
	$(PY) tools/run_recipe.py configs/recipes/demo_cpu.yaml

test: install
	$(PY) -m pytest -m "not slow and not gpu" $(PYTEST_ARGS)

test-slow: install
	$(PY) -m pytest -m "slow" $(PYTEST_ARGS)
	$(PY) -m pytest tests/test_fuzz_parsers.py --hypothesis-profile=thorough --hypothesis-show-statistics $(PYTEST_ARGS)

bench: install
	OMP_NUM_THREADS=1 $(PY) benchmarks/bench_ensemble.py $(BENCH_ARGS)
	OMP_NUM_THREADS=1 $(PY) benchmarks/bench_models.py $(BENCH_ARGS)

# the accuracy study of the U-Net optimizer x loss x compression paper (studies/unet.py) on the real images of
# ../shared (long; BENCH_ARGS e.g. --quick)
bench-study: install
	OMP_NUM_THREADS=1 $(PY) studies/unet.py $(BENCH_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf work_dirs .pytest_cache .ruff_cache
