"""The validation matrix: every artifact x every device it targets, one :class:`Cell` each.

A validator asks :func:`plan_cells` which of its target devices exist here. A present device becomes a
cell that runs; an absent one a ``skipped`` cell with the reason :mod:`pipeline.validation.devices` gives. When no
target device is present, one more cell runs the same files on CPU and is labelled as a stand-in for the
absent device (``validate.cpu_stand_in``): it proves the artifact loads and matches the original, never
that it runs on its device. :func:`judge` turns a cell's measurements into ``passed``/``failed``: fidelity
below its precision's thresholds, a different tokenization, or a device other than the one asked for
(a silent fallback) fails it. :class:`MetricsRecord` is the one metrics-file format of every validator.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.validation.devices import DeviceStatus, executed_device

# Answers compared up to the model's end token; the families call them through this module.
from pipeline.validation.prompts import divergence_notes, greedy_match
from pipeline.validation.prompts import first_divergence as first_divergence

# A cell's speed figures live beside the rule for cells that measure none (stand-ins outside validate.profile=full).
from pipeline.validation.speed import Perf as Perf

STAND_IN = "CPU stand-in"  # column of the cell that runs on CPU because no target device is present


@dataclass
class CellPlan:
    """One cell to fill: the column it belongs to, the device to run on, or why it is skipped."""

    column: str
    device: str
    stand_in_for: str | None = None
    skip_reason: str | None = None
    note: str | None = None
    backend: str | None = None  # NPU cell run through NPUW on this device (no NPU here): what must execute


def plan_cells(targets: list[str], status: dict[str, DeviceStatus], cpu_stand_in: bool) -> list[CellPlan]:
    """Cells for an artifact that targets ``targets``, given which devices are present here.

    Args:
        targets: Target devices in config order, e.g. ``["CPU", "GPU"]`` or ``["NPU"]``.
        status: Device name -> status (absent names count as absent, with a generic reason).
        cpu_stand_in: Add a labelled CPU cell when none of the targets is present.

    Returns:
        One plan per target (skipped ones carry the reason), plus the stand-in when it applies.
    """
    plans = []
    for device in targets:
        state = status.get(device) or DeviceStatus(device, False, reason=f"no {device} runtime known here")
        plans.append(
            CellPlan(device, device) if state.available else CellPlan(device, device, skip_reason=state.reason)
        )
    absent = [p for p in plans if p.skip_reason]
    if cpu_stand_in and len(absent) == len(plans) and "CPU" not in targets:
        note = "; ".join(f"no {p.column}: {p.skip_reason}" for p in absent)
        plans.append(CellPlan(STAND_IN, "CPU", stand_in_for=", ".join(p.column for p in absent), note=note))
    return plans


@dataclass
class Measurement:
    """What a backend measured for one cell, before judging."""

    executed: str
    load_s: float
    peak_rss_mb: float
    perf: dict[str, Perf]
    fidelity: dict[str, float]
    outputs: list[list[int]]
    tokenizer_matches_reference: bool
    sample: str
    fidelity_device: str | None = None
    note: str | None = None
    artifact_numerics: dict[str, Any] | None = None  # what the pinned (artifact fidelity) run computed with
    device_fidelity: dict[str, float] | None = None  # against PyTorch, at the device's own numerics
    device_numerics: dict[str, Any] | None = None  # what that run computed with (read back)
    drift: dict[str, float] | None = None  # device-numerics run against the pinned run
    long_context: list[dict[str, Any]] | None = None  # artifact fidelity per long window and position range


@dataclass
class Cell:
    """One artifact on one device: ``passed``, ``failed`` (its problems) or ``skipped`` (``reason``: why; for a CPU
    stand-in, why its target device did not run)."""

    column: str
    device_requested: str
    status: str
    label: str
    device_executed: str | None = None
    stand_in_for: str | None = None
    reason: str | None = None
    problems: list[str] = field(default_factory=list)
    load_s: float | None = None
    peak_rss_mb: float | None = None
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    tokens_per_s: float | None = None
    perf: dict[str, dict[str, Any]] = field(default_factory=dict)
    top1_agreement: float | None = None
    mean_kl: float | None = None
    max_kl: float | None = None
    perplexity: float | None = None
    reference_perplexity: float | None = None
    perplexity_delta_pct: float | None = None
    greedy_exact_match: float | None = None
    first_divergence: list[int | None] = field(default_factory=list)
    divergence_notes: list[str] = field(default_factory=list)  # how close PyTorch's own choice was (near ties)
    greedy_numerics: str | None = None  # what greedy_exact_match ran at: the defaults, or a forced precision
    greedy_exact_match_f32: float | None = None  # the same prompts at pinned f32 (pipeline.openvino.answers)
    first_divergence_f32: list[int | None] = field(default_factory=list)
    tokenizer_matches_reference: bool | None = None
    fidelity_device: str | None = None
    artifact_numerics: dict[str, Any] | None = None
    device_numerics: dict[str, Any] | None = None
    device_top1_agreement: float | None = None
    device_mean_kl: float | None = None
    device_perplexity_delta_pct: float | None = None
    drift_top1_agreement: float | None = None
    drift_mean_kl: float | None = None
    long_context: list[dict[str, Any]] = field(default_factory=list)
    # Windows ML: the EP's compiled-model cache, first load (compiles) and second (reads it) (pipeline.winml.validate)
    compile_cache: dict[str, Any] | None = None
    speed_not_measured: str | None = None  # why ttft/tpot/tokens_per_s are null (pipeline.validation.speed)
    profile: str | None = None  # validate.profile of the run that gave this verdict (quick | full)
    recipe_cost: dict[str, Any] | None = None  # failed fidelity: costly or broken, against the recipe (recipe_cost.py)
    note: str | None = None
    sample: str | None = None


def skipped_cell(plan: CellPlan, kind: str) -> Cell:
    """A cell whose device is absent here, or that does not fit this machine's RAM (its reason says which)."""
    why = "not enough RAM here" if (plan.skip_reason or "").startswith("not run here") else f"no {plan.device} here"
    return Cell(plan.column, plan.device, "skipped", f"{kind}, skipped: {why}", reason=plan.skip_reason)


