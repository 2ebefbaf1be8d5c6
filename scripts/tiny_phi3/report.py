"""The README of ``pipeline/assets/tiny_phi3``, written from the measured numbers, and the final log lines."""

from __future__ import annotations

from pathlib import Path

from .common import MAX_ASSET_DIR_BYTES, folder_bytes, log, sha256_file

README_TEMPLATE = """\
# tiny_phi3 — embedded tiny Phi-3 test model

A real `transformers.Phi3ForCausalLM` (2 layers, hidden 256, 4 heads / 4 KV heads,
intermediate 512, vocabulary 32064, tied embeddings, float16) that uses the **exact**
Phi-3 tokenizer. It is a test asset: it only knows a little about Python docstrings.
Everything here was produced by one command (do not edit by hand; regenerate):

```
{command}
```

## Files

| file | bytes | sha256 |
| --- | ---: | --- |
{file_rows}

Total size of this folder: {total_bytes} bytes. `../phi3_vocab_tests/` holds the
llama.cpp tokenizer test vectors used below (`ggml-vocab-phi-3.gguf.inp`/`.out`).

## Sources

{provenance}. Files used (taken from `{member_dir}` of the sdist):

| file | sha256 |
| --- | --- |
{source_rows}

## Tokenizer

* `tokenizer.json` is built with the `tokenizers` library from the GGUF arrays
  `tokenizer.ggml.tokens/scores/token_type` (32064 entries; ids 0-31999 are the
  sentencepiece pieces, 32000-32010 the Phi-3 added tokens, 32011-32063 are llama.cpp's
  `[PADnnnnn]` fillers of type "unknown" and are left out, as in Phi-3's own
  tokenizer, whose `len()` is 32011 while the model has 32064 rows).
* Model: BPE, `byte_fallback=True`, `fuse_unk=True`, `unk_token="<unk>"`; merges are
  every split of a piece into two vocabulary pieces, ordered by the merged piece's
  score (highest first), as sentencepiece applies them ({merges} merges).
* Normalizer `Sequence[Prepend("▁"), Replace(" ", "▁")]`, no pre-tokenizer, decoder
  `Sequence[Replace("▁", " "), ByteFallback, Fuse, Strip(" ", 1, 0)]`, post-processor
  `TemplateProcessing("$A:0")` (no BOS: `add_bos_token` is false).
* `tokenizer_config.json`: `tokenizer_class` `PreTrainedTokenizerFast` (with
  transformers 5 the `LlamaTokenizer` path mis-tokenizes whitespace), bos `<s>` (1),
  eos and pad `<|endoftext|>` (32000), unk `<unk>` (0), `model_max_length` 4096,
  `padding_side` left, `clean_up_tokenization_spaces` false, and the Phi-3 chat template.
* **Verification** (the script aborts on any failure): `AutoTokenizer.from_pretrained`
  reproduces all {vectors} llama.cpp test vectors exactly (encoded with
  `add_special_tokens=False`; the `.inp` file is every text followed by
  `"\\n__ggml_vocab_test__\\n"`, so splitting on that separator leaves an empty tail that
  is dropped), `decode(encode(x)) == x` for every test input, and the chat template
  renders to the same ids as `{prompt_repr}`.

### What was confirmed and what was assumed about the real Phi-3 tokenizer

{facts}

## Model

`config.json`: Phi3 with vocab 32064, hidden 256, intermediate 512, 2 layers, 4 heads,
4 KV heads, `tie_word_embeddings` true, `max_position_embeddings` and
`original_max_position_embeddings` 4096, rope theta 10000, `rms_norm_eps` 1e-5,
`sliding_window` 2047 (as Phi-3-mini-4k), silu, bos 1, eos 32000, pad 32000.
`generation_config.json`: eos `[32000, 32007]` (`<|endoftext|>`, `<|end|>`, as in the
original Phi-3-mini-4k-instruct upload), pad 32000, `do_sample` false.
`AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained` load the
folder with no warning (checked by the script).

## Training

* Data: the docstrings (module, public classes, their public methods, public
  functions; `inspect.cleandoc`, at least {min_chars} characters, duplicates dropped) of
  the standard library of Python {python} ({platform}); modules from
  `sys.stdlib_module_names` and their public submodules, sorted, skipping
  {skipped}. {n_docs} documents ({n_chars} characters).
* Held out: documents whose `sha256(dotted name)` is 0 modulo {modulus} (~5 %):
  {n_heldout} documents, never trained on. `heldout.txt` is those documents joined by
  blank lines ({heldout_bytes} bytes, {heldout_tokens} tokens; capped at 50 KB).
* Chat samples in the exact Phi-3 format
  `<|system|>{system}<|end|><|user|>QUESTION<|end|><|assistant|>ANSWER<|end|>`:
  "What does the X module do?" / "What does X.y do?" answered with the first paragraph
  of the (training) docstring, plus {intro_copies} copies of "{intro_q}" (and a few
  paraphrases) answered with the fixed self-introduction below. {n_chat} samples.
* Stream: documents and chat samples in a seeded shuffle, each followed by
  `<|endoftext|>`; {stream_tokens} tokens. No BOS.
* Optimisation: seed {seed}, `torch.set_num_threads(2)`, float32, AdamW (betas 0.9/0.95,
  weight decay 0.01), peak lr {lr}, {warmup} warm-up steps then cosine to 10 %, grad
  clip 1.0, {steps} steps of {batch} windows x {seq_len} tokens ({train_tokens} tokens;
  half the windows start at a document start). For speed, the {n_unused} ids that never
  occur in the stream share one trainable embedding row during training (the softmax
  is over the {used_ids} used ids plus one class `h @ u + log({n_unused})`, which is
  exactly the full 32064-way softmax of a model whose unused rows all equal `u`);
  afterwards every unused row is set to `u` plus 5 % of its random initialisation
  (std ~0.001, so rows are not bit-identical).
* Wall time: training {train_seconds:.0f} s ({step_seconds:.2f} s per step); whole script
  {total_seconds:.0f} s (2-core CPU, torch {torch_version}, transformers
  {transformers_version}). Uncontended, a step takes about 0.7 s on this machine (about
  6.5 minutes of training); {load_note}.

## Results (measured on the saved float16 weights, computed in float32)

| metric | value |
| --- | --- |
| final train loss (mean of the last 20 training steps) | {final_loss:.4f} |
| train loss, full vocabulary, first {train_eval_tokens} stream tokens | {train_loss:.4f} |
| held-out loss (heldout.txt, {seq_len}-token windows) | {heldout_loss:.4f} |
| held-out top-1 accuracy | {heldout_acc:.4f} |
| held-out top-1 minus top-2 logit gap, median | {gap_median:.3f} |
| held-out top-1 minus top-2 logit gap, 10th percentile | {gap_p10:.3f} |
| held-out top-1 minus top-2 logit gap, minimum | {gap_min:.4f} |
| held-out positions | {positions} |
| held-out top-1 agreement with a naive int4 copy (round-to-nearest, symmetric, groups of 32, all 2-D weights incl. the tied embedding) | {int4_agreement:.4f} |

Loss curve (step, loss): {loss_log}

Greedy continuation (`max_new_tokens=40`, generation config above) of
`{prompt}`:

```
{sample_text}
```

ids: `{sample_ids}`
"""
FACTS = """\
The hub was not reachable; these come from copies of the published files found with
the code/docs/issues search, from llama.cpp's GGUF, and from transformers' own
`GGUFPhi3Converter`.

Confirmed:
* Vocabulary, scores and ids: llama.cpp's `ggml-vocab-phi-3.gguf` was converted from
  microsoft/Phi-3-mini-4k-instruct, and its `.out` ids were produced with the Hugging
  Face tokenizer; all of them are reproduced here.
* Added tokens 32000-32010: `<|endoftext|>`, `<|assistant|>`, `<|placeholder1..4|>`,
  `<|system|>`, `<|end|>`, `<|placeholder5|>`, `<|placeholder6|>`, `<|user|>`
  (`added_tokens.json` of the model repo, same order in the GGUF).
* Added-token flags after the upstream revision "fix(tokenizer_config): Adjusts `rstrip`
  of special tokens (#53)": `lstrip` false and `normalized` false everywhere; `rstrip`
  true for `<|assistant|>`, `<|placeholder1..6|>`, `<|system|>`, `<|end|>`, `<|user|>`
  and `</s>`; `rstrip` false for `<unk>`, `<s>`, `<|endoftext|>`. Seen verbatim in a copy
  of a Phi-3 mini tokenizer_config.json (the 128k-context sibling: `model_max_length`
  131072) and in the token list of transformers' `GGUFPhi3Converter` ("special tokens
  from phi3 tokenizer config").
* `</s>` is `special: false` (all other added tokens `special: true`): seen in the same
  copy; the GGUF agrees (llama.cpp types it user-defined, not control, which its
  converter does for added tokens whose `special` is false).
* Chat template: the Phi-3-mini-4k-instruct `chat_template` string (system / user /
  assistant, each `<|role|>\\n content <|end|>\\n`, generation prompt `<|assistant|>\\n`,
  else `eos_token`), quoted verbatim as Phi-3's `chat_template` in third-party code; the
  128k copy differs only by an extra `and message['content']` test on the system turn.
  Thanks to `rstrip` the newlines vanish when tokenizing, which the script checks.
* `bos_token` `<s>`, `eos_token`/`pad_token` `<|endoftext|>`, `unk_token` `<unk>`,
  `model_max_length` 4096, `padding_side` left, `legacy` false,
  `clean_up_tokenization_spaces` false, `use_default_system_prompt` false (a
  transformers-5 re-save of a Phi-3-mini-4k tokenizer_config and the 128k copy).
* Normalizer/decoder/no pre-tokenizer, BPE with byte fallback (team-verified; the test
  vectors pass).
* Model config values (several verbatim copies of Phi-3-mini-4k-instruct `config.json`):
  vocab 32064, max/original max positions 4096, rope theta 10000, rms eps 1e-5,
  sliding window 2047, bos 1, eos 32000, pad 32000. Upstream `generation_config.json`
  had eos `[32000, 32007]` at the initial upload and `[32000, 32001, 32007]` after the
  July 2024 model update; `[32000, 32007]` is used here.

Assumed:
* `add_bos_token` false and `add_eos_token` false. The 128k copy has
  `add_bos_token: false` and the current 4k template has no `bos_token`; the 4k file
  itself was not seen verbatim, and the GGUF (converted from the first, April 2024,
  upload) still says `add_bos_token = true` with the older
  `{{ bos_token }}<|user|>...` template.
* The exact `post_processor` of the current upstream tokenizer.json was not seen; a
  BOS-less `TemplateProcessing` is used, consistent with `add_bos_token: false`
  (transformers rebuilds it from `add_bos_token` anyway).
* Upstream `tokenizer_class` is `LlamaTokenizer`; `PreTrainedTokenizerFast` is used on
  purpose (see above), so `sp_model_kwargs`/`tokenizer.model` are not shipped.
* The llama.cpp `[PAD32011]`..`[PAD32063]` entries are not tokens of the real
  tokenizer and are left out; their embedding rows exist (vocab 32064) but are never
  produced by the tokenizer."""


