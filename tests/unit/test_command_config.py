"""Configs checked for the command that runs them: a key on the command line that the command cannot use is
an error naming it; YAML files shared between commands keep loading; `rlft sft` on Ray gets SFT's checks,
not the RL roles'."""

from pathlib import Path

import pytest

from rlft.config import COMMANDS, ConfigError, derive_sft_geometry, load_config
from rlft.tasks.encoding import IGNORE
from rlft.trainers.sft import step_micro_batches

REPO = Path(__file__).resolve().parents[2]
RAY = ["cluster.backend=ray", "cluster.learner_ranks=2"]


@pytest.mark.parametrize("command, overrides, key", [
    ("sft", ["ppo.lr=1e-4"], "ppo.lr"),
    ("sft", ["rollout.temperature=0.7"], "rollout.temperature"),
    ("sft", ["rollout.engine=vllm"], "rollout.engine"),  # SFT evaluates with the HF engine
    ("sft", ["kl.coef=0.1"], "kl.coef"),
    ("sft", ["reward.fn=math"], "reward.fn"),
    ("sft", ["algo=grpo", "rollout.samples_per_prompt=2"], "algo"),
    ("sft", ["compare.seeds=[1,2]"], "compare.seeds"),
    ("sft", ["carft.tau=0.1"], "carft.tau"),
    ("sft", ["offline_st.samples_per_question=4"], "offline_st.samples_per_question"),
    ("sft", [*RAY, "cluster.rollout_workers=2"], "cluster.rollout_workers"),
    ("sft", [*RAY, "cluster.reward_workers=2"], "cluster.reward_workers"),
    ("sft", [*RAY, "cluster.weight_sync=broadcast"], "cluster.weight_sync"),
    ("sft", [*RAY, "cluster.placement=colocated", "cluster.rollout_workers=2"], "cluster.placement"),
    ("sft", [*RAY, "cluster.on_worker_failure=restart"], "cluster.on_worker_failure"),
    ("sft", ["cluster.learner_ranks=2"], "cluster.learner_ranks"),  # without cluster.backend=ray
    ("sft", ["kl.reference_device=cpu"], "kl.reference_device"),  # SFT has no reference
    ("train", ["cluster.learner=torch"], "cluster.learner"),
    ("compare", ["cluster.rollout_workers=2"], "cluster.rollout_workers"),
    ("train", ["sft.lr=1e-4"], "sft.lr"),  # algo=reft runs no SFT
    ("train", ["algo=online_st", "sft.lr=1e-4"], "sft.lr"),
    ("train", ["eval.every_epoch=false"], "eval.every_epoch"),
    ("train", ["compare.methods=[sft]"], "compare.methods"),
    ("eval", ["cluster.backend=ray"], "cluster.backend"),
    ("eval", ["cluster.learner_ranks=2"], "cluster.learner_ranks"),
    ("eval", ["sft.lr=1e-4"], "sft.lr"),
    ("eval", ["ppo.iterations=3"], "ppo.iterations"),
    ("eval", ["eval.every_epoch=false"], "eval.every_epoch"),
    ("eval", ["adapter.kind=lora"], "adapter.kind"),  # the checkpoint folder decides
    ("eval", ["run.resume=false"], "run.resume"),
    ("eval", ["kl.reference_device=cpu"], "kl.reference_device"),
    ("eval", ["model.compile=true"], "model.compile"),  # decoding keeps the eager layers
])
def test_command_line_key_that_cannot_take_effect_is_an_error(command, overrides, key):
    load_config(None, overrides)  # a valid config as such: only the command makes the key ineffective
    with pytest.raises(ConfigError, match=rf"command line: {key.replace('.', r'[.]')} cannot take effect with "
                                          rf"`rlft {command}`"):
        load_config(None, overrides, command=command)


