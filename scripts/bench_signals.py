#!/usr/bin/env python
"""Benchmark: all per-token signals of a 4,096-token document vs one plain forward.

Signals (forward_influence.measurement.signals): entropies (full and top-k, in and out),
surprisal, SnapKV and H2O attention per layer and KV head, key norms and the
representation change, computed in one recording prefill that also yields the
engine's KV cache, in split mode (two splits) and sliding mode (delay 32),
each timed on its own. The plain forward is ``model(ids)`` with the model's
own attention (sdpa) and full logits. Word tagging (spaCy) is timed on its own.

Last line: ``signals_over_forward=X.XX``, the slower mode (target <= 3.0 on the 2-core CPU).
"""

from __future__ import annotations

import argparse
import time

import torch

from forward_influence.hf import forwards
from forward_influence.hf.models import load_model
from forward_influence.measurement.collector import SignalCollector, SignalConfig
from forward_influence.measurement.documents import load_documents, tokenize
from forward_influence.measurement.words import tag_tokens


def best_of(fn, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    from forward_influence.runtime.host import retain_freed_memory

    retain_freed_memory()  # CPU timings as fi-measure runs (forward_influence.runtime.host)
    lm = load_model(args.model, device=args.device)
    docs = [d for d in load_documents(None)]
    tdoc = next(t for t in (tokenize(lm.tokenizer, d, max_tokens=args.tokens) for d in docs) if len(t) >= args.tokens)
    ids = tdoc.input_ids
    model = lm.model
    print(
        f"model {lm.name} on {lm.device} ({lm.dtype}), document {tdoc.doc.doc_id!r}: {len(ids)} tokens, "
        f"threads={torch.get_num_threads()}"
    )

    @torch.no_grad()
    def plain():
        model(ids[None].to(lm.device)).logits.sum().item()

    def signals(**mode):
        col = SignalCollector(model, len(ids), SignalConfig(words=False, **mode))
        pre = forwards.record_prefill(model, ids, on_tap=col.on_tap, layer_hooks=col.on_layer)
        col.feed_logits(pre.hidden, ids)
        col.values()
        return col

    t_fwd = best_of(plain, args.reps)
    t_split = best_of(lambda: signals(splits=(len(ids) // 2, len(ids) * 3 // 4)), args.reps)
    t_slide = best_of(lambda: signals(delay=32), args.reps)
    t_sig = max(t_split, t_slide)
    t_words = best_of(lambda: tag_tokens(tdoc.doc.text, tdoc.offsets), 1)
    print(f"plain forward (sdpa, full logits): {t_fwd:.2f} s")
    print(f"all signals in one prefill, split mode (N = T/2, 3T/4): {t_split:.2f} s")
    print(f"all signals in one prefill, sliding mode (D = 32):      {t_slide:.2f} s")
    print(f"spaCy words + alignment:           {t_words:.2f} s (text of {len(tdoc.doc.text)} chars)")
    print(f"signals_over_forward={t_sig / t_fwd:.2f}")


if __name__ == "__main__":
    main()
