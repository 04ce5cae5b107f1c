"""How each kind of measurement runs, one class each (docs/design.md §2, §4).

``split-exact`` (``--mode split``), ``sliding-exact`` (``--mode sliding``) and
``split-fisher`` (``--method fisher``) each own what differs between them: the
tokens a document needs, which sources it measures, how a document is cut
into units, the measurement of a unit, the signal settings, and the error text
that names the fix. :func:`strategy_for` is the one place a run's config picks
one; everything else (``measure()``, the units, the pools) is shared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from forward_influence.config import MeasureConfig
from forward_influence.errors import InputError
from forward_influence.measurement.documents import TokenizedDocument
from forward_influence.measurement.engine import Ablation, ForwardInfluenceEngine
from forward_influence.measurement.fisher import FisherEstimator
from forward_influence.measurement.signal_registry import SignalConfig

#: Sliding mode: sources per unit. Each unit may prefill its document again
#: (about ``T / (S (D + H))`` of the unit's work: 6% at T = 4096, D + H = 160).
SLIDING_UNIT_SOURCES = 512


@dataclass(frozen=True)
class Unit:
    """One work unit: a document's split, or a block of its sliding sources.

    Attributes
    ----------
    doc_index : int
        The document's index in the run (its checkpoint ``.parts/NNNNN``).
    part, n_parts : int
        This unit's index among the document's units, and their number.
    doc : TokenizedDocument
    split : int or None
        ``N`` (split mode).
    sources : tuple of int
        Sliding mode: the sources of this block.
    """

    doc_index: int
    part: int
    n_parts: int
    doc: TokenizedDocument
    split: int | None = None
    sources: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        doc_id = self.doc.doc.doc_id
        if self.split is not None:
            return f"{doc_id} N={self.split}"
        return f"{doc_id} sources {self.sources[0]}-{self.sources[-1]}" if self.sources else f"{doc_id} sources none"


@dataclass
class Measured:
    """What a unit's measurement gives: the long influence table and its floors.

    ``noise_floor`` / ``precision_floor``: per scored position (None for an
    estimate); ``shared_reference``: later batches reused the first null row;
    ``below`` / ``cells``: KLs under the precision floor and KLs compared with it.
    """

    influence: pd.DataFrame
    noise_floor: np.ndarray | None = None
    shared_reference: bool | None = None
    precision_floor: np.ndarray | None = None
    below: int = 0
    cells: int = 0


def influence_frame(
    doc_id: str,
    mode: str,
    split_pos: int | None,
    sources: list[int],
    targets: np.ndarray,
    kl: np.ndarray,
    layer: int | None,
    kv_head: int | None,
    taus: np.ndarray,
) -> pd.DataFrame:
    """Long table (:data:`forward_influence.store.schema.INFLUENCE_COLUMNS`) from ``kl``
    ``(S, n)`` with ``targets`` ``(S, n)`` absolute query positions and ``taus``
    ``(S,)`` each source's eviction time."""
    s, n = kl.shape
    src = np.repeat(np.asarray(sources, dtype=np.int64), n)
    tgt = targets.reshape(-1).astype(np.int64)
    tau = np.repeat(np.asarray(taus, dtype=np.int64), n)
    na = pd.array([pd.NA] * (s * n), dtype="Int64")
    return pd.DataFrame(
        {
            "doc_id": pd.Series([doc_id] * (s * n), dtype="string"),
            "mode": pd.Series([mode] * (s * n), dtype="string"),
            "split_pos": pd.array([split_pos] * (s * n), dtype="Int64") if split_pos is not None else na,
            "source_pos": src,
            "layer": pd.array([layer] * (s * n), dtype="Int64") if layer is not None else na,
            "kv_head": pd.array([kv_head] * (s * n), dtype="Int64") if kv_head is not None else na,
            "target_pos": tgt,
            "distance": tgt - src,
            "distance_tau": tgt - tau,
            "kl": kl.reshape(-1),
        }
    )


def _below(res: Any) -> tuple[int, int]:
    """KLs of an exact result under their position's precision floor, and KLs compared."""
    if res.precision_floor is None:
        return 0, 0
    return int((res.kl < res.precision_floor[None, :]).sum()), int(res.kl.size)


