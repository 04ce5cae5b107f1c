"""The distilled compressor in fi-bench, on documents its scorer was not trained on (issue 25, item 5).

For each cross-corpus direction whose exact stride-1 run is complete (``scripts/distill_runs.py``):

    A: models fit on the papers and SQuAD 1-24, fidelity on SQuAD 25-35   (FI oracle: runs/distill/squad-test)
    B: models fit on SQuAD 1-35, fidelity on the papers                   (FI oracle: runs/distill/papers-test)

``fi-bench --task fidelity`` at N = 512, F = 256, budgets 20% and 40%, every method, the FI oracle and
``distilled`` with the far-FI model of that direction that the shipped default's feature set reads
(docs/models/heldout_<direction>_no_h2o.json, written by scripts/distill_headline.py); then ``distilled``
alone with the model that reads every signal (heldout_<direction>_all.json) on the same documents. The gap
closed, G = (KL_best - KL_distilled) / (KL_best - KL_oracle) on document-mean KLs (all targets: ``kl``;
d_tau > 128: ``kl_far``), with its interval over documents (fi-bench's ``gap_closed``), for both models.
``--head-mix X``: the one-score choice measured on the same documents: distilled with ``head_mix`` 0 (one
score for every layer and KV head) against X (each KV head's SnapKV attention mixed in, ranks; the
compressor's default 0.5 was chosen by this comparison), document-mean KL at both budgets, the sign-flip
test over documents and its inverted interval (the pre-declared rule: mix only if it lowers KL at 20% with
p < 0.05 in both directions).
``--retrieval``: synthetic retrieval exact match at 2k and 4k tokens (the 18 examples of
scripts/bench_headline.py, same seed) for full, InfoKV, TOVA and the shipped distilled model.

Writes docs/tables/distill_fidelity.csv (G rows), distill_fidelity_methods.csv (mean KL per method, budget,
direction), distill_fidelity_paired.csv (the shipped distilled minus InfoKV, SnapKV, H2O and Expected
Attention: sign-flip p over documents and its inverted interval, secondary, with Holm's p over all of them),
distill_fidelity.md (all three as Markdown), distill_head_mix.csv, distill_retrieval.csv; prints the
headline lines. Resumable (fi-bench checkpoints per document).

Usage: .venv/bin/python scripts/distill_fidelity.py [--runs runs/distill] [--head-mix 0.3] [--retrieval] [--small]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import distill_runs
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
#: direction -> (the stride-1 run of its test documents, the document source, label)
DIRECTIONS = {
    "A": ("squad-test", None, "papers + SQuAD 1-24 -> SQuAD 25-35"),
    "B": ("papers-test", "data/arxiv.json", "SQuAD 1-35 -> papers"),
}
FEATURE_SETS = ("no_h2o", "all")  # the shipped default's, then every signal (scripts/distill_headline.py)


def complete(run: Path) -> bool:
    import json

    try:
        return json.loads((run / "run.json").read_text()).get("status") == "complete"
    except (OSError, ValueError):
        return False


def head_mix_specs(mix: float) -> tuple[str, str]:
    """fi-bench's method specs of the one-score choice: one score for every layer and head, then mixed."""
    return "distilled:head_mix=0", f"distilled:head_mix={mix:g}"


#: What the shipped distilled compressor is compared with, pair by pair (secondary, unadjusted): the entropy-aware
#: compressor it stands beside, the attention its head mix reads, and the two best deployable methods.
PAIRED_WITH = ("infokv", "snapkv", "h2o", "expected_attention")


def paired_table(rows: pd.DataFrame, pairs: list[tuple[str, str]]) -> pd.DataFrame:
    """``method - reference`` for each pair, per direction, budget and metric: document means, the sign-flip
    test over documents and the interval that inverts it."""
    import numpy as np

    from forward_influence.analysis.inference import sign_flip_test

    out = []
    for (key, budget), g in rows.groupby(["direction", "budget"]):
        for metric in ("kl", "kl_far"):
            w = g.pivot_table(index="sample_id", columns="method", values=metric)
            for reference, method in pairs:
                d = (w[method] - w[reference]).to_numpy(float)
                t = sign_flip_test(d, rng=np.random.default_rng(0), alpha=0.05)
                out.append(
                    {
                        "direction": key,
                        "budget": budget,
                        "metric": metric,
                        "method": method,
                        "reference": reference,
                        "n_docs": int(t.n_docs),
                        "kl_method": w[method].mean(),
                        "kl_reference": w[reference].mean(),
                        "diff": float(t.statistic),
                        "diff_low": t.ci_low,
                        "diff_high": t.ci_high,
                        "p_value": float(t.p_value),
                    }
                )
    return pd.DataFrame(out)


