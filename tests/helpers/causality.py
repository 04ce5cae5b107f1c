"""Shared by tests/*/test_causality*.py."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from forward_influence.hf import forwards
from forward_influence.measurement.collector import SignalCollector, SignalConfig, registered

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
    pre = forwards.record_prefill(model, ids, on_tap=col.on_tap, layer_hooks=col.on_layer)
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
    selection = [s.name for s in registered()]  # every registered signal may select tokens: each obeys the rule
    for n in SPLITS:  # split mode: each split on its own
        (tok_a, src_a), (tok_b, src_b) = (
            signals(model, x, collector, splits=SPLITS) for x in (ids, changed_from(ids, n, vocab))
        )
        for name in selection:
            if name in tok_a:
                a, b = tok_a[name].to_numpy()[:n], tok_b[name].to_numpy()[:n]
            else:
                a = src_a.loc[src_a.split_pos == n, name].to_numpy()
                b = src_b.loc[src_b.split_pos == n, name].to_numpy()
            if not np.array_equal(a, b, equal_nan=True):
                found.append(f"split N={n}: {name}")
    for first in (30, 50):  # sliding mode: sources with i + D <= the first changed position
        (tok_a, src_a), (tok_b, src_b) = (
            signals(model, x, collector, delay=DELAY) for x in (ids, changed_from(ids, first, vocab))
        )
        for name in selection:
            frame_a, frame_b = (tok_a, tok_b) if name in tok_a else (src_a, src_b)
            keep = (frame_a["pos"] + DELAY <= first).to_numpy()
            if not np.array_equal(frame_a[name].to_numpy()[keep], frame_b[name].to_numpy()[keep], equal_nan=True):
                found.append(f"sliding first change {first}: {name}")
    return found


@pytest.fixture
def ids():
    return torch.randint(0, 96, (T,), generator=torch.Generator().manual_seed(5))
