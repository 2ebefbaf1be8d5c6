"""Stages ``validate@<variant>`` and ``validate_npu@<variant>``: run an IR on every device it targets, compare with PyTorch.

One matrix cell per target device (``validate.devices.openvino`` / ``.npu``): absent devices are skipped
with the reason, and when none is present the same IR runs on CPU in a cell labelled as a stand-in
(:mod:`pipeline.validation.matrix`). Each cell that runs measures load time, time to first token, time per output
token, tokens/s (warm-up excluded, median of repeats, per configured prompt length) and peak RSS with
``openvino_genai``, then fidelity against ``artifacts/reference``: teacher-forced top-1 agreement, KL
divergence and perplexity from the IR's own logits (``ov.Core``), and greedy exact match on the prompts, both at the runtime's default numerics (with the IR's runtime config) and at
pinned f32: where only the default answers diverge, the cell fails and names the setting that fixes it
(:mod:`pipeline.openvino.answers`; the emulation cells answer the same question at their forced precision).
The device that really executed is read back from the compiled model; a fallback fails the cell.
Output: ``artifacts/metrics/openvino-<variant>.json`` / ``npu-<variant>.json`` (DVC metrics).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pipeline.core.config import ValidateConfig
from pipeline.core.errors import run_main
from pipeline.core.log import step
from pipeline.core.memory import MappedPageTrimmer, weight_files
from pipeline.core.registry import FAMILIES
from pipeline.core.resources import check_stage_ram, skip_for_ram, stage_ram
from pipeline.core.stage import run_stage
from pipeline.core.workspace import PROJECT, Workspace
from pipeline.openvino import answers, npu_lane, runtime_config
from pipeline.openvino.answers import near_ties as near_ties  # tests and the NPU lane call it from here
from pipeline.openvino.answers import same_tokens_as_cpu
from pipeline.openvino.emulation import emulation_cells as emulation_cells  # tests call it from here
from pipeline.openvino.emulation import pinned_answers
from pipeline.openvino.generation import measure_generation
from pipeline.openvino.teacher_forced import numerics_fidelity, pinned_fidelity
from pipeline.validation import matrix, records, speed
from pipeline.validation.evidence import Evidence
from pipeline.validation.template import ValidationJob, Validator, ValidatorSteps, validate


@dataclass
class Target:
    """One IR and the devices it targets."""

    artifact: str
    family: str
    ir_dir: Path
    devices: list[str]

    @property
    def kind(self) -> str:
        """Human name of the artifact family, used in labels."""
        return FAMILIES[self.family].kind

    def fix(self, device: str) -> str | None:
        """The setting that makes ``device`` compute at f32, with the params override that ships it (OpenVINO IRs)."""
        key = f"openvino.{self.ir_dir.name}" if self.family == "openvino" else None
        return runtime_config.fix_for(device, key)


def measure_cell(
    target: Target, plan: matrix.CellPlan, cfg: ValidateConfig, evidence: Evidence, pinned_runs: dict[str, Any]
) -> matrix.Measurement:
    """Run one cell: generation and speed with GenAI at the device's defaults, then both fidelity figures."""
    records.reset_peak_rss()
    reference = evidence.reference
    where = f"{plan.device} (NPUW, {plan.backend} backend)" if plan.backend else plan.device
    runs = reference if speed.not_measured(plan.stand_in_for, cfg) is None else {**reference, "perf_prompts": {}}
    with step(f"[{target.artifact} @ {plan.column}] generating on {where} with openvino_genai"):
        gen = measure_generation(target.ir_dir, plan.device, cfg, runs, plan.backend)
    # The NPU compiles LLMs only through GenAI's pipeline; teacher forcing then runs the same IR on CPU.
    forced_device = "CPU" if plan.device == "NPU" else plan.device
    with step(f"[{target.artifact} @ {plan.column}] artifact fidelity on {forced_device} at f32 (teacher-forced)"):
        pinned, pinned_logits, executed = pinned_fidelity(target.ir_dir, forced_device, evidence)
    pinned_runs.setdefault(forced_device, (pinned, pinned_logits))  # the emulation cells reuse the CPU run
    device = {}
    if plan.device != "NPU":  # NPU numerics: the `CPU f16 compute` emulation cell, where this CPU can
        with step(f"[{target.artifact} @ {plan.column}] device numerics on {forced_device} as its users load it"):
            shipped = runtime_config.properties(target.ir_dir, forced_device)  # what its users load it with
            device = numerics_fidelity(target.ir_dir, forced_device, evidence, pinned_logits, None, shipped)
    if plan.device == "NPU":
        # LLMPipeline(..., "NPU") raises rather than falling back; through NPUW every subgraph ran on the backend
        executed = plan.backend or "NPU"
    return matrix.Measurement(
        executed=executed,
        load_s=gen["load_s"],
        peak_rss_mb=records.peak_rss_mb(),
        perf=gen["perf"],
        fidelity=pinned["fidelity"],
        outputs=gen["outputs"],
        sample=gen["text"],
        tokenizer_matches_reference=gen["tokenizer_matches_reference"],
        fidelity_device=forced_device,
        artifact_numerics=pinned["numerics"],
        long_context=pinned["long_context"],
        **device,
    )


