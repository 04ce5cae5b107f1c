"""``fi-bench``: compressors side by side on one task, validated against Forward Influence."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from forward_influence.bench.config import BenchConfig
from forward_influence.cli._common import add_config_flags, report_failed, run_cli
from forward_influence.errors import InputError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fi-bench",
        description="Run KV-cache compressors (InfoKV and the baselines) on the same samples at several budgets: "
        "document fidelity, synthetic retrieval, reading QA or IFEval decoding; paired intervals against the "
        "full cache and SnapKV; with --fi-run, the share of measured FI each keeps and the additivity check.",
    )
    add_config_flags(p, BenchConfig)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(BenchConfig)}
    if kw["out"] is None:
        raise InputError("--out DIR is required: where results.parquet, run.json and report.html go")
    if not sys.stderr.isatty():
        kw["progress"] = False
    cfg = BenchConfig(**kw)
    from forward_influence.bench.runner import run_bench
    from forward_influence.hf.models import quiet_progress
    from forward_influence.runtime.host import retain_freed_memory, set_threads_from_env

    quiet_progress()
    set_threads_from_env()
    retain_freed_memory()  # process-wide glibc setting: the CLI's choice, not the library's
    res = run_bench(cfg)
    if res.attrs.get("failed_units"):
        return report_failed("fi-bench", res.attrs["failed_units"])
    from forward_influence.bench.summary import METRICS, load_run

    summary = load_run(cfg.out)[2]
    main_metric = METRICS[cfg.task][0]
    s = summary[summary.metric == main_metric].pivot_table(index="method", columns="budget", values="mean")
    print(f"fi-bench {cfg.task}: mean {main_metric} per method and budget")
    print(s.to_string(float_format=lambda x: f"{x:.4g}"))
    gap_file = Path(cfg.out) / "gap_closed.parquet"
    if gap_file.is_file():
        import pandas as pd

        from forward_influence.bench.summary import gap_text

        for _, g in pd.read_parquet(gap_file).iterrows():
            print(
                f"gap closed by distilled, {g['metric']} at {g['budget']:g}: {gap_text(g)} "
                f"(best deployable {g['best']} {g['kl_best']:.4f}, distilled {g['kl_method']:.4f}, "
                f"oracle {g['kl_oracle']:.4f}; {g['n']} documents)"
            )
    if cfg.report:
        os.environ.setdefault("MPLBACKEND", "Agg")
        from forward_influence.bench.report import write_report

        print(f"report: {write_report(cfg.out)}")
    return 0


def entry(argv: list[str] | None = None) -> None:
    run_cli("fi-bench", lambda: main(argv))


if __name__ == "__main__":
    entry()
