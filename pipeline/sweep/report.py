"""The sweep report: one row per finished experiment, the Pareto front, and the recommended point.

Both executors end here: the local queue and the Ray executor leave ordinary DVC experiments, and the
report reads them from ``dvc exp show --json``. It lists every point, draws size against fidelity with
the Pareto front, and recommends the smallest artifact whose fidelity meets the configured budget.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.core.artifacts import write_json_atomic
from pipeline.core.config import SweepConfig
from pipeline.core.errors import fail
from pipeline.core.log import say
from pipeline.sweep.grid import hydra_value
from pipeline.sweep.local import dvc

OUT_DIR = Path("artifacts") / "sweep"
METRICS = ("size_mb", "top1_agreement", "greedy_exact_match", "tokens_per_s", "passed")  # the report's columns


def _flatten(prefix: str, data: Any, out: dict[str, Any]) -> None:
    if isinstance(data, dict):
        for key, value in data.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), value, out)
    else:
        out[prefix] = data


def collect_points(exp_show: list[dict], cfg: SweepConfig, only: set[str] | None = None) -> list[dict[str, Any]]:
    """Turn ``dvc exp show --json`` into one row per finished experiment: grid values + metrics.

    Args:
        exp_show: The parsed output of ``dvc exp show --json``.
        cfg: The sweep (its grid keys name the columns, ``metrics_file`` the metrics).
        only: Experiment names to keep (a Ray sweep's points); ``None`` keeps every experiment.
    """
    rows = []
    for baseline in exp_show:
        for exp in baseline.get("experiments") or []:
            for rev in exp.get("revs", []):
                data = rev.get("data") or {}
                params: dict[str, Any] = {}
                _flatten("", (data.get("params") or {}).get("params.yaml", {}).get("data", {}), params)
                metrics_file = (data.get("metrics") or {}).get(cfg.metrics_file, {}).get("data")
                if not metrics_file or rev.get("error") or (only is not None and rev.get("name") not in only):
                    continue
                rows.append(
                    {
                        "experiment": rev.get("name") or rev.get("rev", "")[:7],
                        **{k: params.get(k) for k in cfg.grid},
                        **{m: metrics_file.get(m) for m in (*METRICS, "problems")},
                    }
                )
    return rows


def pareto_front(rows: list[dict]) -> list[dict]:
    """Points no other point beats on both size (smaller) and top-1 agreement (higher); a point whose validation
    failed (``passed: false``) is on no front, whatever its numbers."""
    rows = [r for r in rows if r.get("passed") is not False]
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
    """The smallest point whose top-1 agreement meets ``budget`` (ties: higher agreement).

    A point whose validation failed (``passed: false``: a threshold, the exact-match or long-context check) is
    never recommended, however small and close it is.
    """
    ok = [
        r
        for r in rows
        if r.get("passed") is not False and r["top1_agreement"] is not None and r["top1_agreement"] >= budget
    ]
    return min(ok, key=lambda r: (r["size_mb"], -r["top1_agreement"])) if ok else None


def write_report(rows: list[dict], cfg: SweepConfig, out_dir: Path = OUT_DIR, failed: list[dict] | None = None) -> dict:
    """Write ``sweep.json``, ``report.md``, ``pareto.png`` and ``winner.yaml`` (when there is a winner).

    ``failed`` lists points whose experiment did not finish (``{"experiment", "error", <grid values>}``);
    they get their own section and never count for the front or the recommendation.
    """
    if not rows:
        fail("no finished sweep experiment found: run `aipc sweep` first, or check `dvc exp show`")
    front, winner = pareto_front(rows), recommend(rows, cfg.min_top1_agreement)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {
        "budget": {"min_top1_agreement": cfg.min_top1_agreement},
        "points": rows,
        "pareto": [r["experiment"] for r in front],
        "recommended": winner,
        "failed": failed or [],
        "failed_validation": [r["experiment"] for r in rows if r.get("passed") is False],
    }
    write_json_atomic(out_dir / "sweep.json", result)
    cols = ["experiment", *cfg.grid, *METRICS]
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
        lines.append("| " + " | ".join(str(row.get(c)) for c in cols) + f" | {mark} |")
    if winner:
        overrides = " ".join(f"-S {k}={hydra_value(winner[k])}" for k in cfg.grid)
        lines += [
            "",
            f"**Recommended:** `{winner['experiment']}` ({winner['size_mb']} MB, top-1 "
            f"{winner['top1_agreement']}). Promote it: `dvc exp apply {winner['experiment']}` or "
            f"`aipc compose {overrides.replace('-S ', '')}`; overrides in `winner.yaml`.",
        ]
        (out_dir / "winner.yaml").write_text(
            "".join(f"{k}: {json.dumps(winner[k])}\n" for k in cfg.grid), encoding="utf-8"
        )
    else:
        lines += ["", f"**No point meets the budget** (top-1 >= {cfg.min_top1_agreement})."]
    for row in (r for r in rows if r.get("passed") is False):
        values = ", ".join(f"{k}={row.get(k)}" for k in cfg.grid)
        lines.append(
            f"- **failed validation:** `{row['experiment']}` ({values}): {'; '.join(row.get('problems') or [])}"
        )
    for point in failed or []:
        values = ", ".join(f"{k}={point.get(k)}" for k in cfg.grid)
        lines.append(f"- **failed:** `{point['experiment']}` ({values}): {point['error']}")
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


def report(
    cfg: SweepConfig, out_dir: Path = OUT_DIR, only: set[str] | None = None, failed: list[dict] | None = None
) -> dict:
    """Read the experiments from ``dvc exp show --json`` (all, or the names in ``only``) and write the report."""
    shown = dvc("exp", "show", "--json", "--hide-queued", capture=True)
    return write_report(collect_points(json.loads(shown.stdout), cfg, only), cfg, out_dir, failed)
