"""The Fisher estimate of FI (tier 1: tiny random models; one CLI-level run on the embedded model): the tests on the
embedded SmolLM2-135M; the fast ones and the topic's notes are in tests/unit/test_fisher.py."""

from __future__ import annotations

import pytest


def test_measure_fisher_method_tables(smollm, tmp_path):
    from forward_influence import InputError, MeasureConfig
    from forward_influence.measurement.run import measure

    doc = tmp_path / "d.txt"
    doc.write_text("The Loire is the longest river in France. It flows north and west to the Atlantic. " * 10)
    res = measure(
        MeasureConfig(
            doc=str(doc),
            n_prefix=(64,),
            n_future=32,
            stride=2,
            method="fisher",
            samples=4,
            fisher_blocks=2,
            progress=False,
        ),
        smollm,
    )
    assert res.meta["method"] == "fisher" and res.meta["noise_floor_max"] is None
    assert (res.summary["method"] == "fisher").all() and len(res.summary) == 32
    assert len(res.influence) == 64 and set(res.influence.target_pos) == {64 + 7, 64 + 23}
    assert (res.influence.kl >= 0).all() and (res.summary.fi_total_se > 0).all()
    assert res.summary.fi_total.idxmax() == res.summary.source_pos.idxmin()  # the sink dominates here too
    with pytest.raises(InputError, match="--method fisher"):
        MeasureConfig(mode="sliding", method="fisher").validate()
