"""Compressors: one contract matrix over every registered method (kvpress's: the tests on the embedded SmolLM2-135M;
the fast ones and the topic's notes are in tests/unit/test_compress.py."""

from __future__ import annotations

import math

from helpers.compress import N_FUTURE, T_PROMPT, _decode, prompt  # noqa: F401, F811

from forward_influence.compress import (
    DecodingConfig,
    compress_prompt,
    get_compressor,
    list_compressors,
)


def test_smollm_prefill_fidelity_end_to_end(smollm):
    """On the real model: every method runs, full is exact, SnapKV beats random."""
    from forward_influence import load_documents, tokenize
    from forward_influence.measurement.kl import centred_kl

    model, tok = smollm.model, smollm.tokenizer
    ids = tokenize(tok, load_documents(None, max_docs=1)[0], max_tokens=640).input_ids
    n = 512
    ref_cache, _ = compress_prompt(model, ids[:n], get_compressor("full"))
    ref = ref_cache.extend(ids[n:], all_logits=True)
    kl = {}
    for name in list_compressors():
        if name == "fi_oracle":
            continue
        cache, _ = compress_prompt(model, ids[:n], get_compressor(name, budget=0.2))
        kl[name] = float(centred_kl(ref, cache.extend(ids[n:], all_logits=True)).mean())
    assert kl["full"] == 0.0
    assert all(math.isfinite(v) and v >= 0 for v in kl.values())
    assert kl["snapkv"] < kl["random"] and kl["infokv"] < kl["random"]
    tokens, run = _decode(model, ids[:n], get_compressor("infokv"), DecodingConfig(cache_budget=128, interval=8), 16)
    assert len(tokens) == 16 and max(run.cache_sizes[1:]) <= 128 + 8
