"""The answer at a glance: one line per artifact, then which artifact to run on each device (``aipc recommend``).

``report.md`` keeps every cell (artifact x device x numerics, about 30 rows and 20 columns). People come with one
question: what do I run on my laptop's CPU, GPU or NPU, and how good is it? This module answers it from the same
rows (:func:`pipeline.validation.report.collect_rows`), in at most ``3 + artifacts + devices`` lines.

How a cell ran is said in words, never left to a status: ``on CPU`` (the target device itself), ``NPU pipeline
on CPU (NPUW)`` (the NPU code path with a CPU backend: the NPU compiler was not exercised), ``CPU stand-in for
DML`` (the same files on the CPU because the target is absent). The numerics-emulation cells (``CPU bf16
compute``) are checks on an artifact, not places to run it, so they count towards its verdict but are not shown.

The recommendation for a device comes from the artifacts whose cells all passed (each within its precision's
fidelity limits) and that target it: the fastest of those measured on the device itself; where none ran there,
the NPU pipeline on CPU before CPU stand-ins, and the smallest of them (decode on these devices is bound by the
bytes read per token, and a CPU's speed says little of another device's). Such a choice is a candidate, not a
measured answer, and its line says so.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pipeline.validation.report import Row, counts_text, status_text, summary

DEVICES = ("CPU", "GPU", "NPU", "DML")  # the targets a recommendation is given for, in this order
EMULATION_MARK = " compute"  # "CPU bf16 compute": a numerics-emulation cell, not a device to run on


@dataclass(frozen=True)
class Placement:
    """One cell seen as an answer: which artifact, for which device, where it really ran, and how it went."""

    artifact: str
    target: str
    where: str
    real: bool
    row: Row


def placement(row: Row) -> Placement:
    """Where ``row``'s cell ran, in words; ``real`` when it ran on its target device itself."""
    d = row.data
    executed = str(d.get("device_executed") or "")
    if d.get("stand_in_for"):
        return Placement(
            row.artifact, str(d["stand_in_for"]), f"{executed or 'CPU'} stand-in for {d['stand_in_for']}", False, row
        )
    if "NPUW" in executed:
        return Placement(row.artifact, row.cell, "NPU pipeline on CPU (NPUW)", False, row)
    return Placement(row.artifact, row.cell, f"on {executed or row.cell}", executed == row.cell, row)


def group_by_artifact(rows: list[Row]) -> dict[str, list[Row]]:
    """The cells of each artifact, artifacts in the rows' (pipeline) order."""
    grouped: dict[str, list[Row]] = {}
    for row in rows:
        grouped.setdefault(row.artifact, []).append(row)
    return grouped


def artifact_verdict(rows: list[Row]) -> str:
    """``refused`` or ``failed`` if any cell was, ``passed`` if one ran and none failed, else ``skipped`` or ``missing``."""
    statuses = {r.status for r in rows}
    for status in ("refused", "failed", "passed", "missing"):
        if status in statuses:
            return status
    return "skipped"


def _shown(rows: list[Row]) -> Placement | None:
    """The cell an artifact's line shows: one that ran, on the real device first, emulation cells last."""
    ran = [r for r in rows if r.ran]
    ran.sort(key=lambda r: (EMULATION_MARK in r.cell, not placement(r).real, r.status != "failed"))
    return placement(ran[0]) if ran else None


