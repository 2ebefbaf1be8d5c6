"""Validations say how long they will take (issue 33.4): measured full-size rows scaled by the checkpoint's size.

``pipeline/core/durations.py`` holds each validation's (and the reference's) wall time from the whole full-size
pipeline (``benchmarks/results/full_pipeline*.json``); ``pipeline/core/eta.py`` scales it to this model and prints
a line at the start and one as each cell is done, with the time left. Fast: the functions with a fake checkpoint
(a sparse file of the size wanted) and a fake clock; the slow check is tests/validation/test_eta_run.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ROOT

from pipeline.core import eta
from pipeline.core.durations import FULL_SIZE_GIB, SOURCES, stage_times

GIB = 2**30
FULL = int(FULL_SIZE_GIB * GIB)
TINY = 19_042_304  # the embedded tiny Phi-3's model.safetensors
RESULTS = ROOT / "benchmarks" / "results"

STAGE_TIME, START_UP_S = stage_times()  # the core's rows and those the families keep in their packages


@dataclass
class Plan:
    """A cell plan as the validators have them: column, device, skip reason."""

    column: str
    device: str = "CPU"
    skip_reason: str | None = None


def checkpoint(tmp_path: Path, size: int) -> Path:
    """A model folder whose safetensors file has ``size`` bytes (sparse: no disk used)."""
    folder = tmp_path / f"model-{size}"
    folder.mkdir()
    with open(folder / "model.safetensors", "wb") as f:
        f.truncate(size)
    return folder


class FakeTime:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_the_rows_are_the_benchmark_files_figures() -> None:
    """Every row measured in the runs of 2026-12-07 / 2026-12-02 is that file's wall time (the Windows ML packages
    overridden to the CPU less their ~2 min of speed runs, which the quick profile leaves out)."""
    latest = json.loads((RESULTS / "full_pipeline.json").read_text(encoding="utf-8"))
    older = json.loads((RESULTS / "full_pipeline-2026-12-02.json").read_text(encoding="utf-8"))
    for stage, rows in STAGE_TIME.items():
        for variant, row in rows.items():
            name = stage if stage == "reference" else f"{stage}@{variant}"
            if row.source == "2026-12-07":
                assert row.seconds == latest["stages"][name]["wall_s"], name
            elif row.source == "2026-12-02":
                assert row.seconds + row.speed_s == older["stages"][name]["wall_s"], name
            assert row.source in SOURCES and stage in START_UP_S
    assert latest["machine"]["cores"] == older["machine"]["cores"] == 2


def test_the_estimate_grows_with_the_checkpoint() -> None:
    cells = ["CPU", "CPU bf16 compute"]
    full = eta.estimate("validate", "int4", FULL, cells).seconds
    half = eta.estimate("validate", "int4", FULL // 2, cells).seconds
    tiny = eta.estimate("validate", "int4", TINY, cells).seconds
    assert full == pytest.approx(650.9, abs=0.5)  # the two cells that ran in the measured run
    assert half == pytest.approx(START_UP_S["validate"] + (650.9 - START_UP_S["validate"]) / 2, abs=0.5)
    assert tiny < 20 < half < full
    assert eta.estimate("validate", "int4", FULL, cells[:1]).seconds < full  # fewer cells here, less time


def test_skipped_cells_cost_nothing_and_the_full_profile_adds_the_stand_ins_speed_runs(tmp_path: Path) -> None:
    model = checkpoint(tmp_path, FULL)
    stand_in = Plan("CPU stand-in", "CPU")
    skipped = Plan("NPU", "NPU", skip_reason="no NPU here")
    quick = eta.start("validate_npu_lib@int4", "npu_lib-int4", [skipped, stand_in], model, "int4", False)
    full = eta.start("validate_npu_lib@int4", "npu_lib-int4", [skipped, stand_in], model, "int4", True)
    assert list(quick.estimate.units) == ["CPU stand-in"]
    _, row = eta.row_for("validate_npu_lib", "int4")  # quick: its answers teacher-forced; full adds decode and speed
    assert row.speed_s > row.seconds > 0
    assert quick.estimate.seconds == pytest.approx(row.seconds, abs=0.5)
    assert full.estimate.seconds == pytest.approx(row.seconds + row.speed_s, abs=0.5)
    dml = eta.start("validate_onnx@dml_int4", "onnx-dml_int4", [stand_in], model, None, True)
    assert dml.estimate.note == ""  # measured with its speed runs: nothing left out under the full profile
    cpu = eta.start("validate_onnx@cpu_int4", "onnx-cpu_int4", [stand_in], model, None, True)
    assert "speed runs are not in this estimate" in cpu.start_line()
    nothing = eta.start("validate_onnx@dml_int4", "onnx-dml_int4", [skipped], model, "dml_int4")
    assert nothing.quiet and nothing.estimate.units == {}


def test_a_variant_never_measured_takes_the_stages_longest_cell() -> None:
    name, row = eta.row_for("validate_onnx", "dml_fp16")
    assert name == "dml_int4" and row.seconds == 636.9


def test_a_full_size_stage_prints_its_estimate_with_its_cells(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    plans = [Plan("CPU"), Plan("GPU", "GPU", skip_reason="no GPU"), Plan("CPU bf16 compute")]
    eta.start("validate@int4", "openvino-int4", plans, checkpoint(tmp_path, FULL), "int4", False)
    line = capsys.readouterr().err.strip()
    assert line.endswith(
        "validate@int4: about 11 min at this model size (measured 10.8 min for Phi-3-mini on "
        "2 AMD EPYC cores, contended; cells: CPU, CPU bf16 compute)"
    )


def test_a_tiny_model_prints_no_estimate(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Under a minute (eta.MIN_ETA_S) nothing is printed: every stage on the tiny model, where start-up is the time."""
    model = checkpoint(tmp_path, TINY)
    for stage, rows in STAGE_TIME.items():
        if stage == "reference":
            clock = eta.reference_clock(model, "float32")
        else:
            clock = eta.start(f"{stage}@{next(iter(rows))}", "x", [Plan("CPU"), Plan("CPU bf16 compute")], model)
        assert clock.quiet and clock.estimate.seconds < eta.MIN_ETA_S, stage
        clock.finish()
    assert capsys.readouterr().err == ""


