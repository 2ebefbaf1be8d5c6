"""`aipc --help` lists every command once, under a headed group (pipeline/cli/help.py)."""

from __future__ import annotations

import subprocess
import sys

from pipeline.cli import COMMANDS, build_parser
from pipeline.cli.help import GROUPS, OTHER, commands_epilog, group_of, grouped


def test_every_command_is_in_exactly_one_group() -> None:
    groups = grouped(COMMANDS)
    listed = [name for names in groups.values() for name in names]
    assert sorted(listed) == sorted(COMMANDS), "each command once"
    assert OTHER not in groups, f"commands no group names: {groups.get(OTHER)}"
    named = [name for names in GROUPS.values() for name in names]
    assert len(named) == len(set(named)), "a command named by two groups"
    assert set(named) <= set(COMMANDS), f"groups name commands that do not exist: {set(named) - set(COMMANDS)}"


def test_a_new_command_is_never_hidden() -> None:
    def cmd_new() -> None:
        """Something new."""

    assert group_of("brand-new") == OTHER and group_of("onnx-compat") == "Family tools"
    assert grouped({**COMMANDS, "brand-new": cmd_new})[OTHER] == ["brand-new"]
    assert "Other commands:\n  brand-new" in commands_epilog({**COMMANDS, "brand-new": cmd_new})


def test_help_shows_the_groups_once_each_and_no_flat_list() -> None:
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "--help"], capture_output=True, text=True, check=True)
    text = out.stdout
    for title in grouped(COMMANDS):
        assert text.count(f"\n{title}:\n") == 1, title
    starts = [line.split()[0] for line in text.splitlines() if line.startswith("  ") and not line.startswith("   ")]
    assert sorted(s for s in starts if not s.startswith("-")) == sorted(COMMANDS), "every command listed once"
    assert "positional arguments" not in text and text.startswith("usage: aipc [-h] [--version] COMMAND ...")
    assert text.index("Build and check:") < text.index("Deprecated aliases")
    assert "\n  convert " in text


def test_the_epilog_wraps_to_the_width() -> None:
    assert all(len(line) <= 80 for line in commands_epilog(COMMANDS, width=80).splitlines())


def test_commands_still_parse_and_own_flags_reach_the_command() -> None:
    assert build_parser().parse_args(["presets"]).func is COMMANDS["presets"]
    args = build_parser().parse_args(["exp-run", "-S", "+openvino.int4.new_key=1", "--help"])
    assert args.argv == ["-S", "+openvino.int4.new_key=1", "--help"], "a Hydra append override is not a flag"
    assert build_parser().parse_args(["convert", "tiny", "--to", "npu-int4", "~onnx.cpu_int4"]).argv == [
        "tiny",
        "--to",
        "npu-int4",
        "~onnx.cpu_int4",
    ]
