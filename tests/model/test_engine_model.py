"""Exactness of the ablation engine on tiny random models (tier 1): the tests on the embedded SmolLM2-135M; the fast
ones and the topic's notes are in tests/unit/test_engine.py."""

from __future__ import annotations

import numpy as np
import torch
from conftest import FP32_PRECISION_FLOOR

from forward_influence.measurement.engine import Ablation, ForwardInfluenceEngine


def test_precision_floor_predicts_bfloat16_error(smollm):
    """On the embedded model, the bfloat16 engine's error against float32 is of
    the size of its precision floor (measured at N=512, F=128: median error
    6.9e-4, median floor 6.1e-4), while the batched-vs-lone noise floor
    misses most of it; in float32 the floor is ~1e-12."""
    import copy

    from forward_influence.measurement.documents import load_documents, tokenize

    n, f = 160, 48
    ids = tokenize(smollm.tokenizer, load_documents(None)[0], max_tokens=n + f).input_ids
    abl = [Ablation((p,)) for p in range(1, n, 20)]
    exact = ForwardInfluenceEngine(smollm.model, batch_size=8).split(ids, n, f, abl)
    assert np.median(exact.precision_floor) < FP32_PRECISION_FLOOR
    bf16 = copy.deepcopy(smollm.model).to(torch.bfloat16)
    low = ForwardInfluenceEngine(bf16, batch_size=8).split(ids, n, f, abl)
    err = np.median(np.abs(low.kl - exact.kl))
    floor = np.median(low.precision_floor)
    print(f"bf16 median error {err:.2e}, precision floor {floor:.2e}, noise floor {np.median(low.noise_floor):.2e}")
    assert floor / 10 < err < floor * 10, (err, floor)
    assert floor > 1e3 * np.median(exact.precision_floor)
