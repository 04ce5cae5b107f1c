"""Validate the Fisher estimate of Forward Influence against the exact engine.

On the CC BY papers of ``data/arxiv.json`` with the embedded model, split mode,
N=1,024 and F=256: the exact engine on every STRIDE-th prefix token and on
the last 32 before the split (the only ones with near targets), and the
Fisher estimate for every prefix token at once (S samples; once with one
future block for totals, once with F/32 blocks for the near/far buckets).
Prints Spearman ρ (total, near d <= 32, far d > 128; pooled within-document
coefficients with intervals from resampling documents), the overlap of the
top-20% sets, where the estimate goes wrong (sinks, tokens just before the
split, the highest-FI tokens), the speed ratio, and writes a log-log
calibration plot. Last line: ``spearman_total=0.XX speedup=NN.N``.

Usage: .venv/bin/python scripts/validate_fisher.py [--docs 3] [--stride 32] [--samples 8]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from forward_influence import load_documents, load_model, tokenize  # noqa: E402
from forward_influence.analysis.analyze import AnalyzeConfig, group_mean_ci, spearman  # noqa: E402
from forward_influence.hf.forwards import record_prefill  # noqa: E402
from forward_influence.measurement.engine import Ablation, ForwardInfluenceEngine
from forward_influence.measurement.fisher import FisherEstimator  # noqa: E402
from forward_influence.runtime.host import set_threads_from_env  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--doc", default=str(ROOT / "data" / "arxiv.json"))
    ap.add_argument("--docs", type=int, default=3)
    ap.add_argument("--n-prefix", type=int, default=1024)
    ap.add_argument("--n-future", type=int, default=256)
    ap.add_argument("--stride", type=int, default=32)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--near", type=int, default=32)
    ap.add_argument("--far", type=int, default=128)
    ap.add_argument("--out", default=str(ROOT / "runs" / "validate_fisher"))
    args = ap.parse_args()
    set_threads_from_env()
    n, f = args.n_prefix, args.n_future
    lm = load_model("smollm2-135m", device="cpu", dtype="float32")
    docs = load_documents(args.doc, max_docs=args.docs)
    eng = ForwardInfluenceEngine(lm.model)
    blocks = max(1, f // args.near)
    rows, t_exact, n_exact, t_fisher, t_fisher_b = [], 0.0, 0, 0.0, 0.0
    for d in docs:
        ids = tokenize(lm.tokenizer, d, max_tokens=n + f).input_ids
        if len(ids) < n + f:
            print(f"skip {d.doc_id}: {len(ids)} tokens")
            continue
        pre = record_prefill(lm.model, ids)
        # every STRIDE-th token, plus every token of the last `near` before the split
        # (the only ones with near-distance targets in split mode)
        sources = sorted(set(range(0, n, args.stride)) | set(range(max(0, n - args.near), n)))
        t = time.perf_counter()
        ex = eng.split(ids, n, f, [Ablation((s,)) for s in sources], prefill=pre).kl  # (S, F)
        t_exact += time.perf_counter() - t
        n_exact += len(sources)
        t = time.perf_counter()
        tot = FisherEstimator(lm.model, samples=args.samples, seed=0).split(ids, n, f, prefill=pre)  # all N sources
        t_fisher += time.perf_counter() - t
        t = time.perf_counter()
        blk = FisherEstimator(lm.model, samples=args.samples, blocks=blocks, seed=1).split(ids, n, f, prefill=pre)
        t_fisher_b += time.perf_counter() - t
        centres = np.array([n + (a + b - 1) / 2 for a, b in blk.block_bounds])
        tpos = np.arange(n, n + f)
        for k, s in enumerate(sources):
            dist_t, dist_b = tpos - s, centres - s
            rows.append(
                dict(
                    doc_id=d.doc_id,
                    pos=s,
                    exact_total=ex[k].sum(),
                    exact_near=ex[k][dist_t <= args.near].sum(),
                    exact_far=ex[k][dist_t > args.far].sum(),
                    fisher_total=tot.kl[s, 0],
                    fisher_se=tot.stderr[s, 0],
                    fisher_near=blk.kl[s][dist_b <= args.near].sum(),
                    fisher_far=blk.kl[s][dist_b > args.far].sum(),
                )
            )
        print(f"{d.doc_id}: exact {len(sources)} sources, fisher all {n} (+{blocks} blocks)", flush=True)
    df = pd.DataFrame(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_parquet(out / "fisher_vs_exact.parquet", index=False)
    timing = dict(
        t_exact=t_exact, n_exact=n_exact, t_fisher=t_fisher, t_fisher_blocks=t_fisher_b, blocks=blocks, args=vars(args)
    )
    (out / "timing.json").write_text(json.dumps(timing, indent=2))
    cfg = AnalyzeConfig(n_boot=999)
    rng = np.random.default_rng(0)
    res = {}
    print(
        f"\nSpearman rho, estimate vs exact (within documents, pooled; 95% CI resampling {df.doc_id.nunique()} "
        "documents):"
    )
    for b in ("total", "near", "far"):
        sub = df[(df[f"exact_{b}"] > 0)] if b != "total" else df
        if len(sub) == 0 or sub.groupby("doc_id").size().max() < 4:
            print(f"  {b:5s} too few sources with a nonzero exact {b} (raise --n-prefix / lower --stride)")
            res[b] = float("nan")
            continue
        per = sub.groupby("doc_id").apply(
            lambda g: pd.Series(
                {"rho": float(spearman(g[f"exact_{b}"].to_numpy(), g[f"fisher_{b}"].to_numpy())), "n": len(g)}
            ),
            include_groups=False,
        )
        est, lo, hi = group_mean_ci(per["rho"].to_numpy(), per.index.to_numpy(), cfg, rng, weights=per["n"].to_numpy())
        res[b] = est
        print(f"  {b:5s} rho={est:.3f} [{lo:.3f}, {hi:.3f}]  ({int(per['n'].sum())} sources with nonzero exact {b})")
    jac = []
    for _, g in df.groupby("doc_id"):
        k = max(1, round(0.2 * len(g)))
        a = set(g.nlargest(k, "exact_total").pos)
        b = set(g.nlargest(k, "fisher_total").pos)
        jac.append(len(a & b) / len(a | b))
    print(f"top-20% overlap (Jaccard, mean over documents): {np.mean(jac):.3f}")
    ratio = np.log10(df.fisher_total / df.exact_total)
    regimes = {
        "sinks (pos < 4)": df.pos < 4,
        f"just before the split (N - i <= {args.near})": (n - df.pos) <= args.near,
        "top 5% exact FI (no sinks)": (df.exact_total >= df[df.pos >= 4].exact_total.quantile(0.95)) & (df.pos >= 4),
        "the rest": (df.pos >= 4) & ((n - df.pos) > args.near),
    }
    print("where it misjudges: median log10(estimate / exact) [IQR]")
    for name, m in regimes.items():
        r = ratio[m]
        if len(r):
            print(
                f"  {name:42s} {r.median():+.2f} [{r.quantile(0.25):+.2f}, {r.quantile(0.75):+.2f}]  n={int(m.sum())}"
            )
    rel_se = (df.fisher_se / df.fisher_total).median()
    print(f"median relative standard error of the estimate ({args.samples} samples): {rel_se:.2f}")
    fig, ax = plt.subplots(figsize=(5, 5))
    cls = np.where(df.pos < 4, "sink", np.where((n - df.pos) <= args.near, "near split", "other"))
    for c, col in (("other", "#1b9e77"), ("near split", "#d95f02"), ("sink", "#000000")):
        m = cls == c
        ax.scatter(df.exact_total[m], df.fisher_total[m], s=10, alpha=0.7, color=col, label=c)
    lo_, hi_ = df[["exact_total", "fisher_total"]].min().min(), df[["exact_total", "fisher_total"]].max().max()
    ax.plot([lo_, hi_], [lo_, hi_], "k--", lw=1, label="y = x")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="exact FI total (engine)",
        ylabel=f"Fisher estimate ({args.samples} samples)",
        title=f"Fisher vs exact, N={n}, F={f}",
    )
    ax.legend(fontsize=8)
    fig.savefig(out / "calibration.png", dpi=120, bbox_inches="tight")
    fig.savefig(out / "calibration.svg", bbox_inches="tight")
    per_abl = t_exact / max(1, n_exact)
    ndocs = df.doc_id.nunique()
    speed = per_abl * n / (t_fisher / ndocs)
    speed_b = per_abl * n / (t_fisher_b / ndocs)
    print(f"exact engine: {per_abl:.3f} s per ablation -> {per_abl * n:.0f} s for all {n} tokens of a document")
    print(
        f"fisher: {t_fisher / ndocs:.1f} s per document (totals), {t_fisher_b / ndocs:.1f} s with {blocks} blocks "
        "(near/far)"
    )
    print(
        f"speedup totals {speed:.1f}x, with distance blocks {speed_b:.1f}x; calibration plot {out / 'calibration.png'}"
    )
    print(f"spearman_total={res['total']:.2f} speedup={speed:.1f}")


if __name__ == "__main__":
    torch.manual_seed(0)
    import faulthandler

    if os.environ.get("FI_DUMP"):
        faulthandler.dump_traceback_later(int(os.environ["FI_DUMP"]), exit=True)
    main()
