"""Per-token signals against explicit eager computations (tier 1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as Fn
from conftest import tiny_model

from forward_influence.hf import forwards
from forward_influence.measurement.collector import SignalCollector, SignalConfig
from forward_influence.measurement.kl import entropy

REL_TOL = 1e-4
T = 40


@pytest.fixture
def ids():
    return torch.randint(0, 96, (T,), generator=torch.Generator().manual_seed(3))


def collect(model, ids, **kw):
    cfg = SignalConfig(words=False, **kw)
    col = SignalCollector(model, T, cfg)
    pre = forwards.record_prefill(model, ids, on_tap=col.on_tap, layer_hooks=col.on_layer)
    return col, pre


def per_layer(col, name):
    """A registered signal's per-layer values: (splits, L, Hkv, T) for attention, (L, Hkv, T) key norms, (L, T) r_l."""
    s = col.signal(name)
    return s.rep if name == "rep_change" else s.per_layer


def logit_values(col, hidden, ids):
    col.feed_logits(hidden, ids)
    return col.values()


def eager_outputs(arch, ids):
    model = tiny_model(arch, attn="eager")
    with torch.no_grad():
        out = model(ids[None], output_attentions=True, output_hidden_states=True)
    return model, out


@pytest.mark.parametrize("splits", [(30,), (20, 30)])
def test_split_signals_equal_sums_over_eager_attention(arch, ids, splits):
    """Per split N: H2O = mean attention from the queries < N; SnapKV = the
    last ``window`` queries before N, pooled; nothing at or after N."""
    model, out = eager_outputs(arch, ids)
    w, kernel = 6, 5
    col, _ = collect(model, ids, window=w, splits=splits, kernel=kernel)
    g = model.config.num_attention_heads // model.config.num_key_value_heads
    for s, n in enumerate(splits):
        for layer, att in enumerate(out.attentions):
            a = att[0].double()  # (Hq, T, T) eager attention probabilities
            seen = torch.arange(n, 0, -1, dtype=torch.float64)
            h2o = (a[:, :n, :n].sum(1) / seen).view(-1, g, n).mean(1)  # (Hkv, N)
            np.testing.assert_allclose(
                per_layer(col, "attn_h2o")[s, layer, :, :n].numpy(), h2o.numpy(), rtol=REL_TOL, atol=1e-9
            )
            mean = a[:, n - w : n, :n].mean(1)  # (Hq, N): causal rows, keys < N
            pooled = Fn.avg_pool1d(mean[None].float(), kernel, padding=kernel // 2, stride=1)[0].double()
            snap = pooled.view(-1, g, n).mean(1)  # (Hkv, N), the window's own keys scored like the rest
            np.testing.assert_allclose(
                per_layer(col, "attn_snapkv")[s, layer, :, :n].numpy(), snap.numpy(), rtol=REL_TOL, atol=1e-9
            )
            assert (
                torch.isnan(per_layer(col, "attn_snapkv")[s, layer, :, n:]).all()
                and torch.isnan(per_layer(col, "attn_h2o")[s, layer, :, n:]).all()
            )


def test_sliding_signals_read_only_the_observation_window(arch, ids):
    """Source i, delay D: H2O = mean attention from queries [i, i + D); SnapKV =
    their mean attention over keys i - h .. i + h (zero outside), / kernel."""
    model, out = eager_outputs(arch, ids)
    d, kernel = 7, 5
    h = kernel // 2
    col, _ = collect(model, ids, delay=d, kernel=kernel)
    g = model.config.num_attention_heads // model.config.num_key_value_heads
    n = T - d + 1
    for layer, att in enumerate(out.attentions):
        a = att[0].double()  # (Hq, T, T)
        padded = Fn.pad(a, (h, h))  # keys -h .. T-1+h
        h2o = torch.stack([a[:, i : i + d, i].mean(1) for i in range(n)], 1)  # (Hq, n)
        snap = torch.stack([padded[:, i : i + d, i : i + kernel].sum((1, 2)) / (d * kernel) for i in range(n)], 1)
        np.testing.assert_allclose(
            per_layer(col, "attn_h2o")[0, layer, :, :n].numpy(),
            h2o.view(-1, g, n).mean(1).numpy(),
            rtol=REL_TOL,
            atol=1e-9,
        )
        np.testing.assert_allclose(
            per_layer(col, "attn_snapkv")[0, layer, :, :n].numpy(),
            snap.view(-1, g, n).mean(1).numpy(),
            rtol=REL_TOL,
            atol=1e-9,
        )
        assert torch.isnan(per_layer(col, "attn_snapkv")[0, layer, :, n:]).all()


def test_rep_change_equals_one_minus_cos_of_hidden_states(ids):
    """Per layer: InfoKV's term (1 at and below l0); rep_change: l0 -> last layer."""
    model, out = eager_outputs("llama", ids)
    l0 = 1
    col, _ = collect(model, ids, rep_layer=l0)
    hs = out.hidden_states  # embeddings, then layer outputs
    for layer in range(model.config.num_hidden_layers - 1):  # HF's last entry has the final norm applied
        want = 1 - Fn.cosine_similarity(hs[l0 + 1][0], hs[layer + 1][0], dim=-1) if layer > l0 else torch.ones(T)
        np.testing.assert_allclose(
            per_layer(col, "rep_change")[layer].numpy(), want.double().numpy(), rtol=1e-4, atol=1e-6
        )
    np.testing.assert_array_equal(col.values()["rep_change"], per_layer(col, "rep_change")[-1].numpy())
    assert (col.values()["rep_change"] > 1e-4).all()  # the last layer moved every token


@pytest.mark.parametrize("l0", [1, 2])
def test_signals_and_compressor_share_the_representation_change(ids, l0):
    """Issue 16: one rule for r_l (1 at and below l0) in the signals and in
    InfoKV's cache, and ``rep_change`` is the last row, also when the last
    layer is l0 itself (the 3-layer model with l0 = 2: the row is all 1)."""
    from forward_influence.compress import InfoKV, compress_prompt

    model = tiny_model()
    col, _ = collect(model, ids, rep_layer=l0)
    cache, _ = compress_prompt(model, ids, InfoKV(budget=0.5, early_layer=l0, window=4, kernel=3))
    np.testing.assert_array_equal(per_layer(col, "rep_change").float().numpy(), cache.rep.numpy())
    np.testing.assert_array_equal(col.values()["rep_change"], per_layer(col, "rep_change")[-1].numpy())
    assert (per_layer(col, "rep_change")[: l0 + 1] == 1).all()
    if l0 == model.config.num_hidden_layers - 1:
        assert (col.values()["rep_change"] == 1).all()


def test_logit_signals_match_full_logits(ids):
    model = tiny_model()
    col, pre = collect(model, ids, topk=5)
    sig = logit_values(col, pre.hidden, ids)
    with torch.no_grad():
        logits = model(ids[None]).logits[0].float()
    h = entropy(logits).numpy()
    hk = entropy(logits, topk=5).numpy()
    lp = torch.log_softmax(logits, -1)
    surpr = -lp[torch.arange(T - 1), ids[1:]].numpy()
    np.testing.assert_allclose(sig["entropy_out"], h, rtol=1e-5)
    np.testing.assert_allclose(sig["entropy_in"][1:], h[:-1], rtol=1e-5)
    np.testing.assert_allclose(sig["entropy_in_topk"][1:], hk[:-1], rtol=1e-5)
    np.testing.assert_allclose(sig["surprisal"][1:], surpr, rtol=1e-5)
    assert np.isnan(sig["entropy_in"][0]) and np.isnan(sig["surprisal"][0])


@pytest.mark.parametrize("mode", [{"splits": (17, 33)}, {"delay": 5}], ids=["split", "sliding"])
def test_streaming_equals_unchunked(ids, mode):
    model = tiny_model()
    small, pre_s = collect(model, ids, chunk_bytes=4096, **mode)  # forces many query / row chunks
    big, pre_b = collect(model, ids, chunk_bytes=1 << 30, **mode)
    for name in ("attn_h2o", "attn_snapkv", "key_norm", "rep_change"):
        np.testing.assert_allclose(
            per_layer(small, name).numpy(), per_layer(big, name).numpy(), rtol=1e-6, atol=1e-12, equal_nan=True
        )
    a = logit_values(small, pre_s.hidden, ids)
    b = logit_values(big, pre_b.hidden, ids)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6, equal_nan=True)


