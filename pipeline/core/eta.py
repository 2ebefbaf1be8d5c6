"""Time estimates for the long stages: a line when a validation (or the reference) starts, one as each cell is done.

The estimate is a measured full-size row (:mod:`pipeline.core.durations`) scaled to this model: the stage's
start-up, plus each cell that will run here at its measured share of the stage, times this checkpoint's size over
the measured one (a validation's prefills and decoding grow with the parameter count, which the checkpoint's bytes
follow for a given dtype). As cells finish, the time left is what the estimate gives the cells still to run, times
the pace so far (the time elapsed over what the estimate gave the work done), so a faster machine, a busier one or
a longer first cell corrects the figure.

Plain lines through :func:`pipeline.core.log.say`, not a progress bar: DVC runs each stage with its output piped,
where a bar's carriage returns pile up (or nothing shows until the stage ends), and the stages already print one
line per step. A stage estimated under :data:`MIN_ETA_S` prints none: it is over about when a reader would look,
and at that size its time is start-up that the rows only know from a loaded tiny run (``aipc demo`` stays as it was).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.durations import FULL_SIZE_GIB, REFERENCE_STEPS, SOURCES, Row, stage_times
from pipeline.core.log import say, step

MIN_ETA_S = 60.0  # a stage estimated under a minute prints no estimate


@dataclass
class Estimate:
    """A stage's estimated time here: start-up plus each cell (or step), in run order, and the row it came from."""

    stage: str
    start_up_s: float
    units: dict[str, float]
    row_name: str
    row: Row
    note: str = ""

    @property
    def seconds(self) -> float:
        """The whole stage."""
        return self.start_up_s + sum(self.units.values())


def checkpoint_bytes(model_dir: Path) -> int:
    """Bytes of the checkpoint's weights (0 when there is none: the estimate is then the start-up alone)."""
    return sum(f.stat().st_size for f in Path(model_dir).glob("*.safetensors"))


def row_for(stage: str, variant: str) -> tuple[str, Row]:
    """The measured row of ``stage@variant``; a variant never measured takes the stage's longest cell."""
    times, start_ups = stage_times()
    rows = times[stage]
    if variant in rows:
        return variant, rows[variant]
    return max(rows.items(), key=lambda item: (item[1].seconds - start_ups[stage]) / max(item[1].cells, 1))


def estimate(
    stage: str,
    variant: str,
    model_bytes: int,
    cells: Sequence[str],
    stand_ins: Collection[str] = (),
    stand_in_speed: bool = False,
) -> Estimate:
    """How long ``stage@variant`` takes for a checkpoint of ``model_bytes``, running ``cells``.

    Args:
        stage: A :data:`~pipeline.core.durations.STAGE_TIME` key, e.g. ``validate_npu``.
        variant: The row's variant (weight format, ``<provider>_<precision>``, Windows ML target, reference dtype).
        model_bytes: The checkpoint's weight bytes (:func:`checkpoint_bytes`).
        cells: The cells that will run (the reference: its steps), in order.
        stand_ins: Those of ``cells`` that are CPU stand-ins (speed runs only under ``validate.profile=full``).
        stand_in_speed: Whether stand-ins run their speed runs (``ValidateConfig.measures_stand_in_speed``).
    """
    row_name, row = row_for(stage, variant)
    start_up = stage_times()[1][stage]
    scale = model_bytes / (FULL_SIZE_GIB * 2**30)
    work = max(row.seconds - start_up, 0.0) * scale
    if stage == "reference":
        units = {name: share * work for name, share in REFERENCE_STEPS.items()}
    else:
        speed = row.speed_s * scale if stand_in_speed else 0.0
        units = {cell: work / max(row.cells, 1) + (speed if cell in stand_ins else 0.0) for cell in cells}
    note = ""
    if stand_in_speed and stand_ins and not (row.speed_s or row.with_speed):
        note = "; full profile: the stand-in's speed runs are not in this estimate"
    return Estimate(stage, start_up, units, row_name, row, note)


def approx(seconds: float) -> str:
    """A rounded duration for an estimate: ``about 40 s``, ``about 7 min``, ``about 2 h 5 min``."""
    if seconds < 60:
        return f"about {max(5, round(seconds / 5) * 5)} s"
    if seconds < 90 * 60:
        return f"about {round(seconds / 60)} min"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"about {hours} h {minutes} min"


