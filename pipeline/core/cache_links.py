"""Corrupted DVC cache objects and every output file that links one: found, dropped, never linked again.

With ``cache.type`` hardlink an output file *is* its cache object, and identical files in different outputs are
one object: the int4 IR's ``openvino_model.bin`` in ``artifacts/openvino/int4`` and in both Windows ML packages
(``artifacts/winml/cpu``, ``gpu``) are one inode. A byte flipped in one is flipped in all three and in the cache.
DVC's own status check (inode, size, mtime) does not see an in-place flip that puts mtime back, and a rebuild of
one folder leaves the others linked to the old bytes.

So :func:`drop_linked` removes a bad object together with every file of every output ``dvc.lock`` records that
is that object (same inode) or should be (same md5 in the output's listing) without its bytes, and
:func:`guard_outputs` (run by ``aipc repro`` before and after DVC) checks every recorded output against its
manifest, cheaply with the digest cache (:func:`pipeline.core.hashes.file_digests`), and drops what does not
match, so DVC rebuilds or re-links it from a good copy instead of calling it up to date. ``aipc repair``:
:mod:`pipeline.core.repair`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pipeline.core.artifacts import MANIFEST, remove_tree
from pipeline.core.hashes import LOCK_FILE, _identity, file_digests
from pipeline.core.log import say

Identity = tuple[int, ...]
# files found to match their manifest in this process, by the digest cache's identity (device, inode, size,
# modification and change time; NTFS's ChangeTime on Windows): the check after DVC skips them
_VERIFIED: set[Identity] = set()


def lock_stages(root: Path) -> dict[str, Any]:
    """``dvc.lock``'s stages (name -> deps, outs, ...), or {} when there is no lock."""
    import yaml

    lock = Path(root) / LOCK_FILE
    if not lock.is_file():
        return {}
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 15x faster on a full pipeline's lock
    return (yaml.load(lock.read_text(encoding="utf-8"), Loader=loader) or {}).get("stages", {})


def lock_outs(root: Path) -> list[tuple[str, str, str]]:
    """Every output ``dvc.lock`` records, as (stage, path, md5 or ``<md5>.dir``)."""
    return [
        (stage, o["path"], o["md5"])
        for stage, entry in lock_stages(root).items()
        for o in entry.get("outs", [])
        if o.get("md5")
    ]


def cache_file(repo: Any, oid: str) -> Path:
    """Where the DVC cache keeps object ``oid``."""
    return Path(repo.cache.local.oid_to_path(oid))


def out_listing(repo: Any, root: Path, path: str, oid: str) -> dict[Path, str]:
    """Each file of recorded output ``path`` -> the md5 ``dvc.lock`` says it has (a folder's from its listing)."""
    if not oid.endswith(".dir"):
        return {Path(root) / path: oid}
    try:
        entries = json.loads(cache_file(repo, oid).read_text(encoding="utf-8"))
        return {Path(root) / path / e["relpath"]: e["md5"] for e in entries}
    except (OSError, ValueError, KeyError, TypeError):  # listing dropped or corrupt: nothing to match by md5
        return {}


