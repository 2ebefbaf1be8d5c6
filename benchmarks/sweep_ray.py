"""Benchmark: what a sweep point costs on Ray against DVC's local queue, and a 24-point full-size projection.

Measures, on the embedded tiny model and the 4-point grid of ``tests/sweep/test_ray_sweep.py``:

* **local queue**: a fresh clone of this repository at HEAD, the shared stages (download, reference, base IR)
  reproduced first and timed apart, then ``aipc sweep``: the queue's wall time per point (``jobs: 1``);
* **Ray**: the same project against a cluster started here on 127.0.0.1 (``tests/sweep/sweep_cluster.py``: moto's
  S3 server, a bare git remote, a Ray head and ``--workers`` worker nodes of one CPU each), ``aipc sweep
  --executor ray``: each task's wall time split into clone / run / push, and the driver's fixed part (shared
  stages, their push, connecting, pulling the refs).

The per-point overhead of Ray is a task's wall time minus the local queue's per point. The projection then
builds a 24-point full-size sweep from a full-size point's cost (``--point-s``; docs/benchmarks.md measured
52-59 s for a full-size int4 compression; validation adds to it), that overhead, and the transfers through
the remotes at ``--gbps`` (each node fetches the checkpoint and the base IR once; each point pushes its int4
IR): wall time on N nodes, one full-size point per node at a time (the memory request sees to that).

Usage:
    python benchmarks/sweep_ray.py [--work /tmp/aipc-sweep-bench] [--workers 2] [--point-s 60] [--gbps 1]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GRID = "sweep.grid={openvino.int4.group_size:[64,128],openvino.int4.ratio:[0.8,1.0]}"
FIXED = ["model=tiny", "validate.long_context.lengths=[700]", "validate.repeats=1", "validate.emulate_numerics=[]"]
SHARED = ["download", "reference", "export_openvino_base"]
GIB = 2**30
# Phi-3-mini at full size (docs/benchmarks.md): what a node fetches once, what each point pushes.
FULL_FETCH_BYTES = int((7.12 + 7.12) * GIB)  # the bf16 checkpoint and the uncompressed base IR
FULL_POINT_PUSH_BYTES = int(2.6 * GIB)  # one int4 IR
DRIVER_STEPS = ("reproducing", "pushing", "pulling")  # the driver's own steps in its log (pipeline/sweep/remote.py)
STEP_DONE = re.compile(r"\] (.+?): done in ([\d.]+) s")


def load(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run ``args`` (this venv first on PATH, so DVC's stages run its Python); seconds taken and stderr."""
    env = env or {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    start = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{args} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return time.perf_counter() - start, done.stderr


def project(work: Path, name: str, cluster: Any = None) -> Path:
    """A clone of this repository at HEAD composed for the grid (with the S3 and git remotes for Ray)."""
    dest = work / name
    shutil.rmtree(dest, ignore_errors=True)
    py = [sys.executable, "-m"]
    run(["git", "clone", "-q", str(ROOT), str(dest)], work)
    run([*py, "pipeline.cli", "compose", *FIXED, GRID], dest)
    if cluster:
        run([*py, "dvc", "remote", "add", "-d", "shared", "s3://aipc-sweep/dvc"], dest)
        run([*py, "dvc", "remote", "modify", "shared", "endpointurl", cluster.endpoint], dest)
        shutil.rmtree(work / f"{name}-origin.git", ignore_errors=True)
        run(["git", "init", "-q", "--bare", str(work / f"{name}-origin.git")], dest)
        run(["git", "remote", "set-url", "origin", str(work / f"{name}-origin.git")], dest)
    run(["git", "-c", "user.name=b", "-c", "user.email=b@example.invalid", "commit", "-qam", "bench"], dest)
    if cluster:
        run(["git", "push", "-q", "origin", "HEAD:main"], dest)
    return dest


def measure_local(work: Path) -> dict[str, Any]:
    dest = project(work, "local")
    shared_s, _ = run([sys.executable, "-m", "dvc", "repro", *SHARED], dest)
    sweep_s, _ = run([sys.executable, "-m", "pipeline.cli", "sweep", *FIXED, GRID], dest)
    return {"shared_stages_s": round(shared_s, 1), "sweep_s": round(sweep_s, 1), "per_point_s": round(sweep_s / 4, 1)}


def measure_ray(work: Path, workers: int) -> dict[str, Any]:
    cluster_mod = load(ROOT / "tests" / "sweep" / "sweep_cluster.py", "sweep_cluster")
    with cluster_mod.local_cluster(work / "cluster", workers=workers) as cluster:
        dest = project(work, "ray", cluster)
        cmd = [sys.executable, "-m", "pipeline.cli", "sweep", "--executor", "ray", "--address", cluster.address]
        total_s, log = run([*cmd, *FIXED, GRID], dest, cluster.env)
    points = json.loads((dest / "artifacts" / "sweep" / "ray_points.json").read_text())["points"]
    steps = {m[1]: float(m[2]) for m in STEP_DONE.finditer(log)}
    makespan = max(p["ended"] for p in points) - min(p["started"] for p in points)
    task = [sum(p["seconds"].values()) for p in points]
    phases = {ph: round(sum(p["seconds"][ph] for p in points) / len(points), 1) for ph in points[0]["seconds"]}
    return {
        "workers": workers,
        "sweep_s": round(total_s, 1),
        "makespan_s": round(makespan, 1),
        "driver_fixed_s": round(total_s - makespan, 1),
        "driver_steps_s": {k.split(" ")[0]: v for k, v in steps.items() if k.startswith(DRIVER_STEPS)},
        "per_point_task_s": round(sum(task) / len(task), 1),
        "per_point_phases_s": phases,
        "peak_rss_mib": round(max(p["peak_rss_bytes"] for p in points) / 2**20),
    }


def project_full_size(local: dict, ray: dict, point_s: float, gbps: float) -> dict[str, Any]:
    """24 full-size points: the local queue on one machine against Ray on N nodes (one point per node at a time)."""
    overhead = max(0.0, ray["per_point_task_s"] - local["per_point_s"])
    bytes_per_s = gbps * 1e9 / 8
    fetch_s, push_s = FULL_FETCH_BYTES / bytes_per_s, FULL_POINT_PUSH_BYTES / bytes_per_s
    rows = {"local queue, 1 machine": round(24 * point_s / 60, 1)}
    for nodes in (1, 2, 4, 8, 12, 24):
        waves = math.ceil(24 / nodes)
        # the driver pushes the shared inputs once, every node fetches them once (in parallel), then the waves
        rows[f"ray, {nodes} nodes"] = round((fetch_s + fetch_s + waves * (point_s + overhead + push_s)) / 60, 1)
    return {
        "point_s": point_s,
        "ray_overhead_per_point_s": round(overhead, 1),
        "gbps": gbps,
        "node_fetch_s": round(fetch_s, 1),
        "point_push_s": round(push_s, 1),
        "driver_push_s": round(fetch_s, 1),
        "minutes": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/aipc-sweep-bench"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--point-s", type=float, default=60.0, help="one full-size point: compress + validate, s")
    parser.add_argument("--gbps", type=float, default=1.0, help="bandwidth between the nodes and the remotes")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    ray = measure_ray(args.work, args.workers)
    local = measure_local(args.work)
    full = project_full_size(local, ray, args.point_s, args.gbps)
    print("| tiny, 4 points | local queue | Ray |\n|---|---|---|")
    print(
        f"| sweep wall time | {local['sweep_s']} s (+ shared stages {local['shared_stages_s']} s) | {ray['sweep_s']} s |"
    )
    print(f"| per point | {local['per_point_s']} s | task {ray['per_point_task_s']} s {ray['per_point_phases_s']} |")
    print(f"| fixed per sweep | - | driver {ray['driver_fixed_s']} s {ray['driver_steps_s']} |")
    print(f"| Ray overhead per point | | {full['ray_overhead_per_point_s']} s |\n")
    print(f"| 24 full-size points ({args.point_s:.0f} s each, {args.gbps} Gbit/s) | minutes |\n|---|---|")
    for name, minutes in full["minutes"].items():
        print(f"| {name} | {minutes} |")
    out = ROOT / "benchmarks" / "results" / "sweep_ray.json"
    record = {
        "machine": f"{platform.machine()}, shared 2-core VM",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "local": local,
        "ray": ray,
        "full_size_projection": full,
    }
    out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
