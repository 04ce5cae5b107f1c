"""Signals as registered classes, and the one prefill that runs them all (docs/design.md §3).

A signal is a subclass of :class:`Signal` decorated with :func:`register`. It
declares its :class:`~forward_influence.store.schema.SignalSpec` (name, kind,
label, whether it is a selection rule, whether it has per-layer values), the
*feeds* it reads from the recording prefill and its computation:

``attention``
    per layer, the queries and keys (:class:`LayerAttention`, with the
    attention intermediates the signals share, computed once per layer);
``hidden``
    per layer, the decoder layer's output;
``logits``
    the final logits in row chunks (:func:`~forward_influence.measurement.features.logit_chunks`);
``inputs``
    other signals' values (a derived signal: ``inputs = ("entropy_out",)``).

:class:`~forward_influence.measurement.collector.SignalCollector` instantiates
every registered signal, feeds them during one chunked prefill, and builds ``tokens`` (kind ``token``),
``source_signals`` (kind ``source``: one row per split and source, the value at
its eviction time) and ``token_layers`` (signals with per-layer values). The
run records each signal's spec in ``run.json`` (``collector.registered``), so the
torch-free analysis learns of a new signal from the run it reads.

The causality rule binds every registered signal: a token signal reads
``x[<= i]`` only; a source signal of split ``N`` reads queries ``< N``, of a
sliding source ``i`` the queries ``[i, i + D)``. ``tests/unit/test_causality.py``
checks every registered signal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from forward_influence.store.schema import SignalSpec

FEEDS = ("attention", "hidden", "logits", "inputs")


@dataclass(frozen=True)
class SignalConfig:
    """Signal hyperparameters.

    Attributes
    ----------
    topk : int
        k of the top-k entropies.
    window : int
        SnapKV observation window in split mode (queries before ``N``).
    kernel : int
        SnapKV pooling width (odd).
    rep_layer : int
        Early layer ``l0`` of ``rep_change``.
    splits : tuple of int or None
        Split mode: the eviction times ``N``. None with ``delay`` None: one
        split at the document end.
    delay : int or None
        Sliding mode: ``D``, the queries ``[i, i + D)`` that see token ``i``
        before it is evicted.
    words : bool
        Tag words with spaCy (see :mod:`forward_influence.measurement.words`).
    chunk_bytes : int
        Bound on attention/logit temporaries.
    only : tuple of str or None
        Compute only these registered signals (and the signals they derive from): what a
        compressor reads (:class:`~forward_influence.compress.distilled.Distilled`). None: every
        registered signal (a measurement always records them all).
    """

    topk: int = 10
    window: int = 32
    kernel: int = 5
    rep_layer: int = 2
    splits: tuple[int, ...] | None = None
    delay: int | None = None
    words: bool = True
    chunk_bytes: int = 128 << 20
    only: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.splits is not None and self.delay is not None:
            raise ValueError("give splits (split mode) or delay (sliding mode), not both")
        if self.delay is not None and self.delay < 1:
            raise ValueError(f"delay must be >= 1, got {self.delay}")
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError(f"kernel must be odd and >= 1, got {self.kernel}")
        if self.only is not None:
            object.__setattr__(self, "only", tuple(sorted(set(self.only))))  # one value per set: caches compare it

    def check_ready(self) -> None:
        """Fail early (before any output) if the spaCy model is missing."""
        if self.words:
            from forward_influence.measurement.words import load_spacy

            load_spacy()


@dataclass
class Context:
    """What every signal knows before the prefill: the model's shape, the
    document length, the settings and the eviction times (``taus``: one entry
    per split ``N``; ``[None]`` in sliding mode, where each source has its own)."""

    model: Any
    t: int
    n_layers: int
    n_kv: int
    cfg: SignalConfig
    taus: list[int | None]

    def group_mean(self, per_head: torch.Tensor) -> torch.Tensor:
        """``(Hq, n)`` -> ``(Hkv, n)``: mean over the query heads of each KV group."""
        hq, n = per_head.shape
        return per_head.view(self.n_kv, hq // self.n_kv, n).mean(1)


class LayerAttention:
    """One layer's queries ``q`` ``(Hq, T, D)`` and keys ``k`` ``(Hkv, T, D)``,
    with intermediates several signals read computed once (:meth:`shared`)."""

    def __init__(self, q: torch.Tensor, k: torch.Tensor, scaling: float):
        self.q, self.k, self.scaling = q, k, scaling
        self.pos = torch.arange(q.shape[1], device=q.device)
        self._shared: dict[Any, Any] = {}

    def shared(self, key: Any, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per layer for ``key``; later callers get the same object."""
        if key not in self._shared:
            self._shared[key] = compute()
        return self._shared[key]


