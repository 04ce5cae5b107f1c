"""Choose InfoKV's normalisation and mixing weight by prefill fidelity.

The study publishes neither. On the 11 CC BY papers of ``data/arxiv.json``: prefix ``N`` compressed to each
budget, the next ``F`` tokens teacher-forced; mean KL to the full-cache
predictions and the change in NLL, per configuration, averaged over
documents (± the standard error over documents). One prefill per document
serves every configuration (``CompressedCache.fork``). ``mix = 0`` is SnapKV.

    python scripts/tune_infokv.py                 # 11 papers, N=1024, F=128: ~5 min on 2 cores

Writes ``runs/tune_infokv/fidelity.csv`` and prints the table (markdown) and
the best configuration: ``best norm=... mix=...``.
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
from forward_influence.kl import centred_kl

ROOT = Path(__file__).resolve().parents[1]
PAPERS = ROOT / "data" / "arxiv.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--doc", default=str(PAPERS), help="documents (default data/arxiv.json; none: the built-in SQuAD articles)")
    ap.add_argument("--n-prefix", type=int, default=1024)
    ap.add_argument("--n-future", type=int, default=128)
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.2, 0.4])
    ap.add_argument("--mixes", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2, 0.3, 0.5])
    ap.add_argument("--norms", nargs="+", default=["max", "sum", "zscore", "rank"])
    ap.add_argument("--max-docs", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "runs" / "tune_infokv"))
    args = ap.parse_args()
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
        for budget, norm, mix in itertools.product(args.budgets, args.norms, args.mixes):
            if mix == 0 and norm != args.norms[0]:
                continue  # mix 0 is SnapKV whatever the norm
            cache = base.fork(InfoKV(budget=budget, norm=norm, mix=mix))
            cache.cut(budget * n)
            out = cache.extend(ids[n:], all_logits=True)
            rows.append(dict(doc_id=doc.doc_id, budget=budget, norm="snapkv" if mix == 0 else norm, mix=mix,
                             kl=float(centred_kl(ref, out).mean()),
                             dnll=torch.nn.functional.cross_entropy(out[:-1], ids[n + 1 :]).item() - nll_ref))
        print(f"{doc.doc_id}: done ({time.time() - t0:.0f} s)", flush=True)
    df = pd.DataFrame(rows)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    df.to_csv(Path(args.out) / "fidelity.csv", index=False)
    se = lambda x: x.std(ddof=1) / np.sqrt(len(x))  # noqa: E731
    table = df.groupby(["budget", "norm", "mix"]).agg(kl=("kl", "mean"), kl_se=("kl", se), dnll=("dnll", "mean"),
                                                       docs=("doc_id", "nunique")).reset_index()
    print("| " + " | ".join(table.columns) + " |\n|" + "---|" * len(table.columns))
    for r in table.itertuples(index=False):
        print("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in r) + " |")
    overall = df[df.mix > 0].groupby(["norm", "mix"]).kl.mean().sort_values()
    snap = df[df.mix == 0].kl.mean()
    print(f"mean KL over budgets: SnapKV {snap:.4f}; best InfoKV {overall.iloc[0]:.4f}")
    print(f"best norm={overall.index[0][0]} mix={overall.index[0][1]}  ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
