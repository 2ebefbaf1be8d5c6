"""``aipc sweep``: run a grid of export settings as DVC experiments, and pick the winner.

Every point is a DVC experiment, so every result is reproducible and shows in ``dvc exp show``. Two
executors run them: :mod:`pipeline.sweep.local` (the default) hands the grid to DVC's own queue on this
machine; :mod:`pipeline.sweep.ray_executor` runs each point as a Ray task on an existing Ray cluster,
through a shared git remote and DVC remote (:mod:`pipeline.sweep.point`, :mod:`pipeline.sweep.remote`).
Both end in the same report (:mod:`pipeline.sweep.report`). Ray is imported only by the Ray executor.
"""

from __future__ import annotations

from pipeline.sweep.grid import hydra_value, point_overrides, points, set_params
from pipeline.sweep.local import check_overrides, dvc, queue_and_run
from pipeline.sweep.report import OUT_DIR, collect_points, pareto_front, plot_pareto, recommend, report, write_report

EXECUTORS = ("local", "ray")

__all__ = [
    "EXECUTORS",
    "OUT_DIR",
    "check_overrides",
    "collect_points",
    "dvc",
    "hydra_value",
    "pareto_front",
    "plot_pareto",
    "point_overrides",
    "points",
    "queue_and_run",
    "recommend",
    "report",
    "set_params",
    "write_report",
]
