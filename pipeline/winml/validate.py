"""Stage ``validate_winml@<variant>``: run a Windows ML package with onnxruntime-genai on the OpenVINO EP plugin.

One matrix cell, the variant's target device (``winml.<v>.device_type``). The package runs exactly as a Windows ML
or Foundry Local user runs it: ``og.Model`` on the package folder, the OpenVINO EP registered from its plugin
(:mod:`pipeline.winml.runtime`). Where the plugin offers the target device, the cell runs there; where it offers
only the CPU, the provider options are overridden to CPU at load time and the cell says so ("Windows ML package,
OpenVINO EP, device overridden to CPU"); where it offers nothing (no Intel device: an AMD or Arm machine), the cell
is skipped with that reason; where it offers the device but the package does not run (the EP or onnxruntime-genai
raising), the cell fails with one line. Before it loads, the package must agree with itself: a malformed package,
or an NPU package whose ``genai_config.json``, ``npu_config.json`` and IR settings differ (:mod:`limits`), is a failed
cell with one line; so is a prompt longer than an NPU package takes. The first load compiles into an emptied per-user
compiled-model cache and a second load must reuse it: both load times go into the cell (``compile_cache``). Artifact fidelity runs with f32 compute requested through the EP's ``load_config``
(the CPU default is bf16 on AMX / AVX512-BF16 CPUs); device numerics at the EP's defaults. Metrics format, speed
and greedy comparison are those of every other validator.
Output: ``artifacts/metrics/winml-<variant>.json`` (DVC metrics).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.artifacts import remove_tree
from pipeline.core.config import ValidateConfig
from pipeline.core.errors import StageError, run_main
from pipeline.core.log import step
from pipeline.core.resources import check_stage_ram
from pipeline.core.stage import run_stage
from pipeline.core.workspace import PROJECT, Workspace
from pipeline.validation import fidelity, matrix, records, speed
from pipeline.validation.evidence import Evidence
from pipeline.validation.genai_runner import CellError, attempt, generate, time_prompt
from pipeline.validation.template import NotRun, ValidationJob, Validator, ValidatorSteps, validate
from pipeline.winml import export, limits, runtime

OVERRIDDEN = "Windows ML package, OpenVINO EP, device overridden to CPU"


def plan_cell(target: str, status: runtime.PluginStatus) -> matrix.CellPlan:
    """The cell of a package built for ``target``: on it, on CPU by override, or skipped with the reason."""
    if status.reason:
        return matrix.CellPlan(target, target, skip_reason=status.reason)
    if target in status.devices:
        return matrix.CellPlan(target, target)
    if "CPU" in status.devices:
        note = f"the OpenVINO EP offers {', '.join(status.devices)} here, no {target}: device_type overridden to CPU"
        return matrix.CellPlan(target, "CPU", note=note)
    return matrix.CellPlan(
        target, target, skip_reason=f"the OpenVINO EP offers {', '.join(status.devices)}, not {target} or CPU"
    )


def forced_logits(model: Any, windows: list[list[int]]) -> list[Any]:
    """The package's logits (float32, one row per position) over every teacher-forced window.

    One token at a time: with ``enable_causallm`` the EP runs the IR statefully and onnxruntime-genai hands back
    only the last position's logits ("trimmed prefill logits", src/models/logits.cpp), so a whole-window prefill
    gives one row. Each window starts a new generator, which starts from an empty KV cache. Measured on the tiny
    model with f32 compute: equal to the IR's own full-sequence logits (``ov.Core``, same settings) within 1e-5.
    """
    import numpy as np
    import onnxruntime_genai as og

    out = []
    for window in windows:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(window) + 1)
        generator = og.Generator(model, params)
        rows = []
        for token in window:
            generator.append_tokens([token])
            rows.append(np.asarray(generator.get_output("logits"), dtype=np.float32).reshape(-1))
        out.append(np.stack(rows))
    return out


def cached_loads(folder: str, device: str, cache_dir: Path) -> tuple[Any, dict[str, Any]]:
    """Load the package twice with an emptied compiled-model cache: the second load must read what the first wrote.

    Returns:
        The second model, and what the cache did: both load times, the files the first load wrote, whether the
        second found them unchanged (``reused``).
    """
    remove_tree(cache_dir)
    start = time.perf_counter()
    model = runtime.load_model(folder, device, pinned=False, cache_dir=cache_dir)
    first_s = time.perf_counter() - start
    del model
    written = _cache_files(cache_dir)
    start = time.perf_counter()
    model = runtime.load_model(folder, device, pinned=False, cache_dir=cache_dir)
    cached_s = time.perf_counter() - start
    return model, {
        "cache_dir": str(cache_dir),
        "compile_load_s": round(first_s, 3),
        "cached_load_s": round(cached_s, 3),
        "files": len(written),
        "bytes": sum(size for size, _ in written.values()),
        "reused": bool(written) and _cache_files(cache_dir) == written,
    }


def _cache_files(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time (ns)."""
    found = (p for p in Path(folder).rglob("*") if p.is_file()) if Path(folder).is_dir() else ()
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns) for p in found}


