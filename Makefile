# spikeforge: `make demo` and `make test` work on a fresh machine with only Python installed.
# Users with a GPU pick their torch build: make demo TORCH_SPEC="torch==2.13.0 --index-url ..."
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.spikeforge-installed
SHARED_DATA := $(abspath ../shared/data)
# The tests read the real data sets from ../shared/data when it is there.
ifneq ($(wildcard $(SHARED_DATA)/MNIST),)
export SPIKEFORGE_DATA ?= $(SHARED_DATA)
endif

.PHONY: demo test lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/spikeforge demo

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=20

lint: $(STAMP)
	$(BIN)/ruff check spikeforge tests benchmarks scripts

clean:
	rm -rf $(VENV) spikeforge-demo .pytest_cache
