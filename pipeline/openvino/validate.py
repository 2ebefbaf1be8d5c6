"""Stages ``validate@<variant>`` and ``validate_npu@<variant>``: run an IR on every device it targets, compare with PyTorch.

One matrix cell per target device (``validate.devices.openvino`` / ``.npu``): absent devices are skipped
with the reason, and when none is present the same IR runs on CPU in a cell labelled as a stand-in
(:mod:`pipeline.validation.matrix`). Each cell that runs measures load time, time to first token, time per output
token, tokens/s (warm-up excluded, median of repeats, per configured prompt length) and peak RSS with
``openvino_genai``, then fidelity against ``artifacts/reference``: teacher-forced top-1 agreement, KL
divergence and perplexity from the IR's own logits (``ov.Core``), and greedy exact match on the prompts.
The device that really executed is read back from the compiled model; a fallback fails the cell.
Output: ``artifacts/metrics/openvino-<variant>.json`` / ``npu-<variant>.json`` (DVC metrics).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.config import ValidateConfig
from pipeline.core.errors import run_main
from pipeline.core.log import step
from pipeline.core.manifest import read_manifest
from pipeline.core.memory import MappedPageTrimmer, weight_files
from pipeline.core.registry import FAMILIES
from pipeline.core.resources import check_stage_ram, skip_for_ram
from pipeline.core.stage import run_stage
from pipeline.core.workspace import PROJECT, Workspace
from pipeline.openvino import npu_lane
from pipeline.openvino.generation import measure_generation
from pipeline.openvino.teacher_forced import numerics_fidelity, pinned_fidelity
from pipeline.validation import matrix, records, speed
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
        with step(f"[{target.artifact} @ {plan.column}] device numerics on {forced_device} at its defaults"):
            device = numerics_fidelity(target.ir_dir, forced_device, evidence, pinned_logits, None)
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
    target: Target, cfg: ValidateConfig, evidence: Evidence, verdicts: matrix.Verdicts, pinned_runs: dict[str, Any]
) -> dict[str, matrix.Cell]:
    """CPU cells that force the targets' compute precisions (``validate.emulate_numerics``), where this CPU can."""
    from pipeline.openvino.numerics import emulation_plans, emulation_ram

    cells: dict[str, matrix.Cell] = {}
    for plan in emulation_plans(cfg.emulate_numerics):
        if not plan.skip_reason and (need := emulation_ram(plan.precision, target.ir_dir)):
            what = (
                f"the {plan.column} cell of {target.artifact} (the CPU plugin unpacks its weights to {plan.precision})"
            )
            plan.skip_reason = skip_for_ram(what, need, cfg.stand_in_max_ram_gib, target.ir_dir)
        if plan.skip_reason:
            cells[plan.column] = matrix.Cell(plan.column, "CPU", "skipped", plan.label, reason=plan.skip_reason)
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
        cells[plan.column] = matrix.emulation_cell(plan.column, plan.label, measured, verdicts, mismatch=note)
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


NEAR_TIE = 0.1  # logits, f32: the IR's own top-1 minus top-2 below this is a tie two correct runtimes can break apart


def near_ties(ir_dir: Path, reference: dict, ours: list[list[int]], theirs: list[list[int]]) -> list[str] | None:
    """Where two greedy runs of one IR part ways: each first divergence as text if every one is a near tie, else None.

    A near tie: at the first differing position the IR's own f32 logits (teacher-forced on the shared prefix) rank
    the other run's token second, less than :data:`NEAR_TIE` below the first. Any other divergence is a real one.
    """
    import numpy as np

    from pipeline.openvino.teacher_forced import forced_logits

    points = [(i, j) for i, (a, b) in enumerate(zip(ours, theirs)) if (j := matrix.first_divergence(a, b)) is not None]
    if any(j >= min(len(ours[i]), len(theirs[i])) for i, j in points):
        return None  # one run stopped early (EOS) where the other went on: not a tie between two tokens
    windows = [reference["greedy"][i]["prompt_ids"] + ours[i][:j] for i, j in points]
    logits, _, _ = forced_logits(ir_dir, "CPU", windows, "f32")
    found = []
    for (i, j), window_logits in zip(points, logits):
        last = np.asarray(window_logits[-1], dtype=np.float64)
        first, second = np.argsort(last)[-2:][::-1]
        gap = float(last[first] - last[second])
        if {int(first), int(second)} != {ours[i][j], theirs[i][j]} or gap >= NEAR_TIE:
            return None
        found.append(f"prompt {i} token {j}: gap {gap:.3f}")
    return found


