"""H2O (Zhang et al., 2023): heavy hitters by accumulated attention, plus the
most recent entries."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from forward_influence.compress.base import Compressor, LayerView, Needs, register
from forward_influence.hf.attention import AttentionTap
from forward_influence.measurement import scores


@register
@dataclass(frozen=True)
class H2O(Compressor):
    """Keeps the ``recent_fraction`` of the layer budget that is most recent,
    and fills the rest with the entries that received the most attention,
    summed over every query that has seen them (prompt and generated tokens),
    averaged over the query heads of a KV group.

    State: ``entry:acc`` ``(Hkv, n)`` float64, updated by :meth:`observe` for
    each block of queries (in prefill, the whole ``T x T`` causal attention in
    query chunks).
    """

    recent_fraction: float = 0.5
    name = "h2o"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.recent_fraction < 1.0:
            raise ValueError(f"recent_fraction must be in [0, 1), got {self.recent_fraction}")

    def needs(self) -> Needs:
        return Needs(state=True)

    def observe(self, tap: AttentionTap, positions: torch.Tensor, keys: torch.Tensor, state: dict) -> None:
        hkv, n = positions.shape
        c = tap.query.shape[1]
        qpos = torch.arange(tap.start, tap.start + c, device=positions.device)
        acc = scores.cumulative_attention(tap.query, keys, qpos, positions, tap.scaling)  # (Hq, n)
        acc = acc.view(hkv, -1, n).mean(1)  # (Hkv, n)
        old = state.get("entry:acc")
        if old is not None:
            acc[:, : old.shape[1]] += old
        state["entry:acc"] = acc

    def score(self, view: LayerView) -> torch.Tensor:
        out = view.state["entry:acc"].clone()  # (Hkv, n)
        n_recent = int(self.recent_fraction * view.n_keep)
        if n_recent > 0:
            out[:, -n_recent:] = float("inf")  # entries are in position order
        return out
