"""Exactness of the ablation engine on tiny random models (tier 1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ABS_TOL_KL, FP32_PRECISION_FLOOR, REL_TOL_ENGINE, assert_checks, tiny_model

from forward_influence.hf import anatomy, cache_api, forwards, kernels
from forward_influence.measurement.engine import Ablation, ForwardInfluenceEngine
from forward_influence.measurement.kl import centred_kl
from forward_influence.measurement.reference import naive_split_kl
from forward_influence.tools import checks

N, F = checks.SPLIT_N, checks.SPLIT_F
rel_err = checks.rel_err


def reference_split(model, ids, n, f, i):
    """Independent: full forward with a 4-D mask hiding column i from rows >= n."""
    return checks.oracle_split_kl(model, ids, n, f, [i])[0]


def _emulated_efficient_attention(q, k, v, bias, compute_log_sumexp, dropout_p=0.0, is_causal=False, scale=None):
    """What ``aten._scaled_dot_product_efficient_attention`` computes, with the
    checks its CUDA kernel makes on the bias (full ``(B, H, M, N)`` sizes, the
    query's dtype, last dim contiguous, B/H/M strides in multiples of 8
    elements for 16-bit types and 4 for float32), its log-sum-exp padded to a
    multiple of 32 queries, and NaN for rows with every key masked."""
    b, h, m, _ = q.shape
    n = k.shape[2]
    align = 4 if q.dtype == torch.float32 else 8
    assert bias.shape == (b, h, m, n) and bias.dtype == q.dtype and bias.stride(-1) == 1
    assert all(s % align == 0 for s in bias.stride()[:3]), bias.stride()
    assert compute_log_sumexp and dropout_p == 0.0 and not is_causal
    s = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale + bias.float()  # (B, H, M, N)
    out = torch.matmul(torch.softmax(s, dim=-1), v.float()).to(q.dtype)  # NaN where a row is all -inf
    lse = torch.full((b, h, -(-m // 32) * 32), float("nan"))
    lse[..., :m] = torch.logsumexp(s, dim=-1)
    return out.transpose(1, 2).contiguous().transpose(1, 2), lse, torch.empty(()), torch.empty(())


@pytest.fixture
def emulated_cuda_kernel(monkeypatch):
    """The engine's fused path dispatching to the CUDA wrapper, with the emulated op."""
    import functools

    fused = functools.partial(kernels._lse_attention_cuda, op=_emulated_efficient_attention)
    monkeypatch.setattr(kernels, "lse_kernel", lambda query: fused)


def test_split_matches_full_forward_with_4d_mask(arch, ids):
    """Every position of the split, the precision floor below float32's bound, the noise floor ~0."""
    assert_checks(checks.check_split(tiny_model(arch), ids))


@pytest.mark.parametrize("delay", [1, 6])
def test_sliding_matches_full_forward_with_4d_mask(arch, ids, delay):
    """Sources to the end of the document; the source hidden from the queries from s + delay on."""
    sources = (*range(0, 30, 3), 48 - delay - checks.SLIDING_H)
    assert_checks(checks.check_sliding(tiny_model(arch), ids, sources=sources, delay=delay))


def test_sliding_delay_is_the_eviction_time(ids):
    """A wrong eviction time is caught: delay 6 is not delay 1 shifted."""
    model = tiny_model()
    eng = ForwardInfluenceEngine(model, batch_size=4)
    late, early = eng.sliding(ids, [5], 9, delay=6), eng.sliding(ids, [5], 14, delay=1).kl[0, 5:]
    assert (
        late.delay == 6 and rel_err(late.kl[0], early) > 1e-3
    )  # same queries scored; the source seen by 5 more of them
    with pytest.raises(ValueError, match="delay"):
        eng.sliding(ids, [40], 9, delay=6)  # 40 + 6 + 9 > 48


def test_null_ablation_is_zero(ids):
    assert_checks(checks.check_null_rows(tiny_model(), ids))


@pytest.mark.parametrize("bs", [1, 2, 7, 64])
def test_batched_equals_one_at_a_time(bs, ids):
    assert_checks(checks.check_batched_equals_single(tiny_model(), ids, batch_size=bs))


