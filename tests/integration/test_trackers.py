"""W&B and MLflow beside metrics.jsonl: the config and every metric row reach both, at the same steps; `rlft
compare` stores its results table and plots in a run of its own; a missing package is a one-line error.

Nothing touches the network: W&B runs offline (WANDB_MODE=offline) and is read back from its `.wandb`
transaction log, a LevelDB-style log of protobuf records (`read_wandb_records`); MLflow writes a local file store
under run.dir, with its usage telemetry off.
"""

import json
import os
import struct
import sys
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # before mlflow loads: nothing leaves the machine
wandb = pytest.importorskip("wandb")
pytest.importorskip("mlflow")

from rlft.cli import main  # noqa: E402
from rlft.config import ConfigError, load_config  # noqa: E402
from rlft.trainers.sft import run_sft  # noqa: E402
from rlft.utils.trackers import open_trackers  # noqa: E402

MICRO = [
    "data.difficulty=0", "data.n_train=24", "data.n_test=4", "model.tiny.hidden_size=128", "model.tiny.num_layers=2",
    "model.tiny.intermediate_size=256", "model.tiny.vocab_size=320", "sft.sequences_per_step=8",
    "sft.micro_batch_size_per_device=8", "sft.epochs=2", "eval.max_new_tokens=8", "rollout.prompts_per_step=4",
    "rollout.max_new_tokens=8", "ppo.iterations=2", "ppo.eval_every=1", "ppo.save_every=2", "log.progress=false",
    "log.every_steps=1", "log.tensorboard=false",
]


@pytest.fixture(autouse=True)
def offline_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / var.lower()))


def read_wandb_records(run_dir: Path) -> list:
    """Every record of the W&B offline runs under `run_dir/wandb`, in order (protobuf `Record`s)."""
    from wandb.proto import wandb_internal_pb2 as pb

    records = []
    for path in sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb")):
        data = path.read_bytes()
        assert data[:4] == b":W&B"
        pos, block, chunks = 7, 32768, b""  # header: magic, 2-byte id, 1-byte version
        while pos + 7 <= len(data):
            if block - pos % block < 7:  # a block's tail too short for a record header is padding
                pos += block - pos % block
                continue
            _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])  # kind: 1 full, 2 first, 3 middle, 4 last
            chunks = (b"" if kind in (1, 2) else chunks) + data[pos + 7:pos + 7 + length]
            pos += 7 + length
            if kind in (1, 4):
                record = pb.Record()
                record.ParseFromString(chunks)
                records.append(record)
    return records


def wandb_history(records) -> dict[int, dict]:
    """{step: {key: value}} of the logged rows; media (tables, images) as dicts of their fields."""
    rows: dict[int, dict] = {}
    for r in records:
        if r.WhichOneof("record_type") != "history":
            continue
        step = next((int(json.loads(i.value_json)) for i in r.history.item if list(i.nested_key) == ["_step"]),
                    r.history.step.num)
        row = rows.setdefault(step, {})
        for item in r.history.item:
            *outer, leaf = item.nested_key or [item.key]  # a media item is stored field by field
            if not (outer or [leaf])[0].startswith("_"):
                target = row.setdefault(outer[0], {}) if outer else row
                target[leaf] = json.loads(item.value_json)
    return rows


def wandb_run(records):
    return next(r.run for r in records if r.WhichOneof("record_type") == "run")


def jsonl_rows(run_dir: Path) -> dict[int, dict]:
    """metrics.jsonl merged per step (SFT logs its train and eval metrics at the same step)."""
    rows: dict[int, dict] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows.setdefault(row.pop("step"), {}).update(row)
    return rows


def mlflow_runs(uri: str) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("rlft")
    return client, {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}


def test_sft_sends_config_and_every_metric_to_wandb_and_mlflow(tmp_path):
    run_dir = tmp_path / "warm"
    run_sft(load_config(None, [f"run.dir={run_dir}", *MICRO, "log.wandb=true", "log.mlflow=true",
                               "log.wandb_project=rlft-test"]))
    expected = jsonl_rows(run_dir)
    assert len(expected) == 6 and "eval/accuracy" in expected[6]

    records = read_wandb_records(run_dir)
    run = wandb_run(records)
    assert run.display_name == "warm" and run.project == "rlft-test"  # default name: the run directory's
    config = {u.key: json.loads(u.value_json) for u in run.config.update}
    assert config["sft"]["lr"] == load_config(None, MICRO).sft.lr
    assert config["log"]["wandb"] is True and config["data"]["n_train"] == 24
    history = wandb_history(records)
    assert sorted(history) == sorted(expected)  # the same steps
    for step, row in expected.items():
        assert history[step] == pytest.approx(row), step  # and the same values

    client, runs = mlflow_runs((run_dir / "mlruns").resolve().as_uri())
    mlrun = runs["warm"]
    assert mlrun.data.params["sft.lr"] == str(load_config(None, MICRO).sft.lr)
    assert mlrun.info.status == "FINISHED"
    for key in ("sft/loss", "eval/accuracy"):
        points = {m.step: m.value for m in client.get_metric_history(mlrun.info.run_id, key)}
        assert points == pytest.approx({s: r[key] for s, r in expected.items() if key in r}), key
    config_file = Path(client.download_artifacts(mlrun.info.run_id, "config.yaml", str(tmp_path / "dl")))
    assert "n_train: 24" in config_file.read_text()