class Strategy:
    """What differs between the kinds of measurement (see the module docstring)."""

    name: ClassVar[str]

    def __init__(self, cfg: MeasureConfig):
        self.cfg = cfg

    # ------------------------------------------------------------ documents
    def tokens_needed(self) -> int:
        """The fewest tokens a document needs."""
        raise NotImplementedError

    def length_flags(self) -> str:
        """The flags whose sum is :meth:`tokens_needed` (named in error lines)."""
        raise NotImplementedError

    def generated_needed(self, n_prompt: int) -> int:
        """Generated tokens a generation needs after an ``n_prompt``-token prompt."""
        raise NotImplementedError

    def document_limit(self) -> int | None:
        """Tokens kept of each document (None: all; ``--max-tokens`` caps every mode)."""
        return self.cfg.max_tokens

    def sources(self, tdoc: TokenizedDocument, split: int | None = None) -> list[int]:
        """The source positions measured in ``tdoc`` (at split ``split``)."""
        raise NotImplementedError

    def sources_range(self, tdoc: TokenizedDocument) -> str:
        """Where sources must lie (for the error line of ``--positions`` out of range)."""
        raise NotImplementedError

    def check_config(self) -> None:
        """Refuse settings this kind cannot measure (before anything runs)."""
        if self.cfg.max_tokens is not None and self.cfg.max_tokens < self.tokens_needed():
            need = self.tokens_needed()
            raise InputError(f"--max-tokens {self.cfg.max_tokens} is below the {need} tokens this mode needs; raise it")

    def problem(self, tdoc: TokenizedDocument) -> str | None:
        """Why ``tdoc`` cannot be measured (one line naming the fix), or None."""
        t, p, name = len(tdoc), tdoc.n_prompt, tdoc.doc.doc_id
        need = self.tokens_needed()
        if p is None and t < need:
            return (
                f"document {name!r} has {t} tokens, fewer than {self.length_flags()} = {need}; "
                "lower them or drop it with --doc-ids"
            )
        if p is not None and t - p < self.generated_needed(p):
            gen = self.generated_needed(p)
            return (
                f"generation {name!r} has {t - p} new tokens after its {p}-token prompt, fewer than "
                f"{self.generated_flags()} = {gen}; raise --min-new-tokens to {gen}"
            )
        if self.cfg.positions is not None and not self.sources(tdoc, self._any_split()):
            return (
                f"--positions {list(self.cfg.positions)[:5]} are all out of range for document {name!r}: "
                f"sources must be {self.sources_range(tdoc)}"
            )
        return None

    def generated_flags(self) -> str:
        return self.length_flags() + " minus the prompt"

    def _any_split(self) -> int | None:
        return None

    # ---------------------------------------------------------------- units
    def plan(self, doc_index: int, tdoc: TokenizedDocument) -> list[Unit]:
        """The units of one document, in the order their rows appear in its tables."""
        return [Unit(doc_index, j, len(self.cfg.n_prefix), tdoc, split=n) for j, n in enumerate(self.cfg.n_prefix)]

    def signal_config(self) -> SignalConfig:
        """The signal settings: one eviction time per split."""
        c = self.cfg
        return SignalConfig(
            topk=c.topk, window=c.window, rep_layer=c.rep_layer, words=c.words, splits=tuple(c.n_prefix)
        )

    def measure(self, engine: ForwardInfluenceEngine, unit: Unit, prefill: Any, progress: bool) -> Measured:
        """Measure one unit over the document's ``prefill``."""
        raise NotImplementedError

    def _scope(self) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
        c = self.cfg
        return ((c.layer,) if c.layer is not None else None), ((c.kv_head,) if c.kv_head is not None else None)


class _Split(Strategy):
    """Split mode: prefill ``N``, score ``F`` future tokens, every source evicted at ``tau = N``."""

    def tokens_needed(self) -> int:
        return max(self.cfg.n_prefix) + self.cfg.n_future

    def length_flags(self) -> str:
        return "--n-prefix + --n-future"

    def generated_needed(self, n_prompt: int) -> int:
        return max(0, self.tokens_needed() - n_prompt)

    def document_limit(self) -> int | None:
        limits = [self.tokens_needed()] + ([self.cfg.max_tokens] if self.cfg.max_tokens is not None else [])
        return min(limits)

    def sources(self, tdoc: TokenizedDocument, split: int | None = None) -> list[int]:
        limit = split if split is not None else max(self.cfg.n_prefix)
        if self.cfg.positions is not None:
            return [p for p in self.cfg.positions if p < limit]
        return list(range(0, limit, self.cfg.stride))

    def sources_range(self, tdoc: TokenizedDocument) -> str:
        return f"< {max(self.cfg.n_prefix)}"

    def _any_split(self) -> int | None:
        return max(self.cfg.n_prefix)


class SplitExact(_Split):
    """Exact split-mode Forward Influence: the ablation engine."""

    name = "split-exact"

    def measure(self, engine: ForwardInfluenceEngine, unit: Unit, prefill: Any, progress: bool) -> Measured:
        c, n, doc_id = self.cfg, unit.split, unit.doc.doc.doc_id
        layers, heads = self._scope()
        sources = self.sources(unit.doc, n)
        bar = tqdm(total=len(sources), desc=f"{doc_id[:24]} N={n}", disable=not progress, leave=False)
        ablations = [Ablation((s,), layers, heads) for s in sources]
        res = engine.split(unit.doc.input_ids, n, c.n_future, ablations, prefill=prefill, progress=bar.update)
        bar.close()
        targets = np.broadcast_to(np.arange(n, n + c.n_future), res.kl.shape)
        taus = np.full(len(sources), n)
        influence = influence_frame(doc_id, "split", n, sources, targets, res.kl, c.layer, c.kv_head, taus)
        return Measured(influence, res.noise_floor, res.shared_reference, res.precision_floor, *_below(res))


