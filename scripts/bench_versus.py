#!/usr/bin/env python
"""Benchmark: the ablation engine of this tree against another tree (a worktree of an earlier commit).

A refactor must not slow the engine. Two worker processes, one importing
``forward_influence`` from each tree (``PYTHONPATH``), load the embedded model
once, then time the same ``ForwardInfluenceEngine.split`` (N = ``--n-prefix``,
F = ``--n-future``, ``--n-positions`` ablated positions of the first built-in
SQuAD article, batch ``--batch-size``) in turns: A, B, B, A, A, B, ... so drift
in a shared machine's speed falls on both. Each worker uses ``--threads``
torch threads; only one runs at a time. The ratio is of the median
ablations per second.

Usage::

    git worktree add /tmp/fi-before <commit before the change>
    python scripts/bench_versus.py /tmp/fi-before [--rounds 6]

The last line is ``engine_ratio=X.XXX`` (this tree over the other; >= 1: not slower).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

from tree_worker import ask, start_worker

ROOT = Path(__file__).resolve().parents[1]

WORKER = r"""
import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
from forward_influence import Ablation, ForwardInfluenceEngine, load_documents, load_model, tokenize
n, f, k, b = (int(x) for x in sys.argv[2:6])
lm = load_model("smollm2-135m")
ids = torch.as_tensor(tokenize(lm.tokenizer, load_documents(None, max_docs=1)[0]).input_ids[: n + f])
assert ids.numel() == n + f, "the first SQuAD article is shorter than N + F"
eng = ForwardInfluenceEngine(lm.model, batch_size=b)
pos = [Ablation((int(p),)) for p in torch.linspace(4, n - 1, k).long().tolist()]
eng.split(ids, n, f, pos[:b])  # warm-up
print("ready", flush=True)
for line in sys.stdin:
    t = time.perf_counter()
    eng.split(ids, n, f, pos)
    print(f"{k / (time.perf_counter() - t):.4f}", flush=True)
"""


def start(tree: Path, args: argparse.Namespace) -> subprocess.Popen:
    argv = [str(v) for v in (args.threads, args.n_prefix, args.n_future, args.n_positions, args.batch_size)]
    return start_worker(tree, WORKER, argv, "bench_versus", {"FI_RETAIN_HEAP": os.environ.get("FI_RETAIN_HEAP", "1")})


def timed(p: subprocess.Popen) -> float:
    return float(ask(p))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("other", type=Path, help="the other source tree (e.g. a worktree of the commit before the change)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--n-prefix", type=int, default=512)
    ap.add_argument("--n-future", type=int, default=128)
    ap.add_argument("--n-positions", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args(argv)
    if not (args.other / "forward_influence" / "__init__.py").is_file():
        print(f"bench_versus: {args.other} has no forward_influence package; pass a source tree", file=sys.stderr)
        return 2
    workers = {"this": start(ROOT, args), "other": start(args.other.resolve(), args)}
    rates: dict[str, list[float]] = {"this": [], "other": []}
    order = ["this", "other"]
    for r in range(args.rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            rates[name].append(timed(workers[name]))
        print(f"round {r + 1}: this {rates['this'][-1]:.2f}, other {rates['other'][-1]:.2f} ablations/s", flush=True)
    for p in workers.values():
        p.stdin.close()
        p.wait(timeout=60)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(
        f"median ablations/s: this {med['this']:.2f}, other {med['other']:.2f} "
        f"(N={args.n_prefix}, F={args.n_future}, {args.n_positions} positions, batch {args.batch_size}, "
        f"{args.threads} threads)"
    )
    print(f"engine_ratio={med['this'] / med['other']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
