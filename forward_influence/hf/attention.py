"""All contact with transformers' attention dispatch and KV-cache API lives here.

transformers routes every attention call of Llama/Qwen2/Mistral-style models
through ``ALL_ATTENTION_FUNCTIONS[config._attn_implementation]`` with the
query, and the key/value states *after* RoPE. We register one function under
:data:`ATTN_NAME` and switch a model to it inside :func:`attention_mode`
(restored in ``finally``). It works in two modes:

``record``
    A plain causal forward of one sequence (batch 1). Each layer's ``K, V``
    ``(1, Hkv, T, D)`` are kept — that *is* the prefix KV cache, obtained
    without touching the Cache API — and an optional callback sees
    ``(layer, Q, K)`` so per-token attention signals are computed in the same
    pass. The attention itself is computed as the model's own ``sdpa`` or
    ``eager`` implementation would.

``bias``
    One row over the prefix with a differentiable additive bias on the
    prefix-key logits (the Fisher estimate of :mod:`forward_influence.measurement.fisher`).

``ablate``
    A batch of ``B`` rows re-runs the same ``C`` tokens at absolute positions
    ``P..P+C-1`` over a *shared* prefix ``(1, Hkv, P, D)``. The prefix is never
    copied per row: the batch and query dims are folded into the GEMM's M
    dimension (``(Hkv, B*g*n, D) @ (Hkv, D, P)``), so each prefix tensor is read
    once per layer for the whole batch. Row ``b`` hides the absolute positions
    in ``AblationBatch.positions[b]`` at the ``(layer, kv_head)`` pairs where
    ``AblationBatch.select[b]`` is true, from queries at positions
    ``>= AblationBatch.tau[b]``. Scores are float32 whatever the weights are.
    Two kernels (``kernel=``): ``matmul``, the explicit chunked path above,
    any device and dtype; ``flash``, PyTorch's fused attention that returns
    the log-sum-exp (CPU: the flash kernel, float32; CUDA: the
    memory-efficient kernel, 16/32-bit) over stride-0 views of the prefix
    and an additive mask, merged with each row's block by log-sum-exp.
    ``auto`` takes the device's default kernel where it applies
    (:mod:`forward_influence.runtime.devices`).

Nothing else in the package imports transformers' cache or attention modules;
the naive reference loop (:func:`prefill_cache`, :func:`cache_without`,
:func:`forward_with_cache`) is here too so the benchmark can compare against
the plain Cache API path. Supported: transformers 5.2 – 5.x (the cache
keyword was renamed ``past_key_values`` → ``cache`` in 5.24; both handled).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from forward_influence.hf import kernels
from forward_influence.runtime.devices import defaults_for

ATTN_NAME = "forward_influence"


_STATE: contextvars.ContextVar[ForwardMode | None] = contextvars.ContextVar("fi_attention_state", default=None)


_REGISTERED = False


@dataclass
class AblationBatch:
    """What each row of an ``ablate`` forward hides.

    Attributes
    ----------
    positions : list of tuple of int
        Per row, absolute positions to hide (empty: a null row).
    select : torch.Tensor
        ``(B, L, Hkv)`` bool, where the hiding applies.
    tau : torch.Tensor
        ``(B,)`` int64; queries at absolute position ``>= tau`` cannot see the
        hidden entries (earlier queries are unaffected).
    dither : tuple of int
        Rows whose input embeddings are moved by one rounding step (see
        :func:`dither_embeddings`): null rows that measure the precision floor.
    """

    positions: list[tuple[int, ...]]
    select: torch.Tensor
    tau: torch.Tensor
    dither: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.positions)


@dataclass
class AttentionTap:
    """What one layer's attention saw in a forward (for compressors' scores).

    Attributes
    ----------
    layer : int
    module : torch.nn.Module
        The attention module (``q_proj``, ``head_dim``, ``config``).
    query : torch.Tensor
        ``(Hq, C, D)`` queries after RoPE (row 0 of the batch).
    key, value : torch.Tensor
        ``(Hkv, C, D)`` this forward's new keys (after RoPE) and values.
    scaling : float
    start : int
        Absolute position of query 0.
    attn_input : torch.Tensor or None
        ``(C, Dm)`` hidden state entering the attention (after the input norm),
        when asked for.
    """

    layer: int
    module: Any
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    scaling: float
    start: int
    attn_input: torch.Tensor | None = None


@dataclass
class ForwardMode:
    """What every routed forward carries: the layers' recorded K/V, callbacks, the model's own
    attention implementation (for :class:`RecordMode`)."""

    base_impl: str = "sdpa"
    keys: dict[int, torch.Tensor] = field(default_factory=dict)
    values: dict[int, torch.Tensor] = field(default_factory=dict)
    on_tap: Callable[[AttentionTap], None] | None = None  # sees every layer's attention inputs
    attn_inputs: dict[int, torch.Tensor] = field(default_factory=dict)  # filled by pre-hooks when wanted

    @property
    def start(self) -> int:
        """Absolute position of the forward's first query."""
        return 0


