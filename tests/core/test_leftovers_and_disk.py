"""Issue 35.9: a stage start sweeps the leftovers of killed stages across artifacts/, and export_npu checks disk first.

A killed stage leaves ``.<name>.tmp-<pid>-*`` / ``.<name>.old-<pid>-*`` beside its output; they used to go only when
that same output was written again, so they outlasted successful runs of every other stage (gigabytes at full size).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest

from pipeline.core.config import ModelConfig, build, compose, dump_yaml
from pipeline.core.errors import StageError
from pipeline.core.workspace import Workspace
from pipeline.hub import download
from pipeline.openvino import export_npu
from pipeline.openvino.config import NpuVariantConfig
from pipeline.validation import devices

Usage = namedtuple("Usage", "total used free")


def dead_pid() -> int:
    """The pid of a process that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def leftover(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "openvino_model.bin").write_bytes(b"half written")
    return path


def test_any_stage_start_sweeps_the_dead_leftovers_across_artifacts(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(dump_yaml(compose(["model=tiny"])), encoding="utf-8")
    dead, art = dead_pid(), tmp_path / "artifacts"
    stale = [
        leftover(art / "onnx" / f".dml_int4.tmp-{dead}-0a1b2c3d"),  # another family's killed export
        leftover(art / "npu" / "int4" / f".scratch.tmp-{dead}-0a1b2c3d"),  # temp_on_drive_of's scratch, one deeper
        art / "metrics" / f".onnx-dml_int4.json.tmp-{dead}",  # write_json_atomic's temporary
    ]
    stale[-1].parent.mkdir(parents=True)
    stale[-1].write_text("{", encoding="utf-8")
    moved_aside = leftover(art / f".reference.old-{dead}-0a1b2c3d")  # the previous output, moved aside before a kill
    running = leftover(art / "openvino" / f".int8.tmp-{os.getpid()}-0a1b2c3d")  # this process: still running
    (art / "openvino" / "int8").mkdir()

    # a stage of another output, which refuses early (nothing to validate) after the sweep
    done = subprocess.run([sys.executable, "-m", "pipeline.openvino.validate", "int4"], cwd=tmp_path,
                          capture_output=True, text=True, encoding="utf-8")
    assert done.returncode == 2 and "artifacts/openvino/int4/manifest.json missing" in done.stderr, done.stderr
    assert [p for p in stale if p.exists()] == []
    assert not moved_aside.exists() and (art / "reference" / "openvino_model.bin").read_bytes() == b"half written"
    assert running.exists(), "a running process's temporary is never touched"
    assert "removed what an interrupted run left beside" in done.stderr


def test_export_npu_checks_disk_before_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIPC_SKIP_RESOURCE_CHECK", raising=False)
    ws = Workspace(artifacts=tmp_path / "artifacts")
    download.run(build(ModelConfig, compose(["model=tiny"])["model"]), ws.model_dir)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: Usage(2**40, 0, 2**20))  # 1 MiB free
    no_npu = {"NPU": devices.DeviceStatus("NPU", False, reason="none")}
    with pytest.raises(StageError) as refused:
        export_npu.run("int4", NpuVariantConfig.from_conf(), ws, status=no_npu, base_dir=None)
    line = str(refused.value)
    assert "\n" not in line and line.startswith("[npu-int4] exporting to int4 for the NPU needs about "), line
    assert "of disk under" in line and "but 1.0 MiB is free" in line, line
    assert not ws.root("npu").exists() or not any(ws.root("npu").iterdir()), "nothing written"
