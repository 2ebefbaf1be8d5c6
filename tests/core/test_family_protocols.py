"""The family interface (issue 31.1-2): every registry family's exporter and validator satisfy the Protocols, mypy
rejects an exporter missing a step, and the two templates keep their skeleton's order.

The export template (:func:`pipeline.core.family.export`) is driven by fake exporters over a fake checkpoint: the
steps run in order, a refusal comes before any folder, a build that raises leaves no folder (the staging folder is
removed), a machine without the family's tool gets a ``skipped`` manifest. The validate template
(:func:`pipeline.validation.template.validate`) is driven by a fake validator whose cells are skipped or fail to run,
so no reference is read.
"""

from __future__ import annotations

import importlib
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from pipeline.core.config import ValidateConfig
from pipeline.core.errors import StageError
from pipeline.core.family import Exporter, ExportJob, Needs, NotBuiltHere, export
from pipeline.core.refusal import Refused, refuse
from pipeline.core.registry import FAMILIES
from pipeline.core.workspace import Workspace
from pipeline.validation import matrix
from pipeline.validation.template import NotRun, ValidationJob, Validator, ValidatorSteps, validate

ROOT = Path(__file__).resolve().parents[2]


def validator_of(family: str) -> Any:
    """The validator a family's validate module runs (OpenVINO's serves the NPU IR too, one per target)."""
    module = importlib.import_module(FAMILIES[family].module("validate"))
    if hasattr(module, "VALIDATOR"):
        return module.VALIDATOR
    return module.OpenVinoValidator(module.Target(f"{family}-x", family, Path("x"), ["CPU"]))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_supplies_an_exporter_and_a_validator(family: str) -> None:
    exporter = importlib.import_module(FAMILIES[family].module("export")).EXPORTER
    assert isinstance(exporter, Exporter) and exporter.family == family
    assert exporter.stage == FAMILIES[family].export_stage
    validator = validator_of(family)
    assert isinstance(validator, Validator) and validator.family == family


