"""Methods that read the attention of the most recent queries: SnapKV,
PyramidKV (SnapKV with layer-dependent budgets) and TOVA."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from forward_influence.compress.base import Compressor, LayerView, Needs, n_kept, register
from forward_influence.measurement import scores


@register
@dataclass(frozen=True)
class SnapKV(Compressor):
    """SnapKV (Li et al., 2024): the mean attention that the last ``window``
    queries give each entry, averaged over the query heads of its KV group
    after average-pooling over ``kernel`` neighbouring entries (zero padding
    at the ends).

    *Budget at least the window* (``n_keep >= w``, ``w = min(window, queries
    seen)``): the window's own entries are kept (``+inf``) and only the entries
    before it are scored and pooled — kvpress's SnapKVPress, position for
    position.

    *Budget below the window* (``n_keep < w``): the window can no longer be
    kept whole, so every entry competes by its score, the window's own entries
    included, all pooled as one row. An entry's score is then the mean
    attention it receives from the window's queries *that can see it* (all
    ``w`` for the entries before the window, so their scores are unchanged;
    ``i + 1`` for the entry ``i`` places before the last). Dividing by all
    ``w`` instead would count the queries that precede an entry as giving it
    nothing and drop the newest entries first (SmolLM2, three shared papers,
    1,024-token prefix cut to 32 / 48 entries: mean KL of the next 128 tokens
    0.58 / 0.49 against 0.50 / 0.43, worse on 5 of the 6 pairs). Ties go to
    the more recent entry
    (:func:`~forward_influence.compress.top_entries`). kvpress gives the
    window the row's maximum there and lets ``topk`` choose among the ties.

    Shapes: queries ``(Hq, w, D)`` over entries ``(Hkv, n, D)`` →
    ``(Hkv, n)``.
    """

    window: int = 64
    kernel: int = 5
    name = "snapkv"

    def needs(self) -> Needs:
        return Needs(recent_queries=self.window)

    def score(self, view: LayerView) -> torch.Tensor:
        w = min(self.window, view.queries.shape[1])
        q, qpos = view.queries[:, -w:], view.query_positions[-w:]  # (Hq, w, D), (w,)
        hkv, n = view.positions.shape
        mean = scores.window_attention(q, view.keys, qpos, view.positions, view.scaling)  # (Hq, n)
        g = mean.shape[0] // hkv
        if view.n_keep < w:  # the window does not fit: every entry competes
            seen_by = w - torch.searchsorted(
                qpos, view.positions.contiguous()
            )  # (Hkv, n) window queries at or after each entry
            mean = mean * (w / seen_by.clamp_min(1)).repeat_interleave(g, dim=0)  # (Hq, n) mean over those queries
            return scores.pooled_group_mean(mean, hkv, self.kernel)  # (Hkv, n)
        per_kv = mean.view(hkv, g, n)  # (Hkv, g, n) the query heads of each KV head
        body = (view.positions < qpos[0]).sum(1)  # (Hkv,) entries before the window (the first ones of each head)
        out = torch.full((hkv, n), float("inf"), dtype=torch.float32, device=view.keys.device)
        for b in body.unique().tolist():  # one pass unless earlier cuts left the heads unequal windows
            heads = (body == b).nonzero()[:, 0]  # (h,)
            if b > 0:
                rows = per_kv[heads, :, :b].reshape(-1, b)  # (h g, b)
                out[heads, :b] = scores.pooled_group_mean(rows, len(heads), self.kernel)  # (h, b)
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
