"""InfoKV (arXiv 2606.26875): attention scores mixed with an entropy score.

Per layer ``l``, entry ``j`` at position ``i`` scores

    s_l(j) = (1 - mix) N(a_l(j)) + mix N(H_k(i) * r_l(i))

with ``a_l`` the SnapKV score of that layer and KV head, ``H_k(i)`` the top-k
entropy of the distribution that predicted token ``i`` (prompt tokens: the
prefill logits, computed in chunks; generated tokens: their own sampling
distribution, at no cost), ``r_l(i)`` the change of the token's
representation, and ``N`` a normalisation over the scored entries of one KV
head (``rank``: ranks scaled to [0, 1]; ``max``: divided by the maximum;
``zscore``; ``sum``: divided by the sum). Entries SnapKV keeps outright (its
window, when the budget holds it) and the ``n_sink`` sinks stay ``+inf`` and
are left out of ``N``.

The representation term, two readings (field ``rep``):

``per_layer`` (default)
    ``r_l(i) = 1 - cos(h_{l0}(i), h_l(i))``, the change from the early layer
    ``l0`` to layer ``l`` itself (1 at ``l <= l0``), so each layer's entropy
    score differs: the study describes the entropy as weighted by the token's
    representation change *at that layer* (docs/design.md §6.3).
``early_final``
    ``r(i) = 1 - cos(h_{l0}(i), h_{L-1}(i))``, the change from ``l0`` to the
    last layer's output, the same at every layer — the study's summary words
    "how much the token's hidden representation changed from an early layer
    to the final layer". Equal to ``per_layer`` at the last layer.

What is the study's and what is ours. *From the study*: a per-layer score
that combines an attention score with an entropy score; the entropy score is
the token's top-k predictive entropy weighted by how much its representation
changed; generated tokens' entropies come from their sampling distributions.
*Our readings of a formula it does not publish*: the normalisation ``N``;
the linear ``mix`` and its value; the representation term (which of the two
readings above, the product with the entropy, ``l0 = 2``, cosine on the
decoder layers' outputs); top-k's ``k = 10`` and taking the distribution that
*predicted* the token; SnapKV (window 64, kernel 5) as the attention score,
and protecting its window whenever the budget holds it (below that, every
entry competes, as in :class:`~forward_influence.compress.SnapKV`). The
defaults are the best fidelity of ``scripts/tune_infokv.py`` on the shared
papers (README).

Cost over SnapKV: the logits of every prompt position (chunked; only their
top-k is kept), one cosine per token and layer, and — because the entropies
exist only once the prefill is complete — the full prompt cache is held until
then (``2 L Hkv T D`` elements; a per-layer press like kvpress's SnapKV can
cut each layer as soon as it is computed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from forward_influence.compress.base import FeatureSpec, Needs, TokenFeatures, register
from forward_influence.compress.snapkv import SnapKV

NORMS = ("rank", "max", "zscore", "sum")
REPS = ("per_layer", "early_final")


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
    ``topk`` (k of the entropy), ``early_layer`` (``l0``), ``norm`` (``N``),
    ``rep`` (the representation term's reading: ``per_layer`` or
    ``early_final``; module docstring)."""

    mix: float = 0.05
    topk: int = 10
    early_layer: int = 2
    norm: str = "zscore"
    rep: str = "per_layer"
    name = "infokv"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.mix <= 1.0:
            raise ValueError(f"mix must be in [0, 1], got {self.mix}")
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; valid: {', '.join(NORMS)}")
        if self.rep not in REPS:
            raise ValueError(f"unknown rep {self.rep!r}; valid: {', '.join(REPS)}")
        if self.topk < 2:
            raise ValueError(f"topk must be >= 2, got {self.topk}")

    def needs(self) -> Needs:
        return Needs(recent_queries=self.window, features=FeatureSpec(topk=self.topk, early_layer=self.early_layer))

    def entropy_score(self, layer: int, positions: torch.Tensor, features: TokenFeatures) -> torch.Tensor:
        """``H_k(i) * r_l(i)`` ``(Hkv, n)`` of the entries at ``positions`` ``(Hkv, n)``."""
        rep = features.rep_change[layer if self.rep == "per_layer" else -1]  # (T,)
        return features.entropy.to(positions.device)[positions] * rep.to(positions.device)[positions]

    def finish(
        self, scores: list[torch.Tensor], positions: list[torch.Tensor], features: TokenFeatures | None
    ) -> list[torch.Tensor]:
        if features is None:
            raise ValueError("InfoKV needs token features (entropy, representation change): build the cache with it")
        out = []
        for layer, (attn, pos) in enumerate(zip(scores, positions)):
            ent = self.entropy_score(layer, pos, features)  # (Hkv, n)
            s = attn.clone()
            scored = torch.isfinite(attn)  # (Hkv, n) not the kept window, not a sink
            if bool((scored == scored[:1]).all()):  # the same entries in every head (prefill)
                cols = scored[0]
                s[:, cols] = self._mix(attn[:, cols], ent[:, cols])
            else:  # heads kept different windows at earlier cuts (decoding)
                for h, f in enumerate(scored):
                    s[h, f] = self._mix(attn[h, f][None], ent[h, f][None])[0]
            out.append(s)
        return out

    def _mix(self, attn: torch.Tensor, ent: torch.Tensor) -> torch.Tensor:
        """``(1 - mix) N(attn) + mix N(ent)`` over rows ``(H, m)``."""
        if attn.shape[1] == 0:
            return attn
        return (1 - self.mix) * normalise(attn, self.norm) + self.mix * normalise(ent, self.norm)
