"""The distilled compressor: entries ranked by a scorer learned from measured Forward Influence.

``fi-distill`` (:mod:`forward_influence.distill`) fits a scorer on ``fi-measure`` runs
that ranks the candidates of one eviction by the FI they will have, from signals a
compressor has at the eviction time. This method computes those signals with the
measurement's code (:attr:`Needs.signals`: only the signals its model reads), ranks the
candidates the scorer was trained on — every entry but the first ``n_sink`` and the last
``window`` positions (which it keeps, as the measurement's candidates exclude them) — and
gives every layer and KV head that one score per position.

Prefill (the cut of a prompt, ``tau`` = its end): every feature exactly as a split
``N = tau`` of ``fi-measure`` computes it.

Decoding (the repeated cuts of :meth:`Compressor.apply` and ``generate``; our reading, as
the scorer was trained on prefill evictions): token signals as over the whole sequence
(the cache streams them block by block, each token's value fixed when it arrives);
``attn_snapkv`` from the cache's last ``window`` queries over the entries it still holds
(softmax over those, pooled over neighbouring entries); ``age`` = ``tau - pos``; the ranks
among the entries present. A model that reads a signal a decoding cache cannot compute
(``attn_h2o``: attention from every query before ``tau``) refuses a decoding cut with one
line; the shipped model does not read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np
import torch

from forward_influence.compress.base import Compressor, LayerView, Needs, TokenFeatures, register
from forward_influence.compress.infokv import normalise
from forward_influence.errors import InputError
from forward_influence.measurement import scores as attention
from forward_influence.measurement.collector import registered
from forward_influence.measurement.signal_registry import REGISTRY, SignalConfig
from forward_influence.scoring import AGE, SIGNAL_SETTINGS, load_scorer
from forward_influence.store.schema import TOKEN

#: The source signal a decoding cut recomputes (:meth:`Distilled.score`); other source signals need every query.
DECODING_ATTENTION = "attn_snapkv"
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
    analysis' candidates leave them out); ``head_mix``: weight of each KV head's own SnapKV
    attention mixed into the shared score, ``(1 - head_mix) N(score) + head_mix N(attention)``
    with ``N`` the rank among each head's candidates (as InfoKV mixes; 0: one score per token for
    every layer and head). The default 0.5 is the measured choice: on held-out documents it lowered
    the KL at 20% in both cross-corpus directions (docs/benchmarks.md, docs/tables/distill_head_mix.csv)."""

    model: str | None = None
    window: int | None = None
    n_sink: int = 4
    head_mix: float = 0.5
    scorer: Any = field(default=None, compare=False, repr=False)
    name = "distilled"
    inputs = ("model_file",)

    @classmethod
    def for_run(cls, seed: int = 0, measured_fi: Any = None, model_file: Any = None, **hyper: Any) -> Distilled:
        """The method with the model file a runner was given (None: the shipped model)."""
        return cls(**hyper, model=None if model_file is None else str(model_file))

    @classmethod
    def decodes(cls, model_file: Any = None) -> bool:
        """Whether the model (None: the shipped one) reads only what a decoding cache computes."""
        return not cls.for_run(model_file=model_file).unreadable_in_decoding()

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
        if not 0.0 <= self.head_mix <= 1.0:
            raise ValueError(f"head_mix must be in [0, 1], got {self.head_mix}")

    def needs(self) -> Needs:
        sc = self.scorer.signal_config
        read = tuple(n for n in self.scorer.feature_names if n != AGE)  # the prefill computes only these
        settings = {k: int(sc[k]) for k in SIGNAL_SETTINGS if k in sc}
        cfg = SignalConfig(**settings, only=read)
        attends = DECODING_ATTENTION in read or self.head_mix > 0  # score() reads the window's queries
        return Needs(recent_queries=cfg.window if attends else 1, signals=cfg)

    def unreadable_in_decoding(self) -> list[str]:
        """The model's features a decoding cache cannot compute (source signals but ``attn_snapkv``)."""
        return [n for n in self.scorer.feature_names if n not in (AGE, DECODING_ATTENTION) and _kind(n) != TOKEN]

    def score(self, view: LayerView) -> torch.Tensor:
        """``(Hkv, n)``: SnapKV's window attention to each entry, pooled over neighbouring entries (the
        decoding reading of ``attn_snapkv``; in a prompt's cut these are the measurement's own
        values); zeros when the model does not read it. :meth:`finish` scores."""
        if DECODING_ATTENTION not in self.scorer.feature_names and self.head_mix == 0:
            return torch.zeros(view.positions.shape, dtype=torch.float32, device=view.keys.device)
        cfg = self.needs().signals
        w = min(cfg.window, view.queries.shape[1])
        mean = attention.window_attention(
            view.queries[:, -w:], view.keys, view.query_positions[-w:], view.positions, view.scaling
        )  # (Hq, n)
        return attention.pooled_group_mean(mean, view.positions.shape[0], cfg.kernel)  # (Hkv, n)

    def entry_scores(self, pos: np.ndarray, tau: int, feature: Any) -> np.ndarray:
        """``(n,)`` float64 for the entries at positions ``pos`` at eviction time ``tau``: the scorer's
        score of each candidate (``feature(name)``: the ``(n,)`` values of a feature the model reads),
        ``+inf`` for the sinks and :data:`WINDOW_SCORE` plus the position for the window (a budget
        smaller than sinks + window keeps the sinks, then the most recent entries)."""
        cand = (pos >= self.n_sink) & (pos < tau - self.window)
        cols = {AGE: (tau - pos[cand]).astype(float)}
        for name in self.scorer.feature_names:
            if name != AGE:
                cols[name] = np.asarray(feature(name), float)[cand]
        out = np.where(pos < self.n_sink, np.inf, WINDOW_SCORE + pos.astype(float))
        out[cand] = self.scorer.score(cols) if cand.any() else out[cand]
        return out

    def position_scores(self, signals: dict[str, Any], tau: int) -> np.ndarray:
        """``(tau,)``: :meth:`entry_scores` of a prompt's cut, from the signals at ``tau`` (``fi-measure``'s)."""

        def feature(name: str) -> np.ndarray:
            v = np.asarray(signals[name], float)
            return (v[0] if v.ndim == 2 else v)[:tau]

        return self.entry_scores(np.arange(tau), tau, feature)

    def decoding_scores(self, scores: list[torch.Tensor], positions: list[torch.Tensor], stream: dict[str, Any]) -> Any:
        """A decoding cut: ``(union, shared)``, the positions any layer or head holds and :meth:`entry_scores`
        of them (token signals from the cache's ``stream``; ``attn_snapkv``: :meth:`score`'s values averaged
        over the layers and KV heads that hold the entry, as the measurement averages over all of them)."""
        bad = self.unreadable_in_decoding()
        if bad:
            raise InputError(
                f"this distilled model reads {', '.join(bad)}, which a decoding cache cannot compute (attention from "
                f"every query before the eviction); use it in prefill, or train one without: fi-distill --exclude "
                f"{','.join(bad)}"
            )
        union = np.unique(np.concatenate([p.reshape(-1).cpu().numpy() for p in positions]))

        def feature(name: str) -> np.ndarray:
            if name == DECODING_ATTENTION:
                total, count = np.zeros(len(union)), np.zeros(len(union))
                for sc, pos in zip(scores, positions):
                    idx = np.searchsorted(union, pos.reshape(-1).cpu().numpy())
                    val = sc.reshape(-1).double().cpu().numpy()
                    ok = np.isfinite(val)
                    np.add.at(total, idx[ok], val[ok])
                    np.add.at(count, idx[ok], 1)
                return total / np.maximum(count, 1)
            if name not in stream:
                raise InputError(f"this cache did not stream {name!r}: build it with the distilled method's needs")
            return np.asarray(stream[name], float)[union]

        return union, self.entry_scores(union, int(union.max()) + 1, feature)

    def finish(
        self, scores: list[torch.Tensor], positions: list[torch.Tensor], features: TokenFeatures | None
    ) -> list[torch.Tensor]:
        if features is None or features.signals is None or features.tau is None:
            raise ValueError("distilled needs the prefill's signals: build the cache with it (compress_prompt)")
        prompt = features.length == features.tau if features.length is not None else None
        if prompt is None:  # no length given (a press): a prompt's cut holds its last position
            prompt = max(int(p.max()) for p in positions) + 1 == features.tau
        if prompt:  # a prompt's cut: the signals at its end
            union = np.arange(features.tau)
            shared = self.position_scores(features.signals, features.tau)
        else:
            union, shared = self.decoding_scores(scores, positions, features.token_signals or {})
        out = []
        for sc, pos in zip(scores, positions):  # (Hkv, n) per layer: each entry's shared score
            s = torch.from_numpy(shared[np.searchsorted(union, pos.cpu().numpy())]).to(sc.device)
            out.append(s if self.head_mix == 0 else self._mixed(s, sc))
        return out

    def _mixed(self, shared: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
        """``(Hkv, n)``: per KV head, the candidates' ``(1 - head_mix) N(shared) + head_mix N(att)``
        (``N``: the rank among that head's candidates), the sinks and the window as they were (above
        every candidate)."""
        mixed = shared.clone()
        for h in range(shared.shape[0]):
            cand = shared[h] < WINDOW_SCORE
            if cand.any():
                a = normalise(shared[h, cand][None].double(), "rank")[0].double()  # float64: no new ties
                b = normalise(att[h, cand][None].double(), "rank")[0].double()
                mixed[h, cand] = (1 - self.head_mix) * a + self.head_mix * b
        return mixed


def _kind(name: str) -> str:
    return REGISTRY[name].spec.kind
