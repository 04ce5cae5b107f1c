"""The study's claims on the model's own long generations (GitHub issue 18).

In long reasoning, the tokens a compressor drops are the model's own
generated tokens. This script lets the embedded model continue prompts in its
chat template and measures Forward Influence over what it wrote, in the
study's decoding setting: sliding mode, every generated token seen by D = 32
queries and then evicted, the next H = 128 queries scored, every 8th
generated token ablated. Distances count from the eviction time τ = i + D:
near d_τ <= 32, far d_τ > 96 = H - D, i.e. more than 128 tokens after the
token itself (the document tables' far d > 128 needs H = 256 there). Corpora (one fi-measure run each,
resumable: a rerun skips finished runs and reuses stored generations):

* ``ifeval``: the first K IFEval prompts (``data/ifeval/input_data.jsonl``);
* ``synthetic-KIND``: fi-bench's generated retrieval tasks (``synthetic:KIND``),
  each asked to reason step by step to its answer.

Greedy generations of at most 320 new tokens, end-of-sequence held off for the
first 192 (= D + H + 32, so every prompt yields at least 5 sources). The claims
are tested on the generated tokens only (``fi-analyze --segment generated``).
Writes::

    runs/generations/<corpus>/             the measurement, generations.jsonl, analysis/report.html
    runs/generations/claims.md             the claims table, generated tokens (Markdown)
    runs/generations/claims.csv
    docs/tables/claims_generations.csv     the same table, committed (not with --small)

Usage: .venv/bin/python scripts/headline_generations.py [--out runs/generations] [--ifeval 12]
       [--kinds vartrack,multikey] [--per-kind 8] [--n-boot 999]
Measured: about 30 minutes on an idle 2-core CPU (docs/generations.md); the command, wall and CPU times are printed
at the end;
check it end to end in a minute or two with --small (= --ifeval 2 --kinds vartrack --per-kind 2 --max-new-tokens 48
--min-new-tokens 48 --delay 8 --horizon 24 --stride 8 --n-boot 50 --out runs/generations-small).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

import pandas as pd  # noqa: E402

from forward_influence import MeasureConfig, load_model
from forward_influence.analysis.analyze import AnalyzeConfig  # noqa: E402
from forward_influence.analysis.report import analyze_run, claims_markdown  # noqa: E402
from forward_influence.measurement.run import measure  # noqa: E402
from forward_influence.runtime.host import set_threads_from_env  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IFEVAL = "data/ifeval/input_data.jsonl"


def claims_of(run_dir: Path, cfg: AnalyzeConfig, res) -> pd.DataFrame:  # noqa: ANN001
    """The run's claims table; an analysis already written with the same settings is read, not redone."""
    done = run_dir / "analysis" / "analysis.json"
    if done.is_file() and json.loads(done.read_text()).get("analyze_config") == cfg.to_dict():
        return pd.read_parquet(run_dir / "analysis" / "claims.parquet")
    a, _ = analyze_run(run_dir, cfg, result=res)
    return a.claims


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/generations")
    ap.add_argument("--ifeval", type=int, default=12, help="first K IFEval prompts (0: none)")
    ap.add_argument("--kinds", default="vartrack,multikey", help="synthetic kinds, comma-separated ('' for none)")
    ap.add_argument(
        "--per-kind",
        type=int,
        default=8,
        help="synthetic prompts per kind (8: the fewest with which 4 claims can reach p_Holm < 0.05)",
    )
    ap.add_argument("--synthetic-length", type=int, default=512, help="synthetic context length in tokens")
    ap.add_argument("--max-new-tokens", type=int, default=320)
    ap.add_argument("--min-new-tokens", type=int, default=192)
    ap.add_argument("--delay", type=int, default=32)
    ap.add_argument("--horizon", type=int, default=128)
    ap.add_argument("--stride", type=int, default=8)
    ap.add_argument("--n-boot", type=int, default=999)
    ap.add_argument("--small", action="store_true", help="an end-to-end check in a minute or two (see above)")
    args = ap.parse_args()
    if args.small:
        small = dict(
            out="runs/generations-small",
            ifeval=2,
            kinds="vartrack",
            per_kind=2,
            max_new_tokens=48,
            min_new_tokens=48,
            delay=8,
            horizon=24,
            stride=8,
            n_boot=50,
        )
        args = argparse.Namespace(**(vars(args) | small))
    os.chdir(ROOT)  # prompt paths are recorded as given; keep them relative to the repo
    command = "python scripts/headline_generations.py " + shlex.join(sys.argv[1:])
    out = Path(args.out)
    # from the eviction time tau = i + D: far d_tau > H - D is more than H tokens after the source itself
    far = max(1, args.horizon - args.delay)
    near = min(32, far)
    common = dict(
        mode="sliding",
        delay=args.delay,
        horizon=args.horizon,
        window=args.delay,
        stride=args.stride,
        max_new_tokens=args.max_new_tokens,
        min_new_tokens=args.min_new_tokens,
        near=near,
        far=far,
        progress=False,
        report=False,
    )
    corpora = {}
    if args.ifeval:
        corpora["ifeval"] = dict(generate=IFEVAL, max_docs=args.ifeval)
    for kind in [k for k in args.kinds.split(",") if k.strip()]:
        corpora[f"synthetic-{kind}"] = dict(
            generate=f"synthetic:{kind}", synthetic_examples=args.per_kind, synthetic_length=args.synthetic_length
        )
    set_threads_from_env()  # FI_NUM_THREADS
    lm = load_model("smollm2-135m", device="cpu", dtype="float32")
    acfg = AnalyzeConfig(n_boot=args.n_boot, segment="generated")
    t0 = time.perf_counter()
    tables, cost = [], []
    for corpus, c_ in corpora.items():
        run_dir = out / corpus
        t, c = time.perf_counter(), time.process_time()
        res = measure(MeasureConfig(out=str(run_dir), **common, **c_), lm)
        tables.append(claims_of(run_dir, acfg, res).assign(corpus=corpus))
        gen = res.meta.get("generation") or {}
        n_new = sum(d["n_tokens"] - d["n_prompt"] for d in res.meta["documents"])
        cost.append(
            dict(
                corpus=corpus,
                prompts=len(res.meta["documents"]),
                skipped=len(res.meta.get("skipped") or []),
                generated_tokens=n_new,
                tokens=sum(d["n_tokens"] for d in res.meta["documents"]),
                sources=len(res.summary),
                seconds_generate=gen.get("seconds", 0.0),
                cpu_generate=gen.get("cpu_seconds", 0.0),
                seconds_measure=res.meta.get("seconds_total", 0.0),
                cpu_measure=res.meta.get("cpu_seconds_total", 0.0),
                seconds_this_call=round(time.perf_counter() - t, 1),
                cpu_this_call=round(time.process_time() - c, 1),
            )
        )
        print(
            f"{corpus}: {cost[-1]['prompts']} generations ({cost[-1]['skipped']} skipped), {n_new} generated tokens, "
            f"{len(res.summary)} sources; generation {cost[-1]['seconds_generate']:.0f} s, measurement "
            f"{cost[-1]['seconds_measure']:.0f} s; report {run_dir / 'analysis' / 'report.html'}",
            flush=True,
        )
    claims = pd.concat(tables, ignore_index=True)
    claims = claims[["corpus"] + [c for c in claims.columns if c != "corpus"]]
    claims.to_csv(out / "claims.csv", index=False)
    if not args.small:
        claims.to_csv(ROOT / "docs" / "tables" / "claims_generations.csv", index=False)
    md = claims_markdown(claims)
    (out / "claims.md").write_text(md + "\n")
    cost = pd.DataFrame(cost)
    cost.to_csv(out / "cost.csv", index=False)
    print(md)
    gen_s, meas_s = cost.seconds_generate.sum(), cost.seconds_measure.sum()
    gen_c, meas_c = cost.cpu_generate.sum(), cost.cpu_measure.sum()
    print(f"headline_generations: {command}")
    print(
        f"headline_generations: generation {gen_s / 60:.1f} min wall, {gen_c / 60:.1f} min CPU "
        f"({gen_c / max(1, cost.generated_tokens.sum()):.3f} CPU s a token); measurement {meas_s / 60:.1f} min wall, "
        f"{meas_c / 60:.1f} min CPU ({meas_c / max(1, cost.sources.sum()):.2f} CPU s a source, prefill and signals "
        "included) "
        "as recorded in run.json (earlier invocations' work included); "
        f"this invocation {(time.perf_counter() - t0) / 60:.1f} min wall, "
        f"{cost.cpu_this_call.sum() / 60:.1f} min CPU"
    )


if __name__ == "__main__":
    main()
