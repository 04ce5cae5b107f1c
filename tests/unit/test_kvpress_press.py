"""InfoKV as a kvpress press (forward_influence.integrations.kvpress) run for real on tiny models,
with a stand-in for kvpress's ``BasePress`` (kvpress itself pins another transformers and lives in
its own venv: scripts/crosscheck_kvpress.py). The stand-in does what kvpress's base class does — a
forward hook with keyword arguments on every attention module while the press is applied — so the
press's own hooks (per-layer scores, representation change, the cut at the final norm) run, and the
cache it leaves must hold exactly the entries our InfoKV keeps (``compress_prompt``)."""

from __future__ import annotations

import contextlib
import importlib
import sys
import types
from dataclasses import dataclass

import pytest
import torch
from conftest import tiny_model

from forward_influence.compress import InfoKV, compress_prompt
from forward_influence.hf import anatomy
from forward_influence.hf.cache_api import cache_layers, prefill_cache


@dataclass
class StandInBasePress:
    """kvpress's BasePress contract: ``with press(model):`` hooks ``forward_hook`` on every attention module."""

    @contextlib.contextmanager
    def __call__(self, model):
        handles = [
            layer.self_attn.register_forward_hook(self.forward_hook, with_kwargs=True)
            for layer in anatomy.decoder_layers(model)
        ]
        try:
            yield
        finally:
            for h in handles:
                h.remove()


@pytest.fixture
def press_module(monkeypatch):
    """forward_influence.integrations.kvpress imported over the stand-in kvpress package."""
    base = types.ModuleType("kvpress.presses.base_press")
    base.BasePress = StandInBasePress
    for name, mod in (
        ("kvpress", types.ModuleType("kvpress")),
        ("kvpress.presses", types.ModuleType("kvpress.presses")),
        ("kvpress.presses.base_press", base),
    ):
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.delitem(sys.modules, "forward_influence.integrations.kvpress", raising=False)
    mod = importlib.import_module("forward_influence.integrations.kvpress")
    yield mod
    sys.modules.pop("forward_influence.integrations.kvpress", None)


@pytest.mark.parametrize("rep", ["per_layer", "early_final"])
@pytest.mark.parametrize("budget", [0.5, 0.25])
def test_press_keeps_what_infokv_keeps(press_module, arch, rep, budget):
    model = tiny_model(arch)
    ids = torch.randint(0, 96, (48,), generator=torch.Generator().manual_seed(1))
    infokv = InfoKV(window=8, kernel=3, early_layer=1, rep=rep, mix=0.3)
    press = press_module.InfoKVPress(compression_ratio=1 - budget, infokv=infokv)
    with press(model):
        cache = prefill_cache(model, ids)
    ours, _ = compress_prompt(model, ids, press.method)
    got = cache_layers(cache)
    assert len(got) == len(ours.kv)
    for layer, ((k, v), (k2, v2)) in enumerate(zip(got, ours.kv)):
        assert k.shape == k2.shape, (layer, k.shape, k2.shape)
        torch.testing.assert_close(k, k2, rtol=0, atol=1e-6)
        torch.testing.assert_close(v, v2, rtol=0, atol=1e-6)
    assert 0 < ours.sizes()[0] < len(ids)  # a real cut


def test_press_without_compression_leaves_the_cache(press_module):
    model = tiny_model()
    ids = torch.randint(0, 96, (24,), generator=torch.Generator().manual_seed(2))
    with press_module.InfoKVPress(compression_ratio=0.0)(model):
        cache = prefill_cache(model, ids)
    assert all(k.shape[2] == 24 for k, _ in cache_layers(cache))


def test_press_refuses_a_bad_ratio(press_module):
    with pytest.raises(ValueError, match="compression_ratio must be in"):
        press_module.InfoKVPress(compression_ratio=1.0)


def test_without_kvpress_the_import_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "kvpress", None)  # import raises ImportError
    monkeypatch.delitem(sys.modules, "forward_influence.integrations.kvpress", raising=False)
    with pytest.raises(ImportError, match="needs NVIDIA kvpress"):
        importlib.import_module("forward_influence.integrations.kvpress")
    sys.modules.pop("forward_influence.integrations.kvpress", None)


@pytest.mark.parametrize("head_mix", [0.0, 0.5])
@pytest.mark.parametrize("budget", [0.5, 0.25])
def test_distilled_press_keeps_what_the_distilled_compressor_keeps(press_module, arch, budget, head_mix):
    """The press feeds the measurement's signal collector from kvpress's hooks; the cache it leaves
    holds exactly the entries compress_prompt's distilled cut keeps (features incl. attention and
    surprisal, which reads the input ids)."""
    import numpy as np

    from forward_influence.compress import get_compressor
    from forward_influence.scoring import Scorer

    names = ("entropy_in_topk", "surprisal", "attn_snapkv", "key_norm_rel", "age")
    scorer = Scorer(
        kind="linear",
        target="fi_far",
        features=[{"name": n, "transform": "unit_rank"} for n in names],
        weights=np.array([1.0, 0.7, 2.0, 0.4, -0.3]),
        signal_config={"topk": 10, "window": 8, "rep_layer": 1},
    )
    model = tiny_model(arch)
    ids = torch.randint(0, 96, (48,), generator=torch.Generator().manual_seed(1))
    press = press_module.DistilledPress(
        compression_ratio=1 - budget, distilled=get_compressor("distilled", scorer=scorer, head_mix=head_mix)
    )
    with press(model):
        cache = prefill_cache(model, ids)
    ours, _ = compress_prompt(model, ids, press.method)
    got = cache_layers(cache)
    for layer, ((k, v), (k2, v2)) in enumerate(zip(got, ours.kv)):
        assert k.shape == k2.shape, (layer, k.shape, k2.shape)
        torch.testing.assert_close(k, k2, rtol=0, atol=1e-6)
        torch.testing.assert_close(v, v2, rtol=0, atol=1e-6)
    assert 0 < ours.sizes()[0] < len(ids)
    with press_module.DistilledPress(compression_ratio=0.0, distilled=press.distilled)(model):
        assert all(k.shape[2] == 48 for k, _ in cache_layers(prefill_cache(model, ids)))
