"""Artifact folders: atomic creation, manifests with hashes and versions, fixed paths.

Every stage writes into a temporary sibling folder and moves it into place only when it is
complete, so a failure never leaves a half-written artifact or destroys the previous one. The
temporary names carry the writer's pid (``.<name>.tmp-<pid>-<random>``, ``.<name>.old-<pid>-<random>``):
the next stage that writes ``<name>`` removes those whose process is gone (a kill -9 leaves them).

Manifests hold only what the inputs determine, so the same inputs give the same bytes and DVC
reruns nothing downstream. What differs from run to run (time, host, durations, absolute paths)
goes to a run log outside every DVC output: ``.aipc/runs/<stage>.jsonl`` (``AIPC_RUNS_DIR`` overrides).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import secrets
import shutil
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline.core.log import say

ARTIFACTS = Path("artifacts")
MANIFEST = "manifest.json"
TRACKED_PACKAGES = (
    "aipc-pipeline", "torch", "transformers", "huggingface-hub", "optimum", "optimum-intel", "nncf",
    "openvino", "openvino-genai", "openvino-tokenizers", "onnxruntime-genai",
)
# Manifest fields that change from run to run with the same inputs: written to the run log instead.
RUN_FIELDS = ("timings",)
RUNS_DIR = Path(".aipc") / "runs"
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


WRITING: set[Path] = set()  # outputs this process is writing now (staged_dir blocks), for the interrupt message
MOVED: list[Path] = []  # outputs this process has replaced so far
KEPT: list[Path] = []  # outputs whose writing failed or was interrupted: left as they were
LOW_DISK = 64 * 2**20  # a stage that fails with less free space than this under its output failed on a full disk
_DISK_NEEDS: dict[str, int] = {}  # folder -> bytes its next output needs (pipeline.openvino.lean.check_resources)


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
    from pipeline.core.errors import size_text

    free = shutil.disk_usage(at).free if at.exists() else 0
    need = _expected_need(final)
    if need is not None and need > written + free:
        what = f"it needs about {size_text(need)} and {size_text(written + free)} was free: free {size_text(need - written - free)} more"
    else:
        what = f"{size_text(written)} was written before the disk filled: free more space"
    return (f"disk full under {at} while writing {final}: {what} (or move TMPDIR/the project to a larger drive) and rerun; "
            f"{final} was left as it was before this run")


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
    from pipeline.core.errors import StageError

    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(final)
    tmp = _sibling(final, "tmp")
    tmp.mkdir()
    WRITING.add(final)
    try:
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


def replace_dir(src: Path, final: Path) -> None:
    """Move folder ``src`` to ``final``, replacing an older ``final`` (never editing it in place)."""
    old = None
    if final.exists():
        old = _sibling(final, "old")
        os.replace(final, old)
    os.replace(src, final)
    MOVED.append(final)
    if old is not None:
        remove_tree(old)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temporary file and rename, so readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


_KNOWN_SHA256: dict[tuple[int, ...], str] = {}
# A digest is reused only while the file keeps this identity. The change time (ctime) is in it because an in-place
# byte flip can keep size and mtime (``os.utime`` puts mtime back; DVC's hard links share the inode with the
# cache), but every write, chmod, link or utime sets ctime to "now", and no system call sets it back.
RACY_NS = 2_000_000_000  # a file changed this recently may change again within the same timestamp tick: not reused
DIGEST_CACHE = Path(".aipc") / "digests.json"  # AIPC_DIGEST_CACHE overrides; outside every DVC output


def _identity(path: Path) -> tuple[int, ...]:
    """What changes when a file's content may have changed: device, inode, size, modification and change time."""
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def remember_sha256(path: Path, digest: str) -> None:
    """Record the sha256 of a file just written, so :func:`sha256_file` in this process need not read it again.

    Valid while the file keeps its inode, size, modification and change time (a rename keeps them).
    """
    _KNOWN_SHA256[_identity(path)] = digest


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Return the hex sha256 of a file, read in chunks (or as recorded by :func:`remember_sha256`)."""
    if (known := _KNOWN_SHA256.get(_identity(path))) is not None:
        return known
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _digest_cache_path() -> Path:
    return Path(os.environ["AIPC_DIGEST_CACHE"]) if os.environ.get("AIPC_DIGEST_CACHE") else DIGEST_CACHE


def _load_digest_cache() -> dict[str, Any]:
    try:
        return json.loads(_digest_cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def file_digests(paths: list[Path], chunk: int = 1 << 20, remember: bool = True) -> dict[Path, tuple[str, str]]:
    """The (md5, sha256) of each file, read once for both, or reused from the digest cache of earlier runs.

    The cache (``.aipc/digests.json``) is keyed by the full identity of :func:`_identity`, so a 7 GiB IR
    that no one touched is not read again by every validate, chat and publish. Entries are kept only for
    files whose change time is older than :data:`RACY_NS` when they are read (git's "racily clean" rule),
    and only on POSIX, where ctime is the change time (on Windows it is the creation time).
    It guards against accidental and in-place modification; whoever can rewrite ``.aipc/`` can rewrite
    the code too, so the pickle check (:mod:`pipeline.npu_lib.export`) never uses it; ``remember=False``
    reads every byte and leaves the cache alone.
    """
    remember = remember and os.name == "posix"
    cache = _load_digest_cache() if remember else {}
    out, changed = {}, False
    for path in paths:
        key = ":".join(map(str, _identity(path)))
        if isinstance(known := cache.get(key), list) and len(known) == 2:
            out[path] = (known[0], known[1])
            continue
        started = time.time_ns()
        md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
        with open(path, "rb") as handle:
            while block := handle.read(chunk):
                md5.update(block)
                sha.update(block)
        out[path] = (md5.hexdigest(), sha.hexdigest())
        st = os.stat(path)
        if remember and ":".join(map(str, _identity(path))) == key and max(st.st_ctime_ns, st.st_mtime_ns) < started - RACY_NS:
            cache[key], changed = list(out[path]), True
    if changed:
        while len(cache) > 20000:  # oldest first: entries of files long replaced
            cache.pop(next(iter(cache)))
        with contextlib.suppress(OSError):
            write_json_atomic(_digest_cache_path(), cache)
    return out


def file_hashes(folder: Path) -> dict[str, dict[str, Any]]:
    """Hash every file under ``folder`` except the manifest: relative POSIX path -> size, sha256."""
    folder = Path(folder)
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        out[path.relative_to(folder).as_posix()] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    return out


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape an artifact (missing ones are left out; no host details)."""
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def runs_dir() -> Path:
    """Where run logs go: ``AIPC_RUNS_DIR``, else ``.aipc/runs`` in the working directory (the project root)."""
    return Path(os.environ["AIPC_RUNS_DIR"]) if os.environ.get("AIPC_RUNS_DIR") else RUNS_DIR


def log_run(stage: str, record: dict[str, Any]) -> Path | None:
    """Append one JSON line about this run (time, host, ``record``) to ``<runs_dir>/<stage>.jsonl``.

    The run log is outside every DVC output, so what it holds never changes an output's hash. A log
    that cannot be written (read-only disk) costs only the log line, never the stage.
    """
    entry = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "stage": stage,
             "host": socket.gethostname(), "platform": platform.platform(), "python": sys.executable,
             "pid": os.getpid(), "cwd": os.getcwd(), **record}
    path = runs_dir() / f"{stage}.jsonl"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, default=str) + "\n")
    except OSError:
        return None
    return path