def with_holm(paired: pd.DataFrame) -> pd.DataFrame:
    """``p_holm``: Holm's adjustment over every comparison of the paired table (both directions, both
    budgets, both metrics, every reference), the family the docs' prose reads them in."""
    from forward_influence.analysis.inference import holm

    return paired.assign(p_holm=holm(paired["p_value"].to_numpy(float)))


def head_mix_table(rows: pd.DataFrame, mix: float) -> pd.DataFrame:
    """Mixed minus shared, per direction, budget and metric (:func:`paired_table`)."""
    shared, mixed = head_mix_specs(mix)
    table = paired_table(rows, [(shared, mixed)]).drop(columns=["method", "reference"])
    return table.rename(columns={"kl_reference": "shared", "kl_method": "mixed"}).assign(head_mix=mix)


def markdown(gaps: pd.DataFrame, means: pd.DataFrame, paired: pd.DataFrame) -> str:
    """The G table, the mean KL of every method and the paired differences (docs/tables/distill_fidelity.md)."""
    from forward_influence.bench.summary import gap_text

    lines = [
        "| train -> test | reads | KL over | budget | best deployable | distilled | FI oracle | G [95%] | docs |",
        "|---|---|---|---:|---|---:|---:|---|---:|",
    ]
    for _, r in gaps.sort_values(["direction", "features", "metric", "budget"]).iterrows():
        over = "all targets" if r["metric"] == "kl" else "d_tau > 128"
        lines.append(
            f"| {r['label']} | {r['features']} | {over} | {r['budget']:.0%} | {r['best']} {r['kl_best']:.4f} | "
            f"{r['kl_method']:.4f} | {r['kl_oracle']:.4f} | {gap_text(r)} | {r['n']} |"
        )
    wide = means.pivot_table(index="method", columns=["direction", "metric", "budget"], values="mean")
    cols = list(wide.columns)
    lines += [
        "",
        "| method | " + " | ".join(f"{d} {'KL' if m == 'kl' else 'far KL'} @ {b:.0%}" for d, m, b in cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for method, row in wide.sort_values(cols[0]).iterrows():
        lines.append(f"| {method} | " + " | ".join(f"{v:.4f}" for v in row) + " |")
    lines += [
        "",
        "| train -> test | KL over | budget | distilled - | difference [95%, inverts p] | p "
        f"| p, Holm over {len(paired)} |",
        "|---|---|---:|---|---|---:|---:|",
    ]
    for _, r in paired.sort_values(["direction", "metric", "budget"]).iterrows():
        over = "all targets" if r["metric"] == "kl" else "d_tau > 128"
        lines.append(
            f"| {r['label']} | {over} | {r['budget']:.0%} | {r['reference']} | "
            f"{r['diff']:+.4f} [{r['diff_low']:+.4f}, {r['diff_high']:+.4f}] | {r['p_value']:.3g} | {r['p_holm']:.3g} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="runs/distill")
    ap.add_argument("--retrieval", action="store_true", help="also the synthetic retrieval rows")
    ap.add_argument("--head-mix", type=float, default=None, help="also distilled with this head_mix against 0")
    ap.add_argument("--small", action="store_true", help="the runs of distill_runs.py --small; nothing committed")
    args = ap.parse_args()
    if args.head_mix is not None and not 0 < args.head_mix <= 1:
        ap.error(f"--head-mix {args.head_mix:g}: give a weight in (0, 1] to compare against head_mix 0")
    os.chdir(ROOT)
    from forward_influence import load_model
    from forward_influence.bench import BenchConfig, run_bench
    from forward_influence.bench.summary import gap_closed, gap_text
    from forward_influence.measurement.documents import load_documents
    from forward_influence.store.results import MeasureResult

    t0 = time.perf_counter()
    runs = Path("runs/distill-small" if args.small and args.runs == "runs/distill" else args.runs)
    models = runs / "headline" if args.small else Path("docs/models")
    tables = runs / "headline" if args.small else Path("docs/tables")
    shape = dict(n_prefix=128, n_future=160) if args.small else dict(n_prefix=512, n_future=256)
    lm = load_model("smollm2-135m", device="cpu", dtype="float32")
    common = dict(task="fidelity", budgets=(0.2, 0.4), progress=False, report=False, **shape)
    gaps, means, mixes, paired = [], [], [], []
    plan = distill_runs.runs("data/arxiv.json", args.small)
    for key, (run_name, doc, label) in DIRECTIONS.items():
        run = runs / run_name
        want = plan[run_name]
        docs = load_documents(doc, doc_ids=want.get("doc_ids"), max_docs=want.get("max_docs"))
        doc_ids = tuple(d.doc_id for d in docs)
        if args.head_mix is not None:  # needs the test documents only, not the FI oracle
            bench = BenchConfig(
                **common,
                doc=doc,
                doc_ids=doc_ids,
                distilled_model=str(models / f"heldout_{key}_{FEATURE_SETS[0]}.json"),
                methods=head_mix_specs(args.head_mix),
                out=str(runs / f"bench-{key}-head-mix"),
            )
            mixes.append(run_bench(bench, lm).assign(direction=key))
        if not complete(run):
            print(f"{key} ({label}): {run} is not complete; run scripts/distill_runs.py --only {run_name}", flush=True)
            continue
        measured = tuple(MeasureResult.load(run).summary["doc_id"].unique())
        if set(measured) != set(doc_ids):
            raise SystemExit(f"{run} measured other documents than {run_name}'s: rerun scripts/distill_runs.py")
        results = {}
        for fset in FEATURE_SETS:
            model = models / f"heldout_{key}_{fset}.json"
            methods = None if fset == FEATURE_SETS[0] else ("full", "distilled")  # None: every method
            cfg = BenchConfig(
                **common,
                doc=doc,
                doc_ids=doc_ids,
                fi_run=str(run),
                distilled_model=str(model),
                methods=methods,
                out=str(runs / f"bench-{key}-{fset}"),
            )
            results[fset] = run_bench(cfg, lm)
        every = results[FEATURE_SETS[0]]
        for fset, res in results.items():
            merged = pd.concat([every[every["method"] != "distilled"], res[res["method"] == "distilled"]])
            g = gap_closed(merged, seed=0).assign(direction=key, label=label, features=fset)
            gaps.append(g)
            for _, r in g.iterrows():
                print(
                    f"{key} ({label}) distilled[{fset}] {r['metric']} at {r['budget']:g}: {gap_text(r)}; "
                    f"best deployable {r['best']} {r['kl_best']:.4f}, distilled {r['kl_method']:.4f}, "
                    f"oracle {r['kl_oracle']:.4f}, {r['n']} documents",
                    flush=True,
                )
        pairs = [(ref, "distilled") for ref in PAIRED_WITH]
        paired.append(paired_table(every.assign(direction=key), pairs).assign(label=label))
        for metric in ("kl", "kl_far"):
            m = every.groupby(["method", "budget"])[metric].mean().rename("mean").reset_index()
            means.append(m.assign(metric=metric, direction=key, label=label))
    if gaps:
        pd.concat(gaps, ignore_index=True).to_csv(tables / "distill_fidelity.csv", index=False)
        pd.concat(means, ignore_index=True).to_csv(tables / "distill_fidelity_methods.csv", index=False)
        paired = with_holm(pd.concat(paired, ignore_index=True))
        paired.to_csv(tables / "distill_fidelity_paired.csv", index=False)
        (tables / "distill_fidelity.md").write_text(markdown(pd.concat(gaps), pd.concat(means), paired))
    if mixes:
        table = head_mix_table(pd.concat(mixes, ignore_index=True), args.head_mix)
        table.to_csv(tables / "distill_head_mix.csv", index=False)
        for _, r in table.iterrows():
            print(
                f"{r['direction']} head_mix {r['head_mix']:g} - 0, {r['metric']} at {r['budget']:g}: "
                f"{r['mixed']:.4f} vs {r['shared']:.4f}, {r['diff']:+.4f} "
                f"[{r['diff_low']:+.4f}, {r['diff_high']:+.4f}] "
                f"p {r['p_value']:.3g}, {r['n_docs']} documents",
                flush=True,
            )
    if args.retrieval:
        cfg = BenchConfig(
            task="retrieval",
            budgets=(0.2, 0.4),
            lengths=(2048,) if args.small else (2048, 4096),
            **(dict(kinds=("passkey",), n_samples=2) if args.small else {}),
            methods=("full", "infokv", "tova", "distilled"),
            out=str(runs / "bench-retrieval"),
            progress=False,
            report=False,
        )
        res = run_bench(cfg, lm)
        em = res.groupby(["method", "length", "budget"])["exact_match"].agg(["mean", "count"]).reset_index()
        em.to_csv(tables / "distill_retrieval.csv", index=False)
        print(em.to_string(index=False), flush=True)
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}; wall {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
