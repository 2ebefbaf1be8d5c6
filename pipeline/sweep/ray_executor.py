"""``aipc sweep --executor ray``: each grid point is a Ray task on an existing Ray cluster.

Why Ray tasks and not Ray Jobs: a point is a function call with a small result (its metrics and timings),
and tasks give exactly what a sweep needs from the cluster, per point: resource requests (``num_cpus``,
``memory``) that the scheduler honours, and automatic retry when the worker or its node dies
(``max_retries``), while a failing point (a Python-level result here) is not retried. A Ray Job is a
whole driver script submitted to the cluster: we would have to schedule, retry and collect the points
inside it ourselves, which is exactly the scheduler of our own the design rules out.

Each task runs :func:`pipeline.sweep.point.run_point`: a fresh clone at the driver's commit, the shared
stages restored from the DVC remote, the point run as a DVC experiment, its outputs pushed to the DVC
remote and, last, its git ref to the git remote. The driver then pulls the experiments and writes the
same report as the local queue (:mod:`pipeline.sweep.report`).
"""

from __future__ import annotations

import json
import logging
import math
import socket
from pathlib import Path
from typing import Any

from pipeline.core.artifacts import write_json_atomic
from pipeline.core.config import SweepConfig, load_params
from pipeline.core.errors import fail, size_text
from pipeline.core.log import say, step
from pipeline.sweep import grid, remote
from pipeline.sweep.local import check_overrides
from pipeline.sweep.point import PointSpec, run_point
from pipeline.sweep.report import OUT_DIR, report

MEMORY_FILE = Path(".aipc") / "sweep" / "point_memory.json"  # measured peak RSS of a point, per model
MARGIN = 1.25  # headroom over the measured peak (allocator noise, a longer prompt in validation)
MAX_RETRIES = 2  # retries when the worker or its node dies; a failing point is reported, not retried


def estimated_point_bytes(model_dir: Path = Path("artifacts/model")) -> int:
    """Peak RSS of a point before one was measured: the largest of the families' estimates (registry field
    ``sweep_point``; the OpenVINO IR's: compress or validate int4, from the measured full-size tables)."""
    from pipeline.core.registry import entries

    if not model_dir.is_dir():
        return 2 * 2**30
    return max((estimate(model_dir) for estimate in entries("sweep_point").values()), default=2 * 2**30)


def point_memory(model: str, memory_gb: str | None) -> tuple[int, str]:
    """Bytes of ``memory`` to request per task, and where the figure comes from.

    ``--memory`` wins; then the largest peak measured by an earlier Ray sweep of this model
    (:data:`MEMORY_FILE`) times :data:`MARGIN`; then the estimate from the measured full-size tables.
    """
    if memory_gb is not None:
        try:
            value = float(memory_gb)
        except ValueError:
            value = -1.0
        if not 0 < value < 4096:
            fail(f"--memory must be a number of GiB per point, e.g. 12; got {memory_gb!r}")
        return int(value * 2**30), "--memory"
    measured = json.loads(MEMORY_FILE.read_text(encoding="utf-8")) if MEMORY_FILE.is_file() else {}
    if model in measured:
        return int(measured[model] * MARGIN), f"measured peak {size_text(measured[model])} x {MARGIN}"
    return int(estimated_point_bytes() * MARGIN), f"estimate from the full-size tables x {MARGIN}"


def record_memory(model: str, results: list[dict]) -> None:
    """Keep the largest measured peak RSS of this model's points for the next sweep's requests."""
    peaks = [r["peak_rss_bytes"] for r in results if r.get("peak_rss_bytes")]
    if not peaks:
        return
    measured = json.loads(MEMORY_FILE.read_text(encoding="utf-8")) if MEMORY_FILE.is_file() else {}
    measured[model] = max(peaks)
    MEMORY_FILE.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(MEMORY_FILE, measured)


def task_options(memory_bytes: int, cpus: int, name: str) -> dict[str, Any]:
    """Ray task options of one point: its CPUs and memory, retries on worker death only."""
    return {
        "num_cpus": cpus,
        "memory": memory_bytes,
        "max_retries": MAX_RETRIES,
        "retry_exceptions": False,
        "name": f"aipc-sweep:{name}",
    }


