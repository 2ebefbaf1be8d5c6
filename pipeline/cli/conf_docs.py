"""The generated half of ``docs/configuration.md``: every conf group, each key with its default and its YAML comment.

conf/ is the one source of default values (:mod:`pipeline.core.typed`), so the reference is written from it:
``aipc conf-docs --write`` rewrites what follows :data:`MARKER` (the prose above it is kept), ``--check`` fails in
one line when the committed file differs, as ``aipc stages --check`` does for ``dvc.yaml``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from pipeline.core.config import CONF_DIR, PROJECT_ROOT
from pipeline.core.errors import fail

DOC = PROJECT_ROOT / "docs" / "configuration.md"
MARKER = "<!-- Generated from conf/ by `aipc conf-docs --write`; edit the YAML, not below this line. -->"
BASES = ("variant/base.yaml", "preset/base.yaml")  # a group's base: the keys every option starts from
KEY = re.compile(r"^(?P<indent> *)(?P<key>[^\s#:'\"-][^:#]*?|'[^']*'|\"[^\"]*\"):(?:\s|$)")


def commented_keys(text: str) -> list[tuple[str, str]]:
    """``(dotted key, comment)`` of every mapping key in a YAML file, in file order; a comment continued on the next
    lines (``#`` in the same column) is joined to it."""
    rows: list[tuple[str, str]] = []
    path: list[tuple[int, str]] = []
    column = -1  # the column of the last key's comment, for continuation lines
    for line in text.splitlines():
        match = KEY.match(line)
        if not match:
            stripped = line.lstrip()
            if stripped.startswith("#") and rows and len(line) - len(stripped) == column:
                rows[-1] = (rows[-1][0], f"{rows[-1][1]} {stripped[1:].strip()}".strip())
            elif stripped:
                column = -1
            continue
        indent, key = len(match["indent"]), match["key"].strip("'\"")
        path = [(i, k) for i, k in path if i < indent] + [(indent, key)]
        comment = line.find("  #", match.end() - 1)
        column = comment + 2 if comment >= 0 else -1
        rows.append((".".join(k for _, k in path), line[column + 1 :].strip() if comment >= 0 else ""))
    return [(k, c) for k, c in rows if k != "defaults" and not k.startswith("defaults.")]


def _value_at(data: Any, dotted: str) -> str:
    """The YAML value at ``dotted`` as one flow-style line."""
    for part in _split(dotted, data):
        data = data[part]
    return (
        yaml.safe_dump(data, default_flow_style=True, sort_keys=False, width=10_000).strip().removesuffix("...").strip()
    )


def _split(dotted: str, data: Any) -> list[str]:
    """``dotted`` split into the keys of ``data`` (a key may hold dots itself: ``grid.openvino.int4.ratio``)."""
    parts: list[str] = []
    rest = dotted
    while rest:
        key = next(k for k in sorted(data, key=len, reverse=True) if rest == k or rest.startswith(f"{k}."))
        parts.append(key)
        data, rest = data[key], rest[len(key) + 1 :]
    return parts


def table(path: Path) -> list[str]:
    """A markdown table of ``path``'s keys: key, value, comment."""
    text = path.read_text(encoding="utf-8")
    data = yaml.safe_load(text) or {}
    lines = ["| key | default | comment |", "|---|---|---|"]
    rows = commented_keys(text)
    for key, comment in rows:
        parent = any(k.startswith(f"{key}.") for k, _ in rows)  # a block mapping: its keys have rows
        if parent and not comment:
            continue
        cells = (f"`{key}`", "" if parent else f"`{_value_at(data, key)}`", comment)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return lines


def header(path: Path) -> str:
    """What a conf file is: its opening comment, up to its ``Run:`` line."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#") or line.startswith("# Run:"):
            break
        lines.append(line.lstrip("#").strip())
    return " ".join(lines)


def group_order() -> list[tuple[str, str]]:
    """``(group, default option)`` in ``conf/config.yaml``'s defaults order."""
    defaults = yaml.safe_load((CONF_DIR / "config.yaml").read_text(encoding="utf-8"))["defaults"]
    return [next(iter(d.items())) for d in defaults if isinstance(d, dict)]


def render() -> str:
    """The generated reference: a section per conf group, its base (if any), then each of its options."""
    out = ["## Every configuration key", ""]
    out += [f"`conf/config.yaml` composes {len(group_order())} groups; `aipc presets` lists their options.", ""]
    for group, default in group_order():
        options = sorted((CONF_DIR / group).glob("*.yaml"), key=lambda p: (p.stem != default, p.stem))
        out += [f"### {group}", ""]
        out += ["Options: " + ", ".join(f"`{group}={p.stem}`" for p in options) + f" (default: `{default}`).", ""]
        for base in (CONF_DIR / group / b for b in BASES):
            if base.is_file():
                rel = base.relative_to(CONF_DIR).as_posix()
                out += [f"Every key and its default, `conf/{rel}` (each option starts from it):", "", *table(base), ""]
        for option in options:
            out += [f"`conf/{group}/{option.name}`: {header(option)}", "", *table(option), ""]
    return "\n".join(out).rstrip() + "\n"


def expected(doc: Path = DOC) -> str:
    """``doc`` with everything after :data:`MARKER` regenerated (the marker appended if missing)."""
    prose = doc.read_text(encoding="utf-8").split(MARKER)[0].rstrip()
    return f"{prose}\n\n{MARKER}\n\n{render()}"


def main(argv: list[str]) -> None:
    """``--check``: fail in one line when docs/configuration.md is stale; ``--write``: regenerate it."""
    if argv not in (["--check"], ["--write"]):
        fail("usage: aipc conf-docs --check | --write")
    want = expected()
    if argv == ["--write"]:
        DOC.write_text(want, encoding="utf-8")
        print(f"wrote {DOC.relative_to(PROJECT_ROOT).as_posix()}")
    elif DOC.read_text(encoding="utf-8") != want:
        fail("docs/configuration.md differs from conf/: run `aipc conf-docs --write`")
    else:
        print("ok: docs/configuration.md matches conf/")
