"""Analyzers: planted effects are recovered, selection rules on hand-made tables,
claim verdicts on constructed cases, and the report end to end (tiers 1-3)."""

from __future__ import annotations

import subprocess

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from forward_influence.analysis.analyze import (
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    AnalyzeConfig,
    analyze,
    claims,
    correlations,
    group_mean_ci,
    kendall,
    rank_biserial,
    selection,
    selection_draws,
    spearman,
    verdict,
    word_class_tests,
)

CFG = AnalyzeConfig(n_boot=400, seed=0)
TOL_EXACT = 1e-10  # closed forms vs scipy
TOL_PARTIAL = 0.08  # partial rank correlation of independent-given-position data


def planted_sources(r: float = 0.6, n_docs: int = 10, n: int = 120, seed: int = 0) -> pd.DataFrame:
    """Bivariate normal (signal, FI) with correlation r per document, each
    document on its own FI scale (which pooling must not mix)."""
    rng = np.random.default_rng(seed)
    frames = []
    for d in range(n_docs):
        x = rng.normal(size=n)
        y = r * x + np.sqrt(1 - r * r) * rng.normal(size=n)
        frames.append(
            pd.DataFrame(
                {
                    "doc_id": f"d{d}",
                    "unit": f"d{d}@-",
                    "pos": np.arange(n),
                    "is_sink": np.arange(n) < 1,
                    "is_candidate": np.arange(n) >= 1,
                    "signal": x,
                    "fi_total": np.exp(y) * 10.0 ** (-d),  # monotone in y, scale differs by doc
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


# ------------------------------------------------------------ selection rules
def hand_table() -> pd.DataFrame:
    """Two units of 5 sources with known FI and scores."""
    return pd.DataFrame(
        {
            "doc_id": ["a"] * 5 + ["b"] * 5,
            "unit": ["a@-"] * 5 + ["b@-"] * 5,
            "pos": list(range(5)) * 2,
            "is_sink": [False] * 10,
            "is_candidate": [True] * 10,
            "fi_total": [5.0, 1.0, 3.0, 0.5, 0.5, 1.0, 2.0, 3.0, 4.0, 10.0],
            "fi_near": [0.0, 1.0, 1.0, 0.5, 0.5, 1.0, 2.0, 0.0, 0.0, 0.0],
            "fi_far": [5.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 3.0, 4.0, 10.0],
            "score": [0.1, 0.9, 0.8, np.nan, 0.2, 1.0, 0.9, 0.1, 0.2, 0.3],
            "word_class": ["function", "content", "content", "other", "function"] * 2,
        }
    )


def constructed(ent_far: float, att_far: float, spread: float, n_docs: int = 8):
    """Selection/token/bias tables whose claim-1a statistic is ent_far - att_far ± spread per document."""
    rng = np.random.default_rng(0)
    rows, toks = [], []
    for d in range(n_docs):
        e = spread * rng.normal()
        for rule, far, near in (("entropy_in_topk", ent_far + e, 0.1), ("attn_snapkv", att_far, 0.4)):
            rows.append(
                dict(
                    subset="candidates",
                    unit=f"d{d}@-",
                    doc_id=f"d{d}",
                    block=0,
                    rule=rule,
                    budget=0.2,
                    kept_share_far=far,
                    near_frac=near,
                )
            )
        for w in range(40):  # content words at higher entropy in every document
            cls = "content" if w % 2 else "function"
            toks.append(
                dict(
                    doc_id=f"d{d}",
                    pos=w,
                    word_idx=w,
                    is_word_start=True,
                    word_class=cls,
                    entropy_in_topk=rng.normal() + (1.5 if cls == "content" else 0.0),
                )
            )
    sel = pd.DataFrame(rows)
    bias = pd.DataFrame(
        [
            dict(
                unit=f"d{d}@-",
                doc_id=f"d{d}",
                block=0,
                rule="attn_snapkv",
                budget=0.2,
                excess=-0.05 + 0.0125 * d + 0.001,
            )
            for d in range(n_docs)
        ]
    )
    return sel, pd.DataFrame(toks), bias


def test_spearman_and_kendall_match_scipy():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(2, 57))
    y[::5] = y[1::5][: len(y[::5])]  # ties
    assert abs(spearman(x, y) - stats.spearmanr(x, y).statistic) < TOL_EXACT
    assert abs(kendall(x, y) - stats.kendalltau(x, y).statistic) < TOL_EXACT
    rows = rng.normal(size=(4, 2, 30))
    np.testing.assert_allclose(
        kendall(rows[:, 0], rows[:, 1]), [stats.kendalltau(a, b).statistic for a, b in rows], atol=TOL_EXACT
    )


def test_planted_correlation_recovered_with_covering_interval():
    r = 0.6
    truth = {"spearman": 6 / np.pi * np.arcsin(r / 2), "kendall": 2 / np.pi * np.arcsin(r)}
    c = correlations(planted_sources(r), CFG, signals=("signal",), targets=("fi_total",))
    pooled = c[(c.scope == "pooled") & (c.subset == "all") & (c.control == "none")].set_index("method")
    for m, t in truth.items():
        est, lo, hi = pooled.loc[m, ["estimate", "ci_low", "ci_high"]]
        assert est > 0 and lo < t < hi, (m, est, lo, hi, t)
        assert hi - lo < 0.2  # documents resampled, 1,200 tokens: a tight interval
    per_doc = c[(c.scope == "document") & (c.method == "spearman")]
    assert len(per_doc) == 10 and (per_doc.estimate > 0).all()
    assert ((per_doc.ci_low < truth["spearman"]) & (truth["spearman"] < per_doc.ci_high)).mean() >= 0.8


def test_no_correlation_gives_an_interval_around_zero():
    c = correlations(planted_sources(0.0, seed=5), CFG, signals=("signal",), targets=("fi_total",))
    p = c[(c.scope == "pooled") & (c.subset == "all") & (c.control == "none")]
    assert ((p.ci_low < 0) & (p.ci_high > 0)).all()


def test_position_control_removes_a_confounded_correlation():
    rng = np.random.default_rng(1)
    frames = []
    for d in range(8):
        pos = np.arange(150)
        frames.append(
            pd.DataFrame(
                {
                    "doc_id": f"d{d}",
                    "unit": f"d{d}@-",
                    "pos": pos,
                    "is_sink": pos < 1,
                    "is_candidate": pos >= 1,
                    "signal": pos + rng.normal(scale=30, size=150),
                    "fi_total": pos + rng.normal(scale=30, size=150),
                }
            )
        )
    c = correlations(pd.concat(frames, ignore_index=True), CFG, signals=("signal",), targets=("fi_total",))
    p = c[(c.scope == "pooled") & (c.subset == "all") & (c.method == "spearman")].set_index("control")
    assert p.loc["none", "ci_low"] > 0.5  # strongly correlated through position
    # and hardly otherwise (linear residuals of ranks leave a small edge bias)
    assert abs(p.loc["position", "estimate"]) < TOL_PARTIAL and p.loc["position", "ci_low"] < TOL_PARTIAL / 2


def test_planted_group_difference_rank_biserial():
    delta = 0.5
    truth = 2 * stats.norm.cdf(delta / np.sqrt(2)) - 1  # P(A>B) - P(A<B) for N(delta,1) vs N(0,1)
    rng = np.random.default_rng(2)
    frames = []
    for d in range(12):
        n = 300
        cls = np.where(rng.random(n) < 0.6, "content", "function")
        v = rng.normal(size=n) + delta * (cls == "content")
        frames.append(pd.DataFrame({"doc_id": f"d{d}", "word_class": cls, "is_word_start": True, "entropy_in_topk": v}))
    t = word_class_tests(pd.concat(frames, ignore_index=True), CFG, columns=("entropy_in_topk",)).iloc[0]
    assert t.rank_biserial > 0 and t.ci_low < truth < t.ci_high, (t.rank_biserial, t.ci_low, t.ci_high, truth)
    assert t.p_value < 1e-10
    # the bootstrap's closed-form U equals scipy's on the full sample
    df = pd.concat(frames, ignore_index=True)
    a = df.entropy_in_topk[df.word_class == "content"].to_numpy()
    b = df.entropy_in_topk[df.word_class == "function"].to_numpy()
    assert abs(t.rank_biserial - rank_biserial(a, b)) < TOL_EXACT


def test_group_mean_ci_weights_documents_not_rows():
    # one document with many rows of 1.0, three with one row of 0.0 each
    v = np.array([1.0] * 50 + [0.0, 0.0, 0.0])
    g = np.array(["a"] * 50 + ["b", "c", "d"])
    est, lo, hi = group_mean_ci(v, g, CFG, np.random.default_rng(0))
    assert abs(est - 50 / 53) < TOL_EXACT
    assert lo == 0.0 and hi > 0.98  # resamples without "a" give 0; with it, near 1


def test_selection_draws_budget_ties_and_nan():
    t = hand_table()
    keep = selection_draws(t, "score", 0.4)[0]
    assert t.pos[keep].tolist() == [1, 2, 0, 1]  # top-2 per unit; NaN never before a number
    oracle = selection_draws(t, "fi_oracle", 0.4)[0]
    assert t.pos[oracle].tolist() == [0, 2, 3, 4]
    r = selection_draws(t, "random", 0.4, n_random=500, seed=1)
    assert (r.sum(1) == 4).all()  # 2 per unit every draw
    np.testing.assert_allclose(r.mean(0), 0.4, atol=0.08)
    with pytest.raises(Exception, match="budget"):
        selection_draws(t, "score", 0.0)


def test_selection_statistics_by_hand():
    t = hand_table()
    s = selection(t, AnalyzeConfig(budgets=(0.4,), n_boot=50), rules=("score", "fi_oracle"))
    s = s[s.subset == "all"].set_index(["rule", "unit"])
    a = s.loc[("score", "a@-")]  # keeps pos 1, 2
    assert a.k == 2 and a.n == 5
    assert abs(a.kept_share_total - 4.0 / 10.0) < TOL_EXACT
    assert abs(a.kept_share_far - 2.0 / 7.0) < TOL_EXACT
    assert abs(a.near_frac - 2.0 / 4.0) < TOL_EXACT
    assert a.share_content == 1.0 and a.share_function == 0.0
    assert abs(a.jaccard - 1 / 3) < TOL_EXACT  # {1,2} vs oracle {0,2}
    b = s.loc[("fi_oracle", "b@-")]
    assert b.jaccard == 1.0 and abs(b.kept_share_total - 14 / 20) < TOL_EXACT


# ------------------------------------------------------------------ verdicts
def test_verdict_rules():
    assert verdict(0.01, 0.2) == SUPPORTED
    assert verdict(-0.2, -0.01) == NOT_SUPPORTED
    assert verdict(-0.01, 0.2) == INCONCLUSIVE
    assert verdict(-0.2, -0.01, direction=-1) == SUPPORTED
    assert verdict(np.nan, 0.3) == INCONCLUSIVE


def family(table: pd.DataFrame) -> pd.DataFrame:
    """The family rows of a claims table (one per claim)."""
    return table[table["role"] == "claim"].set_index("claim")


@pytest.mark.parametrize(
    "ent, att, spread, expect",
    [(0.6, 0.3, 0.02, SUPPORTED), (0.2, 0.5, 0.02, NOT_SUPPORTED), (0.4, 0.4, 0.3, INCONCLUSIVE)],
)
def test_claims_verdicts_on_constructed_cases(ent, att, spread, expect):
    sel, tokens, bias = constructed(ent, att, spread)
    c = family(claims(sel, tokens, bias, CFG, "sliding"))
    assert c.loc["1a", "verdict"] == expect
    assert c.loc["1b", "verdict"] == SUPPORTED  # attention near fraction 0.4 > 0.1 in every document
    assert c.loc["2", "verdict"] == SUPPORTED
    assert c.loc["3", "verdict"] == INCONCLUSIVE  # excess spans -0.05 .. +0.04 across documents
    assert abs(c.loc["1a", "estimate"] - (sel[sel.rule == "entropy_in_topk"].kept_share_far.mean() - att)) < TOL_EXACT
    # 8 documents all of one sign: the smallest sign-flip p, 2 / 2^8, times 4 claims (Holm's first step)
    assert c.loc["1b", "p_value"] == pytest.approx(2 / 2**8) and c.loc["1b", "p_adjusted"] <= 4 * 2 / 2**8 + 1e-12
    assert (c.p_adjusted >= c.p_value).all()


def test_split_mode_tests_1a_and_1b():
    """Distances count from the eviction time, so every candidate of a split shares its near and far targets."""
    sel, tokens, bias = constructed(0.6, 0.3, 0.02)
    c = claims(sel, tokens, bias, CFG, "split")
    assert list(c[c.role == "claim"].claim) == ["1a", "1b", "2", "3"]
    assert "without first block" not in set(c.reading)  # a sliding-mode sensitivity row


def test_claim_1_absent_says_why():
    sel, tokens, bias = constructed(0.6, 0.3, 0.02)
    why = "claim 1 not tested: no target lies beyond far = 128"
    c = claims(sel, tokens, bias, CFG, "split", distance_claims=False, note="fisher estimate", absent=why)
    fam = family(c)
    assert list(fam.index) == ["1a", "1b", "2", "3"]
    assert (fam.loc[["1a", "1b"], "verdict"] == "not tested").all() and fam.loc["1a", "note"].endswith(why)
    assert fam.loc[["1a", "1b"], "p_value"].isna().all() and c.note.str.contains("fisher estimate").all()
    tested = fam.loc[["2", "3"]]  # the absent claims are not in Holm's family: two members
    assert tested.p_adjusted.min() == pytest.approx(min(1.0, 2 * tested.p_value.min()))


def test_intervals_agree_with_their_tests_in_the_claims_table():
    for args in ((0.6, 0.3, 0.02), (0.4, 0.4, 0.3), (0.2, 0.5, 0.02)):
        c = claims(*constructed(*args), CFG, "sliding")
        excludes = (c.ci_low > 0) | (c.ci_high < 0)
        assert (excludes == (c.p_value < 0.05)).all()


@pytest.mark.parametrize("n_docs", [1, 4])
def test_too_few_documents_are_never_conclusive(n_docs):
    sel, tokens, bias = constructed(0.9, 0.1, 0.0, n_docs=n_docs)
    c = family(claims(sel, tokens, bias, CFG, "split"))
    assert (c.verdict == INCONCLUSIVE).all() and c.note.str.contains("fewer than 5 documents").all()
    assert (c.ci_low == -np.inf).all() and (c.ci_high == np.inf).all()  # no set of <= 5 documents can reject


@pytest.mark.parametrize("n_docs, decidable", [(6, False), (7, False), (8, True)])
def test_a_family_too_small_for_any_verdict_says_so(n_docs, decidable):
    """Sliding mode has 4 claims: with 6 or 7 documents even a sign shared by every document gives
    p_Holm >= 4 x 2/2^7 > 0.05, so the table must say the claims cannot be decided (8 documents can)."""
    sel, tokens, bias = constructed(0.9, 0.1, 0.0, n_docs=n_docs)
    c = family(claims(sel, tokens, bias, CFG, "sliding"))
    floor = 4 * 2 / 2**n_docs
    assert c.loc["1b", "p_adjusted"] == pytest.approx(floor)  # every document on one side: the floor is reached
    noted = c.note.str.contains(f"cannot be decided: with {n_docs} documents and 4 claims")
    if decidable:
        assert not noted.any() and c.loc["1b", "verdict"] == SUPPORTED
    else:
        assert noted.all() and (c.verdict == INCONCLUSIVE).all()
        assert c.note.str.contains(f"smallest possible p \\(Holm\\) is {floor:.3g} >= 0.05; needs >= 8 documents").all()


def test_function_bias_without_candidates_is_empty_not_a_crash():
    """A segment of sinks and window only (e.g. a split inside a generation's prompt) has no candidates."""
    from forward_influence.analysis.selection import function_bias

    cand = pd.DataFrame(
        {
            "doc_id": pd.Series(["d"] * 3, dtype="string"),
            "unit": ["d@-"] * 3,
            "pos": [0, 1, 2],
            "is_candidate": [False] * 3,
            "word_class": ["content"] * 3,
            "attn_snapkv": [1.0, 2.0, 3.0],
        }
    )
    bias = function_bias(cand, CFG, ["attn_snapkv", "random"])
    assert len(bias) == 0 and {"doc_id", "rule", "budget", "excess"} <= set(bias.columns)
    sel, tokens, _ = constructed(0.6, 0.3, 0.02)
    assert "3" not in set(claims(sel, tokens, bias, CFG, "split").claim)


def test_analysis_of_a_run_without_candidates_is_one_clear_error():
    """Every source a sink or inside the split-mode window: nothing competes, so no claims (not a crash)."""
    from forward_influence.config import MeasureConfig
    from forward_influence.errors import InputError
    from forward_influence.store.results import MeasureResult
    from forward_influence.store.tables import summarize_influence

    n, f = 8, 2
    src = np.repeat(np.arange(n), f)
    tgt = np.tile(np.arange(n, n + f), n)
    influence = pd.DataFrame(
        {
            "doc_id": "d",
            "mode": "split",
            "split_pos": pd.array([n] * len(src), dtype="Int64"),
            "source_pos": src,
            "layer": pd.array([pd.NA] * len(src), dtype="Int64"),
            "kv_head": pd.array([pd.NA] * len(src), dtype="Int64"),
            "target_pos": tgt,
            "distance": tgt - src,
            "distance_tau": tgt - n,
            "kl": 0.1,
        }
    )
    tokens = pd.DataFrame(
        {"doc_id": "d", "pos": np.arange(n + f), "token_id": 1, "token": "a", "char_start": 0, "char_end": 1}
    )
    signals = pd.DataFrame(
        {
            "doc_id": "d",
            "split_pos": pd.array([n] * n, dtype="Int64"),
            "pos": np.arange(n),
            "tau": n,
            "attn_snapkv": 0.5,
            "attn_h2o": 0.5,
        }
    )
    res = MeasureResult(
        tokens=tokens,
        influence=influence,
        summary=summarize_influence(influence),
        source_signals=signals,
        meta={"config": MeasureConfig(n_prefix=(n,), n_future=f).to_dict()},
    )  # window 32 > N
    with pytest.raises(InputError, match="compete for a budget"):
        analyze(res, CFG)


def test_figures_module_leaves_pyplot_alone():
    """Issue 16, item 5: importing the figures (and drawing one) registers no
    pyplot figure; importing them loads no pyplot at all."""
    import os
    import sys

    code = (
        "import sys\nimport forward_influence.analysis.figures as F\n"
        "print('matplotlib.pyplot' in sys.modules)\n"
        "import numpy as np, pandas as pd\n"
        "df = pd.DataFrame({'entropy_in_topk': np.linspace(0, 2, 50), 'fi_far': np.logspace(-6, -1, 50)})\n"
        "fig = F.entropy_vs_influence(df)\n"
        "import matplotlib.pyplot as plt\nprint(len(fig.axes), plt.get_fignums())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "MPLBACKEND": "Agg"},
    )
    assert out.stdout.split("\n")[:2] == ["False", "3 []"]


# ------------------------------------------------ competition where a compressor compares
def sliding_result(n_sources: int = 93, stride: int = 8, delay: int = 4, horizon: int = 4):
    """A synthetic sliding-mode run: sources 0, 8, ..., every token's signals, KL 1 per target."""
    from forward_influence.config import MeasureConfig
    from forward_influence.store.results import MeasureResult
    from forward_influence.store.tables import summarize_influence

    src = np.arange(n_sources) * stride
    t = int(src[-1]) + delay + horizon + 1
    tgt = (src[:, None] + delay + np.arange(horizon)[None, :]).ravel()
    s = np.repeat(src, horizon)
    na = pd.array([pd.NA] * len(s), dtype="Int64")
    influence = pd.DataFrame(
        {
            "doc_id": "d",
            "mode": "sliding",
            "split_pos": na,
            "source_pos": s,
            "layer": na,
            "kv_head": na,
            "target_pos": tgt,
            "distance": tgt - s,
            "distance_tau": tgt - s - delay,
            "kl": 1.0,
        }
    )
    tokens = pd.DataFrame(
        {
            "doc_id": "d",
            "pos": np.arange(t),
            "token_id": 1,
            "token": "a",
            "char_start": 0,
            "char_end": 1,
            "entropy_in_topk": np.arange(t, dtype=float),
        }
    )
    pos = np.arange(t - delay + 1)
    signals = pd.DataFrame(
        {
            "doc_id": "d",
            "split_pos": pd.array([pd.NA] * len(pos), dtype="Int64"),
            "pos": pos,
            "tau": pos + delay,
            "attn_snapkv": -pos.astype(float),
            "attn_h2o": 0.5,
        }
    )
    cfg = MeasureConfig(mode="sliding", delay=delay, horizon=horizon, stride=stride, n_prefix=(8,), n_future=1)
    return MeasureResult(
        tokens=tokens,
        influence=influence,
        summary=summarize_influence(influence),
        source_signals=signals,
        meta={"config": cfg.to_dict()},
    )


def test_sliding_blocks_hold_16_candidates_and_the_short_last_block_joins_its_neighbour():
    from forward_influence.analysis.selection import candidate_tokens, with_source_signals

    res = sliding_result()  # 93 sources at stride 8: position 0 is a sink, 92 candidates = 5 x 16 + 12
    src = with_source_signals(res.summary.assign(pos=res.summary.source_pos), res, CFG)
    sizes = src[src.is_candidate].groupby("block").size()
    assert sizes.tolist() == [16, 16, 16, 16, 28]
    assert src.groupby("unit").block.nunique().max() == 1 and src.unit.nunique() == 5
    cand = candidate_tokens(res, CFG)  # every evicted token up to the last measured source, in the same blocks
    assert cand.pos.max() == 92 * 8 and cand.groupby("block").pos.min().tolist() == [0, 136, 264, 392, 520]


def test_rules_compete_within_a_block_and_recency_keeps_the_latest():
    from forward_influence.analysis.selection import with_source_signals

    res = sliding_result()
    src = with_source_signals(res.summary.assign(pos=res.summary.source_pos), res, CFG)
    cand = src[src.is_candidate].reset_index(drop=True)
    # entropy grows with position: a document-wide top 20% would come from the last block only
    for rule in ("entropy_in_topk", "recency", "attn_snapkv"):
        kept = cand[selection_draws(cand, rule, 0.2)[0]]
        assert kept.groupby("block").size().tolist() == [3, 3, 3, 3, 6], rule  # round(0.2 * 16), round(0.2 * 28)
    latest = cand[selection_draws(cand, "recency", 0.2)[0]].groupby("block").pos.min()
    assert (latest.to_numpy() == cand.groupby("block").pos.max().to_numpy() - 8 * np.array([2, 2, 2, 2, 5])).all()
    sel = selection(src, CFG, ["recency", "random"])
    c = sel[(sel.subset == "candidates") & (sel.budget == 0.2)]
    assert set(c.budget_effective.round(4)) == {round(3 / 16, 4), round(6 / 28, 4)}


def test_claim_1_needs_a_target_beyond_far():
    from forward_influence.analysis.analyze import ablation_rows
    from forward_influence.analysis.claims import claim1_absent

    res = sliding_result(horizon=4)  # d_tau 0..3
    assert claim1_absent(res, ablation_rows(res.influence), far=2) == ""
    why = claim1_absent(res, ablation_rows(res.influence), far=128)
    assert why.startswith("claim 1 not tested: no target lies beyond far = 128") and "--horizon" in why
    a = analyze(res, AnalyzeConfig(n_boot=50))
    fam = a.claims[a.claims.role == "claim"].set_index("claim")
    assert (fam.loc[["1a", "1b"], "verdict"] == "not tested").all() and fam.loc["1a", "note"] == why
