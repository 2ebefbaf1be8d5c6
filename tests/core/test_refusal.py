"""A refused export is a result: DVC goes on, the report gets its row, the verdict names it, the fix is a command.

Issue 35, Why 7: for a model whose rotary onnxruntime's GroupQueryAttention cannot run, ``export_onnx@cpu_int4`` was
refused in one line, and DVC then skipped ``validate_onnx@cpu_int4``, ``report`` and ``verdict`` (no report.md); the
row a manual report wrote advised rerunning the stage, which only refuses again. The model here is generated in the
test (another shape and seed than the embedded ones): one layer, head size 32, partial rotary 0.75, tied embeddings.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, make_project, partial_rotary_model, run_cmd

from pipeline.core.refusal import REFUSED, Refused, check_not_refused

AIPC = [sys.executable, "-m", "pipeline.cli"]


def pasted_problems(line: str) -> list[tuple[str, str]]:
    """What breaks when ``line`` is pasted into cmd, PowerShell or bash (tests/windows/test_shell_rules.py)."""
    sys.path.insert(0, str(ROOT / "tests" / "windows"))
    try:
        import test_shell_rules as rules
    finally:
        sys.path.pop(0)
    checks = {"cmd": rules.cmd_problems, "powershell": rules.powershell_problems, "bash": rules.bash_problems}
    return [(shell, p) for shell, check in checks.items() for p in check(line)]


def test_a_refused_export_gets_its_row_and_the_verdict_names_the_leave_out_command(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    model = partial_rotary_model(tmp_path / "partial rotary model")
    run_cmd([*AIPC, "compose", "model=local", f"model.local_path={model.as_posix()}"], project)

    done = run_cmd([*AIPC, "repro", "validate_onnx@cpu_int4"], project, check=False)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]  # the refusal is the export's result: DVC goes on to validate
    record = json.loads((project / "artifacts" / "onnx" / "cpu_int4" / REFUSED).read_text(encoding="utf-8"))
    assert "GroupQueryAttention cannot run this model on cpu" in record["reason"]
    leave_out = record["leave_out"]
    assert leave_out.startswith('aipc compose model=local "model.local_path=') and leave_out.endswith(
        " ~onnx.cpu_int4"
    ), leave_out
    assert "gets a 'refused' row in the report; to leave it out: aipc compose" in out
    metrics = json.loads((project / "artifacts" / "metrics" / "onnx-cpu_int4.json").read_text(encoding="utf-8"))
    assert metrics["cells"]["-"]["status"] == "refused" and metrics["cells"]["-"]["leave_out"] == leave_out

    # the report (its stage alone here; every other artifact is `missing`) and the verdict read it
    run_cmd([sys.executable, "-m", "pipeline.validation.report"], project)
    report = (project / "artifacts" / "report" / "report.md").read_text(encoding="utf-8")
    row = next(line for line in report.splitlines() if line.startswith("| onnx-cpu_int4 "))
    assert "**refused**" in row and f"leave it out: `{leave_out}`" in row and "dvc repro" not in row
    verdict = run_cmd([sys.executable, "-m", "pipeline.validation.report", "--verdict"], project, check=False)
    assert verdict.returncode != 0
    line = verdict.stderr.strip().splitlines()[-1]
    assert "1 export(s) refused this model: onnx-cpu_int4 (onnxruntime's GroupQueryAttention" in line
    assert f"leave out with `{leave_out}`" in line

    # chat / verify / publish refuse the folder in one line
    with pytest.raises(Refused, match="was refused at export: onnxruntime's GroupQueryAttention"):
        check_not_refused(project / "artifacts" / "onnx" / "cpu_int4")
    verify = run_cmd([*AIPC, "verify", "artifacts/onnx/cpu_int4"], project, check=False)
    assert verify.returncode != 0 and "Traceback" not in verify.stderr
    assert "artifacts/onnx/cpu_int4 was refused at export" in verify.stderr

    # the printed command works as pasted (bash's words; the shell-rules test holds it to cmd and PowerShell too):
    # the variant is gone, the model stays, and DVC still parses the pipeline
    assert not [p for shell, p in pasted_problems(leave_out)], pasted_problems(leave_out)
    run_cmd([*AIPC, *shlex.split(leave_out)[1:]], project)
    params = yaml.safe_load((project / "params.yaml").read_text(encoding="utf-8"))
    assert "cpu_int4" not in params["onnx"] and params["model"]["local_path"] == model.as_posix()
    status = run_cmd([sys.executable, "-m", "dvc", "status", "validate_onnx@dml_int4"], project, check=False)
    assert status.returncode == 0, status.stderr[-2000:]


def test_the_console_summary_and_the_verdict_say_refused_not_missing_or_failed() -> None:
    from pipeline.validation import summary
    from pipeline.validation.report import Row, verdict_line

    refused = Row("onnx-cpu_int4", "-", "refused", {"reason": "the rotary is too narrow", "leave_out": "aipc compose x"})
    passed = Row("openvino-int4", "CPU", "passed", {"top1_agreement": 0.99, "device_executed": "CPU"}, 10.0)
    lines = summary.artifact_lines([passed, refused])
    assert "onnx-cpu_int4: refused at export (the rotary is too narrow); leave it out: aipc compose x" in lines
    assert "1 refused at export" in summary.console_summary([passed, refused], "r.md").splitlines()[0]
    line = verdict_line([passed, refused])
    assert line is not None and "failed" not in line.split(";")[0] and "leave out with `aipc compose x`" in line
    assert verdict_line([passed]) is None
