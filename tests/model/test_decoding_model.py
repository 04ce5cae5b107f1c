"""Decoding-time compression through transformers' ``generate`` (``Compressor.apply``): the tests on the embedded
SmolLM2-135M; the fast ones and the topic's notes are in tests/unit/test_decoding.py."""

from __future__ import annotations

import pytest
from helpers.decoding import FIXTURE, _check_against_old, _decode  # noqa: F401, F811

from forward_influence.compress import DecodingConfig, compress_prompt, get_compressor


@pytest.mark.parametrize("row", FIXTURE["smollm2"], ids=lambda r: r["method"])
def test_generate_matches_the_old_greedy_loop_smollm(row, smollm):
    from forward_influence.measurement.documents import load_documents, tokenize

    ids = tokenize(smollm.tokenizer, load_documents(None, max_docs=1)[0], max_tokens=400).input_ids
    comp = get_compressor(row["method"], **row["kwargs"])
    cfg = DecodingConfig(cache_budget=row["cache_budget"], interval=row["interval"])
    tokens, run = _decode(smollm.model, ids[: row["prompt_tokens"]], comp, cfg, max_new_tokens=row["max_new_tokens"])
    _check_against_old(row, tokens, run)


def test_bench_greedy_answers_match_the_old_loop(smollm):
    from forward_influence.bench.tasks import ReadingQA

    rows = FIXTURE["bench_greedy"]
    task = ReadingQA(max_context=rows[0]["max_context"], questions_per_article=2, n_samples=2)
    samples = {s.sample_id: s for s in task.prepare(smollm.tokenizer, 0)}
    for row in rows:
        s = samples[row["sample_id"]]
        cache, _ = compress_prompt(smollm.model, s.context, get_compressor(row["method"], budget=row["budget"]))
        assert task._greedy(cache, s, smollm.tokenizer) == row["text"], row
