"""Per-token signals, computed in the engine's own prefill (DESIGN §3).

Columns added to ``tokens.parquet`` (layer-averaged where per layer):

``entropy_in(i)``
    entropy (nats) of ``p(. | x[<i])``, the distribution that predicted token i
    (NaN for the first token).
``entropy_out(i)``
    entropy of ``p(. | x[<=i])``.
``entropy_in_topk`` / ``entropy_out_topk``
    the same over the renormalised top-k probabilities (``topk``, default 10).
``surprisal(i)``
    ``-log p(x_i | x[<i])``.
``attn_snapkv(j)``
    SnapKV: the attention that the last ``window`` queries before ``snap_end``
    give key ``j`` (softmax over all causal keys, mean over the window's
    queries and the query heads of a KV group), average-pooled over
    ``kernel`` neighbouring keys, for keys ``j < snap_end - window``;
    the window's own keys get the row maximum (SnapKV always keeps them);
    keys ``>= snap_end`` are NaN. ``snap_end`` is the split ``N`` in split
    mode (the largest, with several) and ``T`` in sliding mode.
``attn_h2o(j)``
    H2O: ``sum_{q >= j} a[q, j] / (T - j)``, the cumulative attention from
    every later query divided by the number of queries that could see j.
``key_norm(j)``
    ``||K_l[j]||`` (RoPE keeps the norm).
``rep_change(i)``
    ``1 - cos(h_{l0}(i), h_L(i))`` with ``h_l`` the output of decoder layer
    ``l`` (``output_hidden_states[l + 1]``), ``l0 = rep_layer`` and ``L`` the
    last layer (before the final norm).

``token_layers.parquet`` holds the per-layer, per-KV-head values
(``attn_snapkv``, ``attn_h2o``, ``key_norm``; ``rep_change`` per layer,
repeated across heads).

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
import torch.nn.functional as Fn

from . import plumbing, scores
from .kl import entropy


@dataclass(frozen=True)
class SignalConfig:
    """Signal hyperparameters.

    Attributes
    ----------
    topk : int
        k of the top-k entropies.
    window : int
        SnapKV observation window (queries).
    kernel : int
        SnapKV pooling width (odd).
    rep_layer : int
        Early layer ``l0`` of ``rep_change``.
    snap_end : int or None
        Position that ends SnapKV's window (None: the document end).
    words : bool
        Tag words with spaCy (see :mod:`forward_influence.words`).
    chunk_bytes : int
        Bound on attention/logit temporaries.
    """

    topk: int = 10
    window: int = 32
    kernel: int = 5
    rep_layer: int = 2
    snap_end: int | None = None
    words: bool = True
    chunk_bytes: int = 128 << 20

    @classmethod
    def from_measure(cls, cfg: Any) -> "SignalConfig":
        snap_end = max(cfg.n_prefix) if cfg.mode == "split" else None
        return cls(topk=cfg.topk, window=cfg.window, rep_layer=cfg.rep_layer, snap_end=snap_end, words=cfg.words)

    def check_ready(self) -> None:
        """Fail early (before any output) if the spaCy model is missing."""
        if self.words:
            from .words import load_spacy

            load_spacy()


class SignalCollector:
    """Accumulates attention and representation signals during one prefill.

    Use ``engine.prefill(ids, on_attention=c.on_attention, layer_hooks=c.on_layer)``
    then :meth:`finish`.
    """

    def __init__(self, model: Any, n_tokens: int, cfg: SignalConfig):
        self.model = model
        self.cfg = cfg
        self.t = n_tokens
        self.n_layers = plumbing.n_layers(model)
        self.n_kv = plumbing.n_kv_heads(model)
        snap_end = cfg.snap_end if cfg.snap_end is not None else n_tokens
        self.snap_end = min(snap_end, n_tokens)
        self.h2o = torch.zeros(self.n_layers, self.n_kv, n_tokens, dtype=torch.float64)  # (L, Hkv, T)
        self.snap = torch.full((self.n_layers, self.n_kv, n_tokens), float("nan"), dtype=torch.float64)  # (L, Hkv, T)
        self.knorm = torch.zeros(self.n_layers, self.n_kv, n_tokens, dtype=torch.float64)  # (L, Hkv, T)
        self.rep = torch.full((self.n_layers, n_tokens), float("nan"), dtype=torch.float64)  # (L, T)
        self._early: torch.Tensor | None = None
        self._pending: dict[int, torch.Tensor] = {}

    # ----------------------------------------------------------- attention
    @torch.no_grad()
    def on_attention(self, layer: int, query: torch.Tensor, key: torch.Tensor, scaling: float) -> None:
        """query ``(1, Hq, T, D)``, key ``(1, Hkv, T, D)`` of one layer."""
        q = query[0]  # (Hq, T, D)
        k = key[0]  # (Hkv, T, D)
        hq, t, _ = q.shape
        g = hq // self.n_kv
        pos = torch.arange(t, device=q.device)
        self.knorm[layer] = k.float().norm(dim=-1).double().cpu()
        acc = scores.cumulative_attention(q, k, pos, pos, scaling, self.cfg.chunk_bytes)  # (Hq, T)
        seen = torch.arange(t, 0, -1, device=q.device, dtype=torch.float64)  # T - j queries see key j
        self.h2o[layer] = (acc / seen).view(self.n_kv, g, t).mean(1).cpu()
        self.snap[layer] = self._snapkv(q, k, pos, scaling).cpu()

    def _snapkv(self, q: torch.Tensor, k: torch.Tensor, pos: torch.Tensor, scaling: float) -> torch.Tensor:
        """SnapKV scores ``(Hkv, T)`` (NaN for keys at or after ``snap_end``)."""
        t = q.shape[1]
        e = self.snap_end
        w = min(self.cfg.window, e)
        out = torch.full((self.n_kv, t), float("nan"), dtype=torch.float64, device=q.device)
        mean = scores.window_attention(q[:, e - w : e], k[:, :e], pos[e - w : e], pos[:e], scaling)  # (Hq, e)
        body = e - w
        if body > 0:
            per_kv = scores.pooled_group_mean(mean[:, :body], self.n_kv, self.cfg.kernel).double()  # (Hkv, body)
            out[:, :body] = per_kv
            out[:, body:e] = per_kv.max(dim=1, keepdim=True).values
        else:
            out[:, :e] = scores.pooled_group_mean(mean, self.n_kv, 1).double()
        return out

    # ----------------------------------------------------- representations
    @torch.no_grad()
    def on_layer(self, layer: int, hidden: torch.Tensor) -> None:
        """hidden ``(T, Dm)``: the output of decoder layer ``layer``."""
        l0 = self.cfg.rep_layer
        if layer == l0:
            self._early = hidden.float().clone()
            for l, h in self._pending.items():
                self.rep[l] = self._cos_change(h)
            self._pending.clear()
        if self._early is None:
            self._pending[layer] = hidden.float().clone()
        else:
            self.rep[layer] = self._cos_change(hidden.float())

    def _cos_change(self, h: torch.Tensor) -> torch.Tensor:
        return (1.0 - Fn.cosine_similarity(self._early, h, dim=-1)).double().cpu()

    # ------------------------------------------------------------ logits
    @torch.no_grad()
    def logit_signals(self, hidden: torch.Tensor, input_ids: torch.Tensor) -> dict[str, np.ndarray]:
        """Entropies and surprisal from the final hidden state ``(T, Dm)``, in row chunks."""
        t = hidden.shape[0]
        vocab = plumbing.lm_head(self.model).weight.shape[0]
        chunk = max(1, self.cfg.chunk_bytes // (vocab * 4 * 4))
        h_full = np.empty(t)
        h_topk = np.empty(t)
        lp_next = np.full(t, np.nan)  # log p(x_{i+1} | x<=i)
        ids = input_ids.to(hidden.device)
        for c0 in range(0, t, chunk):
            c1 = min(t, c0 + chunk)
            logits = plumbing.logits_from_hidden(self.model, hidden[c0:c1])  # (n, V) float32
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
    def finish(self, prefill: plumbing.Prefill, tokens: pd.DataFrame, tdoc: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Add signal (and word) columns to ``tokens``; build ``token_layers``."""
        cols = self.logit_signals(prefill.hidden, tdoc.input_ids)
        tokens = tokens.assign(**cols)
        with np.errstate(all="ignore"):
            tokens["attn_snapkv"] = self.snap.mean(dim=(0, 1)).numpy()
            tokens["attn_h2o"] = self.h2o.mean(dim=(0, 1)).numpy()
            tokens["key_norm"] = self.knorm.mean(dim=(0, 1)).numpy()
        tokens["rep_change"] = self.rep[-1].numpy()
        if self.cfg.words:
            from .words import tag_tokens

            tokens = pd.concat([tokens, tag_tokens(tdoc.doc.text, tdoc.offsets)], axis=1)
        t, nl, nkv = self.t, self.n_layers, self.n_kv
        layer_idx = np.repeat(np.arange(nl), nkv * t)
        head_idx = np.tile(np.repeat(np.arange(nkv), t), nl)
        pos = np.tile(np.arange(t), nl * nkv)
        token_layers = pd.DataFrame(
            {
                "doc_id": pd.Series([tdoc.doc.doc_id] * (t * nl * nkv), dtype="string"),
                "pos": pos.astype(np.int64),
                "layer": layer_idx.astype(np.int16),
                "kv_head": head_idx.astype(np.int16),
                "attn_snapkv": self.snap.numpy().reshape(-1).astype(np.float32),
                "attn_h2o": self.h2o.numpy().reshape(-1).astype(np.float32),
                "key_norm": self.knorm.numpy().reshape(-1).astype(np.float32),
                "rep_change": np.repeat(self.rep.numpy()[:, None, :], nkv, axis=1).reshape(-1).astype(np.float32),
            }
        )
        return tokens, token_layers
