"""Experiment trackers beside `metrics.jsonl`: Weights & Biases (`log.wandb`) and MLflow (`log.mlflow`).

`MetricLogger` (`rlft/utils/logging.py`) stays the one place metrics go: a tracker is a small backend it
forwards each row to, at the row's step. A tracker is opened with the resolved config (W&B's run config;
MLflow's params plus a `config.yaml` artifact), and `rlft compare` opens one for itself to store its results
table and plots. Neither package is imported unless its key is on; asking for one that is not installed is
a one-line `ConfigError` naming what to pip install.

    rlft train configs/demo.yaml log.wandb=true log.wandb_project=reft        # WANDB_MODE=offline: no network
    rlft compare configs/demo.yaml log.mlflow=true                            # mlflow ui --backend-store-uri runs/demo/mlruns

Resume: the run ids are kept in `run.dir/trackers.json`, and a resumed run logs into the same tracker runs.
W&B steps only go forward, so W&B keeps its rows for the steps between the checkpoint and the interruption
(exact resume logs the same values again); `metrics.jsonl` is rewritten exactly.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Protocol

from rlft.config import Config, ConfigError, to_dict

IDS_FILE = "trackers.json"
DEFAULT_PROJECT = "rlft"


class Tracker(Protocol):
    def log(self, step: int, metrics: dict[str, float]) -> None:
        """One row of numeric metrics at `step` (the step of `metrics.jsonl`)."""
        ...

    def log_results(self, columns: list[str], rows: list[list[Any]], files: list[Path]) -> None:
        """`rlft compare`'s results: a table, and files (markdown, JSON, PNG plots) stored with the run."""
        ...

    def close(self) -> None:
        ...


def open_trackers(cfg: Config, run_dir: str | Path, *, resume: bool) -> list[Tracker]:
    """The trackers `cfg.log` asks for, each with a run named `log.run_name` (None: the run directory's name).

    Args:
        cfg: the resolved config (logged as the run's config).
        run_dir: where the run writes (W&B files, the default MLflow store, `trackers.json`).
        resume: continue the tracker runs recorded in `run_dir/trackers.json`; False starts new ones.
    Returns:
        the open trackers (empty when none is on).
    """
    log = cfg.log
    if not (log.wandb or log.mlflow):
        return []
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ids_file = run_dir / IDS_FILE
    ids = json.loads(ids_file.read_text()) if resume and ids_file.exists() else {}
    name = log.run_name or run_dir.resolve().name
    trackers: list[Tracker] = []
    if log.wandb:
        trackers.append(WandbTracker(cfg, run_dir, name, ids.get("wandb")))
        ids["wandb"] = trackers[-1].run_id
    if log.mlflow:
        trackers.append(MLflowTracker(cfg, run_dir, name, ids.get("mlflow")))
        ids["mlflow"] = trackers[-1].run_id
    ids_file.write_text(json.dumps(ids, indent=2))
    return trackers


def mlflow_uri(cfg: Config, run_dir: str | Path) -> str:
    """`log.mlflow_tracking_uri`, or the file store `run_dir/mlruns` as a `file:` URI."""
    return cfg.log.mlflow_tracking_uri or (Path(run_dir).resolve() / "mlruns").as_uri()


def _require(module: str, extra: str, key: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{key}=true needs the {extra} package: pip install -e '.[{extra}]' "
                          f"(or pip install {extra}), or set {key}=false") from None


class WandbTracker:
    """A W&B run (`wandb.init(reinit="create_new")`, so a comparison's runs can be open at once) writing
    under `run_dir/wandb`."""

    def __init__(self, cfg: Config, run_dir: Path, name: str, run_id: str | None):
        wandb = _require("wandb", "wandb", "log.wandb")
        log = cfg.log
        self.wandb = wandb
        self.run = wandb.init(project=log.wandb_project or DEFAULT_PROJECT, entity=log.wandb_entity,
                              group=log.wandb_group, name=name, dir=str(run_dir), config=to_dict(cfg),
                              id=run_id, resume="allow" if run_id else None, reinit="create_new")
        self.run_id = self.run.id

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def log_results(self, columns: list[str], rows: list[list[Any]], files: list[Path]) -> None:
        media: dict[str, Any] = {"results": self.wandb.Table(columns=columns, data=rows)}
        media.update({f.stem: self.wandb.Image(str(f)) for f in files if f.suffix == ".png"})
        self.run.log(media)
        for f in files:  # the files themselves, under the run's files/
            self.run.save(str(f), base_path=str(f.parent), policy="now")

    def close(self) -> None:
        self.run.finish()


class MLflowTracker:
    """An MLflow run through `MlflowClient` (no global active run, so a comparison's runs can be open at once)."""

    def __init__(self, cfg: Config, run_dir: Path, name: str, run_id: str | None):
        _require("mlflow", "mlflow", "log.mlflow")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = mlflow_uri(cfg, run_dir)
        if uri.startswith("file:"):
            # MLflow 3 refuses its file store unless this is set; a local store under run.dir is what we want.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        experiment = cfg.log.mlflow_experiment or DEFAULT_PROJECT
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        if run_id:  # params are immutable in MLflow and were logged when the run began
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
            return
        self.run_id = self.client.create_run(experiment_id, run_name=name).info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in _flatten(to_dict(cfg)).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        self.client.log_dict(self.run_id, to_dict(cfg), "config.yaml")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def log_results(self, columns: list[str], rows: list[list[Any]], files: list[Path]) -> None:
        self.client.log_dict(self.run_id, {"columns": columns, "rows": rows}, "results_table.json")
        for f in files:
            self.client.log_artifact(self.run_id, str(f))

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def _flatten(d: dict, prefix: str = "") -> dict:
    out: dict = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out
