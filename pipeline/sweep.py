"""``aipc sweep``: queue a group-size / ratio grid as DVC experiments, run it, and pick the winner.

Each point is a DVC experiment (``dvc exp run --queue -S key=v1,v2 ...``), so every result is
reproducible and shows in ``dvc exp show``. Points share the download, reference and uncompressed
base-IR stages through DVC's run cache: a point only compresses the base IR and validates it.
The report (``artifacts/sweep/``) lists every point, draws size against fidelity with the Pareto
front, and recommends the smallest artifact whose fidelity meets the configured budget.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from pipeline.core.artifacts import write_json_atomic
from pipeline.core.config import PARAMS_FILE, SweepConfig, compose
from pipeline.core.envs import venv_env
from pipeline.core.errors import fail
from pipeline.core.log import say, step

OUT_DIR = Path("artifacts") / "sweep"


def dvc(*args: str, capture: bool = False) -> subprocess.CompletedProcess:
    """Run ``python -m dvc ...`` with this interpreter's scripts first on PATH."""
    done = subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        env=venv_env(),
        text=True,
        encoding="utf-8",
        errors="replace",
        capture_output=capture,
        check=False,
    )
    if done.returncode:
        detail = (done.stderr or "").strip().splitlines()[-1:] if capture else []
        fail(f"`dvc {' '.join(args)}` failed (exit {done.returncode}) {' '.join(detail)}".strip())
    return done


def set_params(cfg: SweepConfig, overrides: list[str]) -> list[str]:
    """The ``-S`` arguments that make DVC queue the whole grid (plus fixed overrides)."""
    args = []
    for key, values in cfg.grid.items():
        args += ["-S", f"{key}={','.join(str(v) for v in values)}"]
    for override in overrides:
        args += ["-S", override]
    return args


def check_overrides(overrides: list[str], params_file: Path = PARAMS_FILE) -> None:
    """Fail unless ``params.yaml`` is ``conf/`` composed with ``overrides``.

    DVC composes every queued experiment from ``conf/`` plus its ``-S`` arguments, so a workspace
    composed with other overrides (say ``model=tiny``) would silently sweep a different model.
    """
    import yaml

    current = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    expected = compose(overrides)
    differ = sorted(k for k in expected if k != "sweep" and current.get(k) != expected[k])
    if differ:
        fail(
            f"params.yaml is not conf/ + overrides {overrides or '(none)'} (sections {', '.join(differ)} differ): "
            f"pass the overrides you composed with, e.g. `aipc sweep model=tiny`"
        )


def queue_and_run(cfg: SweepConfig, overrides: list[str]) -> None:
    """Queue one experiment per grid point and run the queue to completion."""
    check_overrides(overrides)
    points = len(list(itertools.product(*cfg.grid.values())))
    with step(f"queueing {points} experiments ({', '.join(cfg.grid)})"):
        dvc("exp", "run", "--queue", *set_params(cfg, overrides), *cfg.targets)
    with step(f"running the queue ({points} points, {cfg.jobs} at a time)"):
        dvc("exp", "run", "--run-all", "-j", str(cfg.jobs))


def _flatten(prefix: str, data: Any, out: dict[str, Any]) -> None:
    if isinstance(data, dict):
        for key, value in data.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), value, out)
    else:
        out[prefix] = data


def collect_points(exp_show: list[dict], cfg: SweepConfig) -> list[dict[str, Any]]:
    """Turn ``dvc exp show --json`` into one row per finished experiment: grid values + metrics."""
    rows = []
    for baseline in exp_show:
        for exp in baseline.get("experiments") or []:
            for rev in exp.get("revs", []):
                data = rev.get("data") or {}
                params: dict[str, Any] = {}
                _flatten("", (data.get("params") or {}).get("params.yaml", {}).get("data", {}), params)
                metrics_file = (data.get("metrics") or {}).get(cfg.metrics_file, {}).get("data")
                if not metrics_file or rev.get("error"):
                    continue
                rows.append(
                    {
                        "experiment": rev.get("name") or rev.get("rev", "")[:7],
                        **{k: params.get(k) for k in cfg.grid},
                        **{
                            m: metrics_file.get(m)
                            for m in ("size_mb", "top1_agreement", "greedy_exact_match", "tokens_per_s", "passed")
                        },
                    }
                )
    return rows


