"""Work units of a measurement: what one worker computes, and how the driver
puts a document back together.

A document is measured as *units* (:func:`plan_units`): in split mode one
unit per split ``N`` (``--method fisher`` too); in sliding mode blocks of at
most :data:`SLIDING_UNIT_SOURCES` sources. :func:`measure_unit` is the one
per-unit function: the single-process loop and every Ray worker run it
(through :class:`MeasureJob`). :func:`assemble_document` turns a document's
unit results into its tables and meta; the driver runs it and checkpoints the
document. A unit's numbers do not depend on which worker ran it or in what
order: part 0 of a document also computes the per-token signals from its
prefill, other parts reuse a cached prefill of the same document or run their
own, and a prefill with the signal hooks gives bitwise the same cache as one
without (the hooks only observe).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from forward_influence.config import MeasureConfig
from forward_influence.hf.models import LoadedModel
from forward_influence.measurement import signals as sig
from forward_influence.measurement.documents import TokenizedDocument
from forward_influence.measurement.engine import Ablation, ForwardInfluenceEngine
from forward_influence.measurement.fisher import FisherEstimator
from forward_influence.store.tables import summarize_influence

INFLUENCE_COLUMNS = [
    "doc_id",
    "mode",
    "split_pos",
    "source_pos",
    "layer",
    "kv_head",
    "target_pos",
    "distance",
    "distance_tau",
    "kl",
]

#: Sliding mode: sources per unit. Each unit may prefill its document again
#: (about ``T / (S (D + H))`` of the unit's work: 6% at T = 4096, D + H = 160).
SLIDING_UNIT_SOURCES = 512


def sources_for(cfg: MeasureConfig, limit: int) -> list[int]:
    """Source positions below ``limit`` (``--positions`` or every ``--stride``-th)."""
    if cfg.positions is not None:
        return [p for p in cfg.positions if p < limit]
    return list(range(0, limit, cfg.stride))


def sliding_limit(cfg: MeasureConfig, n_tokens: int) -> int:
    """Sliding-mode sources must be below this: ``s + D + H <= T``."""
    return n_tokens - cfg.delay - cfg.horizon + 1


def sliding_sources(cfg: MeasureConfig, tdoc: TokenizedDocument) -> list[int]:
    """Sliding-mode sources of a document; of a generation, only generated
    tokens (``s >= n_prompt``), the stride counted from the first of them."""
    start, limit = tdoc.n_prompt or 0, sliding_limit(cfg, len(tdoc))
    if cfg.positions is not None:
        return [p for p in cfg.positions if start <= p < limit]
    return list(range(start, limit, cfg.stride))


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


def plan_units(cfg: MeasureConfig, doc_index: int, tdoc: TokenizedDocument) -> list[Unit]:
    """The units of one document, in the order their rows appear in its tables."""
    if cfg.mode == "split":
        return [Unit(doc_index, j, len(cfg.n_prefix), tdoc, split=n) for j, n in enumerate(cfg.n_prefix)]
    srcs = sliding_sources(cfg, tdoc)
    blocks = [tuple(srcs[a : a + SLIDING_UNIT_SOURCES]) for a in range(0, len(srcs), SLIDING_UNIT_SOURCES)] or [()]
    return [Unit(doc_index, j, len(blocks), tdoc, sources=b) for j, b in enumerate(blocks)]


@dataclass
class UnitResult:
    """What a unit sends back to the driver.

    ``signals`` (part 0 only): ``tokens``, ``source_signals`` and, when
    computed, ``token_layers``. ``below`` / ``cells``: KLs under the precision
    floor and KLs compared with it.
    """

    doc_index: int
    part: int
    influence: pd.DataFrame
    signals: dict[str, pd.DataFrame] | None
    noise_floor: np.ndarray | None
    shared_reference: bool | None
    precision_floor: np.ndarray | None
    below: int
    cells: int
    seconds_prefill: float
    seconds_ablation: float


def tokens_table(tdoc: TokenizedDocument) -> pd.DataFrame:
    """One row per token: doc_id, pos, token_id, token (the tokenizer's
    symbol, e.g. ``Ġanalysis``), char_start, char_end, text (the document's
    characters ``[char_start, char_end)``, e.g. `` analysis``) and, for a
    generation, ``segment`` (prompt / generated)."""
    t = len(tdoc)
    text = tdoc.doc.text
    df = pd.DataFrame(
        {
            "doc_id": pd.Series([tdoc.doc.doc_id] * t, dtype="string"),
            "pos": np.arange(t, dtype=np.int64),
            "token_id": tdoc.input_ids.numpy().astype(np.int64),
            "token": pd.Series(tdoc.tokens, dtype="string"),
            "char_start": tdoc.offsets[:, 0],
            "char_end": tdoc.offsets[:, 1],
            "text": pd.Series([text[int(a) : int(b)] for a, b in tdoc.offsets], dtype="string"),
        }
    )
    if tdoc.n_prompt is not None:
        df["segment"] = pd.Series(np.where(np.arange(t) < tdoc.n_prompt, "prompt", "generated"), dtype="string")
    return df


def influence_frame(
    doc_id: str,
    mode: str,
    split_pos: int | None,
    sources: Sequence[int],
    targets: np.ndarray,
    kl: np.ndarray,
    layer: int | None,
    kv_head: int | None,
    taus: np.ndarray,
) -> pd.DataFrame:
    """Long table from ``kl`` ``(S, n)`` with ``targets`` ``(S, n)`` absolute
    query positions and ``taus`` ``(S,)`` each source's eviction time."""
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


