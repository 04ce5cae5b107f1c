"""The causality rule (forward_influence.measurement.signals): a selection signal of a source
may read only what a compressor has at its eviction time tau. Two inputs that
agree before tau and differ from tau on must give bitwise identical signals.

The check itself is tested: a deliberately leaky signal (H2O accumulated over
every query of the document, as this toolkit did before the rule) is caught.
"""

from __future__ import annotations

import torch
from helpers.causality import DELAY, SPLITS, T, _Doc, changed_from, ids, leaks, signals  # noqa: F401, F811


def test_selection_signals_see_only_the_past_on_the_embedded_model(smollm):
    ids = torch.randint(0, smollm.model.config.vocab_size, (T,), generator=torch.Generator().manual_seed(11))
    assert leaks(smollm.model, ids) == []
