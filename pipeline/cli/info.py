"""``aipc presets``: what can be composed (models, families and their variants, other config groups) and ``--version``."""

from __future__ import annotations

from importlib import metadata

import yaml

from pipeline.core.config import CONF_DIR, compose
from pipeline.core.registry import FAMILIES

DISTRIBUTION = "aipc-pipeline"


def version() -> str:
    """``aipc <version>`` as installed (``unknown`` when run from a tree that was never installed)."""
    try:
        return f"aipc {metadata.version(DISTRIBUTION)}"
    except metadata.PackageNotFoundError:
        return "aipc unknown (not installed: run `python bootstrap.py install`)"


def presets_text() -> str:
    """Models, families with their default variants, and each other group's options, read from conf/."""
    lines = ["models (aipc compose model=NAME):"]
    for path in sorted((CONF_DIR / "model").glob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        source = {"tiny": "embedded tiny model (pipeline/assets)", "local": "your folder: model.local_path=PATH"}
        where = source.get(str(data.get("source")), str(data.get("repo_id") or ""))
        lines.append(f"  {path.stem:<22} {where}".rstrip())
    lines.append("families (variants in conf/<family>/default.yaml; leave one out: aipc compose ~FAMILY.VARIANT):")
    composed = compose([])  # the variants a family's default.yaml gives, those from its `defaults` list included
    for name, family in FAMILIES.items():
        variants = composed.get(name) or {}
        lines.append(f"  {name:<22} {family.kind}: {', '.join(variants)}")
    others = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "model" and p.name not in FAMILIES)
    for group in others:
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        lines.append(f"{group} (aipc compose {group}=NAME): {', '.join(options)}")
    return "\n".join(lines)


def cmd_presets() -> None:
    """List the model presets, the families and their variants, and the other config groups' options."""
    print(presets_text())


def cmd_conf_docs(argv: list[str]) -> None:
    """Check (--check) or rewrite (--write) docs/configuration.md's reference of every conf group's keys.

    Args:
        argv: --check (fail in one line if the docs differ from conf/) or --write (regenerate below the marker).
    """
    from pipeline.cli import conf_docs

    conf_docs.main(argv)
