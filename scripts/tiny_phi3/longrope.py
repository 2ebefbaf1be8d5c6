"""The LongRoPE + GQA config of the 128k tiny model, its weights from the 4k one, and how it uses the factors."""

from __future__ import annotations

import numpy as np
import torch

from .common import BOS_ID, EOT_ID, VOCAB_SIZE

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


# Attention shapes of the derived tiny models: (query heads, KV heads, partial_rotary_factor) over hidden 256.
SHAPES = {
    "phi3_128k": (4, NUM_KV_HEADS, 1.0),  # head dim 64, rotary 64: Phi-3-mini-128k / Phi-3.5-mini
    # head dim 128, rotary 96 (cos/sin cache 48 wide), 2:1 GQA: Phi-4-mini's head and rotary shapes
    # (3072 / 24 heads = 128, partial_rotary_factor 0.75; 24 query / 8 KV heads) at hidden 256.
    "phi4": (2, 1, 0.75),
}


def make_config(shape: str = "phi3_128k"):
    """The tiny LongRoPE + GQA config of ``shape`` (written the way Microsoft's configs are: ``rope_scaling``).

    The factor lists have one entry per rotary frequency: ``head_dim * partial_rotary_factor / 2``.
    """
    from transformers import Phi3Config

    num_heads, num_kv_heads, partial = SHAPES[shape]
    head_dim = 256 // num_heads
    rotary_half = int(head_dim * partial) // 2
    extra = {} if partial == 1.0 else {"partial_rotary_factor": partial}  # keeps the 128k config.json as it was
    return Phi3Config(
        vocab_size=VOCAB_SIZE, hidden_size=256, intermediate_size=512,
        num_hidden_layers=2, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        hidden_act="silu", max_position_embeddings=MAX_POSITIONS,
        original_max_position_embeddings=ORIGINAL_MAX_POSITIONS, rope_theta=10000.0,
        rope_scaling={"type": "longrope",
                      "short_factor": resample_factors(PHI35_SHORT_FACTOR, rotary_half),
                      "long_factor": resample_factors(PHI35_LONG_FACTOR, rotary_half)},
        rms_norm_eps=1e-5, bos_token_id=BOS_ID, eos_token_id=EOT_ID,
        pad_token_id=EOT_ID, sliding_window=SLIDING_WINDOW, tie_word_embeddings=True,
        initializer_range=0.02, attention_dropout=0.0, resid_pdrop=0.0, embd_pdrop=0.0,
        use_cache=True, **extra,
    )


@torch.no_grad()
def gqa_from_tiny(base, config):
    """Build the GQA model from the 4-KV-head tiny model by mean-pooling K/V heads in groups.

    Query head ``h`` attends with KV head ``h // group`` (transformers' ``repeat_kv``), so the
    K (and V) projections of the query heads of one group are averaged into that KV head. With
    wider heads (``phi4``: 2 of 128) the same rows are regrouped: new head 0 is old heads 0-1.

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


def rope_factors_used(model) -> str:
    """Which factor list the rotary embedding used in the last forward (``short`` / ``long``)."""
    rotary = model.model.rotary_emb
    rope = model.config.rope_parameters
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    dim = int(head_dim * rope.get("partial_rotary_factor", 1.0))  # the rotated dimensions
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
