"""Selection rules: which measured tokens a rule keeps at a budget, and what they carry.

Rules compete only where a compressor would compare: within each *unit*,
the candidates one eviction decision ranks against each other.

* split mode: the candidates of one split (all evicted at ``tau = N``);
* sliding mode: a *block* of consecutive measured candidates (``cfg.block``,
  16 by default: 128 positions at stride 8). Each source's attention is a
  softmax over its own ``i + D`` keys, so a document-wide ranking would
  compare entries evicted at very different times; a block keeps their
  eviction times close. A short last block joins its neighbour.

A rule keeps the top ``k = max(1, round(budget * n))`` of a unit's ``n``
candidates (the *effective budget* ``k / n`` is in the tables) by a signal, a
seeded random draw, the position (``recency``: in split mode the most recent
candidates; in sliding mode, where every source is evicted at the same age
``D``, the latest positions of the block, a position control), or the
measured FI (the oracle).
Functions take ``cfg`` with ``budgets``, ``n_random``, ``seed``, ``n_boot``
and ``confidence`` (an :class:`~forward_influence.analysis.analyze.AnalyzeConfig`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from forward_influence.analysis.stats import group_mean_ci
from forward_influence.errors import InputError
from forward_influence.store.results import MeasureResult
from forward_influence.store.schema import FI_TARGETS, WORD_CLASSES
from forward_influence.store.tables import bucket_distance

#: Sliding mode: measured candidates per competing block.
BLOCK = 16


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


def block_starts(result: MeasureResult, cfg: Any) -> dict[str, np.ndarray]:
    """Sliding mode: per document, the first position of each competing block:
    every ``cfg.block``-th measured candidate (not a sink), a short last block
    merged into the one before it."""
    summ = ablation_rows(result.summary)
    out = {}
    for doc, g in summ.groupby(summ["doc_id"].astype(str), sort=False):
        cand = np.sort(g["source_pos"].unique())
        cand = cand[cand >= cfg.sinks]
        starts = cand[:: cfg.block]
        if len(starts) > 1 and len(cand) % cfg.block:
            starts = starts[:-1]
        out[doc] = starts if len(starts) else np.array([0])
    return out


def with_source_signals(df: pd.DataFrame, result: MeasureResult, cfg: Any) -> pd.DataFrame:
    """Join rows keyed ``doc_id, split_pos, pos`` with the token's signals
    (``tokens``) and its attention signals at its eviction time
    (``source_signals``, per split); add ``recency`` (the position, as a
    score), ``block`` (sliding mode: the competing block, :func:`block_starts`;
    split mode: 0), ``unit``, ``is_sink``, ``in_window`` (split mode: the last
    ``window`` positions before N, kept whole by every attention method) and
    ``is_candidate`` (neither)."""
    run = result.config
    df = result.with_signals(df)
    df["recency"] = df["pos"].astype(float)
    if run.mode == "sliding":
        starts = block_starts(result, cfg)
        docs = df["doc_id"].astype(str).to_numpy()
        block = np.zeros(len(df), dtype=np.int64)
        for d in pd.unique(docs):
            ix = docs == d
            block[ix] = np.maximum(
                np.searchsorted(starts.get(d, np.array([0])), df["pos"].to_numpy()[ix], "right") - 1, 0
            )
        df["block"] = block
        df["unit"] = (df["doc_id"].astype(str) + "@b" + df["block"].astype(str)).astype("string")
    else:
        df["block"] = np.zeros(len(df), dtype=np.int64)
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
    oracle, the latest positions for ``recency``, or ``n_random`` seeded
    uniform draws for ``random``.

    >>> t = pd.DataFrame({"unit": ["a"] * 5, "pos": range(5), "s": [0.1, 0.9, 0.5, np.nan, 0.7]})
    >>> selection_draws(t, "s", 0.4).astype(int).tolist()
    [[0, 1, 0, 0, 1]]
    """
    if not 0 < budget <= 1:
        raise InputError(f"budget must be in (0, 1]; got {budget}")
    uniq, first, unit = np.unique(df["unit"].astype(str).to_numpy(), return_index=True, return_inverse=True)
    pos = df["pos"].to_numpy()
    n_draws = n_random if rule == "random" else 1
    keep = np.zeros((n_draws, len(df)), dtype=bool)
    col = {"fi_oracle": "fi_total", "recency": "pos"}.get(rule, rule)
    if rule != "random" and col not in df.columns:
        raise InputError(f"unknown selection rule {rule!r}: recency, random, fi_oracle or a signal column of the table")
    n = np.bincount(unit, minlength=len(uniq))
    k = np.maximum(1, np.round(budget * n).astype(int))
    if rule == "random":
        rng = np.random.default_rng(seed)
        for u in np.argsort(first):  # units in order of appearance: the seeded draws do not depend on unit names
            ix = np.flatnonzero(unit == u)
            for r in range(n_draws):
                keep[r, rng.choice(ix, size=k[u], replace=False)] = True
        return keep
    s = df[col].to_numpy(float)
    s = np.where(np.isfinite(s), s, -np.inf)
    order = np.lexsort((pos, -s, unit))  # by unit, score descending, then earlier position
    start = np.concatenate([[0], np.cumsum(n)[:-1]])
    rank = np.empty(len(df), dtype=np.int64)
    rank[order] = np.arange(len(df)) - start[unit[order]]
    keep[0] = rank < k[unit]
    return keep


