"""``aipc repair <stage>``: rebuild a tampered output and every other output that links the same bytes.

Why a repair needs more than ``dvc repro -f``: with ``cache.type`` hardlink (or symlink) an output file *is*
its cache entry, so a byte flipped in ``artifacts/`` is flipped in ``.dvc/cache`` too, and DVC, finding an
entry under the genuine hash, links the tampered bytes back after the rebuild. And identical files of other
outputs are the same entry: the Windows ML packages hold the int4 IR's ``openvino_model.bin`` byte for byte,
so the flip reaches them as well (:mod:`pipeline.core.cache_links`).

:func:`repair` drops the cache entries of the stage's outputs whose bytes do not hash to their names and every
file of every recorded output linked to one (same inode, or the same md5 without its bytes), rebuilds the
stage with ``dvc repro -f -s``, then, in pipeline order, each other output that lost files: re-linked with
``dvc checkout`` when the cache now holds a good copy of what it lost, rebuilt otherwise. Every folder it
touched is verified (:func:`pipeline.core.verify.verify_folder`) before it reports.
"""

from __future__ import annotations

import json
import subprocess
import sys
from graphlib import TopologicalSorter
from pathlib import Path
from typing import Any

from pipeline.core.artifacts import MANIFEST
from pipeline.core.cache_links import bad_objects, cache_file, drop_linked, lock_outs, lock_stages, out_listing
from pipeline.core.errors import fail
from pipeline.core.hashes import LOCK_FILE, file_digests
from pipeline.core.log import say
from pipeline.core.verify import verify_folder


def cache_objects(repo: Any, oid: str) -> list[tuple[Path, str]]:
    """The cache files of output hash ``oid`` (a ``.dir`` listing and its files), each with the md5 it must have."""
    if not oid.endswith(".dir"):
        return [(cache_file(repo, oid), oid)]
    listing = cache_file(repo, oid)
    objects = [(listing, oid.removesuffix(".dir"))]
    try:
        entries = json.loads(listing.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return objects
    return objects + [(cache_file(repo, e["md5"]), e["md5"]) for e in entries if "md5" in e]


def pipeline_order(root: Path, wanted: set[str]) -> list[str]:
    """``wanted`` stages, each after the stages whose recorded outputs it depends on (from ``dvc.lock``)."""
    stages = lock_stages(root)
    producers = {o["path"]: name for name, entry in stages.items() for o in entry.get("outs", [])}
    graph = {
        name: {
            producer
            for d in entry.get("deps", [])
            for out, producer in producers.items()
            if d["path"] == out or d["path"].startswith(out + "/")
        }
        for name, entry in stages.items()
    }
    ordered = [name for name in TopologicalSorter(graph).static_order() if name in wanted]
    return ordered + sorted(wanted - set(ordered))


def _dvc(args: list[str], root: Path) -> None:
    from pipeline.core.envs import venv_env

    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, env=venv_env(), check=False)
    if done.returncode:
        fail(f"`dvc {' '.join(args)}` failed (exit {done.returncode}): the lines above say why")


def _cache_holds(root: Path, stage: str, lost: list[Path]) -> bool:
    """Whether the cache now holds, with the right bytes, every file ``stage`` lost (so a checkout restores it)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        recorded: dict[Path, str] = {}
        for name, path, oid in lock_outs(root):
            if name == stage:
                recorded |= out_listing(repo, root, path, oid)
        if any(f not in recorded for f in lost):
            return False
        objects = {cache_file(repo, recorded[f]): recorded[f] for f in lost}
    if not all(p.is_file() for p in objects):
        return False
    actual = file_digests(list(objects), remember=False)  # the objects just rebuilt: every byte read
    return all(actual[p][0] == md5 for p, md5 in objects.items())


def repair(stage: str, root: Path = Path(".")) -> list[Path]:
    """Drop the bad cache entries of ``stage`` and every output file linked to them, rebuild or re-link; verify.

    Returns the verified output folders (``stage``'s first, then the others that linked the same bytes).
    """
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        candidates = [obj for name, _, oid in lock_outs(root) if name == stage for obj in cache_objects(repo, oid)]
        bad = bad_objects(candidates)
        removed = drop_linked(root, repo, bad)
    say(f"dropped {len(bad)} tampered cache file(s) of {stage}" + (f": {', '.join(sorted(bad))}" if bad else ""))
    others = sorted(set(removed) - {stage})
    if others:
        say(f"{', '.join(others)} linked the same bytes: re-linking or rebuilding them too")
    for name in pipeline_order(root, {stage, *others}):
        if name != stage and _cache_holds(root, name, removed[name]):
            _dvc(["checkout", name], root)
        else:
            _dvc(["repro", "-f", "-s", name], root)
    stages = lock_stages(root)
    folders = [
        (name, root / o["path"])
        for name in (stage, *others)
        for o in stages.get(name, {}).get("outs", [])
        if (root / o["path"] / MANIFEST).is_file()
    ]
    for name, folder in folders:
        verify_folder(folder, name, root / LOCK_FILE)
    return [folder for _, folder in folders]
