#!/usr/bin/env python3
"""Regenerate the embedded LongRoPE + GQA tiny Phi-3 in ``pipeline/assets/tiny_phi3_128k``.

The asset is a real ``transformers.Phi3ForCausalLM`` shaped like Phi-3-mini-128k where it
matters for export and fidelity checks: LongRoPE (``rope_type`` ``longrope``, short and long
factor lists whose values are not exact in float16, ``original_max_position_embeddings``
4096, ``max_position_embeddings`` 131072), grouped-query attention (4 query heads, 2 KV
heads) and no effective sliding window (262144, as Phi-3-mini-128k). It uses the exact
Phi-3 tokenizer of ``pipeline/assets/tiny_phi3``.

The weights are derived from the trained tiny model in ``pipeline/assets/tiny_phi3``: each
pair of K/V heads is mean-pooled into one KV head, then the transformer layers are
fine-tuned (embedding frozen) on the same docstring corpus that
``scripts/make_tiny_phi3.py`` trains on (its held-out split is checked to be the one in
``tiny_phi3/heldout.txt`` and is never trained on), with windows below and above 4096
tokens so that both factor sets are learnt.

Usage::

    .venv/bin/python scripts/make_tiny_phi3_128k.py

The README of the output folder is written by this script from the measured numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# Runs as `python scripts/make_tiny_phi3_128k.py`, so scripts/ is on sys.path: the corpus,
# tokenizer facts and evaluation helpers are shared with the first tiny model's script.
import make_tiny_phi3 as tiny

REPO_ROOT = Path(__file__).resolve().parents[1]
BASE_DIR = REPO_ROOT / "pipeline" / "assets" / "tiny_phi3"
DEFAULT_OUT = REPO_ROOT / "pipeline" / "assets" / "tiny_phi3_128k"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")

ORIGINAL_MAX_POSITIONS = 4096
MAX_POSITIONS = 131072
SLIDING_WINDOW = 262144  # Phi-3-mini-128k / Phi-3.5-mini: larger than any context, i.e. no window
NUM_KV_HEADS = 2
# LongRoPE factors of microsoft/Phi-3.5-mini-instruct config.json (48 per list for its head
# dim 96), as published (float32 renderings of two-decimal values). Phi-3-mini-128k-instruct
# uses the same scheme and the same short factors after its July 2024 update.
PHI35_SHORT_FACTOR = (
    1.0, 1.02, 1.03, 1.03, 1.05, 1.05, 1.05, 1.05, 1.05, 1.07, 1.1, 1.11, 1.16, 1.16, 1.17, 1.29,
    1.34, 1.68, 1.79, 1.82, 1.85, 1.88, 1.91, 1.94, 1.99, 2.02, 2.02, 2.02, 2.02, 2.02, 2.02, 2.03,
    2.03, 2.03, 2.03, 2.03, 2.03, 2.03, 2.03, 2.03, 2.08, 2.09, 2.19, 2.22, 2.59, 2.73, 2.75, 2.84,
)
PHI35_LONG_FACTOR = (
    1.08, 1.11, 1.14, 1.34, 1.59, 1.6, 1.62, 2.62, 3.23, 3.23, 4.79, 7.4, 7.7, 9.09, 12.2, 17.67,
    24.46, 28.57, 30.42, 30.84, 32.59, 32.93, 42.32, 44.96, 50.34, 50.45, 57.55, 57.93, 58.21, 60.14,
    62.61, 62.62, 62.71, 63.14, 63.14, 63.77, 63.93, 63.96, 63.97, 64.03, 64.07, 64.08, 64.12, 64.41,
    64.48, 64.51, 64.53, 64.84,
)
# transformers 5.5.4 logs this for every Phi-3 LongRoPE config, Microsoft's included (they set
# original_max_position_embeddings, not `factor`); it is the one warning the load may give.
KNOWN_LOAD_WARNING = "rope_parameters['original_max_position_embeddings']"


def log(message: str) -> None:
    """Print a progress message immediately."""
    print(f"[make_tiny_phi3_128k] {message}", flush=True)


def fp16_exact(value: float) -> bool:
    """Tell whether ``value`` survives a round trip through float16 unchanged."""
    return float(np.float16(value)) == value


def resample_factors(factors: tuple[float, ...], n: int) -> list[float]:
    """Resample a LongRoPE factor list to ``n`` rotary frequencies.

    Factor ``i`` of a list of ``m`` belongs to the frequency ``theta ** (-i / m)``; entry ``j``
    of the result takes the linear interpolation at the same exponent ``j / n`` and rounds it
    to two decimals like the published factors. A value that float16 holds exactly (other
    than the leading 1.0, which the real lists also have) is moved up by 0.01, so that a
    float16 copy of the factors always differs from the model's.

    Args:
        factors: The published factor list.
        n: Number of rotary frequencies (head_dim / 2).

    Returns:
        ``n`` factors.
    """
    grid = np.arange(len(factors)) / len(factors)
    values = np.interp(np.arange(n) / n, grid, np.asarray(factors, dtype=np.float64))
    out = []
    for index, value in enumerate(values):
        value = round(float(value), 2)
        while index > 0 and fp16_exact(value):
            value = round(value + 0.01, 2)
        out.append(value)
    return out


def make_config():
    """The tiny Phi-3 LongRoPE + GQA config (written the way Microsoft's configs are: ``rope_scaling``)."""
    from transformers import Phi3Config

    head_dim = 256 // 4
    return Phi3Config(
        vocab_size=tiny.VOCAB_SIZE, hidden_size=256, intermediate_size=512,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=NUM_KV_HEADS,
        hidden_act="silu", max_position_embeddings=MAX_POSITIONS,
        original_max_position_embeddings=ORIGINAL_MAX_POSITIONS, rope_theta=10000.0,
        rope_scaling={"type": "longrope",
                      "short_factor": resample_factors(PHI35_SHORT_FACTOR, head_dim // 2),
                      "long_factor": resample_factors(PHI35_LONG_FACTOR, head_dim // 2)},
        rms_norm_eps=1e-5, bos_token_id=tiny.BOS_ID, eos_token_id=tiny.EOT_ID,
        pad_token_id=tiny.EOT_ID, sliding_window=SLIDING_WINDOW, tie_word_embeddings=True,
        initializer_range=0.02, attention_dropout=0.0, resid_pdrop=0.0, embd_pdrop=0.0,
        use_cache=True,
    )


@torch.no_grad()
def gqa_from_tiny(base, config):
    """Build the GQA model from the 4-KV-head tiny model by mean-pooling K/V heads in groups.

    Query head ``h`` attends with KV head ``h // group`` (transformers' ``repeat_kv``), so the
    K (and V) projections of the query heads of one group are averaged into that KV head.

    Args:
        base: The float32 ``tiny_phi3`` model.
        config: The target config.

    Returns:
        The new float32 model.
    """
    from transformers import Phi3ForCausalLM

    model = Phi3ForCausalLM(config).float()
    state = base.state_dict()
    head_dim = config.hidden_size // config.num_attention_heads
    q_rows = config.num_attention_heads * head_dim
    group = config.num_attention_heads // config.num_key_value_heads
    for name, tensor in list(state.items()):
        if name.endswith("qkv_proj.weight"):
            q, k, v = tensor.split([q_rows, q_rows, q_rows])

            def pool(w):
                return w.reshape(config.num_key_value_heads, group, head_dim, -1).mean(1).reshape(-1, w.shape[1])

            state[name] = torch.cat([q, pool(k), pool(v)])
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if m != "lm_head.weight"]:
        raise SystemExit(f"weight mismatch: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    return model


def step_plan(args: argparse.Namespace, rng: np.random.Generator) -> list[tuple[int, int]]:
    """The seeded order of ``(batch, seq_len)`` training steps: short, mid (< 4096) and long (> 4096)."""
    plan = [(args.short_batch, args.short_len)] * args.short_steps
    plan += [(1, int(n)) for n in rng.integers(2048, ORIGINAL_MAX_POSITIONS + 1, args.mid_steps)]
    plan += [(1, int(n)) for n in rng.integers(ORIGINAL_MAX_POSITIONS + 1, args.long_max + 1, args.long_steps)]
    return [plan[i] for i in rng.permutation(len(plan))]


def one_window(stream: np.ndarray, rng: np.random.Generator, seq_len: int) -> torch.Tensor:
    """One ``(1, seq_len + 1)`` window starting anywhere in the stream (documents run across it)."""
    offset = int(rng.integers(0, len(stream) - seq_len - 1))
    return torch.from_numpy(stream[None, offset:offset + seq_len + 1])


def finetune(model, stream: np.ndarray, starts: np.ndarray, args: argparse.Namespace) -> dict:
    """Fine-tune the transformer layers (embedding frozen) with AdamW on short, mid and long windows.

    The tied embedding is frozen; its rows for ids the stream lacks are all the trained
    tiny model's shared row plus a little noise, so they are folded into one softmax class
    ``h @ mean(unused rows) + log(n_unused)`` (as in ``make_tiny_phi3.train``).

    Returns:
        Steps, tokens, per-kind final losses, seconds and a loss log.
    """
    rng = np.random.default_rng(args.seed)
    plan = step_plan(args, rng)
    weight = model.model.embed_tokens.weight
    weight.requires_grad_(False)
    used = torch.from_numpy(np.unique(stream))
    unused = torch.ones(weight.shape[0], dtype=torch.bool)
    unused[used] = False
    head = torch.cat([weight[used], weight[unused].mean(0, keepdim=True)]).detach()
    remap = torch.full((weight.shape[0],), -1, dtype=torch.long)
    remap[used] = torch.arange(len(used))
    log_unused = math.log(int(unused.sum()))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01)
    model.train()
    losses: dict[str, list[float]] = {"short": [], "mid": [], "long": []}
    loss_log, tokens, start = [], 0, time.time()
    log(f"fine-tuning {len(plan)} steps: {args.short_steps} x {args.short_batch}x{args.short_len}, "
        f"{args.mid_steps} mid (2048-4096), {args.long_steps} long (4097-{args.long_max})")
    for step, (batch_size, seq_len) in enumerate(plan):
        for group in optimizer.param_groups:
            group["lr"] = tiny.lr_at(step, len(plan), args.lr, args.warmup)
        batch = tiny.sample_batch(stream, starts, rng, batch_size, seq_len) if batch_size > 1 else \
            one_window(stream, rng, seq_len)
        hidden = model.model(input_ids=batch[:, :-1]).last_hidden_state
        logits = hidden @ head.T
        logits = torch.cat([logits[..., :-1], logits[..., -1:] + log_unused], dim=-1)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 remap[batch[:, 1:]].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        kind = "short" if batch_size > 1 else "mid" if seq_len <= ORIGINAL_MAX_POSITIONS else "long"
        losses[kind].append(loss.item())
        tokens += batch_size * seq_len
        if step % 10 == 0 or step == len(plan) - 1:
            loss_log.append((step, kind, seq_len, round(loss.item(), 4)))
            log(f"step {step:3d} {kind:5s} {batch_size}x{seq_len} loss {loss.item():.4f} ({time.time() - start:.0f}s)")
    weight.requires_grad_(True)
    return {"steps": len(plan), "tokens": tokens, "seconds": time.time() - start, "loss_log": loss_log,
            "final": {k: float(np.mean(v[-10:])) for k, v in losses.items() if v},
            "first": {k: float(np.mean(v[:5])) for k, v in losses.items() if v}}


def rope_factors_used(model) -> str:
    """Which factor list the rotary embedding used in the last forward (``short`` / ``long``)."""
    rotary = model.model.rotary_emb
    rope = model.config.rope_parameters
    dim = model.config.hidden_size // model.config.num_attention_heads
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    for kind in ("short", "long"):
        expected = 1.0 / (torch.tensor(rope[f"{kind}_factor"]) * rope["rope_theta"] ** exponents)
        if torch.allclose(rotary.inv_freq.cpu(), expected, rtol=1e-6, atol=0):
            return kind
    raise SystemExit("rotary inverse frequencies match neither factor list")


def fp16_factor_copy(model):
    """A copy of ``model`` whose LongRoPE factors are rounded to float16 (what an fp16 IR constant holds)."""
    import copy

    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rounded = copy.deepcopy(model)
    rope = rounded.config.rope_parameters
    for kind in ("short_factor", "long_factor"):
        rope[kind] = [float(np.float16(v)) for v in rope[kind]]
    # The long list is recomputed from the config at every long forward; the short one is cached.
    inv_freq, _ = ROPE_INIT_FUNCTIONS["longrope"](rounded.config, None)
    rounded.model.rotary_emb.original_inv_freq = inv_freq
    return rounded


RANGES = ((0, 1024), (1024, ORIGINAL_MAX_POSITIONS), (ORIGINAL_MAX_POSITIONS, None))


@torch.no_grad()
def long_window(model, rounded, ids: list[int]) -> dict:
    """Teacher-forced top-1/top-2 logit gaps of one long window, per position range.

    Also the factor list the forward used, and the top-1 agreement and largest logit
    difference against ``rounded`` (same weights, factors rounded to float16).
    """
    window = torch.tensor([ids])
    logits = model(input_ids=window).logits[0].float()
    used = rope_factors_used(model)
    other = rounded(input_ids=window).logits[0].float()
    top2 = logits.topk(2, dim=-1)
    gap = top2.values[:, 0] - top2.values[:, 1]
    hit = top2.indices[:-1, 0] == window[0, 1:]
    ranges = {}
    for lo, hi in RANGES:
        hi_ = len(ids) if hi is None else min(hi, len(ids))
        if lo >= hi_:
            continue
        part = slice(lo, hi_)
        ranges[f"{lo}-{hi_}"] = {
            "gap_median": gap[part].median().item(), "gap_p10": torch.quantile(gap[part], 0.10).item(),
            "gap_min": gap[part].min().item(), "top1_acc": hit[lo:hi_ - 1].float().mean().item(),
            "fp16_factor_agreement": (logits[part].argmax(-1) == other[part].argmax(-1)).float().mean().item(),
            "fp16_factor_max_diff": (logits[part] - other[part]).abs().max().item()}
    return {"tokens": len(ids), "factors": used, "ranges": ranges}


def copy_tokenizer(out_dir: Path) -> None:
    """Copy the exact Phi-3 tokenizer of ``tiny_phi3``; ``model_max_length`` becomes 131072, as the 128k model's."""
    shutil.copy2(BASE_DIR / "tokenizer.json", out_dir / "tokenizer.json")
    config = json.loads((BASE_DIR / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["model_max_length"] = MAX_POSITIONS
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                                                   encoding="utf-8")


def load_checked(out_dir: Path):
    """Reload the saved folder with the Auto classes; abort on any warning but the known LongRoPE one."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tiny.capture_warnings() as records:
        model = AutoModelForCausalLM.from_pretrained(out_dir)
        tok = AutoTokenizer.from_pretrained(out_dir)
    tiny.fail_on_warnings([r for r in records if KNOWN_LOAD_WARNING not in r[1]], "from_pretrained")
    if type(model).__name__ != "Phi3ForCausalLM" or model.config.rope_parameters["rope_type"] != "longrope":
        raise SystemExit(f"loaded {type(model).__name__} with {model.config.rope_parameters}")
    return model.float().eval(), tok


def prepare_data(tok) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Rebuild ``make_tiny_phi3``'s training stream and check its held-out split is ``tiny_phi3/heldout.txt``."""
    docs = tiny.collect_docs()
    train_docs = [doc for doc in docs if not tiny.is_heldout(doc)]
    heldout = tiny.heldout_text([doc for doc in docs if tiny.is_heldout(doc)])
    shipped = (BASE_DIR / "heldout.txt").read_text(encoding="utf-8")
    if heldout != shipped:
        raise SystemExit("this interpreter's stdlib docstrings give another held-out split than "
                         "tiny_phi3/heldout.txt: run with the Python that made tiny_phi3 (see its README)")
    samples = tiny.chat_samples(train_docs)
    stream, starts = tiny.build_stream(tok, [doc.text for doc in train_docs] + samples, 1234)
    heldout_ids = tok(shipped, add_special_tokens=False, verbose=False)["input_ids"]
    log(f"data: {len(stream)} training tokens (held-out split verified), held-out {len(heldout_ids)} tokens")
    return stream, starts, heldout_ids


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="output folder")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--short-steps", type=int, default=60)
    parser.add_argument("--short-batch", type=int, default=8)
    parser.add_argument("--short-len", type=int, default=512)
    parser.add_argument("--mid-steps", type=int, default=10)
    parser.add_argument("--long-steps", type=int, default=12)
    parser.add_argument("--long-max", type=int, default=6500)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=10)
    return parser.parse_args(argv)


def save_model(model, out_dir: Path) -> None:
    """Save float16 safetensors, config and generation config; refuse an oversized or untied checkpoint."""
    from safetensors import safe_open

    model.eval().to(torch.float16)
    model.save_pretrained(out_dir, safe_serialization=True)
    generation = {"bos_token_id": tiny.BOS_ID, "do_sample": False,
                  "eos_token_id": [tiny.EOT_ID, tiny.END_ID], "pad_token_id": tiny.EOT_ID}
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n", encoding="utf-8")
    weights = out_dir / "model.safetensors"
    with safe_open(str(weights), "pt") as handle:
        keys = list(handle.keys())
    if weights.stat().st_size > tiny.MAX_WEIGHTS_BYTES or "lm_head.weight" in keys:
        raise SystemExit(f"bad checkpoint: {weights.stat().st_size} bytes, keys {keys}")
    log(f"saved {len(keys)} tensors, {weights.stat().st_size} bytes")


@torch.no_grad()
def measure(model, tok, heldout_ids: list[int]) -> dict:
    """Held-out numbers of the reloaded model: 512-token windows, the long windows, int4 and a sample."""
    model.eval()
    rounded = fp16_factor_copy(model)
    return {
        "short": tiny.evaluate(model, heldout_ids, 512),
        "windows": {
            "3500 tokens from 0": long_window(model, rounded, heldout_ids[:3500]),
            "4096 tokens from 0": long_window(model, rounded, heldout_ids[:4096]),
            "6000 tokens from 0": long_window(model, rounded, heldout_ids[:6000]),
            "6000 tokens from 1536": long_window(model, rounded, heldout_ids[1536:7536]),
        },
        "int4_agreement": tiny.int4_agreement(model, heldout_ids, 256),
        "sample": tiny.greedy_sample(model, tok),
    }


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


def readme_info(args, argv, config, stream, heldout_ids, result, numbers) -> dict:
    """The values of ``README_TEMPLATE``."""
    import os
    import platform

    import transformers

    rope = config.rope_parameters
    factors = rope["short_factor"] + rope["long_factor"]
    factor = MAX_POSITIONS / ORIGINAL_MAX_POSITIONS
    short = numbers["short"]
    load = os.getloadavg()[1]
    command = [".venv/bin/python", "scripts/make_tiny_phi3_128k.py", *(sys.argv[1:] if argv is None else argv)]
    return {
        "command": " ".join(command),
        "heldout_tokens": len(heldout_ids), "budget": 512 + 1024 + 6000,
        "spare": len(heldout_ids) - (512 + 1024 + 6000),
        "attention_factor": math.sqrt(1 + math.log(factor) / math.log(ORIGINAL_MAX_POSITIONS)),
        "n_inexact": sum(not fp16_exact(v) for v in factors),
        "max_fp16_err": max(abs(float(np.float16(v)) - v) for v in factors),
        "short_factor": rope["short_factor"], "long_factor": rope["long_factor"],
        "base_sha": tiny.sha256_file(BASE_DIR / "model.safetensors"), "python": platform.python_version(),
        "stream_tokens": len(stream), "n_unused": tiny.VOCAB_SIZE - len(np.unique(stream)),
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
        "prompt": tiny.PROMPT, "sample_text": numbers["sample"]["text"],
    }


def write_readme(out_dir: Path, info: dict) -> None:
    """Write ``README.md``; it states the folder size including itself, so rewrite until stable."""
    info = dict(info, file_rows=tiny.file_rows(out_dir), total_bytes=0)
    for _ in range(5):
        (out_dir / "README.md").write_text(README_TEMPLATE.format(**info), encoding="utf-8")
        if info["total_bytes"] == tiny.folder_bytes(out_dir):
            return
        info["total_bytes"] = tiny.folder_bytes(out_dir)
    raise SystemExit("README size did not converge")


def check_windows(windows: dict) -> None:
    """Abort unless windows up to 4096 tokens used the short factors and longer ones the long factors."""
    for name, result in windows.items():
        want = "long" if result["tokens"] > ORIGINAL_MAX_POSITIONS else "short"
        if result["factors"] != want:
            raise SystemExit(f"{name}: forward used the {result['factors']} factors, expected {want}")


def build(args: argparse.Namespace, argv: list[str] | None, stage: Path, started: float) -> dict:
    """Make the model in ``stage``: convert, fine-tune, save, reload, measure, write the README."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    copy_tokenizer(stage)
    tok = AutoTokenizer.from_pretrained(stage)
    stream, starts, heldout_ids = prepare_data(tok)
    base = AutoModelForCausalLM.from_pretrained(BASE_DIR).float()
    config = make_config()
    torch.manual_seed(args.seed)
    model = gqa_from_tiny(base, config)
    result = finetune(model, stream, starts, args)
    save_model(model, stage)
    model, tok = load_checked(stage)
    numbers = measure(model, tok, heldout_ids)
    check_windows(numbers["windows"])
    info = readme_info(args, argv, model.config, stream, heldout_ids, result, numbers)
    info["total_seconds"] = time.time() - started
    write_readme(stage, info)
    log(f"512-token held-out: {numbers['short']}; int4 agreement {numbers['int4_agreement']:.4f}")
    log("windows:\n" + window_rows(numbers["windows"]))
    log(f"sample: {numbers['sample']['text']!r}")
    return info


def main(argv: list[str] | None = None) -> None:
    """Build the asset in a staging folder and move it into place only when every check passed."""
    from transformers.utils import logging as hf_logging

    args = parse_args(argv)
    started = time.time()
    torch.set_num_threads(2)
    hf_logging.disable_progress_bar()
    final_dir = Path(args.out).resolve()
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}-staging-", dir=final_dir.parent))
    try:
        build(args, argv, stage, started)
        total = tiny.folder_bytes(stage)
        if total > tiny.MAX_ASSET_DIR_BYTES:
            raise SystemExit(f"{stage} is {total} bytes > {tiny.MAX_ASSET_DIR_BYTES}")
        tiny.publish(stage, final_dir)
        log(f"done in {time.time() - started:.0f}s; folder {total} bytes")
    finally:
        shutil.rmtree(stage, ignore_errors=True)


if __name__ == "__main__":
    main()
