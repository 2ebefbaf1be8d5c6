"""The 4k tiny Phi-3: initialisation, training, evaluation, saving and a checked reload."""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .common import (BOS_ID, END_ID, EOT_ID, MAX_WEIGHTS_BYTES, PROMPT, VOCAB_SIZE, capture_warnings,
                     fail_on_warnings, log)


@dataclass
class TrainResult:
    """Outcome of :func:`train`.

    Attributes:
        steps: Optimizer steps taken.
        tokens: Training tokens consumed (batch * seq_len * steps).
        final_loss: Mean restricted-softmax loss over the last 20 steps.
        seconds: Wall time of the training loop.
        loss_log: ``(step, loss)`` pairs logged during training.
    """

    steps: int
    tokens: int
    final_loss: float
    seconds: float
    loss_log: list = field(default_factory=list)


def make_model(seed: int):
    """Create the randomly initialised tiny ``Phi3ForCausalLM``.

    Args:
        seed: Torch seed used for the initialisation.

    Returns:
        The model in float32, training mode.
    """
    from transformers import Phi3Config, Phi3ForCausalLM

    config = Phi3Config(
        vocab_size=VOCAB_SIZE, hidden_size=256, intermediate_size=512,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        hidden_act="silu", max_position_embeddings=4096,
        original_max_position_embeddings=4096, rope_theta=10000.0, rms_norm_eps=1e-5,
        bos_token_id=BOS_ID, eos_token_id=EOT_ID, pad_token_id=EOT_ID,
        sliding_window=2047, tie_word_embeddings=True, initializer_range=0.02,
        attention_dropout=0.0, resid_pdrop=0.0, embd_pdrop=0.0, use_cache=True,
    )
    torch.manual_seed(seed)
    model = Phi3ForCausalLM(config)
    if model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
        raise SystemExit("lm_head is not tied to embed_tokens")
    return model.float().train()


