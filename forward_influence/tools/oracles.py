"""Independent oracles for the engine: one full forward per ablation with the hiding written as a 4-D mask
(:func:`forward_influence.hf.cache_api.full_forward_hiding`), or an eager attention masked by hand at one
layer and KV head's query group. Nothing here shares code with the engine's batched ablation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from forward_influence.hf import anatomy, cache_api
from forward_influence.hf.eager_masking import eager_hiding
from forward_influence.measurement.kl import centred_kl


def oracle_split_kl(model: Any, ids: torch.Tensor, n: int, f: int, positions: Sequence[int]) -> np.ndarray:
    """``(A, F)`` KL of hiding each position from the rows ``>= n`` of one full forward."""
    ref = cache_api.full_forward_hiding(model, ids[: n + f], None, n)[n : n + f]
    return np.stack(
        [
            centred_kl(ref, cache_api.full_forward_hiding(model, ids[: n + f], i, n)[n : n + f]).cpu().numpy()
            for i in positions
        ]
    )


def oracle_sliding_kl(
    model: Any, ids: torch.Tensor, sources: Sequence[int], horizon: int, delay: int = 1
) -> np.ndarray:
    """``(S, H)`` KL of hiding source ``s`` from the rows from ``tau = s + delay``
    on (queries ``tau..tau+H-1``)."""
    full = cache_api.full_forward_hiding(model, ids, None, 0)
    rows = []
    for s in sources:
        tau = s + delay
        abl = cache_api.full_forward_hiding(model, ids, s, tau)
        rows.append(centred_kl(full[tau : tau + horizon], abl[tau : tau + horizon]).cpu().numpy())
    return np.stack(rows)


def oracle_layer_kl(
    model: Any,
    ids: torch.Tensor,
    n: int,
    f: int,
    pos: int,
    layer: int,
    kv_head: int | None = None,
    heads: Sequence[int] | None = None,
) -> np.ndarray:
    """``(F,)`` KL of hiding ``pos`` at one layer (and one KV head: its group of
    query heads, contiguous as transformers' ``repeat_kv``; or the query heads
    ``heads`` given explicitly) from the rows ``>= n``, in the model's eager attention."""
    if model.config._attn_implementation != "eager":
        raise ValueError("oracle_layer_kl needs a model with attn_implementation='eager'")
    if kv_head is not None and heads is not None:
        raise ValueError("give kv_head or heads, not both")
    g = model.config.num_attention_heads // anatomy.n_kv_heads(model)
    heads = heads if kv_head is None else range(kv_head * g, (kv_head + 1) * g)
    ref = cache_api.full_forward_hiding(model, ids[: n + f], None, n)[n:]
    with eager_hiding(model, layer, pos, n, heads):
        abl = cache_api.full_forward_hiding(model, ids[: n + f], None, n)[n:]
    return centred_kl(ref, abl).cpu().numpy()
