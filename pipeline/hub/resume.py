"""Resumable hub downloads: a download cut off by a closed laptop or a lost network keeps the files it finished.

``huggingface_hub`` skips the files of a ``local_dir`` that it finished in an earlier run (it records each one's
commit and etag under ``.cache/huggingface``), but the download stage writes into a fresh staging folder each
run. So the files arrive in a folder kept per repository and revision under ``.aipc/`` (outside every DVC output,
like the digest cache), and move into the staging folder once all are there: a run cut off during Phi-3-mini's
second weight shard keeps the first (5 GB). A file cut off midway starts again: huggingface_hub 1.21 drops
partial files (its PR 4228); within one run its ``http_get`` resumes a dropped connection with a range request.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from pipeline.core.artifacts import remove_tree
from pipeline.core.log import say

RESUME_ROOT = Path(".aipc") / "downloads"


def resume_dir(repo_id: str, revision: str, root: Path = RESUME_ROOT) -> Path:
    """The folder a download of ``repo_id`` at ``revision`` is made in (12 hex characters: Windows' 260 counts)."""
    return root / hashlib.sha256(f"{repo_id}@{revision}".encode()).hexdigest()[:12]


@contextlib.contextmanager
def resumable(repo_id: str, revision: str, dest: Path, root: Path = RESUME_ROOT) -> Iterator[Path]:
    """Yield the folder to download into; when the block ends normally, move its files into ``dest`` (renames on
    one volume) and remove it. When the block fails, it stays for the next run to resume."""
    partial = resume_dir(repo_id, revision, root)
    if partial.is_dir():
        say(f"resuming the download of {repo_id}@{revision[:12]} kept in {partial}")
    partial.mkdir(parents=True, exist_ok=True)
    yield partial
    for entry in partial.iterdir():
        os.replace(entry, Path(dest) / entry.name)
    remove_tree(partial)
