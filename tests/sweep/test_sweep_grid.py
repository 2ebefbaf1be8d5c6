"""The sweep grid as DVC/Hydra overrides, the stages a Ray sweep shares, the memory it asks Ray for, bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core.config import SweepConfig, compose
from pipeline.sweep import grid, ray_executor, remote

from conftest import ROOT, make_project, run_cmd

KEEP_FLOAT = [[], [".*mlp\\.down_proj.*"], ["a,b", "c'd"]]


@pytest.mark.parametrize(
    "value", [True, False, None, 64, -1, 0.8, "heldout", "int8_sym", "null", "a,b", "x y", *KEEP_FLOAT]
)
def test_values_read_back_through_hydra_as_themselves(value: object) -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_override(f"k={grid.hydra_value(value)}").value()
    assert parsed == value


def test_a_list_valued_key_is_one_choice_per_list_in_the_local_queue() -> None:
    """keep_float values are lists: DVC's sweep expansion must give one experiment per list, not per comma."""
    from dvc.utils.hydra import get_hydra_sweeps

    cfg = SweepConfig.from_conf(grid={"openvino.int4.keep_float": KEEP_FLOAT, "openvino.int4.ratio": [0.8, 1.0]})
    args = grid.set_params(cfg, ["model=tiny"])
    sweeps = get_hydra_sweeps({"params.yaml": args[1::2]})
    got = sorted(
        (str(dict(o.split("=", 1) for o in s["params.yaml"])["openvino.int4.keep_float"]), s["params.yaml"][1])
        for s in sweeps
    )
    assert len(sweeps) == 6 == len(grid.points(cfg))
    assert sorted({g[0] for g in got}) == sorted(grid.hydra_value(v) for v in KEEP_FLOAT)


def test_a_ray_point_composes_to_its_values() -> None:
    cfg = SweepConfig.from_conf(grid={"openvino.int4.keep_float": KEEP_FLOAT[1:2], "openvino.int4.awq": [True],
                            "openvino.int4.dataset": ["heldout"], "openvino.int4.sensitivity_metric": [None]})
    [point] = grid.points(cfg)
    args = grid.point_overrides(point, ["model=tiny"])
    composed = compose(args[1::2])["openvino"]["int4"]
    assert composed["keep_float"] == [".*mlp\\.down_proj.*"] and composed["awq"] is True
    assert composed["dataset"] == "heldout" and composed["sensitivity_metric"] is None


def test_point_names_are_stable_distinct_git_refs(tmp_path: Path) -> None:
    cfg = SweepConfig.from_conf(grid={"openvino.int4.group_size": [64, 128], "openvino.int4.keep_float": KEEP_FLOAT})
    names = [grid.point_name(p, "c0ffee") for p in grid.points(cfg)]
    assert len(set(names)) == 6
    assert names == [grid.point_name(p, "c0ffee") for p in grid.points(cfg)]
    assert grid.point_name(grid.points(cfg)[0], "other") != names[0]
    for name in names:
        subprocess.run(["git", "check-ref-format", f"refs/exps/{name}"], check=True)


def test_full_size_points_get_a_16gb_node_each(tmp_path: Path) -> None:
    """From the measured full-size tables: Ray gives a 16 GB node ~70 % of it (the rest is the object store)."""
    model = tmp_path / "model"
    model.mkdir()
    with open(model / "model.safetensors", "wb") as f:  # sparse: the Phi-3-mini checkpoint's 7.12 GiB of bf16
        f.truncate(int(7.12 * 2**30))
    request = ray_executor.estimated_point_bytes(model) * ray_executor.MARGIN
    node = 0.7 * 16 * 2**30
    assert request < node < 2 * request
    opts = ray_executor.task_options(int(request), 1, "p")
    assert opts["memory"] == int(request) and opts["max_retries"] > 0 and opts["retry_exceptions"] is False


def test_no_cluster_at_the_address_is_one_line() -> None:
    from sweep_cluster import free_port

    with pytest.raises(Exception, match=r"no Ray cluster at 127\.0\.0\.1:\d+ .*start one with `ray start --head`"):
        ray_executor.connect(f"127.0.0.1:{free_port()}")


