"""The README's claims table: the study's claims 1-3 on two real corpora, split and sliding modes.

Runs four ``fi-measure`` measurements with the embedded model (resumable: rerun
to continue), analyses each like ``fi-analyze``, and writes

    runs/claims/<corpus>-<mode>/              the measurement + analysis/report.html
    runs/claims/claims.md                     the combined claims table (Markdown)
    docs/tables/claims_<corpus>-<mode>.csv    each run's claims table (committed as each run finishes)
    docs/figures/claims_fi_vs_distance.png    the README figure (SQuAD, sliding)

Usage: .venv/bin/python scripts/headline_claims.py [--out runs/claims] [--n-boot 999] [--only papers-split,...]
       [--small]   (an end-to-end check in a few minutes: 2 documents per corpus, N = 256, 384 sliding tokens;
                    writes only under runs/claims-small, never docs/)
Corpora: data/arxiv.json (11 CC BY papers; pass --papers to point elsewhere) and the built-in SQuAD 2.0 dev Wikipedia articles (first 8).
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

import pandas as pd  # noqa: E402

from forward_influence import MeasureConfig, load_model
from forward_influence.analysis.analyze import AnalyzeConfig  # noqa: E402
from forward_influence.analysis.report import analyze_run, claims_markdown  # noqa: E402
from forward_influence.measurement.run import measure  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPLIT = dict(mode="split", n_prefix=(1024,), n_future=128, stride=16)
# delay 32 (= --window): each token is seen by 32 queries, then evicted; far = d > 128 from eviction needs H > 128
SLIDING = dict(mode="sliding", max_tokens=1024, delay=32, horizon=256, stride=16)
# --small: the same code on short contexts (far d_tau > 128 still has 32 positions with H = 160)
SMALL = {"split": dict(mode="split", n_prefix=(256,), n_future=64, stride=16),
         "sliding": dict(mode="sliding", max_tokens=384, delay=32, horizon=160, stride=16)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/claims")
    ap.add_argument("--papers", default="data/arxiv.json", help="relative to the repository root")
    ap.add_argument("--squad-docs", type=int, default=8)
    ap.add_argument("--n-boot", type=int, default=999)
    ap.add_argument("--only", default=None, help="comma-separated runs to do now, e.g. papers-split,papers-sliding (default: all four)")
    ap.add_argument("--small", action="store_true", help="end-to-end check: 2 documents per corpus, short contexts, "
                    "99 resamples; output under runs/claims-small only (docs/ untouched)")
    args = ap.parse_args()
    os.chdir(ROOT)  # document paths are recorded as given; keep them relative to the repo
    if args.small:
        args.out = "runs/claims-small" if args.out == "runs/claims" else args.out
        args.squad_docs, args.n_boot = 2, min(args.n_boot, 99)
    out = Path(args.out)
    if not Path(args.papers).is_file():
        raise SystemExit(f"headline_claims: {args.papers} not found; pass --papers PATH to the papers JSONL")
    corpora = {"papers": dict(doc=args.papers, max_docs=2 if args.small else None),
               "squad": dict(doc=None, max_docs=args.squad_docs)}
    modes = SMALL if args.small else {"split": SPLIT, "sliding": SLIDING}
    tables_dir = out / "tables" if args.small else ROOT / "docs" / "tables"  # the committed tables only from full runs
    lm = load_model("smollm2-135m", device="cpu", dtype="float32")
    t0 = time.perf_counter()
    tables, timing = [], {}
    only = set(args.only.split(",")) if args.only else None
    for corpus, c in corpora.items():
        for mode, m in modes.items():
            if only is not None and f"{corpus}-{mode}" not in only:
                continue
            run_dir = out / f"{corpus}-{mode}"
            t = time.perf_counter()
            res = measure(MeasureConfig(out=str(run_dir), progress=False, **c, **m), lm)
            a, path = analyze_run(run_dir, AnalyzeConfig(n_boot=args.n_boot), result=res)
            timing[f"{corpus}-{mode}"] = (res.meta.get("seconds_total"), time.perf_counter() - t)
            tables.append(a.claims.assign(corpus=corpus))
            tables_dir.mkdir(parents=True, exist_ok=True)
            a.claims.assign(corpus=corpus).to_csv(tables_dir / f"claims_{corpus}-{mode}.csv", index=False)
            print(f"{corpus}-{mode}: {res.summary.doc_id.nunique()} docs, {len(res.summary)} sources, "
                  f"measured in {res.meta.get('seconds_total', 0):.0f} s; report {path / 'report.html'}", flush=True)
    claims = pd.concat(tables, ignore_index=True)
    claims = claims[["corpus"] + [c for c in claims.columns if c != "corpus"]]
    claims.to_csv(out / "claims_by_run.csv", index=False)
    # Claim 2 reads only the token table (no ablation, no selection), nearly the same tokens in both modes
    # (split: the first N + F = 1,152; sliding: 1,024): one row per corpus, the split run's (its p is
    # Holm-adjusted within that run's table).
    with_split = set(claims.loc[claims["mode"] == "split", "corpus"])
    claims = claims[~((claims["claim"] == "2") & (claims["mode"] == "sliding") & claims["corpus"].isin(with_split))]
    claims.loc[claims["claim"] == "2", "mode"] = "tokens"
    claims.to_csv(out / "claims.csv", index=False)
    md = claims_markdown(claims)
    (out / "claims.md").write_text(md + "\n")
    # the README figure: claim 1's clean setting (sliding) where it has been measured, else the papers' split
    done = [r for r in ("squad-sliding", "papers-sliding", "papers-split", "squad-split") if (out / r / "analysis").is_dir()]
    if done:
        fig = (out if args.small else ROOT / "docs") / "figures" / "claims_fi_vs_distance.png"
        fig.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(out / done[0] / "analysis" / "figures" / "fi_vs_distance.png", fig)
        print(f"headline_claims: figure from {done[0]} -> {fig}")
    print(md)
    total_measure = sum(v[0] or 0 for v in timing.values())
    print(f"headline_claims: measurement {total_measure / 60:.1f} min (summed run.json seconds_total), "
          f"this invocation {(time.perf_counter() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
