#!/usr/bin/env python
"""Benchmark: all per-token signals of a 4,096-token document vs one plain forward.

Signals (the registry of ``forward_influence.measurement.signals``): entropies (full and top-k, in and
out), surprisal, SnapKV and H2O attention per layer and KV head, key norms (absolute and relative to the
preceding keys) and the representation change, computed in one recording prefill that also yields the
engine's KV cache, in split mode (two splits) and sliding mode (delay 32), each timed on its own. The
plain forward is ``model(ids)`` with the model's own attention (sdpa) and full logits. Word tagging
(spaCy) is timed on its own.

``--versus TREE`` times another source tree's signals the same way in turns with this one (two worker
processes, one importing ``forward_influence`` from each tree; A, B, B, A, ...), so before and after a
change are measured in one run on the same load.

Last line: ``signals_over_forward=X.XX``, the slower mode (target <= 1.5 on the 2-core CPU).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
from pathlib import Path

from tree_worker import ask, start_worker

ROOT = Path(__file__).resolve().parents[1]

WORKER = r"""
import sys, time, torch
from forward_influence.hf import forwards
from forward_influence.hf.models import load_model
from forward_influence.measurement.documents import load_documents, tokenize
try:  # the registry (after issue 24)
    from forward_influence.measurement.collector import SignalCollector, SignalConfig
    NEW = True
except ImportError:  # the collector before it
    from forward_influence.measurement.signals import SignalCollector, SignalConfig
    NEW = False
n_tokens = int(sys.argv[1])
from forward_influence.runtime.host import retain_freed_memory
retain_freed_memory()
lm = load_model("smollm2-135m")
docs = (tokenize(lm.tokenizer, d, max_tokens=n_tokens) for d in load_documents(None))
tdoc = next(t for t in docs if len(t) >= n_tokens)
ids, model = tdoc.input_ids, lm.model

@torch.no_grad()
def plain():
    model(ids[None].to(lm.device)).logits.sum().item()

def signals(**mode):
    col = SignalCollector(model, len(ids), SignalConfig(words=False, **mode))
    if NEW:
        pre = forwards.record_prefill(model, ids, on_tap=col.on_tap, layer_hooks=col.on_layer)
        col.feed_logits(pre.hidden, ids); col.values()
    else:
        pre = forwards.record_prefill(model, ids, col.on_attention, col.on_layer)
        col.logit_signals(pre.hidden, ids)

def timed(f):
    t = time.perf_counter(); f(); return time.perf_counter() - t

print("ready", flush=True)
for line in sys.stdin:
    t_fwd = timed(plain)
    t_split = timed(lambda: signals(splits=(len(ids) // 2, len(ids) * 3 // 4)))
    t_slide = timed(lambda: signals(delay=32))
    print(f"{t_fwd:.4f} {t_split:.4f} {t_slide:.4f}", flush=True)
"""


def start(tree: Path, tokens: int) -> subprocess.Popen:
    return start_worker(tree, WORKER, [str(tokens)], "bench_signals")


def round_of(p: subprocess.Popen) -> tuple[float, float, float]:
    fwd, split, slide = (float(x) for x in ask(p).split())
    return fwd, split, slide


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--versus", type=Path, default=None, help="another source tree, timed in turns with this one")
    args = ap.parse_args()
    trees = {"this": ROOT} | ({"other": args.versus.resolve()} if args.versus else {})
    workers = {k: start(v, args.tokens) for k, v in trees.items()}
    ratios: dict[str, list[tuple[float, float]]] = {k: [] for k in trees}
    order = list(trees)
    for r in range(args.rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            fwd, split, slide = round_of(workers[name])
            ratios[name].append((split / fwd, slide / fwd))
            print(
                f"round {r + 1} {name}: plain forward {fwd:.2f} s, signals split {split:.2f} s "
                f"({split / fwd:.2f}x), sliding {slide:.2f} s ({slide / fwd:.2f}x)",
                flush=True,
            )
    for p in workers.values():
        p.stdin.close()
        p.wait(timeout=120)
    med = {k: (statistics.median(a for a, _ in v), statistics.median(b for _, b in v)) for k, v in ratios.items()}
    for k, (a, b) in med.items():
        print(
            f"{k} ({trees[k]}): signals over a plain forward, median of {args.rounds}: split {a:.2f}x, sliding {b:.2f}x"
        )
    if args.versus:
        print(f"signals_over_forward_other={max(med['other']):.2f}")
    print(f"signals_over_forward={max(med['this']):.2f}")


if __name__ == "__main__":
    main()
