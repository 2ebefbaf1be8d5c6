"""Every set of packages the project installs, as data, and pip's reason for a failed install in one line.

The main venv's set (``constraints.txt`` with pyproject's dependencies and the ``dev`` extra, what
``bootstrap.py install`` installs) is read here. Each isolated environment declares its own set beside the code
that builds it: :func:`pipeline.onnx.compat.package_sets` (DirectML and the ONNX compat runtimes),
:func:`pipeline.npu_lib.env.package_set`, :func:`pipeline.winml.runtime.package_set`.
``tests/windows/test_windows_resolver.py`` asks pip's resolver whether each one installs on Windows.
Standard library only at import: ``bootstrap.py`` runs this file before anything is installed, for
:func:`pip_failure_line`.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

PYTHONS = ("3.11", "3.12")  # the Pythons the project supports on Windows (bootstrap.py MIN_PYTHON, 3.12 recommended)
# Dependencies of the main venv that PyPI has only as source (pure Python): hydra-core 1.3 pins antlr4 4.9.*.
SOURCE_ONLY = ("antlr4-python3-runtime",)


@dataclass(frozen=True)
class PackageSet:
    """What one environment installs: requirements resolved together under ``constraints`` (pip ``-c`` lines).

    ``no_deps``: installed afterwards with ``--no-deps`` (the NPU library's own wheel); ``sdists``: pins published
    only as source, pure Python, which pip builds into a ``py3-none-any`` wheel on the user's machine (no compiler);
    ``pythons``: the CPython
    versions it supports, ``why_pythons`` says why where that is fewer than :data:`PYTHONS`.
    """

    name: str
    requirements: tuple[str, ...]
    constraints: tuple[str, ...] = ()
    no_deps: tuple[str, ...] = ()
    sdists: tuple[str, ...] = ()
    pythons: tuple[str, ...] = PYTHONS
    why_pythons: str = ""


def read_constraints(path: Path, skip_prefixes: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The pins of a constraints file (no comments or blank lines), less those whose name starts with a prefix."""
    lines = (line.split("#", 1)[0].strip() for line in Path(path).read_text(encoding="utf-8").splitlines())
    return tuple(line for line in lines if line and not line.lower().startswith(skip_prefixes))


def project_requirements(pyproject: Path, extras: tuple[str, ...] = ("dev",)) -> tuple[str, ...]:
    """pyproject's dependencies plus those of ``extras``, an extra naming the project itself expanded in place."""
    project = tomllib.loads(Path(pyproject).read_text(encoding="utf-8"))["project"]
    optional, name = project.get("optional-dependencies", {}), project["name"]
    out, todo, seen = list(project["dependencies"]), list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for requirement in optional[extra]:
            own = re.fullmatch(rf"{re.escape(name)}\[([\w,-]+)\]", requirement.replace(" ", ""))
            if own:
                todo.extend(own.group(1).split(","))
            else:
                out.append(requirement)
    return tuple(dict.fromkeys(out))


def main_venv(root: Path | None = None) -> PackageSet:
    """The ``.venv`` of ``bootstrap.py install``: ``-e .[dev]`` (torch first) under ``constraints.txt``."""
    from pipeline.core.config import PROJECT_ROOT  # here: bootstrap.py runs this file without the packages

    root = root or PROJECT_ROOT
    pins = read_constraints(root / "constraints.txt")
    return PackageSet(
        "main venv (constraints.txt, pyproject [dev])",
        project_requirements(root / "pyproject.toml"),
        pins,
        sdists=tuple(p for p in pins if p.split("==")[0].lower() in SOURCE_ONLY),
    )


def pip_failure_line(output: str) -> str:
    """pip's own reason for a failed install, in one line, from its combined output.

    ``No matching distribution found for X`` gains the newest version pip saw (or that it saw none); a conflict
    gives its causes; anything else, pip's last ``ERROR:`` line (or its last line).
    """
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line.removeprefix("ERROR: ") for line in lines if line.startswith("ERROR:")]
    for line in errors:
        if line.startswith("No matching distribution found for"):
            wanted = line.removeprefix("No matching distribution found for ").strip()
            seen = next((e for e in errors if "satisfies the requirement " + wanted in e and "from versions:" in e), "")
            versions = [v.strip() for v in seen.rpartition("from versions:")[2].rstrip(")").split(",") if v.strip()]
            if versions == ["none"]:
                return f"{line} (no release of it has a file for this platform and Python)"
            return f"{line} (newest there: {versions[-1]})" if versions else line
    if "The conflict is caused by:" in lines:
        causes = []
        for line in lines[lines.index("The conflict is caused by:") + 1 :]:
            if line.startswith(("To fix", "Additionally", "ERROR")):
                break
            if not line.startswith(("WARNING", "INFO")):
                causes.append(line)
        return "conflicting requirements: " + "; ".join(causes)
    return errors[-1] if errors else (lines[-1] if lines else "pip printed nothing")
