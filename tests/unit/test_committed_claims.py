"""The committed claims tables (docs/tables/claims_*.csv) keep the rules they were made under:
every interval excludes 0 exactly when the unadjusted p < 0.05, Holm over the declared family
reproduces the headline's adjusted p, and the family is what docs/statistics.md declares; so does the
distilled compressor's paired table (docs/tables/distill_fidelity_paired.csv)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from forward_influence.analysis.family import PRIMARY_MODE
from forward_influence.analysis.inference import holm

TABLES = Path(__file__).resolve().parents[2] / "docs" / "tables"
CLAIMS = sorted(p for p in TABLES.glob("claims_*.csv") if not p.stem.endswith("_documents") and p.stem != "claims_runs")
ALPHA = 0.05


@pytest.mark.parametrize("path", CLAIMS, ids=[p.stem for p in CLAIMS])
def test_interval_excludes_zero_exactly_when_p_is_below_alpha(path):
    t = pd.read_csv(path)
    t = t[t["p_value"].notna()]
    assert len(t), path
    excludes = (t["ci_low"] > 0) | (t["ci_high"] < 0)
    assert (excludes == (t["p_value"] < ALPHA)).all(), t.loc[excludes != (t["p_value"] < ALPHA)]


def test_holm_over_the_declared_family_reproduces_the_headline():
    head = pd.read_csv(TABLES / "claims_headline.csv", dtype={"claim": str})
    assert len(head) == 2 * len(PRIMARY_MODE)  # 2 corpora x 4 claims, declared in advance
    assert (head["mode"] == head["claim"].map(PRIMARY_MODE)).all() and (head["reading"] == "primary").all()
    np.testing.assert_allclose(holm(head["p_value"].to_numpy()), head["p_adjusted"].to_numpy(), rtol=1e-12)
    rep = pd.read_csv(TABLES / "claims_replication.csv", dtype={"claim": str}).dropna(subset=["p_value"])
    for _, g in rep.groupby("replication"):
        np.testing.assert_allclose(holm(g["p_value"].to_numpy()), g["p_adjusted"].to_numpy(), rtol=1e-12)


def test_the_distilled_paired_table_inverts_its_tests_and_holm_covers_every_row():
    t = pd.read_csv(TABLES / "distill_fidelity_paired.csv")
    assert len(t) == 32  # 2 directions x 2 budgets x 2 metrics x 4 references, as docs/benchmarks.md says
    excludes = (t["diff_low"] > 0) | (t["diff_high"] < 0)
    assert (excludes == (t["p_value"] < ALPHA)).all(), t.loc[excludes != (t["p_value"] < ALPHA)]
    np.testing.assert_allclose(holm(t["p_value"].to_numpy()), t["p_holm"].to_numpy(), rtol=1e-12)
