"""Artifact folders: atomic creation, fixed paths, a clear message when the disk fills.

Every stage writes into a temporary sibling folder and moves it into place only when it is
complete, so a failure never leaves a half-written artifact or destroys the previous one. The
temporary names carry the writer's pid (``.<name>.tmp-<pid>-<random>``, ``.<name>.old-<pid>-<random>``):
the next stage that writes ``<name>`` removes those whose process is gone (a kill -9 leaves them).
The manifest each folder carries is :mod:`pipeline.core.manifest`; file hashes are :mod:`pipeline.core.hashes`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pipeline.core.errors import KEPT, MOVED, WRITING, StageError, size_text
from pipeline.core.log import say

ARTIFACTS = Path("artifacts")
MANIFEST = "manifest.json"
# A temporary sibling of an output: .<name>.tmp-<pid>[-<random>] or .<name>.old-<pid>[-<random>].
_STAGING = re.compile(r"\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)(?:-[0-9a-z]+)?")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie, killed but not yet reaped, counts as gone)."""
    try:
        import psutil
    except ImportError:  # POSIX without psutil; on Windows os.kill(pid, 0) would terminate the process
        if os.name == "nt":
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True


def _retry_writable(func: Callable[..., Any], path: str, _exc: Any) -> None:
    """``rmtree`` error handler: make ``path`` and its folder removable (read-only bits), then retry once.

    Windows refuses to delete a read-only file (DVC's cache files are read-only, and an output may be a
    hard link to one); POSIX refuses to empty a folder without write permission.
    """
    with contextlib.suppress(OSError):
        parent = os.path.dirname(path) or "."
        os.chmod(parent, os.stat(parent).st_mode | stat.S_IRWXU)
        if os.path.isdir(path) and not os.path.islink(path):
            os.chmod(path, os.stat(path).st_mode | stat.S_IRWXU)
            if func in (os.open, os.scandir, os.listdir, os.rmdir):
                remove_tree(Path(path), _retry=False)
                return
        elif os.name == "nt":
            os.chmod(path, stat.S_IWRITE)  # clears the read-only attribute
        func(path)


def remove_tree(path: Path, _retry: bool = True) -> None:
    """Remove a folder (or file) like ``rmtree(ignore_errors=True)``, but read-only entries too."""
    path = Path(path)
    if path.is_symlink() or path.is_file():
        with contextlib.suppress(OSError):
            path.unlink()
        if path.exists() and _retry:
            _retry_writable(os.unlink, str(path), None)
        return
    if not path.exists():
        return
    handler = _retry_writable if _retry else (lambda *a: None)
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=handler)
    else:
        shutil.rmtree(path, onerror=handler)


def sweep_stale(final: Path) -> list[str]:
    """Remove the temporary siblings of ``final`` that a killed process left; return their names.

    Only those whose pid is not a running process (nor this one) are touched. When ``final`` itself is
    missing, a stale ``.old-*`` is the previous output, moved aside just before the kill: it is put back.
    """
    final = Path(final)
    if not final.parent.is_dir():
        return []
    stale = []
    for sibling in sorted(final.parent.iterdir(), key=lambda p: p.name):
        match = _STAGING.fullmatch(sibling.name)
        if not match or match["name"] != final.name:
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or pid_alive(pid):
            continue
        if match["kind"] == "old" and not final.exists():
            with contextlib.suppress(OSError):
                os.replace(sibling, final)
                stale.append(f"{sibling.name} (restored as {final.name})")
                continue
        remove_tree(sibling)
        stale.append(sibling.name)
    if stale:
        say(f"removed what an interrupted run left beside {final}: {', '.join(stale)}")
    return stale


