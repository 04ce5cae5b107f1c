#!/usr/bin/env python
"""Benchmark: batched Forward Influence engine vs the naive ablation loop.

In one run on the embedded model (or ``--model``), for N = 512 and 1024 with
F = 256, on the same source positions:

* naive loop — per ablation: copy the prefix ``DynamicCache``, delete the
  entry, stock HF forward of the F future tokens, float32 KL;
* engine — :class:`forward_influence.measurement.engine.ForwardInfluenceEngine.split`.

Prints ablations/s of both and their ratio, the model FLOPs of one ablation
(linear layers, attention, LM head), this machine's measured matmul rate
(fp32 on CPU, bf16 on CUDA) and the engine's fraction of it, the agreement of
the KL row totals, and peak memory against batch size (it must grow only by
the future-window activations per row, not by a prefix cache per row).
The last line is ``speedup_vs_naive=X.XX fraction_of_peak=0.YY`` for N=1024.

Shared machines change speed by tens of percent within seconds (on the
2-core reference VM sustained 2048^3 fp32 matmuls ranged 77-137 GFLOP/s over
one half-minute, single bursts up to 158), so a peak taken once at the start
and loops timed one after the other compare different machines. Here the
three are interleaved: after each engine batch of B ablations the naive loop
does its next B ablations, then a matmul probe runs for ``--probe-s``
seconds (one probe also runs before the first batch). Each is timed on its
own; the peak is the probes' sustained mean (matmuls back to back, the same
sustained conditions as the loops), and the best single matmul (burst) is
printed beside it.

Usage: ``python scripts/bench_ablation.py [--device cuda] [--n-positions 64]``
(``--random-init`` measures a randomly initialised model of the same shape:
FLOPs do not depend on the weights; ``--shape llama3.1-8b`` builds one of the
study's shapes from its config, with no weights or tokenizer to load, for a
GPU machine that holds neither).

A split has fixed rows (the engine: the null reference, the dithered null row
of the precision floor and the lone null row of the noise floor; the naive
loop: its reference forward), all in the first batch; the rates after the
first batch are printed too (what a split with many sources, e.g. fi-measure
at stride 1, approaches).
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import torch

from forward_influence.hf.models import load_model, resolve_device, resolve_dtype
from forward_influence.measurement.documents import load_documents, tokenize
from forward_influence.measurement.engine import Ablation, ForwardInfluenceEngine
from forward_influence.measurement.kl import centred_kl
from forward_influence.measurement.reference import float32_kl, naive_split_logits
from forward_influence.runtime.host import retain_freed_memory, runtime_info
from forward_influence.tools.perf import SHAPES, MatmulProbe, PeakMemory, flops_per_ablation, shaped_model, sync

AGREE_TOL = 1e-3  # max relative difference of KL row totals


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument(
        "--shape", choices=sorted(SHAPES), default=None, help="random model of a study shape instead of --model"
    )
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--n-prefix", default="512,1024")
    ap.add_argument("--n-future", type=int, default=256)
    ap.add_argument("--n-positions", type=int, default=64, help="ablated positions per N (same for both)")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--probe-s", type=float, default=1.5, help="seconds of each matmul probe")
    ap.add_argument("--random-init", action="store_true", help="random weights of the model's shape")
    args = ap.parse_args()

    ns = [int(x) for x in args.n_prefix.split(",")]
    f = args.n_future
    if args.shape:
        dev = resolve_device(args.device)
        dtype = resolve_dtype(args.dtype, dev)
        model = shaped_model(args.shape, dev, dtype)
        name = args.shape + " (random init)"
        ids = torch.randint(0, model.config.vocab_size, (max(ns) + f,), generator=torch.Generator().manual_seed(0))
    else:
        lm = load_model(args.model, device=args.device, dtype=args.dtype)
        model, dev, dtype, name = lm.model, lm.device, lm.dtype, lm.name
        if args.random_init:
            with torch.no_grad():
                for p in model.parameters():
                    p.normal_(0, 0.02)
        ids = tokenize(lm.tokenizer, load_documents(None)[0], max_tokens=max(ns) + f).input_ids
    if dev.type == "cpu":
        retain_freed_memory()  # as load_model does (forward_influence.runtime.host)
    rt = runtime_info()
    print(
        f"model {name} {type(model).__name__} dtype={dtype} device={dev} threads={rt['threads']} "
        f"heap_retained={rt['heap_retained']}"
    )
    last = None
    for n in ns:
        fl = flops_per_ablation(model.config, n, f)
        pos = np.linspace(0, n - 1, args.n_positions).round().astype(int).tolist()
        eng = ForwardInfluenceEngine(model, batch_size=args.batch_size)
        bs = eng.auto_batch_size(n, f)
        pre = eng.prefill(ids[:n])
        eng.split(ids, n, f, [Ablation((0,))], prefill=pre)  # warm-up
        probe = MatmulProbe(dev, dtype, args.probe_s)
        naive = naive_split_logits(model, ids, n, f, pos)  # reference first, then one per position
        kept, naive32 = [], []
        clock = {"naive": 0.0, "aside": 0.0}
        marks = []  # (engine seconds so far, ablations done) at each batch end
        naive_marks = []  # naive seconds so far, at the same points

        def naive_step(k: int) -> None:
            sync(dev)
            t = time.perf_counter()
            for lg in itertools.islice(naive, k):
                if kept:
                    naive32.append(float32_kl(kept[0], lg).double().cpu().numpy())
                kept.append(lg.cpu())
            sync(dev)
            clock["naive"] += time.perf_counter() - t

        def between_batches(done: int) -> None:  # the engine's progress callback: not engine time
            t = time.perf_counter()
            marks.append((t - t_start - clock["aside"], done))
            naive_step(done + (0 if kept else 1))
            naive_marks.append(clock["naive"])
            probe()
            clock["aside"] += time.perf_counter() - t

        probe()
        sync(dev)
        t_start = time.perf_counter()
        res = eng.split(ids, n, f, [Ablation((p,)) for p in pos], prefill=pre, progress=between_batches)
        sync(dev)
        t_eng = time.perf_counter() - t_start - clock["aside"]
        # steady state: the batches after the first, which carries the split's fixed rows
        # (null reference, dithered null row, and the lone null row of the noise floor);
        # the naive loop's fixed cost, its reference forward, is in its first batch too
        steady = (len(pos) - marks[0][1]) / (t_eng - marks[0][0]) if len(marks) > 1 else float("nan")
        t_naive = clock["naive"]
        naive32 = np.stack(naive32)
        naive_c = np.stack([centred_kl(kept[0], lg).numpy() for lg in kept[1:]])  # same logits, exact KL
        kept.clear()  # ~F x V floats per ablation
        tot_e = res.kl.sum(1)
        rel = np.abs(naive_c.sum(1) - tot_e) / np.maximum(np.abs(tot_e), 1e-30)
        rel32 = np.abs(naive32.sum(1) - tot_e) / np.maximum(np.abs(tot_e), 1e-30)
        a_naive, a_eng = len(pos) / t_naive, len(pos) / t_eng
        steady_naive = (len(pos) - marks[0][1]) / (t_naive - naive_marks[0]) if len(marks) > 1 else float("nan")
        peak = probe.sustained
        frac = a_eng * fl["total"] / 1e9 / peak
        frac_naive = a_naive * fl["total"] / 1e9 / peak
        print(
            f"N={n} F={f}: {len(pos)} ablations, batch={bs}, interleaved with the naive loop and {args.probe_s:g} s "
            "matmul probes\n"
            f"  FLOPs/ablation {fl['total'] / 1e9:.1f} G (linear {fl['linear'] / 1e9:.1f}, "
            f"attention {fl['attention'] / 1e9:.1f}, lm_head {fl['lm_head'] / 1e9:.1f})\n"
            f"  matmul {probe.n}^3 {str(dtype).removeprefix('torch.')}: sustained {peak:.1f} GFLOP/s over "
            f"{probe.time:.0f} s of probes (best single {probe.burst:.1f})\n"
            f"  naive  {a_naive:8.3f} abl/s  {frac_naive:.2f} of peak ({frac_naive * peak / probe.burst:.2f} of best "
            "single)\n"
            f"  engine {a_eng:8.3f} abl/s  {frac:.2f} of peak ({frac * peak / probe.burst:.2f} of best single)   "
            f"speedup {a_eng / a_naive:.2f}x\n"
            f"  after the first batch (a split's fixed rows paid): naive {steady_naive:.3f} abl/s, engine "
            f"{steady:.3f} abl/s, speedup {steady / steady_naive:.2f}x\n"
            f"  KL row totals, engine vs naive logits with the centred KL: max rel diff {rel.max():.2e} "
            + (
                f"(tol {AGREE_TOL:g}) {'OK' if rel.max() <= AGREE_TOL else 'MISMATCH'}\n"
                if dtype == torch.float32
                else f"(not checked in {str(dtype).removeprefix('torch.')}: both forwards carry rounding noise "
                "of the size of the precision floor below; "
                "the agreement check is a float32 one)\n"
            )
            + f"  KL row totals, engine vs naive float32 KL: max rel diff {rel32.max():.2e} "
            + "(the float32 sum's own error; "
            f"smallest row total {tot_e.min():.1e})\n"
            f"  noise floor (batched vs lone null row): max {res.noise_floor.max():.1e}; "
            + (
                "later batches reused the first null row (bitwise batch-invariant)"
                if res.shared_reference
                else "a null row in every batch"
            )
            + "\n"
            "  precision floor (dithered null row, one extra row per split): median "
            f"{np.median(res.precision_floor):.1e}, "
            f"max {res.precision_floor.max():.1e}; smallest KL cell {res.kl.min():.1e}"
        )
        last = (a_eng / a_naive, frac)
        # memory against batch size, on a few ablations
        prefix_mb = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in pre.prefix(n)) / 2**20
        mems = []
        for b in (1, 8, 32):
            e = ForwardInfluenceEngine(model, batch_size=b)
            with PeakMemory(dev) as m:
                e.split(ids, n, f, [Ablation((p,)) for p in pos[:b]], prefill=pre)
            mems.append((b, m.delta_mb))
        slope = (mems[-1][1] - mems[0][1]) / (mems[-1][0] - mems[0][0])
        print(
            f"  peak memory over baseline ({m.source}): "
            + ", ".join(f"B={b}: {mb:.0f} MB" for b, mb in mems)
            + f"; {slope:.1f} MB per extra row vs prefix cache {prefix_mb:.0f} MB"
        )
    print(f"speedup_vs_naive={last[0]:.2f} fraction_of_peak={last[1]:.2f}")


if __name__ == "__main__":
    main()
