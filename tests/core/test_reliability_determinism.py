"""The same inputs give the same bytes, so ``dvc repro -f <stage>`` reruns nothing downstream (issue 17.3).

Manifests carry no timestamps, hosts, durations or absolute paths: those go to ``.aipc/runs/<stage>.jsonl``,
outside every DVC output. The slow test runs the real pipeline on the tiny model in a project copy.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.core.config import ModelConfig
from pipeline.core.errors import StageError
from pipeline.core.manifest import write_manifest
from pipeline.hub import download
from pipeline.npu_lib import export as export_npu_lib
from pipeline.npu_lib import validate as validate_npu_lib

from conftest import ROOT, make_project, run_cmd

DVC = [sys.executable, "-m", "dvc"]


def outs(project: Path) -> dict[str, list]:
    """Every stage's recorded outputs (path and md5) in dvc.lock."""
    stages = yaml.safe_load((project / "dvc.lock").read_text(encoding="utf-8"))["stages"]
    return {name: [(o["path"], o["md5"]) for o in stage.get("outs", [])] for name, stage in stages.items()}


def test_manifest_holds_no_run_facts_and_the_run_log_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIPC_RUNS_DIR", str(tmp_path / "runs"))
    (tmp_path / "out").mkdir()
    returned = write_manifest(tmp_path / "out", stage="export_x", variant="int4", timings={"export_s": 1.5},
                              run_log={"env": "/abs/path"})
    written = json.loads((tmp_path / "out" / "manifest.json").read_text(encoding="utf-8"))
    assert not {"created", "timings", "env"} & set(written) and "platform" not in written["versions"]
    assert returned["timings"] == {"export_s": 1.5}  # callers still see what they measured
    record = json.loads((tmp_path / "runs" / "export_x.jsonl").read_text(encoding="utf-8").splitlines()[-1])
    assert record["timings"] == {"export_s": 1.5} and record["env"] == "/abs/path" and record["variant"] == "int4"
    assert {"created", "host", "platform"} <= set(record)


def test_download_twice_gives_the_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIPC_RUNS_DIR", str(tmp_path / "runs"))
    first = download.run(ModelConfig.preset("tiny"), tmp_path / "a")
    second = download.run(ModelConfig.preset("tiny"), tmp_path / "b")
    assert first == second
    for path in (tmp_path / "a").iterdir():
        assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes(), path.name
    assert len((tmp_path / "runs" / "download.jsonl").read_text(encoding="utf-8").splitlines()) == 2


@pytest.mark.slow
def test_dvc_repro_force_reruns_nothing_downstream_and_dvc_lock_vouches_for_the_pickle(tmp_path: Path) -> None:
    from shared_workspace import seed_from_checkout

    project = make_project(tmp_path / "project")
    seed_from_checkout(ROOT, project)  # the demo's build, if the checkout has one: forced reruns must give its bytes
    run_cmd([sys.executable, "-m", "pipeline.cli", "compose", "model=tiny"], project)
    run_cmd(DVC + ["repro", "reference", "export_openvino_base", "export_npu_lib@int4"], project)
    before = outs(project)
    run_cmd(DVC + ["repro", "-f", "download"], project)
    status = run_cmd(DVC + ["status", "reference", "export_openvino_base", "export_npu_lib@int4"], project).stdout
    assert "up to date" in status, status
    for stage in ("reference", "export_openvino_base"):  # a forced rerun writes the same bytes
        run_cmd(DVC + ["repro", "-f", "-s", stage], project)
    assert outs(project) == before
    assert (project / ".aipc" / "runs" / "download.jsonl").is_file()
    # The pickle is vouched for by DVC's own record of the folder; a swapped pickle is not.
    folder = project / "artifacts" / "npu_lib" / "int4"
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    validate_npu_lib.checked_model_file(folder, manifest, project / "dvc.lock")
    copy = tmp_path / "swapped"
    shutil.copytree(folder, copy, symlinks=False)
    (folder / export_npu_lib.MODEL_FILE).unlink()  # a hard link into DVC's cache: replace, never edit it
    data = bytearray((copy / export_npu_lib.MODEL_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the weights
    (folder / export_npu_lib.MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(StageError, match=r"^refusing to load .*not the .* that .*dvc.lock recorded for export_npu_lib@int4"):
        validate_npu_lib.checked_model_file(folder, manifest, project / "dvc.lock")