def package_problem(folder: Path, target: str, manifest: dict[str, Any]) -> str | None:
    """One line when the package contradicts itself: its layout, or (NPU) its genai_config, npu_config.json and IR."""
    if target == "NPU" and (folder / "genai_config.json").is_file():
        genai = json.loads((folder / "genai_config.json").read_text(encoding="utf-8"))
        found = limits.agreement_problems(genai, limits.npu_settings(folder), manifest.get("npu_run_settings") or {})
        if found:
            return f"[winml {folder.name}] the package, its npu_config.json and its IR disagree: {'; '.join(found)}"
    try:
        export.verify_package(folder, target, manifest.get("source_ir", {}).get("files_sha256", {}))
    except StageError as err:
        return str(err)
    return None


def check_prompts(folder: Path, target: str, prompts: list[list[int]]) -> None:
    """Raise :class:`CellError` (one line) for the first prompt longer than the package takes (NPU packages)."""
    settings = limits.npu_settings(folder)
    for ids in prompts:
        line = limits.prompt_problem(len(ids), settings, target)
        if line:
            raise CellError(line)


def measure_cell(
    folder: Path, plan: matrix.CellPlan, cfg: ValidateConfig, evidence: Evidence, cache_dir: Path
) -> tuple[matrix.Measurement, dict[str, Any]]:
    """Generation and speed at the EP's defaults, then fidelity with f32 compute pinned and at the defaults.

    Also returns what the compiled-model cache (``cache_dir``) did: :func:`cached_loads`.
    """
    import onnxruntime_genai as og

    records.reset_peak_rss()
    reference, where = evidence.reference, f"[winml-{folder.name} @ {plan.column}]"
    prompts = [c["prompt_ids"] for c in reference.get("greedy", [])]
    check_prompts(folder, plan.column, prompts + list(reference.get("perf_prompts", {}).values()))
    loading = f"load the package on the OpenVINO EP (device_type {plan.device})"
    with step(f"{where} loading the package on the OpenVINO EP, device_type {plan.device}, twice"), attempt(loading):
        model, cache = cached_loads(str(folder), plan.device, cache_dir)
        load_s = cache["compile_load_s"]
    timed = {} if overridden_speed(plan, cfg) else reference["perf_prompts"]  # an override is a CPU stand-in
    with step(f"{where} generating with onnxruntime-genai"), attempt("generate with onnxruntime-genai"):
        outputs = [generate(model, case["prompt_ids"], cfg.max_new_tokens)[0] for case in reference["greedy"]]
        perf = {
            name: matrix.Perf.from_runs(
                **time_prompt(model, ids, cfg.perf_new_tokens, cfg.warmup, cfg.repeats, cfg.perf_budget_s)
            )
            for name, ids in timed.items()
        }
        tokenizer = og.Tokenizer(model)
        same = all([int(t) for t in tokenizer.encode(c["prompt"])] == c["prompt_ids"] for c in reference["greedy"])
        defaults = forced_logits(model, evidence.windows)
    del model
    pinning = f"run the package with f32 compute requested through load_config ({runtime.PINNED})"
    with step(f"{where} teacher-forced comparison with PyTorch, f32 compute requested"), attempt(pinning):
        pinned_model = runtime.load_model(str(folder), plan.device, pinned=True, cache_dir=cache_dir)
        pinned = forced_logits(pinned_model, evidence.windows)
    return matrix.Measurement(
        executed=plan.device,  # the OpenVINO EP has no fallback: a device it cannot use fails the load
        load_s=load_s,
        peak_rss_mb=records.peak_rss_mb(),
        perf=perf,
        fidelity=fidelity.compare(evidence.logprobs, pinned).as_dict(),
        outputs=outputs,
        tokenizer_matches_reference=same,
        sample=tokenizer.decode(outputs[0]),
        artifact_numerics={"label": "f32 compute, f32 KV cache (requested through the EP's load_config)"},
        device_fidelity=fidelity.compare(evidence.logprobs, defaults).as_dict(),
        device_numerics={"label": f"the OpenVINO EP's {plan.device} defaults (not read back through ONNX Runtime)"},
        drift=fidelity.agreement(pinned, defaults),
    ), cache