def _per_unit(weights: np.ndarray, unit: np.ndarray, n_units: int) -> np.ndarray:
    """Sums of ``weights`` ``(draws, rows)`` within each unit: ``(draws, n_units)``."""
    rows = np.arange(len(weights))[:, None] * n_units + unit[None, :]
    return np.bincount(rows.ravel(), weights=weights.ravel(), minlength=len(weights) * n_units).reshape(
        len(weights), n_units
    )


def _kept(
    draws: np.ndarray, unit: np.ndarray, n_units: int, fi: dict[str, np.ndarray], wc: np.ndarray, oracle: np.ndarray
) -> dict[str, np.ndarray]:
    """Per unit, what the kept rows of each draw carry, averaged over the draws (NaN draws skipped)."""
    d = draws.astype(float)
    k = _per_unit(d, unit, n_units)
    kept = {t: _per_unit(d * fi[t][None, :], unit, n_units) for t in FI_TARGETS}
    tot = {t: _per_unit(fi[t][None, :], unit, n_units)[0] for t in FI_TARGETS}
    inter = _per_unit(d * oracle[None, :], unit, n_units)
    with np.errstate(invalid="ignore", divide="ignore"):
        vals = {f"mean_{t}": np.where(k > 0, kept[t] / k, np.nan) for t in FI_TARGETS}
        vals.update({f"kept_share_{t[3:]}": np.where(tot[t] > 0, kept[t] / tot[t], np.nan) for t in FI_TARGETS})
        vals["near_frac"] = np.where(kept["fi_total"] > 0, kept["fi_near"] / kept["fi_total"], np.nan)
        for c in WORD_CLASSES:
            vals[f"share_{c}"] = np.where(k > 0, _per_unit(d * (wc == c)[None, :], unit, n_units) / k, np.nan)
        vals["jaccard"] = inter / (k + _per_unit(oracle[None, :].astype(float), unit, n_units) - inter)
    out = {}
    for key, v in vals.items():
        ok = np.isfinite(v)
        out[key] = np.where(ok.any(0), np.where(ok, v, 0.0).sum(0) / np.maximum(ok.sum(0), 1), np.nan)
    return out


