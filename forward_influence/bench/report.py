"""Pictures, the validation against FI, and ``report.html`` of an ``fi-bench`` run
(tables in, files out; never a model)."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import stats

from forward_influence.analysis.figures import save_figure
from forward_influence.analysis.html import html_table, image_tag
from forward_influence.bench.summary import METRICS, load_run

LOWER_IS_BETTER = {"kl", "delta_nll", "nll"}

#: run.json fields the report shows as provenance
PROVENANCE = ("config", "model", "versions", "git_sha", "seed", "started")


def quality_vs_budget(summary: pd.DataFrame, task: str, metric: str) -> Figure:
    """One line per method: ``metric`` (mean, 95% interval) against the budget."""
    import seaborn as sns

    d = summary[(summary.task == task) & (summary.metric == metric)].sort_values("budget")
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    palette = dict(zip(sorted(d.method.unique()), sns.color_palette("tab20", d.method.nunique())))
    for method, g in d.groupby("method"):
        ax.plot(
            g.budget,
            g["mean"],
            marker="o",
            label=method,
            color=palette[method],
            lw=2.5 if method in ("infokv", "snapkv", "full") else 1.2,
        )
        ax.fill_between(g.budget, g.lo, g.hi, color=palette[method], alpha=0.12)
    ax.set_xlabel("cache budget" + (" (tokens)" if task == "ifeval" else " (fraction kept)"))
    ax.set_ylabel(metric + (" (lower is better)" if metric in LOWER_IS_BETTER else ""))
    if metric in ("kl",):
        ax.set_yscale("log")
    ax.set_title(f"{task}: {metric} by budget")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def additivity(results: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, float]]:
    """Measured summed KL of each cut cache against the summed single-token FI
    of what it dropped (rows with both, budget < 1, not ``full``)."""
    if "fi_dropped" not in results.columns:
        return pd.DataFrame(), {}
    d = results[(results.method != "full") & results.fi_dropped.notna() & results.kl_sum.notna()]
    d = d[(d.kl_sum > 0) & (d.fi_dropped > 0)]
    if len(d) < 3:
        return d, {}
    rho = stats.spearmanr(d.fi_dropped, d.kl_sum).statistic
    r = stats.pearsonr(np.log10(d.fi_dropped), np.log10(d.kl_sum)).statistic
    ratio = float(np.median(d.kl_sum / d.fi_dropped))
    return d, {"spearman": float(rho), "pearson_log10": float(r), "median_ratio": ratio, "n": int(len(d))}


def additivity_figure(d: pd.DataFrame, fit: dict[str, float]) -> Figure:
    fig = Figure(figsize=(5.6, 4.6))
    ax = fig.subplots()
    for method, g in d.groupby("method"):
        ax.scatter(g.fi_dropped, g.kl_sum, s=14, label=method, alpha=0.8)
    lo = float(min(d.fi_dropped.min(), d.kl_sum.min()))
    hi = float(max(d.fi_dropped.max(), d.kl_sum.max()))
    ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--", label="additive (y = x)")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="sum of single-token FI of the dropped tokens",
        ylabel="measured KL of the cut cache (sum over F)",
    )
    ax.set_title(
        f"Additivity: Spearman {fit.get('spearman', float('nan')):.2f}, "
        f"median ratio {fit.get('median_ratio', float('nan')):.2f}"
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def write_report(out: str | Path) -> Path:
    """Figures and ``report.html`` for the finished run in ``out``."""
    out = Path(out)
    meta, results, summary = load_run(out)
    figdir = out / "figures"
    figdir.mkdir(exist_ok=True)
    figs = []
    for task in summary.task.unique():
        for metric in [m for m in METRICS.get(task, ()) + ("fi_kept_share",) if m in set(summary.metric)]:
            paths = save_figure(quality_vs_budget(summary, task, metric), figdir / f"{task}_{metric}")
            figs.append((paths[0], f"{task}: {metric} against the budget (95% intervals over samples)"))
    d, fit = additivity(results)
    if fit:
        paths = save_figure(additivity_figure(d, fit), figdir / "additivity")
        figs.append((paths[0], "Measured KL of each cut against the summed FI of its dropped tokens"))
        (out / "additivity.json").write_text(json.dumps(fit, indent=2) + "\n")
    table = summary.copy()
    show = ["task", "metric", "method", "budget", "n", "mean", "lo", "hi"] + [
        c for c in ("vs_full", "vs_full_lo", "vs_full_hi", "vs_snapkv", "vs_snapkv_lo", "vs_snapkv_hi") if c in table
    ]
    body = [
        f"<h1>fi-bench: {html.escape(meta['config']['task'])}</h1>",
        f"<p>{len(meta['samples'])} samples; methods {', '.join(meta['methods'])}; budgets {meta['budgets']}; "
        f"{meta.get('seconds_total', 0):.0f} s.</p>",
        "<h2>Summary</h2>",
        html_table(table[show], left=("task", "metric", "method")),
    ]
    if fit:
        body += ["<h2>Additivity</h2>", f"<pre>{html.escape(json.dumps(fit, indent=2))}</pre>"]
    body += ["<h2>Figures</h2>"] + [image_tag(p, alt) for p, alt in figs]
    body += [
        "<h2>Config and provenance</h2>",
        f"<pre>{html.escape(json.dumps({k: meta[k] for k in PROVENANCE}, indent=2, default=str))}</pre>",
    ]
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;font-size:12px}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}.l{text-align:left}img{max-width:100%}"
    )
    head = f"<head><meta charset='utf-8'><title>fi-bench</title><style>{style}</style></head>"
    page = f"<!doctype html><html>{head}<body>{''.join(body)}</body></html>"
    tmp = out / ".report.html.tmp"
    tmp.write_text(page)
    tmp.replace(out / "report.html")
    return out / "report.html"
