"""validate.profile and the stand-in speed runs (issue 32, items 1-2).

``quick`` (the default) skips the speed runs of CPU stand-in cells, whose figures are a CPU running code built for
another device, and says so; every verdict and fidelity figure stays. The metrics, the report, the summary and the
card say which profile gave each verdict, and ``aipc publish`` refuses a ``quick`` one unless told otherwise.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pipeline.core.config import ConfigError, ValidateConfig, build, compose
from pipeline.core.errors import StageError
from pipeline.hub.model_card import CardFacts, build_card
from pipeline.hub.publish import check_profile
from pipeline.hub.staging import Artifact
from pipeline.validation import matrix, records, report, speed, summary


def tiny_cfg(*overrides: str) -> ValidateConfig:
    return build(ValidateConfig, compose(["model=tiny", *overrides])["validate"])


REFERENCE = {"greedy": [{"output_ids": [5, 6, 7]}, {"output_ids": [8, 9]}]}
FIDELITY = {"top1_agreement": 0.97, "mean_kl": 0.001, "max_kl": 0.01, "perplexity": 85.0,
            "reference_perplexity": 84.0, "perplexity_delta_pct": 1.19}


def stand_in_measurement() -> matrix.Measurement:
    perf = {"short": matrix.Perf.from_runs(32, 16, [300.0], [6000.0])}  # 0.17 tok/s: the NPU library on a CPU
    return matrix.Measurement("CPU", 0.5, 200.0, perf, FIDELITY, [[5, 6, 7], [8, 1]], True, "Hello")


def test_quick_is_the_default_and_only_full_runs_the_stand_in_speed_runs() -> None:
    quick, full, forced = tiny_cfg(), tiny_cfg("validate.profile=full"), tiny_cfg("validate.stand_in_speed=true")
    assert (quick.profile, quick.measures_stand_in_speed) == ("quick", False)
    assert (full.profile, full.measures_stand_in_speed) == ("full", True)
    assert (forced.profile, forced.measures_stand_in_speed) == ("quick", True)
    assert speed.not_measured(None, quick) is None, "a cell on its own device always measures its speed"
    assert speed.not_measured(None, full) is None and speed.not_measured("NPU", full) is None
    assert speed.not_measured("NPU", quick).startswith("speed not measured: CPU stand-in")


def test_a_full_profile_without_stand_in_speed_or_an_unknown_profile_is_one_line() -> None:
    with pytest.raises(ConfigError) as exc:
        tiny_cfg("validate.profile=full", "validate.stand_in_speed=false")
    assert "\n" not in str(exc.value) and "validate.profile=full" in str(exc.value)
    with pytest.raises(ConfigError, match="quick, full"):
        tiny_cfg("validate.profile=fast")


def test_a_stand_in_without_speed_runs_keeps_its_verdict_and_shows_no_figure(tmp_path: Path) -> None:
    plans = matrix.plan_cells(["NPU"], {}, cpu_stand_in=True)
    thresholds = matrix.Thresholds("int4", 0.85, 0.1)
    timed = matrix.judge(plans[1], stand_in_measurement(), REFERENCE, thresholds, "NPU library model")
    untimed = matrix.judge(plans[1], dataclasses.replace(stand_in_measurement(), perf={}), REFERENCE, thresholds,
                           "NPU library model")
    untimed.speed_not_measured = speed.not_measured(plans[1].stand_in_for, tiny_cfg())
    verdict = ("status", "problems", "top1_agreement", "mean_kl", "perplexity", "greedy_exact_match", "label")
    assert [getattr(untimed, k) for k in verdict] == [getattr(timed, k) for k in verdict]
    assert (untimed.tokens_per_s, untimed.ttft_ms, untimed.tpot_ms, untimed.perf) == (None, None, None, {})
    cells = {"NPU": matrix.skipped_cell(plans[0], "NPU library model"), matrix.STAND_IN: untimed}
    data = records.publish_cells("npu_lib-int4", "npu_lib", "int4", None, {}, cells, tmp_path, "quick")
    assert data["tokens_per_s"] is None and data["speed_not_measured"].startswith("speed not measured: CPU stand-in")
    assert data["profile"] == "quick" and data["cells"]["NPU"]["profile"] is None, "a skipped cell gave no verdict"

    rows = report.collect_rows([("npu_lib-int4", "validate_npu_lib@int4")], tmp_path)
    lines = report.markdown_table(rows).splitlines()
    head = [h.strip() for h in lines[0].strip("|").split("|")]
    row = dict(zip(head, (c.strip() for c in lines[3].strip("|").split("|"))))  # the stand-in's row
    assert (row["device"], row["status"], row["profile"], row["tokens/s"], row["TPOT ms"]) == (
        matrix.STAND_IN, "passed", "quick", "–", "–")
    assert "speed not measured: CPU stand-in" in row["note"] and row["top-1 (f32)"] == "0.970"
    line = summary.artifact_lines(rows)[1].split()
    assert line[:4] == ["npu_lib-int4", "passed", "0.970", "-"], line
    assert "; profile quick (`aipc publish` needs full)" in summary.console_summary(rows, "report.md").splitlines()[0]


def test_the_card_says_which_profile_gave_the_verdict_and_which_speed_was_not_measured(tmp_path: Path) -> None:
    plan = matrix.plan_cells(["NPU"], {}, cpu_stand_in=True)[1]
    cell = matrix.judge(plan, dataclasses.replace(stand_in_measurement(), perf={}), REFERENCE,
                        matrix.Thresholds("int4", 0.85, 0.1), "NPU-ready IR")
    cell.speed_not_measured = speed.not_measured("NPU", tiny_cfg())
    metrics = records.publish_cells("npu-int4", "npu", "int4", None, {}, {plan.column: cell}, tmp_path, "quick")
    manifest = {"parameters": {"weight_format": "int4"}}
    quick = build_card(CardFacts("me/m", "main", "npu", "npu-int4", manifest, metrics, "mit", "source card")).text
    assert "passed with the **quick** validation profile (published with --allow-quick" in quick
    assert "Speed not measured: CPU stand-in (a CPU running code built for NPU" in quick
    full = build_card(CardFacts("me/m", "main", "npu", "npu-int4", manifest, {**metrics, "profile": "full"}, "mit",
                                "source card")).text
    assert "passed with the `full` validation profile:" in full


def artifact(profile: str | None, status: str = "passed") -> Artifact:
    return Artifact("npu", "int4", Path("artifacts/npu/int4"), {}, {"profile": profile, "status": status}, {}, "mit",
                    "source card")


def test_publish_refuses_a_quick_verdict_in_one_line_unless_told() -> None:
    for profile in ("quick", None):  # None: a record from before validate.profile existed
        with pytest.raises(StageError) as exc:
            check_profile(artifact(profile), allow_quick=False)
        assert "\n" not in str(exc.value) and "validate.profile=full" in str(exc.value)
        assert "--allow-quick" in str(exc.value) and str(exc.value).startswith("npu/int4 has a verdict of ")
        check_profile(artifact(profile), allow_quick=True)
    check_profile(artifact("full"), allow_quick=False)
    check_profile(artifact(None, status="skipped"), allow_quick=False)  # nothing ran: no verdict to qualify
