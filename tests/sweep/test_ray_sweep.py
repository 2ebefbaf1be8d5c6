"""aipc sweep on both executors: DVC's queue, and --executor ray on a real local cluster (a worker killed mid-point).

One module-scoped cluster (tests/sweep/sweep_cluster.py): moto's S3 server as the DVC remote, a Ray head with no
CPUs and two worker nodes of one CPU each, all on 127.0.0.1, stopped by process id afterwards. The git remote is a
bare repository. The 4-point tiny sweep runs once through the local DVC queue (``local_sweep``, checked on its
own) and once through Ray (one worker is killed while it validates a point), and both must agree point for point.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import make_project, run_cmd
from sweep_cluster import BUCKET, Cluster, local_cluster

GRID = "sweep.grid={openvino.int4.group_size:[64,128],openvino.int4.ratio:[0.8,1.0]}"
# Fixed for every point of both executors: a shorter long-context window, one timed run, no emulation cells.
FIXED = ["model=tiny", "validate.long_context.lengths=[700]", "validate.repeats=1", "validate.emulate_numerics=[]"]
KEYS = ("openvino.int4.group_size", "openvino.int4.ratio")
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
pytestmark = pytest.mark.skipif(os.name == "nt", reason="Ray does not support multi-node clusters on Windows")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    with local_cluster(tmp_path_factory.mktemp("cluster")) as started:
        yield started


@pytest.fixture(scope="module")
def driver_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One DVC cache for the drivers' projects: the shared stages run once for the module (run cache)."""
    return tmp_path_factory.mktemp("driver-cache")


def sweep_project(dest: Path, cluster: Cluster | None = None, cache: Path | None = None, grid: str = GRID,
                  fixed: list[str] = FIXED) -> Path:
    """A fresh tiny project composed for ``grid``; with ``cluster``, its S3 remote and a bare git remote.

    ``cache``: another project's DVC cache, whose run cache then gives the shared stages (download, reference,
    base IR) without running them again; every point still compresses and validates.
    """
    project = make_project(dest)
    if cache:
        run_cmd([sys.executable, "-m", "dvc", "cache", "dir", "--local", str(cache)], project)
    run_cmd([sys.executable, "-m", "pipeline.cli", "compose", *fixed, grid], project)
    if cluster:
        run_cmd([sys.executable, "-m", "dvc", "remote", "add", "-d", "shared", f"s3://{BUCKET}/dvc"], project)
        run_cmd([sys.executable, "-m", "dvc", "remote", "modify", "shared", "endpointurl", cluster.endpoint], project)
        run_cmd(["git", "init", "-q", "--bare", str(dest.parent / f"{dest.name}-origin.git")], project)
        run_cmd(["git", "remote", "add", "origin", str(dest.parent / f"{dest.name}-origin.git")], project)
    run_cmd([*GIT, "commit", "-qam", "tiny sweep"], project)
    if cluster:
        run_cmd(["git", "push", "-q", "origin", "HEAD:main"], project)
    return project


def experiments(project: Path, env: dict | None = None, objects: dict | None = None, cache: Path | None = None) -> dict:
    """``dvc exp show`` on ``project``: experiment name -> {grid values, the .bin md5 of its int4 IR}.

    The IR's directory listing comes from the project's cache, or from the S3 remote's ``objects`` (a Ray
    sweep's driver pulls only the experiments' git refs).
    """
    shown = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json", "--hide-queued"], cwd=project,
                           env=env, capture_output=True, text=True, check=True)
    out = {}
    for baseline in json.loads(shown.stdout):
        for exp in baseline.get("experiments") or []:
            for rev in exp["revs"]:
                params = rev["data"]["params"]["params.yaml"]["data"]["openvino"]["int4"]
                lock = yaml.safe_load(run_cmd(["git", "show", f"{rev['rev']}:dvc.lock"], project).stdout)
                ir = lock["stages"]["export_openvino@int4"]["outs"][0]["md5"]
                listing = (
                    objects[f"dvc/files/md5/{ir[:2]}/{ir[2:]}"]
                    if objects is not None
                    else ((cache or project / ".dvc" / "cache") / "files" / "md5" / ir[:2] / ir[2:]).read_bytes()
                )
                entries = json.loads(listing)
                bin_md5 = next(e["md5"] for e in entries if e["relpath"] == "openvino_model.bin")
                out[rev["name"]] = {"point": (params["group_size"], params["ratio"]), "bin_md5": bin_md5}
    return out


