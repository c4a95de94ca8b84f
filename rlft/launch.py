"""`rlft launch CONFIG [key=value ...]`: submit `rlft train` (or, with `--command sft`, the SFT warm-up) to a
Ray cluster as a Ray job.

    rlft launch --address http://HEAD:8265 configs/demo.yaml cluster.learner_ranks=2 cluster.rollout_workers=2
    rlft launch --address http://HEAD:8265 --command sft configs/demo.yaml cluster.learner_ranks=8

The config is validated here first, for that command (a typo fails in a second, not after the job starts).
The job runs `python -m rlft.cli train CONFIG ... cluster.backend=ray cluster.address=auto` with the current directory
uploaded as its working directory (Ray skips what .gitignore lists; `runs/`, `.venv*` and `.git` are
excluded explicitly). `run.dir` and a local `model.path` are made absolute, because the job runs in a copy
of the working directory: on a multi-node cluster they must be on storage every node mounts (or
`model.path` a hub name). The cluster needs rlft's dependencies installed (the Docker images in
`docker/` do). Implemented with the `ray job submit` command line (from `ray[default]`), so this module
does not import ray.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from rlft.config import ConfigError, load_config, split_config_args

EXCLUDES = ["runs/", ".venv/", ".venv-*/", ".git/", "__pycache__/", "*.egg-info/"]
ENV_PASSTHROUGH = ("HF_", "RLFT_", "TOKENIZERS_", "TRANSFORMERS_")


def submit_command(config: str | None, overrides: list[str], *, address: str, working_dir: str = ".",
                   wait: bool = True, job_id: str | None = None, command: str = "train") -> list[str]:
    """The `ray job submit` argv for a `rlft <command>` job, train or sft (validated, paths made absolute)."""
    cfg = load_config(config, [*overrides, "cluster.backend=ray"], command=command)  # what the job will run
    extra = ["cluster.backend=ray", "cluster.address=auto", f"run.dir={Path(cfg.run.dir).resolve()}"]
    model = Path(cfg.model.path).expanduser()
    if cfg.model.path not in ("tiny", "smollm2-135m") and model.exists():
        extra.append(f"model.path={model.resolve()}")
    entry = [sys.executable if os.environ.get("RLFT_LAUNCH_LOCAL_PYTHON") else "python", "-m", "rlft.cli", command,
             *([config] if config else []), *overrides, *extra]
    env = {k: v for k, v in os.environ.items() if k.startswith(ENV_PASSTHROUGH)}
    runtime_env = {"working_dir": working_dir, "excludes": EXCLUDES, "env_vars": env}
    ray_cli = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
    cmd = [ray_cli, "job", "submit", "--address", address, "--runtime-env-json", json.dumps(runtime_env)]
    if job_id:
        cmd += ["--submission-id", job_id]
    if not wait:
        cmd.append("--no-wait")
    return cmd + ["--", *map(shlex.quote, entry)]  # ray joins these with spaces into a shell command


def launch(config_args: list[str], *, address: str | None, working_dir: str, wait: bool, job_id: str | None,
           command: str = "train") -> int:
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise ConfigError("rlft launch needs the cluster's job address: --address http://HEAD:8265 "
                          "(or set RAY_ADDRESS)")
    config, overrides = split_config_args(config_args)
    cmd = submit_command(config, overrides, address=address, working_dir=working_dir, wait=wait, job_id=job_id,
                         command=command)
    print("rlft launch: " + shlex.join(cmd[:4]) + " ... -- " + " ".join(cmd[cmd.index("--") + 1:]), file=sys.stderr)
    return subprocess.call(cmd)
