"""A KV cache cut per layer and KV head, and the prefill setting.

:class:`CompressedCache` holds, per layer, the kept keys/values
``(1, Hkv, n_l, D)`` (keys after RoPE, so every entry keeps the position it
was computed at) and their absolute positions ``(Hkv, n_l)``. New tokens run
at their true positions ``length, length+1, ...`` over whatever is kept
(:func:`forward_influence.hf.forwards.continue_forward`: the layers may hold
different numbers of entries, which transformers' own masks cannot do — the
reason kvpress's PyramidKV breaks with sdpa/eager when a question is fed in
one batch). :meth:`CompressedCache.cut` asks the compressor for scores and
keeps each layer's top ``layer_budget`` entries per KV head.

Prefill setting (:func:`compress_prompt`): the prompt runs once with full
attention, every layer's scores are taken from that forward, and the cache is
cut when the forward is complete. Peak memory is therefore the full prompt
cache (``2 L Hkv T D`` elements) plus one float per layer, KV head and token
of scores — what InfoKV needs anyway, since its entropies come from the final
logits; no ``T x T`` attention or ``T x V`` logits are held (both in chunks).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from forward_influence.compress.entries import LayerView, Method, TokenFeatures, top_entries
from forward_influence.hf import anatomy, attention, cache_api, forwards
from forward_influence.measurement.features import RepChange, logit_chunks
from forward_influence.measurement.kl import entropy
from forward_influence.runtime.devices import defaults_for
from forward_influence.store.schema import TOKEN


@dataclasses.dataclass
class Block:
    """One forward over a :class:`CompressedCache`: what it wants to see, and its logits.

    Attributes
    ----------
    on_tap, layer_hooks, attn_inputs
        The forward's callbacks (:func:`forward_influence.hf.forwards.continue_forward`).
    rep : torch.Tensor
        ``(L, C)`` filled by ``layer_hooks`` (InfoKV's representation change).
    ids : torch.Tensor
        ``(C,)`` the block's tokens.
    signals : SignalCollector or None
        The measurement's signals over a prefill block (:attr:`Needs.signals`).
    want_logits, all_logits : bool
        Whether :meth:`CompressedCache.end_block` keeps the logits, and all of them.
    logits : torch.Tensor or None
    """

    on_tap: Any
    layer_hooks: Any
    attn_inputs: bool
    rep: torch.Tensor
    want_logits: bool = False
    all_logits: bool = False
    logits: torch.Tensor | None = None
    ids: torch.Tensor | None = None
    signals: Any = None


class CompressedCache:
    """The cache of one sequence under a compressor.

    Parameters
    ----------
    model : a ``*ForCausalLM``
    compressor : Compressor
    chunk_bytes : int, optional
        Bound on the logits held at once when entropies are needed (default:
        the device's ``entropy_logit_bytes``, :mod:`forward_influence.runtime.devices`).
    """

    def __init__(self, model: Any, compressor: Method, chunk_bytes: int | None = None):
        self.model = model
        self.compressor = compressor
        self.chunk_bytes = defaults_for(model.device).entropy_logit_bytes if chunk_bytes is None else chunk_bytes
        self.n_layers = anatomy.n_layers(model)
        self.kv: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.positions: list[torch.Tensor] = []
        self.state: list[dict] = [{} for _ in range(self.n_layers)]
        self.queries: list[torch.Tensor | None] = [None] * self.n_layers
        self.query_positions = torch.zeros(0, dtype=torch.long)
        self._modules: list[Any] = [None] * self.n_layers
        self._scaling: list[float] = [1.0] * self.n_layers
        self.length = 0  # tokens seen = the next absolute position
        self.cuts = 0
        self.recorded = compressor.needs()  # what the prefill recorded (a fork keeps it; can_fork checks against it)
        self.spec = self.recorded.features
        self.entropy = torch.zeros(0)  # (length,) top-k entropy that predicted each token
        self.rep = torch.zeros(self.n_layers, 0)  # (L, length)
        self._next_entropy = 0.0  # entropy of the distribution the next token will come from
        self.signals: dict[str, Any] | None = None  # Needs.signals: the signals read, at tau = the prompt's end
        self.signals_tau: int | None = None
        self.token_signals: dict[str, Any] = {}  # Needs.signals: token signals of every position seen, (length,)
        self._signal_carry: dict[str, Any] | None = None  # what the next block's token signals continue from
        self.last_scores: list[torch.Tensor] = []

    # ----------------------------------------------------------------- state
    def fork(self, compressor: Method | None = None) -> CompressedCache:
        """A copy sharing every tensor (nothing is modified in place, so cutting
        or extending the copy leaves this cache as it is), optionally under
        another compressor whose inputs this cache recorded (:meth:`can_fork`):
        one prefill, many cuts."""
        if compressor is not None and not self.can_fork(compressor):
            raise ValueError(f"cannot fork a {self.compressor.name} cache to {compressor.name}: it needs other inputs")
        new = object.__new__(CompressedCache)
        new.__dict__.update(self.__dict__)
        new.kv, new.positions, new.queries = list(self.kv), list(self.positions), list(self.queries)
        new.state = [dict(s) for s in self.state]
        if compressor is not None:
            new.compressor = compressor
        return new

    def can_fork(self, compressor: Method) -> bool:
        """Whether this cache recorded everything ``compressor`` reads: its token
        features (or none), as many recent queries, the attention inputs if it
        wants them, and — for methods with state — the same method up to its
        budget."""
        mine, theirs = self.compressor, compressor.needs()
        if theirs.state:
            if type(compressor) is not type(mine) or dataclasses.replace(compressor, budget=mine.budget) != mine:
                return False
        return self.recorded.covers(theirs)

    def sizes(self) -> list[int]:
        """Entries per layer."""
        return [int(p.shape[1]) for p in self.positions]

    def features(self) -> TokenFeatures | None:
        if self.spec is None and self.signals is None:
            return None
        return TokenFeatures(
            self.entropy,
            self.rep,
            signals=self.signals,
            tau=self.signals_tau,
            token_signals=self.token_signals,
            length=self.length,
        )

    # ---------------------------------------------------------------- extend
    def _tap(self, tap: attention.AttentionTap) -> None:
        l, c = tap.layer, tap.query.shape[1]
        self._modules[l], self._scaling[l] = tap.module, tap.scaling
        keep_q = max(1, self.compressor.needs().recent_queries)
        old = self.queries[l]
        q = tap.query if old is None else torch.cat([old, tap.query], dim=1)  # (Hq, w + C, D)
        self.queries[l] = q[:, -keep_q:].clone()  # a copy: a view would keep the prefill's (Hq, T, D) alive
        if self.recorded.state:
            hkv = tap.key.shape[0]
            new_pos = torch.arange(tap.start, tap.start + c, device=tap.key.device)[None].expand(hkv, c)  # (Hkv, C)
            if self.kv:
                keys = torch.cat([self.kv[l][0][0], tap.key], dim=1)  # (Hkv, n + C, D)
                pos = torch.cat([self.positions[l], new_pos], dim=1)  # (Hkv, n + C)
            else:
                keys, pos = tap.key, new_pos
            self.compressor.observe(tap, pos, keys, self.state[l])

    def begin_block(self, ids: torch.Tensor) -> Block:
        """Callbacks for a forward of the tokens ``ids`` ``(C,)`` over this cache (the
        :class:`forward_influence.hf.cut_cache.BlockStore` protocol)."""
        n_tokens = int(ids.shape[0])
        hook = RepChange(self.n_layers, n_tokens, self.spec.early_layer) if self.spec is not None else None
        rep = hook.values if hook is not None else torch.ones(self.n_layers, n_tokens)  # filled in place by the hook
        block = Block(on_tap=self._tap, layer_hooks=hook, attn_inputs=self.compressor.needs().attn_inputs, rep=rep)
        block.ids = ids
        streams = not self.kv or self.compressor.needs().signals is not None  # a fork to another method: none
        if self.recorded.signals is not None and streams:  # the prefill: the signals at its end; later: tokens'
            block.signals = measured_signals(self.model, n_tokens, self.recorded.signals, self._signal_carry)
            block.on_tap, block.layer_hooks = (
                _both(self._tap, block.signals.on_tap),
                _both(hook, block.signals.on_layer),
            )
        return block

    def end_block(self, kv: list[tuple[torch.Tensor, torch.Tensor]], hidden: torch.Tensor, block: Block) -> None:
        """Append the block's own entries ``kv`` (per layer ``(1, Hkv, C, D)``) at
        positions ``length..length+C-1``; ``hidden`` ``(C, Dm)`` gives the logits
        (kept in ``block.logits`` when ``block.want_logits``) and the entropies."""
        c = int(hidden.shape[0])
        prefill = not self.kv
        new_pos = torch.arange(self.length, self.length + c, device=hidden.device)
        if not self.kv:
            self.kv = list(kv)
            self.positions = [new_pos[None].expand(k.shape[1], c).contiguous() for k, _ in kv]
        else:
            for l, (k, v) in enumerate(kv):
                k0, v0 = self.kv[l]
                self.kv[l] = (torch.cat([k0, k], dim=2), torch.cat([v0, v], dim=2))
                p0 = self.positions[l]
                self.positions[l] = torch.cat([p0, new_pos[None].expand(p0.shape[0], c)], dim=1)
        self.query_positions = torch.cat([self.query_positions.to(new_pos.device), new_pos])[
            -max(1, self.compressor.needs().recent_queries) :
        ]
        if block.want_logits or self.spec is not None:
            block.logits = self._logits(hidden, block.all_logits)
        if self.spec is not None:
            self.rep = torch.cat([self.rep, block.rep], dim=1)
        if block.signals is not None:
            block.signals.feed_logits(hidden, block.ids)
            vals = block.signals.values()
            if prefill:
                self.signals, self.signals_tau = vals, c
            self._signal_carry = block.signals.carry()
            self.token_signals = {  # a new dict: forks share the old one
                n: np.concatenate([self.token_signals.get(n, np.zeros(0)), v])
                for n, v in vals.items()
                if block.signals.signal(n).spec.kind == TOKEN
            }
        self.length += c

    @torch.no_grad()
    def extend(self, ids: torch.Tensor, all_logits: bool = False) -> torch.Tensor:
        """Run ``ids`` ``(C,)`` at positions ``length..length+C-1`` over the cache
        and append their entries.

        Returns
        -------
        torch.Tensor
            Float32 logits: ``(C, V)`` with ``all_logits``, else ``(1, V)`` of
            the last token.
        """
        block = self.begin_block(ids)
        block.want_logits, block.all_logits = True, all_logits
        if not self.kv:
            out = forwards.record_prefill(
                self.model, ids, layer_hooks=block.layer_hooks, on_tap=block.on_tap, attn_inputs=block.attn_inputs
            )
        else:
            out = forwards.continue_forward(
                self.model,
                self.kv,
                ids,
                self.length,
                on_tap=block.on_tap,
                layer_hooks=block.layer_hooks,
                attn_inputs=block.attn_inputs,
            )
        self.end_block(out.kv, out.hidden, block)
        return block.logits

    def _logits(self, hidden: torch.Tensor, all_logits: bool) -> torch.Tensor:
        """Logits (all or last), and the top-k entropies when the method needs them."""
        if self.spec is None:
            return anatomy.logits_from_hidden(self.model, hidden if all_logits else hidden[-1:])
        c = hidden.shape[0]
        h_out = torch.empty(c)
        kept = []
        for c0, lg in logit_chunks(self.model, hidden, self.chunk_bytes):  # (n, V) float32
            h_out[c0 : c0 + lg.shape[0]] = entropy(lg, topk=self.spec.topk).float().cpu()
            if all_logits or c0 + lg.shape[0] >= c:
                kept.append(lg if all_logits else lg[-1:])
        h_in = torch.cat([torch.tensor([self._next_entropy]), h_out[:-1]])  # (C,) what predicted each token
        self.entropy = torch.cat([self.entropy, h_in])
        self._next_entropy = float(h_out[-1])
        return torch.cat(kept)

    # ------------------------------------------------------------------- cut
    @torch.no_grad()
    def cut(self, keep: float) -> None:
        """Keep, at every layer, ``compressor.layer_budget(..., keep)`` entries
        per KV head: the top scores (ties to the more recent entry), in
        position order."""
        comp = self.compressor
        views, scores = [], []
        for l in range(self.n_layers):
            k, v = self.kv[l]
            n = k.shape[2]
            view = LayerView(
                layer=l,
                n_layers=self.n_layers,
                keys=k[0],
                values=v[0],
                positions=self.positions[l],
                queries=self.queries[l],
                query_positions=self.query_positions,
                scaling=self._scaling[l],
                n_keep=comp.layer_budget(l, self.n_layers, n, keep),
                state=self.state[l],
                module=self._modules[l],
                model=self.model,
                step=self.cuts,
            )
            views.append(view)
            scores.append(comp.layer_scores(view))  # (Hkv, n) with the sinks at +inf
        scores = comp.finish(scores, self.positions, self.features())
        self.last_scores = scores  # (Hkv, n) per layer, for inspection
        for l, (view, s) in enumerate(zip(views, scores)):
            idx = top_entries(s, view.n_keep)  # (Hkv, n_keep)
            self.kv[l] = cache_api.gather_entries(*self.kv[l], idx)
            self.positions[l] = self.positions[l].gather(1, idx)
            for name, val in list(self.state[l].items()):
                if name.startswith("entry:"):
                    self.state[l][name] = val.gather(1, idx.to(val.device))
        self.cuts += 1


def measured_signals(model: Any, n_tokens: int, cfg: Any, after: dict[str, Any] | None = None) -> Any:
    """A collector of the signals ``cfg`` names over a block of ``n_tokens``: a prompt's read at its
    end (one split ``N = n_tokens``; no word tags: they read the text after a token); a block that
    continues a sequence (``after``: the previous block's carry) computes its token signals only."""
    from forward_influence.measurement.collector import SignalCollector
    from forward_influence.measurement.signal_registry import REGISTRY, with_inputs

    cfg = dataclasses.replace(cfg, splits=(n_tokens,), delay=None, words=False)
    if after is not None:
        cfg = dataclasses.replace(cfg, only=tuple(n for n in with_inputs(cfg.only) if REGISTRY[n].spec.kind == TOKEN))
    return SignalCollector(model, n_tokens, cfg, after=after)


def _both(first: Any, second: Any) -> Any:
    """A callback calling ``first`` (may be None) then ``second`` with the same arguments."""
    if first is None:
        return second

    def call(*args: Any) -> None:
        first(*args)
        second(*args)

    return call


@torch.no_grad()
def compress_prompt(model: Any, input_ids: torch.Tensor, compressor: Method) -> tuple[CompressedCache, torch.Tensor]:
    """Prefill ``input_ids`` ``(T,)`` with full attention, then cut the cache to
    ``compressor.budget`` (the layers keep ``budget x T`` entries on average).

    Returns
    -------
    (CompressedCache, torch.Tensor)
        The cut cache (ready for :meth:`CompressedCache.extend` at position
        ``T``) and the float32 logits ``(V,)`` after the last prompt token
        (computed with the full cache).
    """
    cache = CompressedCache(model, compressor)
    logits = cache.extend(input_ids.to(model.device))
    cache.cut(compressor.budget * int(input_ids.shape[0]))
    return cache, logits[-1]
