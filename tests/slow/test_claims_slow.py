"""The claims' error rates through the shipped path (slow tier: thousands of simulated studies):

* coverage of the interval from ``claims()`` at 8 documents: symmetric documents (exact by
  construction, a check of the code) and skewed, heterogeneous ones (reported in docs/statistics.md);
* an end-to-end null: signals drawn independent of FI and of word class, headline-sized units
  (sliding blocks of 16 candidates), through selection -> function bias -> ``claims()``: the
  family-wise rate of false *supported* / *not supported*, and a planted 1.5-SD shift found.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from forward_influence.analysis.analyze import AnalyzeConfig
from forward_influence.analysis.claims import claims
from forward_influence.analysis.selection import function_bias, selection
from forward_influence.analysis.stats import INCONCLUSIVE, SUPPORTED

CFG = AnalyzeConfig(seed=0, budgets=(0.2,), n_random=4)
N_COVERAGE = 2000  # simulated 8-document studies per scenario
#: exact by construction: with 8 continuous, symmetric documents the test rejects 6 of the 128 mirror pairs
SYMMETRIC_COVERAGE = 1 - 6 / 128
TOL_COVERAGE = 0.02  # ~4 SE of 2,000 studies
SKEWED_COVERAGE_MIN = 0.88
N_NULL = 1000  # end-to-end studies per scenario
FWER_MAX = 0.06
POWER_MIN = 0.5
SHIFT_SD = 1.5


def sel_tables(per_doc: np.ndarray, units: int = 3, rng: np.random.Generator | None = None) -> pd.DataFrame:
    """Selection rows whose claim-1a document value is ``per_doc[d]`` (the mean of its units' differences)."""
    rows = []
    for d, v in enumerate(per_doc):
        jitter = rng.normal(size=units) * 0.01 if rng is not None else np.zeros(units)
        jitter -= jitter.mean()
        for u in range(units):
            for rule, far in (("entropy_in_topk", 0.5 + v + jitter[u]), ("attn_snapkv", 0.5)):
                rows.append(
                    dict(
                        subset="candidates",
                        unit=f"d{d}@b{u}",
                        doc_id=f"d{d}",
                        block=u,
                        rule=rule,
                        budget=0.2,
                        kept_share_far=far,
                        near_frac=0.3,
                    )
                )
    return pd.DataFrame(rows)


def coverage(draw, delta: float, seed: int) -> float:
    """Share of 8-document studies whose claim-1a interval, from claims(), covers ``delta``."""
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(N_COVERAGE):
        sel = sel_tables(draw(rng), rng=rng)
        c = claims(sel, pd.DataFrame(), pd.DataFrame(), CFG, "sliding")
        r = c[(c.claim == "1a") & (c.reading == "primary")].iloc[0]
        hits += r.ci_low <= delta <= r.ci_high
    return hits / N_COVERAGE


def test_coverage_of_symmetric_documents_is_exact_through_claims():
    """A check of the code: symmetric document values about delta give the exact level."""
    delta = 0.07
    cov = coverage(lambda rng: delta + rng.standard_t(3, size=8) * 0.1, delta, seed=3)
    print(f"coverage, symmetric t3 documents: {cov:.3f} (exact {SYMMETRIC_COVERAGE:.3f})")
    assert abs(cov - SYMMETRIC_COVERAGE) < TOL_COVERAGE, cov  # measured 0.960 (exact 0.953)


def test_coverage_of_skewed_heterogeneous_documents_through_claims():
    """Per-document centres drawn skewed around delta (lognormal, mean delta), each document
    with its own noise scale: the sign-flip test assumes symmetry, so coverage may fall below
    0.95; docs/statistics.md reports the figure, this bounds it."""
    delta = 0.05

    def draw(rng: np.random.Generator) -> np.ndarray:
        centre = delta + 0.08 * (rng.lognormal(0.0, 0.75, size=8) - np.exp(0.75**2 / 2))
        return centre + rng.normal(size=8) * rng.uniform(0.01, 0.08, size=8)

    cov = coverage(draw, delta, seed=4)
    print(f"coverage, skewed heterogeneous documents: {cov:.3f}")
    assert cov >= SKEWED_COVERAGE_MIN, cov  # measured 0.931


# ------------------------------------------------------------ end-to-end null
DOCS, BLOCKS, BLOCK = 8, 6, 16  # the sliding headline: ~92 candidates per document, blocks of 16
WORDS = 300  # claim 2's words per document (first subwords)


def study(rng: np.random.Generator, content_shift: float = 0.0) -> pd.DataFrame:
    """One 8-document study with signals independent of FI and word class (claim 2's
    content words shifted by ``content_shift`` in entropy), decided by the shipped path."""
    n = BLOCKS * BLOCK
    src, tok = [], []
    for d in range(DOCS):
        block = np.repeat(np.arange(BLOCKS), BLOCK)
        scale = np.exp(rng.normal(size=n))  # heavy-tailed FI on a per-document scale
        near, far = scale * rng.exponential(size=n), scale * rng.exponential(size=n)
        src.append(
            pd.DataFrame(
                dict(
                    doc_id=f"d{d}",
                    pos=np.arange(n) * 8 + 8,
                    block=block,
                    unit=[f"d{d}@b{b}" for b in block],
                    is_sink=False,
                    is_candidate=True,
                    fi_near=near,
                    fi_far=far,
                    fi_total=near + far + scale * rng.exponential(size=n),
                    entropy_in_topk=rng.normal(size=n),
                    attn_snapkv=rng.lognormal(size=n),
                    word_class=np.where(rng.random(n) < 0.45, "function", "content"),
                )
            )
        )
        cls = np.where(rng.random(WORDS) < 0.45, "function", "content")
        tok.append(
            pd.DataFrame(
                dict(
                    doc_id=f"d{d}",
                    pos=np.arange(WORDS),
                    word_idx=np.arange(WORDS),
                    word_class=cls,
                    entropy_in_topk=rng.normal(size=WORDS) + np.where(cls == "content", content_shift, 0.0),
                )
            )
        )
    src = pd.concat(src, ignore_index=True)
    sel = selection(src, CFG, ["entropy_in_topk", "attn_snapkv"])
    bias = function_bias(src, CFG, ["attn_snapkv"])
    c = claims(sel, pd.concat(tok, ignore_index=True), bias, CFG, "sliding")
    return c[c["role"] == "claim"].set_index("claim")


def claim2_shift(sd: float) -> float:
    """The normal shift of content-word entropy that moves a document's rank-biserial by ``sd`` null SDs."""
    n_c, n_f = 0.55 * WORDS, 0.45 * WORDS
    null_sd = np.sqrt((n_c + n_f + 1) / (3 * n_c * n_f))
    return float(np.sqrt(2) * stats.norm.ppf((1 + sd * null_sd) / 2))


def test_end_to_end_null_keeps_the_family_wise_error():
    rng = np.random.default_rng(11)
    wrong = [(study(rng)["verdict"] != INCONCLUSIVE).any() for _ in range(N_NULL)]
    fwer = float(np.mean(wrong))
    print(f"end-to-end null: family-wise false verdicts {fwer:.3f} of {N_NULL} studies")
    assert fwer <= FWER_MAX, fwer  # measured 0.037


def test_end_to_end_planted_shift_is_supported():
    rng = np.random.default_rng(12)
    shift = claim2_shift(SHIFT_SD)
    found = []
    for _ in range(N_NULL):
        c = study(rng, shift)
        found.append(c.loc["2", "verdict"] == SUPPORTED)
    power = float(np.mean(found))
    print(f"end-to-end planted {SHIFT_SD} SD shift in claim 2: supported in {power:.3f} of {N_NULL} studies")
    assert power >= POWER_MIN, power  # measured 0.588 (Φ(1.5)^8 = 0.575: all 8 documents positive)