@dataclass
class RecordMode(ForwardMode):
    """A plain causal forward of one sequence that keeps every layer's K/V (the module docstring's ``record``)."""


@dataclass
class PrefixMode(ForwardMode):
    """A forward of new tokens at positions ``start..`` over a given ``prefix`` K/V per layer."""

    prefix: Sequence[tuple[torch.Tensor, torch.Tensor]] = ()
    start: int = 0  # type: ignore[assignment]  (a field here, 0 in the base)


@dataclass
class AblateMode(PrefixMode):
    """``B`` rows over the shared prefix, each hiding what ``batch`` says (``ablate``)."""

    batch: AblationBatch | None = None
    max_score_bytes: int = 8 << 20
    kernel: str = "auto"  # "auto" | "flash" | "matmul"
    record_block: bool = False  # also keep each layer's new K/V in keys/values
    # derived per forward (built lazily on the first layer)
    prefix_idx: torch.Tensor | None = None  # (B, K) int64
    prefix_valid: torch.Tensor | None = None  # (B, K) bool
    block_hidden: torch.Tensor | None = None  # (B, C) bool


@dataclass
class BiasMode(PrefixMode):
    """One differentiable row with ``bias`` ``(P,)`` added to the prefix-key logits (``bias``)."""

    bias: torch.Tensor | None = None
    bias_layers: frozenset[int] | None = None  # None: every layer
    bias_heads: frozenset[int] | None = None  # None: every KV head


def _prepare_hiding(mode: AblateMode, n_block: int, device: torch.device) -> None:
    """Turn per-row position tuples into gather indices (prefix) and a block mask."""
    batch = mode.batch
    assert batch is not None
    p = mode.start
    per_row_prefix = [[q for q in row if q < p] for row in batch.positions]
    k = max(1, max(len(r) for r in per_row_prefix))
    idx = torch.zeros(len(batch), k, dtype=torch.long)
    valid = torch.zeros(len(batch), k, dtype=torch.bool)
    for b, row in enumerate(per_row_prefix):
        if row:
            padded = row + [row[0]] * (k - len(row))  # repeats write the same value
            idx[b] = torch.tensor(padded)
            valid[b] = True
    block = torch.zeros(len(batch), n_block, dtype=torch.bool)
    for b, row in enumerate(batch.positions):
        for q in row:
            if p <= q < p + n_block:
                block[b, q - p] = True
    mode.prefix_idx = idx.to(device)
    mode.prefix_valid = valid.to(device)
    mode.block_hidden = block.to(device)


def _use_flash(mode: AblateMode, query: torch.Tensor) -> bool:
    """Whether this forward's prefix attention goes through the fused kernel:
    ``kernel="flash"`` (an error where it cannot), ``"auto"`` (where it can and
    the device's default kernel is ``flash``, :mod:`forward_influence.runtime.devices`)."""
    if mode.kernel == "matmul":
        return False
    ok = kernels.lse_kernel(query) is not None
    # the fused path hides prefix entries from every query of a row: needs tau <= start
    ok = ok and bool((mode.batch.tau[mode.prefix_valid.any(1).cpu()] <= mode.start).all())
    if mode.kernel == "flash" and not ok:
        raise RuntimeError(
            "kernel='flash' needs a fused kernel for this device and dtype (CPU: float32; CUDA: "
            "float16/bfloat16/float32) and prefix hiding from tau <= start"
        )
    return ok and (mode.kernel == "flash" or defaults_for(query.device).kernel == "flash")