def _figure(value: object, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def artifact_lines(rows: list[Row]) -> list[str]:
    """One line per artifact: verdict, where it ran, artifact fidelity (top-1), speed, size; or why it did not run."""
    by_artifact = group_by_artifact(rows)
    width = max((len(a) for a in by_artifact), default=8)
    kinds = [str(k) for r in rows if r.status == "failed" and (k := (r.data.get("recipe_cost") or {}).get("verdict"))]
    vw = 7 + max((len(k) + 3 for k in kinds), default=0)  # "failed (costly)": a failed fidelity's kind
    lines = [f"{'artifact':<{width}}  {'verdict':<{vw}}  {'top-1':>5}  {'tok/s':>6}  {'MB':>6}  where it ran"]
    not_run: dict[tuple[str, str], list[str]] = {}  # artifacts that did not run, one line per verdict and reason
    for artifact, cells in by_artifact.items():
        verdict, shown = artifact_verdict(cells), _shown(cells)
        if verdict == "refused":
            refusal = cells[0].data
            lines.append(
                f"{artifact}: refused at export ({refusal.get('reason')}); leave it out: {refusal.get('leave_out')}"
            )
            continue
        if shown is None:
            reason = next((c.data.get("reason") or c.data.get("note") for c in cells if c.data), "") or ""
            not_run.setdefault((verdict, reason), []).append(artifact)
            continue
        d = shown.row.data
        word = status_text(verdict, d if shown.row.status == verdict else {})
        lines.append(
            f"{artifact:<{width}}  {word:<{vw}}  {_figure(d.get('top1_agreement'), '.3f'):>5}  "
            f"{_figure(d.get('tokens_per_s'), '.0f'):>6}  {_figure(shown.row.size_mb, '.1f'):>6}  {shown.where}"
        )
    for (verdict, reason), artifacts in not_run.items():
        lines.append(f"{', '.join(artifacts)}: {verdict}, not run here ({reason})")
    return lines


def _preference(p: Placement) -> tuple[int, float]:
    """Sort key: the real device first, then the NPU pipeline on CPU, then stand-ins; fastest, else smallest."""
    if p.real:  # measured where it will run: the fastest of those that passed
        return 0, -float(p.row.data.get("tokens_per_s") or 0)
    return (1 if "NPUW" in p.where else 2), float(p.row.size_mb or 0)  # CPU speed says little of the target


def _why_nothing(rows: list[Row], by_artifact: dict[str, list[Row]], device: str) -> str:
    """`` (failed: a; not run here: b, c)`` for the artifacts that target ``device``; empty when none does."""
    targeting = {r.artifact for r in rows if r.cell == device}
    failed = sorted(a for a in targeting if artifact_verdict(by_artifact[a]) == "failed")
    idle = sorted({r.artifact for r in rows if r.cell == device and not r.ran} - set(failed))
    said = [f"{label}: {', '.join(names)}" for label, names in (("failed", failed), ("not run here", idle)) if names]
    return f" ({'; '.join(said)})" if said else ""


def recommend(rows: list[Row], devices: Iterable[str] = DEVICES) -> dict[str, str]:
    """For each device, the artifact to run there and why, in one line each (see the module docstring)."""
    by_artifact = group_by_artifact(rows)
    clean = {a for a, cells in by_artifact.items() if artifact_verdict(cells) == "passed"}
    answers: dict[str, str] = {}
    for device in devices:
        options = [
            placement(r) for r in rows if r.artifact in clean and r.status == "passed" and EMULATION_MARK not in r.cell
        ]
        options = [p for p in options if p.target == device]
        if not options:
            answers[device] = f"nothing passed for {device}" + _why_nothing(rows, by_artifact, device)
            continue
        best = min(options, key=_preference)
        d = best.row.data
        facts = f"top-1 {_figure(d.get('top1_agreement'), '.3f')}, {_figure(best.row.size_mb, '.1f')} MB"
        if best.real:
            answers[device] = f"{best.artifact} ({facts}, {_figure(d.get('tokens_per_s'), '.0f')} tok/s on {device})"
        else:
            answers[device] = f"{best.artifact} ({facts}; candidate: {best.where}, not run on a real {device} here)"
    return answers


def console_summary(rows: list[Row], report_path: str) -> str:
    """What ``aipc demo`` and ``aipc repro`` print at the end: counts, one line per artifact, the answer, the path."""
    head = counts_text(summary(rows))
    profiles = sorted({str(r.data["profile"]) for r in rows if r.data.get("profile")})  # validate.profile, per verdict
    if profiles:
        head += f"; profile {', '.join(profiles)}" + (" (`aipc publish` needs full)" if "quick" in profiles else "")
    answers = recommend(rows, [d for d in DEVICES if any(r.cell == d for r in rows)])
    recommendation = [f"Run on {device}: {answer}" for device, answer in answers.items()]
    return "\n".join([head, *artifact_lines(rows), *recommendation, f"Full table: {report_path}"])
