#!/usr/bin/env python
"""What rounding does to Forward Influence: bfloat16 against float32 on the embedded model.

Runs the engine in float32 (the reference: its precision floor is ~1e-12)
and in bfloat16 on the same sources, and HF's own bfloat16 forward (the
naive loop) for comparison; prints the precision floor (the dithered null
row, :func:`forward_influence.hf.forwards.dither_embeddings`), the
batched-vs-lone noise floor, the bfloat16 error per (source, target) cell and
per source total, and how well the floor predicts that error. Both dtypes run
on the CPU here (bfloat16 matmuls are slow on it: ~2 min at the defaults); on
a GPU pass ``--device cuda``.

Usage: ``python scripts/precision_floor.py [--n-prefix 512] [--n-future 128] [--n-positions 16]``
"""

from __future__ import annotations

import argparse
import copy

import numpy as np
import torch

from forward_influence.hf.models import load_model
from forward_influence.measurement.documents import load_documents, tokenize
from forward_influence.measurement.engine import Ablation, ForwardInfluenceEngine
from forward_influence.measurement.kl import centred_kl
from forward_influence.measurement.reference import naive_split_logits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n-prefix", type=int, default=512)
    ap.add_argument("--n-future", type=int, default=128)
    ap.add_argument("--n-positions", type=int, default=16)
    args = ap.parse_args()
    from forward_influence.runtime.host import retain_freed_memory

    retain_freed_memory()  # CPU timings as fi-measure runs (forward_influence.runtime.host)
    lm = load_model(args.model, device=args.device, dtype="float32")
    n, f = args.n_prefix, args.n_future
    ids = tokenize(lm.tokenizer, load_documents(None)[0], max_tokens=n + f).input_ids
    pos = np.linspace(0, n - 1, args.n_positions).round().astype(int).tolist()
    abl = [Ablation((p,)) for p in pos]

    exact = ForwardInfluenceEngine(lm.model, batch_size=16).split(ids, n, f, abl)
    bf16 = copy.deepcopy(lm.model).to(torch.bfloat16)
    low = ForwardInfluenceEngine(bf16, batch_size=16).split(ids, n, f, abl)
    it = naive_split_logits(bf16, ids, n, f, pos)
    ref = next(it)
    naive = np.stack([centred_kl(ref, lg).double().cpu().numpy() for lg in it])

    truth = exact.kl
    tot = truth.sum(1)
    print(f"{args.model}, N={n}, F={f}, {len(pos)} sources; cells = (source, target) KLs")
    print(
        f"  true FI (float32 engine): median cell {np.median(truth):.2e}, "
        f"90th percentile {np.percentile(truth, 90):.2e}"
    )
    print(
        f"  float32 precision floor: median {np.median(exact.precision_floor):.2e}, max "
        f"{exact.precision_floor.max():.2e}; "
        f"cells below it {np.mean(truth < exact.precision_floor[None]):.2f}"
    )
    pf = low.precision_floor
    err = np.abs(low.kl - truth)
    print(
        f"  bfloat16 precision floor: median {np.median(pf):.2e}, max {pf.max():.2e}; "
        f"noise floor (batched vs lone null row): median {np.median(low.noise_floor):.2e}"
    )
    print(
        f"  bfloat16 engine error per cell: median {np.median(err):.2e} "
        f"(/ median precision floor = {np.median(err) / np.median(pf):.2f}); "
        f"cells below the floor {np.mean(low.kl < pf[None]):.2f}"
    )
    for name, x in (("engine", low.kl), ("naive loop (HF forward)", naive)):
        rel = np.abs(x.sum(1) - tot) / tot
        r = np.corrcoef(np.log(truth.ravel() + 1e-12), np.log(np.abs(x.ravel()) + 1e-12))[0, 1]
        print(
            f"  bfloat16 {name}: source totals off by a median factor {np.median(rel):.3g} (max {rel.max():.3g}); "
            f"log-KL correlation with float32 {r:.2f}"
        )
    print(
        f"precision_floor_bf16={np.median(pf):.2e} error_bf16={np.median(err):.2e} "
        f"precision_floor_fp32={np.median(exact.precision_floor):.2e}"
    )


if __name__ == "__main__":
    main()
