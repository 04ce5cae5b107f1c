"""Fitting and choosing a scorer by document-grouped cross-validation; what ``fi-distill`` runs.

The model kind (:data:`~forward_influence.distill.models.KINDS`) is chosen by an inner
cross-validation over the training documents, on the share of the target FI kept at
the selection budget (20%: the top of each unit's ranking, what a compressor is judged
on). The reported held-out figures come from an outer cross-validation of that whole
procedure (choice included), so no reported fold was used to choose. Folds never share
a document.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from forward_influence.distill import evaluate, models
from forward_influence.distill.data import TARGETS, Units, load_units
from forward_influence.errors import InputError
from forward_influence.scoring import Scorer


@dataclass(frozen=True)
class DistillConfig:
    """``target``: ``fi_far`` or ``fi_total``; ``kinds``: model kinds to choose among;
    ``folds`` / ``inner_folds``: document folds of the outer (reported) and inner (choice)
    cross-validation; ``select_by``: the statistic the choice maximises; ``seed``; ``exclude``: features
    the model may not read (e.g. ``attn_h2o``, whose every-query attention costs a compressor's prefill
    as much again); the held-out comparison still ranks by every single signal."""

    target: str = "fi_far"
    kinds: tuple[str, ...] = models.KINDS
    folds: int = 5
    inner_folds: int = 4
    select_by: str = "kept_share_0.2"
    seed: int = 0
    rounds: int = models.ROUNDS
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise InputError(f"--target must be one of {', '.join(TARGETS)}; got {self.target!r}")
        bad = [k for k in self.kinds if k not in models.KINDS]
        if bad or not self.kinds:
            raise InputError(f"--kinds must name some of {', '.join(models.KINDS)}; got {','.join(self.kinds)!r}")
        if self.folds < 2 or self.inner_folds < 2:
            raise InputError("--folds must be >= 2 (documents are split into folds)")


@dataclass
class Distilled:
    """A trained scorer with how it was chosen and judged."""

    scorer: Scorer
    selection: pd.DataFrame  # per kind: the inner-CV statistic over all training documents
    heldout: pd.DataFrame  # outer CV: per (document, method) statistics
    summary: pd.DataFrame  # outer CV: per (method, statistic) with intervals over documents
    chosen: list[str] = field(default_factory=list)  # the kind each outer fold chose


def document_folds(docs: Sequence[str], k: int, seed: int = 0) -> list[list[str]]:
    """``docs`` shuffled (seeded) into ``min(k, len(docs))`` folds of near-equal size."""
    if len(docs) < 2:
        raise InputError(f"cross-validation needs at least 2 documents; the runs hold {len(docs)}")
    order = np.random.default_rng(seed).permutation(len(docs))
    k = min(k, len(docs))
    return [[docs[i] for i in order[j::k]] for j in range(k)]


def cross_scores(
    units: Units, kind: str, target: str, folds: list[list[str]], seed: int = 0, rounds: int = models.ROUNDS
) -> np.ndarray:
    """Every row scored by a ``kind`` model fit without its document's fold."""
    out = np.full(len(units.frame), np.nan)
    docs = units.frame["doc_id"].to_numpy()
    for held in folds:
        train = units.subset([d for d in units.documents if d not in held])
        test_rows = np.flatnonzero(np.isin(docs, held))
        scorer = models.fit(kind, train, target, seed, rounds)
        out[test_rows] = evaluate.scorer_scores(scorer, units.subset(held))
    return out


def choose(units: Units, cfg: DistillConfig) -> tuple[str, pd.DataFrame]:
    """The kind with the best inner-CV ``select_by`` (mean over documents), and the table."""
    folds = document_folds(units.documents, cfg.inner_folds, cfg.seed + 1)
    learned = {k: cross_scores(units, k, cfg.target, folds, cfg.seed, cfg.rounds) for k in cfg.kinds}
    pu = evaluate.per_unit(units, cfg.target, learned, budgets=(0.2, 0.4), seed=cfg.seed)
    table = evaluate.document_table(pu).groupby("method", sort=False).mean(numeric_only=True).reset_index()
    best = str(table.sort_values(cfg.select_by, ascending=False, kind="stable")["method"].iloc[0])
    return best, table


def nested(units: Units, cfg: DistillConfig) -> tuple[np.ndarray, list[str]]:
    """Held-out scores of the whole procedure (inner choice, then fit), and each outer fold's choice."""
    out = np.full(len(units.frame), np.nan)
    docs = units.frame["doc_id"].to_numpy()
    chosen = []
    for held in document_folds(units.documents, cfg.folds, cfg.seed):
        train = units.subset([d for d in units.documents if d not in held])
        kind = choose(train, cfg)[0] if len(cfg.kinds) > 1 else cfg.kinds[0]
        chosen.append(kind)
        scorer = models.fit(kind, train, cfg.target, cfg.seed, cfg.rounds)
        out[np.flatnonzero(np.isin(docs, held))] = evaluate.scorer_scores(scorer, units.subset(held))
    return out, chosen


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("forward-influence", "numpy", "scikit-learn", "lightgbm", "torch"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def train(units: Units, cfg: DistillConfig) -> Distilled:
    """Nested CV for the held-out figures, then the kind chosen on every document, fit on every document."""
    t0 = time.perf_counter()
    n = len(units.documents)
    smallest_train = n - -(-n // max(1, min(cfg.folds, n)))
    if len(cfg.kinds) > 1 and smallest_train < 2:
        raise InputError(
            f"choosing among {len(cfg.kinds)} model kinds needs >= 2 training documents in every outer fold; "
            f"{n} documents in {min(cfg.folds, n)} folds leave {smallest_train}: give more documents or --folds, "
            "or one --kinds"
        )
    readable = units.without(cfg.exclude)  # what the model reads; the comparison keeps every signal
    heldout_scores, chosen = nested(readable, cfg)
    docs, summary = evaluate.evaluate(units, cfg.target, {"distilled": heldout_scores}, seed=cfg.seed)
    kind, selection = choose(readable, cfg) if len(cfg.kinds) > 1 else (cfg.kinds[0], pd.DataFrame())
    scorer = models.fit(kind, readable, cfg.target, cfg.seed, cfg.rounds)
    run0 = units.runs[0]
    scorer.signal_config = dict(run0["signal_config"])
    scorer.provenance = {
        "language_model": run0["language_model"],
        "training_runs": units.runs,
        "documents": units.documents,
        "model_kind": kind,
        "config": asdict(cfg),
        "versions": _versions(),
        "fit_s": round(time.perf_counter() - t0, 1),
    }
    scorer.extra = {
        "selection": selection.to_dict(orient="records"),
        "evaluation": summary.replace({np.nan: None}).to_dict(orient="records"),
    }
    return Distilled(scorer, selection, docs, summary, chosen)


def distill(
    runs: Sequence[str | Path], out: str | Path, cfg: DistillConfig | None = None, corpora: Sequence[str] | None = None
) -> Distilled:
    """``fi-distill`` as a function: train on the split-mode ``runs`` and write the model to ``out``
    (with ``<out>.heldout.csv``, the outer CV's per-document table)."""
    cfg = cfg or DistillConfig()
    result = train(load_units(runs, corpora), cfg)
    out = Path(out)
    result.scorer.save(out)
    result.heldout.to_csv(out.with_suffix(".heldout.csv"), index=False)
    return result
