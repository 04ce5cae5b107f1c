"""Randomly initialised models: tiny ones for the tests and checks, and the study's shapes for speed and memory
(weights cannot travel to a GPU machine; the shapes are the public configs). Seeded in a forked RNG."""

from __future__ import annotations

from typing import Any

import torch

TINY_VOCAB = 96


def tiny_config(arch: str = "llama", attn: str = "sdpa") -> Any:
    """3 layers, 6 query / 2 KV heads (grouped), vocab 96; Qwen2 adds the qkv bias."""
    from transformers import LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=TINY_VOCAB,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=512,
        attn_implementation=attn,
    )
    if arch not in ("llama", "qwen2"):
        raise ValueError(f"unknown arch {arch!r}; valid: llama, qwen2")
    return LlamaConfig(**common) if arch == "llama" else Qwen2Config(**common)


def tiny_model(
    arch: str = "llama", attn: str = "sdpa", seed: int = 0, device: Any = "cpu", dtype: torch.dtype = torch.float32
) -> Any:
    """A tiny random model; weights x 3 so that predictions are not near-uniform
    (KLs not tiny). Built in float32 on the CPU (the same weights everywhere),
    then moved."""
    from transformers import LlamaForCausalLM, Qwen2ForCausalLM

    cls = LlamaForCausalLM if arch == "llama" else Qwen2ForCausalLM
    with torch.random.fork_rng(devices=[]):  # seeded without touching the caller's global RNG
        torch.manual_seed(seed)
        m = cls(tiny_config(arch, attn)).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(3.0)
    return m.to(device=device, dtype=dtype)


# Public configs of the study's models and the embedded one; "tiny" for smoke runs.
SHAPES: dict[str, dict[str, Any]] = {
    "llama3.1-8b": dict(
        arch="llama",
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        rope_theta=500000.0,
        max_position_embeddings=131072,
    ),
    "llama3.2-3b": dict(
        arch="llama",
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=28,
        num_attention_heads=24,
        num_key_value_heads=8,
        vocab_size=128256,
        rope_theta=500000.0,
        tie_word_embeddings=True,
        max_position_embeddings=131072,
    ),
    "r1-distill-qwen-7b": dict(
        arch="qwen2",
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
        rope_theta=10000.0,
        max_position_embeddings=131072,
    ),
    "smollm2-135m": dict(
        arch="llama",
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        rope_theta=100000.0,
        tie_word_embeddings=True,
        max_position_embeddings=8192,
    ),
    "tiny": dict(
        arch="llama",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=256,
        max_position_embeddings=8192,
    ),
}


def shape_config(shape: str, attn: str = "sdpa") -> Any:
    """The transformers config of ``SHAPES[shape]``."""
    from transformers import LlamaConfig, Qwen2Config

    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; valid: {', '.join(SHAPES)}")
    kw = dict(SHAPES[shape])
    cls = LlamaConfig if kw.pop("arch") == "llama" else Qwen2Config
    return cls(attn_implementation=attn, **kw)


def shaped_model(shape: str, device: torch.device | str, dtype: torch.dtype, seed: int = 0) -> Any:
    """A randomly initialised ``*ForCausalLM`` of ``SHAPES[shape]`` on ``device``
    in ``dtype``, in eval mode (built on the device: no host copy of the weights)."""
    from transformers import LlamaForCausalLM, Qwen2ForCausalLM

    cfg = shape_config(shape)
    cls = LlamaForCausalLM if cfg.model_type == "llama" else Qwen2ForCausalLM
    dev = torch.device(device)
    cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # parameters are created in dtype: no float32 copy of an 8B model
    try:
        with torch.random.fork_rng(devices=cuda), torch.device(device):  # seeded; the global RNG untouched
            torch.manual_seed(seed)
            model = cls(cfg)
    finally:
        torch.set_default_dtype(previous)
    return model.to(dtype).eval()
