"""Decoding setting: generate while keeping the cache at a budget (DESIGN §6).

The prompt is prefilled (and optionally cut once by a prefill compressor);
then each generated token runs over the kept cache at its true position and
its entry is appended. Whenever the cache exceeds the target and ``interval``
steps have passed since the last cut — or it reaches target + interval — the
compressor cuts it back to the target, scoring with the recent queries it
asked for (a rolling buffer). The cache therefore never holds more than
``target + interval`` entries per layer on average after the prompt's first
cut. Generated tokens' entropies (InfoKV) come from the distribution each
was drawn from, computed anyway.

Each cut asks the method for ``layer_budget(target)`` entries per layer, the
same rule as in prefill: a target below SnapKV's window (``cache_budget=48``
with ``window=64``) means the window is not kept whole and every entry
competes by its score (SnapKV, PyramidKV, InfoKV); ties go to the more recent
entry; sinks are kept only by a method's ``n_sink``.

>>> from forward_influence.compress import get_compressor, generate   # doctest: +SKIP
>>> out = generate(model, prompt_ids, get_compressor("snapkv", window=16),
...                DecodingConfig(cache_budget=256, interval=16, max_new_tokens=512))  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from forward_influence.compress.base import Compressor
from forward_influence.compress.cache import CompressedCache


@dataclass(frozen=True)
class DecodingConfig:
    """How to generate.

    Attributes
    ----------
    cache_budget : float
        Target cache size: tokens when ``>= 1`` (e.g. 256), or a fraction in
        (0, 1) of the tokens seen so far (e.g. 0.25).
    interval : int
        Steps between cuts.
    max_new_tokens : int
    temperature : float
        0: greedy; otherwise sampling with ``seed``.
    seed : int
    stop_ids : tuple of int
        Token ids that end generation (e.g. EOS), kept in the output.
    """

    cache_budget: float = 256
    interval: int = 16
    max_new_tokens: int = 256
    temperature: float = 0.0
    seed: int = 0
    stop_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not (self.cache_budget > 0 and (self.cache_budget < 1 or float(self.cache_budget).is_integer())):
            raise ValueError(f"cache_budget must be a token count >= 1 or a fraction in (0, 1), got {self.cache_budget}")
        if self.interval < 1:
            raise ValueError(f"interval must be >= 1, got {self.interval}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")

    def target(self, seen: int) -> float:
        """Average entries per layer to keep when ``seen`` tokens have run."""
        return self.cache_budget * seen if self.cache_budget < 1 else float(self.cache_budget)


@dataclass
class Generation:
    """What :func:`generate` produced.

    Attributes
    ----------
    tokens : list of int
        Generated token ids.
    cache_sizes : list of float
        Mean entries per layer after each step (the first after the prompt).
    cuts : int
        Cuts made during decoding (not counting a prefill compressor's).
    entropies : list of float
        Top-10 entropy of each generated token's distribution.
    """

    tokens: list[int] = field(default_factory=list)
    cache_sizes: list[float] = field(default_factory=list)
    cuts: int = 0
    entropies: list[float] = field(default_factory=list)


def _mean_size(cache: CompressedCache) -> float:
    sizes = cache.sizes()
    return sum(sizes) / len(sizes)


@torch.no_grad()
def generate(
    model: Any,
    prompt_ids: torch.Tensor,
    compressor: Compressor,
    config: DecodingConfig = DecodingConfig(),
    prefill_budget: float | None = None,
) -> Generation:
    """Generate from ``prompt_ids`` ``(T,)`` with decoding-time compression.

    Parameters
    ----------
    compressor : Compressor
        Scores the entries at every cut (its ``budget`` field is not used
        here; ``config.cache_budget`` sets the target).
    prefill_budget : float, optional
        Also cut the prompt's cache to this fraction right after the prefill.
    """
    from forward_influence.measurement.kl import entropy

    cache = CompressedCache(model, compressor)
    gen = torch.Generator().manual_seed(config.seed)
    logits = cache.extend(prompt_ids.to(model.device))[-1]  # (V,)
    if prefill_budget is not None and prefill_budget < 1:
        cache.cut(prefill_budget * cache.length)
    out = Generation()
    since = 0
    decode_cuts = cache.cuts

    def maybe_cut() -> None:
        nonlocal since
        target = config.target(cache.length)
        size = _mean_size(cache)
        if size > target and (since >= config.interval or size >= target + config.interval):
            cache.cut(target)
            since = 0

    maybe_cut()
    out.cache_sizes.append(_mean_size(cache))
    for _ in range(config.max_new_tokens):
        out.entropies.append(float(entropy(logits, topk=10)))
        if config.temperature == 0:
            tok = int(logits.argmax())
        else:
            probs = torch.softmax(logits.float().cpu() / config.temperature, dim=-1)
            tok = int(torch.multinomial(probs, 1, generator=gen))
        out.tokens.append(tok)
        if tok in config.stop_ids:
            break
        logits = cache.extend(torch.tensor([tok], device=model.device))[-1]
        since += 1
        maybe_cut()
        out.cache_sizes.append(_mean_size(cache))
    out.cuts = cache.cuts - decode_cuts
    return out


__all__ = ["DecodingConfig", "Generation", "generate"]
