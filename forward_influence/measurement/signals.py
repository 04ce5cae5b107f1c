"""The built-in per-token and per-source signals, one registered class each (docs/design.md §3).

How a signal is declared and run: :mod:`forward_influence.measurement.signal_registry`.
Each class's docstring says what it computes; all obey the causality rule
(a token signal reads ``x[<= i]``; a source signal reads only the queries before
its eviction time ``tau``: ``N`` in split mode, ``i + D`` in sliding mode).

Nothing of size ``T x T x heads x layers`` or ``T x vocab`` is held: attention
is reduced per layer and per query chunk inside the prefill, logits per row
chunk from the final hidden state.
"""

from __future__ import annotations

import numpy as np
import torch

from forward_influence.measurement import scores
from forward_influence.measurement.features import RepChange
from forward_influence.measurement.kl import entropy
from forward_influence.measurement.signal_registry import Context, LayerAttention, Signal, register
from forward_influence.store.schema import SOURCE, TOKEN, SignalSpec


def _shift(a: np.ndarray, first: float = np.nan) -> np.ndarray:
    """The value at ``i - 1`` in row ``i`` (``first`` in row 0: NaN, or the previous block's last):
    a prediction made at ``i - 1`` belongs to the token it predicted."""
    return np.concatenate([[first], a[:-1]])


class _Shifted(Signal):
    """Its input shifted by one token (:func:`_shift`); a block continuing a sequence starts
    with the previous block's last input value."""

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._first, self._next = np.nan, np.nan

    def values(self, done: dict[str, Signal]) -> np.ndarray:
        x = done[self.inputs[0]].result
        self._next = float(x[-1]) if len(x) else self._first
        return _shift(x, self._first)

    def carry(self) -> float:
        return self._next

    def resume(self, state: float) -> None:
        self._first = state


class _LogitSignal(Signal):
    """Fills ``self.out`` ``(T,)`` from the logit chunks; its value is ``out``."""

    feeds = ("logits",)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self.out = np.full(ctx.t, np.nan)

    def values(self, done: dict[str, Signal]) -> np.ndarray:
        return self.out


@register
class EntropyIn(_Shifted):
    """Entropy (nats) of ``p(. | x[<i])``, the distribution that predicted token i (NaN for the first token)."""

    spec = SignalSpec("entropy_in", TOKEN, "entropy", rule=True, color="#66a61e", rank=2)
    inputs = ("entropy_out",)


@register
class EntropyOut(_LogitSignal):
    """Entropy of ``p(. | x[<= i])``, the prediction made after token i."""

    spec = SignalSpec("entropy_out", TOKEN, "entropy after the token", rank=4)

    def on_logits(self, c0: int, logits: torch.Tensor, ids: torch.Tensor) -> None:
        self.out[c0 : c0 + logits.shape[0]] = entropy(logits).cpu().numpy()


@register
class EntropyInTopk(_Shifted):
    """``entropy_in`` over the renormalised top-k probabilities (``--topk``, default 10)."""

    spec = SignalSpec("entropy_in_topk", TOKEN, "entropy (top-k)", rule=True, color="#1b9e77", rank=1)
    inputs = ("entropy_out_topk",)


@register
class EntropyOutTopk(_LogitSignal):
    """``entropy_out`` over the renormalised top-k probabilities."""

    spec = SignalSpec("entropy_out_topk", TOKEN, "entropy after the token (top-k)", rank=3)

    def on_logits(self, c0: int, logits: torch.Tensor, ids: torch.Tensor) -> None:
        self.out[c0 : c0 + logits.shape[0]] = entropy(logits, topk=self.ctx.cfg.topk).cpu().numpy()