def kill_a_worker_mid_point(cluster: Cluster, driver: subprocess.Popen) -> tuple[str, int]:
    """Wait for a point's validation to start on a node, then SIGKILL its Ray worker and everything under it.

    Returns the point's experiment name (from its workspace folder) and the killed worker's pid.
    """
    while driver.poll() is None:
        for proc in psutil.process_iter(["cmdline", "cwd"]):
            cmd, cwd = proc.info["cmdline"] or [], proc.info["cwd"] or ""
            if "pipeline.openvino.validate" in cmd and cwd.startswith(str(cluster.scratch)):
                worker = next(p for p in proc.parents() if " ".join(p.cmdline()).startswith("ray::"))
                tree = [worker, *worker.children(recursive=True)]
                for victim in tree:
                    victim.send_signal(signal.SIGKILL)
                psutil.wait_procs(tree)
                return Path(cwd).name[len("aipc-") : -len("-12345678")], worker.pid
        time.sleep(0.05)
    raise AssertionError(f"the driver ended before any point started validating:\n{driver.communicate()[0][-3000:]}")


def assert_remotes_whole(cluster: Cluster, origin: Path, names: set[str], metrics_file: str) -> None:
    """The git remote holds exactly the finished experiments; every S3 object is whole and every IR complete."""
    refs = run_cmd(["git", "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps"], origin).stdout.split("\n")
    pushed = {ref.rsplit("/", 1)[-1]: sha for sha, ref in (line.split() for line in refs if line)}
    assert set(pushed) == names
    objects = cluster.objects()
    files = {key.split("/files/md5/")[1].replace("/", ""): body for key, body in objects.items() if "/files/md5/" in key}
    for md5, body in files.items():  # content-addressed: a half-written object would not match its name
        assert hashlib.md5(body).hexdigest() == md5.removesuffix(".dir"), md5
    for sha in pushed.values():
        assert json.loads(run_cmd(["git", "show", f"{sha}:{metrics_file}"], origin).stdout)["top1_agreement"] > 0.5
        lock = yaml.safe_load(run_cmd(["git", "show", f"{sha}:dvc.lock"], origin).stdout)
        ir = lock["stages"]["export_openvino@int4"]["outs"][0]["md5"]
        assert {e["md5"] for e in json.loads(files[ir])} <= set(files), f"{ir} is not complete in the remote"


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory: pytest.TempPathFactory, driver_cache: Path) -> tuple[Path, str]:
    """The 4-point sweep through DVC's queue (the default executor), once for the module; its project and log.

    Its DVC cache is the drivers' one: the shared stages run here once, the Ray driver restores them.
    """
    local = sweep_project(tmp_path_factory.mktemp("local") / "local", cache=driver_cache)
    refused = run_cmd([sys.executable, "-m", "pipeline.cli", "sweep"], local, check=False)  # params.yaml is model=tiny
    assert refused.returncode == 2 and "aipc sweep model=tiny" in refused.stderr
    done = run_cmd([sys.executable, "-m", "pipeline.cli", "sweep", *FIXED, GRID], local)
    return local, done.stderr


@pytest.mark.slow
def test_two_by_two_sweep_through_the_dvc_queue(local_sweep: tuple[Path, str]) -> None:
    project, log = local_sweep
    result = json.loads((project / "artifacts" / "sweep" / "sweep.json").read_text())
    points = {(p[KEYS[0]], p[KEYS[1]]) for p in result["points"]}
    assert points == {(64, 0.8), (64, 1.0), (128, 0.8), (128, 1.0)}, log[-2000:]
    assert all(p["size_mb"] > 0 and p["top1_agreement"] > 0.5 and p["passed"] for p in result["points"])
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
    # Each point runs in its own temporary workspace, yet they share the workspace's NNCF caches: of the two
    # ratio-0.8 points (mixed precision) the second reuses the first one's sensitivities.
    assert logs.count("reusing the mixed-precision sensitivities") == 1
    assert len(list((project / ".aipc" / "nncf_sensitivity").glob("*.json"))) == 1


