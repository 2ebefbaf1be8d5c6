"""Each DVC stage's ``.py`` dependencies, computed from the code (``aipc stages --check`` / ``--write``).

A stage's code is the import closure of the module its ``cmd`` runs (``python -m pipeline.x.y ...``), read with
:mod:`ast`: every ``import pipeline...`` and ``from pipeline... import`` (relative ones too), including those
inside functions, where this project keeps its heavy imports. Edges no import statement shows come from small
tables (:func:`edges`): code run in another process by path (:func:`family_deps`), and the family config modules
the registry imports by name. A package's ``__init__.py`` counts when something imports a name from it, or when
running it does more than set a docstring or literals (``pipeline/__init__.py``'s ``__version__`` is left out).

``--write`` rewrites only the ``pipeline/**.py`` items of each stage's ``deps`` in ``dvc.yaml``, as text: every
other line, comment, data dependency, param and output stays. The stage's own module comes first (the habit of
example-get-started), the rest sorted; a kept ``.py`` item keeps its comment. A ``foreach`` stage whose command
module differs by variant depends on the union of its variants' closures.

Files, not package folders: measured on this tree (issue 31), folders would be 5 or 6 lines a stage instead of
11 to 39, but each stage would then depend on 32 to 60 files it never runs (every stage imports the four family
config modules, so their folders come whole), and a folder dependency hashes ``__pycache__/`` and the compiled
``_pagetrim`` too: recompiling or another Python version would rerun every stage.
"""

from __future__ import annotations

import argparse
import ast
import functools
import re
from pathlib import Path

from pipeline.core.errors import fail
from pipeline.core.stage_edges import family_deps

DVC_FILE = "dvc.yaml"
PARAMS_FILE = "params.yaml"  # the foreach sections, read only when a command module is templated
PACKAGE = "pipeline"


def module_file(root: Path, module: str) -> str | None:
    """The file (relative, ``/``-separated) of a project module or package, or None if it is not one."""
    base = root.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path.relative_to(root).as_posix()
    return None


def _is_extension(root: Path, module: str) -> bool:
    """Whether ``module`` is a compiled extension (``core/_pagetrim``: built from C at install, no ``.py``)."""
    folder, _, name = module.rpartition(".")
    files = root.joinpath(*folder.split(".")).glob(f"{name}.*")
    return any(f.suffix in (".so", ".pyd", ".pyi") for f in files)


def _absolute(node: ast.ImportFrom, path: str) -> str:
    """The module an ``ImportFrom`` reads from, relative imports resolved against ``path``'s package."""
    if not node.level:
        return node.module or ""
    package = path.split("/")[:-1]  # pipeline/a/b.py and pipeline/a/__init__.py are both in package pipeline.a
    base = ".".join(package[: len(package) - node.level + 1])
    return f"{base}.{node.module}" if node.module else base


def imported_files(root: Path, path: str) -> frozenset[str]:
    """The project files ``path`` imports anywhere in its body (functions included)."""
    return _imports(root, path, (root / path).stat().st_mtime_ns)  # parsed once per version of the file


@functools.lru_cache(maxsize=4096)
def _imports(root: Path, path: str, _mtime_ns: int) -> frozenset[str]:
    tree = ast.parse((root / path).read_text(encoding="utf-8"), filename=path)
    found: set[str | None] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {module_file(root, a.name) for a in node.names if a.name.split(".")[0] == PACKAGE}
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, path)
            if base.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:  # a submodule, else a name defined in the package's __init__.py
                if not _is_extension(root, f"{base}.{alias.name}"):
                    found.add(module_file(root, f"{base}.{alias.name}") or module_file(root, base))
    return frozenset(f for f in found if f)


def runs_code(root: Path, init: str) -> bool:
    """Whether running a package's ``__init__.py`` does more than set a docstring, ``__future__`` or literals."""
    for node in ast.parse((root / init).read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Expr | ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Constant):
            continue
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            continue
        return True
    return False


def _parents(path: str) -> list[str]:
    """The ``__init__.py`` files Python runs before ``path`` (its enclosing packages)."""
    folders = path.split("/")[:-1]
    inits = [f"{'/'.join(folders[:i])}/__init__.py" for i in range(1, len(folders) + 1)]
    return [p for p in inits if p != path]


