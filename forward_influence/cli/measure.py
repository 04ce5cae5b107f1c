"""``fi-measure``: Forward Influence and per-token signals for documents."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from forward_influence.cli._common import add_config_flags, report_failed, run_cli
from forward_influence.config import MeasureConfig
from forward_influence.errors import InputError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fi-measure",
        description="Measure the Forward Influence of document tokens (--doc) or of the model's own "
        "continuations of prompts (--generate): remove each token's KV-cache entry and take the KL shift "
        "of the model's future next-token distributions.",
    )
    add_config_flags(p, MeasureConfig)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(MeasureConfig)}
    if kw["out"] is None:
        raise InputError("--out DIR is required: where the tables and run.json go")
    if not sys.stderr.isatty():  # no progress bars in logs
        kw["progress"] = False
    cfg = MeasureConfig(**kw)
    from forward_influence.hf.models import quiet_progress
    from forward_influence.measurement.run import measure
    from forward_influence.runtime.host import retain_freed_memory, set_threads_from_env
    from forward_influence.store.results import precision_floor_text, precision_warning
    from forward_influence.store.tables import token_text

    quiet_progress()
    set_threads_from_env()
    retain_freed_memory()  # process-wide glibc setting: the CLI's choice, not the library's
    res = measure(cfg)
    if res.meta.get("failed_units"):
        return report_failed("fi-measure", res.meta["failed_units"])
    s = res.summary
    top = (
        res.with_signals(s.assign(pos=s["source_pos"]))
        .sort_values("fi_total", ascending=False)
        .groupby("doc_id", sort=False)
        .head(5)
    )
    top = top.assign(text=[repr(str(t)) for t in token_text(top)])
    cols = ["doc_id", "source_pos", "text", "fi_total", "fi_near", "fi_far", "entropy_in_topk", "attn_snapkv"]
    print("Top sources by Forward Influence (token 0 is usually the attention sink; near/far from the eviction time):")
    print(top[cols].to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    skipped = len(res.meta.get("skipped") or [])
    print(
        f"fi-measure: {s.doc_id.nunique()} "
        + ("documents" if cfg.generate is None else f"generations ({skipped} skipped)")
        + f", {len(s)} ablations, "
        + (
            f"noise floor max {res.meta['noise_floor_max']:.2e}"
            if res.meta.get("noise_floor_max") is not None
            else f"{cfg.method} estimate"
        )
        + precision_floor_text(res.meta)
        + f", {res.meta['seconds_total']:.1f} s -> {cfg.out}"
    )
    warning = precision_warning(res.meta)
    if warning:
        print(f"fi-measure: warning: {warning}", file=sys.stderr)
    if cfg.report:
        os.environ.setdefault("MPLBACKEND", "Agg")
        from forward_influence.analysis.report import analyze_run
        from forward_influence.cli.analyze import print_claims

        try:
            a, path = analyze_run(cfg.out, result=res)
        except InputError as e:  # the measurement is complete; only the report is not possible
            print(f"fi-measure: no report ({e})", file=sys.stderr)
            return 0
        print("fi-measure: the study's claims on this run:")
        print_claims(a.claims)
        print(f"fi-measure: report -> {path / 'report.html'}")
    return 0


def entry(argv: list[str] | None = None) -> None:
    run_cli("fi-measure", lambda: main(argv))


if __name__ == "__main__":
    entry()
