"""Shared by tests/*/test_decoding*.py."""

from __future__ import annotations

import json
from pathlib import Path

from forward_influence.compress import Decoding, DecodingConfig
from forward_influence.hf.generation import generate

FIXTURE = json.loads((Path(__file__).resolve().parents[1] / "data" / "decoding_tokens.json").read_text())


def _decode(model, prompt, comp, cfg: DecodingConfig, **kwargs) -> tuple[list[int], Decoding]:
    with comp.apply(model, cfg) as run:
        tokens = generate(model, prompt, **kwargs)
    return tokens, run


def _check_against_old(row, tokens, run):
    assert tokens == row["tokens"]
    # the old loop also ran the last token (one more size); sizes agree step by step
    assert run.cache_sizes == row["cache_sizes"][: len(run.cache_sizes)]
    assert len(run.cache_sizes) == len(tokens)
