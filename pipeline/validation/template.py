"""What a validating family supplies, and the one validation skeleton every family runs (issue 31).

Every validate stage is the same steps: plan the cells (the artifact's target devices present here, those that fit
this machine's RAM), start the time estimate, measure each cell that runs, judge it against the reference, let
the family add what is its own (OpenVINO's answers at pinned f32, its emulation cells; Windows ML's compiled-model
cache), weigh a failed fidelity against the recipe's own cost, and write the metrics. :func:`validate` owns those
steps; a family supplies a :class:`Validator`: its plan, how it measures one cell, and the few hooks it needs
(:class:`ValidatorSteps` gives the common defaults). The export side is :mod:`pipeline.core.family`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pipeline.core import eta
from pipeline.core.config import ValidateConfig
from pipeline.core.manifest import read_manifest
from pipeline.core.registry import FAMILIES
from pipeline.core.workspace import Workspace
from pipeline.validation import matrix, recipe_cost, records, speed
from pipeline.validation.evidence import Evidence, verdicts_for


@dataclass
class ValidationJob:
    """One artifact's validation as it goes through the steps."""

    family: str  # the registry name: metrics family, ``<family>-<name>.json``, the validate stage
    name: str  # the variant
    folder: Path  # the artifact
    cfg: ValidateConfig
    ws: Workspace
    manifest: dict[str, Any]  # the artifact's (verified before the stage loads anything)
    weight_format: str | None  # what its thresholds are chosen by
    artifact: str = ""  # its name in metrics and reports (default ``<family>-<name>``: ``onnx-cpu_int4``)
    row: str | None = None  # the time estimate's row (default: the weight format)
    later: list[Any] = field(default_factory=list)  # cells planned outside the loop (the estimate counts them)
    facts: dict[str, Any] = field(default_factory=dict)  # what a step hands a later one

    def __post_init__(self) -> None:
        self.artifact = self.artifact or f"{self.family}-{self.name}"

    @cached_property
    def evidence(self) -> Evidence:
        """The reference and its log-probs, read when a cell first needs them (skipped cells never do)."""
        return Evidence.load(self.ws.reference_path)

    @cached_property
    def verdicts(self) -> matrix.Verdicts:
        """Every threshold a cell of this artifact is held to."""
        return verdicts_for(self.cfg, self.weight_format or "int4")


class NotRun(Exception):
    """No cell of this artifact is measured (not built here, or its files contradict themselves): these are its
    metrics. ``cells`` are published like measured ones; ``record``, a whole record, as it is."""

    def __init__(self, cells: dict[str, matrix.Cell] | None = None, record: records.MetricsRecord | None = None):
        super().__init__("not run")
        self.cells, self.record = cells or {}, record


@runtime_checkable
class Validator(Protocol):
    """One family's validation steps; :func:`validate` runs them."""

    @property
    def family(self) -> str:
        """The registry name (``npu`` for the NPU IR, which OpenVINO's validator serves)."""
        ...

    def kind(self, job: ValidationJob) -> str:
        """What the artifact is, in its cells' labels."""
        ...

    @property
    def cell_errors(self) -> tuple[type[Exception], ...]:
        """What :meth:`measure` raises when the runtime cannot run the artifact: a failed cell, not a crash."""
        ...

    def weight_format(self, manifest: dict[str, Any]) -> str | None:
        """The weight format the artifact is judged at, from its manifest."""
        ...

    def plan(self, job: ValidationJob) -> list[matrix.CellPlan]:
        """The cells: target devices present here, those that fit this machine's RAM (raise :class:`NotRun`)."""
        ...

    def measure(self, job: ValidationJob, plan: matrix.CellPlan) -> matrix.Measurement:
        """Run one cell."""
        ...

    def judge(self, job: ValidationJob, plan: matrix.CellPlan, got: matrix.Measurement) -> matrix.Cell:
        """Turn one cell's measurement into a passed or failed cell (:func:`judge_cell`, plus the family's own)."""
        ...

    def running(self, job: ValidationJob) -> contextlib.AbstractContextManager[Any]:
        """What holds while the cells run (OpenVINO hands mapped weight pages back)."""
        ...

    def finish(self, job: ValidationJob, cells: dict[str, matrix.Cell]) -> None:
        """After every planned cell: the family's cross-cell checks and extra cells."""
        ...

    def recipe(self, job: ValidationJob) -> tuple[str, dict[str, Any], str]:
        """Whose recipe a failed fidelity is weighed against: (family, manifest, params key)."""
        ...


def judge_cell(job: ValidationJob, plan: matrix.CellPlan, got: matrix.Measurement, kind: str) -> matrix.Cell:
    """The common verdict: the reference and the artifact's thresholds, and why a stand-in measured no speed."""
    cell = matrix.judge(plan, got, job.evidence.reference, job.verdicts, kind)
    cell.speed_not_measured = speed.not_measured(plan.stand_in_for, job.cfg)
    return cell


