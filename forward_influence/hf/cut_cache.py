"""A transformers ``Cache`` over a cut KV store, so ``model.generate`` decodes with a compressor.

A compressor keeps, per layer, some entries at scattered absolute positions,
and the layers may keep different numbers of them (PyramidKV). Transformers'
own caches and masks assume one contiguous length; :class:`CutCache` is built
on the public ``Cache`` / ``DynamicLayer`` API instead and hands attention to
:mod:`forward_influence.hf.attention`:

* ``get_seq_length`` is the number of tokens *seen* (the store's ``length``),
  so ``generate`` feeds only the uncached tokens and the model applies RoPE at
  their true absolute positions (keys are stored after RoPE);
* ``update`` keeps nothing and returns the block's own keys/values: the
  registered attention function (mode ``record`` for the first block,
  ``ablate`` with ``prefix`` = the kept entries afterwards, exactly the forwards
  of :func:`forward_influence.hf.forwards.record_prefill` and
  :func:`~forward_influence.hf.forwards.continue_forward`) attends over the kept
  entries of each layer whatever their number, and ignores transformers' mask;
* after every forward of the model, the store gets the block's new K/V and
  final hidden states (:meth:`BlockStore.end_block`) and may cut itself.

:func:`decode_with` installs this for the duration of a ``with`` block: a
forward pre-hook on the model swaps the cache ``generate`` made (an empty one)
for the :class:`CutCache`, or checks the one passed in, and routes attention;
a forward hook hands the block to the store. Supported: transformers 5.2 – 5.x
(the forward keyword ``past_key_values`` is ``cache`` from 5.24; both read).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch

from forward_influence.hf import anatomy
from forward_influence.hf.attention import AblateMode, AblationBatch, AttentionTap, RecordMode, attention_mode
from forward_influence.hf.cache_api import cache_kwarg  # noqa: F401  (re-exported: decoding names the argument)
from forward_influence.hf.forwards import forward_hooks

CACHE_KWARGS = ("cache", "past_key_values")  # transformers >= 5.24, < 5.24


class BlockCallbacks(Protocol):
    """What a store wants to see of one forward: per-layer taps, decoder-layer outputs, attention inputs."""

    on_tap: Callable[[AttentionTap], None] | None
    layer_hooks: Callable[[int, torch.Tensor], None] | None
    attn_inputs: bool


class BlockStore(Protocol):
    """The cut cache's contents (:class:`forward_influence.compress.CompressedCache` is one).

    Attributes
    ----------
    length : int
        Tokens seen: the absolute position of the next token.
    kv : list of (K, V)
        Per layer ``(1, Hkv, n_l, D)`` kept entries, keys after RoPE (empty before the first block).
    """

    length: int
    kv: list[tuple[torch.Tensor, torch.Tensor]]

    def begin_block(self, ids: torch.Tensor) -> Any:
        """Callbacks (``on_tap``, ``layer_hooks``, ``attn_inputs``) for a forward of the tokens ``ids`` ``(C,)``."""

    def end_block(self, kv: list[tuple[torch.Tensor, torch.Tensor]], hidden: torch.Tensor, callbacks: Any) -> None:
        """The block's own K/V per layer ``(1, Hkv, C, D)`` and final hidden states ``(C, Dm)``."""


@functools.cache
def _layer_class() -> type:
    """``CutLayer``, made on first use (transformers is imported lazily)."""
    from transformers.cache_utils import DynamicLayer

    class CutLayer(DynamicLayer):
        """One layer of a :class:`CutCache`: reads the store, stores nothing itself."""

        is_sliding = False
        is_croppable = False

        def __init__(self, store: BlockStore, layer: int):
            super().__init__()
            self.store, self.layer = store, layer

        @property
        def is_initialized(self) -> bool:  # type: ignore[override]
            return bool(self.store.kv)

        @is_initialized.setter
        def is_initialized(self, value: bool) -> None:  # set by the base __init__; the store decides
            pass

        @property
        def keys(self) -> torch.Tensor | None:  # type: ignore[override]
            return self.store.kv[self.layer][0] if self.store.kv else None

        @keys.setter
        def keys(self, value: Any) -> None:
            if value is not None:
                raise RuntimeError("a CutCache layer is written by its store, not by transformers")

        @property
        def values(self) -> torch.Tensor | None:  # type: ignore[override]
            return self.store.kv[self.layer][1] if self.store.kv else None

        @values.setter
        def values(self, value: Any) -> None:
            if value is not None:
                raise RuntimeError("a CutCache layer is written by its store, not by transformers")

        def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
            pass

        def update(
            self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
        ) -> tuple[torch.Tensor, torch.Tensor]:
            return key_states, value_states  # the block's own: hf.attention reads the kept entries from the store

        def get_seq_length(self) -> int:
            return int(self.store.length)

        def get_mask_sizes(self, query_length: int, *args: Any) -> tuple[int, int]:
            return int(self.store.length) + query_length, 0

        def reset(self) -> None:
            raise NotImplementedError("a CutCache cannot be reset; start a new one")

        def crop(self, tokens_to_remove: int) -> None:
            raise NotImplementedError("a CutCache cannot be cropped")

        def reorder_cache(self, beam_idx: torch.Tensor) -> None:
            raise NotImplementedError("a CutCache holds one sequence (no beam search)")

        batch_repeat_interleave = batch_select_indices = reorder_cache

    return CutLayer


