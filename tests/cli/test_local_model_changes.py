"""model=local: a changed file in model.local_path reruns download, so nothing downstream describes the old weights."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from conftest import TINY_DIR, make_project, run_cmd

from pipeline.core.config import ModelConfig
from pipeline.hub import download


def flip_last_byte(path: Path) -> None:
    """Change one byte of the tensor data in place (the safetensors header and sizes stay valid)."""
    with open(path, "r+b") as handle:
        handle.seek(-1, os.SEEK_END)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_END)
        handle.write(bytes([byte[0] ^ 0xFF]))


def test_local_changes_names_each_changed_added_or_removed_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("AIPC_DIGEST_CACHE", str(tmp_path / "digests.json"))
    src, out = tmp_path / "my phi3", tmp_path / "model"
    shutil.copytree(TINY_DIR, src)
    cfg = ModelConfig.preset("local", local_path=str(src))
    download.run(cfg, out)
    assert download.local_changes(cfg, out) == []
    weights = src / "model.safetensors"
    times = weights.stat()
    flip_last_byte(weights)
    os.utime(weights, ns=(times.st_atime_ns, times.st_mtime_ns))  # even with its time put back
    assert download.local_changes(cfg, out) == ["model.safetensors"]
    (src / "generation_config.json").unlink()
    (src / "special_tokens_map.json").write_text("{}", encoding="utf-8")
    assert download.local_changes(cfg, out) == ["generation_config.json", "model.safetensors", "special_tokens_map.json"]
    assert download.local_changes(ModelConfig.preset("tiny"), out) == []


def test_one_changed_byte_in_the_local_weights_reruns_download(tmp_path: Path) -> None:
    """`aipc repro` copies the folder again (DVC alone said "up to date"), so every stage after it reruns."""
    project, local = make_project(tmp_path / "p"), tmp_path / "local model"
    shutil.copytree(TINY_DIR, local)
    aipc = [sys.executable, "-m", "pipeline.cli"]
    run_cmd([*aipc, "compose", "model=local", f"model.local_path='{local.as_posix()}'"], project)
    run_cmd([*aipc, "repro", "download"], project)
    flip_last_byte(local / "model.safetensors")
    done = run_cmd([*aipc, "repro", "download"], project)
    assert "model.local_path changed since it was copied (model.safetensors)" in done.stdout
    copied = project / "artifacts" / "model" / "model.safetensors"
    assert copied.read_bytes() == (local / "model.safetensors").read_bytes()
    status = run_cmd([sys.executable, "-m", "dvc", "status", "download"], project).stdout
    assert "up to date" in status, status
    again = run_cmd([*aipc, "repro", "download"], project)
    assert "changed since" not in again.stdout and "didn't change" in again.stdout + again.stderr
