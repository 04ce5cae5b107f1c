"""Process settings: glibc keeps freed memory; heap accounting (tier 1)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from forward_influence.runtime.host import heap_in_use, retain_freed_memory, runtime_info

glibc = pytest.mark.skipif(heap_in_use() is None, reason="needs glibc (mallinfo2)")
MB = 1 << 20
BLOCK = 64 * MB  # above glibc's default mmap threshold (<= 32 MiB), like a layer's activations
ALLOC_TOL = 1 * MB  # allocator bookkeeping around one block


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@glibc
def test_freed_blocks_stay_in_the_process():
    """With glibc's defaults a freed 64 MiB block is unmapped at once (the
    resident set drops by 64 MiB and the next one is page-faulted afresh)."""
    assert retain_freed_memory() is True
    assert runtime_info()["heap_retained"] is True
    x = torch.empty(BLOCK // 4).fill_(1.0)
    held = rss()
    del x
    assert held - rss() < ALLOC_TOL


@glibc
def test_heap_in_use_follows_live_tensors():
    retain_freed_memory()
    base = heap_in_use()
    x = torch.empty(BLOCK // 4)
    assert abs(heap_in_use() - base - BLOCK) < ALLOC_TOL
    del x
    assert abs(heap_in_use() - base) < ALLOC_TOL


def test_opt_out_keeps_glibc_defaults():
    code = "from forward_influence.runtime.host import retain_freed_memory as r; print(r())"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "FI_RETAIN_HEAP": "0"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "False"


def test_library_calls_leave_the_allocator_alone():
    """The glibc setting is the entry points' choice (issue 16, item 5): building
    a model and an engine does not make it."""
    code = (
        "from forward_influence.hf.random_models import tiny_model\n"
        "from forward_influence.measurement.engine import ForwardInfluenceEngine\n"
        "from forward_influence.runtime.host import runtime_info\n"
        "ForwardInfluenceEngine(tiny_model())\n"
        "print(runtime_info()['heap_retained'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_measure_leaves_the_global_rng_alone():
    """Issue 16, item 5: measure() seeds no global RNG (its draws take their own
    generators), so a caller's torch random stream goes on as it was."""
    from conftest import TinySource

    from forward_influence import MeasureConfig, measure

    torch.manual_seed(1234)
    before = torch.get_rng_state()
    measure(
        MeasureConfig(n_prefix=(48,), n_future=16, max_docs=1, words=False, progress=False, report=False, batch_size=4),
        source=TinySource(),
    )
    assert torch.equal(torch.get_rng_state(), before)
