"""ONNX validation cells: where each one runs (here, or in a runtime's own environment) and what a refused graph gives.

DirectML's onnxruntime-genai would replace the CPU package the model builder needs, so a DML cell runs in its own
environment through :mod:`pipeline.validation.genai_runner`. DirectML exists only on Windows; here the same path is proven
with the CPU build of onnxruntime-genai 0.14.1 (the compat environment, from PyPI once).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.core.workspace import PROJECT, Workspace
from pipeline.core.config import load_params
from pipeline.core.errors import StageError
from pipeline.onnx import compat as onnx_compat
from pipeline.onnx import validate as onnx_validate
from pipeline.validation import matrix
from pipeline.validation.evidence import Evidence


def test_dml_cell_runs_in_its_own_environment_on_windows_only(monkeypatch: pytest.MonkeyPatch) -> None:
    here = onnx_validate.provider_status("dml")
    assert not here.available and "only on Windows" in here.reason
    monkeypatch.setattr(onnx_validate.platform, "system", lambda: "Windows")
    windows = onnx_validate.provider_status("dml")
    assert windows.available, "on Windows the DML cell runs, in the DirectML runtime's own environment"
    assert f"onnxruntime-genai-directml=={onnx_compat.DML_RUNTIME}" in windows.full_name
    assert onnx_compat.env_dir(onnx_compat.DML_RUNTIME, directml=True).name == "ortgenai-directml-0.13.1"
    assert onnx_validate.provider_status("cpu").available, "the CPU provider stays in the main environment"


@pytest.mark.slow
@pytest.mark.pypi
def test_a_cell_in_a_runtime_environment_measures_what_the_main_one_does(demo_project,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    project, _ = demo_project
    monkeypatch.chdir(project)
    folder, cfg = Path("artifacts/onnx/dml_int4"), replace(load_params().validate, profile="full")  # speed runs too
    evidence = Evidence.load(PROJECT.reference_path)
    plan = matrix.CellPlan(matrix.STAND_IN, "CPU", stand_in_for="DML")
    here = onnx_validate.measure_cell(folder, "dml", plan, cfg, evidence)
    python = onnx_compat.ensure_env(runtime="0.14.1")
    there = onnx_validate.measure_cell(folder, "dml", plan, cfg, evidence, python)
    assert there.executed == here.executed == "CPU"
    assert there.tokenizer_matches_reference and here.tokenizer_matches_reference
    assert there.outputs == here.outputs, "same graph, same greedy tokens in 0.14.1 as in 0.18"
    assert abs(there.fidelity["top1_agreement"] - here.fidelity["top1_agreement"]) <= 0.01
    assert set(there.perf) == set(here.perf) and all(p.tokens_per_s > 0 for p in there.perf.values())
    assert there.peak_rss_mb > 50, "the runtime environment's own peak, not the caller's"
    assert there.artifact_numerics["runtime"] == {"onnxruntime-genai": "0.14.1", "onnxruntime": "1.26.0"}, "what ran"
    assert here.artifact_numerics["runtime"]["onnxruntime-genai"] == "0.18.0"


@pytest.mark.slow
def test_a_graph_the_runtime_refuses_is_a_failed_cell_with_its_reason(demo_project, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    project, _ = demo_project
    monkeypatch.chdir(project)
    root = tmp_path / "onnx"
    shutil.copytree(project / "artifacts" / "onnx" / "cpu_int4", root / "cpu_int4")
    model = root / "cpu_int4" / "model.onnx"
    model.write_bytes(model.read_bytes()[:4096])  # truncated: onnxruntime cannot parse it
    metrics = tmp_path / "metrics"
    with pytest.raises(StageError) as exc:
        onnx_validate.run("cpu_int4", load_params().validate, Workspace(out=root, metrics=metrics))
    message = str(exc.value)
    assert "\n" not in message and "cannot load the model" in message
    cell = json.loads((metrics / "onnx-cpu_int4.json").read_text(encoding="utf-8"))["cells"]["CPU"]
    assert cell["status"] == "failed" and "cannot load the model" in cell["reason"]
    assert cell["top1_agreement"] is None, "a cell that could not run has no numbers"


@pytest.mark.slow
@pytest.mark.pypi
def test_a_dml_cell_without_its_runtime_is_a_failed_cell_not_a_traceback(demo_project, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    project, _ = demo_project
    monkeypatch.chdir(project)
    monkeypatch.setenv("AIPC_ENVS_DIR", str(tmp_path / "envs"))
    monkeypatch.setattr(onnx_validate.platform, "system", lambda: "Windows")  # DirectML wheels exist for Windows only
    metrics = tmp_path / "metrics"
    with pytest.raises(StageError) as exc:
        onnx_validate.run("dml_int4", load_params().validate, Workspace(metrics=metrics))
    assert "\n" not in str(exc.value) and "onnxruntime-genai-directml==0.13.1" in str(exc.value)
    cell = json.loads((metrics / "onnx-dml_int4.json").read_text(encoding="utf-8"))["cells"]["DML"]
    assert cell["status"] == "failed" and "No matching distribution found for onnxruntime-genai-directml" in cell["reason"]
    assert not (tmp_path / "envs" / "ortgenai-directml-0.13.1").exists(), "no half-made environment is left"


@pytest.mark.slow
def test_ram_short_stand_in_cell_is_skipped_and_a_ram_short_target_cell_stops(demo_project, tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    project, _ = demo_project
    monkeypatch.chdir(project)
    monkeypatch.delenv("AIPC_SKIP_RESOURCE_CHECK", raising=False)
    monkeypatch.setenv("AIPC_ASSUME_RAM_GB", "0.01")  # the tiny graphs need ~0.3 GiB: nothing fits
    metrics = tmp_path / "metrics"
    onnx_validate.run("dml_fp16", load_params().validate, Workspace(metrics=metrics))  # no DirectML here: CPU stand-in only
    cells = json.loads((metrics / "onnx-dml_fp16.json").read_text(encoding="utf-8"))["cells"]
    stand_in = cells[matrix.STAND_IN]
    assert cells["DML"]["status"] == "skipped" and stand_in["status"] == "skipped"
    assert stand_in["label"].endswith("not enough RAM here") and "\n" not in stand_in["reason"]
    assert "validate_onnx@dml_fp16 needs about" in stand_in["reason"]
    with pytest.raises(StageError, match=r"^validate_onnx@cpu_int4 needs about .* but 10 MiB is available"):
        onnx_validate.run("cpu_int4", load_params().validate, Workspace(metrics=tmp_path / "cpu"))  # CPU is its target
    assert not (tmp_path / "cpu").exists()
