"""The one prefill that runs every registered signal, and the tables it fills (docs/design.md §3).

How a signal is declared: :mod:`forward_influence.measurement.signal_registry`; the
built-in ones: :mod:`forward_influence.measurement.signals` (imported here, which
registers them).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from forward_influence.hf import anatomy, forwards
from forward_influence.hf.attention import AttentionTap
from forward_influence.measurement import signals as _builtin  # noqa: F401  (registers the built-in signals)
from forward_influence.measurement.features import logit_chunks
from forward_influence.measurement.signal_registry import (
    FEEDS,
    REGISTRY,
    Context,
    LayerAttention,
    Signal,
    SignalConfig,
    with_inputs,
)
from forward_influence.store.schema import SOURCE, TOKEN, SignalSpec


def registered() -> tuple[SignalSpec, ...]:
    """The specs of every registered signal, in registration order (what run.json records)."""
    return tuple(cls.spec for cls in REGISTRY.values())


class SignalCollector:
    """Runs every registered signal (``cfg.only``: those and their inputs) in one prefill.

    Use ``engine.prefill(ids, on_tap=c.on_tap, layer_hooks=c.on_layer)``
    then :meth:`finish`. A block that continues a sequence (a decoding cache's next tokens)
    passes ``after=`` the previous block's :meth:`carry`: its token signals then equal
    those over the whole sequence.
    """

    def __init__(self, model: Any, n_tokens: int, cfg: SignalConfig, after: dict[str, Any] | None = None):
        taus: list[int | None] = (
            [None] if cfg.delay is not None else [min(n, n_tokens) for n in (cfg.splits or (n_tokens,))]
        )
        self.cfg, self.t = cfg, n_tokens
        self.ctx = Context(model, n_tokens, anatomy.n_layers(model), anatomy.n_kv_heads(model), cfg, taus)
        self.signals = {name: REGISTRY[name](self.ctx) for name in with_inputs(cfg.only)}
        missing = {n: [i for i in s.inputs if i not in self.signals] for n, s in self.signals.items()}
        if any(missing.values()):
            raise ValueError(f"signals derive from unregistered inputs: { {n: m for n, m in missing.items() if m} }")
        self._fed = {f: [s for s in self.signals.values() if f in s.feeds] for f in FEEDS}
        for name, state in (after or {}).items():  # a block continuing a sequence (its token signals)
            if name in self.signals and state is not None:
                self.signals[name].resume(state)

    def carry(self) -> dict[str, Any]:
        """After :meth:`values`: each signal's state for the sequence's next block (``after=``)."""
        return {name: s.carry() for name, s in self.signals.items()}

    def signal(self, name: str) -> Signal:
        return self.signals[name]

    @torch.no_grad()
    def on_tap(self, tap: AttentionTap) -> None:
        """One layer's attention inputs: queries ``(Hq, T, D)`` and keys ``(Hkv, T, D)`` after RoPE."""
        att = LayerAttention(tap.query, tap.key, tap.scaling)
        for s in self._fed["attention"]:
            s.on_attention(tap.layer, att)

    def on_layer(self, layer: int, hidden: torch.Tensor) -> None:
        """hidden ``(T, Dm)``: the output of decoder layer ``layer`` (layers come in order)."""
        for s in self._fed["hidden"]:
            s.on_hidden(layer, hidden)

    @torch.no_grad()
    def feed_logits(self, hidden: torch.Tensor, input_ids: torch.Tensor) -> None:
        """The final hidden state ``(T, Dm)`` through the LM head in row chunks, to every logit signal."""
        ids = input_ids.to(hidden.device)
        for c0, logits in logit_chunks(self.ctx.model, hidden, self.cfg.chunk_bytes):
            for s in self._fed["logits"]:
                s.on_logits(c0, logits, ids)

    def values(self) -> dict[str, np.ndarray]:
        """Every signal's values (after the prefill and :meth:`feed_logits`), in registration
        order; each computed after its inputs."""
        out: dict[str, np.ndarray] = {}

        def compute(name: str, stack: tuple[str, ...] = ()) -> None:
            if name in out:
                return
            if name in stack:
                raise ValueError(f"signals derive from each other in a circle: {' -> '.join((*stack, name))}")
            s = self.signals[name]
            for i in s.inputs:
                compute(i, (*stack, name))
            out[name] = s.result = s.values({i: self.signals[i] for i in s.inputs})

        for name in self.signals:
            compute(name)
        return {name: out[name] for name in self.signals}

    def finish(
        self, prefill: forwards.Prefill, tokens: pd.DataFrame, tdoc: Any
    ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        """Add signal (and word) columns to ``tokens``; build ``source_signals`` and ``token_layers``."""
        self.feed_logits(prefill.hidden, tdoc.input_ids)
        vals = self.values()
        tokens = tokens.assign(**{n: v for n, v in vals.items() if self.signals[n].spec.kind == TOKEN})
        if self.cfg.words:
            from forward_influence.measurement.words import tag_tokens

            tokens = pd.concat([tokens, tag_tokens(tdoc.doc.text, tdoc.offsets)], axis=1)
        doc_id = tdoc.doc.doc_id
        return tokens, self.source_signals(doc_id, vals), self.token_layers(doc_id)

    def source_signals(self, doc_id: str, vals: dict[str, np.ndarray]) -> pd.DataFrame:
        """One row per (split, source) whose eviction time is within the document."""
        frames = []
        for s, n in enumerate(self.ctx.taus):
            pos = np.arange(n if n is not None else self.t - self.cfg.delay + 1, dtype=np.int64)
            tau = np.full(len(pos), n, dtype=np.int64) if n is not None else pos + self.cfg.delay
            cols = {name: v[s, : len(pos)] for name, v in vals.items() if self.signals[name].spec.kind == SOURCE}
            frames.append(
                pd.DataFrame(
                    {
                        "doc_id": pd.Series([doc_id] * len(pos), dtype="string"),
                        "split_pos": pd.array([n] * len(pos), dtype="Int64"),
                        "pos": pos,
                        "tau": tau,
                        **cols,
                    }
                )
            )
        return pd.concat(frames, ignore_index=True)

    def token_layers(self, doc_id: str) -> pd.DataFrame:
        """Token x layer x KV head (x split): every signal with per-layer values (float32)."""
        t, nl, nkv = self.t, self.ctx.n_layers, self.ctx.n_kv
        cells = t * nl * nkv
        # per-split (source) signals first, then the token signals repeated for every split
        layered = {n: s.layer_values() for n, s in self.signals.items() if s.spec.layers and s.spec.kind == SOURCE}
        layered.update({n: s.layer_values() for n, s in self.signals.items() if s.spec.layers and s.spec.kind == TOKEN})
        frames = []
        for s, n in enumerate(self.ctx.taus):
            cols = {name: v[min(s, len(v) - 1)].numpy().reshape(-1).astype(np.float32) for name, v in layered.items()}
            frames.append(
                pd.DataFrame(
                    {
                        "doc_id": pd.Series([doc_id] * cells, dtype="string"),
                        "split_pos": pd.array([n] * cells, dtype="Int64"),
                        "pos": np.tile(np.arange(t), nl * nkv).astype(np.int64),
                        "layer": np.repeat(np.arange(nl), nkv * t).astype(np.int16),
                        "kv_head": np.tile(np.repeat(np.arange(nkv), t), nl).astype(np.int16),
                        **cols,
                    }
                )
            )
        return pd.concat(frames, ignore_index=True)
