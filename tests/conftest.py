"""Test tiers (see README "Tests"):

1. fast — tiny random Llama / Qwen2 configs built in code, no files (< 1 s each).
2. model — the embedded SmolLM2-135M (offline GGUF, dequantised once into a
   session cache dir); marked ``model``.
3. slow — the CLI end to end and the notebooks; marked ``slow``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Tolerances and tiny models live in forward_influence.checks (shared with scripts/gpu_check.py).
from forward_influence.checks import (  # noqa: F401
    ABS_TOL_KL, FP32_PRECISION_FLOOR, REL_TOL_ENGINE, REL_TOL_LOGITS, tiny_config, tiny_ids, tiny_model,
)

DATA = Path(__file__).resolve().parents[1] / "data"

TORCH_THREADS = 2


def pytest_configure(config):
    torch.set_num_threads(TORCH_THREADS)


def assert_checks(checks):
    """Every :class:`forward_influence.checks.Check` passed (the failing ones in the message)."""
    failed = [str(c) for c in checks if not c.passed]
    assert checks and not failed, failed


@pytest.fixture(params=["llama", "qwen2"])
def arch(request):
    return request.param


@pytest.fixture
def ids():
    return tiny_ids()


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """Dequantised-model cache: the user's if set, else one per test session."""
    d = os.environ.get("FI_CACHE_DIR") or str(tmp_path_factory.mktemp("fi-cache"))
    os.environ["FI_CACHE_DIR"] = d
    return Path(d)


@pytest.fixture(scope="session")
def smollm(cache_dir):
    from forward_influence.models import load_model

    return load_model("smollm2-135m", device="cpu", dtype="float32")