def test_key_norm(ids):
    model = tiny_model()
    col, pre = collect(model, ids)
    for layer, (k, _) in enumerate(pre.kv):
        np.testing.assert_allclose(
            per_layer(col, "key_norm")[layer].numpy(), k[0].norm(dim=-1).double().numpy(), rtol=1e-6
        )


def test_key_norm_relative_against_explicit_norms(ids):
    """The registered example signal: each key's norm over the mean norm of the 16 keys before it."""
    model = tiny_model()
    col, pre = collect(model, ids)
    got = per_layer(col, "key_norm_rel")
    for layer, (k, _) in enumerate(pre.kv):
        norms = k[0].norm(dim=-1).double()  # (Hkv, T)
        for i in (1, 5, 16, 30):
            want = norms[:, i] / norms[:, max(0, i - 16) : i].mean(1)
            np.testing.assert_allclose(got[layer, :, i].numpy(), want.numpy(), rtol=1e-6)
        assert torch.isnan(got[layer, :, 0]).all()
    col.feed_logits(pre.hidden, ids)
    assert np.isfinite(col.values()["key_norm_rel"][1:]).all()


def test_only_computes_the_named_signals_and_their_inputs_with_the_same_values(ids):
    """``SignalConfig.only`` (what a distilled compressor reads): those signals and the ones they derive
    from, nothing else, with values equal to the full collector's."""
    from forward_influence.measurement.signal_registry import REGISTRY, with_inputs

    model = tiny_model("llama")
    full, pre = collect(model, ids, splits=(30,))
    every = logit_values(full, pre.hidden, ids)
    derived = next(n for n, c in REGISTRY.items() if c.inputs)  # a signal computed from others
    part, pre2 = collect(model, ids, splits=(30,), only=("attn_snapkv", derived))
    some = logit_values(part, pre2.hidden, ids)
    assert list(some) == with_inputs(("attn_snapkv", derived))
    assert set(REGISTRY[derived].inputs) <= set(some) and "attn_h2o" not in some
    for name, v in some.items():
        np.testing.assert_allclose(v, every[name], rtol=REL_TOL, equal_nan=True)
    with pytest.raises(ValueError, match=r"unknown signals \['h2o'\]"):
        SignalCollector(model, T, SignalConfig(words=False, only=("h2o",)))


