"""Artifact folders: atomic creation, manifests with hashes and versions, fixed paths.

Every stage writes into a temporary sibling folder and moves it into place only when it is
complete, so a failure never leaves a half-written artifact or destroys the previous one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

ARTIFACTS = Path("artifacts")
MANIFEST = "manifest.json"
TRACKED_PACKAGES = (
    "aipc-pipeline", "torch", "transformers", "huggingface-hub", "optimum", "optimum-intel", "nncf",
    "openvino", "openvino-genai", "openvino-tokenizers", "onnxruntime-genai",
)


@contextlib.contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """Yield an empty temporary folder that replaces ``final`` only if the block succeeds.

    Args:
        final: The artifact folder to create or replace.

    Yields:
        A temporary folder on the same file system as ``final``.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        replace_dir(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(src: Path, final: Path) -> None:
    """Move folder ``src`` to ``final``, replacing an older ``final`` (never editing it in place)."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(src, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temporary file and rename, so readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


_KNOWN_SHA256: dict[tuple[int, int, int, int], str] = {}


def _identity(path: Path) -> tuple[int, int, int, int]:
    """What changes when a file's content may have changed: device, inode, size, modification time."""
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


def remember_sha256(path: Path, digest: str) -> None:
    """Record the sha256 of a file just written, so :func:`sha256_file` need not read it again.

    Valid while the file keeps its inode, size and modification time (a rename keeps them).
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


def file_hashes(folder: Path) -> dict[str, dict[str, Any]]:
    """Hash every file under ``folder`` except the manifest: relative POSIX path -> size, sha256."""
    folder = Path(folder)
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        out[path.relative_to(folder).as_posix()] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    return out


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape an artifact (missing ones are left out)."""
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for name in TRACKED_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def write_manifest(folder: Path, **fields: Any) -> dict[str, Any]:
    """Write ``manifest.json`` into ``folder`` with the given fields, versions and file hashes."""
    manifest = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **fields,
        "versions": package_versions(),
        "files": file_hashes(folder),
    }
    write_json_atomic(Path(folder) / MANIFEST, manifest)
    return manifest


def read_manifest(folder: Path) -> dict[str, Any]:
    """Read ``manifest.json`` of an artifact folder, with a clear error when it is missing."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: rebuild this artifact with `dvc repro`")
    return json.loads(path.read_text(encoding="utf-8"))


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
