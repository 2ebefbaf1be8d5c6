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
LONG_LOGPROBS_FILE = "long_logprobs.npz"  # long-context windows, fewer top-k per position


@dataclass
class ReferenceLogprobs:
    """PyTorch's teacher-forced next-token distributions, one row per held-out position (windows concatenated)."""

    topk_ids: np.ndarray  # int32 [positions, k]: the reference's k most likely next tokens
    topk_logprobs: np.ndarray  # float32 [positions, k]: their log-probs
    next_ids: np.ndarray  # int32 [positions]: the token that follows in the text (-1: window end, unknown)
    next_logprobs: np.ndarray  # float32 [positions]: the reference's log-prob of it (nan where unknown)
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
    """Row-wise log-softmax in float64 (fp16 logits from a DML graph included).

    The same operations as ``x - max - log(sum(exp(x - max)))``, bit for bit, on one float64 copy updated in place:
    1.6x faster on a 512 x 32064 chunk, which matters because every validated cell runs it over its long windows.
    """
    x = np.array(logits, dtype=np.float64)  # a copy this function owns, whatever the input's dtype
    x -= x.max(axis=-1, keepdims=True)
    x -= np.log(np.exp(x).sum(axis=-1, keepdims=True))
    return x


class RowLogprobs:
    """Log-probs of chosen ids of each row of ``logits``, without the whole float64 log-softmax.

    A comparison reads a row's log-probs at a few ids only (the reference's top-k, the next token) and its argmax. The
    row's normalizer ``max + log(sum(exp(x - max)))`` is computed in the logits' float32 (fp16 widened to it), the
    sum taken in float64, and the picked values are widened to float64: within 1e-7 of :func:`log_softmax`
    (``tests/validation/test_fidelity_arithmetic.py``), and 2x to 4x faster on a 512 x 32064 chunk (one float32
    temporary instead of a float64 copy). The reference stage keeps :func:`log_softmax`: it sorts whole rows.
    """

    def __init__(self, logits: np.ndarray) -> None:
        x = np.asarray(logits)
        self.x = x if x.dtype in (np.float32, np.float64) else x.astype(np.float32)
        top = self.x.max(axis=-1, keepdims=True)
        shifted = np.subtract(self.x, top)
        np.exp(shifted, out=shifted)
        self.normalizer = top.astype(np.float64) + np.log(shifted.sum(axis=-1, dtype=np.float64, keepdims=True))

    def at(self, ids: np.ndarray) -> np.ndarray:
        """Each row's log-probs at its ``ids`` (``[rows, n]``), float64."""
        return np.take_along_axis(self.x, ids.astype(np.int64), axis=-1).astype(np.float64) - self.normalizer

    def argmax(self) -> np.ndarray:
        """Each row's most likely id (the first one of a tie, as ``np.argmax`` of the log-softmax)."""
        return self.x.argmax(axis=-1)


def top_k_ids(logp: np.ndarray, k: int) -> np.ndarray:
    """Each row's ``k`` most likely ids, most likely first, ties by lower id: ``np.argsort(-logp, kind="stable")[:, :k]``.

    The same ids in the same order, without sorting the whole vocabulary: a partition picks the ``k`` largest, and only
    they are sorted (3x to 6x faster on 32064-wide rows: the reference stage sorts every position of its windows).
    Rows where a value tied with the k-th one was left out of the pick, and chunks with a NaN, take the full sort.
    """
    if k >= logp.shape[-1] or np.isnan(logp).any():
        return np.argsort(-logp, axis=-1, kind="stable")[:, :k]
    picked = np.argpartition(-logp, k - 1, axis=-1)[:, :k]
    values = np.take_along_axis(logp, picked, axis=-1)
    top = np.take_along_axis(picked, np.lexsort((picked, -values), axis=-1), axis=-1)
    for row in np.flatnonzero((logp >= values.min(axis=-1, keepdims=True)).sum(axis=-1) > k):
        top[row] = np.argsort(-logp[row], kind="stable")[:k]
    return top