class SplitFisher(_Split):
    """The second-order (Fisher) estimate of split-mode FI, every source at once (docs/design.md §4)."""

    name = "split-fisher"

    def measure(self, engine: ForwardInfluenceEngine, unit: Unit, prefill: Any, progress: bool) -> Measured:
        c, n, doc_id = self.cfg, unit.split, unit.doc.doc.doc_id
        layers, heads = self._scope()
        sources = self.sources(unit.doc, n)
        est = FisherEstimator(
            engine.model, samples=c.samples, targets=c.fisher_targets, blocks=c.fisher_blocks, seed=c.seed
        )
        r = est.split(unit.doc.input_ids, n, c.n_future, sources, layers, heads, prefill=prefill)
        centres = np.array([n + (a + b - 1) // 2 for a, b in r.block_bounds])
        targets = np.broadcast_to(centres, r.kl.shape)
        taus = np.full(len(sources), n)
        influence = influence_frame(doc_id, "split", n, sources, targets, r.kl, c.layer, c.kv_head, taus)
        return Measured(influence.assign(kl_se=r.stderr.reshape(-1)))


class SlidingExact(Strategy):
    """Sliding mode: each source seen by ``D`` queries, evicted at ``tau = i + D``, ``H`` queries scored."""

    name = "sliding-exact"

    def tokens_needed(self) -> int:
        return self.cfg.delay + self.cfg.horizon + 1

    def length_flags(self) -> str:
        return "--delay + --horizon + 1"

    def generated_needed(self, n_prompt: int) -> int:
        return self.cfg.delay + self.cfg.horizon  # one source at s = n_prompt

    def generated_flags(self) -> str:
        return "--delay + --horizon"

    def limit(self, n_tokens: int) -> int:
        """Sources must be below this: ``s + D + H <= T``."""
        return n_tokens - self.cfg.delay - self.cfg.horizon + 1

    def sources(self, tdoc: TokenizedDocument, split: int | None = None) -> list[int]:
        """Of a generation, only generated tokens (``s >= n_prompt``), the stride counted from the first."""
        start, limit = tdoc.n_prompt or 0, self.limit(len(tdoc))
        if self.cfg.positions is not None:
            return [p for p in self.cfg.positions if start <= p < limit]
        return list(range(start, limit, self.cfg.stride))

    def sources_range(self, tdoc: TokenizedDocument) -> str:
        return f"in [{tdoc.n_prompt or 0}, {self.limit(len(tdoc))})"

    def plan(self, doc_index: int, tdoc: TokenizedDocument) -> list[Unit]:
        srcs = self.sources(tdoc)
        blocks = [tuple(srcs[a : a + SLIDING_UNIT_SOURCES]) for a in range(0, len(srcs), SLIDING_UNIT_SOURCES)] or [()]
        return [Unit(doc_index, j, len(blocks), tdoc, sources=b) for j, b in enumerate(blocks)]

    def signal_config(self) -> SignalConfig:
        """The signal settings: each source's own eviction time ``i + D``."""
        c = self.cfg
        return SignalConfig(topk=c.topk, window=c.window, rep_layer=c.rep_layer, words=c.words, delay=c.delay)

    def measure(self, engine: ForwardInfluenceEngine, unit: Unit, prefill: Any, progress: bool) -> Measured:
        c, doc_id = self.cfg, unit.doc.doc.doc_id
        layers, heads = self._scope()
        sources = list(unit.sources)
        bar = tqdm(total=len(sources), desc=f"{doc_id[:24]} sliding", disable=not progress, leave=False)
        res = engine.sliding(
            unit.doc.input_ids, sources, c.horizon, layers, heads, prefill=prefill, progress=bar.update, delay=c.delay
        )
        bar.close()
        taus = np.asarray(sources, dtype=np.int64) + c.delay
        targets = taus[:, None] + np.arange(c.horizon)[None, :]
        influence = influence_frame(doc_id, "sliding", None, sources, targets, res.kl, c.layer, c.kv_head, taus)
        return Measured(influence, res.noise_floor, None, res.precision_floor, *_below(res))


def strategy_for(cfg: MeasureConfig) -> Strategy:
    """The one place a run's ``--mode`` and ``--method`` pick how it is measured."""
    if cfg.method == "fisher":
        return SplitFisher(cfg)  # config validation allows Fisher in split mode only
    return SplitExact(cfg) if cfg.mode == "split" else SlidingExact(cfg)
