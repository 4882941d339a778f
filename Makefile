# sead: two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.sead-installed
# torch first, pinned to the CPU wheel on this machine's disk; the constraint file keeps any
# dependency from pulling a different (CUDA, several GB) torch.
TORCH  ?= torch==2.13.0

.PHONY: install test lint demo demo-quick bench bench-quick clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

lint: install
	$(BIN)/ruff check src tests

test: install lint
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/sead demo

demo-quick: install
	$(BIN)/sead demo --quick

bench: install
	$(BIN)/sead bench all

bench-quick: install
	$(BIN)/sead bench all --quick

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