def sample_batch(stream: np.ndarray, starts: np.ndarray, rng: np.random.Generator,
                 batch: int, seq_len: int) -> torch.Tensor:
    """Sample training windows: half start at a document start, half anywhere.

    Args:
        stream: The token stream.
        starts: Document start offsets.
        rng: Random generator.
        batch: Number of windows.
        seq_len: Window length (the model sees ``seq_len`` inputs).

    Returns:
        A ``(batch, seq_len + 1)`` int64 tensor.
    """
    limit = len(stream) - seq_len - 1
    at_doc = np.minimum(rng.choice(starts, size=batch // 2), limit)
    anywhere = rng.integers(0, limit, size=batch - batch // 2)
    offsets = np.concatenate([at_doc, anywhere])
    return torch.from_numpy(np.stack([stream[o:o + seq_len + 1] for o in offsets]))


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 10 % of the peak.

    Args:
        step: Current step (0-based).
        steps: Total steps.
        peak: Peak learning rate.
        warmup: Warm-up steps.

    Returns:
        The learning rate for ``step``.
    """
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(model, stream: np.ndarray, starts: np.ndarray, args) -> TrainResult:
    """Train with AdamW, sharing one embedding row among all token ids the stream lacks.

    About 2/3 of the 32064 ids never occur in the training stream.  Their rows
    are tied to one trainable vector ``u`` (see :func:`share_unused_rows`), so
    the exact full-vocabulary softmax equals a softmax over the used ids plus
    one extra class ``h @ u + log(n_unused)``.  That is ~3x cheaper on CPU and
    still teaches the model to keep every unused id below the real tokens.

    Args:
        model: The model from :func:`make_model`.
        stream: Training token stream.
        starts: Document start offsets.
        args: Parsed command-line arguments.

    Returns:
        Training statistics (losses are exact full-vocabulary losses).
    """
    rng = np.random.default_rng(args.seed)
    used = torch.from_numpy(np.unique(stream))
    remap = torch.full((VOCAB_SIZE,), -1, dtype=torch.long)
    remap[used] = torch.arange(len(used))
    log_unused = math.log(VOCAB_SIZE - len(used))
    shared = torch.nn.Parameter(torch.zeros(model.config.hidden_size))
    optimizer = torch.optim.AdamW([*model.parameters(), shared], lr=args.lr,
                                  betas=(0.9, 0.95), weight_decay=0.01)
    log(f"training: {args.steps} steps x {args.batch_size} x {args.seq_len} tokens; "
        f"{len(used)} used ids + 1 row shared by {VOCAB_SIZE - len(used)} unused ids")
    losses, loss_log, start = [], [], time.time()
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        batch = sample_batch(stream, starts, rng, args.batch_size, args.seq_len)
        hidden = model.model(input_ids=batch[:, :-1]).last_hidden_state
        logits = hidden @ torch.cat([model.lm_head.weight[used], shared[None]]).T
        logits = torch.cat([logits[..., :-1], logits[..., -1:] + log_unused], dim=-1)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 remap[batch[:, 1:]].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([*model.parameters(), shared], 1.0)
        optimizer.step()
        losses.append(loss.item())
        if step % 25 == 0 or step == args.steps - 1:
            loss_log.append((step, round(losses[-1], 4)))
            log(f"step {step:4d} loss {losses[-1]:.4f} ({time.time() - start:.0f}s)")
    share_unused_rows(model, used, shared.detach())
    return TrainResult(args.steps, args.steps * args.batch_size * args.seq_len,
                       float(np.mean(losses[-20:])), time.time() - start, loss_log)


@torch.no_grad()
def share_unused_rows(model, used: torch.Tensor, shared: torch.Tensor) -> None:
    """Write the shared vector into every embedding row whose id the stream lacks.

    A tiny remainder of each row's random initialisation (x0.05, std ~0.001) is
    kept so that the rows are not bit-identical and ties stay broken.

    Args:
        model: The trained model (embedding tied to the LM head).
        used: Sorted ids that occur in the training stream.
        shared: The trained shared row.
    """
    weight = model.model.embed_tokens.weight
    unused = torch.ones(weight.shape[0], dtype=torch.bool)
    unused[used] = False
    weight[unused] = shared + 0.05 * weight[unused]


@torch.no_grad()
def evaluate(model, ids: list[int], seq_len: int) -> dict:
    """Teacher-forced full-vocabulary loss, accuracy and top-1/top-2 logit gaps.

    Args:
        model: A causal LM (any dtype; logits are compared in float32).
        ids: Token ids of the evaluated text.
        seq_len: Window length; the text is cut into consecutive windows.

    Returns:
        ``loss``, ``top1_acc``, ``positions`` and the median / 10th-percentile /
        minimum gap between the two largest logits.
    """
    model.eval()
    losses, gaps, hits = [], [], []
    for offset in range(0, len(ids) - 1, seq_len):
        window = torch.tensor([ids[offset:offset + seq_len + 1]])
        if window.shape[1] < 2:
            continue
        logits = model(input_ids=window[:, :-1]).logits[0].float()
        target = window[0, 1:]
        losses.append(torch.nn.functional.cross_entropy(logits, target, reduction="none"))
        top2 = logits.topk(2, dim=-1)
        gaps.append(top2.values[:, 0] - top2.values[:, 1])
        hits.append(top2.indices[:, 0] == target)
    loss, gap, hit = torch.cat(losses), torch.cat(gaps), torch.cat(hits)
    return {"loss": loss.mean().item(), "top1_acc": hit.float().mean().item(),
            "positions": int(gap.numel()), "gap_median": gap.median().item(),
            "gap_p10": torch.quantile(gap, 0.10).item(), "gap_min": gap.min().item()}


@torch.no_grad()
def int4_agreement(model, ids: list[int], seq_len: int, group: int = 32) -> float:
    """Teacher-forced top-1 agreement with a naive int4 copy of the model.

    The copy rounds every 2-D weight (including the tied embedding) to symmetric
    int4 with one scale per group of ``group`` consecutive values.  This is only a
    reference point for the pipeline's own int4 comparison.

    Args:
        model: The float32 model.
        ids: Token ids of the evaluated text.
        seq_len: Window length.
        group: Number of consecutive weights sharing one scale.

    Returns:
        The fraction of positions whose argmax agrees.
    """
    quantized = copy.deepcopy(model)
    for param in quantized.parameters():
        if param.dim() == 2:
            rows = param.reshape(-1, group)
            scale = rows.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 7
            param.copy_((rows / scale).round().clamp(-8, 7).mul(scale).reshape(param.shape))
    agree = []
    for offset in range(0, len(ids) - 1, seq_len):
        window = torch.tensor([ids[offset:offset + seq_len]])
        agree.append((model(input_ids=window).logits.argmax(-1)
                      == quantized(input_ids=window).logits.argmax(-1)).flatten())
    return torch.cat(agree).float().mean().item()


def save_model(model, out_dir: Path) -> None:
    """Save the model as float16 safetensors plus config and generation config.

    Args:
        model: The trained model (converted to float16 in place).
        out_dir: Output folder.

    Raises:
        SystemExit: If the checkpoint is too large or still holds an untied lm_head.
    """
    from safetensors import safe_open

    model.eval().to(torch.float16)
    model.save_pretrained(out_dir, safe_serialization=True)
    generation = {"bos_token_id": BOS_ID, "do_sample": False,
                  "eos_token_id": [EOT_ID, END_ID], "pad_token_id": EOT_ID}
    with open(out_dir / "generation_config.json", "w", encoding="utf-8") as handle:
        json.dump(generation, handle, indent=2)
        handle.write("\n")
    weights = out_dir / "model.safetensors"
    with safe_open(str(weights), "pt") as handle:
        keys = list(handle.keys())
        dtypes = {handle.get_slice(k).get_dtype() for k in keys}
    if weights.stat().st_size > MAX_WEIGHTS_BYTES or "lm_head.weight" in keys:
        raise SystemExit(f"bad checkpoint: {weights.stat().st_size} bytes, keys {keys}")
    log(f"saved {len(keys)} tensors ({sorted(dtypes)}), {weights.stat().st_size} bytes")


def load_checked(out_dir: Path):
    """Load the saved model and tokenizer with the Auto classes, failing on any warning.

    Args:
        out_dir: Output folder.

    Returns:
        ``(model, tokenizer)``; the model is upcast to float32 for evaluation.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with capture_warnings() as records:
        model = AutoModelForCausalLM.from_pretrained(out_dir)
        tok = AutoTokenizer.from_pretrained(out_dir)
    fail_on_warnings(records, "from_pretrained")
    if type(model).__name__ != "Phi3ForCausalLM":
        raise SystemExit(f"loaded {type(model).__name__}, expected Phi3ForCausalLM")
    log(f"reloaded {type(model).__name__} in {model.dtype} without warnings")
    return model.float().eval(), tok


@torch.no_grad()
def greedy_sample(model, tok) -> dict:
    """Greedy-decode up to 40 tokens after the introduction prompt.

    Args:
        model: The reloaded model.
        tok: The reloaded tokenizer.

    Returns:
        The generated ids and text (special tokens kept).
    """
    inputs = tok(PROMPT, add_special_tokens=False, return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=40, do_sample=False)
    new = output[0, inputs["input_ids"].shape[1]:].tolist()
    return {"ids": new, "text": tok.decode(new, skip_special_tokens=False)}
