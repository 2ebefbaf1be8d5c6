"""Git + git-lfs primitives shared by the git publish backend and the local Hub-compatible server.

A published repository is an ordinary git repository whose large files are git-lfs pointers; the
objects live in ``<bare repo>/lfs/objects/aa/bb/<sha256>`` (where git-lfs puts them when pushing to a
local or ``file://`` remote). :func:`tree_files` reads a commit's files with their sha256, so both the
publisher (what is already there?) and the server (what do I serve?) see the same truth.

The hub token never goes on a command line or into ``.git/config``: :func:`auth_env` passes it to git
and git-lfs as an ``http.extraHeader`` through ``GIT_CONFIG_COUNT``/``GIT_CONFIG_KEY_n`` environment
variables (git >= 2.31), which live only as long as the process.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import fail

LFS_MIN_BYTES = 1 << 20  # files from 1 MiB up, and every binary file, go through git-lfs (the Hub's rule is similar)
POINTER_RE = re.compile(rb"^version https://git-lfs\.github\.com/spec/v1\noid sha256:([0-9a-f]{64})\nsize (\d+)\n$")


@dataclass(frozen=True)
class RepoFile:
    """One file of a commit: its size and sha256 (of the real content), git blob id, and whether LFS holds it."""

    path: str
    size: int
    sha256: str
    blob_id: str
    lfs: bool


def git(args: list[str], cwd: Path | None = None, env: dict | None = None, input: bytes | None = None) -> bytes:
    """Run ``git`` and return its stdout; a failure becomes one line naming the git command and its error."""
    if shutil.which("git") is None:
        fail("git is not installed: install git (and git-lfs) to publish with the git backend")
    # core.autocrlf=false: Git for Windows rewrites line endings by default, and published files must keep their bytes
    done = subprocess.run(
        ["git", "-c", "core.autocrlf=false", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        input=input,
        capture_output=True,
    )
    if done.returncode:
        last = (done.stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        fail(f"`git {args[0]}` failed: {last}")
    return done.stdout


def require_git_lfs() -> None:
    """Fail with what to install when git-lfs is missing."""
    if subprocess.run(["git", "lfs", "version"], capture_output=True).returncode:
        fail("git-lfs is not installed: `apt-get install git-lfs` (Debian/Ubuntu) or https://git-lfs.com, then retry")


def auth_env(token: str | None, user: str = "aipc") -> dict[str, str]:
    """Environment that makes git and git-lfs send ``token`` as HTTP basic auth, without writing it anywhere."""
    env = {"GIT_TERMINAL_PROMPT": "0"}
    if token:
        basic = base64.b64encode(f"{user}:{token}".encode()).decode()
        env.update(
            {
                "GIT_CONFIG_COUNT": "1",
                "GIT_CONFIG_KEY_0": "http.extraHeader",
                "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}",
            }
        )
    return env


def is_lfs_file(path: Path) -> bool:
    """Whether a file goes through LFS: 1 MiB or more, or binary (a NUL byte in its first 8 KiB)."""
    if path.stat().st_size >= LFS_MIN_BYTES:
        return True
    with open(path, "rb") as handle:
        return b"\0" in handle.read(8192)


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file for an object."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def lfs_object_path(git_dir: Path, sha256: str) -> Path:
    """Where a repository stores an LFS object (bare repo: ``lfs/objects``; work tree: ``.git/lfs/objects``)."""
    base = git_dir / ".git" if (git_dir / ".git").is_dir() else git_dir
    return base / "lfs" / "objects" / sha256[:2] / sha256[2:4] / sha256


def git_blob_id(data: bytes) -> str:
    """The git blob id (sha1 of ``blob <size>\\0<data>``), what the Hub calls a regular file's oid."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def resolve(git_dir: Path, revision: str) -> str | None:
    """The commit a branch, tag or sha names in ``git_dir``, or ``None``."""
    done = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}"],
        cwd=git_dir,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
    )
    return done.stdout.strip() or None


def read_blob(git_dir: Path, blob_id: str) -> bytes:
    """The content of one blob."""
    return git(["cat-file", "blob", blob_id], cwd=git_dir)


def tree_files(git_dir: Path, commit: str) -> dict[str, RepoFile]:
    """Every file of ``commit`` with its real size and sha256 (LFS pointers resolved from the pointer itself)."""
    out = {}
    listing = git(["ls-tree", "-r", "-l", "-z", commit], cwd=git_dir).split(b"\0")
    for entry in filter(None, listing):
        meta, path = entry.split(b"\t", 1)
        _mode, kind, blob_id, size = meta.split()
        if kind != b"blob":
            continue
        data = read_blob(git_dir, blob_id.decode()) if int(size) < 1024 else None
        match = POINTER_RE.match(data) if data is not None else None
        if match:
            out[path.decode()] = RepoFile(
                path.decode(), int(match.group(2)), match.group(1).decode(), blob_id.decode(), True
            )
        else:
            data = data if data is not None else read_blob(git_dir, blob_id.decode())
            out[path.decode()] = RepoFile(
                path.decode(), len(data), hashlib.sha256(data).hexdigest(), blob_id.decode(), False
            )
    return out


def read_file(git_dir: Path, entry: RepoFile) -> bytes:
    """The real content of a file listed by :func:`tree_files` (from the LFS store when it is a pointer)."""
    if not entry.lfs:
        return read_blob(git_dir, entry.blob_id)
    obj = lfs_object_path(git_dir, entry.sha256)
    if not obj.is_file():
        fail(
            f"LFS object {entry.sha256[:12]} of '{entry.path}' is missing from {git_dir}: push it with `git lfs push --all`"
        )
    return obj.read_bytes()


def write_commit(path: Path, parent: str | None, items: list[dict], header: dict) -> str:
    """Apply the Hub's NDJSON file operations on top of ``parent`` with a temporary index; return the new commit.

    ``items``: ``file`` (base64 content), ``lfsFile`` (an uploaded object: its pointer is committed) and
    ``deletedFile`` operations; ``header``: the commit's ``summary`` and ``description``.
    """
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            "GIT_INDEX_FILE": str(Path(tmp) / "index"),
            "GIT_AUTHOR_NAME": "hub",
            "GIT_AUTHOR_EMAIL": "hub@localhost",
            "GIT_COMMITTER_NAME": "hub",
            "GIT_COMMITTER_EMAIL": "hub@localhost",
        }
        git(["read-tree", *([parent] if parent else ["--empty"])], cwd=path, env=env)
        for item in items:
            value = item["value"]
            if item["key"] == "deletedFile":
                git(["update-index", "--force-remove", value["path"]], cwd=path, env=env)
                continue
            if item["key"] == "lfsFile":  # the caller checked the object is there
                data = lfs_pointer(value["oid"], value["size"])
            else:
                data = base64.b64decode(value["content"])
            blob = git(["hash-object", "-w", "--stdin"], cwd=path, input=data).decode().strip()
            git(["update-index", "--add", "--cacheinfo", f"100644,{blob},{value['path']}"], cwd=path, env=env)
        tree_id = git(["write-tree"], cwd=path, env=env).decode().strip()
        message = header["summary"] + (f"\n\n{header['description']}" if header.get("description") else "")
        args = ["commit-tree", tree_id, *(["-p", parent] if parent else []), "-m", message]
        return git(args, cwd=path, env=env).decode().strip()