@register
class Surprisal(_LogitSignal):
    """``-log p(x_i | x[<i])`` (NaN for the first token)."""

    spec = SignalSpec("surprisal", TOKEN, "surprisal", rank=5)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._prev: torch.Tensor | None = None  # the previous block's last log-probabilities (V,)
        self._last: torch.Tensor | None = None
        self._first_id: int | None = None

    def on_logits(self, c0: int, logits: torch.Tensor, ids: torch.Tensor) -> None:
        c1, t = c0 + logits.shape[0], self.ctx.t
        if c0 == 0 and t:
            self._first_id = int(ids[0])
        nxt = min(c1, t - 1)  # log p(x_{i+1} | x<=i) for rows with a next token
        if nxt > c0:
            lp = torch.log_softmax(logits[: nxt - c0], dim=-1)  # (n', V)
            self.out[c0:nxt] = lp.gather(1, ids[c0 + 1 : nxt + 1, None])[:, 0].double().cpu().numpy()
        if c1 == t:  # what the next block's first token is predicted with
            self._last = torch.log_softmax(logits[-1], dim=-1).cpu()

    def values(self, done: dict[str, Signal]) -> np.ndarray:
        logp = np.nan if self._prev is None or self._first_id is None else float(self._prev[self._first_id])
        return -_shift(self.out, logp)  # row 0: -log p(x_0 | the previous block), NaN where there is none

    def carry(self) -> torch.Tensor | None:
        return self._last

    def resume(self, state: torch.Tensor) -> None:
        self._prev = state


@register
class KeyNorm(Signal):
    """``||K_l[j]||`` after RoPE (which keeps the norm), mean over layers and KV heads."""

    spec = SignalSpec("key_norm", TOKEN, "key norm", layers=True, rank=8)
    feeds = ("attention",)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self.per_layer = torch.zeros(ctx.n_layers, ctx.n_kv, ctx.t, dtype=torch.float64)  # (L, Hkv, T)

    def on_attention(self, layer: int, att: LayerAttention) -> None:
        self.per_layer[layer] = att.k.float().norm(dim=-1).double().cpu()

    def values(self, done: dict[str, Signal]) -> np.ndarray:
        return self.per_layer.mean(dim=(0, 1)).numpy()

    def layer_values(self) -> torch.Tensor:
        return self.per_layer[None]


@register
class RepChangeSignal(Signal):
    """``r_{L-1}(i) = 1 - cos(h_{l0}(i), h_{L-1}(i))``, early layer ``l0 = --rep-layer``
    to the last layer (before the final norm): the study's words; 1 for a model
    with no layer after ``l0``. Per layer (``token_layers``): InfoKV's term
    ``r_l`` (:class:`~forward_influence.measurement.features.RepChange`, which the
    compressors use too), repeated across KV heads."""

    spec = SignalSpec("rep_change", TOKEN, "representation change", layers=True, rank=9)
    feeds = ("hidden",)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._rep = RepChange(ctx.n_layers, ctx.t, ctx.cfg.rep_layer)

    @property
    def rep(self) -> torch.Tensor:
        """``(L, T)`` float64: ``r_l`` per layer."""
        return self._rep.values.double()

    def on_hidden(self, layer: int, hidden: torch.Tensor) -> None:
        self._rep(layer, hidden)

    def values(self, done: dict[str, Signal]) -> np.ndarray:
        return self.rep[-1].numpy()

    def layer_values(self) -> torch.Tensor:
        return self.rep[None, :, None, :].expand(1, self.ctx.n_layers, self.ctx.n_kv, self.ctx.t)


@register
class RepChangeLayers(Signal):
    """The mean over layers of ``r_l``, the per-layer term InfoKV multiplies into
    its entropy score (our reading of an unpublished formula; see
    :mod:`forward_influence.compress.infokv`)."""

    spec = SignalSpec("rep_change_layers", TOKEN, "representation change (layer mean)", rank=10)
    inputs = ("rep_change",)

    def values(self, done: dict[str, Signal]) -> np.ndarray:
        return done["rep_change"].rep.mean(dim=0).numpy()


