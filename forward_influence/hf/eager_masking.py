"""A hand-masked eager attention: the tests' independent oracle for per-layer and per-KV-head ablation.

It replaces the modeling module's ``eager_attention_forward`` within a block (restored on exit), so it
touches transformers' internals and lives in this package.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from forward_influence.hf import anatomy


@contextlib.contextmanager
def eager_hiding(model: Any, layer: int, column: int, from_row: int, heads: Sequence[int] | None) -> Iterator[None]:
    """Within the block, the eager attention of ``layer`` also hides ``column``
    from the rows ``>= from_row`` (at the query heads ``heads``, or all)."""
    module = sys.modules[type(anatomy.decoder_layers(model)[layer].self_attn).__module__]
    orig = module.eager_attention_forward

    def masked(mod: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, **kw: Any) -> Any:
        if mod.layer_idx == layer:
            mask = mask.expand(q.shape[0], q.shape[1], *mask.shape[2:]).clone()  # (B, Hq, T, T)
            rows = mask[:, list(heads)] if heads is not None else mask
            rows[..., from_row:, column] = torch.finfo(mask.dtype).min
            if heads is not None:
                mask[:, list(heads)] = rows
        return orig(mod, q, k, v, mask, **kw)

    module.eager_attention_forward = masked
    try:
        yield
    finally:
        module.eager_attention_forward = orig