def failed_cell(plan: CellPlan, kind: str, reason: str) -> Cell:
    """A cell whose device is here but which could not run (the runtime refused the artifact): failed, with why."""
    return Cell(
        plan.column, plan.device, "failed", f"{kind} on {plan.device}, could not run", reason=reason, problems=[reason]
    )


@dataclass
class Thresholds:
    """The fidelity a cell must reach for its precision (``validate.min_top1_agreement``, ``validate.max_mean_kl``)."""

    precision: str
    min_top1_agreement: float | None
    max_mean_kl: float | None

    def widened(self, drift: Thresholds) -> Thresholds:
        """These limits for a run below f32 with no f32 run to measure its drift against: top-1 ``a + d - 1`` (a run
        agreeing with f32 on ``d`` where f32 agrees with PyTorch on ``a``: the union bound); KL the two added."""
        top1 = self.min_top1_agreement
        if top1 is not None and drift.min_top1_agreement is not None:
            top1 = round(top1 + drift.min_top1_agreement - 1, 4)
        kl = self.max_mean_kl
        if kl is not None and drift.max_mean_kl is not None:
            kl = round(kl + drift.max_mean_kl, 6)
        return Thresholds(f"{self.precision} at {drift.precision}", top1, kl)

    def problems(self, fidelity: dict[str, float], what: str = "") -> list[str]:
        """One line per threshold the fidelity misses (``what`` prefixes each, e.g. ``positions 4096-6000: ``)."""
        out = []
        if self.min_top1_agreement is not None and (top1 := fidelity["top1_agreement"]) < self.min_top1_agreement:
            out.append(
                f"{what}top-1 agreement {top1:.3f} below the {self.precision} threshold {self.min_top1_agreement}"
            )
        if self.max_mean_kl is not None and (kl := fidelity["mean_kl"]) > self.max_mean_kl:
            out.append(f"{what}mean KL {kl:.4g} above the {self.precision} threshold {self.max_mean_kl}")
        return out


@dataclass
class Verdicts:
    """Every threshold a cell is held to: the artifact's (per weight format, pinned f32 runtime), the device
    numerics' (per compute precision, drift from the pinned run) and the long-context ranges' (per weight format)."""

    artifact: Thresholds
    device: dict[str, Thresholds] = field(default_factory=dict)
    long_context: Thresholds | None = None

    def problems(self, got: Measurement) -> list[str]:
        """Every threshold ``got`` misses, each line saying which figure it is."""
        numerics, limits = got.artifact_numerics or {}, self.artifact
        judged = numerics.get("judged_as")  # a runtime that cannot run at f32 (the NPU library): what ran
        if judged and judged != "f32" and judged in self.device:
            limits = self.artifact.widened(self.device[judged])
        what = f"{numerics['label']}, {limits.precision} limits" if judged else "f32 runtime"
        out = [f"artifact fidelity ({what}): {p}" for p in limits.problems(got.fidelity)]
        if got.device_numerics:
            out += self.drift_problems(got, f"device numerics ({got.device_numerics['label']})")
        if self.long_context is not None:
            for rng in got.long_context or []:
                where = f"long context, {rng['window']}-token window, positions {rng['start']}-{rng['stop']}: "
                out += self.long_context.problems(rng, where)
        return out

    def drift_problems(self, got: Measurement, what: str) -> list[str]:
        """The device-numerics thresholds of the compute precision that ran, against ``got``'s drift from f32."""
        limits = self.device.get((got.device_numerics or {}).get("compute", ""))
        if limits is None or not got.drift:
            return []
        return [f"{what} against the f32 run: {p}" for p in limits.problems(got.drift)]


