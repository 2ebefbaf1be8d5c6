"""The `aipc` console script lists every command and each command has help."""

from __future__ import annotations

import subprocess
import sys

from pipeline.cli import COMMANDS


def test_help_lists_every_command() -> None:
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "--help"], capture_output=True, text=True, check=True)
    for name in COMMANDS:
        assert name in out.stdout


def test_every_command_has_a_docstring() -> None:
    for name, (func, _) in COMMANDS.items():
        assert func.__doc__ and func.__doc__.strip(), name
