"""Stage ``report``: one table of every artifact x device, and plots, from ``artifacts/metrics/*.json``.

Reads the metrics file of every artifact configured in ``params.yaml`` and writes ``artifacts/report/``:
``report.md`` (a row per matrix cell: status (a failed fidelity: costly or broken), the device that ran, size,
speed, peak RSS, fidelity, and the reason or the problems), ``cells.json`` (the same rows for ``dvc plots
show``), ``summary.json`` (cell counts, a DVC metric) and three plots (pipeline/validation/plots.py). An artifact
without a metrics file gets a ``missing`` row saying what to run. The ``verdict`` stage (``--verdict``) runs
after the report and fails ``dvc repro`` with one line naming the failed cells.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.artifacts import ARTIFACTS, staged_dir, write_json_atomic
from pipeline.core.config import PipelineConfig, load_params
from pipeline.core.errors import fail, run_main
from pipeline.core.log import say
from pipeline.core.registry import FAMILIES

METRICS_DIR = ARTIFACTS / "metrics"
# where a cell ran and how fast: the first numbers of every table of cells
SPEED_KEYS = ("device_executed", "load_s", "ttft_ms", "tpot_ms", "tokens_per_s", "peak_rss_mb")
OUT_DIR = ARTIFACTS / "report"
# how a cell ended: "refused" when its export refused this model (pipeline.core.refusal), "missing" with no metrics
STATUSES = ("passed", "failed", "skipped", "missing", "refused")
PLOTS = {"size_vs_fidelity": "size vs fidelity", "speed_vs_fidelity": "speed vs fidelity", "tokens_per_s": "tokens/s"}


@dataclass
class Row:
    """One matrix cell as the report shows it."""

    artifact: str
    cell: str
    status: str
    data: dict[str, Any]
    size_mb: float | None = None

    @property
    def long_context_min_top1(self) -> float | None:
        """The lowest top-1 agreement over the long-context position ranges (``None`` when not measured)."""
        ranges = self.data.get("long_context") or []
        return min(r["top1_agreement"] for r in ranges) if ranges else None

    @property
    def ran(self) -> bool:
        """Whether this cell executed and has numbers (a cell that could not run has none)."""
        return self.status in ("passed", "failed") and self.data.get("top1_agreement") is not None

    def flat(self) -> dict[str, Any]:
        """The row for ``cells.json`` (``dvc plots``): identifiers and the numbers."""
        keys = (
            *SPEED_KEYS,
            "top1_agreement",
            "mean_kl",
            "perplexity_delta_pct",
            "greedy_exact_match",
            "greedy_exact_match_f32",
            "greedy_numerics",
            "device_top1_agreement",
            "device_mean_kl",
            "drift_top1_agreement",
            "drift_mean_kl",
        )
        numerics = (self.data.get("device_numerics") or {}).get("label")
        return {
            "profile": self.data.get("profile"),
            "device_numerics": numerics,
            "long_context_min_top1": self.long_context_min_top1,
            "cell": f"{self.artifact} @ {self.cell}",
            "artifact": self.artifact,
            "device": self.cell,
            "status": self.status,
            "size_mb": self.size_mb,
            **{k: self.data.get(k) for k in keys},
        }


def configured_artifacts(params: PipelineConfig) -> list[tuple[str, str]]:
    """(artifact name, DVC stage) for every configured variant, in pipeline order."""
    return [
        (family.artifact(variant), f"{family.validate_stage}@{variant}")
        for family in FAMILIES.values()
        for variant in getattr(params, family.name)
    ]


def collect_rows(artifacts: list[tuple[str, str]], metrics_dir: Path) -> list[Row]:
    """One row per cell of every configured artifact (a ``missing`` row where no metrics file exists or reads)."""
    rows = []
    for artifact, stage in artifacts:
        path = Path(metrics_dir) / f"{artifact}.json"
        if not path.is_file():
            rows.append(Row(artifact, "-", "missing", {"note": f"no {path}: run `dvc repro {stage}`"}))
            continue
        try:  # a damaged file gets a row that says so, and the report goes on
            record = json.loads(path.read_text(encoding="utf-8"))
            cells = [(column, cell, cell["status"]) for column, cell in record["cells"].items()]
        except (ValueError, OSError, KeyError, TypeError, AttributeError) as err:
            old = isinstance(err, KeyError) and err.args == ("cells",)
            why = "predates the matrix" if old else f"cannot be read ({type(err).__name__}: {err})"
            rows.append(Row(artifact, "-", "missing", {"note": f"{path} {why}: run `dvc repro {stage}`"}))
            continue
        for column, cell, status in cells:
            rows.append(Row(artifact, column, status, cell, record.get("size_mb")))
    return rows


def status_text(status: str, data: dict[str, Any]) -> str:
    """The status word, with a failed fidelity's kind: ``failed (costly)`` or ``failed (broken)`` (recipe_cost.py)."""
    kind = (data.get("recipe_cost") or {}).get("verdict") if status == "failed" else None
    return f"{status} ({kind})" if kind else status


