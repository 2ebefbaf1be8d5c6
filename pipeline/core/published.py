"""``published.json``: the files publishing adds beside an artifact (its model card, the licence), with their hashes.

A published repository holds the artifact's files, its ``manifest.json`` (byte for byte as the pipeline wrote
it, so it cannot list the card written afterwards), the ``README.md`` model card, the source's ``LICENSE`` and
this record. ``aipc publish`` writes it last; :func:`pipeline.core.verify.verify_folder` accepts a pulled folder's
card and licence only as the record lists them, so a card edited after publishing (on the hub, or after the
pull) is refused like any other modified file. A repository published before the record existed gets one from
``aipc pull``, which says so in ``recorded_by``: it vouches for the card as pulled, not as published.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.core.artifacts import MANIFEST, write_json_atomic
from pipeline.core.errors import fail
from pipeline.core.hashes import sha256_file

PUBLISHED = "published.json"


def write_record(folder: Path, added: list[str], recorded_by: str = "aipc publish") -> dict[str, Any]:
    """Record the sha256 of ``folder``'s manifest and of each of the ``added`` files (relative POSIX paths)."""
    record = {
        "about": "files added beside the artifact when it was published; manifest.json lists the artifact's own",
        "recorded_by": recorded_by,
        "manifest_sha256": sha256_file(folder / MANIFEST),
        "files": {
            rel: {"bytes": (folder / rel).stat().st_size, "sha256": sha256_file(folder / rel)} for rel in sorted(added)
        },
    }
    write_json_atomic(folder / PUBLISHED, record)
    return record


def vouched_files(folder: Path, hint: str) -> dict[str, dict[str, Any]]:
    """The files ``folder``'s ``published.json`` lists (relative path -> bytes, sha256); {} when it has none.

    Fails in one line when the record is unreadable or was written for another ``manifest.json``.
    """
    path = folder / PUBLISHED
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        files, manifest_sha256 = dict(record["files"]), record["manifest_sha256"]
    except (ValueError, KeyError, TypeError):
        fail(f"{path} is not a readable publishing record: {hint}")
    if (folder / MANIFEST).is_file() and sha256_file(folder / MANIFEST) != manifest_sha256:
        fail(f"{folder / MANIFEST} is not the manifest {path} was published with (modified after publishing): {hint}")
    return files
