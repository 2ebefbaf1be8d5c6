"""The README of ``pipeline/assets/tiny_phi3_128k``, written from the measured numbers."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch

from .common import PROMPT, VOCAB_SIZE, folder_bytes, sha256_file
from .longrope import MAX_POSITIONS, ORIGINAL_MAX_POSITIONS, fp16_exact
from .report import file_rows
from .train_128k import BASE_DIR

README_TEMPLATE = """\
# tiny_phi3_128k — embedded LongRoPE + GQA tiny Phi-3 test model

A real `transformers.Phi3ForCausalLM` shaped like Phi-3-mini-128k where export and fidelity
checks care: LongRoPE with factors that are **not exact in float16**, switching from the
short to the long factors above `original_max_position_embeddings` (4096), grouped-query
attention, no effective sliding window. 2 layers, hidden 256, 4 query heads / 2 KV heads
(head dim 64), intermediate 512, vocabulary 32064, tied embeddings, float16. It speaks
through the exact Phi-3 tokenizer of `../tiny_phi3` and only knows a little about Python
docstrings. Everything here was produced by one command (do not edit by hand; regenerate):

```
{command}
```

The pipeline preset is `model=tiny-128k` (`conf/model/tiny-128k.yaml`). Held-out text for
evaluation is `../tiny_phi3/heldout.txt`: {heldout_tokens} tokens with this tokenizer (this
model never trained on it), enough for disjoint slices of 512 evaluated + 1024 perf-prompt +
6000 long-window tokens ({budget} in all, {spare} to spare).

## Files

| file | bytes | sha256 |
| --- | ---: | --- |
{file_rows}

Total size of this folder: {total_bytes} bytes.

## Config (`config.json`)

* `rope_parameters` (Microsoft's configs write it as `rope_scaling`; transformers 5 loads both
  and saves `rope_parameters`): `rope_type` `longrope`, `rope_theta` 10000,
  `original_max_position_embeddings` 4096, no `factor`/`attention_factor`, so transformers
  scales cos/sin by sqrt(1 + ln(131072/4096) / ln(4096)) = {attention_factor:.6f} for both lists.
* `max_position_embeddings` 131072, `original_max_position_embeddings` 4096,
  `sliding_window` 262144 (as Phi-3-mini-128k-instruct and Phi-3.5-mini-instruct: larger than
  any context, i.e. no window), rms eps 1e-5, silu, bos 1, eos 32000, pad 32000.
* The factor lists are Phi-3.5-mini-instruct's (48 per list for head dim 96; Phi-3-mini-128k
  uses the same scheme and two-decimal values), resampled to the 32 frequencies of head dim 64
  (linear interpolation at the same frequency exponent, rounded to two decimals; a value
  float16 holds exactly, other than the leading 1.0, is moved up by 0.01).
  {n_inexact} of the 64 values are not exact in float16; the largest float16 rounding error is
  {max_fp16_err:.2e}.
  * `short_factor`: {short_factor}
  * `long_factor`: {long_factor}
