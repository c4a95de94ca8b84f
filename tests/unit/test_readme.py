"""Every `rlft` command in the README parses, and its config arguments load (docs cannot drift from flags)."""

import re
import shlex
from pathlib import Path

import pytest

from rlft.cli import build_parser
from rlft.config import COMMANDS, load_config, split_config_args

REPO = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    blocks = [b.replace("\\\n", " ") for b in blocks]  # join continued lines
    lines = [re.sub(r"\s+#\s.*$", "", ln).strip() for block in blocks for ln in block.splitlines()]
    return [ln for ln in lines if ln.startswith("rlft ")]


def test_readme_has_commands():
    assert len(readme_commands()) >= 5


@pytest.mark.parametrize("line", readme_commands())
def test_readme_command_parses(line):
    argv = shlex.split(line)[1:]
    if argv[0] == "check":
        from rewards.cli import _parser as check_parser  # the checker owns its flags

        check_parser().parse_args(argv[1:])
        return
    args = build_parser().parse_args(argv)
    path, overrides = split_config_args(getattr(args, "config", []))  # `rlft model merge` takes no config
    # as the command will load it: checked for what it runs (`rlft launch` submits `rlft train` or `sft` on Ray)
    command = args.command if argv[0] == "launch" else argv[0] if argv[0] in COMMANDS else None
    if argv[0] == "launch":
        overrides = [*overrides, "cluster.backend=ray"]
    load_config(REPO / path if path else None, overrides, command=command)


def test_readme_make_targets_exist():
    makefile = (REPO / "Makefile").read_text()
    for target in re.findall(r"^make (\w[\w-]*)", (REPO / "README.md").read_text(), flags=re.M):
        assert re.search(rf"^{target}:", makefile, flags=re.M), target


def test_peer_mapping_names_only_real_rlft_keys():
    """Every `section.key` in the rlft column of "Coming from TRL / verl / OpenRLHF" is a config key."""
    from rlft.config import all_keys

    text = (REPO / "README.md").read_text()
    table = text.split("### Coming from TRL / verl / OpenRLHF", 1)[1].split("\n### ", 1)[0]
    rows = [ln for ln in table.splitlines() if ln.startswith("| ") and not ln.startswith("| what")]
    assert len(rows) >= 15
    keys = set(all_keys())
    for row in rows:
        rlft_column = row.strip().strip("|").split(" | ")[-1]
        names = [code.split("=")[0] for code in re.findall(r"`([^`]+)`", rlft_column)]
        dotted = [n for n in names if re.fullmatch(r"[a-z_]+\.[a-z_.]+", n) and not n.endswith(".py")]
        assert dotted or "`algo`" in rlft_column, row
        for name in dotted:
            assert name in keys, f"{name} (README row {row[:40]!r}) is not an rlft config key"
