"""Methods that need no attention weights: full cache, random, StreamingLLM, KNorm."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from forward_influence.compress.base import Compressor, LayerView, n_kept, register


@register
@dataclass(frozen=True)
class Full(Compressor):
    """The uncompressed cache (the reference every method is compared with)."""

    name = "full"
    budget_free = True

    def score(self, view: LayerView) -> torch.Tensor:
        return torch.zeros(view.positions.shape, device=view.keys.device)

    def layer_budget(self, layer: int, n_layers: int, n_tokens: int, keep: float) -> int:
        return n_tokens


@register
@dataclass(frozen=True)
class Random(Compressor):
    """Uniformly random entries, drawn independently per layer, KV head and cut
    from ``(seed, layer, step)``."""

    seed: int = 0
    name = "random"
    inputs = ("seed",)

    def score(self, view: LayerView) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + view.step * 1009 + view.layer)
        return torch.rand(view.positions.shape, generator=gen).to(view.keys.device)


@register
@dataclass(frozen=True)
class StreamingLLM(Compressor):
    """StreamingLLM (Xiao et al., 2023): the first ``n_sink`` positions and the
    most recent entries. Scores are recency; the sinks are the base class's
    ``n_sink``, here 4 by default — StreamingLLM without sinks is a sliding
    window, and 4 is the paper's and kvpress's StreamingLLMPress's value."""

    n_sink: int = 4
    name = "streaming_llm"

    def score(self, view: LayerView) -> torch.Tensor:
        return view.positions.double()  # (Hkv, n) recency; sinks: Compressor.layer_scores


@register
@dataclass(frozen=True)
class KNorm(Compressor):
    """KNorm (Devoto et al., 2024): keep the keys with the *smallest* L2 norm."""

    name = "knorm"

    def score(self, view: LayerView) -> torch.Tensor:
        return -torch.linalg.vector_norm(view.keys, dim=-1, dtype=torch.promote_types(view.keys.dtype, torch.float32))


__all__ = ["Full", "KNorm", "Random", "StreamingLLM", "n_kept"]