* How transformers 5.5.4 picks the list (`modeling_rope_utils.dynamic_rope_update`): per
  forward, `max(position_ids) + 1 > original_max_position_embeddings` selects the long factors
  for **all** positions of that forward, else the short ones. A teacher-forced forward of
  3000-4096 tokens therefore uses the short factors and one of 4097+ tokens the long ones
  (checked below by reading the rotary embedding's `inv_freq` after each forward).
  `Phi3ForCausalLM.prepare_inputs_for_generation` drops the cache once when generation crosses
  4096 tokens, so that the prefix is recomputed with the long factors.
* Loading logs one transformers warning ("This model config has set a
  `rope_parameters['original_max_position_embeddings']` field ..."): transformers 5.5.4 gives it
  for every Phi-3 LongRoPE config, Microsoft's included; the script allows that one and no other.
* `tokenizer.json` is byte-identical to `../tiny_phi3/tokenizer.json`; `tokenizer_config.json`
  differs only by `model_max_length` 131072 (as Phi-3-mini-128k-instruct's), so 6000-token
  held-out windows tokenize without a length warning. `generation_config.json` is the tiny model's.

## How the weights were made

* Start: `../tiny_phi3/model.safetensors` (sha256 `{base_sha}`), upcast to float32. Each
  layer's fused `qkv_proj`: the query rows are kept; the K rows of query heads (0, 1) and
  (2, 3) are averaged into KV heads 0 and 1, likewise V (query head h uses KV head h // 2,
  transformers' `repeat_kv`). Everything else is copied.
* Data: `make_tiny_phi3.py`'s training stream, rebuilt with its functions (stdlib docstrings
  of Python {python}, chat samples, seed 1234; {stream_tokens} tokens). The script checks
  that the held-out split it computes is byte-identical to `../tiny_phi3/heldout.txt`, so
  no held-out document is trained on.
* Fine-tune: the tied embedding frozen (the unused ids' rows, all the tiny model's shared
  row plus noise, form one softmax class `h @ mean(row) + log({n_unused})`), transformer
  layers and final norm trained, seed {seed}, `torch.set_num_threads(2)`, float32, AdamW
  (betas 0.9/0.95, weight decay 0.01), peak lr {lr}, {warmup} warm-up steps then cosine to
  10 %, grad clip 1.0. {steps} steps in a seeded order: {short_steps} of {short_batch} x
  {short_len} tokens (short factors), {mid_steps} of one window of 2048-4096 tokens (short
  factors), {long_steps} of one window of 4097-{long_max} tokens (long factors); {train_tokens}
  tokens in all.
* Loss (restricted softmax, mean of the first 5 / last 10 steps of each kind): {loss_rows}.
* Wall time: fine-tune {train_seconds:.0f} s; whole script {total_seconds:.0f} s (2-core CPU,
  torch {torch_version}, transformers {transformers_version}; {load_note}).

Loss log (step, kind, tokens, loss): {loss_log}

## Results (measured on the saved float16 weights, computed in float32)

512-token windows of the held-out text ({short_positions} positions): loss {short_loss:.4f},
top-1 accuracy {short_acc:.4f}, top-1 minus top-2 logit gap median {short_gap_median:.3f},
10th percentile {short_gap_p10:.3f}, minimum {short_gap_min:.4f}. Top-1 agreement with a
naive int4 copy (round-to-nearest, symmetric, groups of 32, all 2-D weights, 256-token
windows): {int4_agreement:.4f}.

Single teacher-forced windows of the held-out text. "fp16 factors" is the same model with
its LongRoPE factors rounded to float16 (what an fp16 IR constant holds): the agreement
and largest |Δlogit| against it show that these factors make a float16 copy detectable.

| window | factors used | positions | gap median | gap p10 | gap min | top-1 acc | top-1 vs fp16 factors | max abs Δlogit vs fp16 factors |
| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |
{window_rows}

Greedy continuation (`max_new_tokens=40`) of `{prompt}`:

```
{sample_text}
```
"""


def window_rows(windows: dict) -> str:
    """The README table rows of the long-window measurements."""
    rows = []
    for name, result in windows.items():
        for span, r in result["ranges"].items():
            rows.append(f"| {name} | {result['factors']} | {span} | {r['gap_median']:.3f} | {r['gap_p10']:.3f} | "
                        f"{r['gap_min']:.4f} | {r['top1_acc']:.4f} | {r['fp16_factor_agreement']:.4f} | "
                        f"{r['fp16_factor_max_diff']:.3f} |")
    return "\n".join(rows)


def readme_info(args, argv, config, stream, heldout_ids, result, numbers,
                script: str = "scripts/make_tiny_phi3_128k.py") -> dict:
    """The values of ``README_TEMPLATE`` (and of the other derived models' templates)."""
    import os
    import platform

    import transformers

    rope = config.rope_parameters
    factors = rope["short_factor"] + rope["long_factor"]
    factor = MAX_POSITIONS / ORIGINAL_MAX_POSITIONS
    short = numbers["short"]
    load = os.getloadavg()[1] if hasattr(os, "getloadavg") else float("nan")  # no load average on Windows
    command = [".venv/bin/python", script, *(sys.argv[1:] if argv is None else argv)]
    return {
        "command": " ".join(command),
        "heldout_tokens": len(heldout_ids), "budget": 512 + 1024 + 6000,
        "spare": len(heldout_ids) - (512 + 1024 + 6000),
        "attention_factor": math.sqrt(1 + math.log(factor) / math.log(ORIGINAL_MAX_POSITIONS)),
        "n_inexact": sum(not fp16_exact(v) for v in factors), "n_factors": len(factors),
        "max_fp16_err": max(abs(float(np.float16(v)) - v) for v in factors),
        "short_factor": rope["short_factor"], "long_factor": rope["long_factor"],
        "base_sha": sha256_file(BASE_DIR / "model.safetensors"), "python": platform.python_version(),
        "stream_tokens": len(stream), "n_unused": VOCAB_SIZE - len(np.unique(stream)),
        "seed": args.seed, "lr": args.lr, "warmup": args.warmup, "steps": result["steps"],
        "short_steps": args.short_steps, "short_batch": args.short_batch, "short_len": args.short_len,
        "mid_steps": args.mid_steps, "long_steps": args.long_steps, "long_max": args.long_max,
        "train_tokens": result["tokens"], "train_seconds": result["seconds"],
        "loss_rows": "; ".join(f"{k} {result['first'][k]:.4f} -> {v:.4f}" for k, v in result["final"].items()),
        "loss_log": result["loss_log"], "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "load_note": f"5-minute load average {load:.1f} after training",
        "short_positions": short["positions"], "short_loss": short["loss"], "short_acc": short["top1_acc"],
        "short_gap_median": short["gap_median"], "short_gap_p10": short["gap_p10"], "short_gap_min": short["gap_min"],
        "int4_agreement": numbers["int4_agreement"], "window_rows": window_rows(numbers["windows"]),
        "prompt": PROMPT, "sample_text": numbers["sample"]["text"],
    }


def write_readme(out_dir: Path, info: dict, template: str = README_TEMPLATE) -> None:
    """Write ``README.md`` from ``template``; it states the folder size including itself, so rewrite until stable."""
    info = dict(info, file_rows=file_rows(out_dir), total_bytes=0)
    for _ in range(5):
        (out_dir / "README.md").write_text(template.format(**info), encoding="utf-8")
        if info["total_bytes"] == folder_bytes(out_dir):
            return
        info["total_bytes"] = folder_bytes(out_dir)
    raise SystemExit("README size did not converge")


def check_windows(windows: dict) -> None:
    """Abort unless windows up to 4096 tokens used the short factors and longer ones the long factors."""
    for name, result in windows.items():
        want = "long" if result["tokens"] > ORIGINAL_MAX_POSITIONS else "short"
        if result["factors"] != want:
            raise SystemExit(f"{name}: forward used the {result['factors']} factors, expected {want}")
