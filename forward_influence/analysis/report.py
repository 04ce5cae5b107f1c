"""Write an analysis to disk: tables, figures (PNG + SVG) and a one-page report.

``RUN_DIR/analysis/`` (or ``--out``) holds::

    claims.parquet, correlations.parquet, selection.parquet, ...   tables
    figures/*.png, figures/*.svg                                   pictures
    token_strip.html                                               FI over the text
    report.html                                                    self-contained page
    analysis.json                                                  config + provenance

The directory is assembled under a temporary name and renamed into place,
so an interrupted analysis never leaves a half-written report.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import time
from pathlib import Path

import pandas as pd

from forward_influence.analysis import figures as F
from forward_influence.analysis.analyze import Analysis, AnalyzeConfig, analyze
from forward_influence.analysis.html import html_table, image_tag
from forward_influence.analysis.inference import interval_text
from forward_influence.errors import InputError
from forward_influence.store.results import (
    MeasureResult,
    fresh_dir,
    library_versions,
    precision_floor_text,
    precision_warning,
)

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}
.supported{background:#d9f2d9}.not-supported{background:#f8d7d7}.inconclusive{background:#f3f0d0}
img{max-width:100%;border:1px solid #eee}
.strip p{font-family:ui-monospace,monospace;font-size:.8em;line-height:1.6;white-space:normal}
.strip .m{border-radius:2px}.legend{font-size:.8em;margin:.3em 0}
pre{background:#f7f7f7;padding:.6em;font-size:.75em;overflow:auto}
"""

# Marks the page once loaded: images that decoded, rows of the claims table
# (read by the headless-browser test).
CHECK_JS = """
window.addEventListener('load',function(){var im=document.images,ok=0;
for(var i=0;i<im.length;i++){if(im[i].complete&&im[i].naturalWidth>0)ok++;}
var c=document.getElementById('claims');
document.body.setAttribute('data-images-total',im.length);document.body.setAttribute('data-images-loaded',ok);
document.body.setAttribute('data-claims-rows',c?c.tBodies[0].rows.length:0);});
"""