def elapsed_text(seconds: float) -> str:
    """A duration that has passed: ``45 s``, ``3 min 10 s``, ``1 h 4 min``."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


@dataclass
class Clock:
    """A stage under way: prints the start line, then one line per unit (cell or step) done with the time left."""

    name: str  # e.g. validate_npu@int4
    tag: str  # the artifact, as the stage's own lines name it, e.g. npu-int4
    estimate: Estimate
    kind: str = "cell"
    now: Callable[[], float] = time.monotonic
    done: list[str] = field(default_factory=list)
    started: float = 0.0

    def __post_init__(self) -> None:
        self.started = self.now()

    @property
    def quiet(self) -> bool:
        """Whether the stage is too short for an estimate (:data:`MIN_ETA_S`): then it prints nothing."""
        return self.estimate.seconds < MIN_ETA_S

    def start_line(self) -> str:
        """E.g. ``validate@int4: about 11 min at this model size (measured 10.8 min for Phi-3-mini ...; cells: CPU)``."""
        est, source = self.estimate, SOURCES[self.estimate.row.source]
        measured = f"{est.stage}@{est.row_name}, " if self.name != f"{est.stage}@{est.row_name}" else ""
        units = ", ".join(est.units) or "none here"
        return (
            f"{self.name}: {approx(est.seconds)} at this model size (measured {measured}"
            f"{est.row.seconds / 60:.1f} min for Phi-3-mini on {source.machine}; {self.kind}s: {units}{est.note})"
        )

    def finish(self, unit: str | None = None) -> str | None:
        """Mark ``unit`` done (None: the next one in order), print and return its line; None for an unknown unit."""
        left = [u for u in self.estimate.units if u not in self.done]
        unit = unit if unit is not None else (left[0] if left else None)
        if unit not in left:
            return None
        self.done.append(unit)
        units = self.estimate.units
        elapsed = self.now() - self.started
        spent = self.estimate.start_up_s + sum(units[u] for u in self.done)
        remaining = sum(units[u] for u in units if u not in self.done)
        line = (
            f"[{self.tag}] {self.kind} {len(self.done)} of {len(units)} done ({unit}), {elapsed_text(elapsed)} elapsed"
        )
        if remaining:
            line += f", {approx(remaining * elapsed / spent if spent > 0 else remaining)} left"
        else:
            line += f" (estimated {approx(self.estimate.seconds)})"
            _active[:] = [c for c in _active if c is not self]  # the stage's cells are done: no stale clock after it
        if not self.quiet:
            say(line)
        return line

    def drop(self, unit: str) -> None:
        """A planned unit that will not run after all (a cell skipped once its own RAM check is known)."""
        if unit not in self.done:
            self.estimate.units.pop(unit, None)

    @contextlib.contextmanager
    def step(self, message: str) -> Iterator[dict]:
        """:func:`pipeline.core.log.step`, then the next unit is done."""
        with step(message) as info:
            yield info
        self.finish()


_active: list[Clock] = []  # the stage's clock, for the cells that report from deeper down (emulation cells)


def start(
    name: str,
    tag: str,
    plans: Sequence[Any],
    model_dir: Path,
    row: str | None = None,
    stand_in_speed: bool = False,
    *,
    now: Callable[[], float] = time.monotonic,
) -> Clock:
    """Start the clock of validation ``name`` (``<stage>@<variant>``) and print its estimate.

    Args:
        name: The stage, e.g. ``validate@int4``.
        tag: How the stage's lines name the artifact, e.g. ``openvino-int4``.
        plans: The cells planned (anything with ``column`` and ``skip_reason``; one on a ``device`` other than its
            column is a CPU stand-in or a package overridden to the CPU); skipped ones cost nothing.
        model_dir: The checkpoint the artifact was exported from (its size scales the estimate).
        row: The variant's row when it is not the variant's name (the weight format of ``openvino.int4_g64``).
        stand_in_speed: ``ValidateConfig.measures_stand_in_speed``.
        now: The clock's time source (tests).
    """
    stage, _, variant = name.partition("@")
    runs = [p for p in plans if not p.skip_reason]
    stand_ins = {p.column for p in runs if getattr(p, "device", p.column) != p.column}
    cells = [p.column for p in runs]
    est = estimate(stage, row or variant, checkpoint_bytes(model_dir), cells, stand_ins, stand_in_speed)
    return _begin(Clock(name, tag, est, "cell", now))


def reference_clock(model_dir: Path, dtype: str, now: Callable[[], float] = time.monotonic) -> Clock:
    """The reference stage's clock: its steps (:data:`~pipeline.core.durations.REFERENCE_STEPS`), in order."""
    est = estimate("reference", dtype, checkpoint_bytes(model_dir), list(REFERENCE_STEPS))
    return _begin(Clock("reference", "reference", est, "step", now))


def _begin(clock: Clock) -> Clock:
    _active[:] = [clock]
    if not clock.quiet:
        say(clock.start_line())
    return clock


def finish(unit: str) -> None:
    """Cell ``unit`` of the running stage is done (nothing when no stage clock runs: a test calling a helper)."""
    if _active:
        _active[0].finish(unit)


def drop(unit: str) -> None:
    """Cell ``unit`` of the running stage was planned but is skipped."""
    if _active:
        _active[0].drop(unit)
