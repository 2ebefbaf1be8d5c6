"""Stage ``validate_onnx@<variant>``: run the exact exported files with onnxruntime-genai and compare with PyTorch.

The variant targets the execution provider it was built for (``onnx.<v>.execution_provider``: DML, CPU,
CUDA): one matrix cell (:mod:`pipeline.validation.matrix`). Where this machine lacks that provider the cell is
skipped with the reason, and the providers are cleared so the same files run on the CPU provider in a
cell labelled as a stand-in ("DML graph, validated on CPU (stand-in: no DML here)"). Speed, fidelity
(top-1 agreement, KL divergence and perplexity from the model's own prefill logits) and the metrics
format are those of ``validate@<variant>`` for OpenVINO.
Output: ``artifacts/metrics/onnx-<variant>.json`` (DVC metrics).
"""

from __future__ import annotations

import json
import platform
import tempfile
from pathlib import Path
from typing import Any

from pipeline.core.config import ValidateConfig
from pipeline.core.errors import StageError, fail, run_main
from pipeline.core.log import step
from pipeline.core.manifest import read_manifest
from pipeline.core.stage import run_stage
from pipeline.core.workspace import PROJECT, Workspace
from pipeline.onnx import compat
from pipeline.validation import fidelity, matrix, records, speed
from pipeline.validation import genai_runner as runner
from pipeline.validation.devices import ONNX_PROVIDER_DEVICES, DeviceStatus, onnx_provider_status
from pipeline.validation.evidence import Evidence
from pipeline.validation.template import ValidationJob, Validator, ValidatorSteps, fit_ram, validate

# ONNX Runtime session entries for the cells that run on the CPU provider (docs/onnx.md, "Memory"). Its memory
# arena keeps the largest transient buffers of a session (a 4096-token window's attention probabilities, 2 GiB
# at full size) until the end; without it they are returned: the same logits, bit for bit, at the same speed.
# (An fp16 graph still needs a float32 copy of its weights there: the CPU provider has no fp16 MatMul on x86.)
CPU_SESSION_OPTIONS: dict[str, str | bool] = {"enable_cpu_mem_arena": False}


def provider_status(provider: str) -> DeviceStatus:
    """Whether ``provider`` can run here: DirectML in its own environment on Windows, others in this one."""
    if provider != "dml" or platform.system() != "Windows":
        return onnx_provider_status(provider)
    runtime = compat.DML_RUNTIME
    return DeviceStatus(
        "DML",
        True,
        full_name=f"{' + '.join(compat.DML_RUNTIMES[runtime])} (own environment {compat.env_dir(runtime, True).name})",
    )


def session_options(device: str) -> dict[str, str | bool]:
    """ONNX Runtime session entries for a cell on ``device``: :data:`CPU_SESSION_OPTIONS` on the CPU, none
    elsewhere (DirectML, CUDA run as built)."""
    return dict(CPU_SESSION_OPTIONS) if device == "CPU" else {}


def cell_request(
    folder: Path, provider: str, device: str, cfg: ValidateConfig, evidence: Evidence, measure_speed: bool = True
) -> dict[str, Any]:
    """What :func:`pipeline.validation.genai_runner.measure` runs for one cell (JSON, so it can cross into another
    environment); ``measure_speed=False``: no speed runs (a stand-in outside ``validate.profile=full``)."""
    greedy = evidence.reference["greedy"]
    context, kv_window = graph_limits(folder)
    return {
        "folder": str(folder.resolve()),
        "provider": provider,
        "device": device,
        "session_options": session_options(device),
        "prompts": [case["prompt"] for case in greedy],
        "prompt_ids": [case["prompt_ids"] for case in greedy],
        "max_new_tokens": [cfg.max_new_tokens] * len(greedy),
        "perf_prompts": evidence.reference["perf_prompts"] if measure_speed else {},
        "perf_new_tokens": cfg.perf_new_tokens,
        "warmup": cfg.warmup,
        "repeats": cfg.repeats,
        "perf_budget_s": cfg.perf_budget_s,
        "windows": evidence.windows + evidence.long_windows,
        "context": context,
        "chunk": kv_window,
    }


def run_cell(request: dict[str, Any], python: Path | None = None) -> tuple[dict[str, Any], list[Any]]:
    """Run ``request`` here (``python`` None) or under ``python``, an isolated environment; result and logits.

    Raises :class:`~pipeline.validation.genai_runner.CellError` with one line when the runtime cannot load or run the folder.
    """
    if python is None:
        result: dict[str, Any] = {}
        records.reset_peak_rss()
        try:
            logits = runner.measure(request, result)
        except Exception as err:  # the runtime refused the graph: a failed cell with its reason, not a traceback
            raise runner.CellError(f"cannot {result.get('step', 'run')}: {runner.error_line(err)}") from err
        result["peak_rss_mb"] = records.peak_rss_mb()
        return result, logits
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="aipc-cell-") as tmp:
        request = {**request, "logits_path": str(Path(tmp) / "logits.npz")}
        result = compat.run_script(Path(runner.__file__), request, python, runner.RESULT_MARK)
        if "error" in result:
            raise runner.CellError(f"{python} cannot {result['step']}: {result['error']}")
        with np.load(request["logits_path"]) as saved:
            logits = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    return result, logits


def graph_limits(folder: Path) -> tuple[int | None, int | None]:
    """From ``genai_config.json``: the context length (the longest sequence the graph accepts) and, if the graph
    has a windowed KV cache (``decoder.sliding_window``), its size: prompts longer than that are refused."""
    model = json.loads((folder / "genai_config.json").read_text(encoding="utf-8")).get("model", {})
    window = model.get("decoder", {}).get("sliding_window") or {}
    return model.get("context_length"), window.get("window_size")


