"""aipc sweep: a 2x2 grid through the DVC queue in a fresh repo, and the winner logic."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from pipeline import sweep
from pipeline.core.config import ConfigError, SweepConfig

from conftest import make_project, run_cmd


def _row(name: str, size: float, top1: float) -> dict:
    return {"experiment": name, "size_mb": size, "top1_agreement": top1}


def test_recommendation_is_the_smallest_point_within_budget() -> None:
    rows = [_row("a", 10, 0.99), _row("b", 8, 0.96), _row("c", 7, 0.90), _row("d", 9, 0.95)]
    assert sweep.recommend(rows, 0.95)["experiment"] == "b"
    assert sweep.recommend(rows, 0.995) is None
    assert {r["experiment"] for r in sweep.pareto_front(rows)} == {"a", "b", "c"}


def test_sweep_grid_must_name_export_parameters() -> None:
    with pytest.raises(ConfigError, match="export parameter"):
        SweepConfig(grid={"validate.repeats": [1, 2]})


def test_grid_becomes_dvc_set_params() -> None:
    cfg = SweepConfig(grid={"openvino.int4.group_size": [64, 128], "openvino.int4.ratio": [0.8, 1.0]})
    assert sweep.set_params(cfg, ["model=tiny"]) == ["-S", "openvino.int4.group_size=64,128",
                                                     "-S", "openvino.int4.ratio=0.8,1.0", "-S", "model=tiny"]


@pytest.mark.slow
def test_two_by_two_sweep_through_the_dvc_queue(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    run_cmd([sys.executable, "-m", "pipeline.cli", "compose", "model=tiny",
             "sweep.grid={openvino.int4.group_size:[64,128],openvino.int4.ratio:[0.8,1.0]}"], project)
    run_cmd(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qam", "tiny"], project)
    refused = run_cmd([sys.executable, "-m", "pipeline.cli", "sweep"], project, check=False)
    assert refused.returncode == 2 and "aipc sweep model=tiny" in refused.stderr
    done = run_cmd([sys.executable, "-m", "pipeline.cli", "sweep", "model=tiny",
                    "sweep.grid={openvino.int4.group_size:[64,128],openvino.int4.ratio:[0.8,1.0]}"], project)
    result = json.loads((project / "artifacts" / "sweep" / "sweep.json").read_text())
    points = {(p["openvino.int4.group_size"], p["openvino.int4.ratio"]) for p in result["points"]}
    assert points == {(64, 0.8), (64, 1.0), (128, 0.8), (128, 1.0)}, done.stderr[-2000:]
    assert all(p["size_mb"] > 0 and p["top1_agreement"] > 0.5 for p in result["points"])
    winner = result["recommended"]
    assert winner is not None and winner["top1_agreement"] >= result["budget"]["min_top1_agreement"]
    assert winner["size_mb"] == min(p["size_mb"] for p in result["points"]
                                    if p["top1_agreement"] >= result["budget"]["min_top1_agreement"])
    assert (project / "artifacts" / "sweep" / "pareto.png").stat().st_size > 1000
    assert "Recommended" in (project / "artifacts" / "sweep" / "report.md").read_text()
    winner_yaml = (project / "artifacts" / "sweep" / "winner.yaml").read_text()
    assert f"openvino.int4.group_size: {winner['openvino.int4.group_size']}" in winner_yaml
    # Cheap points: the model is traced to IR once; every point only compresses the cached base IR.
    logs = "".join(p.read_text(errors="replace") for p in (project / ".dvc" / "tmp" / "exps" / "run").glob("*/*.out"))
    assert logs.count("compressing the base IR to int4 with NNCF: done") == 4
    assert logs.count("Running stage 'export_openvino_base'") <= 1
    assert "exporting tiny-phi3 to OpenVINO IR" not in logs