def _sibling(final: Path, kind: str) -> Path:
    """A new temporary name beside ``final`` that carries this process's pid."""
    return final.with_name(f".{final.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


LOW_DISK = 64 * 2**20  # a stage that fails with less free space than this under its output failed on a full disk
_DISK_NEEDS: dict[str, int] = {}  # folder -> bytes its next output needs (pipeline.core.resources.check_resources)


def expect_disk(at: Path, need: int) -> None:
    """Record that an output written under ``at`` needs about ``need`` bytes (for the disk-full message)."""
    _DISK_NEEDS[os.path.abspath(at)] = int(need)


def _expected_need(final: Path) -> int | None:
    for folder in (Path(os.path.abspath(final)), *Path(os.path.abspath(final)).parents):
        if str(folder) in _DISK_NEEDS:
            return _DISK_NEEDS[str(folder)]
    return None


def _is_disk_full(err: BaseException, at: Path) -> bool:
    """ENOSPC/EDQUOT anywhere in the exception chain, or (C++ writers say ``iostream error``) almost no space left."""
    import errno

    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    with contextlib.suppress(OSError):
        return shutil.disk_usage(at).free < LOW_DISK
    return False


def disk_full_message(final: Path, written: int, at: Path) -> str:
    """One line for a disk that filled while ``final`` was written (``written`` bytes had been staged)."""
    free = shutil.disk_usage(at).free if at.exists() else 0
    need = _expected_need(final)
    if need is not None and need > written + free:
        what = f"it needs about {size_text(need)} and {size_text(written + free)} was free: free {size_text(need - written - free)} more"
    else:
        what = f"{size_text(written)} was written before the disk filled: free more space"
    return (
        f"disk full under {at} while writing {final}: {what} (or move TMPDIR/the project to a larger drive) and rerun; "
        f"{final} was left as it was before this run"
    )


@contextlib.contextmanager
def temp_on_drive_of(folder: Path) -> Iterator[None]:
    """Point temporary saves (``tempfile``, ``TMPDIR``) at a folder beside ``folder`` when TMPDIR is on another drive.

    Upstream savers write into a temporary folder and then rename into the output (optimum-intel's
    ``_quantize_ovbasemodel``: ``temp_model_path.rename(...)``), which fails with "Invalid cross-device link"
    across file systems. The scratch folder carries this pid like a staged folder, so a kill -9 leftover
    is removed by the next run (:func:`sweep_stale`).
    """
    folder = Path(folder)
    try:
        same = os.stat(tempfile.gettempdir()).st_dev == os.stat(folder.parent).st_dev
    except OSError:
        same = False
    if same:
        yield
        return
    scratch = _sibling(folder, "tmp")
    scratch.mkdir()
    saved = tempfile.tempdir, {k: os.environ.get(k) for k in ("TMPDIR", "TEMP", "TMP")}
    tempfile.tempdir = str(scratch.resolve())
    os.environ.update(dict.fromkeys(saved[1], tempfile.tempdir))
    try:
        yield
    finally:
        tempfile.tempdir = saved[0]
        for key, value in saved[1].items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        remove_tree(scratch)


@contextlib.contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """Yield an empty temporary folder that replaces ``final`` only if the block succeeds.

    Temporary folders that an interrupted earlier run left beside ``final`` are removed first. Temporary
    saves go to the same drive (:func:`temp_on_drive_of`). A failure on a full disk becomes one line
    (:func:`disk_full_message`) whatever the writer raised.

    Args:
        final: The artifact folder to create or replace.

    Yields:
        A temporary folder on the same file system as ``final``.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(final)
    tmp = _sibling(final, "tmp")
    WRITING.add(final)
    try:
        tmp.mkdir()  # in the try: a read-only folder is then a refused write of ``final`` (errors.os_error_line)
        with temp_on_drive_of(final):
            try:
                yield tmp
            except Exception as err:
                if _is_disk_full(err, final.parent):
                    raise StageError(disk_full_message(final, folder_bytes(tmp), final.parent)) from err
                raise
        replace_dir(tmp, final)
    except BaseException:
        KEPT.append(final)
        raise
    finally:
        WRITING.discard(final)
        if tmp.exists():
            remove_tree(tmp)


RENAME_RETRIES = (0.1, 0.3, 1.0, 2.0)  # seconds: Windows Defender or the indexer briefly holds files it scans


def replace_dir(src: Path, final: Path) -> None:
    """Move folder ``src`` to ``final``, replacing an older ``final`` (never editing it in place).

    Windows refuses to rename a folder while a file inside is open or mapped (another program, an antivirus
    scan): each rename is retried for a few seconds, then a one-line error says what to close; ``final``
    is then exactly as it was before.
    """
    old = None
    if final.exists():
        old = _sibling(final, "old")
        _rename_retrying(final, old, final)
    try:
        _rename_retrying(src, final, final)
    except BaseException:
        if old is not None and not final.exists():
            os.replace(old, final)  # put the previous output back
        raise
    MOVED.append(final)
    if old is not None:
        remove_tree(old)


def _rename_retrying(src: Path, dest: Path, final: Path) -> None:
    """``os.replace`` with retries while a file inside is held; a one-line StageError when it stays held."""
    for pause in (*RENAME_RETRIES, None):
        try:
            os.replace(src, dest)
            return
        except PermissionError as err:
            if pause is None:
                from pipeline.core.errors import fail

                fail(
                    f"cannot replace {final}: a file in {src} is open in another program ({err.strerror or err}); "
                    f"close it (a chat or Python session using it, Explorer, an antivirus scan) and rerun; "
                    f"{final} was left as it was"
                )
            time.sleep(pause)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temporary file and rename, so readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def folder_bytes(folder: Path) -> int:
    """Total size of the files under ``folder``."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