def edges(root: Path) -> dict[str, set[str]]:
    """Edges no import statement shows: :func:`family_deps`, and the registry's imports by name (it imports every
    family's variant config class when any stage builds its params; the broken-or-costly verdict imports a
    family's rounding module, and a Windows ML package's is another family's; the RAM and time tables import the
    rows a family keeps in its package, for every stage that checks RAM or prints an estimate)."""
    from pipeline.core.registry import FAMILIES

    found = {k: set(v) for k, v in family_deps()[0].items()}
    configs = {module_file(root, f.config.partition(":")[0]) for f in FAMILIES.values()}
    found.setdefault("pipeline/core/registry.py", set()).update(c for c in configs if c)
    roundings = {module_file(root, f.rounding.partition(":")[0]) for f in FAMILIES.values() if f.rounding}
    found.setdefault("pipeline/validation/recipe_cost.py", set()).update(r for r in roundings if r)
    for reader, which in (("pipeline/core/resources.py", "ram"), ("pipeline/core/durations.py", "times")):
        rows = {module_file(root, getattr(f, which).partition(":")[0]) for f in FAMILIES.values() if getattr(f, which)}
        found.setdefault(reader, set()).update(r for r in rows if r)
    return found


def closure(root: Path, start: str, extra: dict[str, set[str]]) -> set[str]:
    """Every project file that runs when ``start`` runs: its imports, enclosing packages and ``extra`` edges."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo += imported_files(root, path) | extra.get(path, set())
            todo += [p for p in _parents(path) if (root / p).is_file() and runs_code(root, p)]
    return seen


def stage_modules(stage: str, spec: dict, params: dict | None) -> list[str]:
    """The module(s) a stage's ``cmd`` runs with ``python -m``: one per variant when it is templated."""
    body = spec.get("do", spec)
    cmd = " ".join(body["cmd"]) if isinstance(body.get("cmd"), list) else str(body.get("cmd", ""))
    found = re.search(r"(?:^|\s)-m\s+(pipeline[^\s]*)", cmd)
    if not found:
        fail(f"{DVC_FILE}: stage {stage} does not run `python -m pipeline.MODULE`, so its deps cannot be computed")
    module = found[1]
    if "${" not in module:
        return [module]
    items = spec.get("foreach")
    if isinstance(items, str):  # ${openvino}: a section of params.yaml
        items = (params or {}).get(items.strip("${} "), {})
    names = set()
    for key, item in items.items() if isinstance(items, dict) else enumerate(items or []):
        fields = {
            "key": key,
            "item": item,
            **{f"item.{k}": v for k, v in (item if isinstance(item, dict) else {}).items()},
        }
        names.add(re.sub(r"\$\{\s*([\w.]+)\s*\}", lambda m, f=fields: str(f.get(m[1], m[0])), module))
    return sorted(names)


def wanted_deps(root: Path, stages: dict, params: dict | None) -> dict[str, list[str]]:
    """Each stage's ``.py`` deps: its command module(s) first, then the rest of their closure, sorted."""
    extra, wanted = edges(root), {}
    for stage, spec in stages.items():
        starts = []
        for module in stage_modules(stage, spec, params):
            start = module_file(root, module)
            if start is None:
                fail(f"{DVC_FILE}: stage {stage} runs {module}, which is not a file under {PACKAGE}/")
            starts.append(start.replace("__init__.py", "__main__.py"))  # `python -m <package>` runs __main__.py
        files = set().union(*(closure(root, s, extra) for s in starts))
        wanted[stage] = sorted(set(starts)) + sorted(files - set(starts))
    return wanted


def _is_code(value: str) -> bool:
    return value.startswith(f"{PACKAGE}/") and value.endswith(".py")


DEP_ITEM = re.compile(r"^(\s*-\s+)(\S+?)(\s+#.*)?$")  # `  - path  # comment`


def rewrite_block(block: list[str], files: list[str], eol: str) -> list[str]:
    """A ``deps`` block with its ``pipeline/**.py`` items replaced by ``files``, where the first of them was."""
    kept: list[str] = []
    comments: dict[str, str] = {}
    first: int | None = None
    indent = ""
    for line in block:
        item = DEP_ITEM.match(line.rstrip("\r\n"))
        indent = indent or (item[1] if item else "")
        if item and _is_code(item[2]):
            comments[item[2]] = item[3] or ""
            first = len(kept) if first is None else first
            continue
        kept.append(line)
    at = 0 if first is None else first
    return kept[:at] + [f"{indent}{f}{comments.get(f, '')}{eol}" for f in files] + kept[at:]