@pytest.mark.parametrize("command, overrides", [
    ("sft", ["run.seed=3", "model.dtype=bfloat16", "data.n_train=10", "sft.lr=1e-4", "eval.every_epoch=false",
             "adapter.kind=lora", "log.every_steps=5", "rollout.hf_lean_step=false", "run.device=cpu",
             "model.gradient_checkpointing=true", "model.attn_implementation=eager"]),
    ("sft", ["model.precision=bf16-mixed"]),
    ("sft", [*RAY, "cluster.learner=deepspeed", "cluster.deepspeed_config=configs/deepspeed/zero3.json",
             "run.device=cuda", "cluster.gpus_per_worker=1", "cluster.cpus_per_worker=2", "cluster.num_cpus=8", "cluster.address=auto",
             "cluster.startup_timeout=60"]),
    ("sft", ["cluster.backend=local"]),
    ("sft", ["model.compile=true", "adapter.kind=lora"]),
    ("sft", ["model.compile=true", *RAY[:1], "cluster.learner=torch"]),
    ("train", ["model.compile=true", "algo=grpo", "rollout.samples_per_prompt=4", "ppo.prefix_sharing=false"]),
    ("train", ["model.compile=true"]),  # reft: one sample per prompt, so no rows share one
    ("train", ["model.compile=true", "algo=carft", "rollout.samples_per_prompt=2"]),  # its policy never shares
    ("train", ["model.compile=true", "algo=online_st", "rollout.samples_per_prompt=2"]),  # CE updates only
    ("train", ["model.compile=true", "algo=offline_st"]),  # an SFT loop
    ("train", ["ppo.lr=1e-4", "rollout.temperature=0.7", "kl.coef=0.1", "eval.max_new_tokens=8", *RAY,
               "cluster.rollout_workers=2"]),
    ("train", ["algo=offline_st", "sft.lr=1e-4", "sft.epochs=2", "eval.every_epoch=false"]),
    ("train", ["algo=online_st", "sft.max_seq_tokens=256"]),
    ("compare", ["ppo.lr=1e-4", "sft.lr=1e-4", "compare.seeds=[1,2]", *RAY]),
    ("eval", ["run.dir=x", "run.seed=2", "model.path=x", "data.test=arithmetic", "eval.samples=4",
              "eval.temperature=0.5", "eval.batch_size=8", "eval.max_new_tokens=64", "eval.partial_reward=0",
              "rollout.hf_lean_step=false", "run.device=cpu", "model.precision=bf16-mixed", "model.dtype=bfloat16"]),
])
def test_command_line_keys_the_command_reads_load(command, overrides):
    load_config(None, overrides, command=command)


def test_sft_on_ray_gets_the_device_checks_of_the_learner_ranks():
    """The SFT warm-up on Ray starts learner ranks, so run.device must agree with their bundles as in RL."""
    with pytest.raises(ConfigError, match="cluster.gpus_per_worker=1 reserves GPUs, but run.device=cpu"):
        load_config(None, [*RAY, "run.device=cpu", "cluster.gpus_per_worker=1"], command="sft")
    with pytest.raises(ConfigError, match="run.device=cuda with cluster.backend=ray needs GPUs"):
        load_config(None, [*RAY, "run.device=cuda"], command="sft")


def test_yaml_keys_for_other_commands_are_fine(tmp_path):
    """One file serves every command (configs/demo.yaml sets ppo.*, rollout.* and compare.* beside sft.*)."""
    path = tmp_path / "shared.yaml"
    path.write_text("sft:\n  lr: 1.0e-3\nppo:\n  lr: 1.0e-5\nrollout:\n  temperature: 0.7\ncompare:\n  seeds: [1, 2]\n"
                    "cluster:\n  backend: ray\n  learner_ranks: 2\n  rollout_workers: 2\n  placement: colocated\n")
    for command in COMMANDS:
        load_config(path, [], command=command)


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
@pytest.mark.parametrize("command", COMMANDS)
def test_shipped_configs_load_for_every_command(path, command):
    load_config(path, [], command=command)
    if command in ("sft", "compare"):  # the warm-up on 2 learner ranks
        load_config(path, RAY, command=command)


