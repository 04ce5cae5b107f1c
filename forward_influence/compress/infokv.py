"""InfoKV (arXiv 2606.26875): attention scores mixed with an entropy score.

Per layer ``l``, entry ``j`` at position ``i`` scores

    s_l(j) = (1 - mix) N(a_l(j)) + mix N(H_k(i) * r_l(i))

with ``a_l`` the SnapKV score of that layer and KV head, ``H_k(i)`` the top-k
entropy of the distribution that predicted token ``i`` (prompt tokens: the
prefill logits, computed in chunks; generated tokens: their own sampling
distribution, at no cost), ``r_l(i) = 1 - cos(h_{l0}(i), h_l(i))`` the change
of the token's representation from the early layer ``l0`` to layer ``l``
(1 at ``l <= l0``), and ``N`` a normalisation over the entries of one KV head
(``rank``: ranks scaled to [0, 1]; ``max``: divided by the maximum;
``zscore``; ``sum``: divided by the sum). SnapKV's observation window stays
protected. The study publishes neither ``N`` nor ``mix``: the defaults are the
best fidelity of ``scripts/tune_infokv.py`` on the shared papers (README).

Cost over SnapKV: the logits of every prompt position (chunked; only their
top-k is kept), one cosine per token and layer, and — because the entropies
exist only once the prefill is complete — the full prompt cache is held until
then (``2 L Hkv T D`` elements; a per-layer press like kvpress's SnapKV can
cut each layer as soon as it is computed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import FeatureSpec, LayerView, TokenFeatures, register
from .snapkv import SnapKV

NORMS = ("rank", "max", "zscore", "sum")


def normalise(x: torch.Tensor, how: str) -> torch.Tensor:
    """Normalise each row of ``x`` ``(H, n)`` (finite values only).

    >>> normalise(torch.tensor([[1.0, 3.0, 2.0]]), "rank").tolist()
    [[0.0, 1.0, 0.5]]
    """
    if how == "rank":
        n = x.shape[1]
        ranks = x.argsort(dim=1).argsort(dim=1).to(torch.float32)  # (H, n)
        return ranks / max(1, n - 1)
    if how == "max":
        return x / x.amax(dim=1, keepdim=True).clamp_min(1e-30)
    if how == "zscore":
        return (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True).clamp_min(1e-30)
    if how == "sum":
        return x / x.sum(1, keepdim=True).clamp_min(1e-30)
    raise ValueError(f"unknown normalisation {how!r}; valid: {', '.join(NORMS)}")


@register
@dataclass(frozen=True)
class InfoKV(SnapKV):
    """InfoKV; fields beyond SnapKV's: ``mix`` (weight of the entropy score),
    ``topk`` (k of the entropy), ``early_layer`` (``l0``), ``norm``."""

    mix: float = 0.05
    topk: int = 10
    early_layer: int = 2
    norm: str = "zscore"
    name = "infokv"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.mix <= 1.0:
            raise ValueError(f"mix must be in [0, 1], got {self.mix}")
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; valid: {', '.join(NORMS)}")
        if self.topk < 2:
            raise ValueError(f"topk must be >= 2, got {self.topk}")

    def features(self) -> FeatureSpec:
        return FeatureSpec(topk=self.topk, early_layer=self.early_layer)

    def finish(self, scores: list[torch.Tensor], positions: list[torch.Tensor], features: TokenFeatures | None) -> list[torch.Tensor]:
        assert features is not None
        out = []
        for layer, (attn, pos) in enumerate(zip(scores, positions)):
            protected = torch.isinf(attn[0])  # (n,) the window: the same entries in every head
            body = int((~protected).sum())
            ent = features.entropy.to(pos.device)[pos] * features.rep_change[layer].to(pos.device)[pos]  # (Hkv, n)
            s = attn.clone()
            if body > 0:
                a, e = attn[:, :body], ent[:, :body]
                s[:, :body] = (1 - self.mix) * normalise(a, self.norm) + self.mix * normalise(e, self.norm)
            out.append(s)
        return out

    def score(self, view: LayerView) -> torch.Tensor:
        """The attention part (SnapKV's score); :meth:`finish` mixes in the entropy."""
        return super().score(view)
