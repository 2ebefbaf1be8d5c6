"""``aipc export FAMILY VARIANT`` and ``aipc validate FAMILY VARIANT``: the two stage verbs, for every family.

Both are generated from :data:`pipeline.core.registry.FAMILIES` when they run: the family argument's choices and
help come from its entries (``name``, ``kind``, ``title``), and the verb runs what the DVC stage runs,
:func:`pipeline.core.stage.run_stage` (``npu`` is a family of its own here: ``aipc validate npu int4`` is
``python -m pipeline.openvino.validate --npu int4``). A family added to the registry has both verbs; the CLI
names no family.

The commands from before the verbs (``export-onnx``, ``validate-npu``, ...) are kept, silently, as aliases
(:data:`ALIASES`): scripts, notes and tests call them, and a failing command prints exactly one line on stderr
(``tests/core/test_one_line_errors.py``), which a deprecation notice would break. The table is frozen: a new
family gets the verbs only. ``aipc validate VARIANT`` (one argument that is not a family) is the OpenVINO IR
validation it always was.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from pipeline.core.config import PARAMS_FILE
from pipeline.core.registry import FAMILIES, LEGACY_VALIDATE, entry
from pipeline.core.stage import run_stage
from pipeline.core.typed import ConfigError

VERBS = ("export", "validate")
# The per-family commands from before the verbs: name -> (verb, family), from the registry lines' ``aliases``.
# Kept for callers, not extended.
ALIASES: dict[str, tuple[str, str]] = {
    name: (name.partition("-")[0], f.name) for f in FAMILIES.values() for name in f.aliases
}


def verb_parser(which: str) -> argparse.ArgumentParser:
    """The parser of ``aipc <which> FAMILY VARIANT``, its family choices and help read from the registry now."""
    stage = {"export": "export_stage", "validate": "validate_stage"}[which]
    configured = configured_variants()
    families = "\n".join(
        f"  {f.name:10} {f.title}: {f.kind}, stage {getattr(f, stage)}@<variant>"
        + (f"; variants: {', '.join(configured[f.name])}" if configured.get(f.name) else "")
        for f in FAMILIES.values()
    )
    legacy = FAMILIES[LEGACY_VALIDATE].kind
    old = f"\n`aipc validate VARIANT` alone validates an {legacy} variant, as before." if which == "validate" else ""
    parser = argparse.ArgumentParser(
        prog=f"aipc {which}",
        description=f"Run the {which} stage of one family's variant, as `dvc repro` runs it.{old}",
        epilog=f"families (pipeline/core/registry.py; variants from params.yaml):\n{families}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("family", metavar="{" + ",".join(FAMILIES) + "}", help="the family (listed below)")
    parser.add_argument("variant", help="a key under the family's section of params.yaml, e.g. int4")
    return parser


def configured_variants() -> dict[str, list[str]]:
    """Each family's variants in ``params.yaml`` as it is, for the help (nothing when it is missing or unreadable)."""
    import yaml

    try:
        data = yaml.safe_load(PARAMS_FILE.read_text(encoding="utf-8")) or {}
        return {name: list(data.get(name) or {}) for name in FAMILIES}
    except (OSError, ValueError, AttributeError, yaml.YAMLError):
        return {}


def family_and_variant(which: str, argv: list[str]) -> tuple[str, str]:
    """The family and variant named by ``aipc <which>``'s arguments.

    Raises:
        ConfigError: The family is not in the registry (one line naming the configured ones).
    """
    if which == "validate" and len(argv) == 1 and argv[0] not in FAMILIES and not argv[0].startswith("-"):
        return LEGACY_VALIDATE, argv[0]  # `aipc validate int4`, as before the verbs
    args = verb_parser(which).parse_args(argv)
    if args.family not in FAMILIES:
        raise ConfigError(f"unknown family '{args.family}': configured ones are {', '.join(FAMILIES)}")
    return args.family, args.variant


def huge_pages(family: str) -> bool:
    """Whether ``family``'s export stage restarts itself with huge pages (its module calls ``use_huge_pages``)."""
    return hasattr(sys.modules[entry(family, "export").__module__], "use_huge_pages")


def export_family(command: str, values: dict[str, object]) -> str | None:
    """The family an ``aipc`` command line exports (``export`` or an export alias), or None."""
    verb, family = ALIASES.get(command, (command, None))
    argv = values.get("argv")
    if verb == "export" and family is None and isinstance(argv, list) and argv and argv[0] in FAMILIES:
        family = argv[0]
    return family if verb == "export" else None


def cmd_export(argv: list[str]) -> None:
    """Export one variant of a family (`aipc export FAMILY VARIANT`; `aipc export --help` lists the families).

    Args:
        argv: The family (a registry name: openvino, onnx, npu, ...) and the variant, a key under it in params.yaml.
    """
    family, variant = family_and_variant("export", argv)
    run_stage(family, "export", [variant])


def cmd_validate(argv: list[str]) -> None:
    """Validate one variant of a family against the PyTorch reference (`aipc validate FAMILY VARIANT`).

    Args:
        argv: The family and the variant (`aipc validate --help` lists the families); one variant alone is an
            OpenVINO IR variant, as before the verbs (`aipc validate int4`).
    """
    family, variant = family_and_variant("validate", argv)
    run_stage(family, "validate", [variant])


def alias(name: str) -> Callable[[str], None]:
    """The command ``aipc <name> VARIANT``: ``aipc <verb> <family> VARIANT`` under its old name."""
    which, family = ALIASES[name]

    def command(variant: str) -> None:
        run_stage(family, which, [variant])

    command.__name__ = "cmd_" + name.replace("-", "_")
    command.__doc__ = f"""Same as `aipc {which} {family} VARIANT` ({FAMILIES[family].kind}).

    Args:
        variant: Key under ``{family}`` in params.yaml.
    """
    return command
