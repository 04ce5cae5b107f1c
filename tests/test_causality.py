"""The causality rule (forward_influence.measurement.signals): a selection signal of a source
may read only what a compressor has at its eviction time tau. Two inputs that
agree before tau and differ from tau on must give bitwise identical signals.

The check itself is tested: a deliberately leaky signal (H2O accumulated over
every query of the document, as this toolkit did before the rule) is caught.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_model

from forward_influence.hf import forwards
from forward_influence.measurement.signals import SELECTION_SIGNALS, SignalCollector, SignalConfig

T = 64
SPLITS = (24, 40)
DELAY = 6


class _Doc:
    """The minimum of a TokenizedDocument that ``SignalCollector.finish`` reads."""

    def __init__(self, ids: torch.Tensor):
        self.input_ids = ids
        self.doc = type("D", (), {"doc_id": "d", "text": ""})()
        self.offsets = np.zeros((len(ids), 2), dtype=np.int64)


def signals(model, ids: torch.Tensor, collector=SignalCollector, **cfg) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(token signals, source signals) of ``ids`` ``(T,)``."""
    col = collector(model, len(ids), SignalConfig(words=False, window=8, **cfg))
    pre = forwards.record_prefill(model, ids, col.on_attention, col.on_layer)
    tokens = pd.DataFrame({"doc_id": pd.Series(["d"] * len(ids), dtype="string"), "pos": np.arange(len(ids))})
    tokens, source, _ = col.finish(pre, tokens, _Doc(ids))
    return tokens, source


def changed_from(ids: torch.Tensor, start: int, vocab: int, seed: int = 7) -> torch.Tensor:
    """``ids`` with every token from ``start`` on redrawn (each one different)."""
    out = ids.clone()
    g = torch.Generator().manual_seed(seed)
    out[start:] = (ids[start:] + torch.randint(1, vocab, (len(ids) - start,), generator=g)) % vocab
    return out


def leaks(model, ids, collector=SignalCollector) -> list[str]:
    """Every (mode, tau, signal) whose values for sources evicted by tau change
    when the input changes from tau on; [] when the rule holds."""
    found = []
    vocab = model.config.vocab_size
    for n in SPLITS:  # split mode: each split on its own
        (tok_a, src_a), (tok_b, src_b) = (signals(model, x, collector, splits=SPLITS) for x in (ids, changed_from(ids, n, vocab)))
        for name in SELECTION_SIGNALS:
            if name in tok_a:
                a, b = tok_a[name].to_numpy()[:n], tok_b[name].to_numpy()[:n]
            else:
                a = src_a.loc[src_a.split_pos == n, name].to_numpy()
                b = src_b.loc[src_b.split_pos == n, name].to_numpy()
            if not np.array_equal(a, b, equal_nan=True):
                found.append(f"split N={n}: {name}")
    for first in (30, 50):  # sliding mode: sources with i + D <= the first changed position
        (tok_a, src_a), (tok_b, src_b) = (signals(model, x, collector, delay=DELAY) for x in (ids, changed_from(ids, first, vocab)))
        for name in SELECTION_SIGNALS:
            frame_a, frame_b = (tok_a, tok_b) if name in tok_a else (src_a, src_b)
            keep = (frame_a["pos"] + DELAY <= first).to_numpy()
            if not np.array_equal(frame_a[name].to_numpy()[keep], frame_b[name].to_numpy()[keep], equal_nan=True):
                found.append(f"sliding first change {first}: {name}")
    return found


@pytest.fixture
def ids():
    return torch.randint(0, 96, (T,), generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_selection_signals_see_only_the_past(arch, attn, ids):
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
    assert np.isfinite(tok[[c for c in SELECTION_SIGNALS if c in tok]].to_numpy()[1:]).all()  # entropy_in is NaN at 0


class LeakyH2O(SignalCollector):
    """H2O over every query of the document (the pre-rule definition)."""

    def on_attention(self, layer, query, key, scaling):
        super().on_attention(layer, query, key, scaling)
        from forward_influence.measurement import scores

        q, k = query[0], key[0]
        pos = torch.arange(q.shape[1])
        acc = scores.cumulative_attention(q, k, pos, pos, scaling)  # every query, future included
        seen = torch.arange(q.shape[1], 0, -1, dtype=torch.float64)
        self.h2o[:, layer] = self._group_mean(acc / seen)[None]


class LeakySnapKV(SignalCollector):
    """SnapKV at the document end for every source (the pre-rule sliding definition)."""

    def on_attention(self, layer, query, key, scaling):
        super().on_attention(layer, query, key, scaling)
        from forward_influence.measurement import scores

        q, k = query[0], key[0]
        t, w = q.shape[1], self.cfg.window
        pos = torch.arange(t)
        mean = scores.window_attention(q[:, t - w :], k, pos[t - w :], pos, scaling)
        self.snap[:, layer] = scores.pooled_group_mean(mean, self.n_kv, self.cfg.kernel).double()[None]


@pytest.mark.parametrize("leaky, where", [(LeakyH2O, "attn_h2o"), (LeakySnapKV, "attn_snapkv")])
def test_a_leaky_signal_is_caught(leaky, where, ids):
    found = leaks(tiny_model(), ids, collector=leaky)
    assert found and all(where in f for f in found)
    assert any(f.startswith("split") for f in found) and any(f.startswith("sliding") for f in found)


@pytest.mark.model
def test_selection_signals_see_only_the_past_on_the_embedded_model(smollm):
    ids = torch.randint(0, smollm.model.config.vocab_size, (T,), generator=torch.Generator().manual_seed(11))
    assert leaks(smollm.model, ids) == []
