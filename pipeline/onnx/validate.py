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
import statistics
import time
from pathlib import Path
from typing import Any

from pipeline.core.artifacts import ARTIFACTS
from pipeline.core.config import ValidateConfig
from pipeline.core.errors import fail, run_main
from pipeline.core.log import step
from pipeline.core.manifest import read_manifest
from pipeline.core.memory import check_stage_ram
from pipeline.core.stage import run_stage
from pipeline.validation import fidelity, matrix, records
from pipeline.validation.devices import ONNX_PROVIDER_DEVICES, onnx_provider_status
from pipeline.validation.evidence import Evidence, verdicts_for

ONNX_ROOT = ARTIFACTS / "onnx"
REFERENCE = ARTIFACTS / "reference" / "reference.json"
METRICS_DIR = ARTIFACTS / "metrics"


def provider_available(provider: str) -> bool:
    """Whether the installed onnxruntime-genai can run ``provider`` on this machine."""
    return onnx_provider_status(provider).available


def load_model(folder: Path, provider: str, device: str) -> tuple[Any, str, float]:
    """Load ``folder`` with its ``provider`` (or, for a CPU cell, the default CPU provider); model, device, seconds."""
    import onnxruntime_genai as og

    start = time.perf_counter()
    config = og.Config(str(folder))
    if device == "CPU" and provider != "cpu":
        config.clear_providers()  # same files, default (CPU) provider: the stand-in cell
    model = og.Model(config)
    return model, str(model.device_type).upper(), time.perf_counter() - start


def generate(
    model: Any, prompt_ids: list[int], max_new_tokens: int, exact: bool = False
) -> tuple[list[int], float, list[float]]:
    """Greedy generation (``exact``: ignore EOS); returns new token ids, time to first token (s), later per-token times (s)."""
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    length = len(prompt_ids) + max_new_tokens
    params.set_search_options(max_length=length, do_sample=False, **({"min_length": length} if exact else {}))
    start = time.perf_counter()
    generator = og.Generator(model, params)
    generator.append_tokens(prompt_ids)
    out, steps, first = [], [], 0.0
    while not generator.is_done():
        tick = time.perf_counter()
        generator.generate_next_token()
        out.append(int(generator.get_next_tokens()[0]))
        if len(out) == 1:
            first = time.perf_counter() - start
        else:
            steps.append(time.perf_counter() - tick)
    return out, first, steps


def time_prompt(model: Any, prompt_ids: list[int], cfg: ValidateConfig) -> matrix.Perf:
    """TTFT/TPOT of greedy generation of exactly ``perf_new_tokens`` after ``prompt_ids`` (warm-up excluded)."""
    ttft, tpot = [], []
    for i in range(cfg.warmup + cfg.repeats):
        _, first, steps = generate(model, prompt_ids, cfg.perf_new_tokens, exact=True)
        if i >= cfg.warmup:
            ttft.append(first * 1000)
            tpot.append(statistics.mean(steps) * 1000 if steps else float("nan"))
    return matrix.Perf.from_runs(len(prompt_ids), cfg.perf_new_tokens, ttft, tpot)


def measure_generation(model: Any, cfg: ValidateConfig, reference: dict) -> dict[str, Any]:
    """Generate for every reference prompt and time every configured prompt length."""
    import onnxruntime_genai as og

    tokenizer = og.Tokenizer(model)
    outputs = [generate(model, case["prompt_ids"], cfg.max_new_tokens)[0] for case in reference["greedy"]]
    perf = {name: time_prompt(model, ids, cfg) for name, ids in reference["perf_prompts"].items()}
    matches = [[int(t) for t in tokenizer.encode(case["prompt"])] == case["prompt_ids"] for case in reference["greedy"]]
    return {
        "outputs": outputs,
        "perf": perf,
        "text": tokenizer.decode(outputs[0]),
        "tokenizer_matches_reference": all(matches),
    }


def teacher_forced_logits(
    model: Any, windows: list[list[int]], context: int | None = None, chunk: int = 1024
) -> list[Any]:
    """The model's prefill logits over every window (float32), appended in chunks of ``chunk`` tokens.

    Chunks, because a graph built with a windowed KV cache (the builder's default for a sliding-window model on
    CPU) rejects a single prompt longer than its window; ``context`` caps ``max_length`` at the graph's.
    """
    import numpy as np
    import onnxruntime_genai as og

    logits = []
    for window in windows:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=min(len(window) + 1, context or len(window) + 1))
        generator = og.Generator(model, params)
        parts = []
        for start in range(0, len(window), chunk):
            generator.append_tokens(window[start : start + chunk])
            parts.append(np.asarray(generator.get_output("logits"), dtype=np.float32)[0])
        logits.append(np.concatenate(parts))
    return logits