def connect(address: str | None) -> Any:
    """``ray.init`` on an existing cluster (``--address``, else ``RAY_ADDRESS``/the local one); the module."""
    try:
        import ray
    except ImportError:
        fail("the Ray executor needs Ray: pip install -c constraints.txt -e .[ray]")
    if address:  # ray.init waits minutes on an address where nothing listens: ask once, in one line
        host, _, port = address.removeprefix("ray://").rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=10).close()
        except (OSError, ValueError) as err:
            fail(f"no Ray cluster at {address} ({err}): start one with `ray start --head` or fix --address")
    host = (address or "").removeprefix("ray://").rpartition(":")[0]
    # a cluster on this machine's loopback: the driver registers there too (Ray would take the host's own address)
    local: dict[str, Any] = {"_node_ip_address": host} if host in ("127.0.0.1", "localhost") else {}
    try:
        ray.init(address=address or "auto", log_to_driver=False, logging_level=logging.ERROR, **local)
    except (ConnectionError, RuntimeError, ValueError) as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        fail(f"no Ray cluster at {address or 'auto'} ({detail}): start one with `ray start --head` or pass --address")
    return ray


def specs(
    cfg: SweepConfig, overrides: list[str], commit: str, git_url: str, dvc_remote: str | None, shared: list[str]
) -> list[PointSpec]:
    """One :class:`PointSpec` per grid point."""
    return [
        PointSpec(
            name=grid.point_name(values, commit),
            values=values,
            set_params=grid.point_overrides(values, overrides),
            targets=list(cfg.targets),
            git_url=git_url,
            commit=commit,
            metrics_file=cfg.metrics_file,
            dvc_remote=dvc_remote,
            shared=shared,
        )
        for values in grid.points(cfg)
    ]


def task_error(err: BaseException) -> str:
    """One line for a task that did not return: the task's own exception when it raised, else Ray's reason.

    A task that raised comes back as ``RayTaskError``, whose first line only names the task and worker; the
    exception it wraps (``cause``) is what says why.
    """
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException):
        err = cause
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0] if lines else 'no message'}"


def run_tasks(ray: Any, points: list[PointSpec], memory: int, cpus: int) -> list[dict]:
    """Submit every point as a task and gather the results as they finish."""
    task = ray.remote(run_point)
    pending = {task.options(**task_options(memory, cpus, p.name)).remote(p): p for p in points}
    results = []
    while pending:
        [ref], _ = ray.wait(list(pending), num_returns=1)
        spec = pending.pop(ref)
        try:
            result = ray.get(ref)
        except Exception as err:  # the task raised, died more often than MAX_RETRIES, or Ray itself failed
            result = {"name": spec.name, "values": spec.values, "status": "failed", "error": task_error(err)}
        results.append(result)
        took = sum((result.get("seconds") or {}).values())
        say(
            f"[{spec.name}] {result['status']} on {result.get('host', '?')} in {took:.1f} s {result.get('error') or ''}"
        )
    return results


def run_sweep(
    cfg: SweepConfig,
    overrides: list[str],
    address: str | None = None,
    git_remote: str = "origin",
    dvc_remote: str | None = None,
    memory_gb: str | None = None,
    cpus: int = 1,
) -> dict:
    """Run the grid on a Ray cluster, pull the experiments, and write the sweep report."""
    check_overrides(overrides)
    commit, git_url = remote.checked_commit(git_remote)
    model = load_params().model.name
    memory, source = point_memory(model, memory_gb)
    ray = connect(address)  # before the shared stages: no cluster, no work
    try:
        shared = remote.push_shared(list(cfg.targets), list(cfg.grid), dvc_remote)
        points = specs(cfg, overrides, commit, git_url, dvc_remote, shared)
        with step(f"running {len(points)} points on Ray ({cpus} CPU, {size_text(memory)} each: {source})"):
            results = run_tasks(ray, points, memory, max(1, math.ceil(cpus)))
    finally:
        ray.shutdown()
    record_memory(model, [r for r in results if r["status"] == "ok"])
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    write_json_atomic(OUT_DIR / "ray_points.json", {"memory_request_bytes": memory, "points": results})
    done = [r["name"] for r in results if r["status"] == "ok"]
    if not done:
        fail(f"every point failed ({len(results)}; {OUT_DIR / 'ray_points.json'}), e.g. {results[0]['error']}")
    remote.pull_experiments(done, git_remote)
    failed = [{"experiment": r["name"], "error": r["error"], **r["values"]} for r in results if r["status"] != "ok"]
    return report(cfg, only=set(done), failed=failed)
