"""Config loader: precedence, strictness, closest-key suggestions, type errors, docs on every field."""

import dataclasses
from pathlib import Path

import pytest

from rlft import config as C
from rlft.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]


def test_defaults_then_yaml_then_cli(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("sft:\n  lr: 0.5\n  epochs: 7\n")
    cfg = load_config(path, ["sft.lr=1e-4"])
    assert cfg.sft.lr == 1e-4  # CLI beats YAML
    assert cfg.sft.epochs == 7  # YAML beats default
    assert cfg.sft.warmup_ratio == C.SFTConfig().warmup_ratio  # default kept


def test_unknown_key_names_closest(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'sft.lrr'.*did you mean 'sft.lr'"):
        load_config(None, ["sft.lrr=1"])
    path = tmp_path / "c.yaml"
    path.write_text("sft:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown key 'sft.epoch'.*'sft.epochs'"):
        load_config(path)


def test_leaf_under_wrong_section_is_suggested():
    with pytest.raises(ConfigError, match="did you mean 'sft.warmup_ratio'"):
        load_config(None, ["eval.warmup_ratio=0.2"])


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("sft.epochs=three", "'sft.epochs' = 'three' (str) is not a valid int"),
        ("sft.epochs=2.5", "'sft.epochs' = 2.5 (float) is not a valid int"),
        ("run.resume=maybe", "'run.resume' = 'maybe' (str) is not a valid bool"),
        ("data.style=latex", "'data.style' = 'latex' is not one of ['nl', 'program']"),
        ("sft.lr=fast", "'sft.lr' = 'fast' (str) is not a valid float"),
    ],
)
def test_type_errors_name_key_value_and_type(override, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert fragment in str(e.value)


def test_optional_and_int_to_float():
    cfg = load_config(None, ["data.limit_train=null", "sft.lr=1", "data.limit_test=5"])
    assert cfg.data.limit_train is None and cfg.sft.lr == 1.0 and isinstance(cfg.sft.lr, float)
    assert cfg.data.limit_test == 5


def test_section_cannot_be_set_as_value():
    with pytest.raises(ConfigError, match="is a section"):
        load_config(None, ["sft=3"])


def test_validate_cross_field():
    with pytest.raises(ConfigError, match="sft.sequences_per_step"):
        load_config(None, ["sft.sequences_per_step=0"])
    with pytest.raises(ConfigError, match="head_dim"):
        load_config(None, ["model.tiny.hidden_size=100"])
    with pytest.raises(ConfigError, match="does not divide across 3 ranks"):
        C.validate(C.Config(), world_size=3)


@pytest.mark.parametrize("overrides, fragment", [
    (["adapter.kind=loreft", "adapter.repft.tied=false", "adapter.repft.positions=all"], "needs adapter.repft.positions=prefix_suffix"),
    (["adapter.kind=brep", "adapter.repft.tied=false"], "got prompt_plus_first_n"),  # brep's default rule
    (["adapter.kind=loreft", "adapter.repft.first=0", "adapter.repft.last=0"], "edits nothing"),
    (["adapter.kind=lora", "adapter.lora.rank=0"], "adapter.lora.rank must be >= 1"),
    (["adapter.kind=heft", "adapter.heft.lora_fraction=1.5"], "adapter.heft.lora_fraction must be in [0, 1]"),
    (["adapter.kind=brep", "adapter.brep.bias_bound=-1"], "bias_bound must be >= 0"),
])
def test_adapter_settings_are_validated(overrides, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert fragment in str(e.value)
    load_config(None, ["adapter.kind=full", *overrides[1:]])  # full finetuning ignores the adapter settings


def test_adapter_section_round_trips():
    cfg = load_config(None, ["adapter.kind=loreft", "adapter.repft.layers=[0, -1]", "adapter.repft.positions=all"])
    assert cfg.adapter.repft.layers == [0, -1]
    assert C.adapter_config_from_dict(C.to_dict(cfg)["adapter"]) == cfg.adapter
    with pytest.raises(ConfigError, match="did you mean 'adapter.repft.rank'"):
        load_config(None, ["adapter.repft.rnak=4"])


def test_every_field_has_a_doc():
    def walk(cls):
        docs = C.field_docs(cls)
        for f in dataclasses.fields(cls):
            assert docs.get(f.name), f"{cls.__name__}.{f.name} has no docstring under it"
            if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory):
                walk(f.default_factory)

    walk(C.Config)
    assert "sft.lr" in C.describe() and "Peak learning rate" in C.describe()


def test_round_trip_through_dict():
    cfg = load_config(None, ["sft.lr=0.25", "data.limit_test=3"])
    assert C.config_from_dict(C.to_dict(cfg)) == cfg


def test_geometry_is_derived_not_written_back():
    cfg = load_config(None, ["sft.sequences_per_step=32", "sft.micro_batch_size_per_device=8"])
    geo = C.derive_sft_geometry(cfg, world_size=2)
    assert (geo.micro_batch_size_per_device, geo.grad_accum_steps) == (8, 2)
    assert cfg.sft.sequences_per_step == 32


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    load_config(path)
