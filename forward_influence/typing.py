"""Tensor shapes used across the package, named once.

Dimension letters:
``B`` ablations in a batch (rows), ``T`` document tokens, ``P`` shared prefix
length, ``C`` tokens re-run per row, ``F`` future tokens, ``V`` vocabulary,
``L`` layers, ``Hq`` query heads, ``Hkv`` key/value heads, ``D`` head dim.
"""

from __future__ import annotations

from typing import TypeAlias

import torch

TokenIds: TypeAlias = torch.Tensor
"""``(T,)`` int64 token ids of one document."""

Logits: TypeAlias = torch.Tensor
"""``(..., V)`` float32 unnormalised next-token scores."""

LogProbs: TypeAlias = torch.Tensor
"""``(..., V)`` float32 log-softmax of :data:`Logits`."""

KVPrefix: TypeAlias = "list[tuple[torch.Tensor, torch.Tensor]]"
"""Per layer ``(K, V)``, each ``(1, Hkv, P, D)``, keys after RoPE."""

InfluenceMatrix: TypeAlias = torch.Tensor
"""``(B, F)`` float64 ``KL(p_ref || p_ablated)`` per ablation and future position."""
