"""InfoKV and the distilled compressor as kvpress presses (importable only where NVIDIA ``kvpress`` is installed).

>>> from transformers import pipeline                              # doctest: +SKIP
>>> from forward_influence.integrations.kvpress import InfoKVPress  # doctest: +SKIP
>>> pipe = pipeline("kv-press-text-generation", model=model, tokenizer=tok)  # doctest: +SKIP
>>> pipe(context, question=q, press=InfoKVPress(compression_ratio=0.8))["answer"]  # doctest: +SKIP

A kvpress press sees one attention layer at a time, but InfoKV's entropies
need the final logits. This press therefore records, per layer, what InfoKV
scores need (SnapKV's window attention and the layer's hidden states) and
cuts every layer's cache from a hook on the final norm, i.e. once the
prefill's last layer is done and before the model returns. The scores,
budgets and selection are those of :class:`forward_influence.compress.InfoKV`
(nothing here re-implements them): the layer budget decides whether SnapKV's
window is kept whole, ``n_sink`` sinks are kept, ties go to the more recent
entry, and the representation term follows ``infokv.rep`` (``per_layer``:
each layer's own change; ``early_final``: the last layer's, at every layer).

:class:`DistilledPress` does the same for :class:`forward_influence.compress.Distilled`: it feeds
the measurement's signal collector (only the signals its model reads) from the same hooks — each
layer's queries and keys after RoPE, each decoder layer's output, the final hidden state with the
input ids — takes each layer's scores and the final ranking from the method itself
(``layer_scores``, ``finish``), and cuts every layer to the entries ``compress_prompt`` keeps.

Versions: the presses reach transformers only through
:mod:`forward_influence.hf.cache_api` (:func:`~forward_influence.hf.cache_api.attention_call`
reads the attention call under both cache keywords, ``cache`` from 5.24 and
``past_key_values`` before, and tells the prefill by the cache's length rather
than ``cache_position``, which 5.24 no longer passes), so this module itself
works on the transformers this package installs (>= 5.2, < 6). kvpress's own
pipeline and ``BasePress`` must support that transformers too: kvpress pins its
transformers range (see its requirements); it is not installed in this
package's environment, and this adapter was last run against kvpress with
transformers < 5.24.
"""

from __future__ import annotations

from collections.abc import Generator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

try:
    from kvpress.presses.base_press import BasePress
except ImportError as exc:  # pragma: no cover - exercised only without kvpress
    raise ImportError("forward_influence.integrations.kvpress needs NVIDIA kvpress (pip install kvpress)") from exc


from forward_influence.compress import InfoKV, LayerView, TokenFeatures, top_entries
from forward_influence.compress.compressed_cache import measured_signals
from forward_influence.compress.distilled import Distilled
from forward_influence.hf import anatomy
from forward_influence.hf.cache_api import apply_rope, attention_call, cache_layers, keep_entries
from forward_influence.measurement.features import RepChange, logit_chunks
from forward_influence.measurement.kl import entropy
from forward_influence.runtime.devices import defaults_for