def judge(plan: CellPlan, got: Measurement, reference: dict, thresholds: Thresholds | Verdicts, kind: str) -> Cell:
    """Turn one cell's measurements into a passed or failed :class:`Cell`."""
    exact, divergence = greedy_match(got.outputs, reference)
    verdicts = thresholds if isinstance(thresholds, Verdicts) else Verdicts(thresholds)
    problems = verdicts.problems(got)
    ok, executed = executed_device(plan.backend or plan.device, got.executed)
    if not ok:
        problems.append(f"asked for {plan.backend or plan.device} but ran on {executed} (silent fallback)")
    if not got.tokenizer_matches_reference:
        problems.append("the artifact's tokenizer tokenizes the prompts differently from the original tokenizer")
    label = f"{kind}, validated on {executed}"
    if plan.backend:
        executed = f"{executed} (NPUW)"
        label = f"{kind}, NPU pipeline (NPUW), {plan.backend} backend: NPU compiler not exercised"
    if plan.stand_in_for:
        label = f"{kind}, validated on {executed} (stand-in: no {plan.stand_in_for} here)"
    short = next(iter(got.perf.values()), None)  # None: no speed runs (a stand-in's, pipeline.validation.speed)
    speed: dict[str, Any] = {k: getattr(short, k) for k in ("ttft_ms", "tpot_ms", "tokens_per_s")} if short else {}
    figures: dict[str, Any] = {**got.fidelity, **numerics_fields(got)}  # Cell fields by name
    return Cell(
        plan.column,
        plan.device,
        "failed" if problems else "passed",
        label,
        executed,
        plan.stand_in_for,
        reason=plan.note,
        problems=problems,
        load_s=round(got.load_s, 4),
        peak_rss_mb=got.peak_rss_mb,
        perf={k: asdict(v) for k, v in got.perf.items()},
        greedy_exact_match=round(exact, 4),
        first_divergence=divergence,
        divergence_notes=divergence_notes(divergence, reference),
        greedy_numerics=library_label(got),  # OpenVINO's is set by its answers (pipeline.openvino.answers)
        tokenizer_matches_reference=got.tokenizer_matches_reference,
        fidelity_device=got.fidelity_device or executed,
        sample=got.sample[:200],
        note=got.note or (plan.note if plan.backend else None),
        **figures,
        **speed,
    )


def library_label(got: Measurement) -> str | None:
    """What a runtime that cannot run at f32 generated at (the NPU library's numerics), else None."""
    return (got.artifact_numerics or {}).get("label") if (got.artifact_numerics or {}).get("judged_as") else None


def numerics_fields(got: Measurement) -> dict[str, Any]:
    """The device-numerics and long-context fields of a cell."""
    device = got.device_fidelity or {}
    drift = got.drift or {}
    return {
        "artifact_numerics": got.artifact_numerics,
        "device_numerics": got.device_numerics,
        "device_top1_agreement": device.get("top1_agreement"),
        "device_mean_kl": device.get("mean_kl"),
        "device_perplexity_delta_pct": device.get("perplexity_delta_pct"),
        "drift_top1_agreement": drift.get("top1_agreement"),
        "drift_mean_kl": drift.get("mean_kl"),
        "long_context": got.long_context or [],
    }


def emulation_cell(column: str, label: str, got: Measurement, verdicts: Verdicts, mismatch: str | None = None) -> Cell:
    """A CPU cell that forces a target's compute precision: judged on its drift from the pinned f32 run.

    ``mismatch``: the precision that ran is not the one asked for (also the cell's note).
    """
    problems = verdicts.drift_problems(got, str((got.device_numerics or {}).get("label")))
    if mismatch:
        problems.append(mismatch)
    figures: dict[str, Any] = {**got.fidelity, **numerics_fields(got)}  # Cell fields by name
    return Cell(
        column,
        "CPU",
        "failed" if problems else "passed",
        label,
        got.executed,
        problems=problems,
        peak_rss_mb=got.peak_rss_mb,
        fidelity_device="CPU",
        note=got.note,
        **figures,
    )
