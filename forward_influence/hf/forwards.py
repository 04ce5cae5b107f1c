"""The forwards the engine, the signals, the Fisher estimate and the compressors run (through :mod:`.attention`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from forward_influence.hf import anatomy
from forward_influence.hf.attention import (
    AblateMode,
    AblationBatch,
    AttentionTap,
    BiasMode,
    ForwardMode,
    RecordMode,
    attention_mode,
)


@dataclass
class Prefill:
    """One causal forward of a whole sequence.

    Attributes
    ----------
    kv : list of (K, V)
        Per layer ``(1, Hkv, T, D)`` after RoPE: the full KV cache.
    hidden : torch.Tensor
        ``(T, Dm)`` final hidden state (after the last norm), before the LM head.
    """

    kv: list[tuple[torch.Tensor, torch.Tensor]]
    hidden: torch.Tensor

    def prefix(self, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Views of the first ``n`` cache entries of every layer (no copy)."""
        return [(k[:, :, :n], v[:, :, :n]) for k, v in self.kv]


@contextlib.contextmanager
def forward_hooks(
    model: Any, mode: ForwardMode, layer_hooks: Callable[[int, torch.Tensor], None] | None, attn_inputs: bool
) -> Iterator[None]:
    """Forward hooks for the block: decoder-layer outputs to ``layer_hooks(layer,
    h (C, Dm))`` (row 0) and, with ``attn_inputs``, each attention module's input
    hidden state into ``mode.attn_inputs``. Always removed on exit."""
    handles = []
    try:
        for l, layer in enumerate(anatomy.decoder_layers(model)):
            if layer_hooks is not None:

                def hook(_m: Any, _inp: Any, output: Any, l: int = l) -> None:
                    h = output[0] if isinstance(output, tuple) else output
                    layer_hooks(l, h[0])

                handles.append(layer.register_forward_hook(hook))
            if attn_inputs:

                def pre(_m: Any, args: tuple, kwargs: dict, l: int = l) -> None:
                    h = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
                    mode.attn_inputs[l] = h[0]

                handles.append(layer.self_attn.register_forward_pre_hook(pre, with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def record_prefill(
    model: Any,
    input_ids: torch.Tensor,
    *,
    on_tap: Callable[[AttentionTap], None] | None = None,
    layer_hooks: Callable[[int, torch.Tensor], None] | None = None,
    attn_inputs: bool = False,
) -> Prefill:
    """Run ``input_ids`` ``(T,)`` once, keeping every layer's K/V.

    ``on_tap`` gets each layer's :class:`AttentionTap` (queries ``(Hq, T, D)`` and keys
    after RoPE, the scaling; the attention input when ``attn_inputs``);
    ``layer_hooks(layer, h (T, Dm))`` sees each decoder layer's output.
    """
    mode = RecordMode(on_tap=on_tap)
    ids = input_ids.to(model.device)[None]  # (1, T)
    pos = torch.arange(ids.shape[1], device=model.device)[None]  # (1, T)
    with forward_hooks(model, mode, layer_hooks, attn_inputs), attention_mode(model, mode):
        out = anatomy.base_model(model)(input_ids=ids, position_ids=pos, use_cache=False)
    kv = [(mode.keys[l], mode.values[l]) for l in range(anatomy.n_layers(model))]
    return Prefill(kv=kv, hidden=out.last_hidden_state[0])


@torch.no_grad()
def ablated_forward(
    model: Any,
    prefix: Sequence[tuple[torch.Tensor, torch.Tensor]],
    block_ids: torch.Tensor,
    batch: AblationBatch,
    max_score_bytes: int = 8 << 20,
    kernel: str = "auto",
) -> torch.Tensor:
    """Run ``block_ids`` ``(C,)`` after the shared ``prefix`` once per row of ``batch``.

    ``kernel``: ``"matmul"`` (explicit, any device/dtype), ``"flash"`` (PyTorch's
    fused attention for the prefix: CPU float32, CUDA 16/32-bit), ``"auto"`` (the
    device's default kernel where it applies).

    Returns
    -------
    torch.Tensor
        ``(B, C, Dm)`` final hidden states.
    """
    p = prefix[0][0].shape[2]
    mode = AblateMode(prefix=prefix, start=p, batch=batch, max_score_bytes=max_score_bytes, kernel=kernel)
    return _block_forward(model, block_ids, len(batch), mode, dither=batch.dither)


DITHER_SEED = 0x5EED


def dither_embeddings(embeds: torch.Tensor, seed: int = DITHER_SEED) -> torch.Tensor:
    """Move every element of ``embeds`` ``(C, Dm)`` by one rounding step of its dtype.

    ``x * (1 ± eps)`` with a fixed pseudo-random sign per element: the
    smallest change the arithmetic can represent, so the forward that follows
    is exact-arithmetic identical up to that one step, while every rounding
    after it is decorrelated from the undithered row's — as the roundings of
    an ablated row are. The KL of such a row against the reference is the
    *precision floor*: the KL that rounding alone produces when two rows
    differ (median per position on SmolLM2: float32 ~1e-12, bfloat16 ~6e-4).
    """
    g = torch.Generator().manual_seed(seed)
    sign = torch.randint(0, 2, embeds.shape, generator=g).to(device=embeds.device, dtype=embeds.dtype).mul_(2).sub_(1)
    return embeds * (1 + torch.finfo(embeds.dtype).eps * sign)


def _block_forward(
    model: Any, block_ids: torch.Tensor, rows: int, mode: AblateMode | BiasMode, dither: Sequence[int] = ()
) -> torch.Tensor:
    """``rows`` copies of ``block_ids`` ``(C,)`` at their true positions after
    ``mode.prefix``, attention routed through ``mode`` → ``(rows, C, Dm)``;
    the ``dither`` rows start from :func:`dither_embeddings`."""
    ids = block_ids.to(model.device)[None].expand(rows, -1)  # (rows, C)
    pos = anatomy.position_ids(mode.start, ids.shape[1], rows, model.device)  # (rows, C)
    inputs: dict[str, torch.Tensor] = {"input_ids": ids}
    if dither:
        embeds = model.get_input_embeddings()(ids)  # (rows, C, Dm)
        for r in dither:
            embeds[r] = dither_embeddings(embeds[r])
        inputs = {"inputs_embeds": embeds}
    with attention_mode(model, mode):
        out = anatomy.base_model(model)(position_ids=pos, use_cache=False, **inputs)
    return out.last_hidden_state


def biased_forward(
    model: Any,
    prefix: Sequence[tuple[torch.Tensor, torch.Tensor]],
    block_ids: torch.Tensor,
    bias: torch.Tensor,
    layers: Sequence[int] | None = None,
    kv_heads: Sequence[int] | None = None,
) -> torch.Tensor:
    """Run ``block_ids`` ``(C,)`` after ``prefix`` with ``bias`` ``(P,)`` added to
    the block queries' attention logits of the prefix keys (differentiable in
    ``bias``; ``bias = log m``, see :mod:`forward_influence.measurement.fisher`).

    Returns ``(1, C, Dm)`` final hidden states.
    """
    mode = BiasMode(
        prefix=prefix,
        start=prefix[0][0].shape[2],
        bias=bias,
        bias_layers=None if layers is None else frozenset(layers),
        bias_heads=None if kv_heads is None else frozenset(kv_heads),
    )
    return _block_forward(model, block_ids, 1, mode)


@torch.no_grad()
def continue_forward(
    model: Any,
    kv: Sequence[tuple[torch.Tensor, torch.Tensor]],
    block_ids: torch.Tensor,
    start: int,
    on_tap: Callable[[AttentionTap], None] | None = None,
    layer_hooks: Callable[[int, torch.Tensor], None] | None = None,
    attn_inputs: bool = False,
) -> Prefill:
    """Run ``block_ids`` ``(C,)`` at true positions ``start..start+C-1`` over a
    (compressed) cache ``kv``: per layer ``(1, Hkv, n_l, D)``, keys after RoPE;
    ``n_l`` may differ between layers and the entries need not be contiguous
    positions. Nothing is hidden (a one-row null batch of the ``ablate`` path).

    Returns
    -------
    Prefill
        ``kv``: this block's own new K/V per layer ``(1, Hkv, C, D)``;
        ``hidden``: ``(C, Dm)`` final hidden states.
    """
    batch = AblationBatch(
        positions=[()],
        select=torch.zeros(1, anatomy.n_layers(model), anatomy.n_kv_heads(model), dtype=torch.bool),
        tau=torch.tensor([start]),
    )
    mode = AblateMode(prefix=kv, start=start, batch=batch, on_tap=on_tap, record_block=True)
    with forward_hooks(model, mode, layer_hooks, attn_inputs):
        hidden = _block_forward(model, block_ids, 1, mode)
    new = [(mode.keys[l], mode.values[l]) for l in range(anatomy.n_layers(model))]
    return Prefill(kv=new, hidden=hidden[0])