def test_the_time_left_falls_as_cells_finish(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    now = FakeTime()
    plans = [Plan("CPU"), Plan("CPU bf16 compute"), Plan("CPU f16 compute")]
    clock = eta.start("validate@int8", "openvino-int8", plans, checkpoint(tmp_path, FULL), now=now)
    per_cell = (754.4 - START_UP_S["validate"]) / 2
    lines = []
    for plan in plans:
        now.t += per_cell * 1.5  # this machine runs at 1.5x the measured time
        lines.append(clock.finish(plan.column))
    assert lines[0] == "[openvino-int8] cell 1 of 3 done (CPU), 9 min 14 s elapsed, about 18 min left"
    assert lines[1] == "[openvino-int8] cell 2 of 3 done (CPU bf16 compute), 18 min 28 s elapsed, about 9 min left"
    assert lines[2].startswith("[openvino-int8] cell 3 of 3 done (CPU f16 compute), 27 min 41 s elapsed (estimated about 19 min)")
    assert capsys.readouterr().err.count(" left") == 2


def test_a_cell_dropped_after_the_start_leaves_the_count(tmp_path: Path) -> None:
    clock = eta.start("validate@int4", "openvino-int4", [Plan("CPU"), Plan("CPU f16 compute")], checkpoint(tmp_path, FULL))
    eta.drop("CPU f16 compute")  # over the RAM cap, known only in emulation_cells
    assert "cell 1 of 1 done (CPU)" in (clock.finish("CPU") or "")
    assert eta.finish("CPU") is None  # already done: no second line


def test_the_reference_reports_each_step(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    now = FakeTime()
    clock = eta.reference_clock(checkpoint(tmp_path, FULL), "float32", now=now)
    assert clock.estimate.seconds == pytest.approx(773.0, abs=0.5)
    for _ in range(2):
        with clock.step("a step"):
            now.t += 30
    err = capsys.readouterr().err
    assert "reference: about 13 min at this model size" in err and "steps: loading, teacher-forced" in err
    assert "[reference] step 2 of 4 done (teacher-forced), 1 min 0 s elapsed" in err


def test_durations_read_as_a_person_would_say_them() -> None:
    assert [eta.approx(s) for s in (3, 42, 100, 650, 6000)] == [
        "about 5 s", "about 40 s", "about 2 min", "about 11 min", "about 1 h 40 min"]
    assert [eta.elapsed_text(s) for s in (45, 190, 3840)] == ["45 s", "3 min 10 s", "1 h 4 min"]
