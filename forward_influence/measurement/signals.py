"""Per-token signals, computed in the engine's own prefill (DESIGN §3).

The causality rule
------------------
A signal that ranks a token for eviction at time ``tau`` may use only what a
compressor has then: the queries before ``tau`` and the token's own
prediction — never the queries at or after ``tau``, whose predictions *are*
the Forward Influence it is compared with. Here:

* ``split`` mode: ``tau = N`` for each split separately; the attention
  signals of split ``N`` read only the queries ``< N``.
* ``sliding`` mode: ``tau = i + D`` for source ``i`` (``--delay D``); its
  attention signals read only the queries ``[i, i + D)``, the only ones that
  saw it before it was evicted.
* the entropies, surprisal, key norm and representation change of token ``i``
  read ``x[<=i]`` only (its own prediction and its own forward), so they are
  the same for every ``tau > i``.

``tests/unit/test_causality.py`` changes the input from ``tau`` on and checks
that every selection signal stays bitwise identical.

Per-token columns (``tokens.parquet``; layer-averaged where per layer)
----------------------------------------------------------------------
``entropy_in(i)``
    entropy (nats) of ``p(. | x[<i])``, the distribution that predicted token i
    (NaN for the first token).
``entropy_out(i)``
    entropy of ``p(. | x[<=i])``.
``entropy_in_topk`` / ``entropy_out_topk``
    the same over the renormalised top-k probabilities (``topk``, default 10).
``surprisal(i)``
    ``-log p(x_i | x[<i])``.
``key_norm(j)``
    ``||K_l[j]||`` (RoPE keeps the norm).
``rep_change(i)``
    ``r_{L-1}(i) = 1 - cos(h_{l0}(i), h_{L-1}(i))``, early layer ``l0 =
    rep_layer`` to the last layer (before the final norm): the study's words;
    1 for a model with no layer after ``l0`` (the rule of
    :mod:`forward_influence.measurement.features`).
``rep_change_layers(i)``
    the mean over layers of the per-layer term InfoKV multiplies into its
    entropy score, ``r_l(i) = 1 - cos(h_{l0}(i), h_l(i))`` for ``l > l0`` and 1
    for ``l <= l0`` (our reading of an unpublished formula; see
    :mod:`forward_influence.compress.infokv`;
    :class:`forward_influence.measurement.features.RepChange` computes it for
    the signals and the compressors alike).
``entropy_rep(i)``
    ``entropy_in_topk(i) * rep_change_layers(i)``: the layer mean of InfoKV's
    entropy term before normalisation (same reading).

Per-source columns (``source_signals.parquet``, keyed doc_id, split_pos, pos)
-----------------------------------------------------------------------------
``tau``
    the eviction time: ``N`` (split), ``pos + D`` (sliding).
``attn_snapkv(j)``
    SnapKV: the mean attention that the observation window's queries give key
    ``j`` (softmax over all causal keys, mean over the window's queries and the
    query heads of a KV group), average-pooled over ``kernel`` neighbouring
    keys (zero padding). Window: the last ``window`` queries before ``N``
    (split); ``[j, j + D)`` (sliding). Keys inside the split-mode window are
    scored like the rest (no "always kept" maximum: the analysis leaves them
    out of the competition instead). NaN where ``tau > T``.
``attn_h2o(j)``
    H2O: the cumulative attention from every query before ``tau`` that can see
    ``j``, divided by their number (``N - j`` in split mode, ``D`` in sliding).

``token_layers.parquet`` holds the per-layer, per-KV-head values
(``attn_snapkv``, ``attn_h2o`` per split, ``key_norm``, ``rep_change`` =
InfoKV's per-layer term ``r_l``, repeated across heads).

Nothing of size ``T x T x heads x layers`` or ``T x vocab`` is held: attention
is reduced per layer and per query chunk inside the prefill, logits per row
chunk from the final hidden state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from forward_influence.hf import anatomy, forwards
from forward_influence.measurement import scores
from forward_influence.measurement.features import RepChange, logit_chunks
from forward_influence.measurement.kl import entropy

#: The signals a selection rule or claim may rank by (all obey the causality rule).
SELECTION_SIGNALS = (
    "entropy_in_topk",
    "entropy_in",
    "entropy_out_topk",
    "entropy_out",
    "surprisal",
    "attn_snapkv",
    "attn_h2o",
    "key_norm",
    "rep_change",
    "rep_change_layers",
    "entropy_rep",
)
#: Signals that depend on the eviction time (stored per split / source).
SOURCE_SIGNALS = ("attn_snapkv", "attn_h2o")


@dataclass(frozen=True)
class SignalConfig:
    """Signal hyperparameters.

    Attributes
    ----------
    topk : int
        k of the top-k entropies.
    window : int
        SnapKV observation window in split mode (queries before ``N``).
    kernel : int
        SnapKV pooling width (odd).
    rep_layer : int
        Early layer ``l0`` of ``rep_change``.
    splits : tuple of int or None
        Split mode: the eviction times ``N``. None with ``delay`` None: one
        split at the document end.
    delay : int or None
        Sliding mode: ``D``, the queries ``[i, i + D)`` that see token ``i``
        before it is evicted.
    words : bool
        Tag words with spaCy (see :mod:`forward_influence.measurement.words`).
    chunk_bytes : int
        Bound on attention/logit temporaries.
    """

    topk: int = 10
    window: int = 32
    kernel: int = 5
    rep_layer: int = 2
    splits: tuple[int, ...] | None = None
    delay: int | None = None
    words: bool = True
    chunk_bytes: int = 128 << 20

    def __post_init__(self) -> None:
        if self.splits is not None and self.delay is not None:
            raise ValueError("give splits (split mode) or delay (sliding mode), not both")
        if self.delay is not None and self.delay < 1:
            raise ValueError(f"delay must be >= 1, got {self.delay}")
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError(f"kernel must be odd and >= 1, got {self.kernel}")

    @classmethod
    def from_measure(cls, cfg: Any) -> SignalConfig:
        if cfg.mode == "split":
            return cls(
                topk=cfg.topk, window=cfg.window, rep_layer=cfg.rep_layer, splits=tuple(cfg.n_prefix), words=cfg.words
            )
        return cls(topk=cfg.topk, window=cfg.window, rep_layer=cfg.rep_layer, delay=cfg.delay, words=cfg.words)

    def check_ready(self) -> None:
        """Fail early (before any output) if the spaCy model is missing."""
        if self.words:
            from forward_influence.measurement.words import load_spacy

            load_spacy()


def _band(
    q: torch.Tensor, k: torch.Tensor, pos: torch.Tensor, scaling: float, width: int, chunk_bytes: int
) -> torch.Tensor:
    """``B[h, q, d] = a[q, q - d]`` for ``d < width`` (0 where ``q - d < 0``):
    the attention of each query head to the ``width`` most recent keys,
    ``(Hq, T, width)`` float64, computed in query chunks."""
    hq, t, _ = q.shape
    out = torch.zeros(hq, t, width, dtype=torch.float64, device=q.device)
    chunk = max(1, chunk_bytes // (4 * hq * max(t, 1) * 2))
    lag = torch.arange(width, device=q.device)
    for c0 in range(0, t, chunk):
        c1 = min(t, c0 + chunk)
        probs = scores.attention_probs(q[:, c0:c1], k[:, :c1], pos[c0:c1], pos[:c1], scaling)  # (Hkv, g, c, c1)
        probs = probs.reshape(hq, c1 - c0, c1)
        key = pos[c0:c1, None] - lag[None, :]  # (c, width) key index q - d
        ok = key >= 0
        band = probs.gather(2, key.clamp_min(0)[None].expand(hq, -1, -1))  # (Hq, c, width)
        out[:, c0:c1] = band.double() * ok[None]
    return out


class SignalCollector:
    """Accumulates attention and representation signals during one prefill.

    Use ``engine.prefill(ids, on_attention=c.on_attention, layer_hooks=c.on_layer)``
    then :meth:`finish`.
    """

    def __init__(self, model: Any, n_tokens: int, cfg: SignalConfig):
        self.model = model
        self.cfg = cfg
        self.t = n_tokens
        self.n_layers = anatomy.n_layers(model)
        self.n_kv = anatomy.n_kv_heads(model)
        if cfg.delay is not None:
            self.taus: list[int | None] = [None]  # one set of per-source eviction times
        else:
            self.taus = [min(n, n_tokens) for n in (cfg.splits or (n_tokens,))]
        shape = (len(self.taus), self.n_layers, self.n_kv, n_tokens)  # (S, L, Hkv, T)
        self.h2o = torch.full(shape, float("nan"), dtype=torch.float64)
        self.snap = torch.full(shape, float("nan"), dtype=torch.float64)
        self.knorm = torch.zeros(self.n_layers, self.n_kv, n_tokens, dtype=torch.float64)  # (L, Hkv, T)
        self._rep = RepChange(self.n_layers, n_tokens, cfg.rep_layer)

    @property
    def rep(self) -> torch.Tensor:
        """``(L, T)`` float64: InfoKV's ``r_l`` per layer."""
        return self._rep.values.double()

    @property
    def rep_final(self) -> torch.Tensor:
        """``(T,)`` float64: the early-to-last change ``r_{L-1}``."""
        return self.rep[-1]

    # ----------------------------------------------------------- attention
    @torch.no_grad()
    def on_attention(self, layer: int, query: torch.Tensor, key: torch.Tensor, scaling: float) -> None:
        """query ``(1, Hq, T, D)``, key ``(1, Hkv, T, D)`` of one layer."""
        q = query[0]  # (Hq, T, D)
        k = key[0]  # (Hkv, T, D)
        self.knorm[layer] = k.float().norm(dim=-1).double().cpu()
        pos = torch.arange(q.shape[1], device=q.device)
        if self.cfg.delay is not None:
            self._sliding(layer, q, k, pos, scaling)
        else:
            self._splits(layer, q, k, pos, scaling)

    def _group_mean(self, per_head: torch.Tensor) -> torch.Tensor:
        """``(Hq, n)`` → ``(Hkv, n)``: mean over the query heads of each KV group."""
        hq, n = per_head.shape
        return per_head.view(self.n_kv, hq // self.n_kv, n).mean(1)

    def _splits(self, layer: int, q: torch.Tensor, k: torch.Tensor, pos: torch.Tensor, scaling: float) -> None:
        """Per split ``N``: H2O over the queries ``< N``; SnapKV over the last
        ``window`` queries before ``N``. Queries are taken in split order, so
        the accumulated attention is snapshotted at each ``N``."""
        acc = torch.zeros(q.shape[0], self.t, dtype=torch.float64, device=q.device)  # (Hq, T)
        done = 0
        for s in sorted(range(len(self.taus)), key=lambda s: self.taus[s]):
            n = self.taus[s]
            if n > done:
                acc[:, :n] += scores.cumulative_attention(
                    q[:, done:n], k[:, :n], pos[done:n], pos[:n], scaling, self.cfg.chunk_bytes
                )
                done = n
            seen = torch.arange(n, 0, -1, device=q.device, dtype=torch.float64)  # N - j queries before N see key j
            self.h2o[s, layer, :, :n] = self._group_mean(acc[:, :n] / seen).cpu()
            w = min(self.cfg.window, n)
            mean = scores.window_attention(q[:, n - w : n], k[:, :n], pos[n - w : n], pos[:n], scaling)  # (Hq, N)
            self.snap[s, layer, :, :n] = scores.pooled_group_mean(mean, self.n_kv, self.cfg.kernel).double().cpu()

    def _sliding(self, layer: int, q: torch.Tensor, k: torch.Tensor, pos: torch.Tensor, scaling: float) -> None:
        """Per source ``i``: the queries ``[i, i + D)`` only. SnapKV pools the
        window's mean attention over keys ``i - h .. i + h`` (``h = kernel // 2``);
        query ``i + l`` gives key ``i + o`` the band entry at lag ``l - o``."""
        d, h, t = self.cfg.delay, self.cfg.kernel // 2, self.t
        n = t - d + 1  # sources with tau = i + D <= T
        if n <= 0:
            return
        band = _band(q, k, pos, scaling, d + h, self.cfg.chunk_bytes)  # (Hq, T, D + h)
        snap = torch.zeros(q.shape[0], n, dtype=torch.float64, device=q.device)  # (Hq, n)
        h2o = torch.zeros_like(snap)
        for lag in range(d):
            rows = band[:, lag : lag + n]  # (Hq, n, D + h): queries i + lag for i < n
            h2o += rows[:, :, lag]
            for o in range(-h, h + 1):
                if lag - o >= 0:
                    snap += rows[:, :, lag - o]
        self.h2o[0, layer, :, :n] = self._group_mean(h2o / d).cpu()
        self.snap[0, layer, :, :n] = self._group_mean(snap / (d * self.cfg.kernel)).cpu()

    # ----------------------------------------------------- representations
    def on_layer(self, layer: int, hidden: torch.Tensor) -> None:
        """hidden ``(T, Dm)``: the output of decoder layer ``layer`` (layers come in order)."""
        self._rep(layer, hidden)

    # ------------------------------------------------------------ logits
    @torch.no_grad()
    def logit_signals(self, hidden: torch.Tensor, input_ids: torch.Tensor) -> dict[str, np.ndarray]:
        """Entropies and surprisal from the final hidden state ``(T, Dm)``, in row chunks."""
        t = hidden.shape[0]
        h_full = np.empty(t)
        h_topk = np.empty(t)
        lp_next = np.full(t, np.nan)  # log p(x_{i+1} | x<=i)
        ids = input_ids.to(hidden.device)
        for c0, logits in logit_chunks(self.model, hidden, self.cfg.chunk_bytes):  # (n, V) float32
            c1 = c0 + logits.shape[0]
            h_full[c0:c1] = entropy(logits).cpu().numpy()
            h_topk[c0:c1] = entropy(logits, topk=self.cfg.topk).cpu().numpy()
            nxt = min(c1, t - 1)
            if nxt > c0:
                lp = torch.log_softmax(logits[: nxt - c0], dim=-1)  # (n', V)
                lp_next[c0:nxt] = lp.gather(1, ids[c0 + 1 : nxt + 1, None])[:, 0].double().cpu().numpy()
        shift = lambda a: np.concatenate([[np.nan], a[:-1]])  # noqa: E731  value at i-1 → row i
        return {
            "entropy_in": shift(h_full),
            "entropy_out": h_full,
            "entropy_in_topk": shift(h_topk),
            "entropy_out_topk": h_topk,
            "surprisal": -shift(lp_next),
        }

    # ------------------------------------------------------------- tables
    def split_positions(self) -> list[int | None]:
        """The ``split_pos`` key of each set of source signals (None: sliding)."""
        return list(self.taus)

    def source_signals(self, doc_id: str) -> pd.DataFrame:
        """One row per (split, source) whose eviction time is within the document."""
        frames = []
        with np.errstate(all="ignore"):
            snap = self.snap.mean(dim=(1, 2)).numpy()  # (S, T)
            h2o = self.h2o.mean(dim=(1, 2)).numpy()
        for s, n in enumerate(self.taus):
            pos = np.arange(n if n is not None else self.t - self.cfg.delay + 1, dtype=np.int64)
            tau = np.full(len(pos), n, dtype=np.int64) if n is not None else pos + self.cfg.delay
            frames.append(
                pd.DataFrame(
                    {
                        "doc_id": pd.Series([doc_id] * len(pos), dtype="string"),
                        "split_pos": pd.array([n] * len(pos), dtype="Int64"),
                        "pos": pos,
                        "tau": tau,
                        "attn_snapkv": snap[s, : len(pos)],
                        "attn_h2o": h2o[s, : len(pos)],
                    }
                )
            )
        return pd.concat(frames, ignore_index=True)

    def finish(
        self, prefill: forwards.Prefill, tokens: pd.DataFrame, tdoc: Any
    ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        """Add signal (and word) columns to ``tokens``; build ``source_signals`` and ``token_layers``."""
        cols = self.logit_signals(prefill.hidden, tdoc.input_ids)
        tokens = tokens.assign(**cols)
        tokens["key_norm"] = self.knorm.mean(dim=(0, 1)).numpy()
        tokens["rep_change"] = self.rep_final.numpy()
        tokens["rep_change_layers"] = self.rep.mean(dim=0).numpy()
        tokens["entropy_rep"] = tokens["entropy_in_topk"] * tokens["rep_change_layers"]
        if self.cfg.words:
            from forward_influence.measurement.words import tag_tokens

            tokens = pd.concat([tokens, tag_tokens(tdoc.doc.text, tdoc.offsets)], axis=1)
        return tokens, self.source_signals(tdoc.doc.doc_id), self.token_layers(tdoc.doc.doc_id)

    def token_layers(self, doc_id: str) -> pd.DataFrame:
        """Token × layer × KV head (× split): attention per split, key norm, ``r_l``."""
        t, nl, nkv = self.t, self.n_layers, self.n_kv
        cells = t * nl * nkv
        frames = []
        for s, n in enumerate(self.taus):
            frames.append(
                pd.DataFrame(
                    {
                        "doc_id": pd.Series([doc_id] * cells, dtype="string"),
                        "split_pos": pd.array([n] * cells, dtype="Int64"),
                        "pos": np.tile(np.arange(t), nl * nkv).astype(np.int64),
                        "layer": np.repeat(np.arange(nl), nkv * t).astype(np.int16),
                        "kv_head": np.tile(np.repeat(np.arange(nkv), t), nl).astype(np.int16),
                        "attn_snapkv": self.snap[s].numpy().reshape(-1).astype(np.float32),
                        "attn_h2o": self.h2o[s].numpy().reshape(-1).astype(np.float32),
                        "key_norm": self.knorm.numpy().reshape(-1).astype(np.float32),
                        "rep_change": np.repeat(self.rep.numpy()[:, None, :], nkv, axis=1)
                        .reshape(-1)
                        .astype(np.float32),
                    }
                )
            )
        return pd.concat(frames, ignore_index=True)
