"""Compressors: one contract matrix over every registered method (kvpress's
``default_presses`` idea), plus the method-specific checks."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REL_TOL_LOGITS, assert_checks, tiny_model

from forward_influence.compress import (
    CompressedCache,
    Compressor,
    DecodingConfig,
    ExpectedAttention,
    FIOracle,
    InfoKV,
    SnapKV,
    TokenFeatures,
    compress_prompt,
    get_compressor,
    list_compressors,
    top_entries,
)
from forward_influence.compress.base import compressor_class
from forward_influence.errors import InputError
from forward_influence.hf import anatomy
from forward_influence.scoring import Scorer
from forward_influence.tools import checks

BUDGETS = (1.0, 0.4, 0.2, 0.1)  # 0.1 keeps 6 entries: below SnapKV's / InfoKV's window of 8
WINDOW = 8  # SnapKV's and InfoKV's window in SETTINGS
ATTN = ("sdpa", "eager")


def _fi_oracle(budget: float) -> FIOracle:
    g = torch.Generator().manual_seed(5)
    frame = pd.DataFrame(
        {"source_pos": range(T_PROMPT), "fi_total": torch.rand(T_PROMPT, generator=g).double().numpy()}
    )
    return FIOracle.from_frame(frame, budget=budget)


# Every method with settings that fit the tiny model (3 layers, 64-token prompt).
SETTINGS = {
    "full": {},
    "random": {"seed": 3},
    "streaming_llm": {"n_sink": 2},
    "knorm": {},
    "snapkv": {"window": 8, "kernel": 3},
    "pyramidkv": {"window": 4, "kernel": 3, "beta": 2},
    "tova": {},
    "h2o": {"recent_fraction": 0.25},
    "expected_attention": {"n_future": 16, "n_sink": 2},
    "infokv": {"window": 8, "kernel": 3, "early_layer": 0, "mix": 0.3, "norm": "max"},
    "distilled": None,
    "fi_oracle": None,
}
#: A learned scorer's stand-in: fixed weights on causal signals of the tiny model (window 8, early layer 0).
TINY_SCORER = Scorer(
    kind="linear",
    target="fi_far",
    features=[{"name": n, "transform": "unit_rank"} for n in ("entropy_in_topk", "attn_snapkv", "key_norm", "age")],
    weights=np.array([1.0, 2.0, 0.5, -0.3]),
    signal_config={"topk": 10, "window": 8, "kernel": 3, "rep_layer": 0},
)
#: Methods that also decode.
DECODING = [n for n in SETTINGS if n == "fi_oracle" or not compressor_class(n).prefill_only]


def make(name: str, budget: float):
    if name == "fi_oracle":
        return _fi_oracle(budget)
    if name == "distilled":
        return get_compressor(name, budget=budget, scorer=TINY_SCORER)
    return get_compressor(name, budget=budget, **SETTINGS[name])


@pytest.fixture(scope="module")
def models():
    return {attn: tiny_model("llama", attn=attn) for attn in ATTN}


def _no_hooks(model) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@torch.no_grad()
def _snapkv_by_hand(model, ids: torch.Tensor, window: int, kernel: int, n_keep: int) -> list[list[set[int]]]:
    """Expected SnapKV kept positions per layer and KV head, from the eager
    attention weights of one plain forward (``output_attentions``), pooled and
    ranked with Python loops: the window kept whole when ``n_keep >= window``,
    else every entry ranked by the mean attention of the window queries that
    see it; ties to the higher position."""
    t, hkv = ids.shape[0], model.config.num_key_value_heads
    seen_by = torch.tensor(
        [min(window, t - j) for j in range(t)], dtype=torch.float64
    )  # (T,) window queries at or after j
    kept = []
    for att in model(ids[None], output_attentions=True).attentions:  # (1, Hq, T, T)
        a = att[0, :, -window:, :].double().sum(1) / seen_by  # (Hq, T)
        m = t if n_keep < window else t - window  # the entries that compete
        pooled = torch.stack(
            [a[:, max(0, j - kernel // 2) : min(m, j + kernel // 2 + 1)].sum(1) / kernel for j in range(m)], 1
        )
        s = pooled.view(hkv, -1, m).mean(1)  # (Hkv, m)
        layer = []
        for h in range(hkv):
            ranked = sorted(range(m), key=lambda j: (float(s[h, j]), j), reverse=True)
            layer.append(set(ranked[:n_keep]) if n_keep < window else set(ranked[: n_keep - window]) | set(range(m, t)))
        kept.append(layer)
    return kept


@dataclasses.dataclass(frozen=True)
class _Flat(Compressor):
    """Every entry scores the same (not registered): selection is the tie rule alone."""

    def score(self, view):
        return torch.zeros(view.positions.shape)


def _snapshot(cache: CompressedCache) -> dict:
    """Deep copies of everything a cut or an extend could change."""
    return {
        "kv": [(k.clone(), v.clone()) for k, v in cache.kv],
        "positions": [p.clone() for p in cache.positions],
        "queries": [None if q is None else q.clone() for q in cache.queries],
        "state": [{n: v.clone() if torch.is_tensor(v) else v for n, v in s.items()} for s in cache.state],
        "length": cache.length,
        "cuts": cache.cuts,
        "compressor": cache.compressor,
        "entropy": cache.entropy.clone(),
        "rep": cache.rep.clone(),
    }


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        x, y = a[key], b[key]
        if key == "state":
            assert [s.keys() for s in x] == [s.keys() for s in y]
            x = [v for s in x for v in s.values()]
            y = [v for s in y for v in s.values()]
        if isinstance(x, list):
            assert len(x) == len(y), key
            for u, w in zip(x, y):
                if isinstance(u, tuple):
                    assert all(torch.equal(p, q) for p, q in zip(u, w)), key
                elif torch.is_tensor(u):
                    assert torch.equal(u, w), key
                else:
                    assert u == w, key
        elif torch.is_tensor(x):
            assert torch.equal(x, y), key
        else:
            assert x == y, key


# Bases the bench forks from: each method's own prefill, and InfoKV's (it records the most, so the bench prefills
# it first and forks every method it can serve: CompressedCache.can_fork).
FROM_INFOKV = ["full", "random", "streaming_llm", "knorm", "snapkv", "pyramidkv", "tova", "fi_oracle"]
FORK_CASES = [(n, n) for n in SETTINGS] + [("infokv", n) for n in FROM_INFOKV]
from helpers.compress import N_FUTURE, T_PROMPT, _decode, prompt  # noqa: E402, F401, F811


def test_every_registered_method_is_in_the_matrix():
    assert set(list_compressors()) == set(SETTINGS)


@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("name", list(SETTINGS))
def test_prefill_contract(name, budget, attn, models, prompt):
    model = models[attn]
    comp = make(name, budget)
    cache, last = compress_prompt(model, prompt[:T_PROMPT], comp)
    n_layers = anatomy.n_layers(model)
    expected = [min(T_PROMPT, comp.layer_budget(l, n_layers, T_PROMPT, budget * T_PROMPT)) for l in range(n_layers)]
    assert cache.sizes() == expected, "kept counts per layer == layer_budget"
    for l, (pos, s) in enumerate(zip(cache.positions, cache.last_scores)):
        assert bool((pos[:, 1:] > pos[:, :-1]).all()), "positions unique and ascending"
        s = torch.nan_to_num(s.float(), nan=float("-inf"))
        for h in range(pos.shape[0]):
            dropped = torch.ones(T_PROMPT, dtype=torch.bool)
            dropped[pos[h]] = False
            if dropped.any():
                assert float(s[h, pos[h]].min()) >= float(s[h, dropped].max()), f"layer {l} head {h}: kept = top scores"
    if budget == 1.0:
        assert all(torch.equal(p, torch.arange(T_PROMPT).expand_as(p)) for p in cache.positions), "budget 1.0 keeps all"
    assert _no_hooks(model) and model.config._attn_implementation == attn, "hooks removed, attention restored"
    out = cache.extend(prompt[T_PROMPT:], all_logits=True)
    assert out.shape == (N_FUTURE, model.config.vocab_size) and bool(torch.isfinite(out).all())


@pytest.mark.parametrize("attn", ATTN)
def test_budget_one_continuation_equals_full_forward(attn, models, prompt):
    model = models[attn]
    full = model(prompt[None]).logits[0].float()  # (T + F, V) one plain forward
    for name in SETTINGS:
        cache, last = compress_prompt(model, prompt[:T_PROMPT], make(name, 1.0))
        out = cache.extend(prompt[T_PROMPT:], all_logits=True)
        torch.testing.assert_close(out, full[T_PROMPT:], rtol=REL_TOL_LOGITS, atol=REL_TOL_LOGITS, msg=name)
        torch.testing.assert_close(last, full[T_PROMPT - 1], rtol=REL_TOL_LOGITS, atol=REL_TOL_LOGITS)


@pytest.mark.parametrize("name", ["streaming_llm", "fi_oracle"])  # the same kept set at every layer and head
def test_positions_preserved_and_wrong_position_caught(name, models, prompt):
    """A cut cache continued at the true positions = one forward hiding the dropped
    columns; the kept entries are not touched by continuing; a cache-index position is caught."""
    assert_checks(checks.check_compressed_continuation(models["eager"], prompt, T_PROMPT, make(name, 0.4)))


@pytest.mark.parametrize("name", DECODING)
def test_decoding_cache_never_exceeds_budget_plus_interval(name, models, prompt):
    model = models["sdpa"]
    cfg = DecodingConfig(cache_budget=24, interval=4)
    tokens, run = _decode(
        model, prompt[:T_PROMPT], make(name, 1.0) if name != "fi_oracle" else _fi_oracle(1.0), cfg, 30
    )
    assert len(tokens) == 30 and all(0 <= t < model.config.vocab_size for t in tokens)
    limit = 24 + 4 if name != "full" else math.inf
    assert max(run.cache_sizes) <= limit, f"cache {max(run.cache_sizes)} > budget + interval"
    if name != "full":
        assert run.cuts >= 30 // cfg.interval - 1
    assert _no_hooks(model)


def test_decoding_full_equals_plain_greedy(models, prompt):
    model = models["sdpa"]
    tokens, _ = _decode(
        model, prompt[:T_PROMPT], get_compressor("full"), DecodingConfig(cache_budget=10_000, interval=4), 12
    )
    ids = prompt[:T_PROMPT].clone()
    for _ in range(12):  # reference: full forwards
        ids = torch.cat([ids, model(ids[None]).logits[0, -1].argmax()[None]])
    assert tokens == ids[T_PROMPT:].tolist()


def test_fraction_cache_budget_tracks_length(models, prompt):
    cfg = DecodingConfig(cache_budget=0.25, interval=4)
    _, run = _decode(models["sdpa"], prompt[:T_PROMPT], get_compressor("snapkv", window=8), cfg, 20)
    final_len = T_PROMPT + 20
    assert run.cache_sizes[-1] <= 0.25 * final_len + cfg.interval


def test_fi_oracle_keeps_the_measured_top_set(models, prompt):
    comp = _fi_oracle(0.25)
    cache, _ = compress_prompt(models["sdpa"], prompt[:T_PROMPT], comp)
    top = set(torch.topk(comp.fi, int(0.25 * T_PROMPT)).indices.tolist())
    assert all(set(p[h].tolist()) == top for p in cache.positions for h in range(p.shape[0]))


def test_fi_oracle_from_a_measure_summary():
    summary = pd.DataFrame(
        {
            "doc_id": ["a"] * 4 + ["b"] * 2,
            "split_pos": pd.array([8] * 6, dtype="Int64"),
            "source_pos": [0, 1, 2, 3, 0, 1],
            "layer": pd.array([None] * 6, dtype="Int64"),
            "kv_head": pd.array([None] * 6, dtype="Int64"),
            "fi_total": [0.5, 0.1, 0.9, 0.2, 7.0, 7.0],
        }
    )
    comp = FIOracle.from_result(summary, "a", budget=0.5)
    assert comp.fi.tolist() == [0.5, 0.1, 0.9, 0.2]
    with pytest.raises(ValueError, match="no position ablations"):
        FIOracle.from_result(summary, "zzz")


def test_pyramid_budgets_fall_and_average_to_the_global_budget():
    comp = get_compressor("pyramidkv", budget=0.2, window=4, beta=4)
    budgets = [comp.layer_budget(l, 10, 1000, 200.0) for l in range(10)]
    assert budgets == sorted(budgets, reverse=True) and budgets[0] > budgets[-1]
    assert abs(sum(budgets) / 10 - 200.0) <= 1.0
    info = get_compressor("infokv", budget=0.2)
    assert [info.layer_budget(l, 10, 1000, 200.0) for l in range(10)] == [200] * 10


@pytest.mark.parametrize("budget", [0.3, 0.1], ids=["window-kept", "below-window"])
def test_infokv_mix_zero_is_snapkv_and_mix_changes_it(budget, models, prompt):
    model = models["sdpa"]
    a, _ = compress_prompt(model, prompt[:T_PROMPT], SnapKV(budget=budget, window=WINDOW, kernel=3))
    b, _ = compress_prompt(
        model, prompt[:T_PROMPT], InfoKV(budget=budget, window=WINDOW, kernel=3, mix=0.0, early_layer=0)
    )
    assert all(torch.equal(p, q) for p, q in zip(a.positions, b.positions))
    c, _ = compress_prompt(
        model, prompt[:T_PROMPT], InfoKV(budget=budget, window=WINDOW, kernel=3, mix=1.0, early_layer=0, norm="max")
    )
    assert any(not torch.equal(p, q) for p, q in zip(a.positions, c.positions)), (
        "the entropy term changes the selection"
    )
    window = set(range(T_PROMPT - WINDOW, T_PROMPT))
    whole = [window <= set(p[h].tolist()) for p in c.positions for h in range(p.shape[0])]
    if budget * T_PROMPT >= WINDOW:
        assert all(whole), "window protected"
    else:
        assert not any(whole) and all(bool(torch.isfinite(s).all()) for s in c.last_scores), "every entry competes"


@pytest.mark.parametrize("n_keep", [6, 20], ids=["below-window", "window-kept"])
def test_snapkv_keeps_the_hand_computed_set(n_keep, models, prompt):
    model = models["eager"]
    want = _snapkv_by_hand(model, prompt[:T_PROMPT], WINDOW, 3, n_keep)
    cache, _ = compress_prompt(model, prompt[:T_PROMPT], SnapKV(budget=n_keep / T_PROMPT, window=WINDOW, kernel=3))
    got = [[set(p[h].tolist()) for h in range(p.shape[0])] for p in cache.positions]
    assert got == want


@pytest.mark.parametrize("name", ["snapkv", "infokv"])
def test_decoding_below_then_above_the_window(name, models, prompt):
    """Decoding: a cut below the window lets the heads keep different window
    entries; a later cut at the window keeps, per head, every window entry it
    still has, and the kept entries are the top scores."""
    comp = make(name, 1.0)
    cache = CompressedCache(models["sdpa"], comp)
    cache.extend(prompt[:T_PROMPT])
    cache.cut(WINDOW - 1)
    assert all(bool(torch.isfinite(s).all()) for s in cache.last_scores), "below the window nothing is protected"
    cache.extend(prompt[T_PROMPT : T_PROMPT + 2])  # two decoding steps: 9 entries, a window from T - 6
    window_start = T_PROMPT + 2 - WINDOW
    before = [[set(p[h].tolist()) for h in range(p.shape[0])] for p in cache.positions]
    assert any(len({frozenset(x for x in hs if x >= window_start) for hs in layer}) > 1 for layer in before), (
        "the heads hold different window entries (the per-head path is exercised)"
    )
    cache.cut(WINDOW)
    for l, (pos, s) in enumerate(zip(cache.positions, cache.last_scores)):
        for h in range(pos.shape[0]):
            held = sorted(before[l][h])  # the entries this head had, in order: the rows of s
            in_window = [x >= window_start for x in held]
            assert bool(torch.isinf(s[h, in_window]).all()) and bool(
                torch.isfinite(s[h, [not w for w in in_window]]).all()
            )
            assert {x for x in held if x >= window_start} <= set(pos[h].tolist()), f"layer {l} head {h}: window kept"


def test_infokv_differs_from_snapkv_below_the_window_in_decoding(models, prompt):
    out = {}
    for name in ("snapkv", "infokv"):
        cache = CompressedCache(models["sdpa"], make(name, 1.0))
        cache.extend(prompt[:T_PROMPT])
        for tok in prompt[T_PROMPT : T_PROMPT + 4]:  # decoding steps: the query buffer rolls
            cache.extend(tok[None])
        cache.cut(6)
        out[name] = cache.positions
    assert any(not torch.equal(a, b) for a, b in zip(out["snapkv"], out["infokv"]))


@pytest.mark.parametrize("n_sink", [0, 2])
def test_ties_go_to_the_most_recent_entries(n_sink, models, prompt):
    cache, _ = compress_prompt(models["sdpa"], prompt[:T_PROMPT], _Flat(budget=0.25, n_sink=n_sink))
    want = list(range(n_sink)) + list(range(T_PROMPT - 16 + n_sink, T_PROMPT))
    assert all(p[h].tolist() == want for p in cache.positions for h in range(p.shape[0]))


@pytest.mark.parametrize(
    "scores, n_keep, want",
    [
        ([[0.5, 0.5, 0.5, 0.1]], 2, [[1, 2]]),
        ([[1.0, 2.0, 2.0, 2.0]], 2, [[2, 3]]),
        ([[float("inf")] * 5], 3, [[2, 3, 4]]),
        ([[float("nan"), 0.0, float("nan")]], 2, [[1, 2]]),
        ([[0.3, 0.1, 0.2]], 5, [[0, 1, 2]]),
    ],
    ids=["tie-at-the-boundary", "tie-among-the-top", "all-protected", "nan-ties", "keep-more-than-n"],
)
def test_top_entries_tie_rule(scores, n_keep, want):
    assert top_entries(torch.tensor(scores), n_keep).tolist() == want


def test_top_entries_is_deterministic_on_a_long_tie():
    s = torch.zeros(3, 4096)
    assert all(top_entries(s, 100).tolist() == [list(range(3996, 4096))] * 3 for _ in range(3))


@pytest.mark.parametrize(
    "name, budget", [(n, 0.4) for n in SETTINGS if n != "full"] + [("snapkv", 0.1), ("infokv", 0.1)]
)
def test_n_sink_keeps_the_first_positions(name, budget, models, prompt):
    comp = dataclasses.replace(make(name, budget), n_sink=3)
    cache, _ = compress_prompt(models["sdpa"], prompt[:T_PROMPT], comp)
    assert all({0, 1, 2} <= set(p[h].tolist()) for p in cache.positions for h in range(p.shape[0]))


def test_n_sink_defaults():
    """Sinks only where the method asks for them (kvpress's defaults)."""
    defaults = {name: get_compressor(name).n_sink for name in SETTINGS if name not in ("fi_oracle", "distilled")}
    assert defaults == {**{n: 0 for n in defaults}, "streaming_llm": 4, "expected_attention": 4}
    assert _fi_oracle(1.0).n_sink == 0
    assert make("distilled", 1.0).n_sink == 4  # the analysis' candidates leave 4 sinks out


@pytest.mark.parametrize("head_mix", [0.0, 0.5])
def test_distilled_keeps_the_window(models, prompt, head_mix):
    """Its candidates are the measurement's: every position but 4 sinks and the window (kept); with
    head_mix 0 every layer and head keeps the same entries (one score per token)."""
    comp = get_compressor("distilled", budget=0.4, scorer=TINY_SCORER, head_mix=head_mix)
    cache, _ = compress_prompt(models["sdpa"], prompt[:T_PROMPT], comp)
    window = set(range(T_PROMPT - comp.window, T_PROMPT)) | set(range(4))
    assert all(window <= set(p[h].tolist()) for p in cache.positions for h in range(p.shape[0]))
    first = cache.positions[0][0]
    same = all(torch.equal(p[h], first) for p in cache.positions for h in range(p.shape[0]))
    assert same == (head_mix == 0)


@pytest.mark.parametrize(
    ("budget", "head_mix"), [(10_000, 0.0), (24, 0.0), (24, 0.5)], ids=["never-cut", "cut", "mixed"]
)
def test_distilled_decodes_with_the_token_signals_the_model_computed(models, prompt, budget, head_mix):
    """In decoding the cache streams the token signals block by block (one token per block here):
    never cut, they equal a collector's over the whole sequence; cut (the prompt already, being over
    budget), they equal it over the prompt (later tokens were predicted over the cut cache, and their
    values are those predictions'). Every layer and head keeps the same entries, with the sinks and the
    window."""
    from forward_influence.compress.compressed_cache import measured_signals
    from forward_influence.hf import forwards

    model, comp = models["sdpa"], get_compressor("distilled", scorer=TINY_SCORER, head_mix=head_mix)
    tokens, run = _decode(model, prompt[:T_PROMPT], comp, DecodingConfig(cache_budget=budget, interval=4), 12)
    cache = run.cache
    seq = torch.cat([prompt[:T_PROMPT], torch.tensor(tokens)])[: cache.length]
    col = measured_signals(model, len(seq), comp.needs().signals)
    pre = forwards.record_prefill(model, seq, on_tap=col.on_tap, layer_hooks=col.on_layer)
    col.feed_logits(pre.hidden, seq)
    want = col.values()
    exact = cache.length if budget > cache.length else T_PROMPT
    assert set(cache.token_signals) == {"entropy_in_topk", "entropy_out_topk", "key_norm"}
    for name, v in cache.token_signals.items():
        assert len(v) == cache.length
        np.testing.assert_allclose(v[:exact], want[name][:exact], rtol=1e-4, atol=1e-6, equal_nan=True, err_msg=name)
    if budget < cache.length:
        assert not np.allclose(cache.token_signals["entropy_out_topk"], want["entropy_out_topk"], rtol=1e-3)
        assert run.cuts >= 2 and max(run.cache_sizes[1:]) <= budget + 4
    first = cache.positions[0][0]
    fixed = set(range(cache.length - comp.window, cache.length)) | set(range(4))
    assert all(fixed <= set(p[h].tolist()) for p in cache.positions for h in range(p.shape[0]))
    same = all(torch.equal(p[h], first) for p in cache.positions for h in range(p.shape[0]))
    assert same == (head_mix == 0 or budget > cache.length)


def test_distilled_head_mix_one_keeps_each_heads_top_snapkv_attention(models, prompt):
    """head_mix = 1: each layer and KV head keeps the sinks, the window and its candidates of highest
    SnapKV attention — the measurement's per-layer, per-head attn_snapkv at tau = the prompt's end."""
    from forward_influence.compress.compressed_cache import measured_signals
    from forward_influence.hf import forwards

    model, ids = models["sdpa"], prompt[:T_PROMPT]
    comp = get_compressor("distilled", budget=0.5, scorer=TINY_SCORER, head_mix=1.0)
    cache, _ = compress_prompt(model, ids, comp)
    col = measured_signals(model, T_PROMPT, comp.needs().signals)
    forwards.record_prefill(model, ids, on_tap=col.on_tap, layer_hooks=col.on_layer)
    att = col.signal("attn_snapkv").per_layer[0]  # (L, Hkv, T)
    fixed = set(range(4)) | set(range(T_PROMPT - comp.window, T_PROMPT))
    cand = torch.tensor([p for p in range(T_PROMPT) if p not in fixed])
    differ = False
    for layer, pos in enumerate(cache.positions):
        for h in range(pos.shape[0]):
            k = pos.shape[1] - len(fixed)
            top = cand[att[layer, h, cand].argsort(descending=True, stable=True)[:k]]
            assert set(pos[h].tolist()) == fixed | set(top.tolist()), (layer, h)
            differ |= not torch.equal(pos[h], pos[0])
    assert differ  # the heads keep different entries
    with pytest.raises(ValueError, match="head_mix must be in"):
        get_compressor("distilled", scorer=TINY_SCORER, head_mix=1.5)


def test_distilled_refuses_a_decoding_cut_with_a_model_reading_every_querys_attention(models, prompt):
    h2o = dataclasses.replace(TINY_SCORER, features=[*TINY_SCORER.features, {"name": "attn_h2o"}])
    h2o = dataclasses.replace(h2o, weights=np.array([1.0, 2.0, 0.5, -0.3, 1.0]))
    comp = get_compressor("distilled", budget=0.4, scorer=h2o)
    compress_prompt(models["sdpa"], prompt[:T_PROMPT], comp)  # a prompt's cut computes it
    with pytest.raises(InputError, match="reads attn_h2o, which a decoding cache cannot compute") as e:
        _decode(models["sdpa"], prompt[:T_PROMPT], comp, DecodingConfig(cache_budget=24, interval=4), 12)
    assert "\n" not in str(e.value) and "--exclude attn_h2o" in str(e.value)


def test_distilled_under_a_budget_below_sinks_and_window_keeps_the_sinks_then_the_newest(models, prompt):
    """4 sinks + window 8 = 12 entries; a budget of 8 keeps the sinks and the 4 newest, never a candidate."""
    comp = get_compressor("distilled", budget=8 / T_PROMPT, scorer=TINY_SCORER)
    cache, _ = compress_prompt(models["sdpa"], prompt[:T_PROMPT], comp)
    want = set(range(4)) | set(range(T_PROMPT - 4, T_PROMPT))
    assert all(set(p[h].tolist()) == want for p in cache.positions for h in range(p.shape[0]))


@pytest.mark.parametrize("name", ["snapkv", "tova", "h2o", "expected_attention", "knorm"])
def test_no_implicit_sink(name, models, prompt):
    """With ``n_sink=0`` position 0 is scored like any other entry."""
    comp = dataclasses.replace(make(name, 0.2), n_sink=0)
    cache, _ = compress_prompt(models["sdpa"], prompt[:T_PROMPT], comp)
    assert all(bool(torch.isfinite(s[:, 0]).all()) for s in cache.last_scores)


@pytest.mark.parametrize("bad", [-1, 1.5, "4"])
def test_n_sink_out_of_range(bad):
    with pytest.raises(ValueError, match="n_sink must be an int >= 0"):
        get_compressor("snapkv", n_sink=bad)


def test_infokv_rep_readings_on_given_features():
    g = torch.Generator().manual_seed(0)
    feats = TokenFeatures(entropy=torch.rand(10, generator=g), rep_change=torch.rand(4, 10, generator=g))
    pos = torch.arange(10)[None].expand(2, 10)
    per_layer, early_final = InfoKV(rep="per_layer"), InfoKV(rep="early_final")
    for l in range(4):
        torch.testing.assert_close(
            per_layer.entropy_score(l, pos, feats), (feats.entropy * feats.rep_change[l]).expand(2, 10)
        )
        torch.testing.assert_close(
            early_final.entropy_score(l, pos, feats), (feats.entropy * feats.rep_change[-1]).expand(2, 10)
        )


def test_infokv_rep_readings_differ_on_a_model(models, prompt):
    base = CompressedCache(models["sdpa"], InfoKV(window=WINDOW, kernel=3, early_layer=0, mix=0.5, norm="max"))
    base.extend(prompt[:T_PROMPT])
    assert not torch.allclose(base.rep[1], base.rep[2]), "the tiny model's representations change between layers"
    scores = {}
    for rep in ("per_layer", "early_final"):
        cache = base.fork(InfoKV(budget=0.2, window=WINDOW, kernel=3, early_layer=0, mix=0.5, norm="max", rep=rep))
        cache.cut(0.2 * T_PROMPT)
        scores[rep] = cache.last_scores
    last = len(scores["per_layer"]) - 1
    assert torch.equal(scores["per_layer"][last], scores["early_final"][last]), "the readings agree at the last layer"
    assert all(not torch.equal(a, b) for a, b in zip(scores["per_layer"][:last], scores["early_final"][:last]))


def test_infokv_rep_invalid_names_the_choices():
    with pytest.raises(ValueError, match="valid: per_layer, early_final"):
        InfoKV(rep="final")


def test_infokv_entropy_features_match_the_logits(models, prompt):
    from forward_influence.measurement.kl import entropy

    model = models["sdpa"]
    cache = CompressedCache(model, InfoKV(window=8, early_layer=0))
    cache.extend(prompt[:T_PROMPT])
    cache.extend(prompt[T_PROMPT : T_PROMPT + 1])
    logits = model(prompt[None, : T_PROMPT + 1]).logits[0].float()
    want = torch.cat([torch.zeros(1), entropy(logits[:-1], topk=10)])
    torch.testing.assert_close(cache.entropy, want, rtol=1e-4, atol=1e-5)
    assert cache.rep.shape == (3, T_PROMPT + 1) and bool((cache.rep[0] == 1).all()) and bool((cache.rep[1:] < 1).all())


def test_expected_attention_statistics_merge_across_blocks(models, prompt):
    model = models["sdpa"]
    comp = ExpectedAttention(n_sink=2, n_future=8)
    one = CompressedCache(model, comp)
    one.extend(prompt[:40])
    two = CompressedCache(model, comp)
    two.extend(prompt[:25])
    two.extend(prompt[25:40])
    for a, b in zip(one.state, two.state):
        assert a["count"] == b["count"] == 38
        torch.testing.assert_close(a["mean"], b["mean"], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(a["cov"], b["cov"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, float("nan")])
def test_budget_out_of_range(bad):
    with pytest.raises(ValueError, match=r"budget must be in \(0, 1\]"):
        get_compressor("snapkv", budget=bad)


def test_unknown_method_names_the_valid_ones():
    with pytest.raises(ValueError, match="valid: full, random"):
        get_compressor("snapkvv")


@pytest.mark.parametrize("base_name, name", FORK_CASES, ids=[f"{a}->{b}" for a, b in FORK_CASES])
def test_fork_cut_equals_a_fresh_compression(base_name, name, models, prompt):
    """A fork of one uncut prefill, cut to a budget, keeps the same positions,
    K/V and scores and continues with the same logits as compressing the
    prompt afresh; cutting and extending forks leaves the base untouched."""
    model = models["sdpa"]
    base = CompressedCache(model, make(base_name, 0.4))
    base.extend(prompt[:T_PROMPT])
    before = _snapshot(base)
    for budget in (0.4, 0.1):
        assert base.can_fork(make(name, budget))
        fork = base.fork(make(name, budget))
        fork.cut(budget * T_PROMPT)
        fresh, _ = compress_prompt(model, prompt[:T_PROMPT], make(name, budget))
        assert fork.sizes() == fresh.sizes() and (fork.sizes() == base.sizes()) == (name == "full"), (
            "cut (full keeps all)"
        )
        for l in range(anatomy.n_layers(model)):
            assert torch.equal(fork.positions[l], fresh.positions[l]), f"layer {l}: kept positions"
            assert all(torch.equal(a, b) for a, b in zip(fork.kv[l], fresh.kv[l])), f"layer {l}: kept K/V"
            torch.testing.assert_close(fork.last_scores[l], fresh.last_scores[l], rtol=0, atol=0, equal_nan=True)
        assert torch.equal(
            fork.extend(prompt[T_PROMPT:], all_logits=True), fresh.extend(prompt[T_PROMPT:], all_logits=True)
        )
        _assert_same(_snapshot(base), before)
    plain = base.fork()  # the bench's reference and task scoring: an uncut fork, extended
    plain.extend(prompt[T_PROMPT : T_PROMPT + 4])
    assert plain.length == T_PROMPT + 4
    _assert_same(_snapshot(base), before)


def test_fork_refuses_a_method_whose_inputs_were_not_recorded(models, prompt):
    base = CompressedCache(models["sdpa"], make("snapkv", 0.4))
    base.extend(prompt[:8])
    for name in ("infokv", "h2o", "expected_attention"):  # entropies; observed attention; attention inputs
        assert not base.can_fork(make(name, 0.4))
        with pytest.raises(ValueError, match="cannot fork"):
            base.fork(make(name, 0.4))
