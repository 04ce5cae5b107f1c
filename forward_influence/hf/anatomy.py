"""Model anatomy: where a Llama/Qwen2/Mistral-style model keeps its decoder, heads, RoPE and LM head."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def base_model(model: Any) -> Any:
    """The decoder stack (``model.model`` for ``*ForCausalLM``)."""
    return model.get_decoder() if hasattr(model, "get_decoder") else model.model


def lm_head(model: Any) -> torch.nn.Module:
    """The output projection hidden → vocabulary."""
    return model.get_output_embeddings()


def n_layers(model: Any) -> int:
    return int(model.config.num_hidden_layers)


def n_kv_heads(model: Any) -> int:
    """KV heads of a model or of its config (``num_key_value_heads``; the query
    heads where the config has none or None: multi-head attention)."""
    cfg = getattr(model, "config", model)
    return int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)


def decoder_layers(model: Any) -> Sequence[torch.nn.Module]:
    return base_model(model).layers


def position_ids(start: int, n: int, rows: int, device: torch.device) -> torch.Tensor:
    """``(rows, n)`` absolute positions ``start .. start+n-1`` (true RoPE positions)."""
    return torch.arange(start, start + n, device=device)[None].expand(rows, n)


def prerope_queries(module: Any, hidden: torch.Tensor) -> torch.Tensor:
    """Queries before RoPE from an attention module's input ``(C, Dm)`` →
    ``(Hq, C, D)`` (``q_proj``, then ``q_norm`` where the model has one)."""
    d = module.head_dim
    q = module.q_proj(hidden).view(hidden.shape[0], -1, d)  # (C, Hq, D)
    if getattr(module, "q_norm", None) is not None:
        q = module.q_norm(q)
    return q.transpose(0, 1)  # (Hq, C, D)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """RoPE's ``rotate_half``: ``(x1, x2) -> (-x2, x1)`` over the last dim, so
    rotated ``x`` is ``x * cos + rotate_half(x) * sin``.

    >>> rotate_half(torch.tensor([1.0, 2.0, 3.0, 4.0])).tolist()
    [-3.0, -4.0, 1.0, 2.0]
    """
    d = x.shape[-1] // 2
    return torch.cat([-x[..., d:], x[..., :d]], dim=-1)


def rope_cos_sin(model: Any, positions: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's rotary ``cos, sin`` at ``positions`` ``(n,)`` → each ``(n, D)``."""
    cos, sin = base_model(model).rotary_emb(like, positions.to(like.device)[None])
    return cos[0], sin[0]


def lm_head_is_linear(model: Any) -> bool:
    """True when logits are a plain linear map of the final hidden state
    (no soft-capping or scaling), so logit differences are ``W (h' - h)``."""
    cfg = model.config
    head = lm_head(model)
    return (
        isinstance(head, torch.nn.Linear)
        and head.bias is None
        and not getattr(cfg, "final_logit_softcapping", None)
        and getattr(cfg, "logit_scale", None) in (None, 1.0)
        and getattr(cfg, "logits_scaling", None) in (None, 1.0)
    )


def logits_from_hidden(model: Any, hidden: torch.Tensor) -> torch.Tensor:
    """LM head in float32 (float64 models stay float64): ``(..., Dm)`` → ``(..., V)``."""
    out = lm_head(model)(hidden)
    return out.to(torch.promote_types(out.dtype, torch.float32))
