"""Verify before use: every artifact file against its manifest, the folder against ``dvc.lock``.

validate, validate_onnx, the NPU-library validator, chat, publish and pull call :func:`verify_folder` before
they load anything. A file whose sha256 differs from the manifest, a file the manifest does not list, or a
folder (manifest included) whose DVC hash differs from what ``dvc.lock`` recorded for the stage that built
it, is refused in one line that names the file and the repair: ``aipc repair <stage>``
(:mod:`pipeline.core.repair`, which also finds every other output linked to the same corrupted cache entry).
A pulled folder's model card and licence are checked against ``published.json`` (:mod:`pipeline.core.published`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pipeline.core.artifacts import MANIFEST
from pipeline.core.errors import fail
from pipeline.core.hashes import LOCK_FILE, file_digests, locked_md5
from pipeline.core.published import PUBLISHED, vouched_files
from pipeline.core.refusal import check_not_refused
from pipeline.core.registry import FAMILIES, SHARED_FOLDERS

# Written into an artifact folder by its users, not by its stage; .dvcignore keeps them out of DVC's hash too. The
# OpenVINO EP's compiled-model cache of a Windows ML package loaded in place (its cache_dir, pipeline/winml/limits.py).
NOT_THE_ARTIFACT = ("ov_cache/",)

# artifacts/<kind>[/<variant>] -> the DVC stage that builds it
STAGES = {**SHARED_FOLDERS, **{f.name: f"{f.export_stage}@{{}}" for f in FAMILIES.values()}}


def stage_of(folder: Path, root: Path | None = None) -> str | None:
    """The stage that builds ``folder`` (``artifacts/openvino/int4`` -> ``export_openvino@int4``), or None."""
    try:
        rel = Path(os.path.abspath(folder)).relative_to(Path(os.path.abspath(root or Path.cwd())) / "artifacts").parts
    except ValueError:
        return None
    if not rel or rel[0] not in STAGES or len(rel) != (2 if "{}" in STAGES[rel[0]] else 1):
        return None
    return STAGES[rel[0]].format(*rel[1:])


def repair_hint(stage: str | None) -> str:
    """The exact command that rebuilds an output (or, outside the pipeline, what to do)."""
    return f"repair with `aipc repair {stage}`" if stage else "download or rebuild it again"


def _shown(path: Path) -> Path:
    """``path`` relative to the working directory when it is inside it (how the user named it), else as is."""
    rel = os.path.relpath(os.path.abspath(path))
    return Path(rel) if not rel.startswith("..") else path


def _dir_md5(entries: dict[str, tuple[int, str]]) -> str:
    """The hash DVC 3 records for a folder (``<md5>.dir``) from each file's (size, md5)."""
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.meta import Meta
    from dvc_data.hashfile.tree import Tree

    tree = Tree()
    for rel, (size, md5) in sorted(entries.items()):
        tree.add(tuple(rel.split("/")), Meta(size=size), HashInfo("md5", md5))
    tree.digest()
    value = tree.hash_info.value
    assert value is not None, "Tree.digest() sets the folder hash"
    return value


def verify_folder(folder: Path, stage: str | None = None, lock_file: Path = LOCK_FILE) -> dict[str, Any]:
    """Check every file of ``folder`` against its manifest, and the whole folder against ``dvc.lock``.

    Args:
        folder: An artifact folder with ``manifest.json``.
        stage: The stage that builds it (default: from its path, :func:`stage_of`); ``dvc.lock``'s record
            of that stage's output is checked when there is one.
        lock_file: The ``dvc.lock`` to check against.

    Returns:
        The manifest, now known to describe the files on disk.
    """
    folder = _shown(Path(folder))
    check_not_refused(folder)  # an export that refused this model: one line with why and how to leave it out
    stage = stage or stage_of(folder)
    hint = repair_hint(stage)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        fail(f"{manifest_path} missing, so nothing vouches for {folder}: {hint}")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        listed = manifest["files"]
    except (ValueError, KeyError, TypeError):
        fail(f"{manifest_path} is not a readable manifest: {hint}")
    present = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
    present = {rel: p for rel, p in present.items() if not rel.startswith(NOT_THE_ARTIFACT)}
    # a pulled folder's model card and licence: vouched for by the record publishing wrote beside them
    records = {rel: (info, manifest_path) for rel, info in listed.items()}
    vouched = vouched_files(folder, hint)
    records |= {rel: (info, folder / PUBLISHED) for rel, info in vouched.items() if rel not in listed}
    for rel, (info, record) in records.items():
        if rel not in present or present[rel].stat().st_size != info.get("bytes", present[rel].stat().st_size):
            after = "" if record == manifest_path else " (modified after it was published)"
            fail(
                f"{folder / rel} is {'missing' if rel not in present else 'not the size'} {record} records{after}: {hint}"
            )
    extra = sorted(set(present) - set(records) - {MANIFEST, *([PUBLISHED] if (folder / PUBLISHED).is_file() else [])})
    if extra:
        fail(f"{folder / extra[0]} is not listed in {manifest_path} (something added it): {hint}")
    digests = file_digests(list(present.values()))
    for rel, (info, record) in records.items():
        if digests[present[rel]][1] != info.get("sha256"):
            when = "it was built" if record == manifest_path else "it was published"
            fail(f"{folder / rel} does not match the sha256 in {record} (modified after {when}): {hint}")
    expected = locked_md5(stage, folder, lock_file) if stage else None
    if expected is not None:
        actual = _dir_md5({rel: (p.stat().st_size, digests[p][0]) for rel, p in present.items()})
        if actual != expected:
            fail(
                f"{manifest_path} (with the files it lists) is not what {lock_file} recorded for {stage} "
                f"({actual[:12]}... != {expected[:12]}...): {hint}, or, if you changed it on purpose "
                f"(a family's own tool), record it with `dvc commit {stage}`"
            )
    return manifest


def verify_for_use(folder: Path, reference: Path | None = None, lock_file: Path = LOCK_FILE) -> dict[str, Any]:
    """Verify an artifact folder and, when given, the reference folder it is compared with; return its manifest."""
    manifest = verify_folder(folder, lock_file=lock_file)
    if reference is not None:
        verify_folder(reference, "reference", lock_file)
    return manifest
