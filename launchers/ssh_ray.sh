#!/usr/bin/env bash
# Start a Ray cluster on plain SSH hosts and submit `rlft train` to it.
#
#   launchers/ssh_ray.sh hosts.txt configs/gsm8k_reft_paper.yaml cluster.learner_ranks=4 ...
#
# hosts.txt: one host per line, the first is the head. Every host needs the same rlft environment at
# the same path (RLFT_ENV, default: this repo's .venv) and passwordless SSH; run.dir and model.path
# must be on storage every host mounts. `ray stop` is run on every host at the end.
set -euo pipefail
HOSTS_FILE=${1:?usage: launchers/ssh_ray.sh HOSTS_FILE CONFIG [section.key=value ...]}
CONFIG=${2:?usage: launchers/ssh_ray.sh HOSTS_FILE CONFIG [section.key=value ...]}
shift 2
RLFT_ENV=${RLFT_ENV:-$(cd "$(dirname "$0")/.." && pwd)/.venv}
RAY_PORT=${RAY_PORT:-6379}
DASHBOARD_PORT=${DASHBOARD_PORT:-8265}
mapfile -t HOSTS < <(grep -v '^\s*\(#\|$\)' "$HOSTS_FILE")
HEAD=${HOSTS[0]}
HEAD_IP=$(ssh "$HEAD" hostname --ip-address | awk '{print $1}')

cleanup() { for h in "${HOSTS[@]}"; do ssh "$h" "$RLFT_ENV/bin/ray stop --force" >/dev/null 2>&1 || true; done; }
trap cleanup EXIT

ssh "$HEAD" "$RLFT_ENV/bin/ray start --head --node-ip-address=$HEAD_IP --port=$RAY_PORT \
  --dashboard-host=0.0.0.0 --dashboard-port=$DASHBOARD_PORT"
for h in "${HOSTS[@]:1}"; do
  ssh "$h" "$RLFT_ENV/bin/ray start --address=$HEAD_IP:$RAY_PORT"
done
"$RLFT_ENV/bin/rlft" launch --address "http://$HEAD_IP:$DASHBOARD_PORT" "$CONFIG" "$@"
