"""Decoding-time compression through transformers' ``generate`` (``Compressor.apply``).

Greedy outputs are token-identical to the hand-written loops this path replaced:
``tests/data/decoding_tokens.json`` holds what ``compress.decoding.generate`` and
``bench.tasks.PrefillTask._greedy`` produced on branch ``arch`` (commit 731346e),
on the tiny random Llama and on SmolLM2-135M (float32, CPU).
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model
from test_compress import N_FUTURE, T_PROMPT, _fi_oracle, _no_hooks, make

from forward_influence.compress import DecodingConfig, compress_prompt, get_compressor
from forward_influence.hf.generation import generate


@pytest.fixture(scope="module")
def tiny():
    return {attn: tiny_model("llama", attn=attn) for attn in ("sdpa", "eager")}


@pytest.fixture(scope="module")
def tiny_prompt():
    g = torch.Generator().manual_seed(2)
    return torch.randint(0, 96, (T_PROMPT + N_FUTURE,), generator=g)[:T_PROMPT]


from helpers.decoding import FIXTURE, _check_against_old, _decode  # noqa: E402, F401, F811


@pytest.mark.parametrize("row", FIXTURE["tiny"], ids=lambda r: f"{r['method']}-{r['attn']}-{r['cache_budget']}")
def test_generate_matches_the_old_greedy_loop_tiny(row, tiny, tiny_prompt):
    model = tiny[row["attn"]]
    comp = _fi_oracle(1.0) if row["method"] == "fi_oracle" else make(row["method"], 1.0)
    cfg = DecodingConfig(cache_budget=row["cache_budget"], interval=row["interval"])
    tokens, run = _decode(model, tiny_prompt, comp, cfg, max_new_tokens=row["max_new_tokens"])
    _check_against_old(row, tokens, run)
    assert _no_hooks(model) and model.config._attn_implementation == row["attn"]


def test_bare_model_generate_inside_apply(tiny, tiny_prompt):
    """``model.generate`` itself (no wrapper, no cache passed) decodes over the cut cache."""
    model = tiny["sdpa"]
    row = next(
        r for r in FIXTURE["tiny"] if r["method"] == "pyramidkv" and r["attn"] == "sdpa" and r["cache_budget"] == 24
    )
    with make("pyramidkv", 1.0).apply(model, DecodingConfig(cache_budget=24, interval=4)) as run:
        out = model.generate(
            input_ids=tiny_prompt[None],
            attention_mask=torch.ones(1, T_PROMPT, dtype=torch.long),
            max_new_tokens=30,
            do_sample=False,
            pad_token_id=0,
        )
    assert out[0, T_PROMPT:].tolist() == row["tokens"] and run.cuts > 0
    assert len(set(run.cache.sizes())) > 1  # PyramidKV: the layers hold different numbers of entries
    assert _no_hooks(model)


def test_full_cache_equals_plain_generate(tiny, tiny_prompt):
    model = tiny["sdpa"]
    plain = generate(model, tiny_prompt, max_new_tokens=12)
    tokens, run = _decode(
        model, tiny_prompt, get_compressor("full"), DecodingConfig(cache_budget=10_000, interval=4), max_new_tokens=12
    )
    assert tokens == plain and run.cuts == 0


def test_seeded_sampling_is_reproducible_and_leaves_the_rng_alone(tiny, tiny_prompt):
    model = tiny["sdpa"]
    cfg = DecodingConfig(cache_budget=24, interval=4)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    kw = dict(max_new_tokens=20, do_sample=True, temperature=1.5)
    a, _ = _decode(model, tiny_prompt, get_compressor("snapkv", window=8), cfg, seed=7, **kw)
    b, _ = _decode(model, tiny_prompt, get_compressor("snapkv", window=8), cfg, seed=7, **kw)
    c, _ = _decode(model, tiny_prompt, get_compressor("snapkv", window=8), cfg, seed=8, **kw)
    assert a == b and a != c
    assert torch.equal(torch.random.get_rng_state(), state)


def test_stop_when_and_eos_end_generation(tiny, tiny_prompt):
    model = tiny["sdpa"]
    full = generate(model, tiny_prompt, max_new_tokens=12)
    with get_compressor("full").apply(model, DecodingConfig(cache_budget=10_000)):  # one sequence per block
        assert generate(model, tiny_prompt, max_new_tokens=12, stop_when=lambda new: len(new) >= 3) == full[:3]
    with get_compressor("full").apply(model, DecodingConfig(cache_budget=10_000)):
        assert generate(model, tiny_prompt, max_new_tokens=12, eos=[full[4]]) == full[: full.index(full[4]) + 1]


def test_continuing_a_cut_prompt_needs_the_cut_cache(tiny, tiny_prompt):
    """A cache that already holds a (cut) context: generate runs only the new tokens, at their true positions."""
    model = tiny["sdpa"]
    n = T_PROMPT - 4
    cache, _ = compress_prompt(model, tiny_prompt[:n], get_compressor("snapkv", budget=0.3, window=8))
    manual, c = [], cache.fork()
    logits = c.extend(tiny_prompt[n:])[-1]
    for _ in range(6):  # greedy over CompressedCache.extend, as the old loops did
        manual.append(int(logits.argmax()))
        logits = c.extend(torch.tensor([manual[-1]]))[-1]
    with get_compressor("snapkv").apply(model, None, cache=cache.fork()) as run:
        with pytest.raises(RuntimeError, match="CutCache"):
            generate(model, tiny_prompt, max_new_tokens=2)
        assert generate(model, tiny_prompt, max_new_tokens=6, **run.generate_kwargs) == manual
    assert run.cuts == 0 and run.cache.length == T_PROMPT + 5
    assert _no_hooks(model) and model.config._attn_implementation == "sdpa"


def test_attention_call_helpers_for_the_kvpress_adapter(tiny, tiny_prompt):
    """What integrations/kvpress.py reads through hf.cache_api: the attention call under this transformers,
    the prefill flag, RoPE as the model applies it, and the per-head cut of a DynamicCache layer."""
    from transformers import DynamicCache
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    from forward_influence.hf import anatomy, cache_api

    model = tiny["sdpa"]
    seen = []

    def hook(module, _args, kwargs, _out):
        call = cache_api.attention_call(module, kwargs)
        q = anatomy.prerope_queries(module, call.hidden[0])  # (Hq, T, D)
        ref, _ = apply_rotary_pos_emb(q[None], q[None], call.cos[None], call.sin[None])
        seen.append((call.prefill, torch.allclose(cache_api.apply_rope(q, call.cos, call.sin), ref[0])))

    layer0 = anatomy.decoder_layers(model)[0].self_attn
    handle = layer0.register_forward_hook(hook, with_kwargs=True)
    try:
        cache = DynamicCache()
        with torch.no_grad():
            model(input_ids=tiny_prompt[None], use_cache=True, **{cache_api.cache_kwarg(model): cache})
            model(input_ids=tiny_prompt[None, :1], use_cache=True, **{cache_api.cache_kwarg(model): cache})
    finally:
        handle.remove()
    assert seen == [(True, True), (False, True)]
    k, _ = cache_api.cache_layers(cache)[1]
    idx = torch.tensor([[0, 5, 9]] * k.shape[1])
    cache_api.keep_entries(cache, 1, idx)
    k2, _ = cache_api.cache_layers(cache)[1]
    assert k2.shape[2] == 3 and torch.equal(k2[0, :, 1], k[0, :, 5])