@pytest.mark.slow
def test_ray_sweep_matches_the_local_queue_and_a_killed_worker_is_retried(
    cluster: Cluster, local_sweep: tuple[Path, str], driver_cache: Path, tmp_path: Path
) -> None:
    project = sweep_project(tmp_path / "ray", cluster, driver_cache)
    driver = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "sweep", "--executor", "ray", "--address", cluster.address,
         *FIXED, GRID],
        cwd=project, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    killed_point, killed_pid = kill_a_worker_mid_point(cluster, driver)
    log, _ = driver.communicate()
    assert driver.returncode == 0, log[-4000:]
    ray_result = json.loads((project / "artifacts" / "sweep" / "sweep.json").read_text())
    ray_points = json.loads((project / "artifacts" / "sweep" / "ray_points.json").read_text())["points"]
    assert {p["status"] for p in ray_points} == {"ok"}, [(p["name"], p.get("error")) for p in ray_points]
    retried = next(p for p in ray_points if p["name"] == killed_point)
    assert retried["pid"] != killed_pid  # Ray ran the point again, in another worker
    assert len({p["host"] + str(p["pid"]) for p in ray_points}) >= 2  # points ran in more than one worker
    # The killed attempt's workspace is still on the node, and nothing of it reached either remote.
    assert any(d.name.startswith(f"aipc-{killed_point}-") for d in cluster.scratch.iterdir())
    assert_remotes_whole(cluster, tmp_path / "ray-origin.git", {p["name"] for p in ray_points},
                         "artifacts/metrics/openvino-int4.json")
    shown = experiments(project, cluster.env, cluster.objects())  # the experiments are ordinary DVC experiments on the driver
    assert set(shown) == {p["name"] for p in ray_points}
    assert all(p["peak_rss_bytes"] > 100 * 2**20 for p in ray_points)
    assert (project / ".aipc" / "sweep" / "point_memory.json").is_file()

    local = local_sweep[0]
    local_result = json.loads((local / "artifacts" / "sweep" / "sweep.json").read_text())
    by_point = {e["point"]: e["bin_md5"] for e in experiments(local, cache=driver_cache).values()}
    assert {e["point"]: e["bin_md5"] for e in shown.values()} == by_point
    assert len(by_point) == 4 and len(set(by_point.values())) == 4
    assert {k: ray_result["recommended"][k] for k in KEYS} == {k: local_result["recommended"][k] for k in KEYS}
    assert sorted((p[KEYS[0]], p[KEYS[1]], p["size_mb"], p["top1_agreement"]) for p in ray_result["points"]) == sorted(
        (p[KEYS[0]], p[KEYS[1]], p["size_mb"], p["top1_agreement"]) for p in local_result["points"])
    assert os.path.isfile(project / "artifacts" / "sweep" / "pareto.png")


@pytest.mark.slow
def test_a_point_that_fails_is_reported_the_sweep_goes_on_and_it_is_never_pushed(
    cluster: Cluster, driver_cache: Path, tmp_path: Path
) -> None:
    grid = "sweep.grid={openvino.int4.group_size:[48],openvino.int4.ratio:[1.0]}"  # 48 does not divide 256
    strict = [*FIXED, "openvino.int4.group_size_fallback=error"]  # the default (adjust) would pick another group
    project = sweep_project(tmp_path / "bad", cluster, driver_cache, grid, strict)
    cli = [sys.executable, "-m", "pipeline.cli", "sweep", "--executor", "ray", "--address", cluster.address, *strict]
    done = subprocess.run([*cli, grid], cwd=project, env=cluster.env, capture_output=True, text=True)
    assert done.returncode == 2, done.stderr[-3000:]  # every point failed: one line
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: every point failed (1;") and "group_size 48 does not divide hidden_size 256" in last
    # With a point that works beside it, the sweep goes on: the failed point is listed, the other one recommended.
    grid = "sweep.grid={openvino.int4.group_size:[48,64],openvino.int4.ratio:[1.0]}"
    run_cmd([sys.executable, "-m", "pipeline.cli", "compose", *strict, grid], project)
    run_cmd([*GIT, "commit", "-qam", "a good point beside the bad one"], project)
    run_cmd(["git", "push", "-q", "origin", "HEAD:main"], project)
    done = subprocess.run([*cli, grid], cwd=project, env=cluster.env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    points = {p["values"]["openvino.int4.group_size"]: p for p in json.loads(
        (project / "artifacts" / "sweep" / "ray_points.json").read_text())["points"]}
    assert points[48]["status"] == "failed" and points[48]["seconds"]["run"] > 0 and points[64]["status"] == "ok"
    assert "group_size 48 does not divide hidden_size 256" in points[48]["error"]
    result = json.loads((project / "artifacts" / "sweep" / "sweep.json").read_text())
    assert [p["experiment"] for p in result["points"]] == [points[64]["name"]] == [result["recommended"]["experiment"]]
    assert [p["experiment"] for p in result["failed"]] == [points[48]["name"]]
    assert f"**failed:** `{points[48]['name']}`" in (project / "artifacts" / "sweep" / "report.md").read_text()
    refs = run_cmd(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], tmp_path / "bad-origin.git").stdout
    assert [ref.rsplit("/", 1)[-1] for ref in refs.split()] == [points[64]["name"]]  # failed points: never pushed
