"""Work units of a measurement: what one worker computes, and how the driver
puts a document back together.

A document is measured as *units* (its strategy's ``plan``,
:mod:`forward_influence.measurement.strategies`): in split mode one unit per
split ``N`` (``--method fisher`` too); in sliding mode blocks of sources.
:func:`measure_unit` is the one
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

from forward_influence.config import MeasureConfig
from forward_influence.hf.models import LoadedModel
from forward_influence.measurement.collector import SignalCollector
from forward_influence.measurement.documents import TokenizedDocument
from forward_influence.measurement.engine import ForwardInfluenceEngine
from forward_influence.measurement.meta import DocumentMeta, Floors
from forward_influence.measurement.reproducibility import thread_noise
from forward_influence.measurement.strategies import Strategy, Unit, strategy_for
from forward_influence.store.tables import summarize_influence


@dataclass
class UnitResult:
    """What a unit sends back to the driver.

    ``signals`` (part 0 only): ``tokens``, ``source_signals`` and, when
    computed, ``token_layers``. ``below`` / ``cells``: KLs under the precision
    floor and KLs compared with it. ``thread_noise``:
    :func:`forward_influence.measurement.reproducibility.thread_noise` (the run's first unit).
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
    thread_noise: dict[str, Any] | None = None  # the run's reproducibility probe (its first unit only)


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


def measure_unit(
    engine: ForwardInfluenceEngine, unit: Unit, strategy: Strategy, prefill: Any = None, progress: bool = False
) -> tuple[UnitResult, Any]:
    """Measure one unit; returns its result and the document's prefill (for reuse).

    Parameters
    ----------
    prefill : forward_influence.hf.forwards.Prefill, optional
        A prefill of this unit's document to reuse (not for part 0, which
        records the signals during its own prefill).
    """
    tdoc, ids = unit.doc, unit.doc.input_ids
    t0 = time.perf_counter()
    signals = None
    if unit.part == 0:
        collector = SignalCollector(engine.model, len(tdoc), strategy.signal_config())
        prefill = engine.prefill(ids, on_tap=collector.on_tap, layer_hooks=collector.on_layer)
        tokens, source_signals, token_layers = collector.finish(prefill, tokens_table(tdoc), tdoc)
        signals = {"tokens": tokens, "source_signals": source_signals}
        if token_layers is not None:
            signals["token_layers"] = token_layers
    elif prefill is None:
        prefill = engine.prefill(ids)
    t_prefill = time.perf_counter() - t0
    t1 = time.perf_counter()
    m = strategy.measure(engine, unit, prefill, progress)
    t_measure = time.perf_counter() - t1
    first = (unit.doc_index, unit.part) == (0, 0)
    noise = thread_noise(engine, strategy, unit, prefill, m.precision_floor) if first else None
    result = UnitResult(
        unit.doc_index,
        unit.part,
        m.influence,
        signals,
        m.noise_floor,
        m.shared_reference,
        m.precision_floor,
        m.below,
        m.cells,
        round(t_prefill, 3),
        round(t_measure, 3),
        noise,
    )
    return result, prefill


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
    shared = [r.shared_reference for r in results if r.shared_reference is not None]
    floors = Floors.of_units(
        [r.noise_floor for r in results if r.noise_floor is not None],
        [r.precision_floor for r in results if r.precision_floor is not None],
        sum(r.below for r in results),
        sum(r.cells for r in results),
    )
    meta = DocumentMeta(
        doc_id=tdoc.doc.doc_id,
        n_tokens=len(tdoc),
        floors=floors,
        seconds_prefill_signals=round(sum(r.seconds_prefill for r in results), 3),
        seconds_ablation=round(sum(r.seconds_ablation for r in results), 3),
        shared_reference=bool(shared) and all(shared),
        n_ablations=int(influence.groupby(["split_pos", "source_pos"], dropna=False).ngroups),
        n_units=len(results),
    ).to_dict()
    noise = [r.thread_noise for r in results if r.thread_noise is not None]
    if noise:
        meta["thread_noise"] = noise[0]
    return tables, meta


@dataclass
class MeasureJob:
    """The measurement as a pool job (:mod:`forward_influence.execution.pool`):
    ``setup`` builds the engine on a worker's model, ``run`` measures a unit,
    reusing the prefill of the worker's last document."""

    config: MeasureConfig
    progress: bool = False

    def setup(self, lm: LoadedModel) -> None:
        self._engine = ForwardInfluenceEngine(lm.model, batch_size=self.config.batch_size)
        self._strategy = strategy_for(self.config)
        self._last: tuple[Any, Any] = (None, None)  # (document key, prefill)

    def run(self, unit: Unit) -> UnitResult:
        key = (unit.doc_index, unit.doc.doc.doc_id)
        cached = self._last[1] if self._last[0] == key else None
        self._last = (None, None)  # free the old prefill before making a new one
        result, prefill = measure_unit(self._engine, unit, self._strategy, prefill=cached, progress=self.progress)
        self._last = (key, prefill)
        return result
