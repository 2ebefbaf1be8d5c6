"""File hashes: sha256 (reused within a process and, by file identity, across runs), DVC's md5 of a folder and dvc.lock's record.

What manifests, verification and the pickle check compare against; the artifact folders themselves are
:mod:`pipeline.core.artifacts`, the manifests :mod:`pipeline.core.manifest`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from pipeline.core.artifacts import write_json_atomic

_KNOWN_SHA256: dict[tuple[int, ...], str] = {}
# A digest is reused only while the file keeps this identity. The change time (ctime) is in it because an in-place
# byte flip can keep size and mtime (``os.utime`` puts mtime back; DVC's hard links share the inode with the
# cache), but every write, chmod, link or utime sets ctime to "now", and no system call sets it back.
RACY_NS = 2_000_000_000  # a file changed this recently may change again within the same timestamp tick: not reused
DIGEST_CACHE = Path(".aipc") / "digests.json"  # AIPC_DIGEST_CACHE overrides; outside every DVC output


def _identity(path: Path) -> tuple[int, ...]:
    """What changes when a file's content may have changed: device, inode, size, modification and change time.

    On Windows the device is the volume serial number and the inode the NTFS file index (``os.stat``), but
    ``st_ctime`` is the creation time: the change time is read from NTFS itself (:func:`windows_change_time_ns`).
    """
    st = os.stat(path)
    changed = windows_change_time_ns(path) if sys.platform == "win32" else st.st_ctime_ns
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, changed


FILETIME_EPOCH = 116_444_736_000_000_000  # 1970-01-01 in Windows FILETIME units (100 ns since 1601-01-01)


def filetime_to_ns(filetime: int) -> int:
    """A Windows FILETIME (100 ns ticks since 1601) as nanoseconds since the Unix epoch, like ``st_mtime_ns``."""
    return (filetime - FILETIME_EPOCH) * 100


def windows_change_time_ns(path: Path) -> int:
    """NTFS's ChangeTime of ``path`` (``FILE_BASIC_INFO``), which every write, attribute change, rename, link
    and ``os.utime`` sets to "now": the POSIX ctime's counterpart, which ``os.stat`` does not report."""
    import ctypes
    from ctypes import wintypes

    class FileBasicInfo(ctypes.Structure):
        _fields_ = [(n, ctypes.c_int64) for n in ("created", "accessed", "written", "changed")]
        _fields_ += [("attributes", wintypes.DWORD)]

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
    kernel32.CreateFileW.restype = wintypes.HANDLE
    kernel32.CreateFileW.argtypes = [wintypes.LPCWSTR, wintypes.DWORD, wintypes.DWORD, wintypes.LPVOID]
    kernel32.CreateFileW.argtypes += [wintypes.DWORD, wintypes.DWORD, wintypes.HANDLE]
    # FILE_READ_ATTRIBUTES, shared for read/write/delete (DVC or a writer may hold it), OPEN_EXISTING, folders too
    handle = kernel32.CreateFileW(str(path), 0x80, 0x7, None, 3, 0x02000000, None)
    if handle in (None, wintypes.HANDLE(-1).value):
        raise ctypes.WinError(ctypes.get_last_error())  # type: ignore[attr-defined]
    kernel32.GetFileInformationByHandleEx.argtypes = [wintypes.HANDLE, ctypes.c_int, wintypes.LPVOID, wintypes.DWORD]
    kernel32.CloseHandle.argtypes = [wintypes.HANDLE]
    try:
        info = FileBasicInfo()
        if not kernel32.GetFileInformationByHandleEx(handle, 0, ctypes.byref(info), ctypes.sizeof(info)):
            raise ctypes.WinError(ctypes.get_last_error())  # type: ignore[attr-defined]
    finally:
        kernel32.CloseHandle(handle)
    return filetime_to_ns(info.changed)


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
    and only for files with a file index (``st_ino``: NTFS and POSIX file systems have one; some network shares
    report 0). It guards against accidental and in-place modification; whoever can rewrite ``.aipc/`` can rewrite
    the code too, so the pickle check (:mod:`pipeline.npu_lib.export`) never uses it; ``remember=False``
    reads every byte and leaves the cache alone.
    """
    cache = _load_digest_cache() if remember else {}
    out, changed = {}, False
    for path in paths:
        identity = _identity(path)
        key = ":".join(map(str, identity))
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
        now = _identity(path)
        if remember and identity[1] and now == identity and max(now[3], now[4]) < started - RACY_NS:
            cache[key], changed = list(out[path]), True
    if changed:
        while len(cache) > 20000:  # oldest first: entries of files long replaced
            cache.pop(next(iter(cache)))
        with contextlib.suppress(OSError):
            write_json_atomic(_digest_cache_path(), cache)
    return out


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
    value = tree.hash_info.value
    assert value is not None, "Tree.digest() sets the folder hash"
    return value


def locked_md5(stage: str, out: Path, lock_file: Path = LOCK_FILE) -> str | None:
    """The md5 that ``dvc.lock`` records for output ``out`` of ``stage``, or None when it records none."""
    from pipeline.core.yamlfile import read_yaml

    lock_file = Path(lock_file)
    if not lock_file.is_file():
        return None
    stages = (read_yaml(lock_file) or {}).get("stages", {})
    rel = Path(os.path.relpath(Path(out).resolve(), lock_file.resolve().parent)).as_posix()
    return next((o.get("md5") for o in stages.get(stage, {}).get("outs", []) if o.get("path") == rel), None)
