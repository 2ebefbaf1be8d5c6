"""The answer at a glance (issue 33): the demo's closing summary and `aipc recommend`, on the demo's own metrics."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
from conftest import run_cmd

from pipeline.core.config import load_params
from pipeline.validation import report, summary

pytestmark = pytest.mark.slow


def test_the_demo_ends_with_one_screen_that_answers_which_artifact_to_run(demo_project) -> None:
    project, done = demo_project
    starts = [m.start() for m in re.finditer(r"^\d+ cells passed, ", done.stdout, re.M)]
    assert starts, done.stdout[-3000:]
    tail = done.stdout[starts[-1]:].strip().splitlines()
    assert len(tail) <= 20, "\n".join(tail)
    artifacts = [p.stem for p in sorted((project / "artifacts" / "metrics").glob("*.json"))]
    listing = tail[: next(i for i, line in enumerate(tail) if line.startswith("Run on "))]
    for name in artifacts:  # each artifact on one line (artifacts that did not run share one line per reason)
        assert sum(bool(re.search(rf"(^|, ){re.escape(name)}( |,|:)", line)) for line in listing) == 1, name
    assert any(re.match(r"Run on CPU: \S+ \(top-1 .* tok/s on CPU\)$", line) for line in tail), tail  # measured
    assert any(line.startswith("Run on NPU: ") and "not run on a real NPU here" in line for line in tail), tail
    assert tail[-1] == "Full table: artifacts/report/report.md"
    assert "To track the changes with git" not in done.stdout + done.stderr  # DVC's hint reads like a failure
    assert "Token indices sequence length is longer" not in done.stdout + done.stderr
    assert "| artifact | device |" not in done.stdout, "the 30-row table stays in report.md"


def copy_metrics(project: Path, dest: Path) -> Path:
    """A folder where `aipc recommend` reads the demo's params and a copy of its metrics."""
    shutil.copytree(project / "artifacts" / "metrics", dest / "artifacts" / "metrics")
    shutil.copy(project / "params.yaml", dest / "params.yaml")
    return dest


def test_recommend_skips_a_failed_artifact_and_says_what_is_only_a_candidate(demo_project, tmp_path: Path) -> None:
    project, _ = demo_project
    work = copy_metrics(project, tmp_path)
    before = run_cmd([sys.executable, "-m", "pipeline.cli", "recommend"], work).stdout
    cpu = re.search(r"^CPU: (\S+) \(.* tok/s on CPU\)$", before, re.M)
    assert cpu, before  # a real-device cell: measured speed on the device itself
    assert re.search(r"^DML: onnx-dml_\w+ \(.*candidate: CPU stand-in for DML, not run on a real DML here\)$",
                     before, re.M), before  # a stand-in: said to be a candidate
    path = work / "artifacts" / "metrics" / f"{cpu[1]}.json"
    record = json.loads(path.read_text(encoding="utf-8"))
    record["cells"]["CPU"].update(status="failed", passed=False, problems=["top-1 agreement 0.5 < 0.85"])
    path.write_text(json.dumps(record), encoding="utf-8")
    after = run_cmd([sys.executable, "-m", "pipeline.cli", "recommend"], work).stdout
    chosen = re.search(r"^CPU: (\S+) ", after, re.M)
    assert chosen and chosen[1] != cpu[1], after  # a failed artifact is never recommended


def test_an_artifact_with_a_failed_cell_is_failed_on_its_line(demo_project) -> None:
    project, _ = demo_project
    rows = report.collect_rows([("openvino-fp16", "validate@fp16")], project / "artifacts" / "metrics")
    emulation = next(r for r in rows if r.cell == "CPU bf16 compute")
    emulation.status = "failed"  # an emulation cell is no place to run, but its failure fails the artifact
    line = summary.artifact_lines(rows)[1]
    assert re.match(r"openvino-fp16 +failed .* on CPU$", line), line
    assert summary.recommend(rows, ["CPU"])["CPU"].startswith("nothing passed for CPU")


def test_recommend_without_metrics_says_what_to_run(tmp_path: Path) -> None:
    shutil.copy(Path(__file__).resolve().parents[2] / "params.yaml", tmp_path / "params.yaml")
    done = run_cmd([sys.executable, "-m", "pipeline.cli", "recommend"], tmp_path, check=False)
    assert done.returncode == 2 and done.stderr.strip() == (
        "error: no validation cell has run here: run `aipc demo` or `aipc repro` first")


def test_plots_from_the_demo_are_coloured_by_lane_and_no_labels_overlap(demo_project, tmp_path: Path) -> None:
    from pipeline.validation import plots

    project, _ = demo_project
    rows = report.collect_rows(report.configured_artifacts(load_params(project / "params.yaml")),
                               project / "artifacts" / "metrics")
    lanes = {plots.lane(r) for r in rows if r.ran}
    assert {"on the device", "CPU stand-in", "NPU pipeline on CPU (NPUW)"} <= lanes, lanes
    for draw in (plots.plot_size_vs_fidelity, plots.plot_speed_vs_fidelity, plots.plot_tokens_per_s):
        path = tmp_path / f"{draw.__name__}.png"
        boxes = draw(rows, path)
        assert path.stat().st_size > 10_000 and len(boxes) >= 4, draw.__name__  # stand-ins measure no speed
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                assert not a.overlaps(b), (draw.__name__, a, b)
    assert (project / "artifacts" / "report" / "speed_vs_fidelity.png").is_file()