def selection(src: pd.DataFrame, cfg: Any, rules: Sequence[str]) -> pd.DataFrame:
    """Per unit, rule and budget: what the kept tokens carry.

    Columns: subset, unit, doc_id, block, rule, budget, n, k, budget_effective
    (``k / n``), mean_fi_{total,near,far}
    of the kept tokens, kept_share_{total,near,far} (share of the unit's FI the
    kept tokens hold), near_frac (their FI at d <= near over their total),
    share_{content,function,other} (word-class mix), jaccard with the FI top set.
    Random: averages over the draws.
    """
    frames = []
    for subset, df in subsets(src).items():
        df = df.reset_index(drop=True)
        uniq, first, unit = np.unique(df["unit"].astype(str).to_numpy(), return_index=True, return_inverse=True)
        order = np.argsort(first)  # units in order of appearance
        fi = {t: df[t].to_numpy(float) for t in FI_TARGETS}
        wc = (
            df["word_class"].astype("string").fillna("other").to_numpy()
            if "word_class" in df
            else np.full(len(df), "other")
        )
        block = df["block"].to_numpy() if "block" in df else np.zeros(len(df), dtype=np.int64)
        n = np.bincount(unit, minlength=len(uniq))
        for budget in cfg.budgets:
            oracle = selection_draws(df, "fi_oracle", budget)[0]
            for rule in rules:
                draws = selection_draws(df, rule, budget, cfg.n_random, cfg.seed)
                vals = _kept(draws, unit, len(uniq), fi, wc, oracle)
                k = _per_unit(draws[:1].astype(float), unit, len(uniq))[0].astype(int)
                frames.append(
                    pd.DataFrame(
                        dict(
                            subset=subset,
                            unit=uniq[order],
                            doc_id=df["doc_id"].to_numpy()[first[order]],
                            block=block[first[order]].astype(int),
                            rule=rule,
                            budget=budget,
                            n=n[order],
                            k=k[order],
                            budget_effective=k[order] / n[order],
                            **{key: v[order] for key, v in vals.items()},
                        )
                    )
                )
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    out["doc_id"] = out["doc_id"].astype("string")
    return out


def selection_summary(
    sel: pd.DataFrame,
    cfg: Any,
    columns: Sequence[str] = (
        "kept_share_total",
        "kept_share_near",
        "kept_share_far",
        "near_frac",
        "share_function",
        "share_content",
        "jaccard",
        "budget_effective",
    ),
) -> pd.DataFrame:
    """Mean over units of each selection column per (subset, rule, budget), with
    intervals from resampling documents."""
    rng = np.random.default_rng(cfg.seed)
    rows = []
    for (subset, rule, budget), g in sel.groupby(["subset", "rule", "budget"], sort=False):
        for c in columns:
            est, lo, hi = group_mean_ci(g[c].to_numpy(float), g["doc_id"].to_numpy(), cfg, rng)
            rows.append(
                dict(
                    subset=subset,
                    rule=rule,
                    budget=budget,
                    quantity=c,
                    estimate=est,
                    ci_low=lo,
                    ci_high=hi,
                    n_units=len(g),
                    n_docs=g["doc_id"].nunique(),
                )
            )
    return pd.DataFrame(rows)


