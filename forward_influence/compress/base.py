"""The compressor abstraction (docs/design.md §6.1).

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
:mod:`forward_influence.compress.compressed_cache`, never in a method; what a
method sees and declares (:class:`LayerView`, :class:`Needs`) in
:mod:`forward_influence.compress.entries`.

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

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from forward_influence.compress.entries import (  # noqa: F401  (re-exported: every method's vocabulary)
    FeatureSpec,
    LayerView,
    Needs,
    TokenFeatures,
    n_kept,
    top_entries,
)
from forward_influence.hf.attention import AttentionTap


@dataclass(frozen=True)
class Compressor:
    """Base of every method. ``budget``: fraction of the cache kept, in (0, 1];
    ``n_sink``: the first ``n_sink`` positions are always kept (0: none)."""

    budget: float = 1.0
    n_sink: int = 0

    name: ClassVar[str] = "base"
    #: Constructor inputs a runner must supply besides the hyperparameters: "seed" (a random
    #: draw), "measured_fi" (FI measured on the same document: an oracle, prefill only),
    #: "model_file" (a learned scorer's file; None: the shipped one).
    inputs: ClassVar[tuple[str, ...]] = ()
    #: The result does not depend on the budget (the full cache): a runner scores it once.
    budget_free: ClassVar[bool] = False
    #: Ranks one prefill eviction only (not the repeated cuts of decoding).
    prefill_only: ClassVar[bool] = False

    @classmethod
    def decodes(cls, model_file: Any = None) -> bool:
        """Whether the method, with the inputs a runner gives it, can cut a cache while decoding."""
        return not cls.prefill_only

    @classmethod
    def for_run(cls, seed: int = 0, measured_fi: Any = None, model_file: Any = None, **hyper: Any) -> Compressor | None:
        """The method as a runner builds it: ``hyper`` (budget, hyperparameters) and the
        :attr:`inputs` it declares; None when one of them is missing."""
        if "measured_fi" in cls.inputs and measured_fi is None:
            return None
        return cls(**hyper, **({"seed": seed} if "seed" in cls.inputs else {}))

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

    def needs(self) -> Needs:
        """What this method reads (:class:`Needs`). Default: the latest query, nothing else."""
        return Needs()

    def observe(self, tap: AttentionTap, positions: torch.Tensor, keys: torch.Tensor, state: dict) -> None:
        """See a forward's block at one layer. ``positions`` ``(Hkv, n)`` and
        ``keys`` ``(Hkv, n, D)`` are the cache entries *including* the block's
        own (its new entries are the last ``C``). Default: nothing."""

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


def compressor_class(name: str) -> Callable[..., Compressor]:
    """The registered method called ``name`` (``-`` and case ignored)."""
    key = name.lower().replace("-", "_")
    if key not in _REGISTRY:
        raise ValueError(f"unknown compressor {name!r}; valid: {', '.join(_REGISTRY)}")
    return _REGISTRY[key]


def get_compressor(name: str, **kwargs: Any) -> Compressor:
    """Build a registered method: ``get_compressor("snapkv", budget=0.2, window=32)``."""
    return compressor_class(name)(**kwargs)