def reference_from_logits(windows: list[list[int]], logits: list[np.ndarray], top_k: int) -> ReferenceLogprobs:
    """Build the stored reference from PyTorch's logits of each window (``[len, vocab]`` each)."""
    ids, lps, next_ids, next_lps = [], [], [], []
    for window, window_logits in zip(windows, logits):
        logp = log_softmax(window_logits)
        top = top_k_ids(logp, top_k)
        ids.append(top.astype(np.int32))
        lps.append(np.take_along_axis(logp, top, axis=-1).astype(np.float32))
        following = np.array(list(window[1:]) + [-1], dtype=np.int32)
        picked = np.take_along_axis(logp, np.maximum(following, 0)[:, None], axis=-1)[:, 0]
        next_ids.append(following)
        next_lps.append(np.where(following >= 0, picked, np.nan).astype(np.float32))
    return ReferenceLogprobs(
        np.concatenate(ids),
        np.concatenate(lps),
        np.concatenate(next_ids),
        np.concatenate(next_lps),
        np.array([len(w) for w in windows], dtype=np.int32),
    )


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


def topk_kl(ref_topk_logprobs: np.ndarray, q_lp: np.ndarray) -> np.ndarray:
    """Per-position KL(P_ref || Q) over the reference's top-k tokens plus one bin for the rest of the vocabulary,
    from the reference's top-k log-probs and Q's log-probs at the same ids (``q_lp``, float64)."""
    p_lp = ref_topk_logprobs.astype(np.float64)
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
    _check_lengths(ref, logits)
    return _fidelity(ref, [_row_stats(ref, start, w) for start, w in _offsets(ref, logits)])


def _check_lengths(ref: ReferenceLogprobs, logits: list[np.ndarray]) -> None:
    lengths = [int(np.asarray(w).shape[0]) for w in logits]
    if lengths != ref.window_lengths.tolist():
        raise ValueError(f"logits cover windows of {lengths} tokens, the reference {ref.window_lengths.tolist()}")


def _offsets(ref: ReferenceLogprobs, logits: list[np.ndarray]) -> list[tuple[int, np.ndarray]]:
    """(first reference row, logits) of every window."""
    starts = np.concatenate([[0], np.cumsum(ref.window_lengths)[:-1]]).astype(int)
    return list(zip(starts.tolist(), logits))


@dataclass
class _Stats:
    """Sums over some positions, so windows and ranges combine without holding every log-prob at once."""

    positions: int = 0
    top1_hits: int = 0
    kl_sum: float = 0.0
    kl_max: float = 0.0
    nll_sum: float = 0.0
    known: int = 0
    ref_nll_sum: float = 0.0


def _row_stats(
    ref: ReferenceLogprobs, start: int, logits: np.ndarray, rows: slice | None = None, chunk: int = 512
) -> _Stats:
    """Statistics of one window's ``logits`` (``rows`` of them) against the reference rows from ``start`` on."""
    logits = np.asarray(logits)
    rows = rows or slice(0, logits.shape[0])
    stats = _Stats()
    for lo in range(rows.start, rows.stop, chunk):  # in chunks: a 6k x 32k window's exp alone is 0.8 GB
        hi = min(lo + chunk, rows.stop)
        logp, ref_rows = RowLogprobs(logits[lo:hi]), slice(start + lo, start + hi)
        kl = topk_kl(ref.topk_logprobs[ref_rows], logp.at(ref.topk_ids[ref_rows]))
        next_ids = ref.next_ids[ref_rows]
        known = next_ids >= 0
        nll = -logp.at(np.maximum(next_ids, 0)[:, None])[known, 0]
        stats.positions += hi - lo
        stats.top1_hits += int((logp.argmax() == ref.topk_ids[ref_rows, 0]).sum())
        stats.kl_sum += float(kl.sum())
        stats.kl_max = max(stats.kl_max, float(kl.max()) if kl.size else 0.0)
        stats.nll_sum += float(nll.sum())
        stats.known += int(known.sum())
        stats.ref_nll_sum += float(-ref.next_logprobs[ref_rows][known].astype(np.float64).sum())
    return stats