def overridden_speed(plan: matrix.CellPlan, cfg: ValidateConfig) -> str | None:
    """Why a package overridden to the CPU runs no speed runs (:func:`pipeline.validation.speed.not_measured`)."""
    return speed.not_measured(plan.column if plan.device != plan.column else None, cfg)


@dataclass(frozen=True)
class WinmlValidator(ValidatorSteps):
    """The Windows ML family's validation steps: one cell, the package's target device on the OpenVINO EP plugin."""

    status: runtime.PluginStatus | None = None  # what the plugin offers (found when None; tests pass a fake)
    family: str = "winml"
    cell_errors: tuple[type[Exception], ...] = (CellError,)  # the device is offered but the package did not run

    def weight_format(self, manifest: dict[str, Any]) -> str:
        """The wrapped IR's weight format."""
        return str(manifest.get("source_ir_parameters", {}).get("weight_format", "int4"))

    def plan(self, job: ValidationJob) -> list[matrix.CellPlan]:
        """The target device, or the CPU by override; skipped where the plugin offers neither, failed (one line)
        where the package contradicts itself."""
        target = job.manifest["parameters"]["device_type"]
        status = job.facts["status"] = self.status or runtime.plugin_status()
        plan, kind = plan_cell(target, status), self.kind(job)
        if plan.skip_reason:
            cell = matrix.skipped_cell(plan, kind)
            cell.label = f"{kind}, skipped: the OpenVINO EP cannot run it here"
            raise NotRun({plan.column: cell})
        check_stage_ram("validate_winml", job.name, job.folder)  # before the package is read (its IR is hashed)
        problem = package_problem(job.folder, target, job.manifest)
        if problem:
            raise NotRun({plan.column: matrix.failed_cell(plan, kind, problem)})
        job.row = target.lower()
        return [plan]

    def measure(self, job: ValidationJob, plan: matrix.CellPlan) -> matrix.Measurement:
        """Two loads through an emptied compiled-model cache, generation, both fidelity figures."""
        cache_dir = limits.own_cache_dir(job.folder, plan.device)
        got, job.facts["cache"] = measure_cell(job.folder, plan, job.cfg, job.evidence, cache_dir)
        return got

    def judge(self, job: ValidationJob, plan: matrix.CellPlan, got: matrix.Measurement) -> matrix.Cell:
        """The common verdict, and a second load that did not reuse the cache fails it; an override is labelled."""
        cell = super().judge(job, plan, got)
        cell.compile_cache = cache = job.facts["cache"]
        if not cache["reused"]:
            cell.status = "failed"
            cell.problems.append(f"the second load did not reuse the compiled-model cache in {cache['cache_dir']}")
        if plan.device != plan.column:
            cell.label = OVERRIDDEN
            cell.speed_not_measured = overridden_speed(plan, job.cfg)
        return cell

    def finish(self, job: ValidationJob, cells: dict[str, matrix.Cell]) -> None:
        """Name the plugin that ran the cell (and, in tests, the emulation standing in for it)."""
        status = job.facts["status"]
        bundled = runtime.BUNDLED_OPENVINO.get(status.version or "")
        ran_with = f"ran with {runtime.PLUGIN} {status.version} (OpenVINO {bundled})"
        for cell in cells.values():
            cell.note = "; ".join(filter(None, [cell.note, ran_with, status.emulated]))
            if status.emulated:  # tests only: never presented as what the plugin offers on this machine
                cell.label = f"{cell.label} ({status.emulated})"

    def recipe(self, job: ValidationJob) -> tuple[str, dict[str, Any], str]:
        """The package wraps an IR: its recipe is that IR's (its parameters, its params key)."""
        source = job.manifest["parameters"]
        wrapped = {"parameters": job.manifest.get("source_ir_parameters", {})}
        return source["source"], wrapped, f"{source['source']}.{source['source_variant']}"


VALIDATOR: Validator = WinmlValidator()  # mypy checks the steps against the Protocol


def run(name: str, cfg: ValidateConfig, ws: Workspace = PROJECT, *, status: runtime.PluginStatus | None = None) -> dict:
    """Validate package ``name`` on its target device (or CPU by override, or skipped); write its metrics."""
    return validate(WinmlValidator(status), name, cfg, ws)


if __name__ == "__main__":  # the stage: `python -m pipeline.winml.validate <variant>`
    run_main(lambda: run_stage("winml", "validate"))