def test_layer_and_head_ablation_match_masked_attention(ids):
    """Hiding at one layer / one KV head equals doing it by hand (per query head) in eager attention."""
    assert_checks(checks.check_layer_head(tiny_model(attn="eager"), ids))


@pytest.mark.parametrize("kernel", ["flash", "matmul"])
def test_each_kv_head_ablation_matches_its_masked_query_group(kernel, arch, ids):
    """Every (layer, KV head) of the grouped tiny models (6 query / 2 KV heads):
    the engine's ``Ablation((5,), layers=(l,), kv_heads=(h,))`` equals eager
    attention masked by hand at query heads ``3h..3h+2`` only, within
    REL_TOL_ENGINE; the oracle has power: the other KV head's oracle, and an
    interleaved grouping (``h, h+2, h+4``), are both >= 100x the tolerance away.
    Both kernels: each applies the per-head selection in its own code."""
    got = {c.name: c for c in checks.check_kv_heads(tiny_model(arch, attn="eager"), ids, kernel=kernel)}
    assert set(got) == {
        "engine_kv_head",
        "engine_kv_head_ablated_rows_nonzero",
        "engine_kv_head_wrong_head_caught",
        "engine_kv_head_interleaved_grouping_caught",
    }
    assert_checks(list(got.values()))


def test_layer_and_head_ablations_differ_from_hiding_everywhere(ids):
    res = ForwardInfluenceEngine(tiny_model(), batch_size=4).split(
        ids, N, F, [Ablation((5,), layers=(1,)), Ablation((5,), layers=(1,), kv_heads=(0,)), Ablation((5,))]
    )
    layer1, head0, every = res.kl.sum(1)
    assert 0 < head0 and 0 < layer1
    assert not np.isclose(layer1, every) and not np.isclose(head0, layer1)


def test_wrong_positions_are_caught(ids):
    """The 4-D-mask comparison detects an engine that uses the wrong RoPE positions."""
    assert_checks(checks.check_wrong_position_caught(tiny_model(), ids))
    assert anatomy.position_ids(3, 2, 1, torch.device("cpu")).tolist() == [[3, 4]]  # restored


def test_prefix_cache_unchanged_after_run(ids):
    model = tiny_model()
    eng = ForwardInfluenceEngine(model, batch_size=4)
    pre = eng.prefill(ids)
    before = [(k.clone(), v.clone()) for k, v in pre.kv]
    eng.split(ids, N, F, [Ablation((i,)) for i in range(N)], prefill=pre)
    eng.sliding(ids, [3, 10, 20], 8, prefill=pre)
    for (k0, v0), (k1, v1) in zip(before, pre.kv):
        assert torch.equal(k0, k1) and torch.equal(v0, v1)


