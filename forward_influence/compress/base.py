"""The compressor abstraction (DESIGN §6).

A compressor is a frozen dataclass whose fields are its hyperparameters. It
turns what the model computed into one score per cache entry and per KV head,
and the cache keeps, at every layer, the entries with the highest scores:

``score(view) -> (Hkv, n)``
    Higher keeps; ``+inf`` marks entries that are always kept (SnapKV's
    observation window when the budget holds it), ``NaN`` counts as ``-inf``.
``layer_budget(layer, n_layers, n_tokens, keep) -> int``
    How many entries layer ``layer`` keeps when the average over layers is
    ``keep`` (a float: ``budget x n_tokens`` in prefill, the target size in
    decoding). Uniform by default; PyramidKV overrides it.

Two optional hooks serve methods that need more than one layer's tensors:
``observe`` updates per-layer state as tokens go through (H2O's accumulated
attention, Expected Attention's query statistics), and ``finish`` revises all
layers' scores once the forward is complete (InfoKV needs the final logits).
Selection, gathering and position bookkeeping live in
:mod:`forward_influence.compress.cache`, never in a method.

Two rules hold for every method:

*Sinks* are kept only through the ``n_sink`` field: the first ``n_sink``
positions score ``+inf`` (:meth:`Compressor.layer_scores`). The default is 0,
as in kvpress's scorer presses; StreamingLLM and Expected Attention default
to 4, as their papers and kvpress's presses do. No method protects a sink
any other way.

*Ties* are broken by recency: among equal scores (including the ``+inf`` of
protected entries when more are protected than the budget holds), the more
recent entry is kept (:func:`top_entries`), so a cut is deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from forward_influence.hf.attention import AttentionTap


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
    """

    entropy: torch.Tensor
    rep_change: torch.Tensor


@dataclass(frozen=True)
class FeatureSpec:
    """Which token features a method needs: top-k entropy's ``k`` and the early layer."""

    topk: int
    early_layer: int


@dataclass(frozen=True)
class Compressor:
    """Base of every method. ``budget``: fraction of the cache kept, in (0, 1];
    ``n_sink``: the first ``n_sink`` positions are always kept (0: none)."""

    budget: float = 1.0
    n_sink: int = 0

    name: ClassVar[str] = "base"
    needs_attn_inputs: ClassVar[bool] = False  # observe() reads the attention's input hidden states

    def __post_init__(self) -> None:
        if not (isinstance(self.budget, (int, float)) and 0.0 < float(self.budget) <= 1.0):
            raise ValueError(f"budget must be in (0, 1] (fraction of the cache kept), got {self.budget!r}")
        if not (isinstance(self.n_sink, int) and self.n_sink >= 0):
            raise ValueError(f"n_sink must be an int >= 0 (positions always kept), got {self.n_sink!r}")

    # ----------------------------------------------------------- hooks
    def score(self, view: LayerView) -> torch.Tensor:
        """Scores ``(Hkv, n)`` of the entries of ``view``; higher keeps."""
        raise NotImplementedError

    def layer_scores(self, view: LayerView) -> torch.Tensor:
        """What selection ranks: :meth:`score` with the first ``n_sink``
        positions set to ``+inf`` ``(Hkv, n)``. The one place sinks are kept."""
        s = self.score(view)
        if self.n_sink == 0:
            return s
        return s.masked_fill(view.positions.to(s.device) < self.n_sink, float("inf"))

    def layer_budget(self, layer: int, n_layers: int, n_tokens: int, keep: float) -> int:
        """Entries kept at ``layer`` when the layers keep ``keep`` on average."""
        return n_kept(keep, n_tokens)

    def recent_queries(self) -> int:
        """How many recent queries ``score`` reads (decoding keeps that many)."""
        return 1

    def observe(self, tap: AttentionTap, positions: torch.Tensor, keys: torch.Tensor, state: dict) -> None:
        """See a forward's block at one layer. ``positions`` ``(Hkv, n)`` and
        ``keys`` ``(Hkv, n, D)`` are the cache entries *including* the block's
        own (its new entries are the last ``C``). Default: nothing."""

    def features(self) -> FeatureSpec | None:
        """Token features :meth:`finish` needs, or None."""
        return None

    def finish(
        self, scores: list[torch.Tensor], positions: list[torch.Tensor], features: TokenFeatures | None
    ) -> list[torch.Tensor]:
        """Revise every layer's scores once all layers are known. Default: as is."""
        return scores

    def apply(self, model: Any, config: Any = None, cache: Any = None) -> Any:
        """Decode with this method: ``with comp.apply(model, DecodingConfig(...)) as run: model.generate(...)``,
        a context manager (:func:`forward_influence.compress.decoding.apply`; ``config`` None: ``DecodingConfig()``)."""
        from forward_influence.compress.decoding import DecodingConfig, apply

        return apply(model, self, DecodingConfig() if config is None else config, cache)


# --------------------------------------------------------------------------- #
# Registry
# --------------------------------------------------------------------------- #

_REGISTRY: dict[str, Callable[..., Compressor]] = {}


def register(cls: type[Compressor]) -> type[Compressor]:
    """Class decorator: make ``cls`` available as ``get_compressor(cls.name)``."""
    _REGISTRY[cls.name] = cls
    return cls


def list_compressors() -> list[str]:
    """Registered method names, in registration order."""
    return list(_REGISTRY)


def get_compressor(name: str, **kwargs: Any) -> Compressor:
    """Build a registered method: ``get_compressor("snapkv", budget=0.2, window=32)``."""
    key = name.lower().replace("-", "_")
    if key not in _REGISTRY:
        raise ValueError(f"unknown compressor {name!r}; valid: {', '.join(_REGISTRY)}")
    return _REGISTRY[key](**kwargs)
