#!/usr/bin/env python
"""Benchmark: batched Forward Influence engine vs the naive ablation loop.

In one run on the embedded model (or ``--model``), for N = 512 and 1024 with
F = 256, on the same source positions:

* naive loop — per ablation: copy the prefix ``DynamicCache``, delete the
  entry, stock HF forward of the F future tokens, float32 KL;
* engine — :class:`forward_influence.engine.ForwardInfluenceEngine.split`.

Prints ablations/s of both and their ratio, the model FLOPs of one ablation
(linear layers, attention, LM head), this machine's measured matmul peak
(fp32 on CPU, bf16 on CUDA) and the engine's fraction of it, the agreement of
the KL row totals, and peak memory against batch size (it must grow only by
the future-window activations per row, not by a prefix cache per row).
The last line is ``speedup_vs_naive=X.XX fraction_of_peak=0.YY`` for N=1024.

Usage: ``python scripts/bench_ablation.py [--device cuda] [--n-positions 24]``
(``--random-init`` measures a randomly initialised model of the same shape:
FLOPs do not depend on the weights; used on machines without the GGUF).
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np
import torch

from forward_influence.documents import load_documents, tokenize
from forward_influence.engine import Ablation, ForwardInfluenceEngine, float32_kl, naive_split_logits
from forward_influence.kl import centred_kl
from forward_influence.models import load_model

AGREE_TOL = 1e-3  # max relative difference of KL row totals


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(dev: torch.device, dtype: torch.dtype, n: int = 2048, reps: int = 6) -> float:
    """Best-of-``reps`` GFLOP/s of an n x n x n matmul in ``dtype``."""
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    best = float("inf")
    for _ in range(reps):
        sync(dev)
        t = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        sync(dev)
        best = min(best, (time.perf_counter() - t) / 4)
    return 2 * n**3 / best / 1e9


def flops_per_ablation(cfg, n: int, f: int) -> dict[str, float]:
    """Forward FLOPs of F tokens over a prefix of N (multiply-add = 2)."""
    d, i, v, L = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_hidden_layers
    hq = cfg.num_attention_heads
    hkv = getattr(cfg, "num_key_value_heads", hq)
    hd = getattr(cfg, "head_dim", None) or d // hq
    linear = 2 * f * L * (d * hq * hd * 2 + d * hkv * hd * 2 + 3 * d * i)
    keys = f * n + f * (f + 1) / 2  # causal within the future block
    attention = 2 * 2 * L * hq * hd * keys
    head = 2 * f * d * v
    return {"linear": linear, "attention": attention, "lm_head": head, "total": linear + attention + head}


class PeakRSS:
    """Samples this process's resident memory (CPU) or CUDA peak allocation."""

    def __init__(self, dev: torch.device):
        self.dev = dev
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    def __enter__(self):
        if self.dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = self.rss()
            self.peak = self.base
            self._t = threading.Thread(target=self._loop, daemon=True)
            self._t.start()
        return self

    def _loop(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(0.005)

    def __exit__(self, *exc):
        if self.dev.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._t.join()
        self.delta_mb = (self.peak - self.base) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--n-prefix", default="512,1024")
    ap.add_argument("--n-future", type=int, default=256)
    ap.add_argument("--n-positions", type=int, default=32, help="ablated positions per N (same for both)")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--random-init", action="store_true", help="random weights of the model's shape")
    args = ap.parse_args()

    lm = load_model(args.model, device=args.device)
    model, dev = lm.model, lm.device
    if args.random_init:
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.02)
    dtype = lm.dtype
    print(f"model {lm.name} {lm.provenance()['architecture']} dtype={dtype} device={dev} threads={torch.get_num_threads()}")
    peak = matmul_peak(dev, dtype)
    print(f"measured matmul peak: {peak:.1f} GFLOP/s ({dtype})")
    doc = load_documents(None)[0]
    ns = [int(x) for x in args.n_prefix.split(",")]
    f = args.n_future
    ids = tokenize(lm.tokenizer, doc, max_tokens=max(ns) + f).input_ids
    last = None
    for n in ns:
        fl = flops_per_ablation(model.config, n, f)
        pos = np.linspace(0, n - 1, args.n_positions).round().astype(int).tolist()
        eng = ForwardInfluenceEngine(model, batch_size=args.batch_size)
        eng.split(ids, n, f, [Ablation((0,))])  # warm-up
        sync(dev)
        t = time.perf_counter()
        kept, naive32 = [], []
        for lg in naive_split_logits(model, ids, n, f, pos):  # reference first
            if kept:
                naive32.append(float32_kl(kept[0], lg).double().cpu().numpy())
            kept.append(lg.cpu())
        sync(dev)
        t_naive = time.perf_counter() - t
        naive32 = np.stack(naive32)
        naive_c = np.stack([centred_kl(kept[0], lg).numpy() for lg in kept[1:]])  # same logits, exact KL
        del kept
        pre = eng.prefill(ids[:n])
        sync(dev)
        t = time.perf_counter()
        res = eng.split(ids, n, f, [Ablation((p,)) for p in pos], prefill=pre)
        sync(dev)
        t_eng = time.perf_counter() - t
        tot_e = res.kl.sum(1)
        rel = np.abs(naive_c.sum(1) - tot_e) / np.maximum(np.abs(tot_e), 1e-30)
        rel32 = np.abs(naive32.sum(1) - tot_e) / np.maximum(np.abs(tot_e), 1e-30)
        a_naive, a_eng = len(pos) / t_naive, len(pos) / t_eng
        frac = a_eng * fl["total"] / 1e9 / peak
        frac_naive = a_naive * fl["total"] / 1e9 / peak
        bs = eng.auto_batch_size(n, f)
        print(
            f"N={n} F={f}: {len(pos)} ablations, batch={bs}\n"
            f"  FLOPs/ablation {fl['total'] / 1e9:.1f} G (linear {fl['linear'] / 1e9:.1f}, attention {fl['attention'] / 1e9:.1f}, lm_head {fl['lm_head'] / 1e9:.1f})\n"
            f"  naive  {a_naive:8.3f} abl/s  {frac_naive:.2f} of peak\n"
            f"  engine {a_eng:8.3f} abl/s  {frac:.2f} of peak   speedup {a_eng / a_naive:.2f}x\n"
            f"  KL row totals, engine vs naive logits with the centred KL: max rel diff {rel.max():.2e} "
            f"(tol {AGREE_TOL:g}) {'OK' if rel.max() <= AGREE_TOL else 'MISMATCH'}\n"
            f"  KL row totals, engine vs naive float32 KL: max rel diff {rel32.max():.2e} (the float32 sum's own error; "
            f"smallest row total {tot_e.min():.1e})\n"
            f"  noise floor (batched vs lone null row): max {res.noise_floor.max():.1e}"
        )
        last = (a_eng / a_naive, frac)
        # memory against batch size, on a few ablations
        prefix_mb = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in pre.prefix(n)) / 2**20
        mems = []
        for b in (1, 8, 32):
            e = ForwardInfluenceEngine(model, batch_size=b)
            with PeakRSS(dev) as m:
                e.split(ids, n, f, [Ablation((p,)) for p in pos[:b]], prefill=pre)
            mems.append((b, m.delta_mb))
        slope = (mems[-1][1] - mems[0][1]) / (mems[-1][0] - mems[0][0])
        print(
            "  peak memory over baseline: " + ", ".join(f"B={b}: {mb:.0f} MB" for b, mb in mems)
            + f"; {slope:.1f} MB per extra row vs prefix cache {prefix_mb:.0f} MB"
        )
    print(f"speedup_vs_naive={last[0]:.2f} fraction_of_peak={last[1]:.2f}")


if __name__ == "__main__":
    main()
