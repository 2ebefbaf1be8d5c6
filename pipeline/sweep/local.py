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

from pipeline.core.config import CONF_DIR, PARAMS_FILE, SweepConfig, compose
from pipeline.core.envs import venv_env
from pipeline.core.errors import fail
from pipeline.core.log import step
from pipeline.core.workspace import NNCF_CACHE_ENV, nncf_cache
from pipeline.sweep.grid import hydra_value, set_params


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


def check_overrides(
    overrides: list[str],
    params_file: Path = PARAMS_FILE,
    hint: str = "pass the overrides you composed with, e.g. `aipc sweep model=tiny`",
) -> None:
    """Fail unless ``params.yaml`` is ``conf/`` composed with ``overrides``.

    DVC composes every queued experiment from ``conf/`` plus its ``-S`` arguments, so a workspace
    composed with other overrides (say ``model=tiny``) would silently sweep a different model.
    """
    current = read_params(params_file)
    expected = compose(overrides)
    differ = sorted(k for k in expected if k != "sweep" and current.get(k) != expected[k])
    if differ:
        fail(
            f"params.yaml is not conf/ + overrides {overrides or '(none)'} (sections {', '.join(differ)} differ): {hint}"
        )


def read_params(params_file: Path = PARAMS_FILE) -> dict:
    """``params.yaml`` as plain data (a file that is not YAML is one line)."""
    import yaml

    try:
        data = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        fail(f"{params_file} is not valid YAML ({str(err).splitlines()[0]}): rewrite it with `aipc compose`")
    return data if isinstance(data, dict) else {}


def workspace_overrides(params_file: Path = PARAMS_FILE) -> list[str]:
    """The overrides that compose ``conf/`` into this workspace's ``params.yaml``: group choices, then values.

    ``dvc exp run -S`` composes ``params.yaml`` afresh from ``conf/`` and its ``-S`` arguments only, which
    drops what ``aipc compose`` chose (``aipc demo``: ``model=tiny``). Given first, these keep it. Fails in one
    line when they do not give back ``params.yaml`` exactly (:func:`check_overrides`).
    """
    if not params_file.is_file():
        return []
    current = read_params(params_file)
    overrides = group_choices(current)
    overrides += value_overrides(compose(overrides), current)
    check_overrides(overrides, params_file, hint="compose it again with `aipc compose ...`, then rerun")
    return overrides


def group_choices(current: dict) -> list[str]:
    """The conf/ group options (model preset first: it picks some family groups) whose sections ``current`` has."""
    import yaml

    model = current.get("model") or {}
    presets = sorted((CONF_DIR / "model").glob("*.yaml"))
    names = {p.stem: (yaml.safe_load(p.read_text(encoding="utf-8")) or {}).get("name") for p in presets}
    choices = [f"model={stem}" for stem, name in names.items() if name and name == model.get("name")][:1]
    if choices == ["model=local"] and model.get("local_path"):
        choices.append(f"model.local_path={hydra_value(model['local_path'])}")
    base = compose(choices)
    for group in sorted(d.name for d in CONF_DIR.iterdir() if d.is_dir() and d.name != "model"):
        if current.get(group) == base.get(group):
            continue
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        choices += [
            f"{group}={o}" for o in options if compose([*choices, f"{group}={o}"])[group] == current.get(group)
        ][:1]
    return choices


def value_overrides(base: dict, current: dict, prefix: str = "") -> list[str]:
    """Hydra overrides that turn ``base`` into ``current``: changed values, added keys (``+``), removed keys (``~``)."""
    out: list[str] = []
    for key, value in current.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(base.get(key, {}), dict):
            out += value_overrides(base.get(key, {}), value, f"{name}.")
        elif key not in base:
            out.append(f"+{name}={hydra_value(value)}")
        elif value != base[key]:
            out.append(f"{name}={hydra_value(value)}")
    return out + [f"~{prefix}{key}" for key in base if key not in current]


def queue_and_run(cfg: SweepConfig, overrides: list[str]) -> None:
    """Queue one experiment per grid point and run the queue to completion."""
    check_overrides(overrides)
    points = len(list(itertools.product(*cfg.grid.values())))
    with step(f"queueing {points} experiments ({', '.join(cfg.grid)})"):
        dvc("exp", "run", "--queue", *set_params(cfg, overrides), *cfg.targets)
    shared = {NNCF_CACHE_ENV: os.path.abspath(nncf_cache())}  # absolute: each point runs in a temporary workspace
    with step(f"running the queue ({points} points, {cfg.jobs} at a time)"):
        dvc("exp", "run", "--run-all", "-j", str(cfg.jobs), env=shared)