def measure_cell(
    folder: Path,
    provider: str,
    plan: matrix.CellPlan,
    cfg: ValidateConfig,
    evidence: Evidence,
    python: Path | None = None,
) -> matrix.Measurement:
    """Run one cell (here, or in the isolated environment ``python``), then fidelity from the prefill logits."""
    name, reference = folder.name, evidence.reference
    where = f" in {python}" if python else ""
    measure_speed = speed.not_measured(plan.stand_in_for, cfg) is None
    with step(f"[onnx-{name} @ {plan.column}] running the {provider.upper()} graph on {plan.device}{where}"):
        got, logits = run_cell(cell_request(folder, provider, plan.device, cfg, evidence, measure_speed), python)
    short, long = logits[: len(evidence.windows)], logits[len(evidence.windows) :]
    long_context = evidence.compare_long(long)  # judged per range at the thresholds OpenVINO's IRs meet
    perf = {
        key: matrix.Perf.from_runs(p["prompt_tokens"], p["new_tokens"], p["ttft_ms"], p["tpot_ms"])
        for key, p in got["perf"].items()
    }
    # The graph fixes its own arithmetic (its io dtype, the provider's kernels): one fidelity figure, no pinning.
    return matrix.Measurement(
        executed=got["executed"],
        load_s=got["load_s"],
        peak_rss_mb=got["peak_rss_mb"],
        perf=perf,
        fidelity=fidelity.compare(evidence.logprobs, short).as_dict(),
        outputs=got["outputs"],
        tokenizer_matches_reference=got["prompt_ids"] == [case["prompt_ids"] for case in reference["greedy"]],
        sample=got["texts"][0],
        artifact_numerics={"label": "as the graph computes", "runtime": got.get("runtime")},  # the build that ran
        long_context=long_context,
        note=sliding_window_note(folder, provider),
    )


def cell_python(provider: str, plan: matrix.CellPlan) -> Path | None:
    """The isolated interpreter a cell runs under: DirectML's own environment for a DML cell, else None (here)."""
    if provider == "dml" and plan.device == "DML":
        return compat.ensure_env(runtime=compat.DML_RUNTIME, directml=True)
    return None


def sliding_window_note(folder: Path, provider: str) -> str | None:
    """For a DirectML graph whose layers carry a sliding window: DirectML's GroupQueryAttention ignores it.

    The DML kernel (onnxruntime ``DmlOperatorGroupQueryAttention.cpp``) never reads ``local_window_size``, so on a
    DirectML device positions past the window attend to every earlier key; the CPU provider (a stand-in cell)
    applies the window as transformers does (docs/onnx.md, "Sliding window"). Models without one get no note.
    """
    windows = [w for w in read_manifest(folder).get("structure", {}).get("attention_windows", []) if w > 0]
    if provider != "dml" or not windows:
        return None
    return (
        f"DirectML's GroupQueryAttention ignores the graph's sliding window ({min(windows)}): on a DML device "
        f"positions past {min(windows)} attend to every earlier token, unlike transformers"
    )


class OnnxValidator(ValidatorSteps):
    """The ONNX family's validation steps: one cell, the provider the graph was built for (or a CPU stand-in)."""

    family = "onnx"
    cell_errors = (runner.CellError, StageError)  # the runtime refused the graph, or no environment to run it in

    def weight_format(self, manifest: dict[str, Any]) -> str:
        """The builder's precision."""
        return str(manifest["parameters"]["precision"])

    def plan(self, job: ValidationJob) -> list[matrix.CellPlan]:
        """The provider's device if present here, else a CPU stand-in; CPU cells that do not fit the RAM skipped."""
        params = job.manifest["parameters"]
        if params["exclude_embeds"] or params["exclude_lm_head"]:
            fail(
                f"[{job.name}] was built with exclude_embeds/exclude_lm_head: it is a pipeline component, not a text "
                f"model that validate_onnx can run; build it with `dvc repro export_onnx@{job.name}` only"
            )
        provider = job.facts["provider"] = params["execution_provider"]
        device = ONNX_PROVIDER_DEVICES[provider]
        job.row = f"{provider}_{params['precision']}"
        plans = matrix.plan_cells([device], {device: provider_status(provider)}, job.cfg.cpu_stand_in)
        fit_ram(plans, job, "validate_onnx", lambda plan: plan.device == "CPU")  # measured on the CPU provider
        return plans

    def measure(self, job: ValidationJob, plan: matrix.CellPlan) -> matrix.Measurement:
        """Here, or in DirectML's own environment for a DML cell."""
        provider = job.facts["provider"]
        return measure_cell(job.folder, provider, plan, job.cfg, job.evidence, cell_python(provider, plan))

    def kind(self, job: ValidationJob) -> str:
        """``DML graph``: the device of the provider it was built for (judged at OpenVINO's thresholds)."""
        return f"{ONNX_PROVIDER_DEVICES[job.manifest['parameters']['execution_provider']]} graph"


VALIDATOR: Validator = OnnxValidator()  # mypy checks the steps against the Protocol


def run(name: str, cfg: ValidateConfig, ws: Workspace = PROJECT) -> dict:
    """Validate ONNX variant ``name`` on its provider (or a labelled CPU stand-in); write metrics; fail on a failed cell."""
    return validate(OnnxValidator(), name, cfg, ws)


if __name__ == "__main__":  # the stage: `python -m pipeline.onnx.validate <variant>`
    run_main(lambda: run_stage("onnx", "validate"))
