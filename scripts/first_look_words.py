#!/usr/bin/env python
"""First look at the study's claims 2 and 3 from an ``fi-measure`` run's token table.

Claim 2: content words sit at high (top-k) entropy, function words low.
Claim 3: attention-based selection is biased toward function words.

Prints, per run directory: mean ``entropy_in_topk`` of content vs function
words (with a bootstrap 95% interval over documents), and the fraction of
function words among the top 20% of tokens by ``attn_snapkv`` and by
``entropy_in_topk`` (per document, then averaged), beside the base rate.
Only tokens that SnapKV scores (before the split) are used for both rules.

Usage: ``python scripts/first_look_words.py RUN_DIR [--top 0.2]``
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
from scipy.stats import bootstrap

from forward_influence.results import MeasureResult


def top_fraction(df: pd.DataFrame, col: str, top: float) -> float:
    k = max(1, int(round(top * len(df))))
    sel = df.nlargest(k, col)
    return float((sel.word_class == "function").mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--top", type=float, default=0.2)
    args = ap.parse_args()
    tok = MeasureResult.load(args.run_dir).tokens
    tok = tok[tok.attn_snapkv.notna() & tok.entropy_in_topk.notna()]
    per_doc = []
    for doc, d in tok.groupby("doc_id", sort=False):
        per_doc.append(
            {
                "doc_id": doc,
                "n_tokens": len(d),
                "H_content": d.loc[d.word_class == "content", "entropy_in_topk"].mean(),
                "H_function": d.loc[d.word_class == "function", "entropy_in_topk"].mean(),
                "function_base": float((d.word_class == "function").mean()),
                "function_top_attn": top_fraction(d, "attn_snapkv", args.top),
                "function_top_entropy": top_fraction(d, "entropy_in_topk", args.top),
            }
        )
    pd_ = pd.DataFrame(per_doc)
    print(pd_.round(3).to_string(index=False))
    rng = np.random.default_rng(0)

    def ci(x):
        r = bootstrap((np.asarray(x),), np.mean, n_resamples=2000, random_state=rng, method="percentile")
        return r.confidence_interval.low, r.confidence_interval.high

    print(f"\n{len(pd_)} documents, {int(pd_.n_tokens.sum())} tokens (those SnapKV scores)")
    for col, label in [
        ("H_content", "mean entropy_in_topk, content words "),
        ("H_function", "mean entropy_in_topk, function words"),
        ("function_base", "function-word share, all tokens     "),
        ("function_top_attn", f"function share, top {args.top:.0%} by attn_snapkv "),
        ("function_top_entropy", f"function share, top {args.top:.0%} by entropy_in_topk"),
    ]:
        lo, hi = ci(pd_[col])
        print(f"{label}: {pd_[col].mean():.3f}  [95% CI over documents {lo:.3f}, {hi:.3f}]")


if __name__ == "__main__":
    main()
