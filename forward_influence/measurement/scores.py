"""Attention-derived token scores, shared by the signals and the compressors.

Every function takes queries after RoPE ``(Hq, n, D)`` and the keys they may
attend to ``(Hkv, m, D)`` with their absolute positions, so the same code
scores a prompt in one piece (keys ``0..T-1``) and a compressed cache during
decoding (keys at scattered positions, different per KV head). A query at
position ``p`` sees the keys at positions ``<= p``; the query heads of a KV
group are folded into the query axis (no ``repeat_kv`` copy of the keys).
Scores are float32 softmaxes whatever the weights are; nothing of size
``n x m x heads`` outlives one chunk of queries.
"""

from __future__ import annotations

import torch
import torch.nn.functional as Fn


def _key_positions(k_pos: torch.Tensor, hkv: int) -> torch.Tensor:
    return k_pos if k_pos.dim() == 2 else k_pos[None].expand(hkv, -1)  # (Hkv, m)


def attention_probs(
    q: torch.Tensor, k: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor, scaling: float
) -> torch.Tensor:
    """Causal attention weights of ``q`` over ``k``.

    Parameters
    ----------
    q : ``(Hq, n, D)`` queries after RoPE; ``k`` : ``(Hkv, m, D)`` keys after RoPE.
    q_pos : ``(n,)`` and k_pos : ``(m,)`` or ``(Hkv, m)`` absolute positions.

    Returns
    -------
    torch.Tensor
        ``(Hkv, g, n, m)`` float32, ``g = Hq / Hkv``; rows sum to 1.
    """
    hq, n, d = q.shape
    hkv, m, _ = k.shape
    g = hq // hkv
    s = torch.matmul(q.reshape(hkv, g * n, d), k.transpose(1, 2)).view(hkv, g, n, m) * scaling  # (Hkv, g, n, m)
    kp = _key_positions(k_pos, hkv).to(q.device)
    hidden = kp[:, None, None, :] > q_pos.to(q.device)[None, None, :, None]  # (Hkv, 1, n, m)
    s = s.float().masked_fill_(hidden, float("-inf"))
    return torch.softmax(s, dim=-1)


def window_attention(
    q: torch.Tensor, k: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor, scaling: float
) -> torch.Tensor:
    """Mean attention of the queries (a SnapKV observation window) per query
    head: ``(Hq, m)`` float32."""
    probs = attention_probs(q, k, q_pos, k_pos, scaling)  # (Hkv, g, n, m)
    return probs.mean(2).reshape(q.shape[0], k.shape[1])  # (Hq, m)


def pooled_group_mean(per_head: torch.Tensor, n_kv: int, kernel: int) -> torch.Tensor:
    """SnapKV's smoothing: average-pool ``(Hq, m)`` over ``kernel`` neighbouring
    keys (zero padding at the ends), then mean over each KV group → ``(Hkv, m)``."""
    hq, m = per_head.shape
    if kernel > 1:
        per_head = Fn.avg_pool1d(per_head[None], kernel_size=kernel, padding=kernel // 2, stride=1)[0]  # (Hq, m)
    return per_head.view(n_kv, hq // n_kv, m).mean(1)  # (Hkv, m)


def cumulative_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    scaling: float,
    chunk_bytes: int = 128 << 20,
) -> torch.Tensor:
    """H2O's accumulated attention: ``sum_q a[q, j]`` over all queries, per
    query head ``(Hq, m)`` float64, computed in query chunks."""
    hq, n, _ = q.shape
    m = k.shape[1]
    acc = torch.zeros(hq, m, dtype=torch.float64, device=q.device)
    chunk = max(1, chunk_bytes // (4 * hq * max(m, 1) * 2))
    for c0 in range(0, n, chunk):
        c1 = min(n, c0 + chunk)
        probs = attention_probs(q[:, c0:c1], k, q_pos[c0:c1], k_pos, scaling)  # (Hkv, g, c, m)
        acc += probs.sum(2, dtype=torch.float64).reshape(hq, m)
    return acc
