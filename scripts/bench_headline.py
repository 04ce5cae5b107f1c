"""The README's compressor table: every method on four fi-bench runs, one command.

Runs (resumable; each into ``runs/bench/<name>``):

1. fidelity on the 11 CC BY papers of ``data/arxiv.json`` (N = 1,024 compressed, F = 128 teacher-forced),
   budgets 20%, 40%;
2. fidelity on the built-in SQuAD articles (first 8 with >= 1,152 tokens), same settings;
3. synthetic retrieval (passkey, multi-key, variable tracking) at 2k and 4k tokens, depths 0.1 / 0.5 / 0.9;
4. IFEval decoding on the first 3 prompts of ``data/ifeval/input_data.jsonl``, 96 new
   tokens, cache budgets 48 and 96 tokens (batch-1 decoding on this CPU is memory-bound at ~140 ms a
   token, so the study's 128/256/512 budgets with long generations are a GPU-scale run:
   ``fi-bench --task ifeval --budgets 128,256,512 --max-new-tokens 1024``).

then prints the markdown tables (mean and 95% paired-bootstrap interval over samples) and writes them to
``runs/bench/headline.md``. Wall time on this 2-core CPU: see the README.

    python scripts/bench_headline.py [--only ifeval,...] [--small]

``--small`` checks the same four runs end to end in a few minutes (2 documents of N = 256, the 2k retrieval
examples of one kind, 1 IFEval prompt of 32 tokens) under ``runs/bench-small``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from forward_influence.bench import BenchConfig, run_bench
from forward_influence.bench.summary import paired_interval
from forward_influence.hf.models import load_model

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
OUT = ROOT / "runs" / "bench"
ORDER = [
    "full",
    "infokv",
    "snapkv",
    "pyramidkv",
    "expected_attention",
    "h2o",
    "tova",
    "streaming_llm",
    "knorm",
    "random",
]


def runs(out: Path = OUT, small: bool = False) -> dict[str, BenchConfig]:
    common = dict(progress=False, report=True)
    doc = dict(n_prefix=256, n_future=64, n_samples=2) if small else {}
    cfgs = {
        "papers": BenchConfig(
            task="fidelity", doc=str(DATA / "arxiv.json"), budgets=(0.2, 0.4), out=str(out / "papers"), **doc, **common
        ),
        "squad": BenchConfig(
            task="fidelity", budgets=(0.2, 0.4), **({"n_samples": 8} | doc), out=str(out / "squad"), **common
        ),
        "retrieval": BenchConfig(
            task="retrieval",
            budgets=(0.2, 0.4),
            lengths=(2048,) if small else (2048, 4096),
            **(dict(kinds=("passkey",), n_samples=2) if small else {}),
            out=str(out / "retrieval"),
            **common,
        ),
        "ifeval": BenchConfig(
            task="ifeval",
            ifeval_data=str(DATA / "ifeval" / "input_data.jsonl"),
            budgets=(48.0, 96.0),
            n_samples=1 if small else 3,
            max_new_tokens=32 if small else 96,
            out=str(out / "ifeval"),
            **common,
        ),
    }
    return cfgs


def cell(
    df: pd.DataFrame, metric: str, method: str, budget: float, rng: np.random.Generator, fmt: str = "{:.3f}"
) -> str:
    x = df[(df.method == method) & (df.budget == budget)].sort_values("sample_id")[metric].to_numpy(dtype=float)
    if x.size == 0:
        return "–"
    m, lo, hi = paired_interval(x, None, 2000, rng)
    return f"{fmt.format(m)} [{fmt.format(lo)}, {fmt.format(hi)}]"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--only",
        default=None,
        help="comma-separated runs to do now, e.g. ifeval (default: all four); "
        "the tables of runs not done are left out",
    )
    ap.add_argument("--small", action="store_true", help="an end-to-end check in a few minutes, under runs/bench-small")
    args = ap.parse_args(argv)
    out = OUT.with_name("bench-small") if args.small else OUT
    every = runs(out, args.small)
    todo = every if args.only is None else {n: c for n, c in every.items() if n in args.only.split(",")}
    if args.only is not None and set(args.only.split(",")) - set(todo):
        raise SystemExit(f"bench_headline: --only takes {', '.join(every)}; got {args.only}")
    lm = load_model("smollm2-135m")
    res = {}
    for name, cfg in todo.items():
        t = time.time()
        res[name] = run_bench(cfg, model=lm)
        from forward_influence.bench.report import write_report

        write_report(cfg.out)
        print(f"{name}: {time.time() - t:.0f} s", flush=True)
    rng = np.random.default_rng(0)
    md = []
    if {"papers", "squad"} <= set(res):
        rows = []
        for m in ORDER:
            r = [m]
            for corpus in ("papers", "squad"):
                for b in (0.2, 0.4):
                    r += [cell(res[corpus], "kl", m, b, rng), cell(res[corpus], "delta_nll", m, b, rng, "{:+.3f}")]
            rows.append(r)
        md.append("Document fidelity (mean KL to the full cache / change in NLL, nats; 95% intervals over documents)\n")
        md.append(
            table(
                [
                    "method",
                    "papers KL 20%",
                    "papers ΔNLL 20%",
                    "papers KL 40%",
                    "papers ΔNLL 40%",
                    "SQuAD KL 20%",
                    "SQuAD ΔNLL 20%",
                    "SQuAD KL 40%",
                    "SQuAD ΔNLL 40%",
                ],
                rows,
            )
        )
    if "retrieval" in res:
        r_df = res["retrieval"]
        rows = []
        for m in ORDER:
            r = [m]
            for length in (2048, 4096):
                sub = r_df[r_df.length == length]
                r += [cell(sub, "exact_match", m, b, rng, "{:.2f}") for b in (0.2, 0.4)]
            rows.append(r)
        md.append(
            f"\nSynthetic retrieval exact match ({r_df.sample_id.nunique()} examples: 3 kinds x 2 lengths x 3 depths)\n"
        )
        md.append(table(["method", "2k @ 20%", "2k @ 40%", "4k @ 20%", "4k @ 40%"], rows))
    if "ifeval" in res:
        i_df = res["ifeval"]
        rows = [
            [m] + [cell(i_df, met, m, b, rng, "{:.2f}") for b in (48.0, 96.0) for met in ("inst_loose", "agree_tokens")]
            for m in ORDER
        ]
        md.append(
            f"\nIFEval ({i_df.sample_id.nunique()} prompts, {every['ifeval'].max_new_tokens} new tokens; "
            "instruction-level loose accuracy and token agreement "
            "with the full cache)\n"
        )
        md.append(table(["method", "inst. loose @48", "agree @48", "inst. loose @96", "agree @96"], rows))
    secs = {n: json.loads((Path(c.out) / "run.json").read_text())["seconds_total"] for n, c in todo.items()}
    text = (
        "\n".join(md)
        + "\n\nWall time (run.json seconds_total): "
        + ", ".join(f"{n} {v:.0f} s" for n, v in secs.items())
        + f"; total {sum(secs.values()) / 60:.1f} min\n"
    )
    (out / ("headline.md" if args.only is None else f"headline_{'_'.join(todo)}.md")).write_text(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
