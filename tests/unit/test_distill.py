"""fi-distill on synthetic units: a planted signal is recovered, folds never share a document,
train -> save -> load -> score is bitwise reproducible, bad model files give one clear line."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from forward_influence.distill import evaluate, learned, models, train
from forward_influence.distill.data import Units
from forward_influence.errors import InputError
from forward_influence.scoring import AGE, Scorer, load_scorer, unit_rank

#: The planted feature must beat the best noise feature's importance by this much (held-out Spearman).
IMPORTANCE_MARGIN = 0.2
#: Boosting rounds in these tests (the shipped default is larger; the planted signal needs few).
ROUNDS = 60
#: Held-out Spearman of a model that found the planted signal (its own within-unit Spearman is ~0.8).
PLANTED_SPEARMAN = 0.5


def synthetic_units(n_docs: int = 6, units_per_doc: int = 2, n: int = 50, seed: int = 0) -> Units:
    """Units whose far FI is exp(3 * planted + noise); entropy_in_topk, attn_h2o and age are noise
    (attn_h2o correlated with age, as attention is with position)."""
    rng = np.random.default_rng(seed)
    rows = []
    for d in range(n_docs):
        for u in range(units_per_doc):
            pos = np.arange(n)
            planted = rng.normal(size=n)
            y = np.exp(3 * planted + rng.normal(size=n))
            rows.append(
                pd.DataFrame(
                    {
                        "doc_id": f"d{d}",
                        "corpus": "synthetic",
                        "unit": f"d{d}/{u}",
                        "pos": pos,
                        "split_pos": n + 8,
                        "entropy_in_topk": rng.normal(size=n),
                        "planted": planted,
                        "attn_h2o": pos + rng.normal(scale=20, size=n),
                        AGE: (n + 8 - pos).astype(float),
                        "fi_far": y,
                        "fi_total": y + rng.exponential(size=n),
                    }
                )
            )
    run = {"path": "synthetic", "signal_config": {"topk": 10}, "language_model": {"name": "none"}}
    return Units(pd.concat(rows, ignore_index=True), ["entropy_in_topk", "planted", "attn_h2o", AGE], [run])


@pytest.fixture(scope="module")
def units():
    return synthetic_units()


@pytest.mark.parametrize("kind", models.KINDS)
def test_a_planted_signal_ranks_first(units, kind):
    imp = learned.importance_summary(
        learned.permutation_importance(units, kind, "fi_far", folds=4, repeats=2, rounds=ROUNDS)
    )
    assert imp["group"].iloc[0] == "planted", imp
    assert imp["drop"].iloc[0] - imp["drop"].iloc[1] > IMPORTANCE_MARGIN, imp
    assert imp["spearman" if "spearman" in imp else "drop"].notna().all()


def test_held_out_scores_find_the_planted_signal_and_beat_the_noise(units):
    cfg = train.DistillConfig(kinds=("linear",), folds=4)
    res = train.train(units, cfg)
    s = res.summary.set_index(["method", "statistic"])
    assert s.loc[("distilled", "spearman"), "mean"] > PLANTED_SPEARMAN
    assert s.loc[("distilled", "kept_share_0.2"), "mean"] > s.loc[("entropy_in_topk", "kept_share_0.2"), "mean"]
    assert s.loc[("oracle", "kept_share_0.2"), "mean"] >= s.loc[("distilled", "kept_share_0.2"), "mean"]
    # the interval inverts the test: it excludes 0 exactly when p < 0.05
    d = res.summary.dropna(subset=["p_value"])
    assert ((d["diff_low"] > 0) | (d["diff_high"] < 0)).eq(d["p_value"] < 0.05).all()


def test_folds_never_share_a_document(units, monkeypatch):
    folds = train.document_folds(units.documents, 3, seed=1)
    flat = [d for f in folds for d in f]
    assert sorted(flat) == sorted(units.documents) and len(flat) == len(set(flat))
    seen = []
    fit = models.fit

    def spy(kind, u, target, seed=0, rounds=ROUNDS):
        seen.append(set(u.documents))
        return fit(kind, u, target, seed, ROUNDS)

    monkeypatch.setattr(models, "fit", spy)
    scores = train.cross_scores(units, "linear", "fi_far", folds)
    assert np.isfinite(scores).all()
    for held, trained_on in zip(folds, seen):
        assert not trained_on & set(held)
    seen.clear()
    train.nested(units, train.DistillConfig(kinds=("linear", "lgbm"), folds=3, inner_folds=2, rounds=ROUNDS))
    assert seen and all(len(s) < len(units.documents) for s in seen[:-1])


@pytest.mark.parametrize("kind", models.KINDS)
def test_train_save_load_score_is_bitwise_reproducible(units, kind, tmp_path):
    a, b = (models.fit(kind, units, "fi_far", seed=3, rounds=ROUNDS) for _ in range(2))
    a.save(tmp_path / "a.json")
    b.save(tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    loaded = load_scorer(tmp_path / "a.json")
    s0, s1 = evaluate.scorer_scores(a, units), evaluate.scorer_scores(loaded, units)
    assert np.array_equal(s0, s1)


def test_exported_trees_score_as_the_library_does(units):
    """The node arrays reproduce scikit-learn's and LightGBM's own predictions (an independent oracle)."""
    x, groups = models.design(units)
    from sklearn.ensemble import HistGradientBoostingRegressor

    y = models._target(units, "fi_far", groups, "rank")
    hgb = HistGradientBoostingRegressor(max_iter=20, max_leaf_nodes=7, random_state=0).fit(x, y)
    trees, base = models._sklearn_trees(hgb)
    s = Scorer(kind="trees", target="fi_far", features=[{"name": f} for f in units.features], trees=trees, base=base)
    np.testing.assert_allclose(s.predict(x), hgb.predict(x), rtol=0, atol=1e-9)
    import lightgbm as lgb

    rk = lgb.LGBMRanker(n_estimators=10, num_leaves=7, n_jobs=1, deterministic=True, verbose=-1)
    rk.fit(x, models._target(units, "fi_far", groups, "grade"), group=[len(g) for g in groups])
    s = Scorer(
        kind="trees",
        target="fi_far",
        features=[{"name": f} for f in units.features],
        trees=models._lgbm_trees(rk.booster_),
    )
    np.testing.assert_allclose(s.predict(x), rk.predict(x), rtol=0, atol=1e-9)


def test_unit_rank_only_compares_entries_of_one_unit():
    assert unit_rank(np.array([3.0, 1.0, 2.0])).tolist() == [1.0, 0.0, 0.5]
    assert unit_rank(np.array([7.0])).tolist() == [0.5]


def _model(tmp_path, **change):
    d = models.fit("linear", synthetic_units(n_docs=2), "fi_far").to_dict()
    d["provenance"] = {"language_model": {"name": "SmolLM2-135M-Instruct", "revision": "abc"}}
    d.update(change)
    p = tmp_path / "m.json"
    p.write_text(json.dumps(d))
    return p


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing.json", "is not a file"),
        (lambda p: (p / "t.json").write_text(_model(p).read_text()[:50]) and p / "t.json", "not readable JSON"),
        (lambda p: (p / "n.json").write_text('{"runs": 3}') and p / "n.json", "is not a distilled model"),
        (lambda p: _model(p, format_version=99), "format_version 99"),
        (lambda p: _model(p, kind="forest"), "damaged distilled model"),
    ],
)
def test_bad_model_files_give_one_clear_line(tmp_path, make, message):
    with pytest.raises(InputError, match=message) as e:
        load_scorer(make(tmp_path))
    assert "\n" not in str(e.value)


def test_a_model_of_another_language_model_or_feature_set_is_refused(tmp_path):
    p = _model(tmp_path)
    with pytest.raises(InputError, match="fit on revision 'abc'"):
        load_scorer(p, language_model={"name": "SmolLM2-135M-Instruct", "revision": "def"})
    with pytest.raises(InputError, match=r"needs features \['planted'"):
        load_scorer(p, features=["entropy_in_topk", "attn_h2o"])
    assert load_scorer(p, features=["entropy_in_topk", "attn_h2o", "planted"]).kind == "linear"


def test_config_refuses_bad_choices():
    with pytest.raises(InputError, match="--target"):
        train.DistillConfig(target="fi_near")
    with pytest.raises(InputError, match="--kinds"):
        train.DistillConfig(kinds=("ridge",))
    with pytest.raises(InputError, match="at least 2 documents"):
        train.document_folds(["a"], 3)


def test_an_excluded_feature_is_never_read_but_still_compared(units):
    """--exclude: the model reads the other features only (here it loses the planted signal and with it
    the ranking), while the held-out table still ranks by the excluded signal as a single-signal rule."""
    res = train.train(units, train.DistillConfig(kinds=("linear",), folds=4, exclude=("planted",)))
    assert res.scorer.feature_names == ["entropy_in_topk", "attn_h2o", AGE]
    s = res.summary.set_index(["method", "statistic"])
    assert s.loc[("planted", "spearman"), "mean"] > PLANTED_SPEARMAN  # still a comparator
    assert s.loc[("distilled", "spearman"), "mean"] < PLANTED_SPEARMAN / 2  # noise features only
    with pytest.raises(InputError, match=r"--exclude names \['h2o'\], not features of these runs"):
        units.without(["h2o"])
    with pytest.raises(InputError, match="no feature"):
        units.without(units.features)
