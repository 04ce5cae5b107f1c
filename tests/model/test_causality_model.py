"""The causality rule (forward_influence.measurement.signals): a selection signal of a source: the tests on the
embedded SmolLM2-135M; the fast ones and the topic's notes are in tests/unit/test_causality.py."""

from __future__ import annotations

import torch
from helpers.causality import DELAY, SPLITS, T, _Doc, changed_from, ids, leaks, signals  # noqa: F401, F811


def test_selection_signals_see_only_the_past_on_the_embedded_model(smollm):
    ids = torch.randint(0, smollm.model.config.vocab_size, (T,), generator=torch.Generator().manual_seed(11))
    assert leaks(smollm.model, ids) == []
