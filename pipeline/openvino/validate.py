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

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.artifacts import ARTIFACTS
from pipeline.core.config import ValidateConfig
from pipeline.core.errors import fail, run_main
from pipeline.core.log import step
from pipeline.core.manifest import read_manifest
from pipeline.core.memory import check_stage_ram
from pipeline.core.registry import FAMILIES
from pipeline.core.stage import run_stage
from pipeline.openvino import npu_lane, numerics
from pipeline.validation import fidelity, matrix, records
from pipeline.validation.evidence import Evidence, verdicts_for

IR_ROOT = ARTIFACTS / "openvino"
NPU_ROOT = ARTIFACTS / "npu"
REFERENCE = ARTIFACTS / "reference" / "reference.json"
METRICS_DIR = ARTIFACTS / "metrics"


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


def device_properties(ir_dir: Path, device: str) -> dict[str, Any]:
    """``LLMPipeline`` properties: an NPU IR's stored run settings (and blob) on the NPU; no prefix cache elsewhere."""
    import openvino_genai as ov_genai

    settings_file = ir_dir / "npu_config.json"
    if device != "NPU":
        # Without an explicit scheduler config GenAI's default CPU/GPU pipeline caches prompt prefixes, so every
        # repeat of a speed prompt would report a cache hit (2 ms instead of 125 ms TTFT for 1k tokens here).
        scheduler = ov_genai.SchedulerConfig()
        scheduler.enable_prefix_caching = False
        return {"scheduler_config": scheduler}
    if not settings_file.is_file():
        return {}
    settings = json.loads(settings_file.read_text(encoding="utf-8"))
    blob = ir_dir / "openvino_model.npu.blob"
    if blob.is_file():
        settings["BLOB_PATH"] = str(blob)
    return settings


def time_prompt(pipe: Any, prompt_ids: list[int], cfg: ValidateConfig) -> matrix.Perf:
    """TTFT/TPOT of greedy generation of exactly ``perf_new_tokens`` after ``prompt_ids`` (warm-up excluded)."""
    import numpy as np
    import openvino as ov

    gen_cfg = pipe.get_generation_config()
    gen_cfg.max_new_tokens, gen_cfg.do_sample, gen_cfg.ignore_eos = cfg.perf_new_tokens, False, True
    ttft, tpot = [], []
    for i in range(cfg.warmup + cfg.repeats):
        result = pipe.generate(ov.Tensor(np.array([prompt_ids], dtype=np.int64)), gen_cfg)
        if i >= cfg.warmup:
            ttft.append(result.perf_metrics.get_ttft().mean)
            tpot.append(result.perf_metrics.get_tpot().mean)
    return matrix.Perf.from_runs(len(prompt_ids), cfg.perf_new_tokens, ttft, tpot)


def measure_generation(
    ir_dir: Path, device: str, cfg: ValidateConfig, reference: dict, backend: str | None = None
) -> dict[str, Any]:
    """Load the IR in ``LLMPipeline`` on ``device``, generate greedily for every prompt and time each prompt length.

    ``backend="CPU"`` on the NPU runs the NPU pipeline through NPUW on the CPU (:mod:`pipeline.openvino.npu_lane`). A prompt
    over an NPU artifact's MAX_PROMPT_LEN fails with one line instead of NPUW's multi-line error.
    """
    try:
        return _measure_generation(ir_dir, device, cfg, reference, backend)
    except RuntimeError as err:
        line = npu_lane.as_prompt_limit_error(err) if device == "NPU" else None
        if line:
            fail(line)
        raise


