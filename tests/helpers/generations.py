"""Shared by tests/*/test_generations*.py."""

from __future__ import annotations

from forward_influence.config import MeasureConfig
from forward_influence.measurement import generations as G


def gen_settings(**kw):
    return G.settings(MeasureConfig(**{"max_new_tokens": 12, "min_new_tokens": 12, **kw}))