def npu_lanes(target: Target, cfg: ValidateConfig, plans: list[matrix.CellPlan]) -> list[matrix.CellPlan]:
    """Without an NPU, the NPU cell runs the NPU pipeline itself through NPUW on the CPU (small IRs only)."""
    out = []
    for plan in plans:
        if plan.device == "NPU" and plan.skip_reason:
            too_large = npu_lane.too_large(target.ir_dir, cfg.npuw_max_size_mb)
            if too_large is None:
                plan = matrix.CellPlan(
                    plan.column, "NPU", backend="CPU", note=f"no NPU here ({plan.skip_reason}): {npu_lane.LABEL}"
                )
            else:
                plan = matrix.CellPlan(plan.column, "NPU", skip_reason=f"{plan.skip_reason}; {too_large}")
        out.append(plan)
    return out


def check_ram(target: Target, weight_format: str) -> str | None:
    """Stop in one line, before anything is read or written, if the stage's RAM row does not fit; or, for an fp16
    IR, say why its CPU cells cannot run here (``None``: they can).

    An fp16 IR's CPU cell holds the weights widened to f32 for its greedy answers at pinned f32 (and, on the AVX2 CPUs
    of most laptops, at the default numerics too): twice the IR, row ``fp16_on_f32_cpu``, 15 GiB for Phi-3-mini. That
    is what running it on such a CPU costs, so where it does not fit, the CPU cells are skipped with that reason (the
    report and the recommendation say so) and the stage goes on with the other devices (a GPU computes in f16).
    """
    stage = "validate_npu" if target.family == "npu" else "validate"
    if weight_format == "fp16" and "CPU" in target.devices:
        what = f"the CPU cell of {stage}@fp16 (its answers at f32 widen the f16 weights to f32)"
        short = skip_for_ram(what, stage_ram(stage, "fp16_on_f32_cpu", target.ir_dir), 0, target.ir_dir)
        check_stage_ram(stage, "fp16", target.ir_dir)  # every other cell still must fit
        return short
    check_stage_ram(stage, weight_format, target.ir_dir)
    return None


def on_the_cpu(plan: matrix.CellPlan) -> bool:
    """Whether a cell computes on this machine's CPU (the CPU itself, a CPU stand-in, the NPU pipeline on CPU)."""
    return plan.device == "CPU" or plan.backend == "CPU" or plan.stand_in_for is not None


