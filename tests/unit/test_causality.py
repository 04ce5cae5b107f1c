"""The causality rule (forward_influence.measurement.signals): a selection signal of a source
may read only what a compressor has at its eviction time tau. Two inputs that
agree before tau and differ from tau on must give bitwise identical signals.

The check itself is tested: a deliberately leaky signal (H2O accumulated over
every query of the document, as this toolkit did before the rule) is caught.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_model

from forward_influence.measurement import scores
from forward_influence.measurement.collector import SignalCollector, registered


class LeakyH2O(SignalCollector):
    """H2O over every query of the document (the pre-rule definition)."""

    def on_tap(self, tap):
        super().on_tap(tap)
        q, k = tap.query, tap.key
        pos = torch.arange(q.shape[1])
        acc = scores.cumulative_attention(q, k, pos, pos, tap.scaling)  # every query, future included
        seen = torch.arange(q.shape[1], 0, -1, dtype=torch.float64)
        self.signal("attn_h2o").per_layer[:, tap.layer] = self.ctx.group_mean(acc / seen)[None]


class LeakySnapKV(SignalCollector):
    """SnapKV at the document end for every source (the pre-rule sliding definition)."""

    def on_tap(self, tap):
        super().on_tap(tap)
        q, k = tap.query, tap.key
        t, w = q.shape[1], self.cfg.window
        pos = torch.arange(t)
        mean = scores.window_attention(q[:, t - w :], k, pos[t - w :], pos, tap.scaling)
        pooled = scores.pooled_group_mean(mean, self.ctx.n_kv, self.cfg.kernel).double()
        self.signal("attn_snapkv").per_layer[:, tap.layer] = pooled[None]


from helpers.causality import DELAY, SPLITS, T, _Doc, changed_from, ids, leaks, signals  # noqa: E402, F401, F811


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_selection_signals_see_only_the_past(arch, attn, ids):
    """Every registered signal (the leak check iterates over the registry)."""
    assert leaks(tiny_model(arch, attn=attn), ids) == []


def test_signals_exist_for_every_evicted_source(ids):
    """The comparison above is not vacuous: every selection signal has finite
    values for the sources it compares (a NaN == NaN pass would hide a leak)."""
    tok, src = signals(tiny_model(), ids, splits=SPLITS)
    for n in SPLITS:
        s = src[src.split_pos == n]
        assert len(s) == n and np.isfinite(s[["attn_snapkv", "attn_h2o"]].to_numpy()).all()
    tok, src = signals(tiny_model(), ids, delay=DELAY)
    assert len(src) == T - DELAY + 1 and np.isfinite(src[["attn_snapkv", "attn_h2o"]].to_numpy()).all()
    names = [s.name for s in registered() if s.kind == "token"]
    assert np.isfinite(tok[names].to_numpy()[1:]).all()  # entropy_in is NaN at 0


@pytest.mark.parametrize("leaky, where", [(LeakyH2O, "attn_h2o"), (LeakySnapKV, "attn_snapkv")])
def test_a_leaky_signal_is_caught(leaky, where, ids):
    found = leaks(tiny_model(), ids, collector=leaky)
    assert found and all(where in f for f in found)
    assert any(f.startswith("split") for f in found) and any(f.startswith("sliding") for f in found)