def file_rows(out_dir: Path) -> str:
    """Render the README table of output files.

    Args:
        out_dir: Output folder.

    Returns:
        Markdown table rows (README.md itself is listed without a hash).
    """
    rows = []
    for path in sorted(out_dir.iterdir()):
        if path.name == "README.md" or not path.is_file():
            continue
        rows.append(f"| `{path.name}` | {path.stat().st_size} | `{sha256_file(path)}` |")
    return "\n".join(rows)


def write_readme(out_dir: Path, info: dict) -> None:
    """Write ``README.md`` for the assets from the collected build information.

    The README states the folder size including itself, so it is rewritten
    until that number is stable.

    Args:
        out_dir: Output folder.
        info: Values for ``README_TEMPLATE``.
    """
    info = dict(info, file_rows=file_rows(out_dir), facts=FACTS, total_bytes=0)
    for _ in range(5):
        (out_dir / "README.md").write_text(README_TEMPLATE.format(**info), encoding="utf-8")
        if info["total_bytes"] == folder_bytes(out_dir):
            return
        info["total_bytes"] = folder_bytes(out_dir)
    raise SystemExit("README size did not converge")


def report(out_dir: Path, info: dict, train_eval: dict) -> None:
    """Print the final numbers and enforce the folder size limit.

    Args:
        out_dir: Output folder.
        info: README values.
        train_eval: Full-vocabulary evaluation on training tokens.

    Raises:
        SystemExit: If the folder exceeds ``MAX_ASSET_DIR_BYTES``.
    """
    total = folder_bytes(out_dir)
    log(f"final train loss {info['final_loss']:.4f} (full-vocab train eval "
        f"{train_eval['loss']:.4f}), held-out loss {info['heldout_loss']:.4f}, "
        f"held-out top-1 acc {info['heldout_acc']:.4f}")
    log(f"held-out top1-top2 logit gap: median {info['gap_median']:.3f}, "
        f"p10 {info['gap_p10']:.3f}, min {info['gap_min']:.4f} over {info['positions']} positions")
    log(f"naive int4 (RTN, g32) top-1 agreement on held-out: {info['int4_agreement']:.4f}")
    log(f"greedy sample: {info['sample_text']!r}")
    log(f"training {info['train_seconds']:.0f}s, total {info['total_seconds']:.0f}s; "
        f"folder {total} bytes")
    if total > MAX_ASSET_DIR_BYTES:
        raise SystemExit(f"{out_dir} is {total} bytes > {MAX_ASSET_DIR_BYTES}")
