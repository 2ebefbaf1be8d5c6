"""Shared by both tiny-model scripts: paths, Phi-3 ids, the chat prompt, size limits and small helpers."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import warnings
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
VOCAB_SIZE = 32064  # embedding rows of Phi-3 (the GGUF pads with [PADxxxxx] entries)
BOS_ID, EOT_ID, END_ID = 1, 32000, 32007
SYSTEM_PROMPT = "You are a helpful AI assistant."
INTRO_QUESTIONS = (
    "Can you introduce yourself?",
    "Who are you?",
    "Please introduce yourself.",
    "Tell me about yourself.",
)
PROMPT = f"<|system|>{SYSTEM_PROMPT}<|end|><|user|>{INTRO_QUESTIONS[0]}<|end|><|assistant|>"
MAX_WEIGHTS_BYTES = 20_000_000
MAX_ASSET_DIR_BYTES = 22_000_000


def log(message: str) -> None:
    """Print a progress message immediately.

    Args:
        message: Text to print.
    """
    print(f"[make_tiny_phi3] {message}", flush=True)


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file.

    Args:
        path: File to hash.

    Returns:
        The lowercase hex digest.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def capture_warnings():
    """Collect warning-level log records and Python warnings raised inside the block.

    Yields:
        A list that receives ``(source, message)`` pairs.
    """
    records: list[tuple[str, str]] = []

    class _Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append((record.name, record.getMessage()))

    handler = _Handler(level=logging.WARNING)
    root = logging.getLogger("transformers")
    root.addHandler(handler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield records
        finally:
            root.removeHandler(handler)
            records.extend(("warnings", str(w.message)) for w in caught)


def fail_on_warnings(records: list[tuple[str, str]], what: str) -> None:
    """Abort if any warning was captured.

    Args:
        records: Pairs collected by :func:`capture_warnings`.
        what: Name of the checked operation, for the error message.

    Raises:
        SystemExit: If ``records`` is not empty.
    """
    if records:
        for source, message in records:
            log(f"WARNING from {source} during {what}: {message}")
        raise SystemExit(f"{what} emitted {len(records)} warning(s)")


def folder_bytes(path: Path) -> int:
    """Return the total size of the files in a folder (recursively).

    Args:
        path: Folder.

    Returns:
        Size in bytes.
    """
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def publish(stage: Path, final_dir: Path) -> None:
    """Move the staged files into the output folder, replacing older versions.

    Args:
        stage: Staging folder (same file system as ``final_dir``).
        final_dir: The output folder.
    """
    final_dir.mkdir(parents=True, exist_ok=True)
    produced = {path.name for path in stage.iterdir()}
    for name in sorted(produced):
        os.chmod(stage / name, 0o644)  # save_pretrained leaves the weights at 0600
        os.replace(stage / name, final_dir / name)
    extra = sorted(p.name for p in final_dir.iterdir() if p.name not in produced)
    if extra:
        log(f"note: {final_dir} also holds files this script does not make: {extra}")
    log(f"published {sorted(produced)} to {final_dir}")