@register
class EntropyRep(Signal):
    """``entropy_in_topk * rep_change_layers``: the layer mean of InfoKV's entropy
    term before normalisation (same reading)."""

    spec = SignalSpec("entropy_rep", TOKEN, "entropy x representation change", rank=11)
    inputs = ("entropy_in_topk", "rep_change_layers")

    def values(self, done: dict[str, Signal]) -> np.ndarray:
        return done["entropy_in_topk"].result * done["rep_change_layers"].result


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


class _Attention(Signal):
    """An attention signal per split (or sliding source), layer and KV head:
    ``per_layer`` ``(len(taus), L, Hkv, T)`` float64, NaN where a key's eviction
    time is past the document; its value is the mean over layers and KV heads."""

    feeds = ("attention",)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self.per_layer = torch.full((len(ctx.taus), ctx.n_layers, ctx.n_kv, ctx.t), float("nan"), dtype=torch.float64)

    def on_attention(self, layer: int, att: LayerAttention) -> None:
        if self.ctx.cfg.delay is not None:
            self.sliding(layer, att)
        else:
            for s in sorted(range(len(self.ctx.taus)), key=lambda s: self.ctx.taus[s]):
                self.split(s, layer, att)

    def sliding_band(self, att: LayerAttention) -> tuple[torch.Tensor, int]:
        """The band of the ``D + kernel // 2`` most recent keys (computed once per layer for
        every sliding signal) and the number of sources evicted within the document."""
        d, h = self.ctx.cfg.delay, self.ctx.cfg.kernel // 2
        width = d + h
        band = att.shared(
            ("band", width), lambda: _band(att.q, att.k, att.pos, att.scaling, width, self.ctx.cfg.chunk_bytes)
        )
        return band, self.ctx.t - d + 1

    def values(self, done: dict[str, Signal]) -> np.ndarray:
        return self.per_layer.mean(dim=(1, 2)).numpy()

    def layer_values(self) -> torch.Tensor:
        return self.per_layer


@register
class AttnSnapKV(_Attention):
    """SnapKV: the mean attention that the observation window's queries give key
    ``j`` (softmax over all causal keys, mean over the window's queries and the
    query heads of a KV group), average-pooled over ``kernel`` neighbouring keys
    (zero padding). Window: the last ``window`` queries before ``N`` (split);
    ``[j, j + D)`` (sliding). Keys inside the split-mode window are scored like
    the rest (no "always kept" maximum: the analysis leaves them out of the
    competition instead)."""

    spec = SignalSpec("attn_snapkv", SOURCE, "SnapKV attention", rule=True, layers=True, color="#d95f02", rank=6)

    def split(self, s: int, layer: int, att: LayerAttention) -> None:
        n = self.ctx.taus[s]
        w = min(self.ctx.cfg.window, n)
        q, k, pos = att.q, att.k, att.pos
        mean = scores.window_attention(q[:, n - w : n], k[:, :n], pos[n - w : n], pos[:n], att.scaling)  # (Hq, N)
        self.per_layer[s, layer, :, :n] = (
            scores.pooled_group_mean(mean, self.ctx.n_kv, self.ctx.cfg.kernel).double().cpu()
        )

    def sliding(self, layer: int, att: LayerAttention) -> None:
        """Query ``i + l`` gives key ``i + o`` the band entry at lag ``l - o``."""
        band, n = self.sliding_band(att)
        if n <= 0:
            return
        d, h = self.ctx.cfg.delay, self.ctx.cfg.kernel // 2
        snap = torch.zeros(att.q.shape[0], n, dtype=torch.float64, device=att.q.device)  # (Hq, n)
        for lag in range(d):
            rows = band[:, lag : lag + n]  # (Hq, n, D + h): queries i + lag for i < n
            for o in range(-h, h + 1):
                if lag - o >= 0:
                    snap += rows[:, :, lag - o]
        self.per_layer[0, layer, :, :n] = self.ctx.group_mean(snap / (d * self.ctx.cfg.kernel)).cpu()


