"""The reference's and the validators' arithmetic on logits: the fast forms give the plain forms' results, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.validation.fidelity import RowLogprobs, compare, log_softmax, reference_from_logits, top_k_ids, topk_kl


def plain_log_softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def rows(seed: int = 0) -> np.ndarray:
    """Logit rows as a model gives them (float32), with the ties a full sort must order by id."""
    logits = (np.random.default_rng(seed).standard_normal((64, 32064)) * 3).astype(np.float32)
    logits[1, 100:300] = logits[1].max() + 1  # 200 ids tied at the top: more than k
    logits[2, :] = 0.0  # a flat row: every id tied
    logits[3, 5000:5010] = np.sort(logits[3])[-20]  # ties straddling the k-th place for k = 20
    logits[4, ::2] = logits[4, 1::2]  # pairs of equal values everywhere
    return logits


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_log_softmax_in_place_is_the_plain_formula(dtype: type) -> None:
    logits = rows().astype(dtype)
    kept = logits.copy()
    np.testing.assert_array_equal(log_softmax(logits), plain_log_softmax(logits))
    np.testing.assert_array_equal(logits, kept)  # the caller's array is not touched


@pytest.mark.parametrize("k", [1, 2, 20, 64, 1024, 32064, 40000])
def test_top_k_ids_are_the_stable_sorts_first_k(k: int) -> None:
    logp = log_softmax(rows(k))
    expected = np.argsort(-logp, axis=-1, kind="stable")[:, :k]
    got = top_k_ids(logp, k)
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


def test_top_k_ids_with_a_nan_row_keep_the_sorts_order() -> None:
    logp = log_softmax(rows())
    logp[6, 17] = np.nan
    np.testing.assert_array_equal(top_k_ids(logp, 64), np.argsort(-logp, axis=-1, kind="stable")[:, :64])


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_row_logprobs_are_the_log_softmax_at_the_picked_ids(dtype: type) -> None:
    logits = rows(3).astype(dtype)
    ids = np.random.default_rng(1).integers(0, logits.shape[-1], (len(logits), 64))
    fast, plain = RowLogprobs(logits), plain_log_softmax(logits)
    np.testing.assert_allclose(fast.at(ids), np.take_along_axis(plain, ids, axis=-1), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(fast.argmax(), plain.argmax(axis=-1))  # ties included: the first id, as before


def test_compare_gives_the_plain_forms_figures() -> None:
    """Top-1 and the perplexity's known positions exactly, KL and perplexity to 1e-6, against the float64
    log-softmax of every row (what ``compare`` computed before :class:`RowLogprobs`)."""
    reference, artifact = rows(5), rows(5) + np.random.default_rng(6).normal(0, 0.3, (64, 32064)).astype(np.float32)
    window = [int(i) for i in np.random.default_rng(7).integers(0, 32064, 64)]
    ref = reference_from_logits([window], [reference], 64)
    got = compare(ref, [artifact])
    logp = plain_log_softmax(artifact)
    known = ref.next_ids >= 0
    nll = -np.take_along_axis(logp[known], ref.next_ids[known].astype(np.int64)[:, None], axis=-1)[:, 0]
    kl = topk_kl(ref.topk_logprobs, np.take_along_axis(logp, ref.topk_ids.astype(np.int64), axis=-1))
    assert got.top1_agreement == (logp.argmax(-1) == ref.topk_ids[:, 0]).mean() < 1.0
    assert got.mean_kl == pytest.approx(float(kl.mean()), rel=1e-6, abs=1e-9) and got.mean_kl > 0.01
    assert got.max_kl == pytest.approx(float(kl.max()), rel=1e-6)
    assert got.perplexity == pytest.approx(float(np.exp(nll.mean())), rel=1e-6)
