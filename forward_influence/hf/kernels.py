"""Attention kernels: the model's own causal attention, and fused kernels that return the log-sum-exp."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as Fn


def causal_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float, impl: str
) -> torch.Tensor:
    """Plain causal attention, as ``sdpa`` or ``eager`` would compute it.

    query ``(1, Hq, T, D)``, key/value ``(1, Hkv, T, D)`` → ``(1, T, Hq, D)``.
    """
    hq, hkv = query.shape[1], key.shape[1]
    g = hq // hkv
    if impl == "sdpa":
        k = key.repeat_interleave(g, dim=1)  # (1, Hq, T, D)
        v = value.repeat_interleave(g, dim=1)  # (1, Hq, T, D)
        out = Fn.scaled_dot_product_attention(query, k, v, is_causal=True, scale=scaling)  # (1, Hq, T, D)
    else:
        k = key.repeat_interleave(g, dim=1)  # (1, Hq, T, D)
        v = value.repeat_interleave(g, dim=1)
        t = query.shape[2]
        scores = torch.matmul(query, k.transpose(2, 3)) * scaling  # (1, Hq, T, T)
        causal = torch.ones(t, t, dtype=torch.bool, device=query.device).triu_(1)  # (T, T)
        scores = scores.masked_fill(causal, float("-inf"))
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)  # (1, Hq, T, T)
        out = torch.matmul(probs, v)  # (1, Hq, T, D)
    return out.transpose(1, 2).contiguous()  # (1, T, Hq, D)


def _flash_cpu() -> Callable | None:
    """PyTorch's fused CPU flash-attention op that also returns the log-sum-exp."""
    return getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _lse_attention_cpu(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention and its log-sum-exp through the fused CPU flash kernel.

    q ``(B, H, M, D)``, k/v ``(B, H, N, D)``, additive ``mask`` broadcastable
    to ``(B, H, M, N)`` → out ``(B, H, M, D)``, lse ``(B, H, M)`` float32.
    A row with every key masked comes back as out 0, lse 0.
    """
    b, h = q.shape[:2]
    out, lse = _flash_cpu()(q, k, v, 0.0, False, attn_mask=mask.expand(b, h, *mask.shape[2:]), scale=scale)[:2]
    return out, lse


# elements; the memory-efficient kernel wants the bias' B/H/M strides in multiples of 8 (16-bit) / 4 (fp32)
BIAS_ALIGN = 16


def _aligned_bias(mask: torch.Tensor, shape: tuple[int, int, int, int], dtype: torch.dtype) -> torch.Tensor:
    """``mask`` ``(B|1, H|1, M|1, N)`` as a ``(B, H, M, N)`` view whose rows start
    on :data:`BIAS_ALIGN`-element boundaries (the last dim padded, broadcast
    dims stride 0), the layout the memory-efficient kernel checks for."""
    n = mask.shape[-1]
    padded = -(-n // BIAS_ALIGN) * BIAS_ALIGN
    buf = torch.zeros(*mask.shape[:-1], padded, dtype=dtype, device=mask.device)  # (B|1, H|1, M|1, N') aligned rows
    buf[..., :n] = mask
    return buf[..., :n].expand(shape)


def _lse_attention_cuda(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float, op: Callable | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """As :func:`_lse_attention_cpu`, through PyTorch's memory-efficient CUDA
    kernel (the one that takes an arbitrary additive bias and returns the
    log-sum-exp, padded to a multiple of 32 queries). A row with every key
    masked may come back as NaN; the caller overwrites such rows. ``op``
    replaces the aten op (tests emulate it on CPU)."""
    b, h, m, _ = q.shape
    n = k.shape[2]
    op = torch.ops.aten._scaled_dot_product_efficient_attention if op is None else op
    bias = _aligned_bias(mask, (b, h, m, n), q.dtype)  # (B, H, M, N) view, aligned strides
    out, lse = op(q, k, v, bias, True, 0.0, False, scale=scale)[:2]  # (B, H, M, D), (B, H, M')
    return out, lse[..., :m]


def lse_kernel(query: torch.Tensor) -> Callable | None:
    """The fused attention-with-log-sum-exp for ``query``'s device and dtype, or None."""
    if query.device.type == "cpu":
        return _lse_attention_cpu if query.dtype == torch.float32 and _flash_cpu() is not None else None
    if query.device.type == "cuda":
        return _lse_attention_cuda if query.dtype in (torch.float16, torch.bfloat16, torch.float32) else None
    return None