def test_resumed_run_continues_its_tracker_runs(tmp_path):
    run_dir = tmp_path / "run"
    cfg = load_config(None, [f"run.dir={run_dir}", *MICRO, "log.wandb=true", "log.mlflow=true"])
    run_sft(cfg, stop_after_epoch=1)
    first = json.loads((run_dir / "trackers.json").read_text())
    run_sft(cfg)  # the same command again resumes from epoch 1
    assert json.loads((run_dir / "trackers.json").read_text()) == first
    records = read_wandb_records(run_dir)
    assert {r.run.run_id for r in records if r.WhichOneof("record_type") == "run"} == {first["wandb"]}
    assert sorted(wandb_history(records)) == sorted(jsonl_rows(run_dir))  # both halves, one run
    client, runs = mlflow_runs((run_dir / "mlruns").resolve().as_uri())
    assert list(runs) == ["run"] and runs["run"].info.run_id == first["mlflow"]
    steps = sorted({m.step for m in client.get_metric_history(first["mlflow"], "sft/loss")})
    assert steps == sorted(s for s, r in jsonl_rows(run_dir).items() if "sft/loss" in r)


def test_compare_logs_its_results_table_and_plots_in_its_own_run(tmp_path):
    root = tmp_path / "cmp"
    code = main(["compare", f"run.dir={root}", *MICRO, "compare.warmup_epochs=1", "compare.methods=[sft, reft]",
                 "compare.seeds=[1]", "log.wandb=true", "log.mlflow=true"])
    assert code == 0
    own = read_wandb_records(root)
    assert wandb_run(own).display_name == "cmp" and wandb_run(own).run_group == "cmp"
    logged = wandb_history(own)[0]
    assert logged["results"]["_type"] == "table-file"
    assert logged["accuracy"]["_type"] == "image-file" and logged["training"]["_type"] == "image-file"
    files = next((root / "wandb").glob("offline-run-*/files"))
    table = json.loads((files / logged["results"]["path"]).read_text())
    assert [row[0] for row in table["data"]] == ["sft", "reft"] and table["columns"][1] == "final_accuracy"
    results = json.loads((root / "results.json").read_text())
    assert table["data"][1][1] == pytest.approx(100 * results["methods"]["reft"]["final_accuracy"]["mean"])
    assert (files / "results.md").read_text() == (root / "results.md").read_text()
    # every run of the comparison: named after it, in its group, metrics in its MLflow store
    sub = wandb_run(read_wandb_records(root / "runs" / "reft" / "seed1"))
    assert sub.display_name == "cmp/reft/seed1" and sub.run_group == "cmp"
    assert wandb_run(read_wandb_records(root / "warmup")).display_name == "cmp/warmup"
    client, runs = mlflow_runs((root / "mlruns").resolve().as_uri())
    assert set(runs) == {"cmp", "cmp/warmup", "cmp/sft/seed1", "cmp/reft/seed1"}
    artifacts = {a.path for a in client.list_artifacts(runs["cmp"].info.run_id)}
    assert {"results.md", "results.json", "accuracy.png", "training.png", "results_table.json"} <= artifacts
    assert client.get_metric_history(runs["cmp/reft/seed1"].info.run_id, "reward/mean")


def test_tracker_keys_need_their_tracker_and_their_package(tmp_path, monkeypatch, capsys):
    with pytest.raises(ConfigError, match="log.wandb_project cannot take effect with log.wandb=false"):
        load_config(None, ["log.wandb_project=x"])
    with pytest.raises(ConfigError, match="log.mlflow_tracking_uri cannot take effect"):
        load_config(None, ["log.mlflow_tracking_uri=file:/tmp/x"])
    with pytest.raises(ConfigError, match="log.run_name"):
        load_config(None, ["log.run_name=x"])
    assert open_trackers(load_config(None, []), tmp_path, resume=False) == []  # nothing asked, nothing opened

    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed: `import wandb` raises ImportError
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[wandb\]'"):
        open_trackers(load_config(None, ["log.wandb=true"]), tmp_path, resume=False)
    sft_keys = [o for o in MICRO if not o.startswith(("rollout.", "ppo."))]  # what `rlft sft` reads
    assert main(["sft", f"run.dir={tmp_path / 'run'}", *sft_keys, "log.wandb=true"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rlft: error: log.wandb=true needs the wandb package")
