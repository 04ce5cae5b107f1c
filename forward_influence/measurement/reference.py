"""The naive reference loop the engine is checked and benchmarked against.

For the reference and each ablated position: copy the prefix ``DynamicCache``, delete the
entry, run the future through the stock transformers forward
(:mod:`forward_influence.hf.cache_api`); KL in float32 as most code writes it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

from forward_influence.hf import cache_api


def naive_split_logits(
    model: Any, input_ids: torch.Tensor, n_prefix: int, n_future: int, positions: Iterable[int]
) -> Iterator[torch.Tensor]:
    """The naive reference loop: for the reference (first) and each ablation, copy
    the prefix cache, delete the entry, run the future through the stock HF
    forward. Yields float32 logits ``(F, V)``: reference first, then one per position."""
    cache = cache_api.prefill_cache(model, input_ids[:n_prefix])
    block = input_ids[n_prefix : n_prefix + n_future]
    yield cache_api.forward_with_cache(model, cache_api.cache_without(cache, None), block, n_prefix)
    for i in positions:
        yield cache_api.forward_with_cache(model, cache_api.cache_without(cache, int(i)), block, n_prefix)


def float32_kl(ref_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL as most code writes it: float32 log-softmax, float32 sum. ``(F,)``."""
    lp, lq = torch.log_softmax(ref_logits, -1), torch.log_softmax(logits, -1)
    return (lp.exp() * (lp - lq)).sum(-1)


def naive_split_kl(
    model: Any, input_ids: torch.Tensor, n_prefix: int, n_future: int, positions: Iterable[int]
) -> np.ndarray:
    """KL rows ``(A, F)`` of the naive loop (:func:`naive_split_logits`), float32 KL."""
    it = naive_split_logits(model, input_ids, n_prefix, n_future, positions)
    ref = next(it)
    rows = [float32_kl(ref, lg).double().cpu().numpy() for lg in it]
    return np.stack(rows) if rows else np.zeros((0, n_future))
