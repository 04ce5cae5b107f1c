"""Selection rules: which measured tokens a rule keeps at a budget, and what they carry.

A rule keeps, within each *unit* (the sources that compete for one budget: a
document, or a document's split), the top ``max(1, round(budget * n))``
tokens by a signal, a seeded random draw, or the measured FI (the oracle).
Functions take ``cfg`` with ``budgets``, ``n_random``, ``seed``, ``n_boot``
and ``confidence`` (an :class:`~forward_influence.analysis.analyze.AnalyzeConfig`).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from forward_influence.analysis.stats import group_mean_ci
from forward_influence.errors import InputError
from forward_influence.store.results import MeasureResult
from forward_influence.store.tables import bucket_distance

#: The Forward Influence columns a selection is scored on.
FI_TARGETS = ("fi_total", "fi_near", "fi_far")
#: Selection rules: top tokens by a signal, a random draw, and the FI oracle.
RULES = ("entropy_in_topk", "entropy_in", "attn_snapkv", "attn_h2o", "random", "fi_oracle")
WORD_CLASSES = ("content", "function", "other")


def ablation_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of whole-model ablations, or, in a run made with ``--layer`` (and
    ``--kv-head``), of its one layer/head ablation."""
    whole = df[df["layer"].isna() & df["kv_head"].isna()]
    if len(whole):
        return whole
    kinds = df[["layer", "kv_head"]].drop_duplicates()
    if len(kinds) != 1:
        raise InputError("the run mixes several layer/head ablations; analyze one with a single --layer/--kv-head")
    return df


