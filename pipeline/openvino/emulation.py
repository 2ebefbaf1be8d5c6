"""The IR's greedy answers at pinned f32 and the CPU cells that force the targets' compute precisions.

Part of ``validate@<variant>`` / ``validate_npu@<variant>`` (:mod:`pipeline.openvino.validate`): the answers at
pinned f32 are what a cell's default-numerics answers are compared with (:mod:`pipeline.openvino.answers`); the
emulation cells (``validate.emulate_numerics``) run the IR teacher-forced at a target's compute precision on this
CPU, where it can.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline.core import eta
from pipeline.core.config import ValidateConfig
from pipeline.core.log import step
from pipeline.core.resources import skip_for_ram
from pipeline.openvino import answers, runtime_config
from pipeline.openvino.generation import answers_at
from pipeline.openvino.teacher_forced import numerics_fidelity, pinned_fidelity
from pipeline.validation import matrix, records
from pipeline.validation.evidence import Evidence

if TYPE_CHECKING:
    from pipeline.openvino.validate import Target


def pinned_answers(target: Target, device: str, cfg: ValidateConfig, reference: dict, pinned_runs: dict) -> list:
    """The IR's greedy answers at pinned f32 on ``device`` (the NPU's: on the CPU), once per device."""
    from pipeline.openvino.numerics import PINNED

    device = "CPU" if device == "NPU" else device
    if ("answers", device) not in pinned_runs:
        with step(f"[{target.artifact}] greedy answers on {device} at pinned f32"):
            pinned_runs["answers", device] = answers_at(target.ir_dir, device, cfg, reference, PINNED)
    return pinned_runs["answers", device]


def emulation_cells(
    target: Target,
    cfg: ValidateConfig,
    evidence: Evidence,
    verdicts: matrix.Verdicts,
    pinned_runs: dict[str, Any],
    cpu_skip: str | None = None,
) -> dict[str, matrix.Cell]:
    """CPU cells that force the targets' compute precisions (``validate.emulate_numerics``), where this CPU can
    (``cpu_skip``: why no CPU cell of this IR fits here, :func:`check_ram`)."""
    from pipeline.openvino.numerics import emulation_plans, emulation_ram, settings

    cells: dict[str, matrix.Cell] = {}
    for plan in emulation_plans(cfg.emulate_numerics):
        plan.skip_reason = plan.skip_reason or cpu_skip
        if not plan.skip_reason and (need := emulation_ram(plan.precision, target.ir_dir)):
            what = (
                f"the {plan.column} cell of {target.artifact} (the CPU plugin unpacks its weights to {plan.precision})"
            )
            plan.skip_reason = skip_for_ram(what, need, cfg.stand_in_max_ram_gib, target.ir_dir)
        if plan.skip_reason:
            cells[plan.column] = matrix.Cell(plan.column, "CPU", "skipped", plan.label, reason=plan.skip_reason)
            eta.drop(plan.column)
            continue
        records.reset_peak_rss()
        with step(f"[{target.artifact} @ {plan.column}] teacher-forced at {plan.precision} compute on CPU"):
            if "CPU" not in pinned_runs:
                pinned_runs["CPU"] = pinned_fidelity(target.ir_dir, "CPU", evidence)[:2]
            pinned, pinned_logits = pinned_runs["CPU"]
            got = numerics_fidelity(target.ir_dir, "CPU", evidence, pinned_logits, plan.precision)
        ran = got["device_numerics"]["compute"]
        note = f"asked for {plan.precision} compute but the CPU plugin ran {ran}" if ran != plan.precision else None
        measured = matrix.Measurement(
            "CPU",
            0.0,
            records.peak_rss_mb(),
            {},
            pinned["fidelity"],
            [],
            True,
            "",
            note=note,
            artifact_numerics=pinned["numerics"],
            **got,
        )
        cells[plan.column] = cell = matrix.emulation_cell(plan.column, plan.label, measured, verdicts, mismatch=note)
        with step(f"[{target.artifact} @ {plan.column}] greedy answers at {plan.precision} compute on CPU"):
            forced = answers_at(target.ir_dir, "CPU", cfg, evidence.reference, settings(plan.precision))
        pinned = pinned_answers(target, "CPU", cfg, evidence.reference, pinned_runs)
        fix = target.fix("CPU") if plan.precision == "bf16" else target.fix("GPU")
        shipped = plan.precision == "bf16" and runtime_config.pins_f32(target.ir_dir, "CPU")
        runs = {"default": forced, "f32": pinned}
        answers.judge(cell, target.ir_dir, evidence.reference, runs, f"forced {plan.precision} compute", fix, shipped)
        eta.finish(plan.column)
    return cells
