"""``run.json`` of a measurement, built in one place from typed records.

:class:`Floors` is the precision record of a document or a run (noise floor,
precision floor, share of KLs below it); :class:`DocumentMeta` one document's
entry of ``per_document``; :func:`start_meta` the ``run.json`` a run starts
with, :func:`finish_meta` what it holds when it ends. The store writes it
(:mod:`forward_influence.store.results`), the analysis reads it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from forward_influence.config import MeasureConfig
from forward_influence.store.runs import Described, run_meta
from forward_influence.store.schema import DISTANCE_FROM


@dataclass(frozen=True)
class Floors:
    """Noise and precision floors (None: not measured, e.g. a Fisher estimate).

    ``noise_floor_*``: KL between a batched and a lone null row; ``precision_floor_*``:
    the dithered null row's KL per scored position; ``share_below_precision_floor``:
    measured KLs below their position's precision floor.
    """

    noise_floor_max: float | None = None
    noise_floor_mean: float | None = None
    precision_floor_median: float | None = None
    precision_floor_max: float | None = None
    share_below_precision_floor: float | None = None

    @classmethod
    def of_units(cls, noise: Sequence[np.ndarray], precision: Sequence[np.ndarray], below: int, cells: int) -> Floors:
        """One document's floors from its units' per-position floors and counts."""
        kw: dict[str, Any] = {}
        if noise:
            floor = np.concatenate(noise)
            kw.update(
                noise_floor_max=float(floor.max()) if floor.size else 0.0,
                noise_floor_mean=float(floor.mean()) if floor.size else 0.0,
            )
        if precision:
            pf = np.concatenate(precision)
            kw.update(
                precision_floor_median=float(np.median(pf)),
                precision_floor_max=float(pf.max()),
                share_below_precision_floor=float(below / cells) if cells else 0.0,
            )
        return cls(**kw)

    @classmethod
    def of_documents(cls, docs: Sequence[dict[str, Any]]) -> Floors:
        """A run's floors: max and mean of the documents' noise floors; median of
        their precision-floor medians, max of maxima, mean share below."""
        noise = [m for m in docs if m.get("noise_floor_max") is not None]
        prec = [m for m in docs if m.get("precision_floor_median") is not None]
        kw: dict[str, Any] = {}
        if noise:
            kw.update(
                noise_floor_max=max(m["noise_floor_max"] for m in noise),
                noise_floor_mean=float(np.mean([m["noise_floor_mean"] for m in noise])),
            )
        if prec:
            kw.update(
                precision_floor_median=float(np.median([m["precision_floor_median"] for m in prec])),
                precision_floor_max=max(m["precision_floor_max"] for m in prec),
                share_below_precision_floor=float(np.mean([m["share_below_precision_floor"] for m in prec])),
            )
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DocumentMeta:
    """One document's entry of ``run.json``'s ``per_document``."""

    doc_id: str
    n_tokens: int
    floors: Floors
    seconds_prefill_signals: float
    seconds_ablation: float
    shared_reference: bool  # split batches reused the first null row
    n_ablations: int
    n_units: int

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("floors")
        return {**d, **self.floors.to_dict()}


def start_meta(
    cfg: MeasureConfig,
    pool: Described,
    documents: list[dict[str, Any]],
    signals: list[dict[str, Any]],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """``run.json`` of a starting run: identity, config, provenance (:func:`~forward_influence.store.runs.run_meta`),
    the documents, the distance convention, the signals measured, and ``extra`` (a generation's record)."""
    return {**run_meta(cfg, pool, documents=documents, distance_from=DISTANCE_FROM, signals=signals), **extra}


def finish_meta(
    meta: dict[str, Any],
    cfg: MeasureConfig,
    docs: list[dict[str, Any]],
    failed: list[dict[str, Any]],
    seconds: float,
    cpu_seconds: float,
) -> dict[str, Any]:
    """``meta`` completed when the run ends: status, times, the run's floors, the documents, failed units,
    and ``reproducibility`` (:mod:`forward_influence.measurement.reproducibility`; None: not probed)."""
    probes = [d["thread_noise"] for d in docs if d.get("thread_noise")]
    docs = [{k: v for k, v in d.items() if k != "thread_noise"} for d in docs]
    return {
        **meta,
        "status": "partial" if failed else "complete",
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds_total": round(seconds, 3),
        "cpu_seconds_total": round(cpu_seconds, 3),  # this process's threads: the cost on a shared machine
        "method": cfg.method,
        **Floors.of_documents(docs).to_dict(),
        "per_document": docs,
        "failed_units": failed,
        "reproducibility": probes[0] if probes else None,
    }
