"""The sweep grid as DVC ``-S`` overrides: the whole grid for the local queue, or one point at a time for Ray.

Values are written in Hydra's override grammar (what ``dvc exp run -S`` parses), so a list value such as
``openvino.<v>.keep_float`` is one choice (``[]`` or ``['.*mlp\\.down_proj.*']``), not split on its commas.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from typing import Any

from pipeline.core.composition import hydra_value
from pipeline.core.config import SweepConfig

__all__ = ["hydra_value", "point_overrides", "points", "set_params"]


def set_params(cfg: SweepConfig, overrides: list[str]) -> list[str]:
    """The ``-S`` arguments that make DVC queue the whole grid (plus fixed overrides)."""
    args = []
    for key, values in cfg.grid.items():
        args += ["-S", f"{key}={','.join(hydra_value(v) for v in values)}"]
    for override in overrides:
        args += ["-S", override]
    return args


def points(cfg: SweepConfig) -> list[dict[str, Any]]:
    """Every grid point as ``{key: value}``, in the grid's order (the last key varies fastest)."""
    keys = list(cfg.grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(cfg.grid[k] for k in keys))]


def point_overrides(point: dict[str, Any], overrides: list[str]) -> list[str]:
    """The ``-S`` arguments of one point (plus the fixed overrides)."""
    args = []
    for key, value in point.items():
        args += ["-S", f"{key}={hydra_value(value)}"]
    for override in overrides:
        args += ["-S", override]
    return args


def point_name(point: dict[str, Any], commit: str) -> str:
    """A stable experiment name for a point: the same point on the same commit gets the same name.

    A retried task reuses it, so a point is one experiment whatever happened to the worker that ran it.
    """
    key = repr(sorted(point.items())) + commit
    short = "-".join(f"{k.rsplit('.', 1)[-1]}{hydra_value(v)}" for k, v in point.items())
    short = re.sub(r"[^A-Za-z0-9.-]+", "_", short)[:40].strip("_.-")
    return f"sweep-{short}-{hashlib.sha256(key.encode()).hexdigest()[:6]}"