def graph_context(folder: Path) -> int | None:
    """The context length written into ``genai_config.json`` (the longest sequence the graph accepts)."""
    config = json.loads((folder / "genai_config.json").read_text(encoding="utf-8"))
    return config.get("model", {}).get("context_length")


def measure_cell(
    folder: Path, provider: str, plan: matrix.CellPlan, cfg: ValidateConfig, evidence: Evidence
) -> matrix.Measurement:
    """Run one cell: load on the cell's provider, generate and time, then fidelity from the prefill logits."""
    name, reference = folder.name, evidence.reference
    records.reset_peak_rss()
    with step(f"[onnx-{name} @ {plan.column}] loading the {provider.upper()} graph on {plan.device}"):
        model, executed, load_s = load_model(folder, provider, plan.device)
    with step(f"[onnx-{name} @ {plan.column}] generating on {executed}"):
        gen = measure_generation(model, cfg, reference)
    with step(f"[onnx-{name} @ {plan.column}] teacher-forced comparison with PyTorch (short and long windows)"):
        logits = teacher_forced_logits(model, evidence.windows + evidence.long_windows, graph_context(folder))
    short, long = logits[: len(evidence.windows)], logits[len(evidence.windows) :]
    long_context = (
        fidelity.compare_ranges(evidence.long_logprobs, long, reference["long_context"]["boundaries"]) if long else []
    )
    # The graph fixes its own arithmetic (its io dtype, the provider's kernels): one fidelity figure, no pinning.
    return matrix.Measurement(
        executed=executed,
        load_s=load_s,
        peak_rss_mb=records.peak_rss_mb(),
        perf=gen["perf"],
        fidelity=fidelity.compare(evidence.logprobs, short).as_dict(),
        outputs=gen["outputs"],
        tokenizer_matches_reference=gen["tokenizer_matches_reference"],
        sample=gen["text"],
        artifact_numerics={"label": "as the graph computes"},
        long_context=long_context,
        note=long_context_note(
            long_context, cfg.long_context_thresholds(read_manifest(folder)["parameters"]["precision"])
        ),
    )


def long_context_note(ranges: list[dict[str, Any]], limits: dict[str, float | None]) -> str | None:
    """ONNX long-context ranges below the thresholds, recorded but not judged (see ``verdicts_for_onnx``)."""
    thresholds = matrix.Thresholds("long-context", **limits)
    misses = [
        f"positions {r['start']}-{r['stop']} of {r['window']}: top-1 {r['top1_agreement']:.3f}"
        for r in ranges
        if thresholds.problems(r)
    ]
    if not misses:
        return None
    return (
        "long context not judged for ONNX (the builder's sliding-window attention departs from transformers' "
        f"past the window): {', '.join(misses)}"
    )


def verdicts_for_onnx(cfg: ValidateConfig, precision: str) -> matrix.Verdicts:
    """The artifact thresholds of ``precision``; long-context ranges are recorded, not judged (noted in the cell)."""
    verdicts = verdicts_for(cfg, precision)
    verdicts.long_context = None
    return verdicts


def run(
    name: str,
    cfg: ValidateConfig,
    onnx_root: Path = ONNX_ROOT,
    reference_path: Path = REFERENCE,
    metrics_dir: Path = METRICS_DIR,
) -> dict:
    """Validate ONNX variant ``name`` on its provider (or a labelled CPU stand-in); write metrics; fail on a failed cell."""
    folder = onnx_root / name
    params = read_manifest(folder)["parameters"]
    if params["exclude_embeds"] or params["exclude_lm_head"]:
        fail(
            f"[{name}] was built with exclude_embeds/exclude_lm_head: it is a pipeline component, not a text "
            f"model that validate_onnx can run; build it with `dvc repro export_onnx@{name}` only"
        )
    evidence = Evidence.load(reference_path)
    provider, precision = params["execution_provider"], params["precision"]
    check_stage_ram("validate_onnx", f"{provider}_{precision}", folder)
    device = ONNX_PROVIDER_DEVICES[provider]
    thresholds = verdicts_for_onnx(cfg, precision)
    kind = f"{device} graph"
    cells = {}
    for plan in matrix.plan_cells([device], {device: onnx_provider_status(provider)}, cfg.cpu_stand_in):
        if plan.skip_reason:
            cells[plan.column] = matrix.skipped_cell(plan, kind)
            continue
        got = measure_cell(folder, provider, plan, cfg, evidence)
        cells[plan.column] = matrix.judge(plan, got, evidence.reference, thresholds, kind)
    return records.publish_cells(
        f"onnx-{name}", "onnx", precision, folder, cfg.thresholds(precision), cells, metrics_dir
    )


if __name__ == "__main__":  # the stage: `python -m pipeline.onnx.validate <variant>`
    run_main(lambda: run_stage("onnx", "validate"))
