"""Shared by tests/*/test_kvpress_reference*.py."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


KEPT = ROOT / "tests" / "data" / "kvpress_0.5.5_kept.json"


METHODS = ("snapkv", "pyramidkv", "expected_attention", "streaming_llm", "knorm", "tova")
