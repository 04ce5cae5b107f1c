"""The gap closed G (fi-bench fidelity with the distilled method and the FI oracle), against
hand-computed values and an explicit bootstrap, and the kl_far metric's far targets."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from forward_influence.analysis.inference import MIN_DOCS
from forward_influence.bench.summary import gap_closed, gap_text
from forward_influence.bench.tasks import Fidelity

#: Percentile bounds from the same resamples agree to float rounding.
BOUND_TOL = 1e-12


def results(kl: dict[str, list[float]], budget: float = 0.2) -> pd.DataFrame:
    n = len(next(iter(kl.values())))
    rows = [
        {"task": "fidelity", "sample_id": f"d{i}", "method": m, "budget": budget, "kl": v[i], "kl_far": 2 * v[i]}
        for m, v in kl.items()
        for i in range(n)
    ]
    return pd.DataFrame(rows)


KL = {
    "full": [0.0] * 6,
    "snapkv": [0.50, 0.40, 0.70, 0.30, 0.60, 0.50],
    "h2o": [0.60, 0.35, 0.80, 0.40, 0.55, 0.55],
    "distilled": [0.40, 0.30, 0.50, 0.30, 0.45, 0.40],
    "fi_oracle": [0.10, 0.10, 0.20, 0.05, 0.15, 0.10],
}


def test_g_is_the_share_of_the_best_to_oracle_gap_on_document_means():
    g = gap_closed(results(KL), n_resamples=500).set_index("metric")
    m = {k: np.mean(v) for k, v in KL.items()}
    best = min(m["snapkv"], m["h2o"])  # full, distilled and the oracle are never "best"
    want = (best - m["distilled"]) / (best - m["fi_oracle"])
    assert g.loc["kl", "best"] == "snapkv"
    assert g.loc["kl", "gap_closed"] == pytest.approx(want, rel=1e-12)
    assert g.loc["kl_far", "gap_closed"] == pytest.approx(want, rel=1e-12)  # a scale leaves G unchanged
    assert g.loc["kl", "defined"] and g.loc["kl", "lo"] <= want <= g.loc["kl", "hi"]
    assert g.loc["kl", "n"] == 6


def test_the_interval_resamples_documents_and_chooses_the_best_again():
    """An explicit bootstrap of documents with the same generator gives the same bounds."""
    g = gap_closed(results(KL), n_resamples=300, seed=4).set_index("metric").loc["kl"]
    x = pd.DataFrame(KL)
    rng = np.random.default_rng(4)
    idx = rng.integers(0, len(x), (300, len(x)))
    gs = []
    for rows in idx:
        mean = x.iloc[rows].mean()
        best = min(mean["snapkv"], mean["h2o"])
        gs.append((best - mean["distilled"]) / (best - mean["fi_oracle"]))
    lo, hi = np.percentile(gs, [2.5, 97.5])
    assert abs(g["lo"] - lo) < BOUND_TOL and abs(g["hi"] - hi) < BOUND_TOL


def test_not_defined_when_the_oracle_is_not_distinguishable_from_the_best():
    kl = dict(KL, fi_oracle=[0.60, 0.20, 0.90, 0.10, 0.80, 0.30])  # mean near snapkv's, noisy
    g = gap_closed(results(kl), n_resamples=500).iloc[0]
    assert not g["defined"] and np.isnan(g["lo"])
    assert g["denominator_lo"] <= 0 <= g["denominator_hi"]
    assert gap_text(g).startswith("G not defined")


def test_not_defined_when_the_oracle_is_worse_than_the_best():
    kl = dict(KL, fi_oracle=[v + 0.3 for v in KL["snapkv"]])
    g = gap_closed(results(kl), n_resamples=200).iloc[0]
    assert g["denominator_hi"] < 0 and not g["defined"]


def test_not_defined_with_fewer_documents_than_any_verdict_needs():
    """Four documents: the point estimate stands, the interval and the verdict do not (the claims' bar)."""
    few = {k: v[:4] for k, v in KL.items()}
    g = gap_closed(results(few), n_resamples=200).iloc[0]
    m = {k: np.mean(v) for k, v in few.items()}
    best = min(m["snapkv"], m["h2o"])
    assert g["n"] == 4 and g["n"] < MIN_DOCS and not g["defined"] and np.isnan(g["lo"])
    assert g["gap_closed"] == pytest.approx((best - m["distilled"]) / (best - m["fi_oracle"]), rel=1e-12)
    assert gap_text(g).startswith(f"G not defined: fewer than the {MIN_DOCS} documents")
    assert gap_closed(results({k: v[:MIN_DOCS] for k, v in KL.items()}), n_resamples=200).iloc[0]["defined"]


def test_empty_without_the_distilled_method_or_the_oracle():
    assert gap_closed(results({k: v for k, v in KL.items() if k != "fi_oracle"})).empty
    assert gap_closed(results({k: v for k, v in KL.items() if k != "distilled"})).empty


def test_kl_far_averages_the_targets_beyond_far_from_the_eviction():
    kl = torch.arange(10, dtype=torch.float64)  # row f: target N + f, d_tau = f
    assert Fidelity(far=6).position_metrics(kl)["kl_far"] == pytest.approx((7 + 8 + 9) / 3)
    assert np.isnan(Fidelity(far=9).position_metrics(kl)["kl_far"])


def test_the_judged_method_and_oracle_are_never_the_best_whatever_their_names():
    kl = {("mine" if k == "distilled" else "oracle2" if k == "fi_oracle" else k): v for k, v in KL.items()}
    g = gap_closed(results(kl), n_resamples=200, method="mine", oracle="oracle2").set_index("metric").loc["kl"]
    want = gap_closed(results(KL), n_resamples=200).set_index("metric").loc["kl"]
    assert g["best"] == "snapkv" and g["gap_closed"] == pytest.approx(want["gap_closed"], rel=1e-12)


def test_the_judged_method_in_another_setting_is_never_the_best():
    """A variant of the judged method (``distilled:head_mix=0``, better than every deployable method
    here) is not "the best deployable method": G still measures against snapkv."""
    kl = {**KL, "distilled:head_mix=0": [0.2] * 6, "fi_oracle:n_sink=0": [0.05] * 6}
    g = gap_closed(results(kl), n_resamples=200).set_index("metric").loc["kl"]
    want = gap_closed(results(KL), n_resamples=200).set_index("metric").loc["kl"]
    assert g["best"] == "snapkv" and g["gap_closed"] == pytest.approx(want["gap_closed"], rel=1e-12)
