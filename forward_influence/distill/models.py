"""The scorers fi-distill compares, each fit on units and written as a :class:`~forward_influence.scoring.Scorer`.

Every feature enters as its rank within the unit (the transform ``unit_rank``),
so documents of different FI scale and length are ranked alike and the score
only ever compares entries present at the same eviction.

``linear``
    weights ``w`` of a softmax over each unit's candidates, fit to the unit's
    share of the target FI (ListNet's listwise cross-entropy,
    ``-sum_i p_i log softmax(X w)_i`` with ``p_i = FI_i / sum_j FI_j``): a top-
    weighted loss, since FI is heavy-tailed and the few largest shares dominate
    ``p`` — what a budget of 20% is judged on. torch, full batch, Adam.
``hgb``
    scikit-learn's ``HistGradientBoostingRegressor`` on the target's rank
    within the unit.
``lgbm``
    LightGBM's ``lambdarank`` with units as query groups, relevance the unit
    quantile of the target graded 0-4 (top 5% / 10% / 20% / 40%), one thread,
    ``deterministic=True``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from forward_influence.distill.data import Units
from forward_influence.scoring import Scorer, Tree, transform, unit_rank

KINDS = ("linear", "hgb", "lgbm")
#: Relevance grades of lambdarank: unit quantile thresholds of the target.
GRADES = (0.6, 0.8, 0.9, 0.95)
#: Boosting rounds of the tree models.
ROUNDS = 300


def design(units: Units) -> tuple[np.ndarray, list[np.ndarray]]:
    """``X`` ``(rows, features)`` of within-unit ranks (:func:`~forward_influence.scoring.transform`,
    as the scorer will see them), and each unit's row indices."""
    groups = units.groups()
    features = feature_specs(units.features)
    raw = units.frame[units.features].to_numpy(float)
    x = np.empty_like(raw)
    for ix in groups:
        x[ix] = transform(features, {f: raw[ix, j] for j, f in enumerate(units.features)})
    return x, groups


def feature_specs(names: list[str]) -> list[dict[str, str]]:
    """The model file's feature list: every feature ranked within its unit."""
    return [{"name": f, "transform": "unit_rank"} for f in names]


def _target(units: Units, target: str, groups: list[np.ndarray], how: str) -> np.ndarray:
    y = np.nan_to_num(units.frame[target].to_numpy(float), nan=0.0).clip(min=0)
    out = np.zeros(len(y))
    for ix in groups:
        if how == "share":
            s = y[ix].sum()
            out[ix] = y[ix] / s if s > 0 else 1.0 / len(ix)
        elif how == "rank":
            out[ix] = unit_rank(y[ix])
        else:  # graded relevance
            r = unit_rank(y[ix])
            out[ix] = sum((r >= g).astype(float) for g in GRADES)
    return out


def fit_linear(
    x: np.ndarray,
    p: np.ndarray,
    groups: list[np.ndarray],
    epochs: int = 400,
    lr: float = 0.05,
    l2: float = 1e-3,
    seed: int = 0,
) -> tuple[np.ndarray, float]:
    """Listwise softmax weights (module docstring); returns ``(weights, bias)`` (the bias cancels in a softmax: 0)."""
    import torch

    n_u, m, f = len(groups), max(len(g) for g in groups), x.shape[1]
    xt = torch.zeros(n_u, m, f, dtype=torch.float64)
    pt = torch.zeros(n_u, m, dtype=torch.float64)
    mask = torch.zeros(n_u, m, dtype=torch.bool)
    xn = np.nan_to_num(x, nan=0.5)
    for u, ix in enumerate(groups):
        xt[u, : len(ix)] = torch.from_numpy(xn[ix])
        pt[u, : len(ix)] = torch.from_numpy(p[ix])
        mask[u, : len(ix)] = True
    gen = torch.Generator().manual_seed(seed)
    w = (torch.randn(f, generator=gen, dtype=torch.float64) * 0.01).requires_grad_(True)
    opt = torch.optim.Adam([w], lr=lr)
    for _ in range(epochs):
        opt.zero_grad()
        s = (xt @ w).masked_fill(~mask, float("-inf"))
        logp = torch.log_softmax(s, dim=1).masked_fill(~mask, 0.0)
        loss = -(pt * logp).sum(1).mean() + l2 * (w * w).sum()
        loss.backward()
        opt.step()
    return w.detach().numpy().copy(), 0.0


