"""Judging scorers by document: within-unit Spearman with the target, and the share of the
unit's target FI the top entries keep, against every single signal, recency, random and
the FI oracle; intervals over documents as the claims use (docs/statistics.md).

Every statistic is computed per unit (one eviction), averaged per document, and only
then over documents: a document with many units counts once. Levels get a BCa interval
from resampling documents; a difference between two methods gets the sign-flip test over
documents and the interval that inverts it (:func:`~forward_influence.analysis.inference.sign_flip_test`),
so the interval excludes 0 exactly when p < 0.05.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import SimpleNamespace

import numpy as np
import pandas as pd

from forward_influence.analysis.inference import sign_flip_test
from forward_influence.analysis.selection import selection_draws
from forward_influence.analysis.stats import group_mean_ci, spearman
from forward_influence.distill.data import Units
from forward_influence.scoring import AGE, Scorer

BUDGETS = (0.2, 0.4)
#: Rules every evaluation shows beside the learned scores.
REFERENCES = ("recency", "random", "oracle")
N_RANDOM = 16
CI = SimpleNamespace(confidence=0.95, n_boot=999)


def scorer_scores(scorer: Scorer, units: Units) -> np.ndarray:
    """The scorer's score of every row, unit by unit (features ranked within their unit)."""
    out = np.full(len(units.frame), np.nan)
    for ix in units.groups():
        cols = {f: units.frame[f].to_numpy(float)[ix] for f in scorer.feature_names}
        out[ix] = scorer.score(cols)
    return out


def method_scores(units: Units, target: str, learned: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Scores by method: the learned ones, every single feature (higher keeps; ``age``
    as recency), random's placeholder and the oracle (the target itself)."""
    f = units.frame
    out = dict(learned or {})
    out.update({name: f[name].to_numpy(float) for name in units.features if name != AGE})
    out["recency"] = -f[AGE].to_numpy(float)
    out["random"] = np.zeros(len(f))
    out["oracle"] = f[target].to_numpy(float)
    return out


def per_unit(
    units: Units, target: str, scores: Mapping[str, np.ndarray], budgets: Sequence[float] = BUDGETS, seed: int = 0
) -> pd.DataFrame:
    """One row per (unit, method): doc_id, spearman (score vs target), kept_share_<budget>."""
    f = units.frame
    y = np.nan_to_num(f[target].to_numpy(float), nan=0.0)
    groups = units.groups()
    unit_ids = f["unit"].to_numpy()
    docs = f["doc_id"].astype(str).to_numpy()
    rows = []
    for name, s in scores.items():
        table = pd.DataFrame({"unit": unit_ids, "pos": f["pos"].to_numpy(), "score": s})
        shares = {}
        for b in budgets:
            keep = selection_draws(table, "random" if name == "random" else "score", b, N_RANDOM, seed)
            shares[b] = keep.astype(float).mean(0) * y  # expected FI kept per row (random: over the draws)
        for ix in groups:
            tot = y[ix].sum()
            rho = np.nan if name == "random" else float(spearman(s[ix][None], y[ix][None])[0])
            row = {"unit": unit_ids[ix[0]], "doc_id": docs[ix[0]], "method": name, "n": len(ix), "spearman": rho}
            for b in budgets:
                row[f"kept_share_{b:g}"] = shares[b][ix].sum() / tot if tot > 0 else np.nan
            rows.append(row)
    return pd.DataFrame(rows)


def document_table(pu: pd.DataFrame) -> pd.DataFrame:
    """Per (document, method): the mean of each per-unit statistic."""
    stats = [c for c in pu.columns if c == "spearman" or c.startswith("kept_share_")]
    return pu.groupby(["doc_id", "method"], sort=False)[stats].mean().reset_index()


def summarize(docs: pd.DataFrame, against: str | None = None, seed: int = 0) -> pd.DataFrame:
    """Per (method, statistic): documents, mean over documents with its BCa interval; with
    ``against`` (a method), ``diff`` = against - this method (mean over documents), its sign-flip p
    and the interval that inverts that test (``diff_low``, ``diff_high``)."""
    rng = np.random.default_rng(seed)
    stats = [c for c in docs.columns if c == "spearman" or c.startswith("kept_share_")]
    rows = []
    for method, g in docs.groupby("method", sort=False):
        for stat in stats:
            v = g.set_index("doc_id")[stat]
            ok = v.dropna()
            if ok.empty:
                continue
            est, lo, hi = group_mean_ci(ok.to_numpy(), ok.index.to_numpy(), CI, rng)
            row = {"method": method, "statistic": stat, "n_docs": len(ok), "mean": est, "ci_low": lo, "ci_high": hi}
            if against is not None and method != against:
                ref = docs[docs["method"] == against].set_index("doc_id")[stat]
                d = (ref.reindex(v.index) - v).dropna()  # against - this method
                r = sign_flip_test(d.to_numpy(), rng=rng, alpha=0.05)
                row.update(diff=r.statistic, diff_low=r.ci_low, diff_high=r.ci_high, p_value=r.p_value)
            rows.append(row)
    return pd.DataFrame(rows)


def evaluate(
    units: Units,
    target: str,
    learned: Mapping[str, np.ndarray],
    budgets: Sequence[float] = BUDGETS,
    against: str | None = None,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(per-document table, summary)`` of the learned scores and every reference on ``units``."""
    docs = document_table(per_unit(units, target, method_scores(units, target, learned), budgets, seed))
    return docs, summarize(docs, against if against is not None else next(iter(learned), None), seed)
