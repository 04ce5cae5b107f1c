"""Shared by tests/*/test_compress*.py."""

from __future__ import annotations

import pytest
import torch

from forward_influence.hf.generation import generate

T_PROMPT = 64


N_FUTURE = 12


@pytest.fixture(scope="module")
def prompt():
    g = torch.Generator().manual_seed(2)
    return torch.randint(0, 96, (T_PROMPT + N_FUTURE,), generator=g)


def _decode(model, prompt, comp, cfg, max_new_tokens):
    with comp.apply(model, cfg) as run:
        tokens = generate(model, prompt, max_new_tokens=max_new_tokens)
    return tokens, run
