"""The plain Cache-API path: a ``DynamicCache`` prefill, an entry removed, a forward over it; and a
full forward with a 4-D mask. The naive reference loop of the benchmarks and the tests' oracle."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from forward_influence.hf import anatomy


def cache_kwarg(model: Any) -> str:
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@torch.no_grad()
def prefill_cache(model: Any, input_ids: torch.Tensor) -> Any:
    """A ``DynamicCache`` holding ``input_ids`` ``(T,)``, from a normal forward."""
    from transformers import DynamicCache

    cache = DynamicCache()
    ids = input_ids.to(model.device)[None]
    model(input_ids=ids, use_cache=True, **{cache_kwarg(model): cache})
    return cache


def cache_layers(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer ``(K, V)`` ``(B, Hkv, T, D)`` of a ``DynamicCache``."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache))  # transformers < 4.56


def cache_without(cache: Any, position: int | None) -> Any:
    """A copy of ``cache`` with entry ``position`` removed at every layer."""
    from transformers import DynamicCache

    new = DynamicCache()
    for layer, (k, v) in enumerate(cache_layers(cache)):
        if position is None:
            k2, v2 = k.clone(), v.clone()
        else:
            keep = torch.ones(k.shape[2], dtype=torch.bool, device=k.device)
            keep[position] = False
            k2, v2 = k[:, :, keep], v[:, :, keep]  # copies
        new.update(k2, v2, layer)
    return new


@torch.no_grad()
def forward_with_cache(model: Any, cache: Any, block_ids: torch.Tensor, start: int) -> torch.Tensor:
    """HF forward of ``block_ids`` ``(C,)`` on ``cache`` at true positions ``start..``; float32 logits ``(C, V)``."""
    ids = block_ids.to(model.device)[None]  # (1, C)
    pos = anatomy.position_ids(start, ids.shape[1], 1, model.device)  # (1, C)
    out = model(input_ids=ids, position_ids=pos, use_cache=True, **{cache_kwarg(model): cache})
    return out.logits[0].float()


@torch.no_grad()
def full_forward_hiding(
    model: Any, input_ids: torch.Tensor, hide: int | Sequence[int] | None, from_row: int
) -> torch.Tensor:
    """Independent check: one full forward with a 4-D mask hiding column(s)
    ``hide`` from rows ``>= from_row`` at every layer. Float32 logits ``(T, V)``."""
    t = input_ids.shape[0]
    dtype = model.dtype
    neg = torch.finfo(dtype).min
    mask = torch.zeros(1, 1, t, t, dtype=dtype, device=model.device)  # (1, 1, T, T) additive
    mask.masked_fill_(torch.ones(t, t, dtype=torch.bool, device=model.device).triu_(1), neg)
    if hide is not None:
        cols = [hide] if isinstance(hide, int) else list(hide)
        mask[0, 0, from_row:, cols] = neg
    out = model(input_ids=input_ids.to(model.device)[None], attention_mask=mask, use_cache=False)
    return out.logits[0].float()


# --------------------------------------------------------------------------- #
# An attention module's call, as a forward hook sees it (the kvpress adapter)
# --------------------------------------------------------------------------- #


@dataclass
class AttentionCall:
    """What transformers passed one attention module (read from its forward kwargs).

    Attributes
    ----------
    hidden : torch.Tensor
        ``(1, T, Dm)`` the attention's input hidden states.
    cache : transformers.Cache
        The model's cache (``cache`` from transformers 5.24, ``past_key_values`` before).
    cos, sin : torch.Tensor
        ``(T, D)`` the rotary embedding of the block's positions (row 0).
    prefill : bool
        Whether this block is the first the cache saw (the cache holds exactly its ``T`` tokens).
    """

    hidden: torch.Tensor
    cache: Any
    cos: torch.Tensor
    sin: torch.Tensor
    prefill: bool


def attention_call(module: Any, kwargs: dict) -> AttentionCall:
    """Read an attention module's forward kwargs (a ``register_forward_hook(..., with_kwargs=True)`` hook's)."""
    hidden = kwargs["hidden_states"]
    cache = next((kwargs[k] for k in ("cache", "past_key_values") if kwargs.get(k) is not None), None)
    if cache is None:
        raise ValueError("the attention was called without a cache (use_cache=False?)")
    cos, sin = kwargs["position_embeddings"]  # (1, T, D)
    t = hidden.shape[1]
    return AttentionCall(hidden, cache, cos[0], sin[0], cache.get_seq_length(module.layer_idx) == t)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of ``x`` ``(H, w, D)`` at ``cos``/``sin`` ``(w, D)`` (Llama's rotate-half convention)."""
    d = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., d:], x[..., :d]], dim=-1) * sin


def gather_entries(keys: torch.Tensor, values: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The entries ``idx`` ``(Hkv, n_keep)`` (from :func:`forward_influence.compress.base.top_entries`) of a
    layer's ``keys`` and ``values`` ``(B, Hkv, n, D)``: new contiguous tensors ``(B, Hkv, n_keep, D)``, the cut
    of every cache (ours and kvpress's).

    >>> k = torch.arange(8.0).view(1, 2, 4, 1)
    >>> gather_entries(k, -k, torch.tensor([[0, 3], [1, 2]]))[0][0, :, :, 0].tolist()
    [[0.0, 3.0], [5.0, 6.0]]
    """
    gidx = idx[None, :, :, None].expand(keys.shape[0], -1, -1, keys.shape[-1])  # (B, Hkv, n_keep, D)
    return keys.gather(2, gidx), values.gather(2, gidx)


def keep_entries(cache: Any, layer: int, idx: torch.Tensor) -> None:
    """Keep, in ``cache``'s ``layer`` (a ``DynamicLayer``), the entries ``idx`` ``(Hkv, n_keep)`` of each KV head."""
    kept = gather_entries(*cache_layers(cache)[layer], idx)
    if hasattr(cache, "layers"):
        cache.layers[layer].keys, cache.layers[layer].values = kept
    else:  # transformers < 4.56
        cache.key_cache[layer], cache.value_cache[layer] = kept