def _sklearn_trees(model: Any) -> tuple[list[Tree], float]:
    trees = []
    for (pred,) in model._predictors:
        nodes = pred.nodes
        leaf = nodes["is_leaf"].astype(bool)
        trees.append(
            Tree(
                feature=np.where(leaf, -1, nodes["feature_idx"]).astype(np.int64),
                threshold=nodes["num_threshold"].astype(float),
                missing_left=nodes["missing_go_to_left"].astype(bool),
                left=nodes["left"].astype(np.int64),
                right=nodes["right"].astype(np.int64),
                value=nodes["value"].astype(float),
            )
        )
    return trees, float(np.ravel(model._baseline_prediction)[0])


def _lgbm_walk(node: dict, rows: list[dict]) -> int:
    """Append ``node``'s subtree to ``rows`` (pre-order); return ``node``'s index."""
    i = len(rows)
    rows.append({})
    if "leaf_value" in node or "split_feature" not in node:
        leaf = float(node.get("leaf_value", 0.0))
        rows[i] = dict(feature=-1, threshold=0.0, missing_left=True, left=-1, right=-1, value=leaf)
        return i
    if node.get("decision_type", "<=") != "<=":
        raise ValueError(f"unsupported LightGBM split {node.get('decision_type')!r}")
    left, right = _lgbm_walk(node["left_child"], rows), _lgbm_walk(node["right_child"], rows)
    rows[i] = dict(
        feature=int(node["split_feature"]),
        threshold=float(node["threshold"]),
        missing_left=bool(node.get("default_left", True)),
        left=left,
        right=right,
        value=0.0,
    )
    return i


def _lgbm_trees(booster: Any) -> list[Tree]:
    """A LightGBM booster's trees as node arrays (its ``dump_model``)."""
    out = []
    for info in booster.dump_model()["tree_info"]:
        rows: list[dict] = []
        _lgbm_walk(info["tree_structure"], rows)
        out.append(Tree(**{k: np.array([r[k] for r in rows]) for k in rows[0]}))
    return out


def fit(kind: str, units: Units, target: str, seed: int = 0, rounds: int = ROUNDS) -> Scorer:
    """A scorer of ``kind`` (:data:`KINDS`) fit on ``units`` for ``target`` (``fi_far`` or ``fi_total``);
    ``rounds``: boosting rounds of the tree models."""
    x, groups = design(units)
    common = dict(target=target, features=feature_specs(units.features))
    if kind == "linear":
        w, b = fit_linear(x, _target(units, target, groups, "share"), groups, seed=seed)
        return Scorer(kind="linear", weights=w, bias=b, **common)
    if kind == "hgb":
        from sklearn.ensemble import HistGradientBoostingRegressor

        model = HistGradientBoostingRegressor(
            max_iter=rounds,
            learning_rate=0.05,
            max_leaf_nodes=15,
            min_samples_leaf=20,
            l2_regularization=1.0,
            early_stopping=False,
            random_state=seed,
        )
        model.fit(x, _target(units, target, groups, "rank"))
        trees, base = _sklearn_trees(model)
        return Scorer(kind="trees", trees=trees, base=base, **common)
    if kind == "lgbm":
        import lightgbm as lgb

        order = np.concatenate(groups)
        model = lgb.LGBMRanker(
            objective="lambdarank",
            n_estimators=rounds,
            learning_rate=0.05,
            num_leaves=15,
            min_child_samples=20,
            deterministic=True,
            force_row_wise=True,
            n_jobs=1,
            random_state=seed,
            verbose=-1,
        )
        model.fit(x[order], _target(units, target, groups, "grade")[order], group=[len(g) for g in groups])
        return Scorer(kind="trees", trees=_lgbm_trees(model.booster_), **common)
    raise ValueError(f"unknown model kind {kind!r}; valid: {', '.join(KINDS)}")
