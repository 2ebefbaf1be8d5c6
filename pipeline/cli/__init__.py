"""``aipc``: one console script; each subcommand is a plain typed function, its help from the docstring.

The commands live in :mod:`pipeline.cli.families` (``export`` and ``validate``, for every family of the registry),
:mod:`pipeline.cli.stages` (one stage or one family tool) and :mod:`pipeline.cli.project` (compose, DVC, the demo,
the sweep, the report); :data:`COMMANDS` names them. A function's parameters are the
command's arguments (:func:`add_arguments`): one without a default is positional, one with a default is an
option (``--device``), ``overrides: list[str]`` takes any number of Hydra overrides, and ``argv: list[str]``
takes the rest of the command line as it is (the command parses its own flags and ``--help``). The command's
help is the docstring's first line; each argument's help is its entry under ``Args:``.

Why argparse, not typer (issue 16 part 3): reading the signatures is :func:`add_arguments`, about 25 lines.
With typer the three commands that pass their command line on (``repro``, ``exp-run``, ``publish``) each need
``allow_extra_args``, ``ignore_unknown_options`` and no ``--help`` of their own; a usage error becomes a
multi-line box (rich) instead of argparse's ``usage:`` and one ``error:`` line; and typer is only a transitive
dependency here (huggingface_hub's), not one of ours.
"""

from __future__ import annotations

import argparse
import inspect
import re
import typing
from collections.abc import Callable

from pipeline.cli import convert, families, info, plan, project, stages
from pipeline.cli.help import USAGE, commands_epilog, summary_line
from pipeline.core.errors import run_main
from pipeline.core.registry import FAMILIES, entries

COMMANDS: dict[str, Callable[..., None]] = {
    "convert": convert.cmd_convert,
    "download": stages.cmd_download,
    "reference": stages.cmd_reference,
    "export": families.cmd_export,  # every family of the registry: `aipc export onnx dml_int4`
    "validate": families.cmd_validate,
    **{name: families.alias(name) for name in families.ALIASES},  # the per-family names from before the verbs
    # each family's own tools (its registry line's ``commands``: onnx-compat, compile-npu-blob, npu-lib-env)
    **{name: func for own in entries("commands").values() for name, func in own.items()},
    "devices": stages.cmd_devices,
    "sweep": project.cmd_sweep,
    "sweep-report": project.cmd_sweep_report,
    "chat": stages.cmd_chat,
    "compose": project.cmd_compose,
    "check-config": project.cmd_check_config,
    "stages": project.cmd_stages,
    "conf-docs": info.cmd_conf_docs,
    "demo": project.cmd_demo,
    "repro": project.cmd_repro,
    "exp-run": project.cmd_exp_run,
    "report": project.cmd_report,
    "recommend": project.cmd_recommend,
    "presets": info.cmd_presets,
    "plan": plan.cmd_plan,
    "publish": stages.cmd_publish,
    "pull": stages.cmd_pull,
    "verify": stages.cmd_verify,
    "repair": stages.cmd_repair,
}
PASS_ON = "argv"  # the parameter that takes the rest of the command line, flags included
ARGUMENT_TYPES = (str, str | None, list[str])  # what a command line gives; a command asking for more is refused


def argument_help(func: Callable[..., None]) -> dict[str, str]:
    """Each argument's help: its entry under ``Args:`` in ``func``'s (Google-style) docstring."""
    helps: dict[str, str] = {}
    lines = (inspect.getdoc(func) or "").splitlines()
    start = lines.index("Args:") + 1 if "Args:" in lines else len(lines)
    name = None
    for line in lines[start:]:
        if not line.startswith("    "):  # a blank line or the next section ends the arguments
            break
        entry = re.fullmatch(r" {4}(\w+): (.*)", line)
        if entry:
            name, helps[entry[1]] = entry[1], entry[2]
        elif name:
            helps[name] += " " + line.strip()
    return helps


def add_arguments(parser: argparse.ArgumentParser, func: Callable[..., None]) -> list[str]:
    """Add ``func``'s parameters to ``parser`` as its arguments; return their names.

    Raises:
        TypeError: When a parameter's type is not one a command line gives (:data:`ARGUMENT_TYPES`).
    """
    helps, hints = argument_help(func), typing.get_type_hints(func)
    for name, param in inspect.signature(func).parameters.items():
        if hints.get(name) not in ARGUMENT_TYPES:
            raise TypeError(f"{func.__name__}({name}: {hints.get(name)}): a command takes str, str | None or list[str]")
        if hints[name] == list[str]:  # Hydra overrides, or the rest of the command line (PASS_ON)
            parser.add_argument(name, nargs="*", help=helps.get(name))
        elif param.default is inspect.Parameter.empty:
            parser.add_argument(name, help=helps.get(name))
        else:
            parser.add_argument(f"--{name}", default=None, help=helps.get(name))
    return list(inspect.signature(func).parameters)


def build_parser() -> argparse.ArgumentParser:
    """The ``aipc`` argument parser, one subcommand per entry of :data:`COMMANDS`, listed by group in ``--help``."""
    parser = argparse.ArgumentParser(
        prog="aipc",
        usage=USAGE,
        description="Phi-3 -> Intel AI PC models, proven by running them.",
        epilog=commands_epilog(COMMANDS),  # pipeline/cli/help.py: the commands under headed groups
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=info.version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help=argparse.SUPPRESS)
    for name, func in COMMANDS.items():
        doc = summary_line(func)
        own_flags = PASS_ON in inspect.signature(func).parameters  # the command parses its own flags (and --help)
        # no help=: the epilog lists the command in its group, so argparse's flat list stays empty. A command
        # that parses its own flags gets a prefix no argument starts with: -S, --help and +key=value all reach it.
        p = sub.add_parser(name, description=doc, add_help=not own_flags, prefix_chars="\0" if own_flags else "-")
        p.set_defaults(func=func, argnames=add_arguments(p, func))
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``aipc`` console script."""
    from pipeline.core.log import console_safe

    console_safe()
    args = build_parser().parse_args(argv)
    values = {a: getattr(args, a) for a in args.argnames}
    family = families.export_family(args.command, values)
    if argv is None and family in FAMILIES and families.huge_pages(family):  # as the family's export stage does
        from pipeline.core.memory import use_huge_pages

        use_huge_pages()
    run_main(lambda: args.func(**{k: v for k, v in values.items() if v is not None}))
