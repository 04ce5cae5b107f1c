"""What a scorer learned: grouped permutation importance and partial dependence.

Importance is the drop in held-out within-unit Spearman (score vs target) when a group of
features is permuted together within each unit (so correlated signals — the entropies and
surprisal; the attention scores — cannot stand in for each other), per document fold of a
cross-validation: a model fit without the fold, the fold's rows permuted. The interval
is a t interval over folds (they are disjoint sets of documents).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from forward_influence.distill import evaluate, models
from forward_influence.distill.data import Units
from forward_influence.distill.train import document_folds
from forward_influence.scoring import AGE

#: Feature groups by name prefix, in order; a feature joins the first group it matches.
GROUPS = (
    ("entropy & surprisal", ("entropy", "surprisal")),
    ("attention", ("attn_",)),
    ("key norms", ("key_norm",)),
    ("representation change", ("rep_change",)),
    ("age (recency)", (AGE,)),
)


def feature_groups(features: Sequence[str]) -> dict[str, list[str]]:
    """Group name -> its features (a feature matching no prefix is its own group)."""
    out: dict[str, list[str]] = {}
    for f in features:
        name = next((g for g, prefixes in GROUPS if f.startswith(prefixes)), f)
        out.setdefault(name, []).append(f)
    return out


def _heldout_spearman(scorer, units: Units, target: str) -> np.ndarray:  # noqa: ANN001
    s = evaluate.scorer_scores(scorer, units)
    pu = evaluate.per_unit(units, target, {"m": s}, budgets=())
    return pu.groupby("doc_id")["spearman"].mean().to_numpy()


def permutation_importance(
    units: Units, kind: str, target: str, folds: int = 5, repeats: int = 3, seed: int = 0, rounds: int = models.ROUNDS
) -> pd.DataFrame:
    """Per (fold, group): held-out Spearman (document mean) and its drop when the group is permuted."""
    rng = np.random.default_rng(seed)
    groups = feature_groups(units.features)
    rows = []
    for f, held in enumerate(document_folds(units.documents, folds, seed)):
        train = units.subset([d for d in units.documents if d not in held])
        test = units.subset(held)
        scorer = models.fit(kind, train, target, seed, rounds)
        base = float(np.nanmean(_heldout_spearman(scorer, test, target)))
        for g, cols in groups.items():
            drops = []
            for _ in range(repeats):
                frame = test.frame.copy()
                for ix in test.groups():
                    p = rng.permutation(ix)
                    frame.loc[ix, cols] = test.frame.loc[p, cols].to_numpy()
                perm = Units(frame, test.features, test.runs)
                drops.append(base - float(np.nanmean(_heldout_spearman(scorer, perm, target))))
            rows.append(
                {"fold": f, "group": g, "features": ",".join(cols), "spearman": base, "drop": float(np.mean(drops))}
            )
    return pd.DataFrame(rows)


def importance_summary(imp: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Per group: mean drop over folds with a t interval, largest first."""
    rows = []
    for g, d in imp.groupby("group", sort=False):
        x = d["drop"].to_numpy(float)
        m = float(x.mean())
        half = (
            float(stats.t.ppf((1 + confidence) / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
            if len(x) > 1
            else np.nan
        )
        rows.append(
            {
                "group": g,
                "features": d["features"].iloc[0],
                "folds": len(x),
                "drop": m,
                "ci_low": m - half,
                "ci_high": m + half,
            }
        )
    return pd.DataFrame(rows).sort_values("drop", ascending=False, kind="stable").reset_index(drop=True)


def partial_dependence(
    scorer, units: Units, feature: str, grid: Sequence[float] = tuple(np.linspace(0, 1, 11))
) -> pd.DataFrame:  # noqa: ANN001
    """Mean score over ``units`` when ``feature``'s within-unit rank is set to each grid value."""
    j = scorer.feature_names.index(feature)
    x, _ = models.design(Units(units.frame, scorer.feature_names, units.runs))
    rows = []
    for g in grid:
        xg = x.copy()
        xg[:, j] = g
        rows.append({"feature": feature, "rank": float(g), "score": float(np.mean(scorer.predict(xg)))})
    return pd.DataFrame(rows)
