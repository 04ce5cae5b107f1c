"""Claims as tests (docs/design.md §5): the sign-flip test against brute force, Holm by
hand, the family-wise error and power of the verdict rule by simulation, the
document bootstrap of the summaries, and the word-level rank-biserial (fast
tier, pure NumPy/SciPy). The claims' intervals: tests/unit/test_intervals.py."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from forward_influence.analysis.analyze import AnalyzeConfig
from forward_influence.analysis.inference import (
    MIN_DOCS,
    adjust_claims,
    claim_verdict,
    holm,
    per_document_rank_biserial,
    sign_flip_test,
    word_level,
)
from forward_influence.analysis.stats import (
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    cluster_bootstrap,
    rank_biserial,
    ratio_statistic,
)

CFG = AnalyzeConfig(n_boot=999, seed=0)
TOL_EXACT = 1e-12  # closed forms / identical resamples, float rounding only
ALPHA = 0.05
N_STUDIES = 2000  # simulated studies per scenario
N_CLAIMS = 4
FWER_MAX = 0.06  # nominal 5%; the exact test at n=8 gives ~3.5%; 2,000 studies: SE ~0.4 pts
POWER_MIN = 0.5
TOL_POWER = 0.04  # measured vs analytic power: ~3.5 SE of 2,000 studies (0.011) plus the small Holm step-2 extra
TOL_MC = 0.02  # Monte Carlo p (20,000 patterns, SE <= 0.0035) vs exact p


# ----------------------------------------------------------------- sign flip
def brute_force_p(x: np.ndarray, w: np.ndarray) -> float:
    obs = abs(np.sum(w * x))
    t = [abs(np.sum(np.array(s) * w * x)) for s in itertools.product((1, -1), repeat=len(x))]
    return float(np.mean(np.array(t) >= obs - 1e-12))


@pytest.mark.parametrize("n", [1, 3, 6, 9])
def test_sign_flip_exact_matches_brute_force(n):
    rng = np.random.default_rng(n)
    x, w = rng.standard_t(3, size=n) + 0.3, rng.exponential(size=n)
    r = sign_flip_test(x, w)
    assert r.exact and r.n_docs == n
    assert abs(r.p_value - brute_force_p(x, w)) < TOL_EXACT
    assert 0 < r.p_value <= 1
    assert abs(r.statistic - np.sum(w * x) / np.sum(w)) < TOL_EXACT


def test_sign_flip_monte_carlo_agrees_with_exact_and_is_never_zero():
    rng = np.random.default_rng(1)
    x = rng.normal(size=12) + 0.4
    exact = sign_flip_test(x).p_value
    mc = sign_flip_test(x, rng=np.random.default_rng(2), n_perm=20_000, exact_max=0)
    assert not mc.exact and abs(mc.p_value - exact) < TOL_MC
    far = sign_flip_test(np.full(30, 1.0) + rng.random(30), rng=np.random.default_rng(3), n_perm=999)
    assert far.p_value == 1 / 1000  # +1 correction: the observed pattern counts


def test_sign_flip_minimum_p_with_8_documents_is_1_over_128():
    rng = np.random.default_rng(0)
    same_sign = np.abs(rng.normal(size=8))
    assert sign_flip_test(same_sign).p_value == 1 / 128
    assert sign_flip_test(-same_sign, rng.exponential(size=8)).p_value == 1 / 128
    p = sign_flip_test(rng.standard_t(3, size=(4000, 8))).p_value
    assert p.min() == 1 / 128 and (p <= 1).all()
    assert np.allclose(p * 128, np.round(p * 128), atol=TOL_EXACT)  # a multiple of 1/128


def test_sign_flip_nan_ties_and_zero_weight():
    x = np.array([0.5, -0.2, np.nan, 0.9, 0.1, -0.4, 0.3])
    ok = np.isfinite(x)
    r = sign_flip_test(x)
    assert r.n_docs == 6 and r.p_value == sign_flip_test(x[ok]).p_value
    two_d = sign_flip_test(np.vstack([x, x[::-1]]))  # 2-D: NaN as weight 0
    assert np.allclose(
        two_d.p_value, [r.p_value, sign_flip_test(x[::-1][np.isfinite(x[::-1])]).p_value], atol=TOL_EXACT
    )
    assert sign_flip_test(np.array([1.0, -1.0, 2.0, -2.0])).p_value == 1.0  # T = 0: every pattern reaches it
    w = np.array([1.0, 2.0, 1.0, 1.0, 0.0, 1.0, 1.0])  # zero weight on a finite value
    assert sign_flip_test(x, w).p_value == sign_flip_test(x[w > 0], w[w > 0]).p_value
    with pytest.raises(ValueError, match="weights"):
        sign_flip_test(x, -w)


# ---------------------------------------------------------------------- Holm
def test_holm_by_hand():
    # sorted 0.001, 0.01, 0.02, 0.04, 0.30 times 5, 4, 3, 2, 1 = 0.005, 0.04, 0.06, 0.08, 0.30
    p = np.array([0.02, 0.30, 0.001, np.nan, 0.04, 0.01])
    np.testing.assert_allclose(holm(p), [0.06, 0.30, 0.005, np.nan, 0.08, 0.04], atol=TOL_EXACT)
    # running maximum and the cap at 1
    np.testing.assert_allclose(holm([0.04, 0.03, 0.5]), [0.09, 0.09, 0.5], atol=TOL_EXACT)
    np.testing.assert_allclose(holm([0.6, 0.4]), [0.8, 0.8], atol=TOL_EXACT)
    np.testing.assert_allclose(holm([0.9, 0.8]), [1.0, 1.0], atol=TOL_EXACT)
    rows = np.random.default_rng(0).random((5, 4))
    np.testing.assert_allclose(holm(rows), np.array([holm(r) for r in rows]), atol=TOL_EXACT)
    np.testing.assert_allclose(holm(rows.T, axis=0), holm(rows).T, atol=TOL_EXACT)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.5, 1.5])


# ------------------------------------------------------------------ verdicts
def test_claim_verdict_rules():
    assert claim_verdict(0.2, 0.01, 1, n_docs=8) == SUPPORTED
    assert claim_verdict(0.2, 0.01, -1, n_docs=8) == NOT_SUPPORTED
    assert claim_verdict(-0.2, 0.01, -1, n_docs=8) == SUPPORTED
    assert claim_verdict(0.2, ALPHA, 1, n_docs=8) == INCONCLUSIVE  # p < alpha, strictly
    assert claim_verdict(0.2, 0.01, 1, n_docs=MIN_DOCS - 1) == INCONCLUSIVE
    assert claim_verdict(0.2, np.nan, 1, n_docs=8) == INCONCLUSIVE
    with pytest.raises(ValueError, match="direction"):
        claim_verdict(0.2, 0.01, 0, n_docs=8)


def test_adjust_claims_holm_within_the_table_and_groups():
    df = pd.DataFrame(
        dict(
            claim=["1a", "1b", "2", "3", "1a"],
            mode=["sliding"] * 4 + ["split"],
            estimate=[0.3, -0.2, 0.1, 0.4, 0.3],
            p_value=[1 / 128, 1 / 128, 0.5, 1 / 64, 1 / 128],
            direction=[1, 1, 1, 1, 1],
            n_docs=[8, 8, 8, 8, 4],
        )
    )
    out = adjust_claims(df, ALPHA)
    np.testing.assert_allclose(out.p_adjusted, holm(df.p_value), atol=TOL_EXACT)
    # 1/128 x5 = 0.039 carried by the running maximum to the four small p; the split row has 4 documents
    assert out.verdict.tolist() == [SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE, SUPPORTED, INCONCLUSIVE]
    by = adjust_claims(df, ALPHA, by="mode")
    np.testing.assert_allclose(by.p_adjusted.iloc[:4], holm(df.p_value.iloc[:4]), atol=TOL_EXACT)
    assert by.p_adjusted.iloc[4] == 1 / 128 and "p_adjusted" not in df


# ---------------------------------------------------------------- simulation
def simulate(scenario: str, n_docs: int, shift: float, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-document values ``(N_STUDIES, N_CLAIMS, n_docs)`` of symmetric
    heavy-tailed noise (Student t, 3 dof, unit SD); claim 0 shifted by ``shift`` SD."""
    rng = np.random.default_rng(seed)
    t3 = lambda *s: rng.standard_t(3, size=s) / np.sqrt(3)  # noqa: E731
    x, w = t3(N_STUDIES, N_CLAIMS, n_docs), None
    if scenario == "unequal":  # documents of different length (weight) and FI scale
        x = x * np.exp(rng.normal(size=(N_STUDIES, 1, n_docs)))
        w = np.broadcast_to(np.exp(rng.normal(size=(N_STUDIES, 1, n_docs))), x.shape)
    elif scenario == "correlated":  # the claims of a study share a document effect
        x = 0.8 * t3(N_STUDIES, 1, n_docs) + 0.6 * x
    x[:, 0] += shift
    return x, w


