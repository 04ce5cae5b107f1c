"""The per-device defaults table is the one place the package reads them from (tier 1)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import tiny_model

from forward_influence.compress import CompressedCache, get_compressor
from forward_influence.hf import attention
from forward_influence.hf.models import resolve_dtype
from forward_influence.measurement import engine
from forward_influence.measurement.engine import Ablation, ForwardInfluenceEngine
from forward_influence.runtime import host
from forward_influence.runtime.devices import DEFAULTS, SOURCES, DeviceDefaults, defaults_for, parse_recommendations


def set_row(monkeypatch, device: str, **changes) -> None:
    monkeypatch.setitem(DEFAULTS, device, dataclasses.replace(DEFAULTS[device], **changes))


def test_every_field_has_a_source():
    names = {f.name for f in dataclasses.fields(DeviceDefaults)}
    assert set(DEFAULTS) == set(SOURCES) == {"cpu", "cuda"}
    assert all(set(SOURCES[d]) == names for d in SOURCES)
    assert defaults_for(torch.device("cuda", 1)) is DEFAULTS["cuda"] and defaults_for("mps") is DEFAULTS["cpu"]


def test_auto_dtype_comes_from_the_table(monkeypatch):
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    set_row(monkeypatch, "cuda", dtype="float16")
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16


def test_batch_cap_and_workspaces_come_from_the_table(monkeypatch):
    set_row(monkeypatch, "cpu", batch_cap=3, score_bytes=12345, logit_bytes=1 << 20, kl_bytes=4096)
    eng = ForwardInfluenceEngine(tiny_model())
    assert eng.auto_batch_size(30, 14) == 3
    assert (eng.max_score_bytes, eng.logit_bytes, eng.kl_bytes) == (12345, 1 << 20, 4096)


def test_cuda_workspaces_are_capped_by_free_memory(monkeypatch):
    free = 4 << 30
    monkeypatch.setattr(host, "available_bytes", lambda device: free)
    row = DEFAULTS["cuda"]
    for key, name in (("scores", "score_bytes"), ("logits", "logit_bytes"), ("kl", "kl_bytes")):
        assert engine._workspace(torch.device("cuda"), key, None) == min(
            getattr(row, name), int(free * row.workspace_free_fraction)
        )
    assert engine._workspace(torch.device("cuda"), "scores", 777) == 777


@pytest.mark.parametrize("kernel, fused", [("flash", True), ("matmul", False)])
def test_auto_kernel_comes_from_the_table(kernel, fused, monkeypatch, ids):
    set_row(monkeypatch, "cpu", kernel=kernel)
    calls = []
    real = attention._ablated_attention_flash
    monkeypatch.setattr(attention, "_ablated_attention_flash", lambda *a: calls.append(1) or real(*a))
    ForwardInfluenceEngine(tiny_model(), batch_size=2).split(ids, 30, 14, [Ablation((3,))])
    assert bool(calls) is fused


def test_entropy_chunk_comes_from_the_table(monkeypatch):
    set_row(monkeypatch, "cpu", entropy_logit_bytes=4096)
    assert CompressedCache(tiny_model(), get_compressor("infokv")).chunk_bytes == 4096


def test_parse_recommendations_converts_and_validates():
    got = parse_recommendations(
        [
            "speed_x=3",
            "recommend_cuda_score_bytes=268435456",
            "recommend_cuda_kernel=flash",
            "recommend_cpu_batch_cap=8",
        ]
    )
    assert got == {("cuda", "score_bytes"): 268435456, ("cuda", "kernel"): "flash", ("cpu", "batch_cap"): 8}
    with pytest.raises(ValueError, match="valid: dtype, kernel"):
        parse_recommendations(["recommend_cuda_batchcap=3"])
    with pytest.raises(ValueError, match="valid: cpu, cuda"):
        parse_recommendations(["recommend_tpu_batch_cap=3"])
    with pytest.raises(ValueError, match="kernel must be one of flash, matmul"):
        parse_recommendations(["recommend_cuda_kernel=fast"])
