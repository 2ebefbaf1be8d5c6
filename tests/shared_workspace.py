"""The README demo's built workspace, shared by the tests that need a built tiny project (CI: demo, then tests).

``.ci/run`` runs the README's two commands in order: ``python bootstrap.py demo`` builds every tiny artifact in
the checkout, then ``python bootstrap.py test`` runs the suite. Building the same tiny pipeline again in a fresh
project copy would spend about ten minutes to learn nothing new, so :func:`seed_from_checkout` copies what the
demo built (``dvc.lock``, ``artifacts/``, DVC's cache) into the copy. The tests then run the README's own
``aipc demo`` there: DVC checks every stage's dependencies against ``dvc.lock`` and reruns whatever is stale
(code changed since the demo, other params, a missing or altered output), so the result does not depend on the
checkout's state, only the time does. Without a demo in the checkout, the copy is built from scratch.

Everything is copied, never linked: tests alter files in their copy, and DVC's cache files are hard links.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

MAX_SEED_BYTES = 2 * 2**30  # the tiny demo builds about 0.25 GB
LEFTOVERS = shutil.ignore_patterns(".*.tmp-*", ".*.old-*", "__pycache__")


def seed_from_checkout(root: Path, project: Path) -> bool:
    """Copy the checkout's built DVC workspace into ``project``; False when the checkout holds no finished build."""
    lock = root / "dvc.lock"
    if not lock.is_file() or not (root / "artifacts").is_dir() or not (root / ".dvc" / "cache").is_dir():
        return False
    if built_model(lock) != "tiny" or tree_bytes(root / "artifacts") > MAX_SEED_BYTES:
        return False  # a full-size workspace (tens of GB) is no fixture: the copy is built from scratch instead
    shutil.copytree(root / ".dvc" / "cache", project / ".dvc" / "cache", ignore=LEFTOVERS, dirs_exist_ok=True)
    shutil.copytree(root / "artifacts", project / "artifacts", ignore=LEFTOVERS, symlinks=False,
                    dirs_exist_ok=True, copy_function=shutil.copy)
    shutil.copy(lock, project / "dvc.lock")
    # copies are writable where DVC's hard links were read-only: tests that tamper with a file need that
    for path in (project / "artifacts").rglob("*"):
        if path.is_file():
            path.chmod(0o644)
    return True


def seed_run_cache(root: Path, project: Path) -> bool:
    """Copy only the checkout's DVC cache (its run cache included) into ``project``: a stage there whose command,
    dependencies and params match one the demo ran is restored from it ("Stage ... is cached - skipping run"), the
    others run. Unlike :func:`seed_from_checkout` no output is in place beforehand, so what a command builds can still
    be told from what it does not. False when the checkout holds no finished tiny build.
    """
    lock = root / "dvc.lock"
    if not lock.is_file() or not (root / ".dvc" / "cache" / "runs").is_dir() or built_model(lock) != "tiny":
        return False
    if tree_bytes(root / ".dvc" / "cache") > MAX_SEED_BYTES:
        return False
    shutil.copytree(root / ".dvc" / "cache", project / ".dvc" / "cache", ignore=LEFTOVERS, dirs_exist_ok=True)
    return True


def built_model(lock: Path) -> str | None:
    """The model source that the lock's ``download`` stage was built from (``tiny`` for the README demo)."""
    data = yaml.safe_load(lock.read_text(encoding="utf-8")) or {}
    params = data.get("stages", {}).get("download", {}).get("params", {}).get("params.yaml", {})
    return (params.get("model") or {}).get("source")


def tree_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder``."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def locked_stages(project: Path) -> set[str]:
    """Stages that ``dvc.lock`` records: after a repro that exited 0, every one of them is current."""
    data = yaml.safe_load((project / "dvc.lock").read_text(encoding="utf-8")) or {}
    return set(data.get("stages", {}))
