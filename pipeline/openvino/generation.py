"""What ``openvino_genai`` measures of an IR on one device: greedy generation, speed per prompt length, tokenizer.

Used by the validator (:mod:`pipeline.openvino.validate`) for every cell that runs; an NPU IR brings its stored
run settings and blob (:func:`device_properties`), and the NPU pipeline can run through NPUW on the CPU
(:mod:`pipeline.openvino.npu_lane`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pipeline.core.config import ValidateConfig
from pipeline.core.errors import fail
from pipeline.openvino import npu_lane, runtime_config
from pipeline.openvino.npu_blob import reusable_blob
from pipeline.validation import matrix
from pipeline.validation.genai_runner import run_tokens, speed_runs


def device_properties(ir_dir: Path, device: str, use_blob: bool = True) -> dict[str, Any]:
    """``LLMPipeline`` properties: an NPU IR's stored run settings (and blob) on the NPU; elsewhere the IR's runtime
    config for that device (:mod:`pipeline.openvino.runtime_config`: what its users load it with) and no prefix cache.

    A saved blob that this machine's OpenVINO, NPU driver or compiler did not build is compiled again and replaced
    first (:func:`pipeline.openvino.npu_blob.reusable_blob`); ``use_blob=False`` (NPUW lane) leaves it alone.
    """
    import openvino_genai as ov_genai

    settings_file = ir_dir / "npu_config.json"
    if device != "NPU":
        # Without an explicit scheduler config GenAI's default CPU/GPU pipeline caches prompt prefixes, so every
        # repeat of a speed prompt would report a cache hit (2 ms instead of 125 ms TTFT for 1k tokens here).
        scheduler = ov_genai.SchedulerConfig()
        scheduler.enable_prefix_caching = False
        return {"scheduler_config": scheduler, **runtime_config.properties(ir_dir, device)}
    if not settings_file.is_file():
        return {}
    settings = json.loads(settings_file.read_text(encoding="utf-8"))
    blob = reusable_blob(ir_dir, settings) if use_blob else None
    if blob is not None:
        settings["BLOB_PATH"] = str(blob)
    return settings


def time_prompt(pipe: Any, prompt_ids: list[int], cfg: ValidateConfig) -> matrix.Perf:
    """TTFT/TPOT of greedy generation of exactly ``perf_new_tokens`` after ``prompt_ids`` (warm-up excluded).

    Up to ``repeats`` measured runs, fewer once ``perf_budget_s`` is spent (:func:`pipeline.validation.genai_runner.speed_runs`).
    """
    import numpy as np
    import openvino as ov

    gen_cfg = pipe.get_generation_config()
    gen_cfg.do_sample, gen_cfg.ignore_eos = False, True
    ttft, tpot = [], []
    for measured in speed_runs(cfg.warmup, cfg.repeats, cfg.perf_budget_s):
        gen_cfg.max_new_tokens = run_tokens(measured, cfg.perf_new_tokens)
        result = pipe.generate(ov.Tensor(np.array([prompt_ids], dtype=np.int64)), gen_cfg)
        if measured:
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


def greedy_outputs(pipe: Any, cfg: ValidateConfig, reference: dict) -> list[list[int]]:
    """``pipe``'s greedy token ids for every validation prompt (the reference's rendered prompt ids)."""
    import numpy as np
    import openvino as ov

    gen_cfg = pipe.get_generation_config()
    gen_cfg.max_new_tokens, gen_cfg.do_sample = cfg.max_new_tokens, False
    return [
        list(pipe.generate(ov.Tensor(np.array([case["prompt_ids"]], dtype=np.int64)), gen_cfg).tokens[0])
        for case in reference["greedy"]
    ]


def answers_at(
    ir_dir: Path, device: str, cfg: ValidateConfig, reference: dict, settings: dict[str, str]
) -> list[list[int]]:
    """Greedy answers of the IR in ``LLMPipeline`` on ``device`` with ``settings`` in place of its runtime config
    (``numerics.PINNED``: the pinned f32 run; a forced compute precision: an emulation cell)."""
    import openvino_genai as ov_genai

    properties = {k: v for k, v in device_properties(ir_dir, device).items() if k == "scheduler_config"}
    pipe = ov_genai.LLMPipeline(str(ir_dir), device, **properties, **settings)
    return greedy_outputs(pipe, cfg, reference)


def _measure_generation(
    ir_dir: Path, device: str, cfg: ValidateConfig, reference: dict, backend: str | None
) -> dict[str, Any]:
    import openvino_genai as ov_genai

    properties = device_properties(ir_dir, device, use_blob=not backend)  # an NPU blob is not for NPUW
    if backend:
        properties.update(npu_lane.NPUW_CPU)
    start = time.perf_counter()
    pipe = ov_genai.LLMPipeline(str(ir_dir), device, **properties)
    load_s = time.perf_counter() - start
    outputs = greedy_outputs(pipe, cfg, reference)
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
