"""aipc sweep: the winner logic and the grid as DVC arguments.

The 2x2 sweep through the DVC queue runs once, in tests/sweep/test_ray_sweep.py (``local_sweep``), where the
Ray executor's points are compared with it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import sweep
from pipeline.core.config import ConfigError, SweepConfig


def _row(name: str, size: float, top1: float) -> dict:
    return {"experiment": name, "size_mb": size, "top1_agreement": top1}


def test_recommendation_is_the_smallest_point_within_budget() -> None:
    rows = [_row("a", 10, 0.99), _row("b", 8, 0.96), _row("c", 7, 0.90), _row("d", 9, 0.95)]
    assert sweep.recommend(rows, 0.95)["experiment"] == "b"
    assert sweep.recommend(rows, 0.995) is None
    assert {r["experiment"] for r in sweep.pareto_front(rows)} == {"a", "b", "c"}


def test_a_point_that_fails_validation_is_reported_failed_and_never_recommended(tmp_path: Path) -> None:
    cfg = SweepConfig.from_conf(grid={"openvino.int4.group_size": [32, 64, 128]})
    rows = [
        {**_row("small", 7, 0.97), "openvino.int4.group_size": 128, "passed": False,
         "problems": ["CPU: greedy exact match 0.33 < 0.67"]},
        {**_row("mid", 8, 0.96), "openvino.int4.group_size": 64, "passed": True},
        {**_row("big", 9, 0.99), "openvino.int4.group_size": 32, "passed": True},
    ]
    assert sweep.recommend(rows, 0.95)["experiment"] == "mid"
    # "small" would beat "mid" on both size and agreement; failed, it is on no front, and "mid" is
    assert {r["experiment"] for r in sweep.pareto_front(rows)} == {"mid", "big"}
    result = sweep.write_report(rows, cfg, tmp_path)
    assert result["recommended"]["experiment"] == "mid" and result["failed_validation"] == ["small"]
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "- **failed validation:** `small` (openvino.int4.group_size=128): CPU: greedy exact match 0.33" in report
    assert "**Recommended:** `mid`" in report


def test_sweep_grid_must_name_export_parameters() -> None:
    with pytest.raises(ConfigError, match="export parameter"):
        SweepConfig.from_conf(grid={"validate.repeats": [1, 2]})


def test_grid_becomes_dvc_set_params() -> None:
    cfg = SweepConfig.from_conf(grid={"openvino.int4.group_size": [64, 128], "openvino.int4.ratio": [0.8, 1.0]})
    assert sweep.set_params(cfg, ["model=tiny"]) == ["-S", "openvino.int4.group_size=64,128",
                                                     "-S", "openvino.int4.ratio=0.8,1.0", "-S", "model=tiny"]