def test_prefill_kv_equals_hf_cache(ids):
    model = tiny_model()
    pre = forwards.record_prefill(model, ids[:N])
    cache = cache_api.prefill_cache(model, ids[:N])
    for (k0, v0), (k1, v1) in zip(pre.kv, cache_api.cache_layers(cache)):
        torch.testing.assert_close(k0, k1, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(v0, v1, rtol=1e-5, atol=1e-5)


def test_sdpa_and_eager_agree(ids):
    abl = [Ablation((i,)) for i in range(0, N, 3)]
    a = ForwardInfluenceEngine(tiny_model(attn="sdpa"), batch_size=4).split(ids, N, F, abl).kl
    b = ForwardInfluenceEngine(tiny_model(attn="eager"), batch_size=4).split(ids, N, F, abl).kl
    np.testing.assert_allclose(a, b, rtol=REL_TOL_ENGINE, atol=ABS_TOL_KL)


def test_naive_loop_agrees(ids):
    model = tiny_model()
    pos = [0, 7, 19]
    eng = ForwardInfluenceEngine(model, batch_size=2).split(ids, N, F, [Ablation((p,)) for p in pos]).kl
    naive = naive_split_kl(model, ids, N, F, pos)
    np.testing.assert_allclose(naive.sum(1), eng.sum(1), rtol=1e-3)


def test_attention_mode_restores_implementation(ids):
    model = tiny_model(attn="eager")
    ForwardInfluenceEngine(model, batch_size=2).split(ids, N, F, [Ablation((1,))])
    assert model.config._attn_implementation == "eager"


@pytest.mark.parametrize(
    "abl, match",
    [
        (Ablation((N,)), "out of range"),
        (Ablation((1,), layers=(9,)), "layers"),
        (Ablation((1,), kv_heads=(5,)), "kv_heads"),
    ],
    ids=["position", "layer", "head"],
)
def test_bad_ablations_rejected(abl, match, ids):
    with pytest.raises(ValueError, match=match):
        ForwardInfluenceEngine(tiny_model(), batch_size=2).split(ids, N, F, [abl])


@pytest.mark.parametrize("mode", ["split", "sliding"])
def test_flash_and_matmul_kernels_agree(mode, arch, ids):
    model = tiny_model(arch)
    assert checks.kernels(model) == ["flash", "matmul"]
    assert_checks(checks.check_kernels_agree(model, ids, mode))


def test_kl_from_logits_equals_kl_from_hidden_differences(ids, monkeypatch):
    """The W (h' - h) shortcut and the plain logit difference give the same KL."""
    model = tiny_model()
    abl = [Ablation((i,)) for i in range(0, N, 4)]
    fast = ForwardInfluenceEngine(model, batch_size=4).split(ids, N, F, abl).kl
    monkeypatch.setattr(anatomy, "lm_head_is_linear", lambda m: False)
    plain = ForwardInfluenceEngine(model, batch_size=4).split(ids, N, F, abl).kl
    np.testing.assert_allclose(fast, plain, rtol=REL_TOL_ENGINE, atol=ABS_TOL_KL)


@pytest.mark.parametrize("kernel", ["flash", "matmul"])
def test_ablation_hiding_the_whole_prefix(kernel, ids):
    """Every prefix entry hidden: the future sees only its own tokens (the fused
    kernel returns lse 0, not -inf, for a fully masked row)."""
    model = tiny_model()
    n = 3
    res = ForwardInfluenceEngine(model, batch_size=2, kernel=kernel).split(
        ids, n, F, [Ablation(tuple(range(n))), Ablation((1,))]
    )
    ref = cache_api.full_forward_hiding(model, ids[: n + F], None, n)
    for k, cols in enumerate([range(n), [1]]):
        abl = cache_api.full_forward_hiding(model, ids[: n + F], cols, n)
        assert rel_err(res.kl[k], centred_kl(ref[n:], abl[n:]).numpy()) < REL_TOL_ENGINE


@pytest.mark.parametrize("invariant", [True, False])
def test_shared_reference_only_when_batch_invariant(invariant, ids, monkeypatch):
    """Later batches reuse the first batch's null row exactly when the noise-floor
    check finds the lone and batched null rows bitwise equal (forced both ways
    here: on the tiny model they differ by ~1e-12); the KLs match a null row per
    batch and the independent forward either way."""
    model = tiny_model()
    abl = [Ablation((i,)) for i in range(N)]
    own = ForwardInfluenceEngine(model, batch_size=4, share_reference=False).split(ids, N, F, abl)
    assert not own.shared_reference
    eng = ForwardInfluenceEngine(model, batch_size=4)
    real = eng._null_floor
    monkeypatch.setattr(eng, "_null_floor", lambda *a: (real(*a)[0], invariant))
    res = eng.split(ids, N, F, abl)
    assert res.shared_reference is invariant
    np.testing.assert_allclose(res.kl, own.kl, rtol=REL_TOL_ENGINE, atol=ABS_TOL_KL)
    for i in (0, 13, N - 1):  # in the first, a middle and the last batch
        assert rel_err(res.kl[i], reference_split(model, ids, N, F, i)) < REL_TOL_ENGINE


def test_dither_moves_each_element_by_one_rounding_step():
    x = torch.randn(64, 48)
    for dtype in (torch.float32, torch.bfloat16):
        xd = x.to(dtype)
        y = forwards.dither_embeddings(xd)
        eps = torch.finfo(dtype).eps
        rel = (y.double() - xd.double()).abs() / xd.double().abs()
        assert float(rel.max()) <= 2 * eps  # one step (plus the product's rounding)
        assert float((y != xd).float().mean()) > 0.9  # and it does move (not rounded away)
        assert torch.equal(y, forwards.dither_embeddings(xd))  # deterministic


@pytest.mark.parametrize("mode", ["split", "sliding"])
def test_precision_floor_is_tiny_in_float32_and_leaves_rows_unchanged(mode, arch, ids):
    """The dithered row changes nothing else in its batch; in float32 its KL is
    rounding-sized (far below any ablation's), and taking an ablated row for it
    (a wrong-row mutation) would exceed the bound."""
    model = tiny_model(arch)
    on = ForwardInfluenceEngine(model, batch_size=4)
    off = ForwardInfluenceEngine(model, batch_size=4, precision_floor=False)
    if mode == "split":
        abl = [Ablation((i,)) for i in range(0, N, 3)]
        a, b = on.split(ids, N, F, abl), off.split(ids, N, F, abl)
        length = F
    else:
        a, b = on.sliding(ids, [0, 4, 9, 20], 7), off.sliding(ids, [0, 4, 9, 20], 7)
        length = 7
    np.testing.assert_allclose(a.kl, b.kl, rtol=REL_TOL_ENGINE, atol=ABS_TOL_KL)
    assert b.precision_floor is None
    assert a.precision_floor.shape == (length,)
    assert 0 <= a.precision_floor.min() and a.precision_floor.max() < FP32_PRECISION_FLOOR
    assert a.kl.max(1).min() > 1e3 * FP32_PRECISION_FLOOR  # every ablated row is far above it


def test_precision_floor_without_ablations(ids):
    res = ForwardInfluenceEngine(tiny_model(), batch_size=4).split(ids, N, F, [])
    assert res.kl.shape == (0, F) and res.precision_floor.shape == (F,)
    assert res.precision_floor.max() < FP32_PRECISION_FLOOR


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cuda_fused_path_matches_the_oracles(dtype, arch, emulated_cuda_kernel, ids):
    """Through the CUDA wrapper (aligned bias, sliced log-sum-exp): split and
    sliding = the 4-D-mask forward, layer/head ablation = masked eager attention;
    in bf16 within the measured precision floor of a float32 oracle."""
    model = tiny_model(arch, dtype=dtype)
    assert_checks(checks.check_split(model, ids, kernel="flash", positions=range(0, N, 4)))
    assert_checks(checks.check_sliding(model, ids, kernel="flash", sources=(0, 7, 20, 31)))
    assert_checks(checks.check_layer_head(tiny_model(arch, attn="eager", dtype=dtype), ids, kernel="flash"))


def test_cuda_fused_path_hides_the_whole_prefix(emulated_cuda_kernel, ids):
    """A row with every prefix entry hidden: the kernel's NaN row is replaced."""
    model = tiny_model()
    n = 3
    res = ForwardInfluenceEngine(model, batch_size=2, kernel="flash").split(
        ids, n, F, [Ablation(tuple(range(n))), Ablation((1,))]
    )
    ref = cache_api.full_forward_hiding(model, ids[: n + F], None, n)[n:]
    every = centred_kl(ref, cache_api.full_forward_hiding(model, ids[: n + F], list(range(n)), n)[n:]).numpy()
    assert np.isfinite(res.kl).all()
    assert rel_err(res.kl[0], every) < REL_TOL_ENGINE
    assert rel_err(res.kl[1], checks.oracle_split_kl(model, ids, n, F, [1])[0]) < REL_TOL_ENGINE


def test_aligned_bias_layout():
    mask = torch.zeros(3, 2, 1, 37)
    bias = kernels._aligned_bias(mask, (3, 2, 10, 37), torch.bfloat16)
    assert bias.shape == (3, 2, 10, 37) and bias.dtype == torch.bfloat16 and bias.stride(-1) == 1
    assert all(s % kernels.BIAS_ALIGN == 0 for s in bias.stride()[:3])