def _ablated_attention_flash(
    module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float, mode: AblateMode
) -> torch.Tensor:
    """Fused path: the shared prefix through a fused attention kernel that
    returns the log-sum-exp (:func:`lse_kernel`), merged with each row's own
    block by log-sum-exp.

    The query heads of a KV group are folded into the query axis (``g*C``
    queries per KV head: no key or value is repeated per query head). The
    prefix K/V enter as ``expand``-ed views (stride 0 over rows, never
    copied) and the hidden prefix entries are a ``(B, Hkv, 1, P)`` additive
    mask broadcast over queries; the block's causal (and, in sliding mode,
    eviction) mask is ``(B|1, Hkv|1, g*C, C)``. The merge is float32.
    """
    layer = module.layer_idx
    pk, pv = mode.prefix[layer]  # (1, Hkv, P, D)
    b, hq, c, d = query.shape
    hkv = key.shape[1]
    g = hq // hkv
    p = pk.shape[2]
    dev = query.device
    attend = kernels.lse_kernel(query)
    q = query.view(b, hkv, g, c, d).reshape(b, hkv, g * c, d)  # (B, Hkv, g*C, D) folded queries
    sel = mode.batch.select[:, layer].to(dev)  # (B, Hkv)
    hide = torch.ones(c, c, dtype=torch.bool, device=dev).triu_(1).repeat(g, 1)  # (g*C, C) causal, folded
    if mode.block_hidden.any():
        qpos = mode.start + torch.arange(c, device=dev)  # (C,)
        after = (qpos[None, :] >= mode.batch.tau.to(dev)[:, None]).repeat(1, g)  # (B, g*C) folded
        per_head = bool((sel.any(1) != sel.all(1)).any())  # some row hides at some heads only
        hs = sel if per_head else sel.any(1, keepdim=True)  # (B, Hkv or 1)
        hide = hide | (
            hs[:, :, None, None] & after[:, None, :, None] & mode.block_hidden[:, None, None, :]
        )  # (B, Hkv|1, g*C, C)
    if hide.dim() == 2:
        hide = hide[None, None]  # (1, 1, g*C, C)
    bmask = torch.zeros(hide.shape, dtype=query.dtype, device=dev).masked_fill_(hide, float("-inf"))
    out, lse_b = attend(q, key, value, bmask, scaling)  # (B, Hkv, g*C, D), (B, Hkv, g*C)
    if p > 0:
        pmask = torch.zeros(b, hkv, 1, p, dtype=query.dtype, device=dev)  # (B, Hkv, 1, P) additive
        dead = None
        if mode.prefix_valid.any():
            rows = torch.zeros(b, p, dtype=torch.bool, device=dev)  # (B, P) hidden prefix positions
            rows.scatter_(1, mode.prefix_idx, mode.prefix_valid)
            gone = sel[:, :, None] & rows[:, None, :]  # (B, Hkv, P)
            pmask.masked_fill_(gone[:, :, None], float("-inf"))
            dead = gone.all(-1)  # (B, Hkv) every prefix entry hidden
        out_p, lse_p = attend(
            q, pk.expand(b, -1, -1, -1), pv.expand(b, -1, -1, -1), pmask, scaling
        )  # (B, Hkv, g*C, D), (B, Hkv, g*C)
        if dead is not None and bool(dead.any()):  # fully masked rows: CPU gives out 0, lse 0; CUDA may give NaN
            lse_p = lse_p.masked_fill(dead[:, :, None], float("-inf"))
            out_p = out_p.masked_fill(dead[:, :, None, None], 0.0)
        lse = torch.logaddexp(lse_p, lse_b)  # (B, Hkv, g*C)
        w_p = torch.exp(lse_p - lse).unsqueeze_(-1)  # (B, Hkv, g*C, 1)
        w_b = torch.exp(lse_b - lse).unsqueeze_(-1)
        if out.dtype == torch.float32:
            out = torch.addcmul(out.mul_(w_b), out_p, w_p)  # (B, Hkv, g*C, D)
        else:
            out = torch.addcmul(out.float() * w_b, out_p.float(), w_p).to(query.dtype)  # (B, Hkv, g*C, D)
    return out.reshape(b, hkv, g, c, d).permute(0, 3, 1, 2, 4).reshape(b, c, hq, d)  # (B, C, Hq, D)