def claims_markdown(claims: pd.DataFrame) -> str:
    """The family rows of a claims table as Markdown (a ``corpus`` column is kept when present):
    documents, estimate, interval (— where unbounded), p, p (Holm), verdict."""
    lead = ["corpus"] if "corpus" in claims else []
    head = (
        "| "
        + " | ".join(
            lead + ["mode", "claim", "documents", "statistic", "estimate", "95% CI", "p", "p (Holm)", "verdict"]
        )
        + " |"
    )
    sep = "|" + "---|" * len(lead) + "---|---|---:|---|---:|---|---:|---:|---|"
    lines = [head, sep]
    for _, r in claims[claims["role"] == "claim"].iterrows():
        if r.verdict == "not tested":
            cells = [str(r[c]) for c in lead] + [
                str(r["mode"]),
                str(r["claim"]),
                "",
                r.note,
                "",
                "",
                "",
                "",
                "not tested",
            ]
        else:
            cells = [str(r[c]) for c in lead] + [
                str(r["mode"]),
                str(r["claim"]),
                str(r["n_docs"]),
                str(r["statistic"]),
                f"{r.estimate:+.3f}",
                interval_text(r.ci_low, r.ci_high),
                f"{r.p_value:.3g}",
                f"{r.p_adjusted:.3g}",
                f"**{r.verdict}**",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def forest_inputs(
    claims: pd.DataFrame, values: pd.DataFrame, panel: str = "this run"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The family rows of a claims table and their per-document values, shaped for :func:`figures.forest`."""
    fam = claims[(claims["role"] == "claim") & claims["p_value"].notna()]
    table = fam.assign(panel=panel, label=[f"{r.estimate:+.3f}, p {r.p_value:.2g}" for r in fam.itertuples()])
    vals = values[(values["role"] == "claim") & values["claim"].isin(fam["claim"])].assign(panel=panel)
    return vals, table


def make_figures(a: Analysis, out: Path) -> dict[str, Path]:
    """Draw every figure into ``out/figures`` (PNG + SVG); returns name -> PNG path."""
    figs = {
        "entropy_vs_influence_far": lambda: F.entropy_vs_influence(
            a.sources[a.sources["is_candidate"]], y="fi_far", title="Entropy vs far influence (candidates)"
        ),
        "entropy_vs_influence_total": lambda: F.entropy_vs_influence(
            a.sources[a.sources["is_candidate"]], y="fi_total", title="Entropy vs total influence (candidates)"
        ),
        "fi_vs_distance": lambda: F.fi_vs_distance(
            a.distance_curves, title="Influence of the kept tokens by distance (candidates)"
        ),
        "word_class_entropy": lambda: F.word_class_bars(
            a.tokens, title="Top-k entropy of the token's prediction by word class / UPOS"
        ),
        "selection_word_mix": lambda: F.selection_word_mix(
            a.selection_summary, title="Word classes of the kept tokens"
        ),
        "claims_forest": lambda: F.forest(*forest_inputs(a.claims, a.claim_documents)),
    }
    paths = {}
    for name, make in figs.items():
        if name.startswith("word_class") and "word_class" not in a.tokens:
            continue
        if name == "selection_word_mix" and "word_class" not in a.tokens:
            continue
        if name == "claims_forest" and not len(a.claim_documents):
            continue
        fig = make()
        paths[name] = F.save_figure(fig, out / "figures" / name)[0]  # a Figure of its own: nothing to close
    return paths


def _segment_parts(a: Analysis, result: MeasureResult) -> list[str]:
    """Report paragraphs for a run of ``fi-measure --generate``: which segment
    the page is restricted to, and the claims table of each segment."""
    gen = result.meta.get("generation")
    seg = a.meta.get("segment", "all")
    parts = []
    if gen:
        parts.append(
            f"<p>The documents are the model's own continuations of {len(result.meta.get('documents', []))} prompts "
            f"(<code>{html.escape(str(gen.get('source')))}</code>, "
            f"{html.escape(json.dumps(gen.get('settings') or gen.get('stored_settings')))}; "
            f"{len(result.meta.get('skipped') or [])} skipped as too short); "
            + (
                "this page covers every token."
                if seg == "all"
                else f"this page is restricted to the <b>{html.escape(seg)}</b> tokens "
                "(sources, candidates and claim 2's words)."
            )
            + "</p>"
        )
    if len(a.segment_claims):
        cols = [
            "segment",
            "claim",
            "statistic",
            "estimate",
            "ci_low",
            "ci_high",
            "p_value",
            "p_adjusted",
            "verdict",
            "n_docs",
            "note",
        ]
        parts += [
            "<h2>The claims by segment</h2>",
            "<p>The same tests on the prompt tokens and on the generated tokens alone (each segment's sources, "
            "candidates "
            "and words; Holm within each segment). In sliding mode every measured source is generated, so the prompt "
            "segment has only the claims that need no ablation (2, 3).</p>",
            html_table(a.segment_claims[cols], left=("segment", "claim", "statistic", "verdict", "note")),
        ]
    return parts


def _claims_parts(a: Analysis, figs: dict[str, Path], mode: str | None) -> list[str]:
    """The claims section: the family with verdicts, its forest plot, the rows beside it."""
    fam = a.claims["role"] == "claim"
    shown = a.claims.assign(interval=[interval_text(lo, hi) for lo, hi in zip(a.claims["ci_low"], a.claims["ci_high"])])
    claims = shown.loc[
        fam,
        [
            "claim",
            "statement",
            "statistic",
            "against",
            "estimate",
            "interval",
            "p_value",
            "p_adjusted",
            "verdict",
            "n_docs",
            "note",
        ],
    ]
    beside = shown.loc[~fam, ["claim", "reading", "role", "statistic", "estimate", "interval", "p_value", "n_docs"]]
    return [
        "<h2>The study's claims</h2>",
        "<p>Each claim is one value per document; <i>against</i> says how it would come out against the study. p: "
        "two-sided document-level "
        "sign-flip permutation test, unadjusted; the interval is that test inverted (the shifts it does not reject), "
        "so it excludes 0 "
        "exactly when p &lt; 1 − confidence; — where no set of documents this small can reject (≤ 5). p_adjusted: "
        "Holm over this run's "
        "claims (the README's headline adjusts over a pre-declared family across runs instead). Verdict, from "
        "p_adjusted: "
        "<i>supported</i> / <i>not supported</i> when it is below 1 − confidence and the estimate is on the claimed / "
        "the other side, "
        "<i>inconclusive</i> otherwise and with fewer than 5 documents. Rules compete within a unit: a split, or in "
        "sliding mode a block "
        f"of {a.meta['analyze_config']['block']} consecutive measured candidates; the budget is the share kept of "
        "each unit's candidates "
        f"(the smallest of --budgets). Candidates exclude the first {a.meta['analyze_config']['sinks']} positions "
        "(attention sinks)"
        + (" and, in split mode, the window before N that every attention method keeps" if mode == "split" else "")
        + ". Claim 4 (compressor quality) is tested by <code>fi-bench</code>.</p>",
        html_table(
            claims,
            left=("claim", "statement", "statistic", "against", "interval", "verdict", "note"),
            table_id="claims",
        ),
        *(
            [
                image_tag(
                    figs["claims_forest"],
                    "Each document's value per claim (dots), the estimate and its interval (diamond, bar).",
                )
            ]
            if "claims_forest" in figs
            else []
        ),
        *(
            [
                "<h3>Beside the claims (no verdict)</h3>",
                "<p>Other readings (claim 2's word and signal readings; claims 1 and 3 without "
                "the first sliding block, whose keys span the widest range of ages) and a position control (far-FI "
                "share kept, attention "
                "minus recency): estimate, interval and unadjusted p, outside the family.</p>",
                html_table(beside, left=("claim", "reading", "role", "statistic", "interval")),
            ]
            if len(beside)
            else []
        ),
    ]


def render_html(a: Analysis, result: MeasureResult, figs: dict[str, Path], strip: str, title: str) -> str:
    cfg = result.meta.get("config", {})
    estimate = result.meta.get("method", "exact") != "exact"
    mode = cfg.get("mode")
    dist = "from the eviction time τ = i + D" if mode == "sliding" else "from the eviction time τ = N"
    sel = a.selection_summary
    sel = (
        sel[sel["subset"] == "candidates"]
        .pivot_table(index=["budget", "rule"], columns="quantity", values="estimate")
        .reset_index()
    )
    corr = a.correlations
    corr = corr[(corr["scope"] == "pooled") & (corr["subset"] == "candidates") & (corr["method"] == "spearman")]
    corr = corr[["target", "signal", "control", "estimate", "ci_low", "ci_high", "n_tokens", "n_docs"]].sort_values(
        ["target", "control", "estimate"], ascending=[True, True, False]
    )
    corr_all = a.correlations
    corr_all = corr_all[
        (corr_all["scope"] == "pooled") & (corr_all["control"] == "none") & (corr_all["target"] == "fi_total")
    ]
    corr_all = corr_all[["subset", "method", "signal", "estimate", "ci_low", "ci_high"]]
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Model <code>{html.escape(str(result.meta.get('model', {}).get('name', '?')))}</code>, mode "
        f"<b>{html.escape(str(cfg.get('mode')))}</b>, "
        f"{result.summary['doc_id'].nunique()} documents, {len(a.sources)} ablated sources; near d ≤ "
        f"{a.meta['near']}, far d &gt; {a.meta['far']} ({dist}); "
        + (
            f"noise floor max {result.meta['noise_floor_max']:.2e}"
            if result.meta.get("noise_floor_max") is not None
            else f"method {html.escape(str(result.meta.get('method')))} (an estimate)"
        )
        + precision_floor_text(result.meta)
        + ". Intervals: the claims' invert their sign-flip test (below); summaries and correlations: "
        + f"{a.meta['analyze_config']['confidence']:.0%} "
        f"BCa bootstrap ({a.meta['analyze_config']['n_boot']} resamples) over documents unless marked per "
        "document.</p>",
        *(
            [
                "<p><b>Every FI value in this report is an estimate</b> "
                f"({html.escape(str(result.meta.get('method')))}), not an exact ablation.</p>"
            ]
            if estimate
            else []
        ),
        *([f"<p><b>Warning:</b> {html.escape(w)}.</p>"] if (w := precision_warning(result.meta)) else []),
        *_claims_parts(a, figs, mode),
        *_segment_parts(a, result),
    ]
    captions = {
        "entropy_vs_influence_far": "Top-k entropy of each ablated token against its far Forward Influence (log10); X "
        "= word-class medians.",
        "fi_vs_distance": f"Mean KL caused by removing the tokens each rule keeps, against distance {dist}; bands: "
        "95% CI over documents.",
        "selection_word_mix": "Word-class mix of the tokens each rule keeps.",
        "word_class_entropy": "Median top-k entropy by word class and UPOS over every token of the candidates.",
        "entropy_vs_influence_total": "Top-k entropy against total Forward Influence (log10).",
    }
    parts.append("<h2>Figures</h2>")
    for name in (
        "fi_vs_distance",
        "entropy_vs_influence_far",
        "selection_word_mix",
        "word_class_entropy",
        "entropy_vs_influence_total",
    ):
        if name in figs:
            parts.append(image_tag(figs[name], captions[name]))
    parts += [
        "<h2>Selection rules (candidates; mean over units)</h2>",
        "<p>kept_share_*: share of the unit's FI (total / near / far) held by the kept tokens; near_frac: their FI at "
        "near distances over their total; "
        "jaccard: overlap with the FI top set of the same size.</p>",
        html_table(sel, left=("rule",)),
        "<h2>Rank correlations with FI (pooled, candidates, Spearman)</h2>",
        "<p>control=position: partial correlation given the token's position (recency).</p>",
        html_table(corr, left=("target", "signal", "control")),
        "<h2>Correlations with total FI, all sources and candidates, Spearman and Kendall</h2>",
        html_table(corr_all, left=("subset", "method", "signal")),
    ]
    if len(a.word_tests):
        parts += [
            "<h2>Content vs function words, one value per word (Mann–Whitney U; rank-biserial &gt; 0: content "
            "higher)</h2>",
            html_table(a.word_tests, left=("level", "column")),
        ]
    parts += ["<h2>Forward Influence over the text</h2>", strip]
    prov = {
        k: result.meta.get(k)
        for k in (
            "run_id",
            "config",
            "model",
            "versions",
            "git_sha",
            "seed",
            "noise_floor_max",
            "precision_floor_median",
            "share_below_precision_floor",
            "seconds_total",
            "started",
            "finished",
        )
    }
    parts += [
        "<h2>Provenance</h2>",
        f"<pre>{html.escape(json.dumps({'measure': prov, 'analyze': a.meta}, indent=2, default=str))}</pre>",
    ]
    return (
        '<!doctype html><html lang="en"><head><meta '
        f'charset="utf-8"><title>{html.escape(title)}</title><style>{CSS}</style>'
        f"<script>{CHECK_JS}</script></head><body>{''.join(parts)}</body></html>"
    )


def write_analysis(a: Analysis, result: MeasureResult, out: str | Path, title: str | None = None) -> Path:
    """Write tables, figures, token strip, ``report.html`` and ``analysis.json`` to ``out`` atomically."""
    out = Path(out)
    tmp = fresh_dir(out.parent, f".{out.name}-")  # the user's umask, not mkdtemp's 0700
    try:
        for name in Analysis.TABLES:
            getattr(a, name).to_parquet(tmp / f"{name}.parquet", index=False)
        a.claims.to_csv(tmp / "claims.csv", index=False)
        figs = make_figures(a, tmp)
        src = a.sources
        first = src.groupby(["doc_id", "split_pos"], dropna=False, sort=False).size().index[0]
        strip = F.token_strip_html(result.tokens, src, first[0], None if pd.isna(first[1]) else int(first[1]))
        (tmp / "token_strip.html").write_text(f"<!doctype html><meta charset='utf-8'><style>{CSS}</style>{strip}")
        title = (
            title or f"Forward Influence report — {Path(str(result.meta.get('config', {}).get('out') or 'run')).name}"
        )
        (tmp / "report.html").write_text(render_html(a, result, figs, strip, title))
        meta = dict(a.meta)
        meta.update(written=time.strftime("%Y-%m-%dT%H:%M:%S%z"), versions=library_versions())
        (tmp / "analysis.json").write_text(json.dumps(meta, indent=2, default=str))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def analyze_run(
    run_dir: str | Path,
    cfg: AnalyzeConfig | None = None,
    out: str | Path | None = None,
    result: MeasureResult | None = None,
) -> tuple[Analysis, Path]:
    """``fi-analyze``: load a run, analyse it, write ``out`` (default ``RUN_DIR/analysis``)."""
    run_dir = Path(run_dir)
    if result is None:
        if not run_dir.is_dir():
            raise InputError(f"{run_dir} is not a directory; give the --out directory of an fi-measure run")
        result = MeasureResult.load(run_dir)
    a = analyze(result, cfg)
    path = write_analysis(a, result, Path(out) if out else run_dir / "analysis")
    return a, path