def _num(value: Any, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def row_note(row: Row) -> str:
    """Why a cell was skipped or failed, or what it stands in for."""
    if row.status == "skipped":
        return row.data.get("reason") or ""
    if row.status == "refused":  # the export refused this model: why, and how to leave the variant out
        return f"{row.data.get('reason') or 'refused at export'}; leave it out: `{row.data.get('leave_out') or '...'}`"
    parts = [f"stands in for the absent {row.data['stand_in_for']}"] if row.data.get("stand_in_for") else []
    numerics = row.data.get("artifact_numerics") or {}
    if numerics.get("judged_as"):  # a runtime that cannot run at f32: the f32 columns hold what it ran
        parts.append(f"fidelity columns at {numerics['label']}")
    if row.status == "failed":  # a failed fidelity's kind first (costly or broken: recipe_cost.py)
        explanation = (row.data.get("recipe_cost") or {}).get("explanation")
        parts += ([explanation] if explanation else []) + (row.data.get("problems") or [])
    parts += [row.data["speed_not_measured"]] if row.data.get("speed_not_measured") else []
    parts += row.data.get("divergence_notes") or []
    return "; ".join(parts + [row.data.get("note") or ""]).strip("; ")


def exact_match(data: dict[str, Any]) -> str:
    """Greedy exact match at pinned f32 and at the numerics users get by default (a cell that forces a precision:
    that one), e.g. ``1.00 / 0.33``; a family that measures one figure shows it alone."""
    default = _num(data.get("greedy_exact_match"), ".2f")
    f32 = data.get("greedy_exact_match_f32")
    if f32 is None and data.get("greedy_numerics"):  # one figure, not at f32: say what it ran at
        return f"{default} (at {data['greedy_numerics']})"
    return default if f32 is None else f"{f32:.2f} / {default}"


def markdown_table(rows: list[Row]) -> str:
    """The artifact x device table (Markdown); one TTFT column per configured prompt length."""
    prompts: dict[str, dict[str, Any]] = next((r.data["perf"] for r in rows if r.ran and r.data.get("perf")), {})

    ttft_cols = [f"TTFT ms ({p['prompt_tokens']} tok)" for p in prompts.values()]
    head = [
        "artifact",
        "device",
        "status",
        "profile",
        "ran on",
        "size MB",
        "load s",
        *ttft_cols,
        "TPOT ms",
        "tokens/s",
        "peak RSS MB",
        "top-1 (f32)",
        "mean KL (f32)",
        "ppl Δ %",
        "long ctx top-1",
        "device numerics",
        "top-1 (device)",
        "mean KL (device)",
        "exact match (f32 / default)",
        "note",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        d = row.data
        ttft = [_num((d.get("perf") or {}).get(name, {}).get("ttft_ms"), ".1f") for name in prompts]
        cells = [
            row.artifact,
            row.cell,
            f"**{status_text(row.status, d)}**" if row.status in ("failed", "refused") else row.status,
            d.get("profile") or "–",
            d.get("device_executed") or "–",
            _num(row.size_mb, ".1f"),
            _num(d.get("load_s"), ".2f"),
            *ttft,
            _num(d.get("tpot_ms"), ".2f"),
            _num(d.get("tokens_per_s"), ".0f"),
            _num(d.get("peak_rss_mb"), ".0f"),
            _num(d.get("top1_agreement"), ".3f"),
            _num(d.get("mean_kl"), ".2g"),
            _num(d.get("perplexity_delta_pct"), "+.2f"),
            _num(row.long_context_min_top1, ".3f"),
            (d.get("device_numerics") or {}).get("label") or "–",
            _num(d.get("device_top1_agreement"), ".3f"),
            _num(d.get("device_mean_kl"), ".2g"),
            exact_match(d),
            row_note(row).replace("|", "/"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(rows: list[Row]) -> dict[str, int]:
    """Cell counts by status (a DVC metric: a change shows in `dvc metrics diff`)."""
    counts = {s: 0 for s in STATUSES}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    return counts


def counts_text(counts: dict[str, int]) -> str:
    """``12 cells passed, 1 failed, 15 skipped (device absent), 0 missing[, 1 refused at export]``."""
    refused = f", {counts['refused']} refused at export" if counts.get("refused") else ""
    return (
        f"{counts['passed']} cells passed, {counts['failed']} failed, {counts['skipped']} skipped "
        f"(device absent), {counts['missing']} missing{refused}"
    )


def first_problem(row: Row) -> str:
    """A failed cell's first problem, after the kind of a failed fidelity: ``costly: artifact fidelity ...``."""
    kind = f"{(row.data.get('recipe_cost') or {}).get('verdict')}: " if row.data.get("recipe_cost") else ""
    return kind + (row.data.get("problems") or ["failed"])[0]


def verdict_line(rows: list[Row]) -> str | None:
    """One line naming every failed cell and its first problem, and every refused export, or ``None`` when none."""
    failed = [r for r in rows if r.status == "failed"]
    refused = [r for r in rows if r.status == "refused"]
    if not failed and not refused:
        return None
    parts = []
    if failed:
        names = "; ".join(f"{r.artifact} @ {r.cell} ({first_problem(r)})" for r in failed)
        parts.append(f"{len(failed)} of {len(rows)} validation cells failed: {names}")
    if refused:
        names = "; ".join(f"{r.artifact} ({r.data.get('reason') or 'refused'})" for r in refused)
        leave = " / ".join(f"`{r.data['leave_out']}`" for r in refused if r.data.get("leave_out"))
        parts.append(
            f"{len(refused)} export(s) refused this model: {names}" + (f"; leave out with {leave}" if leave else "")
        )
    return "; ".join(parts) + "; see artifacts/report/report.md"


def verdict(params: PipelineConfig, metrics_dir: Path = METRICS_DIR) -> None:
    """Fail with one line if any validation cell failed (the ``verdict`` stage, after the report is written)."""
    line = verdict_line(collect_rows(configured_artifacts(params), metrics_dir))
    if line:
        fail(line)
    say("verdict: every validation cell that ran passed")


def run(params: PipelineConfig, metrics_dir: Path = METRICS_DIR, out_dir: Path = OUT_DIR) -> dict[str, int]:
    """Write ``out_dir`` (report.md, cells.json, summary.json, two PNGs) from the metrics of the configured artifacts."""
    rows = collect_rows(configured_artifacts(params), metrics_dir)
    counts = summary(rows)
    with staged_dir(out_dir) as tmp:
        text = [
            "# Validation report",
            "",
            counts_text(counts) + ". Speed: warm-up excluded, median of repeats; "
            "fidelity against the PyTorch original on held-out text. Profile: the validate.profile that gave the verdict "
            "(quick: CPU stand-ins skip their speed runs; `aipc publish` needs full).",
            "",
            markdown_table(rows),
            "",
            *(line for name, title in PLOTS.items() for line in (f"![{title}]({name}.png)", "")),
        ]
        (tmp / "report.md").write_text("\n".join(text), encoding="utf-8")
        write_json_atomic(tmp / "cells.json", [r.flat() for r in rows if r.ran])
        write_json_atomic(tmp / "summary.json", {"cells": counts})
        from pipeline.validation import plots  # it draws report rows: imported here, not at the top (a cycle)

        for name in PLOTS:
            getattr(plots, f"plot_{name}")(rows, tmp / f"{name}.png")
    say(f"report: {out_dir / 'report.md'} ({counts_text(counts)})")
    return counts


def main(argv: list[str] | None = None) -> None:
    """DVC entry points: ``python -m pipeline.validation.report`` (the report) and ``--verdict`` (fail if a cell failed)."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verdict", action="store_true", help="exit non-zero with one line if any cell failed")
    args = parser.parse_args(argv)
    if args.verdict:
        verdict(load_params())
    else:
        run(load_params())


if __name__ == "__main__":
    run_main(main)
