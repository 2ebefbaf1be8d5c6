"""The low-memory reference (16-bit weights kept as stored, float32 compute) gives what the float32 load gave.

"Before" is the reference stage as it was up to issue 20, inlined here: the checkpoint loaded as float32, full
``[length, vocab]`` logits per window, :func:`reference_from_logits`, ``generate``. Tolerance: greedy token ids
identical; top-k ids identical and top-k / next-token log-probs within 1e-5 nats (they come out bit-identical
on both tiny presets; the slack is for a BLAS picking another kernel for a 256-row chunk of the LM head).
The bf16 case rewrites the tiny fp16 weights as bf16, as a real Phi-3 checkpoint stores them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.config import ModelConfig, ValidateConfig, build, compose
from pipeline.core.manifest import write_manifest
from pipeline.hub import download
from pipeline.validation import reference
from pipeline.validation.fidelity import LOGPROBS_FILE, LONG_LOGPROBS_FILE, ReferenceLogprobs, reference_from_logits

LOGPROB_TOLERANCE = 1e-5  # nats


def as_bf16(model_dir: Path, dest: Path) -> Path:
    """A copy of ``model_dir`` whose weights are stored as bf16 (config dtype too)."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(model_dir, dest)
    weights = load_file(model_dir / "model.safetensors")
    save_file({k: v.to(torch.bfloat16) for k, v in weights.items()}, dest / "model.safetensors", {"format": "pt"})
    config = json.loads((dest / "config.json").read_text(encoding="utf-8"))
    config["dtype"] = "bfloat16"
    (dest / "config.json").write_text(json.dumps(config), encoding="utf-8")
    write_manifest(dest, stage="download", model="tiny-bf16", source="local")
    return dest


def reference_before(model_dir: Path, cfg: ValidateConfig) -> dict:
    """The reference as the stage computed it before: a float32 copy of the model, whole-window logits."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    windows = reference.eval_windows(tokenizer, cfg)
    long = reference.long_context_plan(tokenizer, cfg, reference.context_limits(model.config))["windows"]
    with torch.inference_mode():
        logits = [model(torch.tensor([w])).logits[0].float() for w in windows]
        long_logits = [model(torch.tensor([w])).logits[0].float().numpy() for w in long]
    top2 = [x.topk(2, dim=-1) for x in logits]
    return {
        "logprobs": reference_from_logits(windows, [x.numpy() for x in logits], cfg.kl_top_k),
        "long": reference_from_logits(long, long_logits, cfg.long_context.top_k),
        "top1": [t.indices[:, 0].tolist() for t in top2],
        "margin": [(t.values[:, 0] - t.values[:, 1]).tolist() for t in top2],
        "greedy": [g["output_ids"] for g in reference.greedy(model, tokenizer, cfg.prompts, cfg.max_new_tokens)],
    }


def assert_same_logprobs(after: ReferenceLogprobs, before: ReferenceLogprobs) -> None:
    np.testing.assert_array_equal(after.window_lengths, before.window_lengths)
    np.testing.assert_array_equal(after.next_ids, before.next_ids)
    np.testing.assert_array_equal(after.topk_ids, before.topk_ids)
    np.testing.assert_allclose(after.topk_logprobs, before.topk_logprobs, rtol=0, atol=LOGPROB_TOLERANCE)
    np.testing.assert_allclose(after.next_logprobs, before.next_logprobs, rtol=0, atol=LOGPROB_TOLERANCE)


SHORT_LONG_WINDOW = ["validate.long_context.lengths=[700]"]  # 256 + 256 + 188 positions: chunk edges, in seconds


@pytest.mark.parametrize(
    ("preset", "stored", "overrides"),
    [
        ("tiny", "bfloat16", SHORT_LONG_WINDOW),  # as a real Phi-3 stores it
        pytest.param("tiny", "float16", SHORT_LONG_WINDOW, marks=pytest.mark.slow),  # as shipped: the same code path
        # the default windows, 3000 and 6000 tokens, on both sides of LongRoPE's switch at 4096 (minutes)
        pytest.param("tiny-128k", "float16", [], marks=pytest.mark.slow),
    ],
)
def test_low_memory_reference_matches_the_float32_load(
    preset: str, stored: str, overrides: list[str], tmp_path: Path
) -> None:
    params = compose([f"model={preset}", *overrides])
    model_dir = tmp_path / "model"
    download.run(build(ModelConfig, params["model"]), model_dir)
    if stored == "bfloat16":
        model_dir = as_bf16(model_dir, tmp_path / "model-bf16")
    cfg = build(ValidateConfig, params["validate"])
    assert cfg.reference_dtype == "float32"

    result = reference.run(cfg, model_dir, tmp_path / "reference")
    before = reference_before(model_dir, cfg)

    assert [g["output_ids"] for g in result["greedy"]] == before["greedy"]
    assert [w["top1"] for w in result["teacher_forced"]] == before["top1"]
    margins = np.array([m for w in result["teacher_forced"] for m in w["margin"]])
    np.testing.assert_allclose(margins, [m for w in before["margin"] for m in w], rtol=0, atol=LOGPROB_TOLERANCE)
    assert_same_logprobs(ReferenceLogprobs.load(tmp_path / "reference" / LOGPROBS_FILE), before["logprobs"])
    assert_same_logprobs(ReferenceLogprobs.load(tmp_path / "reference" / LONG_LOGPROBS_FILE), before["long"])


def test_float32_compute_keeps_the_stored_weights(tmp_path: Path) -> None:
    """No float32 copy of a Linear or Embedding weight: they stay in the checkpoint's dtype (memory-mapped)."""
    import torch

    params = compose(["model=tiny"])
    download.run(build(ModelConfig, params["model"]), tmp_path / "model")
    model_dir = as_bf16(tmp_path / "model", tmp_path / "model-bf16")
    model = reference.load_model(model_dir, "float32")
    weights = {n: p.dtype for n, p in model.named_parameters() if "proj" in n or "embed" in n or "lm_head" in n}
    assert weights and set(weights.values()) == {torch.bfloat16}
    norms = {p.dtype for n, p in model.named_parameters() if "norm" in n}
    assert norms == {torch.float32}
    with torch.inference_mode():
        logits = model(torch.tensor([[1, 2, 3]])).logits
    assert logits.dtype == torch.float32
