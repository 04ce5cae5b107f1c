#!/usr/bin/env python
"""Where the time goes: the engine's split and the naive loop, per component.

Wall-clock time inside each decoder layer's attention (its q/k/v/o
projections apart from the rest), MLP and norms, and in the LM head + KL,
summed over a run and divided by the number of ablations; one engine split
and then the naive loop on the same positions. A diagnosis for optimising
(``scripts/bench_ablation.py`` is the benchmark): the two parts run one after
the other, so on a machine whose speed drifts compare the shares, not
seconds across the two.

Usage: ``python scripts/profile_engine.py [--n-prefix 1024] [--n-future 256] [--n-positions 32]``
"""

from __future__ import annotations

import argparse
import collections
import time

import numpy as np

from forward_influence.hf.models import load_model
from forward_influence.measurement.documents import load_documents, tokenize
from forward_influence.measurement.engine import Ablation, ForwardInfluenceEngine
from forward_influence.measurement.reference import float32_kl, naive_split_logits


class Timers:
    """Forward hooks that add up wall time per component name."""

    def __init__(self, model):
        self.total = collections.defaultdict(float)
        self._start: dict[str, float] = {}
        self._handles = []
        for layer in model.model.layers:
            self._wrap("attention", layer.self_attn)
            self._wrap("mlp", layer.mlp)
            self._wrap("norms", layer.input_layernorm)
            self._wrap("norms", layer.post_attention_layernorm)
            for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
                self._wrap("qkvo", getattr(layer.self_attn, proj))

    def _wrap(self, name, module):
        def pre(_m, _a):
            self._start[name] = time.perf_counter()

        def post(_m, _a, _o):
            self.total[name] += time.perf_counter() - self._start[name]

        self._handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]

    def report(self, wall: float, n: int, extra: dict[str, float]) -> str:
        t = dict(self.total)
        t["attention"] -= t.get("qkvo", 0.0)  # the attention proper
        t.update(extra)
        t["other"] = wall - sum(t.values())
        return ", ".join(f"{k} {v / n:.3f}" for k, v in t.items()) + f"  (total {wall / n:.3f} s per ablation)"

    def remove(self):
        for h in self._handles:
            h.remove()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n-prefix", type=int, default=1024)
    ap.add_argument("--n-future", type=int, default=256)
    ap.add_argument("--n-positions", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=None)
    args = ap.parse_args()
    from forward_influence.runtime.host import retain_freed_memory

    retain_freed_memory()  # CPU timings as fi-measure runs (forward_influence.runtime.host)
    lm = load_model(args.model)
    model, n, f = lm.model, args.n_prefix, args.n_future
    ids = tokenize(lm.tokenizer, load_documents(None)[0], max_tokens=n + f).input_ids
    pos = np.linspace(0, n - 1, args.n_positions).round().astype(int).tolist()
    eng = ForwardInfluenceEngine(model, batch_size=args.batch_size)
    pre = eng.prefill(ids[:n])
    eng.split(ids, n, f, [Ablation((0,))], prefill=pre)  # warm-up

    timers = Timers(model)
    kl_time = [0.0]
    kl_rows = eng._kl_rows

    def timed_kl(*a, **k):
        t = time.perf_counter()
        out = kl_rows(*a, **k)
        kl_time[0] += time.perf_counter() - t
        return out

    eng._kl_rows = timed_kl
    t = time.perf_counter()
    eng.split(ids, n, f, [Ablation((p,)) for p in pos], prefill=pre)
    wall = time.perf_counter() - t
    print(
        f"engine N={n} F={f} batch={eng.auto_batch_size(n, f)}: "
        + timers.report(wall, len(pos), {"lm_head+kl": kl_time[0]})
    )

    timers.remove()
    timers = Timers(model)
    head = [0.0]
    h0 = {}
    model.lm_head.register_forward_pre_hook(lambda *_: h0.__setitem__("t", time.perf_counter()))
    model.lm_head.register_forward_hook(lambda *_: head.__setitem__(0, head[0] + time.perf_counter() - h0["t"]))
    it = naive_split_logits(model, ids, n, f, pos)
    ref = next(it)
    timers.total.clear()
    head[0] = 0.0
    kl = 0.0
    t = time.perf_counter()
    for lg in it:
        t1 = time.perf_counter()
        float32_kl(ref, lg)
        kl += time.perf_counter() - t1
    wall = time.perf_counter() - t
    print(f"naive  N={n} F={f}: " + timers.report(wall, len(pos), {"lm_head+kl": head[0] + kl}))


if __name__ == "__main__":
    main()