def pareto_front(rows: list[dict]) -> list[dict]:
    """Points no other point beats on both size (smaller) and top-1 agreement (higher)."""
    return [
        r
        for r in rows
        if not any(
            o["size_mb"] <= r["size_mb"]
            and o["top1_agreement"] >= r["top1_agreement"]
            and (o["size_mb"], o["top1_agreement"]) != (r["size_mb"], r["top1_agreement"])
            for o in rows
        )
    ]


def recommend(rows: list[dict], budget: float) -> dict | None:
    """The smallest point whose top-1 agreement meets ``budget`` (ties: higher agreement)."""
    ok = [r for r in rows if r["top1_agreement"] is not None and r["top1_agreement"] >= budget]
    return min(ok, key=lambda r: (r["size_mb"], -r["top1_agreement"])) if ok else None


def write_report(rows: list[dict], cfg: SweepConfig, out_dir: Path = OUT_DIR) -> dict:
    """Write ``sweep.json``, ``report.md``, ``pareto.png`` and ``winner.yaml`` (when there is a winner)."""
    if not rows:
        fail("no finished sweep experiment found: run `aipc sweep` first, or check `dvc exp show`")
    front, winner = pareto_front(rows), recommend(rows, cfg.min_top1_agreement)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {
        "budget": {"min_top1_agreement": cfg.min_top1_agreement},
        "points": rows,
        "pareto": [r["experiment"] for r in front],
        "recommended": winner,
    }
    write_json_atomic(out_dir / "sweep.json", result)
    cols = ["experiment", *cfg.grid, "size_mb", "top1_agreement", "greedy_exact_match", "tokens_per_s"]
    lines = [
        "# Sweep report",
        "",
        f"Budget: top-1 agreement >= {cfg.min_top1_agreement}.",
        "",
        "| " + " | ".join(cols) + " | pareto |",
        "|" + "---|" * (len(cols) + 1),
    ]
    for row in sorted(rows, key=lambda r: r["size_mb"]):
        mark = "yes" if row in front else ""
        lines.append("| " + " | ".join(str(row[c]) for c in cols) + f" | {mark} |")
    if winner:
        overrides = " ".join(f"-S {k}={winner[k]}" for k in cfg.grid)
        lines += [
            "",
            f"**Recommended:** `{winner['experiment']}` ({winner['size_mb']} MB, top-1 "
            f"{winner['top1_agreement']}). Promote it: `dvc exp apply {winner['experiment']}` or "
            f"`aipc compose {overrides.replace('-S ', '')}`; overrides in `winner.yaml`.",
        ]
        (out_dir / "winner.yaml").write_text("".join(f"{k}: {winner[k]}\n" for k in cfg.grid), encoding="utf-8")
    else:
        lines += ["", f"**No point meets the budget** (top-1 >= {cfg.min_top1_agreement})."]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    plot_pareto(rows, front, winner, out_dir / "pareto.png")
    say(
        f"sweep report: {out_dir / 'report.md'} ({len(rows)} points, recommended "
        f"{winner['experiment'] if winner else 'none'})"
    )
    return result


def plot_pareto(rows: list[dict], front: list[dict], winner: dict | None, path: Path) -> None:
    """Size vs top-1 agreement, Pareto front joined, the recommended point circled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.scatter([r["size_mb"] for r in rows], [r["top1_agreement"] for r in rows], color="tab:blue", label="points")
    front = sorted(front, key=lambda r: r["size_mb"])
    ax.plot(
        [r["size_mb"] for r in front], [r["top1_agreement"] for r in front], color="tab:orange", label="Pareto front"
    )
    if winner:
        ax.scatter(
            [winner["size_mb"]],
            [winner["top1_agreement"]],
            s=200,
            facecolors="none",
            edgecolors="tab:red",
            label="recommended",
        )
    for r in rows:
        ax.annotate(r["experiment"], (r["size_mb"], r["top1_agreement"]), fontsize=6)
    ax.set_xlabel("size on disk (MB)")
    ax.set_ylabel("teacher-forced top-1 agreement")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def report(cfg: SweepConfig, out_dir: Path = OUT_DIR) -> dict:
    """Read every experiment from ``dvc exp show --json`` and write the sweep report."""
    shown = dvc("exp", "show", "--json", "--hide-queued", capture=True)
    return write_report(collect_points(json.loads(shown.stdout), cfg), cfg, out_dir)