def test_a_measured_peak_wins_over_the_estimate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    ray_executor.record_memory("tiny-phi3", [{"peak_rss_bytes": 2**30}, {"peak_rss_bytes": 3 * 2**30}])
    assert ray_executor.point_memory("tiny-phi3", None)[0] == int(3 * 2**30 * ray_executor.MARGIN)
    assert ray_executor.point_memory("tiny-phi3", "12")[0] == 12 * 2**30
    with pytest.raises(Exception, match="--memory must be a number of GiB"):
        ray_executor.point_memory("tiny-phi3", "lots")


def test_shared_stages_are_the_ones_no_grid_key_reaches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = make_project(tmp_path / "p")
    monkeypatch.chdir(project)
    shared = ["download", "export_openvino_base", "reference"]
    assert remote.shared_stages(["validate@int4"], ["openvino.int4.group_size"]) == shared
    assert remote.shared_stages(["validate_npu@int4"], ["npu.int4.awq"]) == shared
    assert remote.shared_stages(["validate@int4"], ["model"]) == []  # the model itself: nothing is shared


def test_bad_sweep_input_fails_in_one_line(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    cli = [sys.executable, "-m", "pipeline.cli", "sweep"]
    run_cmd([sys.executable, "-m", "pipeline.cli", "compose", "model=tiny"], project)
    for args, message in [
        (["--executor", "slurm", "model=tiny"], "--executor must be one of local, ray"),
        (["--address", "127.0.0.1:6379", "model=tiny"], "are for --executor ray"),
        (["--executor", "ray", "model=tiny"], "uncommitted changes (params.yaml)"),
    ]:
        done = run_cmd([*cli, *args], project, check=False)
        assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    run_cmd(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qam", "tiny"], project)
    done = run_cmd([*cli, "--executor", "ray", "model=tiny"], project, check=False)
    assert done.returncode == 2 and "no git remote 'origin'" in done.stderr
    run_cmd(["git", "init", "-q", "--bare", str(tmp_path / "origin.git")], project)
    run_cmd(["git", "remote", "add", "origin", str(tmp_path / "origin.git")], project)
    done = run_cmd([*cli, "--executor", "ray", "model=tiny"], project, check=False)
    assert done.returncode == 2 and "is not on git remote 'origin': `git push origin HEAD` first" in done.stderr


@pytest.mark.parametrize(
    ("preset", "model"), [("default", "tiny"), ("data_aware", "tiny"), ("npu", "tiny"), ("keep_float", "tiny-phi4")]
)
def test_every_sweep_preset_composes_and_each_point_is_a_valid_config(preset: str, model: str) -> None:
    from pipeline.core.config import build, pipeline_config_class

    cfg = compose([f"model={model}", f"sweep={preset}"])
    sweep = SweepConfig(**cfg["sweep"])
    for point in grid.points(sweep):
        build(pipeline_config_class(), compose(grid.point_overrides(point, [f"model={model}"])[1::2]))
    assert sorted(p.name.removesuffix(".yaml") for p in (ROOT / "conf" / "sweep").glob("*.yaml")) == sorted(
        ["default", "data_aware", "npu", "keep_float"]
    ), "a new sweep preset joins this test"


def test_the_keep_float_preset_sweeps_down_proj_kept_and_not() -> None:
    """Issue 21.5: the per-layer override is a sweep axis; each point's params keep exactly its list."""
    sweep = SweepConfig(**compose(["model=tiny-phi4", "sweep=keep_float"])["sweep"])
    kept = []
    for point in grid.points(sweep):
        composed = compose(grid.point_overrides(point, ["model=tiny-phi4"])[1::2])["openvino"]["int4"]
        kept.append((composed["keep_float"], composed["ratio"]))
    assert kept == [([], 0.8), ([], 1.0), ([".*mlp\\.down_proj.*"], 0.8), ([".*mlp\\.down_proj.*"], 1.0)]


def test_a_failed_point_gets_its_line_and_never_wins(tmp_path: Path) -> None:
    from pipeline.sweep.report import write_report

    cfg = SweepConfig.from_conf(grid={"openvino.int4.group_size": [48, 64]})
    rows = [{"experiment": "ok", "openvino.int4.group_size": 64, "size_mb": 9.0, "top1_agreement": 0.97}]
    failed = [{"experiment": "bad", "openvino.int4.group_size": 48, "error": "group_size 48 does not divide 256"}]
    result = write_report(rows, cfg, tmp_path, failed)
    assert result["recommended"]["experiment"] == "ok" and result["failed"] == failed
    assert "**failed:** `bad` (openvino.int4.group_size=48): group_size 48" in (tmp_path / "report.md").read_text(encoding="utf-8")


def test_a_point_that_cannot_run_returns_failed_and_leaves_no_workspace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.sweep import point

    monkeypatch.setenv(point.SCRATCH_ENV, str(tmp_path / "scratch"))
    monkeypatch.setattr(point, "RETRY_WAIT_S", 0.05)
    spec = point.PointSpec(name="p", values={"openvino.int4.ratio": 0.8}, set_params=[], targets=["validate@int4"],
                           git_url=str(tmp_path / "missing.git"), commit="0" * 40, metrics_file="m.json")
    result = point.run_point(spec)
    assert result["status"] == "failed" and result["error"].startswith("`git clone -q` exit 128")
    assert result["error"].endswith("(in clone)")  # the phase that failed
    assert any("missing.git" in line for line in result["log_tail"])  # what git printed, kept for the record
    assert [r["phase"] for r in result["retried"]] == ["clone"] * (point.REMOTE_TRIES - 1)  # a remote: tried again
    assert list((tmp_path / "scratch").iterdir()) == []


def test_a_remote_that_comes_back_is_tried_again_and_the_experiment_never_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The git remote appears only after the first clone failed: the second clone works; the run fails once."""
    import threading

    from pipeline.sweep import point

    monkeypatch.setenv(point.SCRATCH_ENV, str(tmp_path / "scratch"))
    monkeypatch.setenv(point.NODE_CACHE_ENV, str(tmp_path / "node"))
    monkeypatch.setattr(point, "RETRY_WAIT_S", 3.0)
    source = tmp_path / "source"
    source.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    run_cmd(["git", "init", "-q"], source)
    run_cmd([sys.executable, "-m", "dvc", "init", "-q"], source)
    run_cmd([*git, "commit", "-qm", "an empty DVC project"], source)
    commit = run_cmd(["git", "rev-parse", "HEAD"], source).stdout.strip()
    origin = tmp_path / "origin.git"
    # the remote comes back 1.5 s in: after the first clone failed (at once), before the second try (3 s)
    back = threading.Timer(1.5, lambda: run_cmd(["git", "clone", "-q", "--bare", str(source), str(origin)], tmp_path))
    back.start()
    spec = point.PointSpec(name="p", values={}, set_params=[], targets=["no-such-stage"], git_url=str(origin),
                           commit=commit, metrics_file="m.json")
    try:
        result = point.run_point(spec)
    finally:
        back.join()
    assert [r["phase"] for r in result["retried"]] == ["clone"] and "origin.git" in result["retried"][0]["error"]
    assert result["status"] == "failed" and result["error"].endswith("(in run)"), result["error"]
    assert "no-such-stage" in result["error"]  # DVC's own reason, tried once: the experiment fails the same each time
    assert set(result["seconds"]) == {"clone", "run"}


def test_a_task_that_raised_is_reported_by_its_own_exception() -> None:
    """A point whose Python raised comes back from Ray wrapped; the record names the exception, not the wrapper."""
    from ray.exceptions import RayTaskError, WorkerCrashedError

    try:
        raise ChildProcessError(10, "No child processes")
    except ChildProcessError as cause:
        wrapped = RayTaskError("run_point", "Traceback ...", cause, proctitle="ray::aipc-sweep:p", pid=1, ip="127.0.0.1")
    first = str(wrapped).splitlines()[0]  # what the record kept before: the task's name and worker, no reason
    assert "ray::aipc-sweep:p()" in first and "ChildProcessError" not in first
    assert ray_executor.task_error(wrapped) == "ChildProcessError: [Errno 10] No child processes"
    assert ray_executor.task_error(WorkerCrashedError()).startswith("WorkerCrashedError: The worker died")
