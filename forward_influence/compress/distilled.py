"""The distilled compressor: entries ranked by a scorer learned from measured Forward Influence.

``fi-distill`` (:mod:`forward_influence.distill`) fits a scorer on ``fi-measure`` runs
that ranks the candidates of one eviction by the FI they will have, from signals a
compressor has at the eviction time. This method computes those signals in its own
prefill with the measurement's code (:attr:`Needs.signals`: the registered signals at
``tau`` = the prompt's end, exactly as a split ``N = tau`` of ``fi-measure``; only the
signals its model reads), ranks the
same candidates the scorer was trained on — every position but the first ``n_sink`` and
the last ``window`` (which it keeps, as the measurement's candidates exclude them) —
and gives every layer and KV head that one score per position.

Prefill only: the scorer was trained on prefill evictions (split units), and its
attention features are defined over every query before ``tau``, which a cache being
decoded no longer holds. In decoding (:meth:`Compressor.apply`) the method refuses with
one line instead of ranking by features it cannot compute.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np
import torch

from forward_influence.compress.base import Compressor, LayerView, Needs, TokenFeatures, register
from forward_influence.errors import InputError
from forward_influence.measurement.collector import registered
from forward_influence.measurement.signal_registry import SignalConfig
from forward_influence.scoring import AGE, SIGNAL_SETTINGS, load_scorer

#: The window's scores start here: above any score a model gives (trees' leaf sums, linear weights on ranks in
#: [0, 1]), below the sinks' +inf.
WINDOW_SCORE = 1e12
#: The model shipped with the package (``scripts/distill_headline.py`` trains it).
DEFAULT_MODEL = "distilled_default.json"


def default_model_path() -> Any:
    """The shipped model's path (a package resource); one clear line where this install has none."""
    path = resources.files("forward_influence.compress").joinpath("models", DEFAULT_MODEL)
    if not path.is_file():
        raise InputError(
            f"no distilled model is shipped with this install ({DEFAULT_MODEL}); "
            "train one with fi-distill and pass model=PATH (fi-bench --distilled-model PATH)"
        )
    return path


@register
@dataclass(frozen=True)
class Distilled(Compressor):
    """``model``: a file written by ``fi-distill`` (None: the shipped one); ``window``: the last
    entries kept outright (the measurement's candidates end ``window`` before ``tau``; None:
    the window the model's training runs used); ``n_sink``: the first entries kept (4, as the
    analysis' candidates leave them out)."""

    model: str | None = None
    window: int | None = None
    n_sink: int = 4
    scorer: Any = field(default=None, compare=False, repr=False)
    name = "distilled"
    inputs = ("model_file",)
    prefill_only = True

    @classmethod
    def for_run(cls, seed: int = 0, measured_fi: Any = None, model_file: Any = None, **hyper: Any) -> Distilled:
        """The method with the model file a runner was given (None: the shipped model)."""
        return cls(**hyper, model=None if model_file is None else str(model_file))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scorer is None:
            path = default_model_path() if self.model is None else self.model
            object.__setattr__(self, "scorer", load_scorer(path))
        measured = {spec.name for spec in registered()}
        unknown = [n for n in self.scorer.feature_names if n != AGE and n not in measured]
        if unknown:
            raise InputError(f"the distilled model needs signals {unknown}, which this package does not measure")
        if self.window is None:
            object.__setattr__(self, "window", int(self.scorer.signal_config.get("window", 32)))
        if self.window < 0:
            raise ValueError(f"window must be >= 0, got {self.window}")

    def needs(self) -> Needs:
        sc = self.scorer.signal_config
        read = tuple(n for n in self.scorer.feature_names if n != AGE)  # the prefill computes only these
        settings = {k: int(sc[k]) for k in SIGNAL_SETTINGS if k in sc}
        return Needs(recent_queries=1, signals=SignalConfig(**settings, only=read))

    def score(self, view: LayerView) -> torch.Tensor:
        return torch.zeros(view.positions.shape, dtype=torch.float32, device=view.keys.device)  # finish() scores

    def position_scores(self, signals: dict[str, Any], tau: int) -> np.ndarray:
        """``(tau,)`` float64: the scorer's score of each candidate, ``+inf`` for the sinks and
        :data:`WINDOW_SCORE` plus the position for the window (a budget smaller than sinks + window
        keeps the sinks, then the most recent entries)."""
        pos = np.arange(tau)
        cand = (pos >= self.n_sink) & (pos < tau - self.window)
        cols = {AGE: (tau - pos[cand]).astype(float)}
        for name in self.scorer.feature_names:
            if name != AGE:
                v = np.asarray(signals[name], float)
                cols[name] = (v[0] if v.ndim == 2 else v)[:tau][cand]
        out = np.where(pos < self.n_sink, np.inf, WINDOW_SCORE + pos)
        out[cand] = self.scorer.score(cols) if cand.any() else out[cand]
        return out

    def finish(
        self, scores: list[torch.Tensor], positions: list[torch.Tensor], features: TokenFeatures | None
    ) -> list[torch.Tensor]:
        if features is None or features.signals is None or features.tau is None:
            raise ValueError("distilled needs the prefill's signals: build the cache with it (compress_prompt)")
        if any(p.shape[1] != features.tau for p in positions):
            raise InputError(
                "the distilled compressor ranks one prefill eviction (what its scorer was trained on); "
                "in decoding use infokv or snapkv"
            )
        s = torch.from_numpy(self.position_scores(features.signals, features.tau))  # sinks and window first
        return [s.to(sc.device)[pos] for sc, pos in zip(scores, positions)]  # (Hkv, n) per layer
