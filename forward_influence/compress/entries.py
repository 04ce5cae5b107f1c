"""What a compressor sees and declares, and how entries are chosen: the vocabulary
shared by the methods (:mod:`forward_influence.compress.base`), the cut cache
(:mod:`forward_influence.compress.compressed_cache`) and decoding
(:mod:`forward_influence.compress.decoding`), below all three.

:class:`Method` is what the cache calls; :class:`~forward_influence.compress.base.Compressor`
implements it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch


def n_kept(keep: float, n_tokens: int) -> int:
    """Entries kept for an average of ``keep`` (float) out of ``n_tokens``: at
    least 1, at most ``n_tokens``, rounded down (robust to ``0.2 * 1500`` being
    ``300.00000000000006``).

    >>> n_kept(0.2 * 1500, 1500), n_kept(0.4, 10), n_kept(50.0, 20)
    (300, 1, 20)
    """
    return int(min(n_tokens, max(1, math.floor(keep + 1e-6))))


def top_entries(scores: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Indices ``(Hkv, n_keep)`` of the highest scores per row of ``scores``
    ``(Hkv, n)``, in ascending (position) order; NaN counts as ``-inf``.

    The entries of a row are in ascending position order (as every cache
    holds them), and ties are broken by recency: among equal scores the
    higher index — the more recent entry — is kept. Deterministic, unlike
    ``topk`` on ties.

    >>> top_entries(torch.tensor([[0.1, 0.9, float("nan"), 0.5]]), 2).tolist()
    [[1, 3]]
    >>> top_entries(torch.tensor([[0.5, 0.5, 0.5, 0.1], [1.0, 2.0, 2.0, 2.0]]), 2).tolist()
    [[1, 2], [2, 3]]
    """
    s = scores.to(torch.promote_types(scores.dtype, torch.float32))  # no float64 -> float32 rounding into ties
    s = torch.nan_to_num(s, nan=float("-inf"))
    n = s.shape[1]
    # newest first, then a stable descending sort: among equal scores the newest comes first
    order = s.flip(-1).sort(dim=-1, descending=True, stable=True).indices[:, : min(n_keep, n)]  # (Hkv, n_keep)
    return (n - 1 - order).sort(dim=-1).values  # (Hkv, n_keep) back to position order


@dataclass
class LayerView:
    """What a method sees of one layer when the cache is about to be cut.

    Attributes
    ----------
    layer, n_layers : int
    keys, values : torch.Tensor
        ``(Hkv, n, D)`` the cache entries (keys after RoPE).
    positions : torch.Tensor
        ``(Hkv, n)`` int64 absolute positions of the entries, ascending per head.
    queries : torch.Tensor
        ``(Hq, w, D)`` the most recent queries after RoPE (the whole prompt
        after a prefill; a rolling buffer during decoding).
    query_positions : torch.Tensor
        ``(w,)`` their absolute positions.
    scaling : float
        The attention's logit scale.
    n_keep : int
        Entries this layer will keep.
    state : dict
        What :meth:`Compressor.observe` stored for this layer; ``entry:*``
        tensors ``(Hkv, n)`` follow the entries.
    module, model : Any
        The attention module (``q_proj``, ``head_dim``) and the model.
    step : int
        How many times this cache was cut before.
    """

    layer: int
    n_layers: int
    keys: torch.Tensor
    values: torch.Tensor
    positions: torch.Tensor
    queries: torch.Tensor
    query_positions: torch.Tensor
    scaling: float
    n_keep: int
    state: dict = field(default_factory=dict)
    module: Any = None
    model: Any = None
    step: int = 0


@dataclass
class TokenFeatures:
    """Per-position token features some methods need (InfoKV).

    Attributes
    ----------
    entropy : torch.Tensor
        ``(T,)`` float32 top-k entropy of the distribution that predicted each
        token (0 for position 0, which nothing predicted).
    rep_change : torch.Tensor
        ``(L, T)`` float32 ``1 - cos(h_{l0}, h_l)`` per layer (1 at ``l <= l0``).
    signals : dict or None
        With :attr:`Needs.signals`: every registered measurement signal at the eviction time
        ``tau`` (name -> numpy array: ``(T,)`` token signals, ``(1, T)`` source signals), as
        ``fi-measure`` computes them at a split ``N = tau``.
    tau : int or None
        The eviction time those signals were read at (the prompt's length).
    token_signals : dict or None
        With :attr:`Needs.signals`: the token signals of every position the cache has seen
        (name -> ``(length,)``), each as over the whole sequence (a decoding cut's features).
    length : int or None
        Tokens the cache has seen (``tau`` of a cut now); equal to ``tau`` until decoding adds tokens.
    """

    entropy: torch.Tensor
    rep_change: torch.Tensor
    signals: dict[str, Any] | None = None
    tau: int | None = None
    token_signals: dict[str, Any] | None = None
    length: int | None = None


@dataclass(frozen=True)
class FeatureSpec:
    """Which token features a method needs: top-k entropy's ``k`` and the early layer."""

    topk: int
    early_layer: int


@dataclass(frozen=True)
class Needs:
    """What a method reads beyond one layer's keys and values, in one record
    (the cache records it; a cache can serve another method whose needs it covers).

    Attributes
    ----------
    recent_queries : int
        Most recent queries ``score`` reads (decoding keeps that many).
    attn_inputs : bool
        :meth:`Compressor.observe` reads the attention modules' input hidden states.
    features : FeatureSpec or None
        Token features :meth:`Compressor.finish` reads (top-k entropy, representation change).
    signals : SignalConfig or None
        The measurement's registered signals (:mod:`forward_influence.measurement.signals`), with
        these settings, computed in the prefill for :meth:`Compressor.finish` (a distilled scorer's features).
    state : bool
        :meth:`Compressor.observe` keeps per-layer state: a cache of this method
        serves only the same method (at another budget).
    """

    recent_queries: int = 1
    attn_inputs: bool = False
    features: FeatureSpec | None = None
    state: bool = False
    signals: Any = None

    def covers(self, other: Needs) -> bool:
        """Whether a cache recorded for these needs has everything ``other`` reads
        (state aside: that depends on the method, :meth:`CompressedCache.can_fork`)."""
        return (
            other.features in (None, self.features)
            and other.signals in (None, self.signals)
            and other.recent_queries <= self.recent_queries
            and (self.attn_inputs or not other.attn_inputs)
        )

    def richness(self) -> tuple[int, int, int, int]:
        """Sort key: caches with more recorded inputs serve more methods."""
        return (self.signals is not None, self.features is not None, self.attn_inputs, self.recent_queries)


class Method(Protocol):
    """What a cut cache calls of its compressor (:class:`forward_influence.compress.base.Compressor`)."""

    name: str
    budget: float

    def needs(self) -> Needs: ...

    def layer_scores(self, view: LayerView) -> torch.Tensor: ...

    def layer_budget(self, layer: int, n_layers: int, n_tokens: int, keep: float) -> int: ...

    def observe(self, tap: Any, positions: torch.Tensor, keys: torch.Tensor, state: dict) -> None: ...

    def finish(
        self, scores: list[torch.Tensor], positions: list[torch.Tensor], features: TokenFeatures | None
    ) -> list[torch.Tensor]: ...
