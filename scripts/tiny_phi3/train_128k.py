"""The 128k tiny model's data, fine-tuning on short and long windows, saving, checked reload and measurements."""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from .common import BOS_ID, END_ID, EOT_ID, MAX_WEIGHTS_BYTES, REPO_ROOT, capture_warnings, fail_on_warnings
from .corpus import build_stream, chat_samples, collect_docs, heldout_text, is_heldout
from .longrope import MAX_POSITIONS, ORIGINAL_MAX_POSITIONS, fp16_factor_copy, long_window
from .train import evaluate, greedy_sample, int4_agreement, lr_at, sample_batch

BASE_DIR = REPO_ROOT / "pipeline" / "assets" / "tiny_phi3"

# transformers 5.5.4 logs this for every Phi-3 LongRoPE config, Microsoft's included (they set
# original_max_position_embeddings, not `factor`); it is the one warning the load may give.
KNOWN_LOAD_WARNING = "rope_parameters['original_max_position_embeddings']"


def log(message: str) -> None:
    """Print a progress message immediately."""
    print(f"[make_tiny_phi3_128k] {message}", flush=True)


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
    ``h @ mean(unused rows) + log(n_unused)`` (as in ``tiny_phi3.train.train``).

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
            group["lr"] = lr_at(step, len(plan), args.lr, args.warmup)
        batch = sample_batch(stream, starts, rng, batch_size, seq_len) if batch_size > 1 else \
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

    with capture_warnings() as records:
        model = AutoModelForCausalLM.from_pretrained(out_dir)
        tok = AutoTokenizer.from_pretrained(out_dir)
    fail_on_warnings([r for r in records if KNOWN_LOAD_WARNING not in r[1]], "from_pretrained")
    if type(model).__name__ != "Phi3ForCausalLM" or model.config.rope_parameters["rope_type"] != "longrope":
        raise SystemExit(f"loaded {type(model).__name__} with {model.config.rope_parameters}")
    return model.float().eval(), tok


def prepare_data(tok) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Rebuild ``make_tiny_phi3.py``'s training stream and check its held-out split is ``tiny_phi3/heldout.txt``."""
    docs = collect_docs()
    train_docs = [doc for doc in docs if not is_heldout(doc)]
    heldout = heldout_text([doc for doc in docs if is_heldout(doc)])
    shipped = (BASE_DIR / "heldout.txt").read_text(encoding="utf-8")
    if heldout != shipped:
        raise SystemExit("this interpreter's stdlib docstrings give another held-out split than "
                         "tiny_phi3/heldout.txt: run with the Python that made tiny_phi3 (see its README)")
    samples = chat_samples(train_docs)
    stream, starts = build_stream(tok, [doc.text for doc in train_docs] + samples, 1234)
    heldout_ids = tok(shipped, add_special_tokens=False, verbose=False)["input_ids"]
    log(f"data: {len(stream)} training tokens (held-out split verified), held-out {len(heldout_ids)} tokens")
    return stream, starts, heldout_ids


def save_model(model, out_dir: Path) -> None:
    """Save float16 safetensors, config and generation config; refuse an oversized or untied checkpoint."""
    from safetensors import safe_open

    model.eval().to(torch.float16)
    model.save_pretrained(out_dir, safe_serialization=True)
    generation = {"bos_token_id": BOS_ID, "do_sample": False,
                  "eos_token_id": [EOT_ID, END_ID], "pad_token_id": EOT_ID}
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n", encoding="utf-8")
    weights = out_dir / "model.safetensors"
    with safe_open(str(weights), "pt") as handle:
        keys = list(handle.keys())
    if weights.stat().st_size > MAX_WEIGHTS_BYTES or "lm_head.weight" in keys:
        raise SystemExit(f"bad checkpoint: {weights.stat().st_size} bytes, keys {keys}")
    log(f"saved {len(keys)} tensors, {weights.stat().st_size} bytes")


@torch.no_grad()
def measure(model, tok, heldout_ids: list[int]) -> dict:
    """Held-out numbers of the reloaded model: 512-token windows, the long windows, int4 and a sample."""
    model.eval()
    rounded = fp16_factor_copy(model)
    return {
        "short": evaluate(model, heldout_ids, 512),
        "windows": {
            "3500 tokens from 0": long_window(model, rounded, heldout_ids[:3500]),
            "4096 tokens from 0": long_window(model, rounded, heldout_ids[:4096]),
            "6000 tokens from 0": long_window(model, rounded, heldout_ids[:6000]),
            "6000 tokens from 1536": long_window(model, rounded, heldout_ids[1536:7536]),
        },
        "int4_agreement": int4_agreement(model, heldout_ids, 256),
        "sample": greedy_sample(model, tok),
    }
