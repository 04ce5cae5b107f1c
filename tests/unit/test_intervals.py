"""The claims' intervals invert their sign-flip test: against a brute-force
inversion, the equivalence "interval excludes 0 <=> p < alpha" on random data
and at the boundaries (a document exactly at 0, values of equal size) and the
unbounded interval of 5 documents (fast tier). Coverage through the shipped
``claims()`` path: tests/slow/test_claims_slow.py."""

from __future__ import annotations

import numpy as np
import pytest

from forward_influence.analysis.analyze import AnalyzeConfig
from forward_influence.analysis.inference import claim_test, sign_flip_test

CFG = AnalyzeConfig(seed=0)
ALPHA = 0.05
GRID_STEP = 1e-4  # brute-force inversion: delta grid spacing


def brute_force_interval(x: np.ndarray, w: np.ndarray | None, lo: float, hi: float) -> tuple[float, float]:
    """The shifts on a grid around [lo, hi] whose test of x - delta does not reject."""
    grid = np.arange(lo - 0.05, hi + 0.05, GRID_STEP)
    keep = [d for d in grid if sign_flip_test(x - d, w).p_value >= ALPHA]
    return min(keep), max(keep)


@pytest.mark.parametrize("weighted", [False, True])
def test_interval_is_the_set_the_test_does_not_reject(weighted):
    rng = np.random.default_rng(1)
    x = rng.standard_t(3, size=9) * 0.2 + 0.1
    w = rng.exponential(size=9) if weighted else None
    r = sign_flip_test(x, w, alpha=ALPHA)
    b_lo, b_hi = brute_force_interval(x, w, r.ci_low, r.ci_high)
    assert abs(b_lo - r.ci_low) <= GRID_STEP and abs(b_hi - r.ci_high) <= GRID_STEP
    est = np.average(x, weights=w)
    assert r.ci_low <= est <= r.ci_high


def test_interval_excludes_zero_exactly_when_p_is_below_alpha_on_random_data():
    """Exact (n <= 16) and Monte Carlo (n > 16) patterns, weights, heavy tails, shifts of every size."""
    rng = np.random.default_rng(2)
    n_excluding = 0
    for k in range(600):
        n = int(rng.integers(6, 22))
        x = rng.standard_t(3, size=n) + rng.normal() * 0.7
        w = rng.exponential(size=n) if k % 2 else None
        r = sign_flip_test(x, w, rng=np.random.default_rng(k), alpha=ALPHA)
        excludes = r.ci_low > 0 or r.ci_high < 0
        assert excludes == (r.p_value < ALPHA), (x, w, r)
        n_excluding += excludes
    assert 80 < n_excluding < 520  # both outcomes well represented


@pytest.mark.parametrize(
    "x",
    [
        [0.0, 0.3, 0.1, 0.2, 0.4, 0.2, 0.1, 0.6],  # a document exactly at 0: its flip ties the observed statistic
        [1.0, 1.0, 1.0, -1.0, 1.0, 1.0, 1.0, -1.0],  # equal |x|: many exact ties
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, -1.0],
        [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
        [2.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0, 1.0],  # the flip of {2} equals the flip of {-1, -1}
    ],
    ids=["zero", "equal-abs", "one-negative", "two-zeros", "sums-tie"],
)
def test_equivalence_at_the_boundaries(x):
    x = np.array(x)
    for w in (None, np.ones(len(x)) * 3.0):
        r = sign_flip_test(x, w, alpha=ALPHA)
        assert (r.ci_low > 0 or r.ci_high < 0) == (r.p_value < ALPHA), r


@pytest.mark.parametrize("n_docs", [2, 5])
def test_five_documents_or_fewer_give_an_unbounded_interval(n_docs):
    """The smallest p with 5 documents is 2/32 > 0.05: no shift is rejected."""
    d = claim_test(np.linspace(0.2, 0.5, n_docs), None, CFG, None)
    assert d["ci_low"] == -np.inf and d["ci_high"] == np.inf and d["p_value"] == 2 / 2**n_docs


def test_six_documents_give_a_bounded_interval():
    d = claim_test(np.linspace(0.2, 0.5, 6), None, CFG, None)
    assert np.isfinite(d["ci_low"]) and d["ci_low"] > 0 and d["p_value"] == 2 / 64