def distance_curves(
    result: MeasureResult, src: pd.DataFrame, cfg: Any, rules: Sequence[str], distance_from: str = "tau"
) -> pd.DataFrame:
    """Mean KL of the kept tokens as a function of distance, per document.

    Distances count from the eviction time (``distance_from="tau"``,
    :func:`~forward_influence.store.tables.bucket_distance`, as the claims do)
    or from the source (``"source"``, the study's own figures); 0 joins the
    first bin, then powers of two (0-1, 2-3, 4-7, ...). Columns: subset,
    rule, budget, doc_id, d_lo, d_hi, d_mid (geometric), mean_kl, n,
    distance_from. Plot with bands over documents
    (:func:`forward_influence.analysis.figures.fi_vs_distance`).
    """
    if distance_from not in ("tau", "source"):
        raise InputError(f"distance_from must be tau or source; got {distance_from!r}")
    inf = ablation_rows(result.influence)
    key = ["doc_id", "split_pos", "source_pos"]
    d = bucket_distance(inf) if distance_from == "tau" else inf["distance"].to_numpy()
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
                g = (
                    m.groupby(["doc_id", "bin"], sort=True)
                    .agg(wkl=("wkl", "sum"), w=("w", "sum"), n=("kl", "size"))
                    .reset_index()
                )
                g["mean_kl"] = g["wkl"] / g["w"]
                g = g.assign(subset=subset, rule=rule, budget=budget)
                frames.append(g.drop(columns=["wkl", "w"]))
    out = pd.concat(frames, ignore_index=True)
    out["d_lo"] = 2 ** out["bin"]
    out["d_hi"] = 2 ** (out["bin"] + 1) - 1
    out["d_mid"] = np.sqrt(out["d_lo"] * out["d_hi"])
    out["doc_id"] = out["doc_id"].astype("string")
    out["distance_from"] = distance_from
    return out[["subset", "rule", "budget", "doc_id", "d_lo", "d_hi", "d_mid", "mean_kl", "n", "distance_from"]]


def candidate_tokens(result: MeasureResult, cfg: Any) -> pd.DataFrame:
    """Tokens a compressor chooses from, with their signals at their eviction
    time (:func:`with_source_signals`) and their competing unit: the prefix
    ``[0, N)`` of each split (split mode); in sliding mode every token
    evicted within the measured range (up to the document's last measured
    source), in the block of the measured sources around it."""
    keys = result.source_signals[["doc_id", "split_pos", "pos"]]
    if result.config.mode == "sliding":
        last = ablation_rows(result.summary).groupby("doc_id")["source_pos"].max()
        keys = keys[keys["pos"].to_numpy() <= keys["doc_id"].map(last).to_numpy(float)]
    return with_source_signals(keys, result, cfg).reset_index(drop=True)


def function_bias(cand: pd.DataFrame, cfg: Any, rules: Sequence[str]) -> pd.DataFrame:
    """Per unit, rule and budget: function-word share of the kept tokens minus
    the share among all candidates (claim 3), over every candidate token
    (sinks and the split-mode window excluded)."""
    rows: list[pd.DataFrame] = []
    df = cand[cand["is_candidate"]].reset_index(drop=True)
    is_fun = (df["word_class"].astype("string").fillna("other").to_numpy() == "function").astype(float)
    uniq, first, unit = np.unique(df["unit"].astype(str).to_numpy(), return_index=True, return_inverse=True)
    order = np.argsort(first)
    block = df["block"].to_numpy() if "block" in df else np.zeros(len(df), dtype=np.int64)
    base = np.bincount(unit, weights=is_fun, minlength=len(uniq)) / np.maximum(
        np.bincount(unit, minlength=len(uniq)), 1
    )
    for budget in cfg.budgets:
        for rule in rules:
            if rule not in ("random", "recency") and rule not in df.columns:
                continue
            draws = selection_draws(df, rule, budget, cfg.n_random, cfg.seed).astype(float)
            k = _per_unit(draws, unit, len(uniq))
            with np.errstate(invalid="ignore", divide="ignore"):
                kept = np.nanmean(
                    np.where(k > 0, _per_unit(draws * is_fun[None, :], unit, len(uniq)) / k, np.nan), axis=0
                )
            rows.append(
                pd.DataFrame(
                    dict(
                        unit=uniq[order],
                        doc_id=df["doc_id"].to_numpy()[first[order]],
                        block=block[first[order]].astype(int),
                        rule=rule,
                        budget=budget,
                        share_function_kept=kept[order],
                        share_function_base=base[order],
                        excess=kept[order] - base[order],
                    )
                )
            )
    cols = ["unit", "doc_id", "block", "rule", "budget", "share_function_kept", "share_function_base", "excess"]
    out = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=cols)
    out["doc_id"] = out["doc_id"].astype("string")  # no candidates (e.g. a segment of sinks and window only): empty
    return out
