"""Fidelity against the original model from teacher-forced logits: top-1 agreement, KL divergence, perplexity.

The ``reference`` stage stores, for every held-out position, PyTorch's top-k next-token log-probs and the
log-prob of the token that really follows (``artifacts/reference/logprobs.npz``: plain arrays, loaded with
``allow_pickle=False``). Each validator runs its own model over the same windows and passes the logits to
:func:`compare`, so OpenVINO, ONNX Runtime GenAI and the NPU library are judged by one implementation.

KL(P_ref || Q_model) is computed over the reference's top-k tokens plus one bin holding the rest of the
vocabulary on both sides. Merging outcomes can only lower a KL divergence, so the figure is a lower bound
of the full-vocabulary KL; with k = 256 it matched the full KL to within 1% on the tiny model (see
``conf/validate/default.yaml``), at 2 MB instead of 65 MB of float32 log-probs per 512 positions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

LOGPROBS_FILE = "logprobs.npz"


@dataclass
class ReferenceLogprobs:
    """PyTorch's teacher-forced next-token distributions, one row per held-out position (windows concatenated)."""

    topk_ids: np.ndarray        # int32 [positions, k]: the reference's k most likely next tokens
    topk_logprobs: np.ndarray   # float32 [positions, k]: their log-probs
    next_ids: np.ndarray        # int32 [positions]: the token that follows in the text (-1: window end, unknown)
    next_logprobs: np.ndarray   # float32 [positions]: the reference's log-prob of it (nan where unknown)
    window_lengths: np.ndarray  # int32 [windows]

    def save(self, path: Path) -> None:
        """Write the arrays as an uncompressed ``.npz`` (no pickled objects)."""
        np.savez(path, **asdict(self))

    @classmethod
    def load(cls, path: Path) -> ReferenceLogprobs:
        """Read a file written by :meth:`save`; object arrays are refused (``allow_pickle=False``)."""
        with np.load(path, allow_pickle=False) as data:
            return cls(**{name: data[name] for name in cls.__dataclass_fields__})

    @property
    def perplexity(self) -> float:
        """The reference's perplexity over the positions whose next token is known."""
        known = self.next_ids >= 0
        return float(np.exp(-self.next_logprobs[known].mean()))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64 (fp16 logits from a DML graph included)."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def reference_from_logits(windows: list[list[int]], logits: list[np.ndarray], top_k: int) -> ReferenceLogprobs:
    """Build the stored reference from PyTorch's logits of each window (``[len, vocab]`` each)."""
    ids, lps, next_ids, next_lps = [], [], [], []
    for window, window_logits in zip(windows, logits):
        logp = log_softmax(window_logits)
        top = np.argsort(-logp, axis=-1, kind="stable")[:, :top_k]
        ids.append(top.astype(np.int32))
        lps.append(np.take_along_axis(logp, top, axis=-1).astype(np.float32))
        following = np.array(list(window[1:]) + [-1], dtype=np.int32)
        picked = np.take_along_axis(logp, np.maximum(following, 0)[:, None], axis=-1)[:, 0]
        next_ids.append(following)
        next_lps.append(np.where(following >= 0, picked, np.nan).astype(np.float32))
    return ReferenceLogprobs(np.concatenate(ids), np.concatenate(lps), np.concatenate(next_ids),
                             np.concatenate(next_lps), np.array([len(w) for w in windows], dtype=np.int32))


@dataclass
class Fidelity:
    """How closely a model's next-token distributions follow the reference's on the held-out text."""

    top1_agreement: float
    mean_kl: float
    max_kl: float
    perplexity: float
    reference_perplexity: float
    perplexity_delta_pct: float

    def as_dict(self) -> dict[str, float]:
        """Rounded values for the metrics file."""
        return {k: round(v, 6) for k, v in asdict(self).items()}


def topk_kl(ref: ReferenceLogprobs, logp: np.ndarray) -> np.ndarray:
    """Per-position KL(P_ref || Q) over the reference's top-k tokens plus one bin for the rest of the vocabulary."""
    p_lp = ref.topk_logprobs.astype(np.float64)
    q_lp = np.take_along_axis(logp, ref.topk_ids.astype(np.int64), axis=-1)
    p, q = np.exp(p_lp), np.exp(q_lp)
    head = (p * (p_lp - q_lp)).sum(axis=-1)
    p_rest = np.clip(1.0 - p.sum(axis=-1), 0.0, 1.0)
    q_rest = np.clip(1.0 - q.sum(axis=-1), 1e-30, 1.0)
    tail = np.where(p_rest > 0, p_rest * (np.log(np.maximum(p_rest, 1e-30)) - np.log(q_rest)), 0.0)
    return np.maximum(head + tail, 0.0)


def compare(ref: ReferenceLogprobs, logits: list[np.ndarray]) -> Fidelity:
    """Fidelity of a model whose teacher-forced logits over the reference windows are ``logits``.

    Args:
        ref: The stored reference (:meth:`ReferenceLogprobs.load`).
        logits: One ``[window_length, vocab]`` array per window, in the reference's order.

    Returns:
        Top-1 agreement, mean and max KL divergence, perplexity and its change against the reference.
    """
    lengths = [int(np.asarray(w).shape[0]) for w in logits]
    if lengths != ref.window_lengths.tolist():
        raise ValueError(f"logits cover windows of {lengths} tokens, the reference {ref.window_lengths.tolist()}")
    logp = np.concatenate([log_softmax(w) for w in logits])
    kl = topk_kl(ref, logp)
    known = ref.next_ids >= 0
    nll = -np.take_along_axis(logp[known], ref.next_ids[known].astype(np.int64)[:, None], axis=-1)[:, 0]
    ppl, ref_ppl = float(np.exp(nll.mean())), ref.perplexity
    return Fidelity(top1_agreement=float((logp.argmax(-1) == ref.topk_ids[:, 0]).mean()), mean_kl=float(kl.mean()),
                    max_kl=float(kl.max()), perplexity=ppl, reference_perplexity=ref_ppl,
                    perplexity_delta_pct=100.0 * (ppl - ref_ppl) / ref_ppl)


def load_npz_logits(path: Path) -> list[np.ndarray]:
    """Per-window logits written by a worker as ``w0, w1, ...`` in an ``.npz`` (no pickles)."""
    with np.load(path, allow_pickle=False) as data:
        return [data[f"w{i}"] for i in range(len(data.files))]


def summary(fidelity: Fidelity | None) -> dict[str, Any]:
    """The metrics-file form of ``fidelity`` (every key present, ``None`` when nothing ran)."""
    keys = Fidelity.__dataclass_fields__
    return fidelity.as_dict() if fidelity else dict.fromkeys(keys)