def _measure_generation(
    ir_dir: Path, device: str, cfg: ValidateConfig, reference: dict, backend: str | None
) -> dict[str, Any]:
    import numpy as np
    import openvino as ov
    import openvino_genai as ov_genai

    properties = device_properties(ir_dir, device)
    if backend:
        properties = {k: v for k, v in properties.items() if k != "BLOB_PATH"}  # an NPU blob is not for NPUW
        properties.update(npu_lane.NPUW_CPU)
    start = time.perf_counter()
    pipe = ov_genai.LLMPipeline(str(ir_dir), device, **properties)
    load_s = time.perf_counter() - start
    gen_cfg = pipe.get_generation_config()
    gen_cfg.max_new_tokens, gen_cfg.do_sample = cfg.max_new_tokens, False
    outputs = [
        list(pipe.generate(ov.Tensor(np.array([case["prompt_ids"]], dtype=np.int64)), gen_cfg).tokens[0])
        for case in reference["greedy"]
    ]
    perf = {name: time_prompt(pipe, ids, cfg) for name, ids in reference["perf_prompts"].items()}
    text_cfg = pipe.get_generation_config()
    text_cfg.max_new_tokens, text_cfg.do_sample, text_cfg.apply_chat_template = cfg.max_new_tokens, False, False
    first = reference["greedy"][0]
    text = pipe.generate(first["prompt"], text_cfg)
    ov_ids = [int(i) for i in pipe.get_tokenizer().encode(first["prompt"], add_special_tokens=False).input_ids.data[0]]
    return {
        "load_s": load_s,
        "outputs": outputs,
        "perf": perf,
        "text": str(text),
        "tokenizer_matches_reference": ov_ids == first["prompt_ids"],
    }


def forced_logits(
    ir_dir: Path, device: str, windows: list[list[int]], compute: str | None
) -> tuple[list[Any], str, numerics.Numerics]:
    """The IR's logits over ``windows`` (``ov.Core`` infer), the device that executed, and the numerics that ran.

    ``compute``: ``"f32"`` pins full precision (artifact fidelity), ``"bf16"``/``"f16"`` forces a target's compute
    precision, ``None`` keeps the device's defaults (device numerics).
    """
    import numpy as np
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(
        core.read_model(str(ir_dir / "openvino_model.xml")), device, numerics.settings(compute)
    )
    executed = ",".join(compiled.get_property("EXECUTION_DEVICES"))
    ran = numerics.read_back(compiled)
    request = compiled.create_infer_request()
    logits = []
    for window in windows:
        ids = np.array([window], dtype=np.int64)
        request.reset_state()
        request.infer(
            {
                "input_ids": ids,
                "attention_mask": np.ones_like(ids),
                "position_ids": np.arange(ids.shape[1], dtype=np.int64)[None],
                "beam_idx": np.zeros(1, dtype=np.int32),
            }
        )
        logits.append(np.array(request.get_tensor("logits").data[0], dtype=np.float32))
    return logits, executed, ran


def pinned_fidelity(ir_dir: Path, device: str, evidence: Evidence) -> tuple[dict[str, Any], list[Any], str]:
    """Artifact fidelity: the IR at f32 runtime precision, short windows and long-context ranges."""
    windows = evidence.windows + evidence.long_windows
    logits, executed, ran = forced_logits(ir_dir, device, windows, "f32")
    short = logits[: len(evidence.windows)]
    long = (
        fidelity.compare_ranges(
            evidence.long_logprobs, logits[len(evidence.windows) :], evidence.reference["long_context"]["boundaries"]
        )
        if evidence.long_windows
        else []
    )
    return (
        {
            "fidelity": fidelity.compare(evidence.logprobs, short).as_dict(),
            "numerics": ran.as_dict(),
            "long_context": long,
        },
        short,
        executed,
    )


def numerics_fidelity(
    ir_dir: Path, device: str, evidence: Evidence, pinned: list[Any], compute: str | None
) -> dict[str, Any]:
    """Device numerics: the IR at the device's defaults (or a forced precision), against PyTorch and the pinned run."""
    logits, _, ran = forced_logits(ir_dir, device, evidence.windows, compute)
    return {
        "device_fidelity": fidelity.compare(evidence.logprobs, logits).as_dict(),
        "device_numerics": ran.as_dict(),
        "drift": fidelity.agreement(pinned, logits),
    }


def measure_cell(
    target: Target, plan: matrix.CellPlan, cfg: ValidateConfig, evidence: Evidence, pinned_runs: dict[str, Any]
) -> matrix.Measurement:
    """Run one cell: generation and speed with GenAI at the device's defaults, then both fidelity figures."""
    records.reset_peak_rss()
    reference = evidence.reference
    where = f"{plan.device} (NPUW, {plan.backend} backend)" if plan.backend else plan.device
    with step(f"[{target.artifact} @ {plan.column}] generating on {where} with openvino_genai"):
        gen = measure_generation(target.ir_dir, plan.device, cfg, reference, plan.backend)
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
    from pipeline.openvino.numerics import emulation_plans

    cells: dict[str, matrix.Cell] = {}
    for plan in emulation_plans(cfg.emulate_numerics):
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


