"""Measuring speed: model shapes without weights, matmul peak, FLOPs, peak memory.

Shared by ``scripts/bench_ablation.py`` and ``scripts/gpu_check.py``. A speed
figure needs the shape of a model, not its weights (FLOPs and memory traffic
do not depend on them), so :func:`shaped_model` builds a randomly
initialised model from one of :data:`SHAPES` (the public configs of the
study's models, the embedded model and a tiny one) with no file, tokenizer
or network — what a bare GPU machine can run.

>>> cfg = shape_config("tiny")
>>> cfg.num_hidden_layers, cfg.vocab_size
(4, 256)
>>> round(flops_per_ablation(cfg, n=64, f=16)["total"] / 1e6, 1)
6.4
"""

from __future__ import annotations

import threading
import time
from typing import Any

import torch

from forward_influence.hf import anatomy
from forward_influence.hf.random_models import SHAPES, shape_config, shaped_model  # noqa: F401  (re-exported)
from forward_influence.runtime.host import heap_in_use


def random_ids(n: int, vocab: int, seed: int = 0) -> torch.Tensor:
    """``(n,)`` uniformly random token ids (timings do not depend on the text)."""
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed))


def sync(device: torch.device | str) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class MatmulProbe:
    """Sustained ``n x n x n`` matmul rate in ``dtype``, sampled in short probes
    (each call runs matmuls back to back for ``seconds``)."""

    def __init__(self, dev: torch.device, dtype: torch.dtype, seconds: float, n: int = 2048):
        self.dev, self.seconds, self.n = dev, seconds, n
        self.a = torch.randn(n, n, device=dev, dtype=dtype)
        self.b = torch.randn(n, n, device=dev, dtype=dtype)
        self.work = 0.0  # FLOPs done
        self.time = 0.0  # seconds spent
        self.best = float("inf")  # fastest single matmul
        for _ in range(2):
            torch.mm(self.a, self.b)  # warm-up
        sync(dev)

    def __call__(self) -> None:
        sync(self.dev)
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < self.seconds:
            t = time.perf_counter()
            torch.mm(self.a, self.b)
            sync(self.dev)
            self.best = min(self.best, time.perf_counter() - t)
            self.work += 2 * self.n**3
        self.time += time.perf_counter() - t0

    @property
    def sustained(self) -> float:
        """GFLOP/s over all probes."""
        return self.work / self.time / 1e9

    @property
    def burst(self) -> float:
        """GFLOP/s of the fastest single matmul."""
        return 2 * self.n**3 / self.best / 1e9


def flops_per_ablation(cfg: Any, n: int, f: int) -> dict[str, float]:
    """Forward FLOPs of ``f`` tokens over a prefix of ``n`` (multiply-add = 2):
    ``linear``, ``attention``, ``lm_head`` and ``total``."""
    d, i, v, layers = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_hidden_layers
    hq = cfg.num_attention_heads
    hkv = anatomy.n_kv_heads(cfg)
    hd = getattr(cfg, "head_dim", None) or d // hq
    linear = 2 * f * layers * (d * hq * hd * 2 + d * hkv * hd * 2 + 3 * d * i)
    keys = f * n + f * (f + 1) / 2  # causal within the future block
    attention = 2 * 2 * layers * hq * hd * keys
    head = 2 * f * d * v
    return {"linear": linear, "attention": attention, "lm_head": head, "total": linear + attention + head}


class PeakMemory:
    """Peak working memory over a ``with`` block (``peak`` bytes, ``delta_mb``
    over the start): the CUDA allocator's peak (reset on entry), or on CPU
    the peak of glibc's in-use heap (the resident set size stays at its
    high-water mark once freed memory is retained, see
    :mod:`forward_influence.runtime.host`; RSS is the fallback off glibc), read
    after every module's forward and by a sampling thread."""

    def __init__(self, dev: torch.device):
        self.dev = torch.device(dev)
        self.peak = 0
        self._stop = threading.Event()
        self.source = "cuda" if self.dev.type == "cuda" else ("heap" if heap_in_use() is not None else "rss")

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    def sample(self, *_args: Any) -> None:
        self.peak = max(self.peak, heap_in_use() if self.source == "heap" else self.rss())

    def __enter__(self) -> PeakMemory:
        if self.dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.sample()
            self.base = self.peak
            self._hook = torch.nn.modules.module.register_module_forward_hook(self.sample)
            self._t = threading.Thread(target=self._loop, daemon=True)
            self._t.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(0.002)

    def __exit__(self, *exc: Any) -> None:
        if self.dev.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._t.join()
            self._hook.remove()
            self.sample()
        self.delta_mb = (self.peak - self.base) / 2**20