def identity(path: Path) -> Identity | None:
    """The (device, inode) a hard link shares with its cache object, or None when ``path`` is gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def bad_objects(candidates: list[tuple[Path, str]]) -> dict[str, Identity | None]:
    """The cache objects among ``candidates`` (path, md5) whose bytes do not hash to their md5 (every byte read)."""
    present = sorted({(p, md5) for p, md5 in candidates if p.is_file()})
    actual = file_digests([p for p, _ in present], remember=False)
    return {md5: identity(p) for p, md5 in present if actual[p][0] != md5}


def drop_linked(root: Path, repo: Any, bad: dict[str, Identity | None]) -> dict[str, list[Path]]:
    """Remove the ``bad`` cache objects (md5 -> identity) and every recorded output file linked to one.

    A file is linked when it is the object (same device and inode), or when its output's listing records that
    md5 for it and its bytes do not hash to it (a copy of the bad bytes). Returns stage -> removed files.
    """
    linked = {i for i in bad.values() if i is not None}
    removed: dict[str, list[Path]] = {}
    for stage, path, oid in lock_outs(root) if bad else []:
        files = {f: md5 for f, md5 in out_listing(repo, root, path, oid).items() if f.is_file()}
        same = [f for f in files if identity(f) in linked]
        copies = [f for f, md5 in files.items() if md5 in bad and f not in same]
        digests = file_digests(copies, remember=False)
        gone = same + [f for f in copies if digests[f][0] != files[f]]
        for f in gone:
            remove_tree(f)
        if gone:
            removed.setdefault(stage, []).extend(gone)
    for md5 in bad:
        remove_tree(cache_file(repo, md5))
    return removed


def _manifest_files(root: Path) -> dict[Path, str | None]:
    """Each existing file the manifests of the recorded outputs list -> its sha256 (None: manifest unreadable)."""
    listed: dict[Path, str | None] = {}
    for _, path, _ in lock_outs(root):
        manifest = Path(root) / path / MANIFEST
        if not manifest.is_file():
            continue
        try:
            files = json.loads(manifest.read_text(encoding="utf-8"))["files"]
            listed |= {manifest.parent / rel: info.get("sha256") for rel, info in files.items()}
        except (ValueError, KeyError, TypeError, AttributeError):
            listed[manifest] = None  # dropped, so the stage is rebuilt
    return {p: sha for p, sha in listed.items() if p.is_file()}


def guard_outputs(root: Path = Path(".")) -> list[Path]:
    """Drop every recorded output file that does not match its manifest, its cache object and the files linked to it.

    Cheap when nothing changed: each file's digests come from the digest cache, and a file already found
    good in this process (same identity) is not looked at again. Returns the removed files; DVC then sees
    their outputs modified and rebuilds them, or links them again from a good cache object.
    """
    listed = {p: sha for p, sha in _manifest_files(root).items() if _identity(p) not in _VERIFIED}
    digests = file_digests([p for p, sha in listed.items() if sha is not None])
    corrupt = [p for p, sha in listed.items() if sha is None or digests[p][1] != sha]
    _VERIFIED.update(_identity(p) for p in listed if p not in corrupt)
    if not corrupt:
        return []
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        recorded: dict[Path, str] = {}
        for _, out, oid in lock_outs(root):
            recorded |= out_listing(repo, root, out, oid)
        bad = bad_objects([(cache_file(repo, recorded[p]), recorded[p]) for p in corrupt if p in recorded])
        removed = drop_linked(root, repo, bad)
    for file in corrupt:
        remove_tree(file)
    gone = sorted({*corrupt, *(f for files in removed.values() for f in files)})
    shown = ", ".join(os.path.relpath(p, root) for p in gone[:4]) + (", ..." if len(gone) > 4 else "")
    say(
        f"{len(gone)} output file(s) did not match their manifest or linked a corrupted cache object ({shown}): "
        f"dropped them and {len(bad)} cache object(s), so DVC rebuilds or re-links them"
    )
    return gone


def guarded_repro(run_dvc: Any, argv: list[str]) -> int:
    """``dvc repro argv`` between two :func:`guard_outputs`: nothing tampered is called up to date or linked.

    When the check after DVC finds a file DVC linked from a corrupted cache object, that object is dropped and
    DVC runs once more. Returns DVC's exit code.
    """
    if any(a in argv for a in ("--dry", "-h", "--help")):
        return int(run_dvc(["repro", *argv]))
    guard_outputs()
    code = int(run_dvc(["repro", *argv]))
    if not code and guard_outputs():
        code = int(run_dvc(["repro", *argv]))
        if not code and guard_outputs():
            from pipeline.core.errors import fail

            fail("outputs still do not match their manifests after `dvc repro`: run `aipc verify` on them")
    return code
