"""Do the compressors keep what matters? Validation against measured Forward Influence.

1. ``fi-measure``: exact single-token FI of every token (stride 1) of the first 3 papers of data/arxiv.json,
   split at N = 512, F = 128 future tokens (``runs/bench/fi512``);
2. ``fi-bench --task fidelity --fi-run``: every method and the FI oracle at budgets 20% and 40% on the
   same documents (``runs/bench/validation``): the share of measured FI each cut keeps, its fidelity,
   and additivity (the cut's measured summed KL against the summed FI of what it dropped).

Prints the table (means over documents) and the additivity statistics; last line
``oracle_share=... infokv_share=... snapkv_share=... additivity_spearman=...`` (budget 20%).

    python scripts/validate_compressors.py          # ~10 min on 2 CPU cores
    python scripts/validate_compressors.py --small  # the same end to end in ~2 min: 1 paper, N = 128 (runs/bench-small)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from forward_influence import MeasureConfig
from forward_influence.bench import BenchConfig, run_bench
from forward_influence.bench.report import additivity, write_report
from forward_influence.hf.models import load_model
from forward_influence.measurement.run import measure

ROOT = Path(__file__).resolve().parents[1]
PAPERS = ROOT / "data" / "arxiv.json"
OUT = ROOT / "runs" / "bench"
N, F, DOCS = 512, 128, 3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="1 paper, N = 128, F = 64, under runs/bench-small")
    args = ap.parse_args()
    n, f, docs, out = (128, 64, 1, OUT.with_name("bench-small")) if args.small else (N, F, DOCS, OUT)
    lm = load_model("smollm2-135m")
    doc = str(PAPERS)
    t0 = time.time()
    measure(
        MeasureConfig(
            doc=doc,
            n_prefix=(n,),
            n_future=f,
            max_docs=docs,
            out=str(out / "fi512"),
            words=False,
            progress=False,
            report=False,
        ),
        model=lm,
    )
    t1 = time.time()
    cfg = BenchConfig(
        task="fidelity",
        doc=doc,
        n_prefix=n,
        n_future=f,
        n_samples=docs,
        budgets=(0.2, 0.4),
        methods=None,
        fi_run=str(out / "fi512"),
        out=str(out / "validation"),
        progress=False,
    )
    res = run_bench(cfg, model=lm)
    write_report(cfg.out)
    t2 = time.time()
    tab = res.groupby(["method", "budget"])[["fi_kept_share", "kl", "delta_nll"]].mean().unstack("budget")
    tab = tab.sort_values(("fi_kept_share", 0.2), ascending=False)
    print(tab.to_string(float_format=lambda x: f"{x:.4f}"))
    d, fit = additivity(res)
    print("additivity:", json.dumps(fit))
    share = res[res.budget == 0.2].groupby("method").fi_kept_share.mean()
    print(f"fi-measure {t1 - t0:.0f} s, fi-bench {t2 - t1:.0f} s")
    print(
        f"oracle_share={share['fi_oracle']:.3f} infokv_share={share['infokv']:.3f} snapkv_share={share['snapkv']:.3f} "
        f"additivity_spearman={fit.get('spearman', float('nan')):.2f}"
    )


if __name__ == "__main__":
    main()
