"""What the engine ablates (:class:`Ablation`) and what it returns (:class:`SplitResult`, :class:`SlidingResult`).

>>> Ablation(positions=(3,), layers=(0,)).describe()
'pos=3 layers=0'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Ablation:
    """Which cache entries to remove.

    Attributes
    ----------
    positions : tuple of int
        Absolute token positions; empty for a null ablation.
    layers : tuple of int, optional
        Only at these layers (default: every layer).
    kv_heads : tuple of int, optional
        Only at these KV heads of those layers (default: every head).
    """

    positions: tuple[int, ...]
    layers: tuple[int, ...] | None = None
    kv_heads: tuple[int, ...] | None = None

    def describe(self) -> str:
        s = "pos=" + ",".join(map(str, self.positions))
        if self.layers is not None:
            s += " layers=" + ",".join(map(str, self.layers))
        if self.kv_heads is not None:
            s += " kv_heads=" + ",".join(map(str, self.kv_heads))
        return s


NULL = Ablation(positions=())


def select_mask(ablations: Sequence[Ablation], n_layers: int, n_kv: int) -> torch.Tensor:
    sel = torch.zeros(len(ablations), n_layers, n_kv, dtype=torch.bool)  # (B, L, Hkv)
    for b, a in enumerate(ablations):
        if not a.positions:
            continue
        layers = list(range(n_layers)) if a.layers is None else list(a.layers)
        heads = list(range(n_kv)) if a.kv_heads is None else list(a.kv_heads)
        sel[b, torch.tensor(layers)[:, None], torch.tensor(heads)[None, :]] = True
    return sel


@dataclass
class SplitResult:
    """FI of one split: ``kl[a, f]`` for ablation ``a`` and future position ``N + f``.

    Attributes
    ----------
    kl : numpy.ndarray
        ``(A, F)`` float64.
    noise_floor : numpy.ndarray
        ``(F,)`` float64 KL between a batched and a lone null row (batch
        composition alone).
    shared_reference : bool
        Batches after the first reused its null row (bitwise batch invariance seen).
    precision_floor : numpy.ndarray or None
        ``(F,)`` float64 KL of a null row whose inputs moved by one rounding
        step (:func:`forward_influence.hf.forwards.dither_embeddings`): what
        rounding alone adds to a row that differs from the reference. KLs
        near or below it are numerical noise (None when not measured).
    """

    split: int
    ablations: list[Ablation]
    kl: np.ndarray
    noise_floor: np.ndarray
    shared_reference: bool = False
    precision_floor: np.ndarray | None = None


@dataclass
class SlidingResult:
    """FI in sliding mode: ``kl[s, e]`` for source ``sources[s]`` at the query
    ``tau + e = sources[s] + delay + e`` (distance ``e`` from the eviction).

    Attributes
    ----------
    kl : numpy.ndarray
        ``(S, H)`` float64.
    noise_floor : numpy.ndarray
        ``(H,)`` float64, measured on the first block.
    precision_floor : numpy.ndarray or None
        ``(H,)`` float64, the dithered null row of the first block (see
        :class:`SplitResult`).
    delay : int
        ``D``: source ``i`` is hidden from the queries at or after ``i + D``.
    """

    sources: list[int]
    horizon: int
    kl: np.ndarray
    noise_floor: np.ndarray
    precision_floor: np.ndarray | None = None
    delay: int = 1