def subsets(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """``all`` sources, and the ``candidates`` that compete for a budget
    (subsets without rows are left out: nothing to rank there)."""
    out = {"all": df, "candidates": df[df["is_candidate"]]}
    return {k: v for k, v in out.items() if len(v)}


def with_source_signals(df: pd.DataFrame, result: MeasureResult, cfg: Any) -> pd.DataFrame:
    """Join rows keyed ``doc_id, split_pos, pos`` with the token's signals
    (``tokens``) and its attention signals at its eviction time
    (``source_signals``, per split); add ``unit``, ``is_sink``, ``in_window``
    (split mode: the last ``window`` positions before N, kept whole by every
    attention method) and ``is_candidate`` (neither)."""
    run = result.config
    df = result.with_signals(df)
    split = df["split_pos"].astype("string").fillna("-")
    df["unit"] = (df["doc_id"].astype(str) + "@" + split.astype(str)).astype("string")
    df["is_sink"] = df["pos"] < cfg.sinks
    if run.mode == "split":
        df["in_window"] = (df["pos"] >= df["split_pos"].astype("float64") - run.window).to_numpy(bool)
    else:
        df["in_window"] = False
    df["is_candidate"] = ~df["is_sink"] & ~df["in_window"]
    return df


def selection_draws(df: pd.DataFrame, rule: str, budget: float, n_random: int = 32, seed: int = 0) -> np.ndarray:
    """Boolean ``(draws, rows)``: which rows a rule keeps at ``budget`` within each unit.

    A unit of ``n`` candidates keeps ``max(1, round(budget * n))``: the highest
    scores (NaN scores last; ties to the earlier position), ``fi_total`` for the
    oracle, or ``n_random`` seeded uniform draws for ``random``.

    >>> t = pd.DataFrame({"unit": ["a"] * 5, "pos": range(5), "s": [0.1, 0.9, 0.5, np.nan, 0.7]})
    >>> selection_draws(t, "s", 0.4).astype(int).tolist()
    [[0, 1, 0, 0, 1]]
    """
    if not 0 < budget <= 1:
        raise InputError(f"budget must be in (0, 1]; got {budget}")
    units = df["unit"].to_numpy()
    pos = df["pos"].to_numpy()
    n_draws = n_random if rule == "random" else 1
    keep = np.zeros((n_draws, len(df)), dtype=bool)
    rng = np.random.default_rng(seed)
    col = "fi_total" if rule == "fi_oracle" else rule
    if rule != "random" and col not in df.columns:
        raise InputError(f"unknown selection rule {rule!r}; valid: {', '.join(RULES)} or a signal column")
    for u in pd.unique(units):
        ix = np.flatnonzero(units == u)
        k = max(1, int(round(budget * len(ix))))
        if rule == "random":
            for r in range(n_draws):
                keep[r, rng.choice(ix, size=k, replace=False)] = True
            continue
        s = df[col].to_numpy(float)[ix]
        s = np.where(np.isfinite(s), s, -np.inf)
        order = np.lexsort((pos[ix], -s))  # score descending, then earlier position
        keep[0, ix[order[:k]]] = True
    return keep


def selection(src: pd.DataFrame, cfg: Any, rules: Sequence[str] = RULES) -> pd.DataFrame:
    """Per unit, rule and budget: what the kept tokens carry.

    Columns: subset, unit, doc_id, rule, budget, n, k, mean_fi_{total,near,far}
    of the kept tokens, kept_share_{total,near,far} (share of the unit's FI the
    kept tokens hold), near_frac (their FI at d <= near over their total),
    share_{content,function,other} (word-class mix), jaccard with the FI top set.
    Random: averages over the draws.
    """
    rows = []
    for subset, df in subsets(src).items():
        df = df.reset_index(drop=True)
        units = df["unit"].to_numpy()
        uniq = list(pd.unique(units))
        fi = {t: df[t].to_numpy(float) for t in FI_TARGETS}
        wc = df["word_class"].astype("string").fillna("other").to_numpy() if "word_class" in df else np.full(len(df), "other")
        for budget in cfg.budgets:
            oracle = selection_draws(df, "fi_oracle", budget)[0]
            for rule in rules:
                draws = selection_draws(df, rule, budget, cfg.n_random, cfg.seed)
                for u in uniq:
                    ix = units == u
                    acc: dict[str, list[float]] = {}
                    for d in draws:
                        sel = d & ix
                        k = sel.sum()
                        vals = {f"mean_{t}": fi[t][sel].mean() for t in FI_TARGETS}
                        for t in FI_TARGETS:
                            tot = fi[t][ix].sum()
                            vals[f"kept_share_{t[3:]}"] = fi[t][sel].sum() / tot if tot > 0 else np.nan
                        ft = fi["fi_total"][sel].sum()
                        vals["near_frac"] = fi["fi_near"][sel].sum() / ft if ft > 0 else np.nan
                        for c in WORD_CLASSES:
                            vals[f"share_{c}"] = float((wc[sel] == c).mean()) if k else np.nan
                        inter = (sel & oracle).sum()
                        vals["jaccard"] = inter / (k + (oracle & ix).sum() - inter)
                        for key, v in vals.items():
                            acc.setdefault(key, []).append(float(v))
                    first = np.flatnonzero(ix)[0]
                    rows.append(dict(subset=subset, unit=u, doc_id=df["doc_id"].iloc[first], rule=rule, budget=budget,
                                     n=int(ix.sum()), k=int((draws[0] & ix).sum()),
                                     **{key: float(np.nanmean(v)) if np.isfinite(v).any() else np.nan for key, v in acc.items()}))
    out = pd.DataFrame(rows)
    out["doc_id"] = out["doc_id"].astype("string")
    return out


def selection_summary(sel: pd.DataFrame, cfg: Any, columns: Sequence[str] = ("kept_share_total", "kept_share_near", "kept_share_far", "near_frac", "share_function", "share_content", "jaccard")) -> pd.DataFrame:
    """Mean over units of each selection column per (subset, rule, budget), with
    intervals from resampling documents."""
    rng = np.random.default_rng(cfg.seed)
    rows = []
    for (subset, rule, budget), g in sel.groupby(["subset", "rule", "budget"], sort=False):
        for c in columns:
            est, lo, hi = group_mean_ci(g[c].to_numpy(float), g["doc_id"].to_numpy(), cfg, rng)
            rows.append(dict(subset=subset, rule=rule, budget=budget, quantity=c, estimate=est, ci_low=lo, ci_high=hi,
                             n_units=len(g), n_docs=g["doc_id"].nunique()))
    return pd.DataFrame(rows)


def distance_curves(result: MeasureResult, src: pd.DataFrame, cfg: Any, rules: Sequence[str] = RULES) -> pd.DataFrame:
    """Mean KL of the kept tokens as a function of distance, per document.

    Distances (:func:`~forward_influence.store.tables.bucket_distance`: from the
    eviction time in sliding mode, where 0 joins the first bin) are binned in
    powers of two (0-1, 2-3, 4-7, ...). Columns: subset, rule, budget, doc_id,
    d_lo, d_hi, d_mid (geometric), mean_kl, n, distance_from (tau / source).
    Plot with bands over documents (:func:`forward_influence.analysis.figures.fi_vs_distance`).
    """
    inf = ablation_rows(result.influence)
    key = ["doc_id", "split_pos", "source_pos"]
    d = bucket_distance(inf)
    b = np.floor(np.log2(np.maximum(d, 1))).astype(np.int64)
    base = inf[key].assign(bin=b, kl=inf["kl"].to_numpy(float))
    frames = []
    for subset, df in subsets(src).items():
        df = df.reset_index(drop=True)
        for budget in cfg.budgets:
            for rule in rules:
                w = selection_draws(df, rule, budget, cfg.n_random, cfg.seed).mean(0)
                wt = df[key].assign(w=w)
                wt = wt[wt["w"] > 0]
                m = base.merge(wt, on=key, how="inner")
                m["wkl"] = m["kl"] * m["w"]
                g = m.groupby(["doc_id", "bin"], sort=True).agg(wkl=("wkl", "sum"), w=("w", "sum"), n=("kl", "size")).reset_index()
                g["mean_kl"] = g["wkl"] / g["w"]
                g = g.assign(subset=subset, rule=rule, budget=budget)
                frames.append(g.drop(columns=["wkl", "w"]))
    out = pd.concat(frames, ignore_index=True)
    out["d_lo"] = 2 ** out["bin"]
    out["d_hi"] = 2 ** (out["bin"] + 1) - 1
    out["d_mid"] = np.sqrt(out["d_lo"] * out["d_hi"])
    out["doc_id"] = out["doc_id"].astype("string")
    out["distance_from"] = "tau" if result.config.mode == "sliding" else "source"
    return out[["subset", "rule", "budget", "doc_id", "d_lo", "d_hi", "d_mid", "mean_kl", "n", "distance_from"]]


def candidate_tokens(result: MeasureResult, cfg: Any) -> pd.DataFrame:
    """Tokens a compressor chooses from, one unit per split/document: the
    prefix ``[0, N)`` of each split (split mode), every token evicted within
    the document (sliding), with their signals at their eviction time
    (:func:`with_source_signals`)."""
    keys = result.source_signals[["doc_id", "split_pos", "pos"]]
    return with_source_signals(keys, result, cfg).reset_index(drop=True)


def function_bias(cand: pd.DataFrame, cfg: Any, rules: Sequence[str]) -> pd.DataFrame:
    """Per unit, rule and budget: function-word share of the kept tokens minus
    the share among all candidates (claim 3), over every candidate token
    (sinks and the split-mode window excluded)."""
    rows = []
    df = cand[cand["is_candidate"]].reset_index(drop=True)
    wc = df["word_class"].astype("string").fillna("other").to_numpy()
    units = df["unit"].to_numpy()
    for budget in cfg.budgets:
        for rule in rules:
            if rule != "random" and rule not in df.columns:
                continue
            draws = selection_draws(df, rule, budget, cfg.n_random, cfg.seed)
            for u in pd.unique(units):
                ix = units == u
                base = float((wc[ix] == "function").mean())
                kept = float(np.mean([(wc[d & ix] == "function").mean() for d in draws]))
                rows.append(dict(unit=u, doc_id=df["doc_id"][np.flatnonzero(ix)[0]], rule=rule, budget=budget,
                                 share_function_kept=kept, share_function_base=base, excess=kept - base))
    out = pd.DataFrame(rows, columns=["unit", "doc_id", "rule", "budget", "share_function_kept", "share_function_base", "excess"])
    out["doc_id"] = out["doc_id"].astype("string")  # no candidates (e.g. a segment of sinks and window only): empty
    return out
