"""DVC's repository lock, held while ``aipc compose`` rewrites ``params.yaml`` (refused while DVC runs here)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.core.config import PARAMS_FILE
from pipeline.core.errors import fail

DVC_TMP = Path(".dvc") / "tmp"  # DVC 3.x keeps its repository lock (`lock`) and stage lock (`rwlock`) here


def _try_flock(handle: Any) -> bool:
    """Take an exclusive lock on an open file without waiting, as zc.lockfile (DVC's lock) does; False if held."""
    try:
        if sys.platform == "win32":  # os.name == "nt", spelled so mypy skips it elsewhere
            import msvcrt

            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)  # zc.lockfile locks the first byte
        else:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _unlock(handle: Any) -> None:
    """Release a lock taken by :func:`_try_flock` (Windows wants it released before the file is closed)."""
    with contextlib.suppress(OSError):
        if sys.platform == "win32":  # os.name == "nt", spelled so mypy skips it elsewhere
            import msvcrt

            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
        else:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def lock_holder(handle: Any) -> str:
    """The pid in a zc.lockfile lock file, read as that library lays it out: ``" <pid>\\n"`` from byte 1 on.

    The holder keeps byte 0 locked; on Windows (msvcrt) that lock is mandatory and reading byte 0 raises
    ``PermissionError``, which is why zc.lockfile writes a space there. "" if the pid cannot be read.
    """
    try:
        handle.seek(1)
        return str(handle.read()).strip()
    except (OSError, ValueError):
        return ""


def _running_dvc_stages(dvc_tmp: Path) -> list[str]:
    """Commands of live processes that `.dvc/tmp/rwlock` records as reading or writing outputs.

    DVC releases its repository lock while a stage's command runs and records the stage in ``rwlock``
    instead (dvc/stage/decorators.py ``unlocked_repo``, dvc/rwlock.py); entries of dead pids are stale.
    """
    from pipeline.core.artifacts import pid_alive

    try:
        data = json.loads((dvc_tmp / "rwlock").read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return []
    infos = list(data.get("write", {}).values()) + [i for lst in data.get("read", {}).values() for i in lst]
    pids = {int(i["pid"]): i.get("cmd", "dvc") for i in infos if isinstance(i, dict) and "pid" in i}
    return sorted(f"`{cmd}` (pid {pid})" for pid, cmd in pids.items() if pid != os.getpid() and pid_alive(pid))


@contextlib.contextmanager
def dvc_repo_lock(dvc_tmp: Path = DVC_TMP, rerun: str = "aipc compose") -> Iterator[None]:
    """Hold DVC's repository lock while the block runs; fail in one line if DVC is busy in this repository.

    DVC 3.67 locks ``.dvc/tmp/lock`` with zc.lockfile (flock/msvcrt on the open file, pid written into it),
    or with a hard-link lock (flufl.lock) when ``core.hardlink_lock`` is set. The lock is tried the same
    way, without waiting and without writing into the file, so a DVC command started meanwhile waits and
    retries as it does for any other DVC process. Outside a DVC project this does nothing.
    """
    if not dvc_tmp.parent.is_dir():
        yield
        return
    busy = f"refusing to rewrite {PARAMS_FILE}: DVC is running in this repository"
    advice = f"wait for it to finish (or stop it), then rerun `{rerun}`"
    lockfile = dvc_tmp / "lock"
    if lockfile.is_file() and lockfile.stat().st_nlink > 1:  # flufl.lock: the lock file is a hard link to a claim
        fail(f"{busy} (it holds {lockfile.as_posix()}); {advice}")
    dvc_tmp.mkdir(parents=True, exist_ok=True)
    with open(lockfile, "a+", encoding="utf-8") as handle:  # a+: never truncates what DVC wrote
        if not _try_flock(handle):
            fail(f"{busy} (pid {lock_holder(handle) or '?'} holds {lockfile.as_posix()}); {advice}")
        stages = _running_dvc_stages(dvc_tmp)
        if stages:
            fail(f"{busy}: {', '.join(stages)} is running a stage ({(dvc_tmp / 'rwlock').as_posix()}); {advice}")
        try:
            yield
        finally:
            _unlock(handle)
