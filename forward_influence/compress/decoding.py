"""Decoding setting: transformers' ``generate`` with the cache kept at a budget (docs/design.md §6.4).

As NVIDIA kvpress does with its presses, a compressor applies to a model for
the duration of a ``with`` block, and ``generate`` itself decodes (greedy,
sampling, stopping criteria are transformers'):

>>> from forward_influence.compress import DecodingConfig, get_compressor   # doctest: +SKIP
>>> from forward_influence.hf.generation import generate                      # doctest: +SKIP
>>> with get_compressor("snapkv", window=16).apply(model, DecodingConfig(cache_budget=256, interval=16)) as run:
...     tokens = generate(model, prompt_ids, max_new_tokens=512, eos=[tok.eos_token_id])   # doctest: +SKIP
>>> run.cache_sizes[-1], run.cuts                                              # doctest: +SKIP

(``model.generate(input_ids=...)`` works the same way inside the block.) The
prompt is prefilled with full attention (and optionally cut once,
``prefill_budget``); then each generated token runs over the kept cache at
its true position and its entry is appended
(:mod:`forward_influence.hf.cut_cache`: a ``transformers.Cache`` whose
layers may hold different numbers of entries). Whenever the cache exceeds the
target and ``interval`` steps have passed since the last cut — or it reaches
target + interval — the compressor cuts it back to the target, scoring with
the recent queries it asked for (a rolling buffer). The cache therefore never
holds more than ``target + interval`` entries per layer on average after the
prompt's first cut.

Each cut asks the method for ``layer_budget(target)`` entries per layer, the
same rule as in prefill: a target below SnapKV's window (``cache_budget=48``
with ``window=64``) means the window is not kept whole and every entry
competes by its score (SnapKV, PyramidKV, InfoKV); ties go to the more recent
entry; sinks are kept only by a method's ``n_sink``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from forward_influence.compress.compressed_cache import Block, CompressedCache
from forward_influence.compress.entries import Method
from forward_influence.hf import cut_cache


@dataclass(frozen=True)
class DecodingConfig:
    """When to cut while generating.

    Attributes
    ----------
    cache_budget : float
        Target cache size: tokens when ``>= 1`` (e.g. 256), or a fraction in
        (0, 1) of the tokens seen so far (e.g. 0.25).
    interval : int
        Steps between cuts.
    prefill_budget : float, optional
        Also cut the prompt's cache to this fraction right after the prefill.
    """

    cache_budget: float = 256
    interval: int = 16
    prefill_budget: float | None = None

    def __post_init__(self) -> None:
        if not (self.cache_budget > 0 and (self.cache_budget < 1 or float(self.cache_budget).is_integer())):
            raise ValueError(
                f"cache_budget must be a token count >= 1 or a fraction in (0, 1), got {self.cache_budget}"
            )
        if self.interval < 1:
            raise ValueError(f"interval must be >= 1, got {self.interval}")
        if self.prefill_budget is not None and not 0 < self.prefill_budget <= 1:
            raise ValueError(f"prefill_budget must be in (0, 1], got {self.prefill_budget}")

    def target(self, seen: int) -> float:
        """Average entries per layer to keep when ``seen`` tokens have run."""
        return self.cache_budget * seen if self.cache_budget < 1 else float(self.cache_budget)


@dataclass
class Decoding:
    """What :func:`apply` yields: the cut cache, the decoding policy and its record.

    Attributes
    ----------
    cache : CompressedCache
        The kept entries (read it after ``generate`` to inspect the last cut).
    config : DecodingConfig or None
        None: never cut (decode over ``cache`` as it is).
    hf_cache : transformers.Cache
        The ``CutCache`` transformers decodes with (:attr:`generate_kwargs` passes it).
    cache_sizes : list of float
        Mean entries per layer after each forward (the first after the prompt).
    cuts : int
        Cuts made while decoding (not counting the ``prefill_budget`` one).
    """

    cache: CompressedCache
    config: DecodingConfig | None
    hf_cache: Any = None
    cache_sizes: list[float] = field(default_factory=list)
    cuts: int = 0
    _since: int = 0

    # --- the BlockStore protocol of forward_influence.hf.cut_cache, with the policy after each block
    @property
    def length(self) -> int:
        return self.cache.length

    @property
    def kv(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return self.cache.kv

    def begin_block(self, ids: torch.Tensor) -> Block:
        return self.cache.begin_block(ids)

    def end_block(self, kv: list[tuple[torch.Tensor, torch.Tensor]], hidden: torch.Tensor, block: Block) -> None:
        first = not self.cache.kv
        self.cache.end_block(kv, hidden, block)
        cfg = self.config
        if cfg is not None:
            if first and cfg.prefill_budget is not None and cfg.prefill_budget < 1:
                self.cache.cut(cfg.prefill_budget * self.cache.length)
            self._since += 0 if first else int(hidden.shape[0])
            target = cfg.target(self.cache.length)
            size = self.mean_size()
            if size > target and (self._since >= cfg.interval or size >= target + cfg.interval):
                self.cache.cut(target)
                self.cuts += 1
                self._since = 0
        self.cache_sizes.append(self.mean_size())

    def mean_size(self) -> float:
        sizes = self.cache.sizes()
        return sum(sizes) / len(sizes)

    @property
    def generate_kwargs(self) -> dict[str, Any]:
        """``{cache keyword: hf_cache}`` for ``generate``; needed when :attr:`cache` already holds tokens."""
        return {cut_cache.cache_kwarg(self.cache.model): self.hf_cache}


@contextlib.contextmanager
def apply(
    model: Any,
    compressor: Method,
    config: DecodingConfig | None = DecodingConfig(),
    cache: CompressedCache | None = None,
) -> Iterator[Decoding]:
    """Decode with ``compressor`` inside the block: every forward of ``model``
    (``model.generate`` or :func:`forward_influence.hf.generation.generate`) runs
    over a cut cache, cut by ``config``'s policy.

    Parameters
    ----------
    compressor : Method
        Scores the entries at every cut (its ``budget`` field is not used
        here; ``config.cache_budget`` sets the target).
    config : DecodingConfig or None
        None: never cut.
    cache : CompressedCache, optional
        Continue this cache (e.g. a prompt cut by
        :func:`~forward_influence.compress.compressed_cache.compress_prompt`; it is
        extended in place — pass a :meth:`~CompressedCache.fork`). ``generate``
        then needs ``**run.generate_kwargs`` and ``input_ids`` that start with
        the ``cache.length`` tokens it holds.
    """
    run = Decoding(CompressedCache(model, compressor) if cache is None else cache, config)
    with cut_cache.decode_with(model, run) as hf_cache:
        run.hf_cache = hf_cache
        yield run


__all__ = ["Decoding", "DecodingConfig", "apply"]