class ValidatorSteps:
    """The defaults of the optional steps; a family's validator inherits them and supplies the rest."""

    cell_errors: tuple[type[Exception], ...] = ()  # none: whatever a measurement raises stops the stage

    def judge(self, job: ValidationJob, plan: matrix.CellPlan, got: matrix.Measurement) -> matrix.Cell:
        """:func:`judge_cell`."""
        return judge_cell(job, plan, got, self.kind(job))

    def kind(self, job: ValidationJob) -> str:
        """The registry's kind of the family (``OpenVINO IR``)."""
        return FAMILIES[job.family].kind

    def running(self, job: ValidationJob) -> contextlib.AbstractContextManager[Any]:
        """Nothing held while the cells run."""
        return contextlib.nullcontext()

    def finish(self, job: ValidationJob, cells: dict[str, matrix.Cell]) -> None:
        """No cross-cell checks."""

    def recipe(self, job: ValidationJob) -> tuple[str, dict[str, Any], str]:
        """The artifact's own recipe, under ``<family>.<variant>``."""
        return job.family, job.manifest, f"{job.family}.{job.name}"


def fit_ram(
    plans: list[matrix.CellPlan], job: ValidationJob, stage: str, which: Callable[[matrix.CellPlan], bool]
) -> None:
    """Skip, with the line that says so, each cell ``which`` selects whose measured RAM row does not fit here
    (a target cell that cannot fit stops the stage instead: :func:`pipeline.core.resources.fit_cell_ram`)."""
    from pipeline.core.resources import fit_cell_ram

    for plan in plans:
        if not plan.skip_reason and which(plan):
            stand_in = bool(plan.stand_in_for)
            plan.skip_reason = fit_cell_ram(stage, job.row or "", job.folder, stand_in, job.cfg.stand_in_max_ram_gib)


def validate(
    validator: Validator,
    name: str,
    cfg: ValidateConfig,
    ws: Workspace,
    folder: Path | None = None,
    artifact: str = "",
) -> dict[str, Any]:
    """Run ``validator``'s steps for variant ``name``: the one validation skeleton of every family.

    Args:
        validator: The family's steps.
        name: Variant name (the key under the family's section of params.yaml).
        cfg: The ``validate`` section.
        ws: Where the artifact (``ws.root(family) / name`` unless ``folder``), the reference and the metrics are.
        folder: The artifact, when it is not under ``ws.root(family)``.
        artifact: Its name in the metrics, when it is not ``<family>-<name>``.

    Returns:
        The metrics written to ``ws.metrics_dir / "<family>-<name>.json"``.
    """
    folder = folder if folder is not None else ws.root(validator.family) / name
    manifest = read_manifest(folder)
    job = ValidationJob(validator.family, name, folder, cfg, ws, manifest, validator.weight_format(manifest), artifact)
    try:
        plans = validator.plan(job)
    except NotRun as nothing:
        if nothing.record is not None:
            return records.publish(nothing.record, ws.metrics_dir / f"{job.artifact}.json")
        return publish(job, nothing.cells)
    stage = f"{FAMILIES[job.family].validate_stage}@{name}"
    row = job.row or job.weight_format
    eta.start(stage, job.artifact, [*plans, *job.later], ws.model_dir, row, cfg.measures_stand_in_speed)
    cells: dict[str, matrix.Cell] = {}
    with validator.running(job):
        for plan in plans:
            cells[plan.column] = run_cell(validator, job, plan)
        validator.finish(job, cells)
    if any(recipe_cost.fidelity_failed(c) for c in cells.values()):  # else nothing to weigh (nor to read)
        family, manifest, key = validator.recipe(job)
        recipe_cost.attach(cells, family, manifest, key, ws.model_dir, job.evidence)
    return publish(job, cells)


def run_cell(validator: Validator, job: ValidationJob, plan: matrix.CellPlan) -> matrix.Cell:
    """One planned cell: skipped with its reason, failed with the runtime's line, or measured and judged."""
    if plan.skip_reason:
        return matrix.skipped_cell(plan, validator.kind(job))
    try:
        got = validator.measure(job, plan)
    except validator.cell_errors as err:  # could not run (or nowhere to run it): failed, with why
        cell = matrix.failed_cell(plan, validator.kind(job), str(err))
    else:
        cell = validator.judge(job, plan, got)
    eta.finish(plan.column)
    return cell


def publish(job: ValidationJob, cells: dict[str, matrix.Cell]) -> dict[str, Any]:
    """Write the artifact's metrics (:func:`pipeline.validation.records.publish_cells`)."""
    fmt, cfg = job.weight_format, job.cfg
    thresholds = cfg.thresholds(fmt or "int4")
    return records.publish_cells(
        job.artifact, job.family, fmt, job.folder, thresholds, cells, job.ws.metrics_dir, cfg.profile
    )