def _ablated_attention(
    module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float, mode: AblateMode
) -> torch.Tensor:
    """Attention of ``B`` rows over a shared prefix plus their own block.

    query ``(B, Hq, C, D)``, key/value ``(B, Hkv, C, D)``, prefix
    ``(1, Hkv, P, D)`` → ``(B, C, Hq, D)``.
    """
    layer = module.layer_idx
    pk, pv = mode.prefix[layer]  # (1, Hkv, P, D) each
    b, hq, c, d = query.shape
    hkv = key.shape[1]
    g = hq // hkv
    p = pk.shape[2]
    dev = query.device
    if mode.prefix_idx is None:
        _prepare_hiding(mode, c, dev)
    if _use_flash(mode, query):
        return _ablated_attention_flash(module, query, key, value, scaling, mode)
    batch = mode.batch
    sel = batch.select[:, layer].to(dev)  # (B, Hkv) bool
    tau = batch.tau.to(dev)  # (B,)
    kmax = mode.prefix_idx.shape[1]
    has_prefix_hidden = bool(mode.prefix_valid.any())
    has_block_hidden = bool(mode.block_hidden.any())

    qg = (query * scaling).view(b, hkv, g, c, d)  # (B, Hkv, g, C, D)
    out = torch.empty(hkv, b, g, c, d, dtype=value.dtype, device=dev)  # (Hkv, B, g, C, D)
    # Query chunks small enough that one chunk's scores stay in cache (CPU) or
    # bounded (GPU): every elementwise pass below then runs at cache speed.
    bytes_per_q = 4 * b * hq * (p + c)
    chunk = max(1, min(c, mode.max_score_bytes // max(1, bytes_per_q)))
    pk_t = pk[0].transpose(1, 2)  # (Hkv, D, P) view, no copy
    pv0 = pv[0]  # (Hkv, P, D)
    vt = value.permute(1, 0, 2, 3).unsqueeze(2)  # (Hkv, B, 1, C, D) view
    kt = key.permute(1, 0, 3, 2).unsqueeze(2)  # (Hkv, B, 1, D, C) view
    sel_t = sel.t()  # (Hkv, B)
    for c0 in range(0, c, chunk):
        c1 = min(c, c0 + chunk)
        n = c1 - c0
        qpos = mode.start + torch.arange(c0, c1, device=dev)  # (n,) absolute query positions
        qc = (
            qg[:, :, :, c0:c1].permute(1, 0, 2, 3, 4).contiguous().view(hkv, b, g * n, d)
        )  # (Hkv, B, g*n, D) small copy
        s_pre = torch.bmm(qc.view(hkv, b * g * n, d), pk_t).view(
            hkv, b, g, n, p
        )  # (Hkv, B, g, n, P) shared prefix, B folded into M
        s_blk = torch.matmul(qc, kt[:, :, 0, :, :c1]).view(hkv, b, g, n, c1)  # (Hkv, B, g, n, c1) own block keys
        if s_pre.dtype != torch.float32:
            s_pre, s_blk = s_pre.float(), s_blk.float()
        after = qpos[None, :] >= tau[:, None]  # (B, n) queries past the eviction time
        if has_prefix_hidden:
            cond = sel_t[:, :, None, None, None] & after[None, :, None, :, None]  # (Hkv, B, 1, n, 1)
            cond = cond & mode.prefix_valid[None, :, None, None, :]  # (Hkv, B, 1, n, K)
            idx = mode.prefix_idx[None, :, None, None, :].expand(hkv, b, g, n, kmax)  # (Hkv, B, g, n, K)
            cur = s_pre.gather(-1, idx)  # (Hkv, B, g, n, K)
            s_pre.scatter_(-1, idx, cur.masked_fill(cond, float("-inf")))
        blk_mask = torch.arange(c1, device=dev)[None, :] > torch.arange(c0, c1, device=dev)[:, None]  # (n, c1) causal
        if has_block_hidden:
            hid = mode.block_hidden[:, :c1]  # (B, c1)
            extra = sel_t[:, :, None, None] & after[None, :, :, None] & hid[None, :, None, :]  # (Hkv, B, n, c1)
            blk_mask = blk_mask | extra[:, :, None]  # (Hkv, B, 1, n, c1)
        s_blk.masked_fill_(blk_mask, float("-inf"))
        # Softmax over [prefix | block] without concatenating: shared max, in-place exp.
        m = s_blk.amax(-1, keepdim=True)  # (Hkv, B, g, n, 1); the diagonal is never hidden
        if p > 0:
            m = torch.maximum(m, s_pre.amax(-1, keepdim=True))
        s_pre.sub_(m).exp_()
        s_blk.sub_(m).exp_()
        denom = s_pre.sum(-1, keepdim=True) + s_blk.sum(-1, keepdim=True)  # (Hkv, B, g, n, 1)
        o = torch.bmm(s_pre.to(value.dtype).view(hkv, b * g * n, p), pv0).view(hkv, b, g, n, d)  # (Hkv, B, g, n, D)
        o += torch.matmul(s_blk.to(value.dtype).view(hkv, b, g * n, c1), vt[:, :, 0, :c1]).view(
            hkv, b, g, n, d
        )  # (Hkv, B, g, n, D)
        out[:, :, :, c0:c1] = o / denom.to(o.dtype)
    return out.permute(1, 3, 0, 2, 4).reshape(b, c, hq, d)  # (B, C, Hq, D)


def _biased_attention(
    module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float, mode: BiasMode
) -> torch.Tensor:
    """Differentiable attention of one row over the prefix plus its own block,
    with ``mode.bias`` ``(P,)`` added to the logits of every block query for
    prefix key ``j`` (at the selected layers / KV heads): ``bias_j = log m_j``
    scales key ``j``'s unnormalised attention weight by ``m_j``.

    query ``(1, Hq, C, D)``, key/value ``(1, Hkv, C, D)`` → ``(1, C, Hq, D)``.
    Holds ``Hq x C x (P + C)`` float32 scores per layer for the backward pass.
    """
    layer = module.layer_idx
    pk, pv = mode.prefix[layer]  # (1, Hkv, P, D)
    _, hq, c, d = query.shape
    hkv = key.shape[1]
    g = hq // hkv
    p = pk.shape[2]
    cd = torch.promote_types(query.dtype, torch.float32)  # float32 scores (float64 stays float64)
    q = query.reshape(hkv, g * c, d).to(cd)  # (Hkv, g*C, D), heads of a KV group folded into queries
    s_pre = torch.matmul(q, pk[0].to(cd).transpose(1, 2)) * scaling  # (Hkv, g*C, P)
    if mode.bias is not None and (mode.bias_layers is None or layer in mode.bias_layers):
        add = mode.bias.to(cd)[None, None, :].expand(hkv, 1, p)  # (Hkv, 1, P)
        if mode.bias_heads is not None:
            on = torch.zeros(hkv, 1, 1, dtype=torch.bool, device=query.device)
            on[list(mode.bias_heads)] = True
            add = add * on
        s_pre = s_pre + add
    s_blk = torch.matmul(q, key[0].to(cd).transpose(1, 2)) * scaling  # (Hkv, g*C, C)
    causal = torch.ones(c, c, dtype=torch.bool, device=query.device).triu_(1).repeat(g, 1)  # (g*C, C)
    s_blk = s_blk.masked_fill(causal, float("-inf"))
    probs = torch.softmax(torch.cat([s_pre, s_blk], -1), dim=-1)  # (Hkv, g*C, P+C)
    out = torch.matmul(probs[..., :p], pv[0].to(cd)) + torch.matmul(probs[..., p:], value[0].to(cd))  # (Hkv, g*C, D)
    return out.to(query.dtype).view(hkv, g, c, d).permute(2, 0, 1, 3).reshape(1, c, hq, d)  # (1, C, Hq, D)


def _attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Any,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    mode = _STATE.get()
    if mode is None:
        raise RuntimeError("forward_influence attention used outside attention_mode()")
    if scaling is None:
        scaling = 1.0 / math.sqrt(query.shape[-1])
    layer = module.layer_idx
    if mode.on_tap is not None:
        mode.on_tap(
            AttentionTap(
                layer,
                module,
                query[0],
                key[0],
                value[0],
                scaling,
                mode.start,
                mode.attn_inputs.pop(layer, None),
            )
        )
    if isinstance(mode, RecordMode):
        mode.keys[layer] = key
        mode.values[layer] = value
        return kernels.causal_attention(query, key, value, scaling, mode.base_impl), None
    if isinstance(mode, BiasMode):
        return _biased_attention(module, query, key, value, scaling, mode), None
    assert isinstance(mode, AblateMode), type(mode)
    if mode.record_block:
        mode.keys[layer] = key
        mode.values[layer] = value
    return _ablated_attention(module, query, key, value, scaling, mode), None


def _ensure_registered() -> None:
    global _REGISTERED
    if not _REGISTERED:
        from transformers import AttentionInterface

        AttentionInterface.register(ATTN_NAME, _attention)
        _REGISTERED = True


@contextlib.contextmanager
def attention_mode(model: Any, mode: ForwardMode) -> Iterator[None]:
    """Route ``model``'s attention through :data:`ATTN_NAME` for the block."""
    _ensure_registered()
    previous = model.config._attn_implementation
    mode.base_impl = previous if previous in ("sdpa", "eager") else "sdpa"
    token = _STATE.set(mode)
    model.set_attn_implementation(ATTN_NAME)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)
        _STATE.reset(token)
