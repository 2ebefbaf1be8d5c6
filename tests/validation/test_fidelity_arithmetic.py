"""The reference's and the validators' arithmetic on logits: the fast forms give the plain forms' results, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.validation.fidelity import log_softmax, top_k_ids


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