def _fidelity(ref: ReferenceLogprobs, parts: list[_Stats]) -> Fidelity:
    total = _Stats()
    for part in parts:
        for name in ("positions", "top1_hits", "kl_sum", "nll_sum", "known", "ref_nll_sum"):
            setattr(total, name, getattr(total, name) + getattr(part, name))
        total.kl_max = max(total.kl_max, part.kl_max)
    ppl = float(np.exp(total.nll_sum / max(total.known, 1)))
    ref_ppl = float(np.exp(total.ref_nll_sum / max(total.known, 1)))
    return Fidelity(
        top1_agreement=total.top1_hits / max(total.positions, 1),
        mean_kl=total.kl_sum / max(total.positions, 1),
        max_kl=total.kl_max,
        perplexity=ppl,
        reference_perplexity=ref_ppl,
        perplexity_delta_pct=100.0 * (ppl - ref_ppl) / ref_ppl,
    )


def position_ranges(length: int, boundaries: list[int]) -> list[tuple[int, int]]:
    """Split positions ``0..length`` at the ``boundaries`` that fall inside, e.g. 6000 at [1024, 4096] -> 3 ranges."""
    cuts = [0, *sorted({b for b in boundaries if 0 < b < length}), length]
    return list(zip(cuts[:-1], cuts[1:]))


def compare_ranges(ref: ReferenceLogprobs, logits: list[np.ndarray], boundaries: list[int]) -> list[dict[str, Any]]:
    """Fidelity per window and position range (long-context checks: sliding window, LongRoPE switch).

    Args:
        ref: The stored long-context reference, one row per position of each window.
        logits: The model's logits over each window, in the reference's order.
        boundaries: Positions where behaviour changes (e.g. 1024, the sliding window, the original context).

    Returns:
        One dict per (window, range): window length, ``start``/``stop``, top-1 agreement, mean/max KL, perplexity change.
    """
    _check_lengths(ref, logits)
    out = []
    for first_row, window in _offsets(ref, logits):
        length = int(np.asarray(window).shape[0])
        for start, stop in position_ranges(length, boundaries):
            fid = _fidelity(ref, [_row_stats(ref, first_row, window, slice(start, stop))]).as_dict()
            out.append({"window": length, "start": start, "stop": stop, "positions": stop - start, **fid})
    return out


def agreement(pinned: list[np.ndarray], other: list[np.ndarray]) -> dict[str, float]:
    """How far a run at other numerics drifts from the pinned run of the same artifact (full-vocabulary KL).

    Returns:
        ``top1_agreement`` between the two runs' argmax and ``mean_kl`` = mean KL(pinned || other), in nats.
    """
    hits = kl_sum = positions = 0.0
    for a, b in zip(pinned, other):
        for lo in range(0, len(a), 512):
            p, q = log_softmax(a[lo : lo + 512]), log_softmax(b[lo : lo + 512])
            hits += float((p.argmax(-1) == q.argmax(-1)).sum())
            kl_sum += float(np.maximum((np.exp(p) * (p - q)).sum(-1), 0.0).sum())
            positions += len(p)
    return {"top1_agreement": round(hits / max(positions, 1), 6), "mean_kl": round(kl_sum / max(positions, 1), 9)}


def load_npz_logits(path: Path) -> list[np.ndarray]:
    """Per-window logits written by a worker as ``w0, w1, ...`` in an ``.npz`` (no pickles)."""
    with np.load(path, allow_pickle=False) as data:
        return [data[f"w{i}"] for i in range(len(data.files))]


def summary(fidelity: Fidelity | None) -> dict[str, Any]:
    """The metrics-file form of ``fidelity`` (every key present, ``None`` when nothing ran)."""
    keys = Fidelity.__dataclass_fields__
    return fidelity.as_dict() if fidelity else dict.fromkeys(keys)
