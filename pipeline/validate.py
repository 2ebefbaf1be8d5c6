"""Stage ``validate@<variant>``: run an exported IR with ``openvino_genai`` and compare it with PyTorch.

Measures load time, time to first token, time per output token, tokens/s and peak RSS (warm-up
excluded, median of repeats), then fidelity against ``artifacts/reference``: teacher-forced top-1
agreement on held-out text and greedy exact match on the prompts. The device that really executed
is read back from the compiled model and recorded; a fallback to another device fails validation.
Output: ``artifacts/metrics/openvino-<variant>.json`` (DVC metrics).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.artifacts import ARTIFACTS, folder_bytes, peak_rss_bytes, read_manifest, write_json_atomic
from pipeline.config import ConfigError, ValidateConfig, load_params
from pipeline.devices import executed_device
from pipeline.errors import fail, run_main
from pipeline.log import say, step

IR_ROOT = ARTIFACTS / "openvino"
NPU_ROOT = ARTIFACTS / "npu"
REFERENCE = ARTIFACTS / "reference" / "reference.json"
METRICS_DIR = ARTIFACTS / "metrics"


@dataclass
class Target:
    """One artifact on one device: what to load, where, with which properties, and how to label it."""

    artifact: str
    ir_dir: Path
    device: str
    properties: dict[str, Any] = field(default_factory=dict)
    kind: str = "OpenVINO IR"
    note: str | None = None


def measure_generation(target: Target, cfg: ValidateConfig, reference: dict) -> dict[str, Any]:
    """Load the IR in ``LLMPipeline``, generate greedily and time it; returns metrics and outputs."""
    import numpy as np
    import openvino as ov
    import openvino_genai as ov_genai

    start = time.perf_counter()
    pipe = ov_genai.LLMPipeline(str(target.ir_dir), target.device, **target.properties)
    load_s = time.perf_counter() - start
    gen_cfg = pipe.get_generation_config()
    gen_cfg.max_new_tokens, gen_cfg.do_sample = cfg.max_new_tokens, False
    outputs, ttft, tpot, tps = [], [], [], []
    for case in reference["greedy"]:
        ids = ov.Tensor(np.array([case["prompt_ids"]], dtype=np.int64))
        outputs.append(list(pipe.generate(ids, gen_cfg).tokens[0]))
    first = reference["greedy"][0]["prompt_ids"]
    for i in range(cfg.warmup + cfg.repeats):
        result = pipe.generate(ov.Tensor(np.array([first], dtype=np.int64)), gen_cfg)
        if i >= cfg.warmup:
            metrics = result.perf_metrics
            ttft.append(metrics.get_ttft().mean)
            tpot.append(metrics.get_tpot().mean)
            tps.append(metrics.get_throughput().mean)
    text_cfg = pipe.get_generation_config()
    text_cfg.max_new_tokens, text_cfg.do_sample, text_cfg.apply_chat_template = cfg.max_new_tokens, False, False
    text = pipe.generate(reference["greedy"][0]["prompt"], text_cfg)
    ov_prompt_ids = [int(i) for i in pipe.get_tokenizer().encode(reference["greedy"][0]["prompt"],
                                                                  add_special_tokens=False).input_ids.data[0]]
    return {"load_s": round(load_s, 4), "ttft_ms": round(statistics.median(ttft), 3),
            "tpot_ms": round(statistics.median(tpot), 3), "tokens_per_s": round(statistics.median(tps), 2),
            "outputs": outputs, "text": str(text),
            "tokenizer_matches_reference": ov_prompt_ids == reference["greedy"][0]["prompt_ids"]}


def teacher_forced_agreement(ir_dir: Path, device: str, reference: dict) -> tuple[float, str]:
    """Top-1 agreement with the reference over the held-out windows, and the device that executed."""
    import numpy as np
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(ir_dir / "openvino_model.xml")), device)
    executed = ",".join(compiled.get_property("EXECUTION_DEVICES"))
    request = compiled.create_infer_request()
    agree = total = 0
    for window in reference["teacher_forced"]:
        ids = np.array([window["input_ids"]], dtype=np.int64)
        request.reset_state()
        request.infer({"input_ids": ids, "attention_mask": np.ones_like(ids),
                       "position_ids": np.arange(ids.shape[1], dtype=np.int64)[None],
                       "beam_idx": np.zeros(1, dtype=np.int32)})
        top1 = request.get_tensor("logits").data[0].argmax(-1)
        agree += int((top1 == np.array(window["top1"])).sum())
        total += len(window["top1"])
    return agree / total, executed


def greedy_match(outputs: list[list[int]], reference: dict) -> tuple[float, list[int | None]]:
    """Share of prompts whose greedy output equals the reference, and each first divergent index."""
    divergence = []
    for got, case in zip(outputs, reference["greedy"]):
        want = case["output_ids"]
        index = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)
        if index is None and len(got) != len(want):
            index = min(len(got), len(want))
        divergence.append(index)
    return sum(d is None for d in divergence) / len(divergence), divergence


def openvino_target(name: str, cfg: ValidateConfig, root: Path = IR_ROOT) -> Target:
    """An OpenVINO IR variant on the configured device."""
    return Target(f"openvino-{name}", root / name, cfg.device)


def npu_target(name: str, root: Path = NPU_ROOT, status: dict | None = None) -> Target:
    """An NPU-ready IR: on the NPU with its stored run settings where one exists, else honestly on CPU."""
    from pipeline import devices

    ir_dir = root / name
    npu = (status if status is not None else devices.detect())["NPU"]
    if not npu.available:
        return Target(f"npu-{name}", ir_dir, "CPU", kind="NPU-ready IR", note=f"no NPU: {npu.reason}")
    settings = json.loads((ir_dir / "npu_config.json").read_text(encoding="utf-8"))
    blob = ir_dir / "openvino_model.npu.blob"
    if blob.is_file():
        settings["BLOB_PATH"] = str(blob)
    return Target(f"npu-{name}", ir_dir, "NPU", settings, kind="NPU-ready IR")


def run(target: Target, cfg: ValidateConfig, reference_path: Path = REFERENCE, metrics_dir: Path = METRICS_DIR) -> dict:
    """Validate one target; write its metrics; fail if fidelity or device checks fail."""
    manifest = read_manifest(target.ir_dir)
    reference = json.loads(Path(reference_path).read_text(encoding="utf-8"))
    weight_format = manifest["parameters"].get("weight_format", "int4")
    with step(f"[{target.artifact}] generating on {target.device} with openvino_genai"):
        gen = measure_generation(target, cfg, reference)
    peak_rss = peak_rss_bytes()
    # The NPU compiles LLMs only through GenAI's pipeline; teacher forcing then runs the same IR on CPU.
    forced_device = "CPU" if target.device == "NPU" else target.device
    with step(f"[{target.artifact}] teacher-forced comparison with PyTorch on {forced_device}"):
        top1, executed = teacher_forced_agreement(target.ir_dir, forced_device, reference)
    if target.device == "NPU":
        executed = "NPU"  # LLMPipeline(..., "NPU") raises rather than falling back
    exact, divergence = greedy_match(gen["outputs"], reference)
    threshold = cfg.min_top1_agreement.get(weight_format, 0.0)
    problems = []
    if top1 < threshold:
        problems.append(f"top-1 agreement {top1:.3f} below the {weight_format} threshold {threshold}")
    device_ok, executed = executed_device(target.device, executed)
    if not device_ok:
        problems.append(f"asked for {target.device} but ran on {executed} (silent fallback)")
    if not gen["tokenizer_matches_reference"]:
        problems.append("OpenVINO tokenizer IR tokenizes the prompt differently from the original tokenizer")
    metrics = {
        "artifact": target.artifact, "weight_format": weight_format, "device_requested": target.device,
        "device_executed": executed, "label": f"{target.kind}, validated on {executed}",
        "load_s": gen["load_s"], "ttft_ms": gen["ttft_ms"], "tpot_ms": gen["tpot_ms"],
        "tokens_per_s": gen["tokens_per_s"], "peak_rss_mb": round(peak_rss / 2**20, 1),
        "size_mb": round(folder_bytes(target.ir_dir) / 2**20, 3), "top1_agreement": round(top1, 4),
        "fidelity_device": forced_device, "greedy_exact_match": round(exact, 4), "first_divergence": divergence,
        "min_top1_agreement": threshold, "tokenizer_matches_reference": gen["tokenizer_matches_reference"],
        "note": target.note, "sample": gen["text"][:200], "passed": not problems, "problems": problems,
    }
    return publish_metrics(metrics, Path(metrics_dir) / f"{target.artifact}.json")


def publish_metrics(metrics: dict, path: Path) -> dict:
    """Write one validation record (every validator's format), report it, and fail if it has problems."""
    write_json_atomic(path, metrics)
    say(f"[{metrics['artifact']}] {metrics['label']}: top-1 {metrics['top1_agreement']:.3f}, exact "
        f"{metrics['greedy_exact_match']:.2f}, {metrics['tokens_per_s']} tok/s, peak RSS {metrics['peak_rss_mb']} MB")
    if metrics["problems"]:
        fail(f"[{metrics['artifact']}] validation failed: {'; '.join(metrics['problems'])}")
    return metrics


def main(argv: list[str] | None = None) -> None:
    """DVC entry point: ``python -m pipeline.validate [--npu] <variant>``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", help="key under `openvino` (or `npu` with --npu) in params.yaml, e.g. int4")
    parser.add_argument("--npu", action="store_true", help="validate artifacts/npu/<variant>")
    args = parser.parse_args(argv)
    params = load_params()
    section = params.npu if args.npu else params.openvino
    if args.variant not in section:
        raise ConfigError(f"unknown variant '{args.variant}': configured ones are {', '.join(section)}")
    target = npu_target(args.variant) if args.npu else openvino_target(args.variant, params.validate)
    run(target, params.validate)


if __name__ == "__main__":
    run_main(main)