@pytest.mark.parametrize("cuts", [(25,), (20, 21, 33)], ids=["two-blocks", "four-blocks-with-one-token"])
def test_token_signals_of_continued_blocks_equal_those_over_the_whole_sequence(ids, cuts):
    """A decoding cache runs one collector per block (``after=`` the previous block's carry): every
    token signal (those shifted by a token, surprisal, the relative key norm's window) equals its value
    over the whole sequence."""
    from forward_influence.measurement.collector import REGISTRY
    from forward_influence.store.schema import TOKEN

    model = tiny_model("llama")
    tokens = tuple(n for n, c in REGISTRY.items() if c.spec.kind == TOKEN)
    full, pre = collect(model, ids, only=tokens)
    want = logit_values(full, pre.hidden, ids)
    got: dict[str, list[np.ndarray]] = {n: [] for n in want}
    kv, after = [], None
    for a, b in zip((0, *cuts), (*cuts, T)):
        block = ids[a:b]
        col = SignalCollector(model, b - a, SignalConfig(words=False, only=tokens), after=after)
        if a == 0:
            out = forwards.record_prefill(model, block, on_tap=col.on_tap, layer_hooks=col.on_layer)
        else:
            out = forwards.continue_forward(model, kv, block, a, on_tap=col.on_tap, layer_hooks=col.on_layer)
        kv = (
            out.kv
            if a == 0
            else [(torch.cat([k0, k], 2), torch.cat([v0, v], 2)) for (k0, v0), (k, v) in zip(kv, out.kv)]
        )
        for n, v in logit_values(col, out.hidden, block).items():
            got[n].append(v)
        after = col.carry()
    for n, v in want.items():
        np.testing.assert_allclose(np.concatenate(got[n]), v, rtol=REL_TOL, atol=1e-6, equal_nan=True, err_msg=n)