def same_tokens_as_cpu(cells: dict[str, matrix.Cell], outputs: dict[str, list[list[int]]]) -> None:
    """The NPU pipeline through NPUW must generate the CPU pipeline's tokens: a difference fails its cell."""
    npuw = cells.get("NPU")
    cpu = next((c for c in (matrix.STAND_IN, "CPU") if c in outputs), None)
    if npuw is None or "NPU" not in outputs or cpu is None or npuw.device_executed == "NPU":
        return
    if outputs["NPU"] != outputs[cpu]:
        npuw.problems.append(
            f"the NPU pipeline through NPUW generated other tokens than the CPU pipeline "
            f"({cpu} cell) at the same compute precision"
        )
        npuw.status = "failed"


def run(
    target: Target,
    cfg: ValidateConfig,
    reference_path: Path = REFERENCE,
    metrics_dir: Path = METRICS_DIR,
    status: dict | None = None,
) -> dict:
    """Validate one IR on every device it targets; write its metrics; fail (one line) if a cell failed.

    Args:
        target: The IR and its target devices.
        cfg: The ``validate`` section.
        reference_path: The ``reference`` stage's JSON (``logprobs.npz`` beside it).
        metrics_dir: Where ``<artifact>.json`` is written.
        status: Device status (detected when omitted; tests pass a fake).

    Returns:
        The metrics written.
    """
    from pipeline.validation import devices

    weight_format = read_manifest(target.ir_dir)["parameters"].get("weight_format", "int4")
    check_stage_ram("validate_npu" if target.family == "npu" else "validate", weight_format, target.ir_dir)
    evidence = Evidence.load(reference_path)
    verdicts = verdicts_for(cfg, weight_format)
    cells, pinned_runs, outputs = {}, {}, {}
    for plan in npu_lanes(target, cfg, matrix.plan_cells(target.devices, status or devices.detect(), cfg.cpu_stand_in)):
        if plan.skip_reason:
            cells[plan.column] = matrix.skipped_cell(plan, target.kind)
            continue
        got = measure_cell(target, plan, cfg, evidence, pinned_runs)
        outputs[plan.column] = got.outputs
        cells[plan.column] = matrix.judge(plan, got, evidence.reference, verdicts, target.kind)
    same_tokens_as_cpu(cells, outputs)
    cells.update(emulation_cells(target, cfg, evidence, verdicts, pinned_runs))
    return records.publish_cells(
        target.artifact, target.family, weight_format, target.ir_dir, cfg.thresholds(weight_format), cells, metrics_dir
    )


def openvino_target(name: str, cfg: ValidateConfig, root: Path = IR_ROOT) -> Target:
    """An OpenVINO IR variant on its configured devices."""
    return Target(f"openvino-{name}", "openvino", root / name, cfg.devices["openvino"])


def npu_target(name: str, cfg: ValidateConfig, root: Path = NPU_ROOT) -> Target:
    """An NPU-ready IR on its configured devices (the NPU by default)."""
    return Target(f"npu-{name}", "npu", root / name, cfg.devices["npu"])


def run_openvino(name: str, cfg: ValidateConfig, **kwargs: Any) -> dict:
    """Validate ``artifacts/openvino/<name>`` (the registry's entry point; ``kwargs`` go to :func:`run`)."""
    return run(openvino_target(name, cfg), cfg, **kwargs)


def run_npu(name: str, cfg: ValidateConfig, **kwargs: Any) -> dict:
    """Validate ``artifacts/npu/<name>`` (the registry's entry point; ``kwargs`` go to :func:`run`)."""
    return run(npu_target(name, cfg), cfg, **kwargs)


if __name__ == "__main__":  # the stage: `python -m pipeline.openvino.validate [--npu] <variant>`
    run_main(lambda: run_stage("openvino", "validate"))