def decide(x: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    """Verdicts ``(N_STUDIES, N_CLAIMS)`` (claimed direction +1): sign-flip, Holm per study, rule."""
    s, c, n = x.shape
    r = sign_flip_test(x.reshape(-1, n), None if w is None else w.reshape(-1, n))
    p_adj = holm(r.p_value.reshape(s, c))
    return np.array(
        [claim_verdict(e, p, 1, n_docs=n, alpha=ALPHA) for e, p in zip(r.statistic, p_adj.ravel())]
    ).reshape(s, c)


@pytest.mark.parametrize("scenario", ["t3", "unequal", "correlated"])
def test_family_wise_error_under_the_null(scenario):
    v = decide(*simulate(scenario, 8, 0.0, seed=1))
    fwer = (v != INCONCLUSIVE).any(1).mean()
    assert fwer <= FWER_MAX, fwer  # measured 3.5%, 3.5%, 3.3%
    assert fwer > 0  # 8 documents can reject after Holm over 4 claims


@pytest.mark.parametrize("n_docs, shift", [(8, 1.5), (11, 1.0)], ids=["8docs-1.5sd", "11docs-1.0sd"])
def test_planted_effect_is_found(n_docs, shift):
    v = decide(*simulate("t3", n_docs, shift, seed=2))
    power = (v[:, 0] == SUPPORTED).mean()
    assert power > POWER_MIN, power  # measured 72% and 77%
    assert (v[:, 0] == NOT_SUPPORTED).mean() < 0.01 and (v[:, 1:] != INCONCLUSIVE).any(1).mean() <= FWER_MAX


def test_power_with_8_documents_is_all_documents_agreeing():
    """At n=8, Holm over 4 claims, a claim is decided (almost) only when all 8 values share its sign."""
    v = decide(*simulate("t3", 8, 1.0, seed=3))
    analytic = stats.t(3).cdf(np.sqrt(3)) ** 8  # P(one t3 value + 1 SD > 0) ** 8 = 0.467
    assert abs((v[:, 0] == SUPPORTED).mean() - analytic) < TOL_POWER


# -------------------------------------------------------------------- BCa
def test_cluster_bootstrap_is_scipys_bca_over_documents():
    """Resampling document indices gives scipy's BCa on the values (same draws, jackknife included)."""
    # 15 documents: no resample is a permutation of the sample (with 9, about one in 1,000 is, and
    # whether its float-rounded value falls below the estimate moves BCa's bias correction)
    rng = np.random.default_rng(3)
    x, w = rng.exponential(size=15), rng.exponential(size=15)
    got = cluster_bootstrap(15, ratio_statistic(x * w, w), CFG, np.random.default_rng(5))

    def wmean(x, w, axis=-1):
        return (x * w).sum(axis) / w.sum(axis)

    ref = stats.bootstrap(
        (x, w), wmean, paired=True, vectorized=True, n_resamples=CFG.n_boot, method="BCa", rng=np.random.default_rng(5)
    )
    np.testing.assert_allclose(got, [wmean(x, w), *ref.confidence_interval], rtol=1e-10)
    pct = stats.bootstrap(
        (x, w),
        wmean,
        paired=True,
        vectorized=True,
        n_resamples=CFG.n_boot,
        method="percentile",
        rng=np.random.default_rng(5),
    )
    assert abs(got[1] - pct.confidence_interval.low) > 1e-3  # BCa, not percentile


# ------------------------------------------------------------- word classes
def test_word_level_keeps_each_words_first_subword_once():
    tok = pd.DataFrame(
        dict(
            doc_id=["a"] * 5 + ["b"] * 2,
            pos=[2, 0, 1, 3, 4, 0, 1],
            word_idx=pd.array([0, 0, 0, 1, None, 0, 0], dtype="Int64"),
            v=[9.0, 1.0, 8.0, 2.0, 7.0, 3.0, 6.0],
        )
    )
    dup = pd.concat([tok, tok.assign(split="s2")], ignore_index=True)  # a token in two splits
    assert sorted(word_level(dup).v) == [1.0, 2.0, 3.0]
    starts = tok.drop(columns="word_idx").assign(is_word_start=[False, True, False, True, False, True, False])
    assert sorted(word_level(starts).v) == [1.0, 2.0, 3.0]


def test_per_document_rank_biserial_and_sign_flip():
    rng = np.random.default_rng(4)
    frames = []
    for d in range(8):
        cls = np.where(rng.random(200) < 0.5, "content", "function")
        frames.append(pd.DataFrame(dict(doc=f"d{d}", cls=cls, v=rng.normal(size=200) + 0.5 * (cls == "content"))))
    df = pd.concat(frames, ignore_index=True)
    t = per_document_rank_biserial(df.v, df.cls, df.doc)
    ref = [
        rank_biserial(g.v[g.cls == "content"].to_numpy(), g.v[g.cls == "function"].to_numpy())
        for _, g in df.groupby("doc")
    ]
    np.testing.assert_allclose(t.rank_biserial, ref, atol=TOL_EXACT)
    assert (t.weight == t.n_positive * t.n_negative).all()
    assert sign_flip_test(t.rank_biserial.to_numpy(), t.weight.to_numpy()).p_value == 1 / 128  # all 8 positive


@pytest.mark.parametrize("n_docs", [[5, 5, 5], [6, 6, 6, 6], [8, 9, 12, 12], [3, 10]])
def test_smallest_p_adjusted_is_reached_by_a_family_of_one_signed_documents(n_docs):
    """The floor against brute force: every claim's documents all positive (each raw p at its minimum
    2/2^n) is the best case, and Holm then gives exactly the bound."""
    from forward_influence.analysis.inference import holm, sign_flip_test, smallest_p_adjusted

    raw = np.array([sign_flip_test(np.linspace(0.1, 1.0, n)).p_value for n in n_docs])
    np.testing.assert_allclose(raw, [2 / 2**n for n in n_docs], rtol=0, atol=1e-15)
    np.testing.assert_allclose(holm(raw), smallest_p_adjusted(np.array(n_docs)), rtol=1e-12)
