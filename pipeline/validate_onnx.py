"""Stage ``validate_onnx@<variant>``: run the exact exported files with onnxruntime-genai and compare with PyTorch.

The model runs on the execution provider it was built for when this machine has it (DirectML on
Windows); otherwise the providers are cleared and the same files run on the CPU provider, and the
result says so ("DML graph, validated on CPU provider"). Metrics and fidelity comparison are those of
``validate@<variant>`` for OpenVINO, in the same format.
Output: ``artifacts/metrics/onnx-<variant>.json`` (DVC metrics).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from pipeline.artifacts import ARTIFACTS, folder_bytes, peak_rss_bytes, read_manifest
from pipeline.config import ConfigError, ValidateConfig, load_params
from pipeline.errors import fail, run_main
from pipeline.log import step
from pipeline.validate import greedy_match, publish_metrics

ONNX_ROOT = ARTIFACTS / "onnx"
REFERENCE = ARTIFACTS / "reference" / "reference.json"
METRICS_DIR = ARTIFACTS / "metrics"
# validate.min_top1_agreement has int4/int8/fp16 keys; fp32 is held to the fp16 bar.
THRESHOLD_KEY = {"fp32": "fp16"}


def provider_available(provider: str) -> bool:
    """Whether the installed onnxruntime-genai can run ``provider`` on this machine."""
    import onnxruntime_genai as og

    checks = {"cpu": lambda: True, "dml": og.is_dml_available, "cuda": og.is_cuda_available,
              "webgpu": og.is_webgpu_available}
    return bool(checks[provider]())


def load_model(folder: Path, provider: str) -> tuple[Any, str, float]:
    """Load ``folder`` on ``provider``, or on the CPU provider when it is absent; return model, device, seconds."""
    import onnxruntime_genai as og

    start = time.perf_counter()
    config = og.Config(str(folder))
    if not provider_available(provider):
        config.clear_providers()  # same files, default (CPU) provider
    model = og.Model(config)
    return model, str(model.device_type).upper(), time.perf_counter() - start


def generate(model: Any, prompt_ids: list[int], max_new_tokens: int) -> tuple[list[int], float, list[float]]:
    """Greedy generation; returns new token ids, time to first token (s) and the later per-token times (s)."""
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt_ids) + max_new_tokens, do_sample=False)
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


def measure_generation(model: Any, cfg: ValidateConfig, reference: dict) -> dict[str, Any]:
    """Generate for every reference prompt and time the first one (warm-up excluded, median of repeats)."""
    import onnxruntime_genai as og

    tokenizer = og.Tokenizer(model)
    outputs = [generate(model, case["prompt_ids"], cfg.max_new_tokens)[0] for case in reference["greedy"]]
    ttft, tpot = [], []
    for i in range(cfg.warmup + cfg.repeats):
        _, first, steps = generate(model, reference["greedy"][0]["prompt_ids"], cfg.max_new_tokens)
        if i >= cfg.warmup:
            ttft.append(first * 1000)
            tpot.append(statistics.mean(steps) * 1000 if steps else float("nan"))
    matches = [[int(t) for t in tokenizer.encode(case["prompt"])] == case["prompt_ids"] for case in reference["greedy"]]
    tpot_ms = statistics.median(tpot)
    return {"ttft_ms": round(statistics.median(ttft), 3), "tpot_ms": round(tpot_ms, 3),
            "tokens_per_s": round(1000 / tpot_ms, 2), "outputs": outputs,
            "text": tokenizer.decode(outputs[0]), "tokenizer_matches_reference": all(matches)}


def teacher_forced_agreement(model: Any, reference: dict) -> float:
    """Top-1 agreement with the reference over the held-out windows (prefill logits of each window)."""
    import numpy as np
    import onnxruntime_genai as og

    agree = total = 0
    for window in reference["teacher_forced"]:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(window["input_ids"]) + 1)
        generator = og.Generator(model, params)
        generator.append_tokens(window["input_ids"])
        top1 = np.asarray(generator.get_output("logits"))[0].argmax(-1)
        agree += int((top1 == np.array(window["top1"])).sum())
        total += len(window["top1"])
    return agree / total


def run(name: str, cfg: ValidateConfig, onnx_root: Path = ONNX_ROOT, reference_path: Path = REFERENCE,
        metrics_dir: Path = METRICS_DIR) -> dict:
    """Validate ONNX variant ``name``; write its metrics; fail if fidelity or provider checks fail."""
    folder = onnx_root / name
    params = read_manifest(folder)["parameters"]
    if params["exclude_embeds"] or params["exclude_lm_head"]:
        fail(f"[{name}] was built with exclude_embeds/exclude_lm_head: it is a pipeline component, not a text "
             f"model that validate_onnx can run; build it with `dvc repro export_onnx@{name}` only")
    reference = json.loads(Path(reference_path).read_text(encoding="utf-8"))
    provider, precision = params["execution_provider"], params["precision"]
    with step(f"[{name}] loading the {provider.upper()} graph with onnxruntime-genai"):
        model, executed, load_s = load_model(folder, provider)
    label = f"{provider.upper()} graph, validated on {executed} provider"
    note = None if executed == provider.upper() else (f"no {provider.upper()} provider in the installed "
                                                      f"onnxruntime-genai here; the same files ran on {executed}")
    with step(f"[{name}] generating ({label})"):
        gen = measure_generation(model, cfg, reference)
    with step(f"[{name}] teacher-forced comparison with PyTorch"):
        top1 = teacher_forced_agreement(model, reference)
    peak_rss = peak_rss_bytes()
    exact, divergence = greedy_match(gen["outputs"], reference)
    threshold = cfg.min_top1_agreement.get(THRESHOLD_KEY.get(precision, precision), 0.0)
    problems = []
    if top1 < threshold:
        problems.append(f"top-1 agreement {top1:.3f} below the {precision} threshold {threshold}")
    if provider_available(provider) and executed != provider.upper():
        problems.append(f"{provider} is available but the model ran on {executed}")
    if not gen["tokenizer_matches_reference"]:
        problems.append("the exported tokenizer tokenizes the prompts differently from the original tokenizer")
    metrics = {
        "artifact": f"onnx-{name}", "weight_format": precision, "device_requested": provider.upper(),
        "device_executed": executed, "label": label, "load_s": round(load_s, 4), "ttft_ms": gen["ttft_ms"],
        "tpot_ms": gen["tpot_ms"], "tokens_per_s": gen["tokens_per_s"], "peak_rss_mb": round(peak_rss / 2**20, 1),
        "size_mb": round(folder_bytes(folder) / 2**20, 3), "top1_agreement": round(top1, 4),
        "fidelity_device": executed, "greedy_exact_match": round(exact, 4), "first_divergence": divergence,
        "min_top1_agreement": threshold, "tokenizer_matches_reference": gen["tokenizer_matches_reference"],
        "note": note, "sample": gen["text"][:200], "passed": not problems, "problems": problems,
    }
    return publish_metrics(metrics, Path(metrics_dir) / f"onnx-{name}.json")


def main(argv: list[str] | None = None) -> None:
    """DVC entry point: ``python -m pipeline.validate_onnx <variant>``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", help="key under `onnx` in params.yaml, e.g. dml_int4")
    args = parser.parse_args(argv)
    params = load_params()
    if args.variant not in params.onnx:
        raise ConfigError(f"unknown ONNX variant '{args.variant}': configured ones are {', '.join(params.onnx)}")
    run(args.variant, params.validate)


if __name__ == "__main__":
    run_main(main)