@dataclass
class _PrefillCut(BasePress):
    """What both presses share: ``compression_ratio`` = 1 - budget; per-layer scores taken in
    kvpress's attention hook during a prefill (:meth:`_view` builds the layer as a compressor sees
    it); a hook on every decoder layer's output (:meth:`_on_layer`) and one on the final norm
    (:meth:`_on_final`), where :meth:`_cut` keeps each layer's top entries."""

    compression_ratio: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.compression_ratio < 1:
            raise ValueError(f"compression_ratio must be in [0, 1), got {self.compression_ratio}")
        self._reset()

    def _reset(self) -> None:
        self._scores: dict[int, torch.Tensor] = {}  # layer -> the method's scores (Hkv, T)
        self._caches: dict[int, Any] = {}  # layer -> the cache it writes

    @staticmethod
    def _view(method: Any, module: Any, keys: torch.Tensor, values: torch.Tensor, q: torch.Tensor) -> LayerView:
        """One layer of a prefill: keys and values ``(1, Hkv, T, D)``, the last queries ``q`` ``(Hq, w, D)``."""
        layer, n_layers, t = module.layer_idx, module.config.num_hidden_layers, keys.shape[2]
        pos = torch.arange(t, device=keys.device)
        return LayerView(
            layer=layer,
            n_layers=n_layers,
            keys=keys[0],
            values=values[0],
            positions=pos[None].expand(keys.shape[1], t),
            queries=q,
            query_positions=pos[-q.shape[1] :],
            scaling=module.scaling,
            n_keep=method.layer_budget(layer, n_layers, t, method.budget * t),  # below the window, it competes
            module=module,
        )

    def _cut(self, method: Any, t: int, features: TokenFeatures) -> None:
        """The method's ranking of every scored layer (``finish``, as compress_prompt's cut) and the cut."""
        layers = sorted(self._scores)
        positions = [torch.arange(t, device=self._scores[l].device)[None].expand_as(self._scores[l]) for l in layers]
        scores = method.finish([self._scores[l] for l in layers], positions, features)
        for l, s in zip(layers, scores):
            keep = top_entries(s, method.layer_budget(l, len(layers), t, method.budget * t))  # (Hkv, n_keep)
            keep_entries(self._caches[l], l, keep)  # on the layer's own device

    def _on_layer(self, layer: int, h: torch.Tensor) -> None:
        """Decoder layer ``layer``'s output ``(T, Dm)``."""

    def _on_final(self, model: Any, normed: torch.Tensor) -> None:
        """The final norm's output ``(1, T, Dm)``: after the last layer."""

    def _more_hooks(self, model: Any) -> list[Any]:
        """Further hook handles a press needs while applied."""
        return []

    @contextmanager
    def __call__(self, model: Any) -> Generator:
        self._reset()
        self._model, self._n_layers = model, anatomy.n_layers(model)
        handles = []
        try:
            with super().__call__(model):
                handles += self._more_hooks(model)
                for l, layer in enumerate(anatomy.decoder_layers(model)):
                    handles.append(
                        layer.register_forward_hook(
                            lambda _m, _i, out, l=l: self._on_layer(l, (out[0] if isinstance(out, tuple) else out)[0])
                        )
                    )
                norm = anatomy.base_model(model).norm
                handles.append(norm.register_forward_hook(lambda _m, _i, out: self._on_final(model, out)))
                yield
        finally:
            for h in handles:
                h.remove()
            self._reset()


@dataclass
class InfoKVPress(_PrefillCut):
    """kvpress-style InfoKV; ``compression_ratio`` = 1 - budget, ``infokv`` its
    hyperparameters (its ``budget`` is replaced by ``1 - compression_ratio``)."""

    infokv: InfoKV = field(default_factory=InfoKV)

    def _reset(self) -> None:
        super()._reset()
        self._rep: RepChange | None = None

    @property
    def method(self) -> InfoKV:
        from dataclasses import replace

        return replace(self.infokv, budget=1.0 - self.compression_ratio)

    def forward_hook(self, module: Any, input: Any, kwargs: dict, output: Any) -> Any:
        call = attention_call(module, kwargs)
        t = call.hidden.shape[1]
        if self.compression_ratio == 0 or not call.prefill:
            return output
        keys, values = cache_layers(call.cache)[module.layer_idx]  # (1, Hkv, T, D)
        w = min(self.infokv.window, t)
        q = anatomy.prerope_queries(module, call.hidden[0, -w:])  # (Hq, w, D)
        q = apply_rope(q, call.cos[-w:], call.sin[-w:])  # (Hq, w, D) after RoPE
        method = self.method
        self._scores[module.layer_idx] = method.layer_scores(self._view(method, module, keys, values, q))  # sinks +inf
        self._caches[module.layer_idx] = call.cache
        return output

    def _on_layer(self, layer: int, h: torch.Tensor) -> None:
        """InfoKV's representation change (every layer's; :meth:`InfoKV.finish` reads the ones ``rep`` asks for)."""
        if not self._scores:
            return
        if self._rep is None:
            self._rep = RepChange(self._n_layers, h.shape[0], self.infokv.early_layer)
        self._rep(layer, h)

    def _on_final(self, model: Any, normed: torch.Tensor) -> None:
        """After the last layer of a prefill: entropies, InfoKV's scores, the cut."""
        if not self._scores:
            return
        method = self.method
        h = normed[0]  # (T, Dm)
        t = h.shape[0]
        ent = torch.empty(t)
        for c0, lg in logit_chunks(model, h, defaults_for(h.device).entropy_logit_bytes):  # (n, V) float32
            ent[c0 : c0 + lg.shape[0]] = entropy(lg, topk=method.topk).cpu()
        ent_in = torch.cat([torch.zeros(1), ent[:-1]])  # what predicted each token
        rep = self._rep.values if self._rep is not None else torch.ones(len(self._scores), t)
        self._cut(method, t, TokenFeatures(ent_in, rep))
        self._reset()


