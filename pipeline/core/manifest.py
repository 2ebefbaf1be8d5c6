"""Manifests: what each artifact folder records (parameters, package versions, file hashes) and the run log beside it.

Manifests hold only what the inputs determine, so the same inputs give the same bytes and DVC
reruns nothing downstream. What differs from run to run (time, host, durations, absolute paths)
goes to a run log outside every DVC output: ``.aipc/runs/<stage>.jsonl`` (``AIPC_RUNS_DIR`` overrides).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline.core.artifacts import MANIFEST, folder_bytes, write_json_atomic
from pipeline.core.hashes import sha256_file

TRACKED_PACKAGES = (
    "aipc-pipeline",
    "torch",
    "transformers",
    "huggingface-hub",
    "optimum",
    "optimum-intel",
    "nncf",
    "openvino",
    "openvino-genai",
    "openvino-tokenizers",
    "onnxruntime-genai",
)
# Manifest fields that change from run to run with the same inputs: written to the run log instead.
RUN_FIELDS = ("timings",)
RUNS_DIR = Path(".aipc") / "runs"

# a checkpoint's config and tokenizer files: downloaded beside the weights, copied beside a converted model
CHECKPOINT_SIDE_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
)


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
    entry = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "stage": stage,
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.executable,
        "pid": os.getpid(),
        "cwd": os.getcwd(),
        **record,
    }
    path = runs_dir() / f"{stage}.jsonl"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, default=str) + "\n")
    except OSError:
        return None
    return path


def write_manifest(folder: Path, run_log: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """Write ``manifest.json`` into ``folder`` with the given fields, its size, versions and file hashes.

    Fields in :data:`RUN_FIELDS` and ``run_log`` (durations, absolute paths) differ between runs with
    the same inputs: they go to the run log (:func:`log_run`), not into the manifest. ``size_bytes`` (the
    folder's files before the manifest) is added unless given.

    Returns:
        The manifest as written, plus the run-only fields.
    """
    run_only = {k: fields.pop(k) for k in RUN_FIELDS if k in fields}
    fields.setdefault("size_bytes", folder_bytes(folder))
    manifest = {
        **fields,
        "versions": package_versions(),
        "files": file_hashes(folder),
    }
    path = Path(folder) / MANIFEST
    write_json_atomic(path, manifest)
    stage = str(fields.get("stage") or Path(folder).name)
    log_run(
        stage, {"variant": fields.get("variant"), "manifest_sha256": sha256_file(path), **run_only, **(run_log or {})}
    )
    return {**manifest, **run_only}


def read_manifest(folder: Path) -> dict[str, Any]:
    """Read ``manifest.json`` of an artifact folder, with a clear error when it is missing."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: rebuild this artifact with `dvc repro`")
    return json.loads(path.read_text(encoding="utf-8"))


def tied_embeddings(found: dict[str, Any] | None, model_config: dict[str, Any] | None) -> dict[str, Any] | None:
    """The manifest's ``tied_embeddings`` record, one layout in every family (issue 21.4).

    Args:
        found: What the family read back from its artifact: ``shared_constant`` (the input embedding and the LM
            head read one stored weight, so the tie survived), ``embedding`` and ``lm_head`` (each one's
            ``layer`` and ``precision``); None where it found no embedding or no LM head.
        model_config: The checkpoint's ``config.json``, whose ``tie_word_embeddings`` says whether the source
            ties them; None where it is not at hand (then the record does not claim either way).

    Returns:
        ``found`` with ``checkpoint_tied`` added, or None.
    """
    if found is None:
        return None
    if model_config is None:
        return dict(found)
    return {"checkpoint_tied": bool(model_config.get("tie_word_embeddings")), **found}