def rewrite(text: str, wanted: dict[str, list[str]]) -> str:
    """``text`` (a dvc.yaml) with each stage's ``deps`` code items set to ``wanted[stage]``; nothing else changes."""
    lines, out, stage, in_stages, i = text.splitlines(keepends=True), [], None, False, 0
    done: set[str] = set()
    while i < len(lines):
        line = lines[i]
        out.append(line)
        i += 1
        top, named = re.match(r"^([\w-]+):", line), re.match(r"^  ([\w-]+):", line)
        deps = re.match(r"^(\s+)deps:\s*(#.*)?$", line.rstrip("\r\n"))
        if top:
            in_stages, stage = top[1] == "stages", None
        elif in_stages and named:
            stage = named[1]
        elif in_stages and stage in wanted and deps:
            depth, end = len(deps[1]), i
            while end < len(lines) and _in_block(lines[end], depth):
                end += 1
            if end == i:
                fail(f"{DVC_FILE}: stage {stage} has an empty deps block; list its data dependencies there")
            out += rewrite_block(lines[i:end], wanted[stage], line[len(line.rstrip("\r\n")) :] or "\n")
            done.add(stage)
            i = end
    if set(wanted) - done:
        fail(f"{DVC_FILE}: no deps block in stage(s) {', '.join(sorted(set(wanted) - done))}: add one")
    return "".join(out)


def _in_block(line: str, depth: int) -> bool:
    """Whether ``line`` is an item (or comment) of a ``deps:`` key indented ``depth`` spaces."""
    body = line.lstrip(" ")
    indent = len(line) - len(body)
    return (indent > depth and body.startswith(("-", "#"))) or (indent == depth and body.startswith("- "))


def listed_code(stages: dict) -> dict[str, set[str]]:
    """The ``pipeline/**.py`` entries each stage's ``deps`` lists now."""
    return {
        name: {d for d in spec.get("do", spec).get("deps", []) if isinstance(d, str) and _is_code(d)}
        for name, spec in stages.items()
    }


def generate(root: Path, text: str) -> tuple[dict[str, list[str]], str]:
    """The wanted ``.py`` deps of every stage of ``text`` (a dvc.yaml under ``root``), and ``text`` rewritten."""
    import yaml

    params_file = root / PARAMS_FILE
    params = yaml.safe_load(params_file.read_text(encoding="utf-8")) if params_file.is_file() else None
    wanted = wanted_deps(root, yaml.safe_load(text)["stages"], params)
    return wanted, rewrite(text, wanted)


def changes(stages: dict, wanted: dict[str, list[str]]) -> dict[str, tuple[list[str], list[str]]]:
    """Each stage whose listed ``.py`` deps differ from ``wanted``: (the missing ones, the extra ones)."""
    diff = {k: (sorted(set(wanted[k]) - got), sorted(got - set(wanted[k]))) for k, got in listed_code(stages).items()}
    return {k: d for k, d in diff.items() if d[0] or d[1]}


def main(argv: list[str] | None = None) -> None:
    """``aipc stages --check`` (fail in one line when dvc.yaml's code deps are not the closures) or ``--write``."""
    parser = argparse.ArgumentParser(prog="aipc stages", description="dvc.yaml's .py deps from the code.")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="fail if dvc.yaml's .py deps are not what --write gives")
    mode.add_argument("--write", action="store_true", help="rewrite the .py entries of each stage's deps")
    args = parser.parse_args(argv)
    root = Path.cwd()
    if not (root / DVC_FILE).is_file() or not (root / PACKAGE).is_dir():
        fail(f"run this from the project root (the folder with {DVC_FILE} and {PACKAGE}/)")
    import yaml

    with open(root / DVC_FILE, encoding="utf-8", newline="") as handle:  # newline="": keep CRLF on Windows
        text = handle.read()
    wanted, new = generate(root, text)
    differ = changes(yaml.safe_load(text)["stages"], wanted)
    summary = ", ".join(f"{k} +{len(m)} -{len(e)}" for k, (m, e) in differ.items()) or "only their order"
    if new == text:
        print(f"ok: the .py deps of all {len(wanted)} stages in {DVC_FILE} are their import closures")
    elif args.check:
        fail(f"{DVC_FILE}: .py deps are not the stages' import closures ({summary}): run `aipc stages --write`")
    else:
        with open(root / DVC_FILE, "w", encoding="utf-8", newline="") as handle:
            handle.write(new)
        print(f"wrote {DVC_FILE}: .py deps set to the stages' import closures ({summary})")
