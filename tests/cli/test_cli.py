"""The `aipc` console script lists every command and each command has help, from its function's docstring."""

from __future__ import annotations

import argparse
import inspect
import subprocess
import sys

import pytest

from pipeline.cli import COMMANDS, add_arguments, argument_help, build_parser


def test_help_lists_every_command() -> None:
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "--help"], capture_output=True, text=True, check=True)
    for name in COMMANDS:
        assert name in out.stdout


def test_every_command_has_a_docstring() -> None:
    for name, func in COMMANDS.items():
        assert func.__doc__ and func.__doc__.strip(), name


def test_every_argument_has_help_from_its_docstring() -> None:
    for name, func in COMMANDS.items():
        helps = argument_help(func)
        assert set(helps) == set(inspect.signature(func).parameters), name
        assert all(text.strip() for text in helps.values()), name


def test_arguments_come_from_the_signature() -> None:
    args = build_parser().parse_args(["chat", "artifacts/openvino/int4", "--device", "GPU"])
    assert args.func is COMMANDS["chat"] and args.argnames == ["artifact", "device", "prompt"]
    assert (args.artifact, args.device, args.prompt) == ("artifacts/openvino/int4", "GPU", None)
    passed_on = build_parser().parse_args(["repro", "-f", "--help", "validate@int4"])  # dvc's flags, untouched
    assert passed_on.argv == ["-f", "--help", "validate@int4"]
    assert build_parser().parse_args(["compose", "model=tiny", "validate.repeats=2"]).overrides == [
        "model=tiny",
        "validate.repeats=2",
    ]


def test_a_command_with_a_type_the_command_line_cannot_give_is_refused() -> None:
    def cmd_bad(count: int) -> None:
        """Take a number.

        Args:
            count: How many.
        """

    with pytest.raises(TypeError, match="count"):
        add_arguments(argparse.ArgumentParser(), cmd_bad)