def write_manifest(folder: Path, run_log: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """Write ``manifest.json`` into ``folder`` with the given fields, versions and file hashes.

    Fields in :data:`RUN_FIELDS` and ``run_log`` (durations, absolute paths) differ between runs with
    the same inputs: they go to the run log (:func:`log_run`), not into the manifest.

    Returns:
        The manifest as written, plus the run-only fields.
    """
    run_only = {k: fields.pop(k) for k in RUN_FIELDS if k in fields}
    manifest = {
        **fields,
        "versions": package_versions(),
        "files": file_hashes(folder),
    }
    path = Path(folder) / MANIFEST
    write_json_atomic(path, manifest)
    stage = str(fields.get("stage") or Path(folder).name)
    log_run(stage, {"variant": fields.get("variant"), "manifest_sha256": sha256_file(path),
                    **run_only, **(run_log or {})})
    return {**manifest, **run_only}


def read_manifest(folder: Path) -> dict[str, Any]:
    """Read ``manifest.json`` of an artifact folder, with a clear error when it is missing."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: rebuild this artifact with `dvc repro`")
    return json.loads(path.read_text(encoding="utf-8"))


LOCK_FILE = Path("dvc.lock")


def dvc_dir_md5(folder: Path) -> str:
    """The hash DVC 3 records for an output folder (``<md5>.dir``), computed from the files now there."""
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.meta import Meta
    from dvc_data.hashfile.tree import Tree

    tree = Tree()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        digest = hashlib.md5(usedforsecurity=False)
        with open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
        tree.add(path.relative_to(folder).parts, Meta(size=path.stat().st_size), HashInfo("md5", digest.hexdigest()))
    tree.digest()
    return tree.hash_info.value


def locked_md5(stage: str, out: Path, lock_file: Path = LOCK_FILE) -> str | None:
    """The md5 that ``dvc.lock`` records for output ``out`` of ``stage``, or None when it records none."""
    import yaml

    lock_file = Path(lock_file)
    if not lock_file.is_file():
        return None
    stages = (yaml.safe_load(lock_file.read_text(encoding="utf-8")) or {}).get("stages", {})
    rel = Path(os.path.relpath(Path(out).resolve(), lock_file.resolve().parent)).as_posix()
    return next((o.get("md5") for o in stages.get(stage, {}).get("outs", []) if o.get("path") == rel), None)


def folder_bytes(folder: Path) -> int:
    """Total size of the files under ``folder``."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux, macOS and Windows)."""
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if platform.system() == "Darwin" else peak * 1024
    except ImportError:  # Windows
        import psutil

        return int(psutil.Process().memory_info().peak_wset)