class Signal:
    """A per-token or per-source signal (subclass it and :func:`register` it).

    Override the hooks of the feeds in :attr:`feeds` and :meth:`values`;
    signals with ``spec.layers`` also :meth:`layer_values`.
    """

    spec: ClassVar[SignalSpec]
    feeds: ClassVar[tuple[str, ...]] = ()
    inputs: ClassVar[tuple[str, ...]] = ()

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.result: np.ndarray | None = None  # set by the collector once computed (what derived signals read)

    def on_attention(self, layer: int, att: LayerAttention) -> None:
        """Feed ``attention``: one layer's queries and keys."""

    def on_hidden(self, layer: int, hidden: torch.Tensor) -> None:
        """Feed ``hidden``: decoder layer ``layer``'s output ``(T, Dm)`` (layers in order)."""

    def on_logits(self, c0: int, logits: torch.Tensor, ids: torch.Tensor) -> None:
        """Feed ``logits``: float32 logits ``(n, V)`` of rows ``c0 .. c0 + n - 1``; ``ids`` the input."""

    def values(self, done: dict[str, Signal]) -> np.ndarray:
        """Kind ``token``: ``(T,)``; kind ``source``: ``(len(taus), T)`` (NaN where
        a source is not evicted within the document). ``done``: the signals of :attr:`inputs`."""
        raise NotImplementedError

    def layer_values(self) -> torch.Tensor:
        """``(len(taus) or 1, L, Hkv, T)`` per-layer, per-KV-head values (``spec.layers``)."""
        raise NotImplementedError

    def carry(self) -> Any:
        """After :meth:`values`: what a token signal needs from this block to give the next block of
        the same sequence the values it would have over the whole sequence (a decoding cache runs one
        collector per block); None: nothing (each token's value reads only its own position)."""
        return None

    def resume(self, state: Any) -> None:
        """Continue a sequence whose previous block's :meth:`carry` gave ``state``."""


REGISTRY: dict[str, type[Signal]] = {}


def with_inputs(names: tuple[str, ...] | None) -> list[str]:
    """The registered signals ``names`` and every signal they derive from, in registration
    order (None: all of them); an unregistered name raises ValueError naming the known ones."""
    if names is None:
        return list(REGISTRY)
    unknown = sorted(set(names) - set(REGISTRY))
    if unknown:
        raise ValueError(f"unknown signals {unknown}; registered: {', '.join(REGISTRY)}")
    need: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name not in need:
            need.add(name)
            todo.extend(i for i in REGISTRY[name].inputs if i in REGISTRY)
    return [n for n in REGISTRY if n in need]


def register(cls: type[Signal]) -> type[Signal]:
    """Class decorator: add a signal to every measurement (in registration order)."""
    name = cls.spec.name
    if name in REGISTRY:
        raise ValueError(f"signal {name!r} is registered twice")
    if not set(cls.feeds) <= set(FEEDS):
        raise ValueError(f"signal {name!r}: feeds must be among {FEEDS}; got {cls.feeds}")
    REGISTRY[name] = cls
    return cls
