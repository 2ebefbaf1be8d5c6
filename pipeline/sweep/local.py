"""The local executor (the default): DVC's own queue runs every point on this machine.

``dvc exp run --queue -S key=v1,v2 ...`` queues one experiment per grid point and ``dvc exp run --run-all``
runs them. Points share the download, reference and uncompressed base-IR stages through DVC's run
cache: a point only compresses the base IR and validates it. DVC runs each point in its own temporary
workspace, so the queue is pointed at this workspace's NNCF caches (``$AIPC_NNCF_CACHE``, default ``.aipc/``):
the points share the statistics and sensitivities of the base IR instead of computing them each.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

from pipeline.core.composition import check_overrides, workspace_overrides
from pipeline.core.config import SweepConfig
from pipeline.core.envs import venv_env
from pipeline.core.errors import fail
from pipeline.core.log import step
from pipeline.core.workspace import NNCF_CACHE_ENV, nncf_cache
from pipeline.sweep.grid import set_params

__all__ = ["check_overrides", "dvc", "queue_and_run", "workspace_overrides"]


def dvc(
    *args: str, capture: bool = False, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run ``python -m dvc ...`` with this interpreter's scripts first on PATH (plus ``env``)."""
    done = subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        env=venv_env(**(env or {})),
        cwd=cwd,
        text=True,
        encoding="utf-8",
        errors="replace",
        capture_output=capture,
        check=False,
    )
    if done.returncode:
        lines = (done.stderr or "").strip().splitlines() if capture else []
        detail = [line for line in lines if line.startswith("ERROR")][:1] or lines[-1:]  # DVC's own reason first
        fail(f"`dvc {' '.join(args)}` failed (exit {done.returncode}) {' '.join(detail)}".strip())
    return done


def queue_and_run(cfg: SweepConfig, overrides: list[str]) -> None:
    """Queue one experiment per grid point and run the queue to completion."""
    check_overrides(overrides)
    points = len(list(itertools.product(*cfg.grid.values())))
    with step(f"queueing {points} experiments ({', '.join(cfg.grid)})"):
        dvc("exp", "run", "--queue", *set_params(cfg, overrides), *cfg.targets)
    shared = {NNCF_CACHE_ENV: os.path.abspath(nncf_cache())}  # absolute: each point runs in a temporary workspace
    with step(f"running the queue ({points} points, {cfg.jobs} at a time)"):
        dvc("exp", "run", "--run-all", "-j", str(cfg.jobs), env=shared)
