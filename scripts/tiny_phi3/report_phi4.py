"""The README of ``pipeline/assets/tiny_phi4``; its values come from ``report_128k.readme_info``."""

from __future__ import annotations

README_TEMPLATE = """\
# tiny_phi4 — embedded Phi-4-mini-shaped tiny test model

A real `transformers.Phi3ForCausalLM` (the class Phi-4-mini-instruct and Phi-4-mini-reasoning
load as) shaped like Phi-4-mini where export kernels and fidelity checks care:

| | Phi-4-mini-instruct | this model |
| --- | --- | --- |
| head dim (hidden / query heads) | 3072 / 24 = 128 | 256 / 2 = 128 |
| GQA (query : KV heads) | 24 : 8 (3 : 1) | 2 : 1 |
| `partial_rotary_factor` | 0.75 (rotary dim 96, cos/sin cache 48) | 0.75 (rotary dim 96, cos/sin cache 48) |
| rope | LongRoPE, 4096 -> 131072 | LongRoPE, 4096 -> 131072 |
| embeddings | tied | tied |
| vocabulary | 200064 (o200k-based BPE) | 32064 (the Phi-3 tokenizer, see below) |

2 layers, intermediate 512, float16. The cos/sin cache width 48 is what onnxruntime's
GroupQueryAttention accepts (at most head_size / 2 = 64 and a multiple of 8); a head of 32
with rotary 24 (cache 12) is refused by that kernel. Everything here was produced by one
command (do not edit by hand; regenerate):

```
{command}
```

The pipeline preset is `model=tiny-phi4` (`conf/model/tiny-phi4.yaml`). Held-out text for
evaluation is `../tiny_phi3/heldout.txt`: {heldout_tokens} tokens with this tokenizer (this
model never trained on it), enough for disjoint slices of 512 evaluated + 1024 perf-prompt +
6000 long-window tokens ({budget} in all, {spare} to spare).

## Tokenizer: the Phi-3 one, not Phi-4's

Phi-4-mini's tokenizer is a 200064-entry byte-level BPE built on OpenAI's o200k_base ranks plus
Microsoft's special tokens. It is not rebuilt here: no source of those ranks on this offline
machine could be checked against an independent encoder and the published special tokens and chat
template in the time given, and an unverified tokenizer is not shipped as Phi-4's. This model
uses the exact Phi-3 tokenizer of `../tiny_phi3` (`tokenizer.json` byte-identical;
`tokenizer_config.json` differs only by `model_max_length` 131072). Phi-4-mini's chat tags
(`<|system|>`, `<|user|>`, `<|assistant|>`, `<|end|>`) are special tokens there too, so prompts
are written the same way; the vocabulary size, and so the size of the tied embedding, is Phi-3's.

## Files

| file | bytes | sha256 |
| --- | ---: | --- |
{file_rows}

Total size of this folder: {total_bytes} bytes.

## Config (`config.json`)

* `rope_parameters`: `rope_type` `longrope`, `rope_theta` 10000, `partial_rotary_factor` 0.75,
  `original_max_position_embeddings` 4096, no `factor`/`attention_factor`, so transformers
  scales cos/sin by sqrt(1 + ln(131072/4096) / ln(4096)) = {attention_factor:.6f} for both lists.
* `max_position_embeddings` 131072, `sliding_window` 262144 (larger than any context, i.e. no
  window), rms eps 1e-5, silu, bos 1, eos 32000, pad 32000 (the Phi-3 tokenizer's ids).
* The factor lists are Phi-3.5-mini-instruct's, which have 48 entries each: exactly the number of
  rotary frequencies of head dim 128 at factor 0.75 (Phi-4-mini's lists have 48 too). A value
  float16 holds exactly (other than the leading 1.0) is moved up by 0.01, as for `../tiny_phi3_128k`.
  {n_inexact} of the {n_factors} values are not exact in float16; the largest float16 rounding error is
  {max_fp16_err:.2e}.
  * `short_factor`: {short_factor}
  * `long_factor`: {long_factor}
* transformers 5.5.4 picks the list per forward: `max(position_ids) + 1 > 4096` selects the long
  factors for all positions of that forward (checked below by reading `inv_freq` after each forward).
* Loading logs one transformers warning (the `original_max_position_embeddings` one every Phi-3
  LongRoPE config gives); the script allows that one and no other.

## How the weights were made

* Start: `../tiny_phi3/model.safetensors` (sha256 `{base_sha}`), upcast to float32. The attention
  rows are regrouped into 2 heads of 128: query head 0 is the old heads 0-1, head 1 the old heads
  2-3; the single KV head is the mean of the old K (and V) rows of heads 0-1 and 2-3. The rotary
  now turns 96 of each head's 128 dimensions, so attention has to be relearnt: that is what the
  fine-tune does. Embedding, MLP and norms are copied.
* Data: `make_tiny_phi3.py`'s training stream, rebuilt with its functions (stdlib docstrings
  of Python {python}, chat samples, seed 1234; {stream_tokens} tokens). The script checks
  that the held-out split it computes is byte-identical to `../tiny_phi3/heldout.txt`.
* Fine-tune (`tiny_phi3.train_128k.finetune`, shared with `../tiny_phi3_128k`): the tied embedding
  frozen (the unused ids' rows form one softmax class `h @ mean(row) + log({n_unused})`),
  transformer layers and final norm trained, seed {seed}, `torch.set_num_threads(2)`, float32,
  AdamW (betas 0.9/0.95, weight decay 0.01), peak lr {lr}, {warmup} warm-up steps then cosine to
  10 %, grad clip 1.0. {steps} steps in a seeded order: {short_steps} of {short_batch} x
  {short_len} tokens (short factors), {mid_steps} of one window of 2048-4096 tokens (short
  factors), {long_steps} of one window of 4097-{long_max} tokens (long factors); {train_tokens}
  tokens in all.
* Loss (restricted softmax, mean of the first 5 / last 10 steps of each kind): {loss_rows}.
* Wall time: fine-tune {train_seconds:.0f} s; whole script {total_seconds:.0f} s (2-core CPU shared
  with other jobs, torch {torch_version}, transformers {transformers_version}; {load_note}).

Loss log (step, kind, tokens, loss): {loss_log}

## Results (measured on the saved float16 weights, computed in float32)

512-token windows of the held-out text ({short_positions} positions): loss {short_loss:.4f},
top-1 accuracy {short_acc:.4f}, top-1 minus top-2 logit gap median {short_gap_median:.3f},
10th percentile {short_gap_p10:.3f}, minimum {short_gap_min:.4f}. Top-1 agreement with a
naive int4 copy (round-to-nearest, symmetric, groups of 32, all 2-D weights, 256-token
windows): {int4_agreement:.4f}.

Single teacher-forced windows of the held-out text. "fp16 factors" is the same model with
its LongRoPE factors rounded to float16 (what an fp16 IR constant holds).

| window | factors used | positions | gap median | gap p10 | gap min | top-1 acc | top-1 vs fp16 factors | max abs Δlogit vs fp16 factors |
| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |
{window_rows}

Greedy continuation (`max_new_tokens=40`) of `{prompt}`:

```
{sample_text}
```
"""