@dataclass
class DistilledPress(_PrefillCut):
    """kvpress-style distilled compressor; ``compression_ratio`` = 1 - budget, ``distilled`` its
    settings and model (its ``budget`` is replaced by ``1 - compression_ratio``)."""

    distilled: Distilled = field(default_factory=Distilled)

    def _reset(self) -> None:
        super()._reset()
        self._collector: Any = None
        self._ids: torch.Tensor | None = None

    @property
    def method(self) -> Distilled:
        from dataclasses import replace

        return replace(self.distilled, budget=1.0 - self.compression_ratio)

    def forward_hook(self, module: Any, input: Any, kwargs: dict, output: Any) -> Any:
        call = attention_call(module, kwargs)
        if self.compression_ratio == 0 or not call.prefill or self._ids is None:
            return output
        t, layer, method = call.hidden.shape[1], module.layer_idx, self.method
        if self._collector is None:
            self._collector = measured_signals(self._model, t, method.needs().signals)
        keys, values = cache_layers(call.cache)[layer]  # (1, Hkv, T, D)
        q = apply_rope(anatomy.prerope_queries(module, call.hidden[0]), call.cos, call.sin)  # (Hq, T, D)
        self._collector.on_tap(_Tap(layer, q, keys[0], module.scaling))
        w = max(1, method.needs().recent_queries)
        self._scores[layer] = method.layer_scores(self._view(method, module, keys, values, q[:, -w:]))
        self._caches[layer] = call.cache
        return output

    def _on_layer(self, layer: int, h: torch.Tensor) -> None:
        if self._collector is not None:
            self._collector.on_layer(layer, h)

    def _on_final(self, model: Any, normed: torch.Tensor) -> None:
        """After the last layer of a prefill: the signals at its end, the scores, the cut."""
        if self._collector is None:
            return
        h = normed[0]  # (T, Dm)
        self._collector.feed_logits(h, self._ids)
        t = h.shape[0]
        features = TokenFeatures(torch.zeros(0), torch.zeros(0), signals=self._collector.values(), tau=t)
        self._cut(self.method, t, features)
        self._reset()

    def _more_hooks(self, model: Any) -> list[Any]:
        """The input ids (surprisal reads them), from the embedding's input."""

        def take_ids(_m: Any, args: tuple) -> None:
            self._ids = args[0][0] if args and args[0] is not None and args[0].dim() == 2 else None

        return [anatomy.base_model(model).embed_tokens.register_forward_pre_hook(take_ids)]


@dataclass
class _Tap:
    """What the signal collector reads of one layer's attention (an ``AttentionTap``'s fields)."""

    layer: int
    query: torch.Tensor
    key: torch.Tensor
    scaling: float
