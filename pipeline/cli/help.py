"""``aipc --help``: the commands under headed groups instead of one flat list.

:data:`GROUPS` puts every command of :data:`pipeline.cli.COMMANDS` in exactly one group
(``tests/cli/test_help_groups.py`` checks it); the per-family aliases from before the verbs form the last group,
read from :data:`pipeline.cli.families.ALIASES`, and the family tools from the registry (each line's ``commands``).
A command that no group names is still listed, under "Other commands", so a new one is never hidden.
:func:`commands_epilog` writes the groups as the parser's epilog, each line a command and its help (its
docstring's first line), wrapped as argparse wraps its own.
"""

from __future__ import annotations

import inspect
import shutil
import textwrap
from collections.abc import Callable, Mapping

from pipeline.cli.families import ALIASES
from pipeline.core.registry import entries

FAMILY_TOOLS = "Family tools"
GROUPS: dict[str, tuple[str, ...]] = {
    "Build and check": (
        "convert",
        "export",
        "validate",
        "demo",
        "repro",
        "exp-run",
        "compose",
        "download",
        "reference",
        "sweep",
    ),
    "Inspect": ("presets", "plan", "report", "recommend", "sweep-report", "devices", "chat"),
    "Publish": ("publish", "pull", "verify", "repair"),
    FAMILY_TOOLS: tuple(name for own in entries("commands").values() for name in own),  # each registry line's tools
    "Maintenance": ("stages", "conf-docs", "check-config"),
    "Deprecated aliases (use export / validate FAMILY VARIANT)": tuple(ALIASES),
}
OTHER = "Other commands"
USAGE = "aipc [-h] [--version] COMMAND ..."  # the subcommands' own listing is suppressed: the epilog groups them


def summary_line(func: Callable[..., None]) -> str:
    """A command's help: the first line of its function's docstring."""
    return ((inspect.getdoc(func) or "").splitlines() or [""])[0]


def group_of(name: str) -> str:
    """The group that lists command ``name``: the one naming it, else :data:`OTHER`."""
    return next((title for title, names in GROUPS.items() if name in names), OTHER)


def grouped(commands: Mapping[str, object]) -> dict[str, list[str]]:
    """Each non-empty group's commands, groups and their commands in :data:`GROUPS`' order (others after)."""
    groups: dict[str, list[str]] = {title: [] for title in [*GROUPS, OTHER]}
    for name in commands:
        groups[group_of(name)].append(name)
    order = {name: i for names in GROUPS.values() for i, name in enumerate(names)}
    return {t: sorted(names, key=lambda n: order.get(n, len(order))) for t, names in groups.items() if names}


def commands_epilog(commands: Mapping[str, Callable[..., None]], width: int | None = None) -> str:
    """Every command with its help, under its group's heading, wrapped to ``width`` (default: the terminal's)."""
    width = width or max(60, min(shutil.get_terminal_size().columns - 2, 120))
    column = 2 + max(len(n) for n in commands) + 2
    lines = []
    for title, names in grouped(commands).items():
        lines += ["", f"{title}:"]
        for name in names:
            text = textwrap.wrap(summary_line(commands[name]), max(width - column, 30))
            lines.append(f"  {name:<{column - 2}}{text[0] if text else ''}".rstrip())
            lines += [" " * column + more for more in text[1:]]
    lines += ["", "`aipc COMMAND --help` gives a command's arguments."]
    return "\n".join(lines).lstrip("\n")