@register
class AttnH2O(_Attention):
    """H2O: the cumulative attention from every query before ``tau`` that can see
    ``j``, divided by their number (``N - j`` in split mode, ``D`` in sliding)."""

    spec = SignalSpec("attn_h2o", SOURCE, "H2O attention", rule=True, layers=True, color="#e6ab02", rank=7)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._acc: tuple[int, int, torch.Tensor] | None = None  # (layer, queries summed, (Hq, T))

    def split(self, s: int, layer: int, att: LayerAttention) -> None:
        """Splits come in order of ``N``: the sum over queries ``< N`` grows from the previous split's."""
        n = self.ctx.taus[s]
        if self._acc is None or self._acc[0] != layer:
            self._acc = (layer, 0, torch.zeros(att.q.shape[0], self.ctx.t, dtype=torch.float64, device=att.q.device))
        _, done, acc = self._acc
        if n > done:
            q, k, pos = att.q, att.k, att.pos
            acc[:, :n] += scores.cumulative_attention(
                q[:, done:n], k[:, :n], pos[done:n], pos[:n], att.scaling, self.ctx.cfg.chunk_bytes
            )
            self._acc = (layer, n, acc)
        seen = torch.arange(n, 0, -1, device=att.q.device, dtype=torch.float64)  # N - j queries before N see key j
        self.per_layer[s, layer, :, :n] = self.ctx.group_mean(acc[:, :n] / seen).cpu()

    def sliding(self, layer: int, att: LayerAttention) -> None:
        band, n = self.sliding_band(att)
        if n <= 0:
            return
        d = self.ctx.cfg.delay
        h2o = torch.zeros(att.q.shape[0], n, dtype=torch.float64, device=att.q.device)  # (Hq, n)
        for lag in range(d):
            h2o += band[:, lag : lag + n][:, :, lag]
        self.per_layer[0, layer, :, :n] = self.ctx.group_mean(h2o / d).cpu()


@register
class KeyNormRelative(Signal):
    """A token's key norm over the mean key norm of the ``window`` tokens before it
    (per layer and KV head, then the mean over them; NaN for the first token): how
    much a key stands out from its neighbourhood, reading only keys ``<= i``."""

    spec = SignalSpec("key_norm_rel", TOKEN, "key norm / preceding keys' mean", rule=True, layers=True, rank=12)
    feeds = ("attention",)
    window = 16

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self.per_layer = torch.full((ctx.n_layers, ctx.n_kv, ctx.t), float("nan"), dtype=torch.float64)
        self._before: list[torch.Tensor] | None = None  # per layer, the previous block's last keys' norms
        self._tail: list[torch.Tensor | None] = [None] * ctx.n_layers

    def on_attention(self, layer: int, att: LayerAttention) -> None:
        new = att.k.float().norm(dim=-1).double().cpu()  # (Hkv, T)
        before = self._before[layer] if self._before is not None else None
        before = new[:, :0] if before is None else before
        norm = torch.cat([before, new], dim=1)  # (Hkv, P + T): the earlier keys the window may reach
        p, t = before.shape[1], new.shape[1]
        csum = torch.cat([torch.zeros(norm.shape[0], 1, dtype=norm.dtype), norm.cumsum(1)], dim=1)  # (Hkv, P + T + 1)
        i = torch.arange(p, p + t)
        lo = (i - self.window).clamp_min(0)
        count = (i - lo).to(norm.dtype)  # keys before i in the window
        mean = (csum[:, i] - csum[:, lo]) / count.clamp_min(1)
        self.per_layer[layer] = torch.where(count > 0, new / mean, torch.nan)
        self._tail[layer] = norm[:, -self.window :].clone()

    def carry(self) -> list[torch.Tensor | None]:
        return self._tail

    def resume(self, state: list[torch.Tensor | None]) -> None:
        self._before = state

    def values(self, done: dict[str, Signal]) -> np.ndarray:
        return self.per_layer.mean(dim=(0, 1)).numpy()

    def layer_values(self) -> torch.Tensor:
        return self.per_layer[None]