def same_tokens_as_cpu(
    cells: dict[str, matrix.Cell], outputs: dict[str, list[list[int]]], ir_dir: Path, reference: dict
) -> None:
    """The NPU pipeline through NPUW must generate the CPU pipeline's tokens, but for near ties of the IR itself.

    The two runs differ in more than the backend (NPUW's static shapes and f16 KV cache; the CPU plugin's own
    defaults), so where the IR's f32 logits leave the two candidates within :data:`NEAR_TIE` either token is right:
    the cell keeps its verdict and says where. Any other difference fails the cell.
    """
    npuw = cells.get("NPU")
    cpu = next((c for c in (matrix.STAND_IN, "CPU") if c in outputs), None)
    if npuw is None or "NPU" not in outputs or cpu is None or npuw.device_executed == "NPU":
        return
    if outputs["NPU"] == outputs[cpu]:
        return
    ties = near_ties(ir_dir, reference, outputs[cpu], outputs["NPU"])
    if ties is not None:
        note = f"NPUW broke near ties differently from the CPU pipeline ({cpu} cell; f32 top-2 gap < {NEAR_TIE}): "
        npuw.note = "; ".join(filter(None, [npuw.note, note + ", ".join(ties)]))
        return
    npuw.problems.append(
        f"the NPU pipeline through NPUW generated other tokens than the CPU pipeline ({cpu} cell), "
        f"not at a near tie of the IR's own logits"
    )
    npuw.status = "failed"


def check_ram(target: Target, weight_format: str) -> None:
    """Stop in one line, before anything is read or written, if the stage's RAM row does not fit. An fp16 IR's CPU
    cell on a CPU that computes in f32 by default (the AVX2 CPUs of most laptops) holds the weights widened to f32,
    twice the IR, where an AVX512-BF16/AMX CPU holds a bf16 copy (row ``fp16_on_f32_cpu``)."""
    from pipeline.openvino.numerics import cpu_default_compute

    stage = "validate_npu" if target.family == "npu" else "validate"
    if weight_format == "fp16" and "CPU" in target.devices and cpu_default_compute() == "f32":
        what = f"{stage}@fp16 (this CPU computes in f32, so its CPU cell widens the f16 weights to f32)"
        check_stage_ram(stage, "fp16_on_f32_cpu", target.ir_dir, what)
    else:
        check_stage_ram(stage, weight_format, target.ir_dir)


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
    from pipeline.validation import devices

    weight_format = read_manifest(target.ir_dir)["parameters"].get("weight_format", "int4")
    check_ram(target, weight_format)
    evidence = Evidence.load(ws.reference_path)
    verdicts = verdicts_for(cfg, weight_format)
    cells: dict[str, matrix.Cell] = {}
    pinned_runs: dict[str, Any] = {}
    outputs: dict[str, list[list[int]]] = {}
    # OpenVINO maps the IR's .bin and, once the plugin has packed the weights into its own buffers (first
    # inference), never reads those pages again: handing them back halves every cell's peak (tests/openvino/test_validate_memory.py).
    with MappedPageTrimmer(weight_files(target.ir_dir)):
        plans = npu_lanes(target, cfg, matrix.plan_cells(target.devices, status or devices.detect(), cfg.cpu_stand_in))
        for plan in plans:
            if plan.skip_reason:
                cells[plan.column] = matrix.skipped_cell(plan, target.kind)
                continue
            got = measure_cell(target, plan, cfg, evidence, pinned_runs)
            outputs[plan.column] = got.outputs
            cells[plan.column] = matrix.judge(plan, got, evidence.reference, verdicts, target.kind)
            cells[plan.column].speed_not_measured = speed.not_measured(plan.stand_in_for, cfg)
        same_tokens_as_cpu(cells, outputs, target.ir_dir, evidence.reference)
        cells.update(emulation_cells(target, cfg, evidence, verdicts, pinned_runs))
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
