"""Methods that read the attention of the most recent queries: SnapKV,
PyramidKV (SnapKV with layer-dependent budgets) and TOVA."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import scores
from .base import Compressor, LayerView, n_kept, register


@register
@dataclass(frozen=True)
class SnapKV(Compressor):
    """SnapKV (Li et al., 2024): the mean attention that the last ``window``
    queries give each earlier entry, averaged over the query heads of its KV
    group after average-pooling over ``kernel`` neighbouring entries. The
    window's own entries are always kept.

    Shapes: queries ``(Hq, window, D)`` over entries ``(Hkv, n, D)`` →
    ``(Hkv, n)``.
    """

    window: int = 64
    kernel: int = 5
    name = "snapkv"

    def recent_queries(self) -> int:
        return self.window

    def score(self, view: LayerView) -> torch.Tensor:
        w = min(self.window, view.queries.shape[1])
        q, qpos = view.queries[:, -w:], view.query_positions[-w:]  # (Hq, w, D), (w,)
        hkv, n = view.positions.shape
        in_window = view.positions >= qpos[0]  # (Hkv, n) the window's own entries: the last ones of every head
        body = n - int(in_window[0].sum())
        mean = scores.window_attention(q, view.keys, qpos, view.positions, view.scaling)  # (Hq, n)
        out = torch.full((hkv, n), float("inf"), dtype=torch.float32, device=view.keys.device)
        if body > 0:
            out[:, :body] = scores.pooled_group_mean(mean[:, :body], hkv, self.kernel)  # (Hkv, body)
        return out


@register
@dataclass(frozen=True)
class PyramidKV(SnapKV):
    """PyramidKV (Cai et al., 2024): SnapKV scores, budgets falling linearly
    from the first layer to the last and averaging to the global one.

    The schedule is KVCache-Factory's as kvpress writes it: with ``keep``
    entries per layer on average, ``min = keep / beta`` and
    ``max = 2 keep - min`` (capped at ``n - window``); layer ``l`` keeps
    ``round(max - l (max - min) / (L - 1))``. Where that pyramid would give a
    layer fewer entries than the window, every layer keeps ``keep`` (SnapKV).
    """

    beta: int = 20
    name = "pyramidkv"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta < 1:
            raise ValueError(f"beta must be >= 1, got {self.beta}")

    def layer_budget(self, layer: int, n_layers: int, n_tokens: int, keep: float) -> int:
        w = self.window
        min_num = keep / self.beta
        max_num = 2 * keep - min_num
        if max_num >= n_tokens - w:
            max_num = n_tokens - w
            min_num = 2 * keep - max_num
        if not (n_tokens >= max_num >= min_num >= w):
            return n_kept(keep, n_tokens)
        steps = (max_num - min_num) / (n_layers - 1) if n_layers > 1 else 0.0
        return int(min(n_tokens, max(1, round(max_num - layer * steps))))


@register
@dataclass(frozen=True)
class TOVA(Compressor):
    """TOVA (Oren et al., 2024): the attention of the last query, averaged over
    all query heads (one ranking shared by the KV heads); the last entry is
    always kept."""

    name = "tova"

    def score(self, view: LayerView) -> torch.Tensor:
        q, qpos = view.queries[:, -1:], view.query_positions[-1:]  # (Hq, 1, D)
        mean = scores.window_attention(q, view.keys, qpos, view.positions, view.scaling)  # (Hq, n)
        out = mean.mean(0, keepdim=True).expand(view.positions.shape).clone()  # (Hkv, n)
        out[view.positions >= qpos[0]] = float("inf")
        return out
