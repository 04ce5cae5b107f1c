"""Training data: the candidates of each split of ``fi-measure`` runs, their causal features and FI.

A *unit* is what a prefill compressor sees at one eviction: the candidates of a
split (the prefix ``[0, N)`` without the sinks and the window before ``N``,
:func:`forward_influence.analysis.selection.with_source_signals`). Features are the
run's recorded signals (``run.json`` ``signals``: the token table's entropies,
surprisal, key norms and representation change; the attention scores read
before ``tau``) and ``age = tau - pos``; word classes are not features (spaCy
reads the text after the token). Targets: ``fi_total`` (every scored target
after ``tau``) and ``fi_far`` (``d_tau > far``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from forward_influence.analysis.analyze import AnalyzeConfig
from forward_influence.analysis.selection import ablation_rows, with_source_signals
from forward_influence.errors import InputError
from forward_influence.scoring import AGE, SIGNAL_SETTINGS
from forward_influence.store import schema
from forward_influence.store.results import MeasureResult

TARGETS = ("fi_far", "fi_total")


@dataclass
class Units:
    """Candidates of many units: ``frame`` (doc_id, corpus, unit, pos, tau, the features, the targets),
    ``features`` (names, in order), ``runs`` (where they came from)."""

    frame: pd.DataFrame
    features: list[str]
    runs: list[dict]

    def groups(self) -> list[np.ndarray]:
        """Row indices of each unit, in order."""
        codes, uniq = pd.factorize(self.frame["unit"])
        order = np.argsort(codes, kind="stable")
        bounds = np.flatnonzero(np.diff(codes[order])) + 1
        return np.split(order, bounds)

    def subset(self, docs: Sequence[str]) -> Units:
        keep = self.frame["doc_id"].isin(list(docs)).to_numpy()
        return Units(self.frame[keep].reset_index(drop=True), self.features, self.runs)

    def without(self, names: Sequence[str]) -> Units:
        """The same candidates with the features ``names`` left out (what a model may read); a
        name that is not a feature of these runs gives one line naming the features."""
        unknown = sorted(set(names) - set(self.features))
        if unknown:
            raise InputError(f"--exclude names {unknown}, not features of these runs: {', '.join(self.features)}")
        kept = [f for f in self.features if f not in set(names)]
        if not kept:
            raise InputError("--exclude leaves the model no feature to read")
        return Units(self.frame, kept, self.runs)

    @property
    def documents(self) -> list[str]:
        return list(pd.unique(self.frame["doc_id"]))


def run_units(path: str | Path, corpus: str | None = None, sinks: int = 4) -> Units:
    """The split-mode candidates of one finished ``fi-measure`` run (exact, whole-model ablations)."""
    res = MeasureResult.load(path)
    cfg = res.config
    if cfg.mode != "split" or cfg.method != "exact":
        raise InputError(f"{path}: fi-distill trains on exact split-mode runs (this one is {cfg.method} {cfg.mode})")
    if cfg.n_future <= cfg.far + 1:
        raise InputError(
            f"{path}: --n-future {cfg.n_future} leaves no target beyond far = {cfg.far}; measure with F > far + 1"
        )
    summ = ablation_rows(res.summary)
    df = with_source_signals(summ.assign(pos=summ["source_pos"]), res, AnalyzeConfig(sinks=sinks))
    df = df[df["is_candidate"]].reset_index(drop=True)
    specs = schema.run_signals(res.meta)
    names = [n for n in schema.signal_names(specs, ranked=True) if n in df.columns]
    df[AGE] = df["split_pos"].astype(float) - df["pos"].astype(float)
    keep = ["doc_id", "unit", "pos", "split_pos", *names, AGE, *TARGETS]
    out = df[keep].copy()
    out.insert(1, "corpus", corpus or Path(path).name)
    model = res.meta.get("model") or {}
    run = {
        "path": str(path),
        "run_id": res.meta.get("run_id"),
        "corpus": corpus or Path(path).name,
        "documents": int(out["doc_id"].nunique()),
        "units": int(out["unit"].nunique()),
        "rows": len(out),
        "n_prefix": list(cfg.n_prefix),
        "n_future": cfg.n_future,
        "far": cfg.far,
        "stride": cfg.stride,
        "signal_config": {k: getattr(cfg, k) for k in SIGNAL_SETTINGS},
        "language_model": {k: model.get(k) for k in ("name", "revision", "dtype")},
    }
    return Units(out, [*names, AGE], [run])


def load_units(paths: Sequence[str | Path], corpora: Sequence[str] | None = None) -> Units:
    """Candidates of several runs (:func:`combine` of their :func:`run_units`)."""
    return combine([run_units(p, None if corpora is None else corpora[i]) for i, p in enumerate(paths)])


def combine(parts: Sequence[Units]) -> Units:
    """Units of several runs as one; the features are those every run has; one language model and one
    set of signal settings across runs (else one line naming the run that differs)."""
    if not parts:
        raise InputError("fi-distill needs at least one fi-measure run")
    first = parts[0].runs[0]
    for p in parts[1:]:
        r = p.runs[0]
        for key in ("language_model", "signal_config"):
            if r[key] != first[key]:
                raise InputError(
                    f"{r['path']} differs from {first['path']} in {key} ({r[key]} vs {first[key]}); "
                    "train on runs of one model and one set of signal settings"
                )
    features = [f for f in parts[0].features if all(f in p.features for p in parts)]
    frame = pd.concat([p.frame for p in parts], ignore_index=True)
    return Units(frame, features, [r for p in parts for r in p.runs])