@functools.cache
def _cache_class() -> type:
    """``CutCache``, made on first use."""
    from transformers.cache_utils import Cache

    class CutCache(Cache):
        """A ``transformers.Cache`` whose layers are views of a :class:`BlockStore`."""

        def __init__(self, store: BlockStore, n_layers: int):
            super().__init__(layers=[_layer_class()(store, l) for l in range(n_layers)])
            self.store = store

        def get_seq_length(self, layer_idx: int = 0) -> int:
            return int(self.store.length)

        def get_mask_sizes(self, query_length: Any, layer_idx: int = 0) -> tuple[int, int]:
            q = (
                query_length.shape[0] if isinstance(query_length, torch.Tensor) else int(query_length)
            )  # 5.2: cache_position
            return int(self.store.length) + q, 0

    return CutCache


def cut_cache(model: Any, store: BlockStore) -> Any:
    """A ``transformers.Cache`` (a ``CutCache``) over ``store``, for ``model.generate(..., cache=...)``."""
    return _cache_class()(store, anatomy.n_layers(model))


def _block_mode(model: Any, store: BlockStore, callbacks: Any) -> RecordMode | AblateMode:
    """The attention mode of the next forward: recording on an empty store, else a one-row ablation
    (nothing hidden) over its entries."""
    if not store.kv:
        return RecordMode(on_tap=callbacks.on_tap)
    batch = AblationBatch(
        positions=[()],
        select=torch.zeros(1, anatomy.n_layers(model), anatomy.n_kv_heads(model), dtype=torch.bool),
        tau=torch.tensor([store.length]),
    )
    return AblateMode(prefix=store.kv, start=store.length, batch=batch, on_tap=callbacks.on_tap, record_block=True)


@contextlib.contextmanager
def decode_with(model: Any, store: BlockStore) -> Iterator[Any]:
    """Route every forward of ``model`` in the block through ``store``; yields its ``CutCache``.

    Inside, ``model.generate(...)`` (or :func:`forward_influence.hf.generation.generate`)
    decodes over the store: the cache ``generate`` made itself (empty) is
    replaced by the ``CutCache`` when the store is empty too; a store that
    already holds tokens needs the ``CutCache`` passed in
    (``**{cache_kwarg(model): cache}``) and ``input_ids`` that include them.
    Batch 1 only. Hooks and the attention implementation are restored on exit.
    """
    cache = cut_cache(model, store)
    base = anatomy.base_model(model)
    state: dict[str, Any] = {}

    def pre(_m: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        name = next((k for k in CACHE_KWARGS if kwargs.get(k) is not None), cache_kwarg(model))
        given = kwargs.get(name)
        if given is not cache:
            if given is not None and given.get_seq_length() > 0 or store.length > 0:
                raise RuntimeError("decode_with: pass the CutCache it yields (it already holds tokens) to generate")
            kwargs = {**kwargs, name: cache}
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None or ids.shape[0] != 1:
            raise ValueError("decode_with: one sequence of input_ids (batch 1)")
        callbacks = store.begin_block(ids[0])
        mode = _block_mode(model, store, callbacks)
        stack = contextlib.ExitStack()
        stack.enter_context(forward_hooks(model, mode, callbacks.layer_hooks, callbacks.attn_inputs))
        stack.enter_context(attention_mode(model, mode))
        state.update(stack=stack, mode=mode, callbacks=callbacks)
        return args, kwargs

    def on_hidden(_m: Any, _args: Any, out: Any) -> None:
        state["hidden"] = out.last_hidden_state[0]  # (C, Dm)

    def post(_m: Any, _args: Any, _out: Any) -> None:
        mode = state.pop("mode")
        state.pop("stack").close()
        kv = [(mode.keys[l], mode.values[l]) for l in range(anatomy.n_layers(model))]
        store.end_block(kv, state.pop("hidden"), state.pop("callbacks"))

    handles = [
        model.register_forward_pre_hook(pre, with_kwargs=True),
        base.register_forward_hook(on_hidden),
        model.register_forward_hook(post),
    ]
    try:
        yield cache
    finally:
        for h in handles:
            h.remove()
        if "stack" in state:  # a forward raised: its routing is undone here
            state.pop("stack").close()
        state.clear()


__all__ = ["BlockStore", "cache_kwarg", "cut_cache", "decode_with"]
