"""A 16 GB Windows laptop runs the default full-size pipeline: RAM rows from measured private memory (issue 29.6).

Windows charges a process its private memory; mapped weight pages are file-backed and dropped under pressure.
``benchmarks/full_pipeline.py`` samples each stage's private anonymous memory (smaps_rollup) beside its peak; the
Windows rows in ``pipeline/core/ram_windows.py`` are those figures. Before, Windows used the resident peaks without
page trimming, and ``validate@fp16`` (20.9 GiB) was refused on a 16 GB laptop.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import ROOT, run_cmd

from pipeline.cli import plan
from pipeline.core import resources
from pipeline.core.config import PipelineConfig, build, compose
from pipeline.core.ram_windows import WINDOWS_EXPORT, WINDOWS_FIXED_GIB
from pipeline.openvino import lean

GIB = 2**30
CHECKPOINT = 7.12 * GIB  # the random bf16 checkpoint with Phi-3-mini-4k's shapes
# (row, variant, input bytes, private peak GiB): `python benchmarks/full_pipeline.py --drop-source`, 2026-12-07
PRIVATE = [
    ("reference", "float32", CHECKPOINT, 1.22),
    ("validate", "int4", 2.589 * GIB, 5.86),
    ("validate", "int8", 3.569 * GIB, 6.83),
    ("validate", "fp16", 7.125 * GIB, 7.54),
]
EXPORT_PRIVATE = {"export": [0.81, 0.81], "compress": [3.05, 4.03, 2.38]}  # base, fp16; int4, int8, the NPU's int4


@pytest.mark.parametrize(("stage", "variant", "size", "private_gib"), PRIVATE)
def test_each_windows_row_covers_its_measured_private_peak_and_no_more(
    stage: str, variant: str, size: float, private_gib: float
) -> None:
    need = resources.ram_for(stage, variant, int(size), "win32") / GIB
    assert private_gib <= need <= 1.1 * private_gib + WINDOWS_FIXED_GIB + 0.05 * size / GIB, (stage, variant, need)
    assert need <= resources.ram_for(stage, variant, int(size), "darwin") / GIB  # never above the untrimmed row


@pytest.mark.parametrize("kind", EXPORT_PRIVATE)
def test_the_openvino_exports_windows_rows_cover_their_private_peaks(kind: str) -> None:
    share, fixed = lean.ram_share(kind, True, "win32", trimmable=False, native=False)
    assert (share, fixed) == WINDOWS_EXPORT[kind]
    need, peak = share * CHECKPOINT / GIB + fixed, max(EXPORT_PRIVATE[kind])
    assert peak <= need <= 1.1 * peak + fixed + 0.05 * CHECKPOINT / GIB


def default_full_size() -> PipelineConfig:
    return build(PipelineConfig, compose([]))


def test_no_required_stage_of_the_default_full_size_pipeline_is_refused_on_a_16_gb_windows_laptop() -> None:
    rows = plan.plan_rows(default_full_size(), "win32", int(CHECKPOINT))
    required = {stage: need / GIB for stage, need, optional in rows if not optional}
    assert {"reference", "validate@fp16", "validate@int8", "export_onnx@cpu_int4", "validate_winml@gpu"} <= set(required)
    too_big = {stage: round(gib, 1) for stage, gib in required.items() if gib > 11}
    assert too_big == {}, "a 16 GB laptop with a browser open has about 11 GiB available"
    optional = {stage for stage, need, opt in rows if opt and need > 11 * GIB}
    assert "validate@fp16 CPU cells" in optional  # the f16 weights widened to f32: skipped with one line there
    text = plan.plan_text(default_full_size(), 11, "windows", int(CHECKPOINT))
    assert text.splitlines()[-1] == "every required stage fits"
    assert "validate@fp16 CPU cells" in text and "its GPU cell runs" in text
    # the same pipeline on Linux without the lean rows' page trimming would not have fitted: the rows differ by OS
    assert plan.plan_text(default_full_size(), 11, "macos", int(CHECKPOINT)).splitlines()[-1] != "every required stage fits"


def test_aipc_plan_reads_its_options_and_refuses_bad_ones_in_one_line(tmp_path: Path) -> None:
    aipc = [sys.executable, "-m", "pipeline.cli", "plan"]
    done = run_cmd([*aipc, "--os", "windows", "--ram_gib", "11", "--checkpoint_gib", "7.12"], ROOT)
    assert done.stdout.startswith("RAM plan for a 7.1 GiB checkpoint on windows with 11 GiB available")
    for bad, said in ((["--os", "amiga"], "--os 'amiga' is not one of windows, linux, macos"),
                      (["--ram_gib", "lots"], "--ram_gib 'lots' is not a number")):
        refused = run_cmd([*aipc, *bad], ROOT, check=False)
        assert refused.returncode != 0 and said in refused.stderr and "Traceback" not in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
