"""Choose InfoKV's normalisation, mixing weight and representation reading by prefill fidelity.

The study publishes none of them. On the 11 CC BY papers of ``data/arxiv.json``: prefix ``N`` compressed to each
budget, the next ``F`` tokens teacher-forced; mean KL to the full-cache
predictions and the change in NLL, per configuration, averaged over
documents (± the standard error over documents). One prefill per document
serves every configuration (``CompressedCache.fork``). ``mix = 0`` is SnapKV
(whatever the norm and the reading). ``--reps`` compares the two readings of
the representation term (``per_layer``: ``1 - cos(h_l0, h_l)`` per layer;
``early_final``: ``1 - cos(h_l0, h_L)`` at every layer; see
:mod:`forward_influence.compress.infokv`).

    python scripts/tune_infokv.py                              # 11 papers, N=1024, F=128, both readings
    python scripts/tune_infokv.py --reps per_layer             # one reading: half the configurations
    python scripts/tune_infokv.py --max-docs 2 --n-prefix 512  # a quick check

Writes ``runs/tune_infokv/fidelity.csv`` and prints the table (markdown) and
the best configuration: ``best norm=... mix=... rep=...``.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from forward_influence import load_documents, load_model, tokenize
from forward_influence.compress import CompressedCache, InfoKV
from forward_influence.compress.infokv import REPS
from forward_influence.measurement.kl import centred_kl

ROOT = Path(__file__).resolve().parents[1]
PAPERS = ROOT / "data" / "arxiv.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--doc", default=str(PAPERS), help="documents (default data/arxiv.json; none: the built-in SQuAD articles)"
    )
    ap.add_argument("--n-prefix", type=int, default=1024)
    ap.add_argument("--n-future", type=int, default=128)
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.2, 0.4])
    ap.add_argument("--mixes", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2, 0.3, 0.5])
    ap.add_argument("--norms", nargs="+", default=["max", "sum", "zscore", "rank"])
    ap.add_argument(
        "--reps", default=",".join(REPS), help=f"representation readings, comma-separated (default {','.join(REPS)})"
    )
    ap.add_argument("--max-docs", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "runs" / "tune_infokv"))
    args = ap.parse_args()
    reps = [r for r in args.reps.split(",") if r]
    if not reps or any(r not in REPS for r in reps):
        ap.error(f"--reps: choose from {', '.join(REPS)}, got {args.reps!r}")
    torch.manual_seed(0)
    lm = load_model("smollm2-135m")
    model, tok = lm.model, lm.tokenizer
    n, f = args.n_prefix, args.n_future
    rows = []
    t0 = time.time()
    for doc in load_documents(args.doc, max_docs=args.max_docs):
        ids = tokenize(tok, doc, max_tokens=n + f).input_ids
        if ids.shape[0] < n + f:
            print(f"skip {doc.doc_id}: {ids.shape[0]} tokens < {n + f}")
            continue
        base = CompressedCache(model, InfoKV())
        base.extend(ids[:n])
        ref = base.fork().extend(ids[n:], all_logits=True)  # full cache
        nll_ref = torch.nn.functional.cross_entropy(ref[:-1], ids[n + 1 :]).item()
        for budget, norm, mix, rep in itertools.product(args.budgets, args.norms, args.mixes, reps):
            if mix == 0 and (norm, rep) != (args.norms[0], reps[0]):
                continue  # mix 0 is SnapKV whatever the norm and the reading
            cache = base.fork(InfoKV(budget=budget, norm=norm, mix=mix, rep=rep))
            cache.cut(budget * n)
            out = cache.extend(ids[n:], all_logits=True)
            rows.append(
                dict(
                    doc_id=doc.doc_id,
                    budget=budget,
                    norm="snapkv" if mix == 0 else norm,
                    mix=mix,
                    rep="-" if mix == 0 else rep,
                    kl=float(centred_kl(ref, out).mean()),
                    dnll=torch.nn.functional.cross_entropy(out[:-1], ids[n + 1 :]).item() - nll_ref,
                )
            )
        print(f"{doc.doc_id}: done ({time.time() - t0:.0f} s)", flush=True)
    df = pd.DataFrame(rows)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    df.to_csv(Path(args.out) / "fidelity.csv", index=False)
    se = lambda x: x.std(ddof=1) / np.sqrt(len(x))  # noqa: E731
    table = (
        df.groupby(["budget", "norm", "mix", "rep"])
        .agg(kl=("kl", "mean"), kl_se=("kl", se), dnll=("dnll", "mean"), docs=("doc_id", "nunique"))
        .reset_index()
    )
    print("| " + " | ".join(table.columns) + " |\n|" + "---|" * len(table.columns))
    for r in table.itertuples(index=False):
        print("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in r) + " |")
    overall = df[df.mix > 0].groupby(["norm", "mix", "rep"]).kl.mean().sort_values()
    snap = df[df.mix == 0].kl.mean()
    for rep in reps:
        best = overall.xs(rep, level="rep")
        print(f"rep={rep}: best InfoKV {best.iloc[0]:.4f} (norm={best.index[0][0]} mix={best.index[0][1]})")
    print(f"mean KL over budgets: SnapKV {snap:.4f}; best InfoKV {overall.iloc[0]:.4f}")
    norm, mix, rep = overall.index[0]
    print(f"best norm={norm} mix={mix} rep={rep}  ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