@dataclass(frozen=True)
class OpenVinoValidator(ValidatorSteps):
    """The OpenVINO and NPU IRs' validation steps: every target device, answers at pinned f32, emulation cells."""

    target: Target
    status: dict | None = None  # device status (detected when None; tests pass a fake)

    @property
    def family(self) -> str:
        """The target's family."""
        return self.target.family

    def weight_format(self, manifest: dict[str, Any]) -> str:
        """The IR's weight format."""
        return str(manifest["parameters"].get("weight_format", "int4"))

    def plan(self, job: ValidationJob) -> list[matrix.CellPlan]:
        """RAM first (stops, or skips an fp16 IR's CPU cells), then every target device; NPUW lanes without an NPU."""
        from pipeline.openvino.numerics import emulation_plans
        from pipeline.validation import devices

        target, cfg = self.target, job.cfg
        cpu_skip = job.facts["cpu_skip"] = check_ram(target, str(job.weight_format))
        job.facts.update(pinned_runs={}, outputs={})
        plans = npu_lanes(
            target, cfg, matrix.plan_cells(target.devices, self.status or devices.detect(), cfg.cpu_stand_in)
        )
        if cpu_skip:  # an fp16 IR where its f32-widened weights do not fit: no CPU cell runs (check_ram)
            plans = [replace(p, skip_reason=cpu_skip) if on_the_cpu(p) and not p.skip_reason else p for p in plans]
        job.later = [] if cpu_skip else emulation_plans(cfg.emulate_numerics)  # those over RAM drop out later
        return plans

    def running(self, job: ValidationJob) -> contextlib.AbstractContextManager[Any]:
        """OpenVINO maps the IR's .bin and, once the plugin has packed the weights into its own buffers (first
        inference), never reads those pages again: handing them back halves every cell's peak
        (tests/openvino/test_validate_memory.py)."""
        return MappedPageTrimmer(weight_files(self.target.ir_dir))

    def measure(self, job: ValidationJob, plan: matrix.CellPlan) -> matrix.Measurement:
        """Generation and speed at the device's defaults, then both fidelity figures (:func:`measure_cell`)."""
        got = measure_cell(self.target, plan, job.cfg, job.evidence, job.facts["pinned_runs"])
        job.facts["outputs"][plan.column] = got.outputs
        return got

    def judge(self, job: ValidationJob, plan: matrix.CellPlan, got: matrix.Measurement) -> matrix.Cell:
        """The common verdict, then its answers at the default numerics against those at pinned f32."""
        target, reference = self.target, job.evidence.reference
        cell = super().judge(job, plan, got)
        pinned = pinned_answers(target, plan.backend or plan.device, job.cfg, reference, job.facts["pinned_runs"])
        runs = {"default": got.outputs, "f32": pinned}
        numerics = answers.default_numerics(target.ir_dir, plan.device)
        answers.judge(cell, target.ir_dir, reference, runs, numerics, target.fix(plan.device))
        return cell

    def finish(self, job: ValidationJob, cells: dict[str, matrix.Cell]) -> None:
        """Every device's answers against the CPU's, then the cells that force the targets' compute precisions."""
        evidence, facts = job.evidence, job.facts
        same_tokens_as_cpu(cells, facts["outputs"], self.target.ir_dir, evidence.reference)
        cells.update(
            emulation_cells(self.target, job.cfg, evidence, job.verdicts, facts["pinned_runs"], facts["cpu_skip"])
        )


def run(target: Target, cfg: ValidateConfig, ws: Workspace = PROJECT, *, status: dict | None = None) -> dict:
    """Validate one IR on every device it targets; write its metrics; fail (one line) if a cell failed.

    Args:
        target: The IR and its target devices.
        cfg: The ``validate`` section.
        ws: Where the reference is (``ws.reference_path``) and ``<artifact>.json`` goes (``ws.metrics_dir``).
        status: Device status (detected when omitted; tests pass a fake).

    Returns:
        The metrics written.
    """
    validator: Validator = OpenVinoValidator(target, status)  # mypy checks the steps against the Protocol
    return validate(validator, target.ir_dir.name, cfg, ws, folder=target.ir_dir, artifact=target.artifact)


def openvino_target(name: str, cfg: ValidateConfig, ws: Workspace = PROJECT) -> Target:
    """An OpenVINO IR variant on its configured devices."""
    return Target(f"openvino-{name}", "openvino", ws.root("openvino") / name, cfg.devices["openvino"])


def npu_target(name: str, cfg: ValidateConfig, ws: Workspace = PROJECT) -> Target:
    """An NPU-ready IR on its configured devices (the NPU by default)."""
    return Target(f"npu-{name}", "npu", ws.root("npu") / name, cfg.devices["npu"])


def run_openvino(name: str, cfg: ValidateConfig, ws: Workspace = PROJECT, **kwargs: Any) -> dict:
    """Validate ``artifacts/openvino/<name>`` (the registry's entry point; ``kwargs`` go to :func:`run`)."""
    return run(openvino_target(name, cfg, ws), cfg, ws, **kwargs)


def run_npu(name: str, cfg: ValidateConfig, ws: Workspace = PROJECT, **kwargs: Any) -> dict:
    """Validate ``artifacts/npu/<name>`` (the registry's entry point; ``kwargs`` go to :func:`run`)."""
    return run(npu_target(name, cfg, ws), cfg, ws, **kwargs)


if __name__ == "__main__":  # the stage: `python -m pipeline.openvino.validate [--npu] <variant>`
    run_main(lambda: run_stage("openvino", "validate"))
