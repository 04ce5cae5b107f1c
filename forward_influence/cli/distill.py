"""``fi-distill``: learn a per-token scorer from fi-measure runs (docs/usage.md, "fi-distill")."""

from __future__ import annotations

import argparse

from forward_influence.cli._common import run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fi-distill",
        description="Fit a scorer that ranks the candidates of each split by the Forward Influence they will have, "
        "from signals a compressor has at the eviction time; choose the model kind by document-grouped "
        "cross-validation and report held-out figures from an outer cross-validation. Writes MODEL (JSON, "
        "usable as get_compressor('distilled', model=MODEL) and fi-bench --distilled-model MODEL) and "
        "MODEL's .heldout.csv.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="fi-measure run directories (exact, split mode)")
    p.add_argument("--out", required=True, metavar="MODEL", help="the model file to write (JSON)")
    p.add_argument(
        "--target",
        default="fi_far",
        choices=("fi_far", "fi_total"),
        help="FI the scorer ranks by: fi_far (d_tau > far) or fi_total (default: fi_far)",
    )
    p.add_argument("--kinds", default="linear,hgb,lgbm", help="model kinds to choose among (default: all three)")
    p.add_argument("--folds", type=int, default=5, help="outer document folds, reported (default: 5)")
    p.add_argument("--inner-folds", type=int, default=4, help="inner document folds, the choice (default: 4)")
    p.add_argument("--corpus", default=None, help="comma-separated corpus names, one per run (default: run names)")
    p.add_argument(
        "--exclude",
        default="",
        metavar="SIGNALS",
        help="comma-separated signals the model may not read (e.g. attn_h2o: its attention from every query "
        "doubles the compressor's prefill); the held-out comparison still includes them",
    )
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from forward_influence.analysis.inference import interval_text
    from forward_influence.distill.train import DistillConfig, distill
    from forward_influence.errors import InputError

    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    exclude = tuple(x.strip() for x in args.exclude.split(",") if x.strip())
    cfg = DistillConfig(
        target=args.target,
        kinds=kinds,
        folds=args.folds,
        inner_folds=args.inner_folds,
        seed=args.seed,
        exclude=exclude,
    )
    corpora = None if args.corpus is None else [c.strip() for c in args.corpus.split(",")]
    if corpora is not None and len(corpora) != len(args.runs):
        raise InputError(f"--corpus names {len(corpora)} corpora for {len(args.runs)} runs; give one per run")
    res = distill(args.runs, args.out, cfg, corpora)
    s = res.summary
    n_docs = int(s["n_docs"].max())
    print(
        f"fi-distill: {res.scorer.provenance['model_kind']} scorer of {args.target} on {n_docs} documents "
        f"(outer folds chose {', '.join(res.chosen)}); held-out, mean over documents:"
    )
    keys = [c for c in ("spearman", "kept_share_0.2", "kept_share_0.4") if c in set(s["statistic"])]
    best = {}
    for stat in keys:
        t = s[(s["statistic"] == stat) & ~s["method"].isin(["distilled", "oracle", "random"])]
        best[stat] = t.sort_values("mean", ascending=False)["method"].iloc[0] if len(t) else None
    for stat in keys:
        for method in dict.fromkeys(["distilled", best[stat], "recency", "random", "oracle"]):
            r = s[(s["statistic"] == stat) & (s["method"] == method)]
            if r.empty:
                continue
            r = r.iloc[0]
            diff = ""
            if method != "distilled":
                ci = interval_text(r["diff_low"], r["diff_high"])
                diff = f"  distilled - this {r['diff']:+.3f} {ci} p {r['p_value']:.3g}"
            print(
                f"  {stat:<15} {method:<18} {r['mean']:.3f} {interval_text(r['ci_low'], r['ci_high'], '.3f'):<16}{diff}"
            )
    print(f"fi-distill: model -> {args.out}")
    return 0


def entry(argv: list[str] | None = None) -> None:
    run_cli("fi-distill", lambda: main(argv))


if __name__ == "__main__":
    entry()
