"""``fi-analyze``: test the study's claims on an ``fi-measure`` run; write tables, figures and report.html."""

from __future__ import annotations

import argparse
import dataclasses
import os

from forward_influence.analysis.analyze import AnalyzeConfig
from forward_influence.cli._common import add_config_flags, run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fi-analyze",
        description="Correlations, selection rules, word classes and the claims table of an fi-measure run; "
        "writes RUN_DIR/analysis/ (tables, PNG/SVG figures, self-contained report.html).",
    )
    p.add_argument("run_dir", help="output directory of fi-measure")
    p.add_argument("--out", default=None, help="where to write the analysis (default: RUN_DIR/analysis)")
    add_config_flags(p, AnalyzeConfig)
    return p


def print_claims(claims) -> None:  # noqa: ANN001
    """The family rows of a claims table: verdict, estimate, interval (— where unbounded), p and p_Holm."""
    from forward_influence.analysis.inference import interval_text

    for _, r in claims[claims["role"] == "claim"].iterrows():
        if r.verdict == "not tested":
            print(f"  claim {r.claim:<3} {r.verdict:<14} {r.note}")
            continue
        print(
            f"  claim {r.claim:<3} {r.verdict:<14} {r.estimate:+.3f} {interval_text(r.ci_low, r.ci_high):<18} "
            f"p {r.p_value:.3g}, p_Holm {r.p_adjusted:.3g}, {r.n_docs} docs  {r.statistic}"
        )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("MPLBACKEND", "Agg")
    cfg = AnalyzeConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(AnalyzeConfig)}).validate()
    from forward_influence.analysis.report import analyze_run

    a, path = analyze_run(args.run_dir, cfg, args.out)
    seg = "" if cfg.segment == "all" else f", {cfg.segment} tokens"
    print(
        f"fi-analyze: {a.sources['doc_id'].nunique()} documents, {len(a.sources)} sources; claims "
        f"({a.claims['mode'].iloc[0] if len(a.claims) else '?'} mode{seg}):"
    )
    print_claims(a.claims)
    for name, g in a.segment_claims.groupby("segment", sort=False) if len(a.segment_claims) else ():
        print(f"fi-analyze: claims on the {name} tokens:")
        print_claims(g)
    print(f"fi-analyze: report -> {path / 'report.html'}")
    return 0


def entry(argv: list[str] | None = None) -> None:
    run_cli("fi-analyze", lambda: main(argv))


if __name__ == "__main__":
    entry()
