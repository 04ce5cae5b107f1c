"""The fi-measure runs the distilled scorer is trained and judged on (issue 25), declared once.

Split mode at the fidelity benchmark's shape (N = 512 compressed, F = 256 future tokens: far = d_tau > 128
has 127 targets):

    runs/distill/squad-train       SQuAD 2.0 dev articles 1-24, every 8th source      (training)
    runs/distill/squad-test-s8     SQuAD 2.0 dev articles 25-35, every 8th source     (held-out ranking figures)
    runs/distill/papers-s8         the 11 CC BY papers, every 8th source              (training / held out)
    runs/distill/squad-test        SQuAD 2.0 dev articles 25-35, every source          (fi-bench's FI oracle)
    runs/distill/papers-test       the 11 CC BY papers, every source                   (fi-bench's FI oracle)

The ranking figures (Spearman, FI share kept among the measured candidates of each split) need only the
measured sources, so every 8th is enough; fi-bench's FI oracle ranks every position, so its runs measure
every source (stride 1): a strided oracle would rank the unmeasured positions by recency.
Cross-corpus: train on the papers and SQuAD 1-24, test on SQuAD 25-35; train on SQuAD (1-35), test on
the papers. Resumable: rerun to continue.

Usage: .venv/bin/python scripts/distill_runs.py [--only squad-train,...] [--out runs/distill] [--small]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPLIT = dict(mode="split", n_prefix=(512,), n_future=256)
ORDER = ("squad-train", "squad-test-s8", "papers-s8", "squad-test", "papers-test")


def squad_ids(first: int, last: int) -> tuple[str, ...]:
    from forward_influence.measurement.documents import builtin_documents

    return tuple(d.doc_id for d in builtin_documents()[first - 1 : last])


def runs(papers: str, small: bool = False) -> dict[str, dict]:
    """Every run's MeasureConfig fields (without ``out``)."""
    if small:  # an end-to-end check: 2 documents each, short contexts
        split = dict(mode="split", n_prefix=(128,), n_future=160)
        return {
            "squad-train": {**split, "doc_ids": squad_ids(1, 3), "stride": 8},
            "squad-test-s8": {**split, "doc_ids": squad_ids(25, 27), "stride": 8},
            "papers-s8": {**split, "doc": papers, "max_docs": 3, "stride": 8},
            "squad-test": {**split, "doc_ids": squad_ids(25, 26), "stride": 2},
            "papers-test": {**split, "doc": papers, "max_docs": 2, "stride": 2},
        }
    return {
        "squad-train": {**SPLIT, "doc_ids": squad_ids(1, 24), "stride": 8},
        "squad-test-s8": {**SPLIT, "doc_ids": squad_ids(25, 35), "stride": 8},
        "papers-s8": {**SPLIT, "doc": papers, "stride": 8},
        "squad-test": {**SPLIT, "doc_ids": squad_ids(25, 35), "stride": 1},
        "papers-test": {**SPLIT, "doc": papers, "stride": 1},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/distill")
    ap.add_argument("--papers", default="data/arxiv.json")
    ap.add_argument("--only", default=None, help=f"comma-separated runs (default: all, in order: {','.join(ORDER)})")
    ap.add_argument("--small", action="store_true", help="2-3 documents each, N = 128 (under runs/distill-small)")
    args = ap.parse_args()
    os.chdir(ROOT)
    from forward_influence import MeasureConfig, load_model
    from forward_influence.measurement.run import measure

    out = Path("runs/distill-small" if args.small and args.out == "runs/distill" else args.out)
    plan = runs(args.papers, args.small)
    only = args.only.split(",") if args.only else list(plan)
    lm = load_model("smollm2-135m", device="cpu", dtype="float32")
    for name in only:
        t = time.perf_counter()
        res = measure(MeasureConfig(out=str(out / name), progress=False, report=False, **plan[name]), lm)
        print(
            f"{name}: {res.summary.doc_id.nunique()} docs, {len(res.summary)} sources, "
            f"{res.meta.get('seconds_total', 0):.0f} s measured ({time.perf_counter() - t:.0f} s here)",
            flush=True,
        )


if __name__ == "__main__":
    main()
