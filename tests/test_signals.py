"""Per-token signals against explicit eager computations (tier 1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as Fn

from conftest import tiny_model
from forward_influence import plumbing
from forward_influence.kl import entropy
from forward_influence.signals import SignalCollector, SignalConfig

REL_TOL = 1e-4
T = 40


@pytest.fixture
def ids():
    return torch.randint(0, 96, (T,), generator=torch.Generator().manual_seed(3))


def collect(model, ids, **kw):
    cfg = SignalConfig(words=False, **kw)
    col = SignalCollector(model, T, cfg)
    pre = plumbing.record_prefill(model, ids, col.on_attention, col.on_layer)
    return col, pre


def eager_outputs(arch, ids):
    model = tiny_model(arch, attn="eager")
    with torch.no_grad():
        out = model(ids[None], output_attentions=True, output_hidden_states=True)
    return model, out


def test_h2o_and_snapkv_equal_sums_over_eager_attention(arch, ids):
    model, out = eager_outputs(arch, ids)
    w, snap_end, kernel = 6, 30, 5
    col, _ = collect(model, ids, window=w, snap_end=snap_end, kernel=kernel)
    g = model.config.num_attention_heads // model.config.num_key_value_heads
    for layer, att in enumerate(out.attentions):
        a = att[0].double()  # (Hq, T, T) eager attention probabilities
        seen = torch.arange(T, 0, -1, dtype=torch.float64)
        h2o = (a.sum(1) / seen).view(-1, g, T).mean(1)  # (Hkv, T)
        np.testing.assert_allclose(col.h2o[layer].numpy(), h2o.numpy(), rtol=REL_TOL, atol=1e-9)
        # SnapKV: window queries attend over keys < snap_end, causal
        q0 = snap_end - w
        sub = torch.softmax(torch.log(a[:, q0:snap_end, :snap_end].clamp_min(1e-300)), -1)  # renormalise over keys < snap_end
        mean = sub.mean(1)  # (Hq, snap_end)
        pooled = Fn.avg_pool1d(mean[None, :, :q0].float(), kernel, padding=kernel // 2, stride=1)[0].double()
        snap = pooled.view(-1, g, q0).mean(1)  # (Hkv, q0)
        np.testing.assert_allclose(col.snap[layer, :, :q0].numpy(), snap.numpy(), rtol=REL_TOL, atol=1e-9)
        assert torch.isnan(col.snap[layer, :, snap_end:]).all()
        np.testing.assert_allclose(col.snap[layer, :, q0:snap_end].numpy(), snap.max(1, keepdim=True).values.expand(-1, w).numpy(), rtol=REL_TOL)


def test_rep_change_equals_one_minus_cos_of_hidden_states(ids):
    model, out = eager_outputs("llama", ids)
    l0 = 1
    col, _ = collect(model, ids, rep_layer=l0)
    hs = out.hidden_states  # embeddings, then layer outputs
    for layer in range(model.config.num_hidden_layers - 1):  # HF's last entry has the final norm applied
        want = 1 - Fn.cosine_similarity(hs[l0 + 1][0], hs[layer + 1][0], dim=-1)
        np.testing.assert_allclose(col.rep[layer].numpy(), want.double().numpy(), rtol=1e-4, atol=1e-6)
    assert np.allclose(col.rep[l0].numpy(), 0, atol=1e-6)


def test_logit_signals_match_full_logits(ids):
    model = tiny_model()
    col, pre = collect(model, ids, topk=5)
    sig = col.logit_signals(pre.hidden, ids)
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


def test_streaming_equals_unchunked(ids):
    model = tiny_model()
    small, pre_s = collect(model, ids, chunk_bytes=4096)  # forces many query / row chunks
    big, pre_b = collect(model, ids, chunk_bytes=1 << 30)
    for name in ("h2o", "snap", "knorm", "rep"):
        np.testing.assert_allclose(getattr(small, name).numpy(), getattr(big, name).numpy(), rtol=1e-6, atol=1e-12, equal_nan=True)
    a = small.logit_signals(pre_s.hidden, ids)
    b = big.logit_signals(pre_b.hidden, ids)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6, equal_nan=True)


def test_key_norm(ids):
    model = tiny_model()
    col, pre = collect(model, ids)
    for layer, (k, _) in enumerate(pre.kv):
        np.testing.assert_allclose(col.knorm[layer].numpy(), k[0].norm(dim=-1).double().numpy(), rtol=1e-6)