@pytest.mark.slow
def test_mypy_rejects_an_exporter_without_a_step(tmp_path: Path) -> None:
    from mypy import api

    bad = tmp_path / "bad_family.py"
    bad.write_text(
        textwrap.dedent("""
        from pathlib import Path
        from typing import Any

        from pipeline.core.family import Exporter, ExportJob, Needs


        class NoInspect:
            family = "toy"
            stage = "export_toy"

            def check(self, job: ExportJob[int]) -> None: ...
            def needs(self, job: ExportJob[int]) -> Needs | None: return None
            def build(self, job: ExportJob[int], tmp: Path) -> None: ...
            def manifest_fields(self, job: ExportJob[int], summary: dict[str, Any]) -> dict[str, Any]: return {}
            def ready(self, job: ExportJob[int], manifest: dict[str, Any]) -> str: return ""


        EXPORTER: Exporter[int] = NoInspect()
        """),
        encoding="utf-8",
    )
    args = [str(bad), "--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(tmp_path / "cache")]
    out, _, status = api.run(args)
    assert status == 1 and '"NoInspect" is missing following "Exporter" protocol member' in out, out
    assert "note:     inspect" in out and "Found 1 error" in out, out


def checkpoint(tmp_path: Path) -> Workspace:
    """A fake checkpoint (a manifest and a config.json) and a workspace that writes under ``tmp_path/out``."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "toy"}', encoding="utf-8")
    files = {"config.json": {"sha256": "0" * 64}}
    (model / "manifest.json").write_text(json.dumps({"model": "toy", "files": files}), encoding="utf-8")
    return Workspace(artifacts=tmp_path, model=model, out=tmp_path / "out", metrics=tmp_path / "metrics")


class FakeExporter:
    """Records each step; ``fail_at`` names the step that raises."""

    family = "toy"
    stage = "export_toy"

    def __init__(self, fail_at: str = "") -> None:
        self.calls: list[str] = []
        self.fail_at = fail_at

    def _step(self, name: str) -> None:
        self.calls.append(name)
        if name == self.fail_at == "check":
            refuse("this model cannot take that variant")
        if name == self.fail_at == "skip":
            raise NotBuiltHere("no compiler here", "[toy-one]", {"recipe": "toy"})
        if name == self.fail_at:
            raise RuntimeError(f"{name} failed")

    def check(self, job: ExportJob[int]) -> None:
        self._step("check")
        self._step("skip")

    def needs(self, job: ExportJob[int]) -> Needs:
        self._step("needs")
        return Needs("[one] toy", 0, 0)

    def build(self, job: ExportJob[int], tmp: Path) -> None:
        self._step("build")
        (tmp / "weights.bin").write_bytes(b"t" * job.cfg)

    def inspect(self, job: ExportJob[int], tmp: Path) -> dict[str, Any]:
        self._step("inspect")
        return {"bytes": (tmp / "weights.bin").stat().st_size}

    def manifest_fields(self, job: ExportJob[int], summary: dict[str, Any]) -> dict[str, Any]:
        self._step("manifest_fields")
        return {"format": "toy", "source": job.source_fields(("model",)), "structure": summary}

    def ready(self, job: ExportJob[int], manifest: dict[str, Any]) -> str:
        self._step("ready")
        return f"[{job.name}] ready in {job.out}"


def test_the_export_template_runs_the_steps_in_order(tmp_path: Path) -> None:
    exporter = FakeExporter()
    ws = checkpoint(tmp_path)
    manifest = export(exporter, "one", 16, ws)
    assert exporter.calls == ["check", "skip", "needs", "build", "inspect", "manifest_fields", "ready"]
    written = json.loads((tmp_path / "out" / "one" / "manifest.json").read_text(encoding="utf-8"))
    assert list(written)[:4] == ["stage", "variant", "format", "source"] and written["source"] == {"model": "toy"}
    assert written["stage"] == "export_toy" and manifest["structure"] == {"bytes": 16}


@pytest.mark.parametrize("step", ["build", "inspect", "manifest_fields"])
def test_a_failed_step_leaves_no_folder(tmp_path: Path, step: str) -> None:
    exporter = FakeExporter(fail_at=step)
    with pytest.raises(RuntimeError, match=f"{step} failed"):
        export(exporter, "one", 16, checkpoint(tmp_path))
    assert not (tmp_path / "out" / "one").exists()
    assert [p.name for p in (tmp_path / "out").iterdir()] == []  # no staging folder left either
    assert "ready" not in exporter.calls


def test_a_refusal_comes_before_any_folder(tmp_path: Path) -> None:
    exporter = FakeExporter(fail_at="check")
    with pytest.raises(Refused):  # the stage runner records it (refused.json), as before the template
        export(exporter, "one", 16, checkpoint(tmp_path))
    assert exporter.calls == ["check"] and not (tmp_path / "out").exists()


def test_a_machine_without_the_tool_gets_a_skipped_manifest(tmp_path: Path) -> None:
    exporter = FakeExporter(fail_at="skip")
    manifest = export(exporter, "one", 16, checkpoint(tmp_path))
    assert exporter.calls == ["check", "skip"]
    assert list(manifest)[:5] == ["stage", "variant", "status", "reason", "recipe"]
    assert manifest["status"] == "skipped" and manifest["reason"] == "no compiler here"
    assert sorted(p.name for p in (tmp_path / "out" / "one").iterdir()) == ["manifest.json"]


class FakeValidator(ValidatorSteps):
    """Two cells: one skipped (no such device here), one whose runtime refuses the artifact."""

    family = "onnx"  # a registry family: its validate stage's time estimate row exists
    cell_errors = (RuntimeError,)

    def __init__(self, not_run: bool = False) -> None:
        self.calls: list[str] = []
        self.not_run = not_run

    def weight_format(self, manifest: dict[str, Any]) -> str:
        return "int4"

    def plan(self, job: ValidationJob) -> list[matrix.CellPlan]:
        self.calls.append("plan")
        gpu = matrix.CellPlan("GPU", "GPU", skip_reason="no GPU here")
        if self.not_run:
            raise NotRun({"GPU": matrix.skipped_cell(gpu, self.kind(job))})
        job.row = "cpu_int4"
        return [gpu, matrix.CellPlan("CPU", "CPU")]

    def measure(self, job: ValidationJob, plan: matrix.CellPlan) -> matrix.Measurement:
        self.calls.append(f"measure {plan.column}")
        raise RuntimeError("the runtime cannot load it")

    def finish(self, job: ValidationJob, cells: dict[str, matrix.Cell]) -> None:
        self.calls.append(f"finish {sorted(cells)}")


def artifact(tmp_path: Path) -> Workspace:
    """An artifact folder with a manifest, and a workspace whose reference does not exist (no cell reads it)."""
    ws = checkpoint(tmp_path)
    (tmp_path / "out" / "one").mkdir(parents=True)
    (tmp_path / "out" / "one" / "manifest.json").write_text('{"parameters": {}}', encoding="utf-8")
    return ws


def test_the_validate_template_plans_measures_judges_and_publishes(tmp_path: Path) -> None:
    validator = FakeValidator()
    with pytest.raises(StageError, match="CPU: the runtime cannot load it"):  # a failed cell fails the stage
        validate(validator, "one", ValidateConfig.from_conf(), artifact(tmp_path))
    assert validator.calls == ["plan", "measure CPU", "finish ['CPU', 'GPU']"]
    cells = json.loads((tmp_path / "metrics" / "onnx-one.json").read_text(encoding="utf-8"))["cells"]
    assert cells["GPU"]["status"] == "skipped" and cells["GPU"]["reason"] == "no GPU here"
    assert cells["CPU"]["status"] == "failed" and cells["CPU"]["reason"] == "the runtime cannot load it"


def test_an_artifact_not_run_is_published_without_measuring(tmp_path: Path) -> None:
    validator = FakeValidator(not_run=True)
    metrics = validate(validator, "one", ValidateConfig.from_conf(), artifact(tmp_path))
    assert validator.calls == ["plan"] and list(metrics["cells"]) == ["GPU"]
    assert (tmp_path / "metrics" / "onnx-one.json").is_file()