def measure_unit(
    engine: ForwardInfluenceEngine, unit: Unit, cfg: MeasureConfig, prefill: Any = None, progress: bool = False
) -> tuple[UnitResult, Any]:
    """Measure one unit; returns its result and the document's prefill (for reuse).

    Parameters
    ----------
    prefill : forward_influence.hf.forwards.Prefill, optional
        A prefill of this unit's document to reuse (not for part 0, which
        records the signals during its own prefill).
    """
    tdoc, doc_id, ids = unit.doc, unit.doc.doc.doc_id, unit.doc.input_ids
    t0 = time.perf_counter()
    signals = None
    if unit.part == 0:
        collector = sig.SignalCollector(engine.model, len(tdoc), sig.SignalConfig.from_measure(cfg))
        prefill = engine.prefill(ids, on_attention=collector.on_attention, layer_hooks=collector.on_layer)
        tokens, source_signals, token_layers = collector.finish(prefill, tokens_table(tdoc), tdoc)
        signals = {"tokens": tokens, "source_signals": source_signals}
        if token_layers is not None:
            signals["token_layers"] = token_layers
    elif prefill is None:
        prefill = engine.prefill(ids)
    t_prefill = time.perf_counter() - t0
    layers = (cfg.layer,) if cfg.layer is not None else None
    heads = (cfg.kv_head,) if cfg.kv_head is not None else None
    t1 = time.perf_counter()
    floor = shared = precision = None
    below = cells = 0
    if cfg.method == "fisher":
        n = unit.split
        sources = sources_for(cfg, n)
        est = FisherEstimator(
            engine.model, samples=cfg.samples, targets=cfg.fisher_targets, blocks=cfg.fisher_blocks, seed=cfg.seed
        )
        r = est.split(ids, n, cfg.n_future, sources, layers, heads, prefill=prefill)
        centres = np.array([n + (a + b - 1) // 2 for a, b in r.block_bounds])
        targets = np.broadcast_to(centres, r.kl.shape)
        influence = influence_frame(
            doc_id, "split", n, sources, targets, r.kl, cfg.layer, cfg.kv_head, np.full(len(sources), n)
        )
        influence = influence.assign(kl_se=r.stderr.reshape(-1))
    elif cfg.mode == "split":
        n = unit.split
        sources = sources_for(cfg, n)
        bar = tqdm(total=len(sources), desc=f"{doc_id[:24]} N={n}", disable=not progress, leave=False)
        res = engine.split(
            ids, n, cfg.n_future, [Ablation((s,), layers, heads) for s in sources], prefill=prefill, progress=bar.update
        )
        bar.close()
        targets = np.broadcast_to(np.arange(n, n + cfg.n_future), res.kl.shape)
        influence = influence_frame(
            doc_id, "split", n, sources, targets, res.kl, cfg.layer, cfg.kv_head, np.full(len(sources), n)
        )
        floor, shared, precision = res.noise_floor, res.shared_reference, res.precision_floor
    else:
        sources = list(unit.sources)
        bar = tqdm(total=len(sources), desc=f"{doc_id[:24]} sliding", disable=not progress, leave=False)
        res = engine.sliding(
            ids, sources, cfg.horizon, layers, heads, prefill=prefill, progress=bar.update, delay=cfg.delay
        )
        bar.close()
        taus = np.asarray(sources, dtype=np.int64) + cfg.delay
        targets = taus[:, None] + np.arange(cfg.horizon)[None, :]
        influence = influence_frame(doc_id, "sliding", None, sources, targets, res.kl, cfg.layer, cfg.kv_head, taus)
        floor, precision = res.noise_floor, res.precision_floor
    if cfg.method != "fisher" and precision is not None:
        below, cells = int((res.kl < precision[None, :]).sum()), int(res.kl.size)
    result = UnitResult(
        unit.doc_index,
        unit.part,
        influence,
        signals,
        floor,
        shared,
        precision,
        below,
        cells,
        round(t_prefill, 3),
        round(time.perf_counter() - t1, 3),
    )
    return result, prefill


_NO_PRECISION = {"precision_floor_median": None, "precision_floor_max": None, "share_below_precision_floor": None}


def assemble_document(
    cfg: MeasureConfig, tdoc: TokenizedDocument, results: Sequence[UnitResult]
) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """A document's tables and meta (floors, timings) from all its unit results."""
    results = sorted(results, key=lambda r: r.part)
    first = results[0].signals
    assert first is not None, "part 0 carries the document's signals"
    influence = pd.concat([r.influence for r in results], ignore_index=True)
    summary = summarize_influence(influence, cfg.near, cfg.far).assign(method=cfg.method)
    tables = {
        "tokens": first["tokens"],
        "influence": influence,
        "summary": summary,
        "source_signals": first["source_signals"],
    }
    if "token_layers" in first:
        tables["token_layers"] = first["token_layers"]
    floors = [r.noise_floor for r in results if r.noise_floor is not None]
    floor = np.concatenate(floors) if floors else None
    shared = [r.shared_reference for r in results if r.shared_reference is not None]
    precision = [r.precision_floor for r in results if r.precision_floor is not None]
    meta = {
        "doc_id": tdoc.doc.doc_id,
        "n_tokens": len(tdoc),
        "noise_floor_max": (float(floor.max()) if floor.size else 0.0) if floor is not None else None,
        "noise_floor_mean": (float(floor.mean()) if floor.size else 0.0) if floor is not None else None,
        "seconds_prefill_signals": round(sum(r.seconds_prefill for r in results), 3),
        "seconds_ablation": round(sum(r.seconds_ablation for r in results), 3),
        "shared_reference": bool(shared) and all(shared),  # split batches reused the first null row
        **_precision_meta(precision, sum(r.below for r in results), sum(r.cells for r in results)),
        "n_ablations": int(influence.groupby(["split_pos", "source_pos"], dropna=False).ngroups),
        "n_units": len(results),
    }
    return tables, meta


def _precision_meta(precision: list[np.ndarray], below: int, cells: int) -> dict[str, Any]:
    """Per-document precision floor (the dithered null row's KL per scored
    position, :class:`forward_influence.measurement.engine.SplitResult`) and the share of
    measured KLs below it."""
    if not precision:
        return dict(_NO_PRECISION)
    pf = np.concatenate(precision)
    return {
        "precision_floor_median": float(np.median(pf)),
        "precision_floor_max": float(pf.max()),
        "share_below_precision_floor": float(below / cells) if cells else 0.0,
    }


@dataclass
class MeasureJob:
    """The measurement as a pool job (:mod:`forward_influence.execution.local`):
    ``setup`` builds the engine on a worker's model, ``run`` measures a unit,
    reusing the prefill of the worker's last document."""

    config: MeasureConfig
    progress: bool = False

    def setup(self, lm: LoadedModel) -> None:
        self._engine = ForwardInfluenceEngine(lm.model, batch_size=self.config.batch_size)
        self._last: tuple[Any, Any] = (None, None)  # (document key, prefill)

    def run(self, unit: Unit) -> UnitResult:
        key = (unit.doc_index, unit.doc.doc.doc_id)
        cached = self._last[1] if self._last[0] == key else None
        self._last = (None, None)  # free the old prefill before making a new one
        result, prefill = measure_unit(self._engine, unit, self.config, prefill=cached, progress=self.progress)
        self._last = (key, prefill)
        return result
