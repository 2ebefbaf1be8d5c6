"""Windows semantics for tests on Linux: read-only and open-file rules of NTFS, MAX_PATH, cp1252 consoles.

Two ways in:

* ``winemu_env(project_root)``: the environment for subprocesses (``dvc repro``, ``aipc ...``). This folder goes
  first on ``PYTHONPATH`` so its ``sitecustomize.py`` loads in every Python process, DVC's stage
  subprocesses included, and ``AIPC_WINEMU=1`` switches it on.
* ``enabled(project_root)``: a context manager that emulates in the test process itself.

What is emulated and how is described in ``_aipc_winemu``. Refusals and long paths are appended to a
JSON-lines record file (``record=``); ``read_record`` reads it back and ``summarize`` makes it readable.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from . import _aipc_winemu as core

SITE_DIR = Path(__file__).resolve().parent
WIN_ROOT = core.WIN_ROOT
WIN_HOME = core.WIN_HOME
windows_path = core.windows_path
tree_overflows = core.tree_overflows


def winemu_env(project_root: Path, record: Path | None = None, strict: bool = True, encoding: bool = True,
               base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment that runs a subprocess under Windows semantics for the project at ``project_root``.

    Args:
        project_root: the real project folder; it stands for ``C:\\Users\\<20 chars>\\source\\repos\\aipc-pipeline``.
        record: JSON-lines file that every refusal and long path is appended to.
        strict: raise on a path over the Windows limit (otherwise only record it).
        encoding: cp1252 consoles and ``open()`` default encoding.
        base: the environment to extend (default: this process's), with this interpreter's folder first on PATH.
    """
    env = dict(os.environ if base is None else base)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(SITE_DIR), env.get("PYTHONPATH", "")] if p)
    env["AIPC_WINEMU"] = "1"
    env["AIPC_WINEMU_ROOT"] = str(Path(project_root).resolve())
    env["AIPC_WINEMU_ALSO_ROOT"] = str(Path(sys.prefix).resolve().parent)  # the clone that holds .venv
    env["AIPC_WINEMU_STRICT"] = "1" if strict else "0"
    env["AIPC_WINEMU_ENCODING"] = "1" if encoding else "0"
    for name in ("PYTHONIOENCODING", "PYTHONUTF8"):  # a Windows console sets neither
        env.pop(name, None)
    if record is not None:
        env["AIPC_WINEMU_RECORD"] = str(record)
    return env


@contextlib.contextmanager
def enabled(project_root: Path, record: Path | None = None, strict: bool = True, encoding: bool = False,
            streams: bool = False) -> Iterator[None]:
    """Emulate Windows in this process until the block ends.

    The text-mode default encoding and the console streams are left alone unless asked for: pytest's
    own capture would otherwise be reconfigured.
    """
    core.install(root=str(project_root), record=str(record) if record else "", strict=strict, encoding=encoding,
                 streams=streams)
    try:
        yield
    finally:
        core.uninstall()


def read_record(path: Path) -> list[dict]:
    """The entries of a record file (none if it was never written)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# Callers that retry a refused delete after clearing the read-only flag, as Windows code must: not failures.
HANDLED_BY = ("dvc_objects/fs/utils.py", "pipeline/core/artifacts.py")


def handled(entry: dict) -> bool:
    """Whether a refusal was met by code that clears the read-only flag and retries (DVC, ``remove_tree``)."""
    return entry["kind"] == "delete-readonly" and any(h in frame for frame in entry.get("stack", []) for h in HANDLED_BY)


def summarize(entries: list[dict], include_handled: bool = False) -> str:
    """One line per distinct (kind, innermost project frame), with a count and one example path."""
    seen: dict[tuple[str, str], list[dict]] = {}
    for e in entries:
        if handled(e) and not include_handled:
            continue
        own = [f for f in e.get("stack", []) if f.startswith(("pipeline/", "pipeline\\"))]
        where = own[-1] if own else (e.get("stack") or ["?"])[-1]
        seen.setdefault((e["kind"], where), []).append(e)
    lines = []
    for (kind, where), group in seen.items():
        e = group[0]
        detail = f" ({e['length']} > {e['limit']})" if kind == "long-path" else ""
        lines.append(f"{kind} x{len(group)} at {where}: {e['path']}{detail} [argv {' '.join(map(str, e['argv']))}]")
    return "\n".join(lines)
