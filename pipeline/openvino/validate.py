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

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pipeline.core import eta
from pipeline.core.config import ValidateConfig
from pipeline.core.errors import run_main
from pipeline.core.log import step
from pipeline.core.manifest import read_manifest
from pipeline.core.memory import MappedPageTrimmer, weight_files
from pipeline.core.registry import FAMILIES
from pipeline.core.resources import check_stage_ram, skip_for_ram, stage_ram
from pipeline.core.stage import run_stage
from pipeline.core.workspace import PROJECT, Workspace
from pipeline.openvino import answers, npu_lane, runtime_config
from pipeline.openvino.answers import near_ties as near_ties  # tests and the NPU lane call it from here
from pipeline.openvino.answers import same_tokens_as_cpu
from pipeline.openvino.generation import answers_at, measure_generation
from pipeline.openvino.teacher_forced import numerics_fidelity, pinned_fidelity
from pipeline.validation import matrix, recipe_cost, records, speed
from pipeline.validation.evidence import Evidence, verdicts_for


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


def pinned_answers(target: Target, device: str, cfg: ValidateConfig, reference: dict, pinned_runs: dict) -> list:
    """The IR's greedy answers at pinned f32 on ``device`` (the NPU's: on the CPU), once per device."""
    from pipeline.openvino.numerics import PINNED

    device = "CPU" if device == "NPU" else device
    if ("answers", device) not in pinned_runs:
        with step(f"[{target.artifact}] greedy answers on {device} at pinned f32"):
            pinned_runs["answers", device] = answers_at(target.ir_dir, device, cfg, reference, PINNED)
    return pinned_runs["answers", device]


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
    from pipeline.openvino.numerics import emulation_plans
    from pipeline.validation import devices

    manifest = read_manifest(target.ir_dir)
    weight_format = manifest["parameters"].get("weight_format", "int4")
    cpu_skip = check_ram(target, weight_format)
    evidence = Evidence.load(ws.reference_path)
    verdicts = verdicts_for(cfg, weight_format)
    cells: dict[str, matrix.Cell] = {}
    pinned_runs: dict[str, Any] = {}
    outputs: dict[str, list[list[int]]] = {}
    # OpenVINO maps the IR's .bin and, once the plugin has packed the weights into its own buffers (first
    # inference), never reads those pages again: handing them back halves every cell's peak (tests/openvino/test_validate_memory.py).
    with MappedPageTrimmer(weight_files(target.ir_dir)):
        plans = npu_lanes(target, cfg, matrix.plan_cells(target.devices, status or devices.detect(), cfg.cpu_stand_in))
        if cpu_skip:  # an fp16 IR where its f32-widened weights do not fit: no CPU cell runs (check_ram)
            plans = [replace(p, skip_reason=cpu_skip) if on_the_cpu(p) and not p.skip_reason else p for p in plans]
        stage = f"{FAMILIES[target.family].validate_stage}@{target.ir_dir.name}"
        emulated = [] if cpu_skip else emulation_plans(cfg.emulate_numerics)  # those over RAM drop out later
        eta.start(stage, target.artifact, [*plans, *emulated], ws.model_dir, weight_format, cfg.measures_stand_in_speed)
        for plan in plans:
            if plan.skip_reason:
                cells[plan.column] = matrix.skipped_cell(plan, target.kind)
                continue
            got = measure_cell(target, plan, cfg, evidence, pinned_runs)
            outputs[plan.column] = got.outputs
            cells[plan.column] = matrix.judge(plan, got, evidence.reference, verdicts, target.kind)
            pinned = pinned_answers(target, plan.backend or plan.device, cfg, evidence.reference, pinned_runs)
            runs = {"default": got.outputs, "f32": pinned}
            numerics = answers.default_numerics(target.ir_dir, plan.device)
            answers.judge(
                cells[plan.column], target.ir_dir, evidence.reference, runs, numerics, target.fix(plan.device)
            )
            cells[plan.column].speed_not_measured = speed.not_measured(plan.stand_in_for, cfg)
            eta.finish(plan.column)
        same_tokens_as_cpu(cells, outputs, target.ir_dir, evidence.reference)
        cells.update(emulation_cells(target, cfg, evidence, verdicts, pinned_runs, cpu_skip))
    recipe_cost.attach(cells, target.family, manifest, f"{target.family}.{target.ir_dir.name}", ws.model_dir, evidence)
    return records.publish_cells(
        target.artifact,
        target.family,
        weight_format,
        target.ir_dir,
        cfg.thresholds(weight_format),
        cells,
        ws.metrics_dir,
        cfg.profile,
    )


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