def test_sft_on_ray_gets_sfts_checks_not_the_rl_roles(tmp_path):
    # 3 ranks: sft.sequences_per_step=30 splits, the RL minibatch of 32 samples does not
    three = [*RAY[:1], "cluster.learner_ranks=3", "sft.sequences_per_step=30"]
    load_config(None, three, command="sft")
    with pytest.raises(ConfigError, match="ppo.sequences_per_minibatch"):
        load_config(None, three, command="train")
    with pytest.raises(ConfigError, match=r"sft.sequences_per_step=32 does not split evenly across "
                                          r"cluster.learner_ranks=3"):
        load_config(None, [*RAY[:1], "cluster.learner_ranks=3", "rollout.prompts_per_step=30"], command="sft")
    # what only the RL roles need (colocated: one engine per rank) does not stop the warm-up of a shared file,
    # nor an evaluation (in this process). (Every algorithm of the table runs on Ray since CARFT does.)
    for text, message in (("placement: colocated\n  learner_ranks: 2\n", "cluster.placement=colocated"),):
        path = tmp_path / "c.yaml"
        path.write_text("cluster:\n  backend: ray\n  " + text)
        load_config(path, [], command="sft")
        load_config(path, [], command="eval")
        for command in ("train", "compare"):
            with pytest.raises(ConfigError, match=message):
                load_config(path, [], command=command)


def test_sft_on_ray_refuses_adapters():
    with pytest.raises(ConfigError, match="adapter.kind=lora runs with cluster.backend=local only"):
        load_config(None, [*RAY, "adapter.kind=lora"], command="sft")


@pytest.mark.parametrize("n, world, micro, sizes", [
    (32, 1, 16, [16, 16]),
    (24, 1, 16, [12, 12]),  # near-equal, none above the micro-batch size
    (32, 2, 12, [8, 8, 8, 8]),  # 16 per rank in 2 micro-batches each
    (3, 2, 1, [1, 1, 1]),  # 4 micro-batches wanted, 3 rows: the group pads rank 1 with a zero-loss copy
    (17, 2, 8, [4, 4, 4, 5]),
])
def test_step_micro_batches(n, world, micro, sizes):
    cfg = load_config(None, [f"sft.sequences_per_step={max(n, world) // world * world}",
                             f"sft.micro_batch_size_per_device={micro}"])
    geo = derive_sft_geometry(cfg, world)
    batch = [{"input_ids": [5] * (i + 2), "labels": [IGNORE] + [5] * (i + 1)} for i in range(n)]
    micro_batches = step_micro_batches(batch, geo, pad_id=0)
    assert [mb["input_ids"].shape[0] for mb in micro_batches] == sizes
    lengths = [int(n) for mb in micro_batches for n in mb["attention_mask"].sum(1)]
    assert lengths == [len(b["input_ids"]) for b in batch]  # every example once, in order


def test_launch_submits_the_command_checked_for_it():
    from rlft.launch import submit_command

    argv = submit_command(None, ["cluster.learner_ranks=2"], address="http://127.0.0.1:1", command="sft")
    job = argv[argv.index("--") + 1:]
    assert job[2:4] == ["rlft.cli", "sft"] and "cluster.backend=ray" in job
    with pytest.raises(ConfigError, match="cluster.rollout_workers cannot take effect with `rlft sft`"):
        submit_command(None, ["cluster.rollout_workers=2"], address="http://127.0.0.1:1", command="sft")
    argv = submit_command(None, ["cluster.rollout_workers=2"], address="http://127.0.0.1:1")
    assert argv[argv.index("--") + 1:][2:4] == ["rlft.cli", "train"]


@pytest.mark.parametrize("command, overrides, message", [
    ("train", ["algo=grpo", "rollout.samples_per_prompt=4"], "ppo.prefix_sharing=true and rollout.samples_per_prompt=4"),
    ("sft", ["model.gradient_checkpointing=true"], "under model.gradient_checkpointing=true"),
    ("sft", ["adapter.kind=loreft"], "adapter.kind=loreft edits activations with hooks"),
    ("sft", [*RAY, "cluster.learner=deepspeed"], "cluster.learner=deepspeed"),
])
def test_compile_where_it_cannot_take_effect_is_an_error(command, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["model.compile=true", *overrides], command=command)
