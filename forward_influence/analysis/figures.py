"""Pictures of an analysis: one function per figure, DataFrame in, Figure out.

Every function draws with seaborn on a new :class:`matplotlib.figure.Figure`
(matplotlib's object API, not pyplot: no figure is registered with pyplot's
global state, none needs closing, and importing this module loads neither
pyplot nor seaborn) and returns it, so the same call works in Jupyter (the
figure shows) and in :mod:`report` (it is saved as PNG and SVG with
:func:`save_figure`).

>>> import pandas as pd, numpy as np
>>> df = pd.DataFrame({"entropy_in_topk": np.linspace(0, 2, 50), "fi_far": np.logspace(-6, -1, 50),
...                    "word_class": ["content", "function"] * 25})
>>> fig = entropy_vs_influence(df)
>>> len(fig.axes) >= 3
True
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from forward_influence.store.schema import (
    CLASS_COLORS,
    SIGNALS_BEFORE_RECORDING,
    SignalSpec,
    rule_colors,
    rule_labels,
)
from forward_influence.store.tables import token_text


#: One colour per word class and per selection rule, the same in every figure.
def rule_style(specs: Sequence[SignalSpec] | None) -> tuple[dict[str, str], dict[str, str]]:
    """(colours, labels) of the selection rules of a run's signals (``a.meta["signals"]``;
    None: the signals every run measured before run.json recorded them)."""
    specs = (
        SIGNALS_BEFORE_RECORDING
        if specs is None
        else [SignalSpec.from_dict(s) if isinstance(s, dict) else s for s in specs]
    )
    return rule_colors(specs), rule_labels(specs)


def _log_fi(v: pd.Series, floor: float | None = None) -> np.ndarray:
    """log10 of FI with non-positive values moved to a floor below the smallest positive."""
    x = v.to_numpy(float)
    pos = x[x > 0]
    lo = floor if floor is not None else (pos.min() / 10 if pos.size else 1e-12)
    return np.log10(np.maximum(x, lo))


def save_figure(fig: Figure, stem: str | Path, dpi: int = 120) -> list[Path]:
    """Write ``stem.png`` and ``stem.svg``; returns the paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    fig.savefig(paths[0], dpi=dpi, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    return paths


class _JointAxes:
    """A joint panel with marginal panels above and to the right (seaborn's
    ``JointGrid`` layout) on a :class:`~matplotlib.figure.Figure` of its own."""

    def __init__(self, height: float = 6.0, ratio: int = 5, space: float = 0.2):
        self.figure = Figure(figsize=(height, height))
        gs = self.figure.add_gridspec(ratio + 1, ratio + 1, hspace=space, wspace=space)
        self.ax_joint = self.figure.add_subplot(gs[1:, :-1])
        self.ax_marg_x = self.figure.add_subplot(gs[0, :-1], sharex=self.ax_joint)
        self.ax_marg_y = self.figure.add_subplot(gs[1:, -1], sharey=self.ax_joint)
        self.ax_marg_x.tick_params(labelbottom=False)
        self.ax_marg_y.tick_params(labelleft=False)
        for ax in (self.ax_marg_x, self.ax_marg_y):
            for side in ("top", "right"):
                ax.spines[side].set_visible(False)


def entropy_vs_influence(
    src: pd.DataFrame, x: str = "entropy_in_topk", y: str = "fi_far", title: str | None = None
) -> Figure:
    """Hexbin of a signal against log10 FI, with marginal distributions per word class.

    The joint panel shows the density of all sources; each word class's median
    is marked on it; the margins are per-class histograms (density-normalised).
    """
    df = src[[x, y] + (["word_class"] if "word_class" in src else [])].copy()
    df = df[np.isfinite(df[x].to_numpy(float)) & np.isfinite(df[y].to_numpy(float))]
    df["log_fi"] = _log_fi(df[y])
    if "word_class" not in df:
        df["word_class"] = "other"
    df["word_class"] = df["word_class"].astype("string").fillna("other").astype(str)
    order = [c for c in CLASS_COLORS if c in set(df["word_class"])]
    import seaborn as sns

    g = _JointAxes(height=5.5, ratio=4)
    grid = int(np.clip(np.sqrt(len(df)) / 1.5, 10, 40))
    g.ax_joint.hexbin(df[x], df["log_fi"], gridsize=grid, cmap="Greys", mincnt=1, bins="log")
    for c in order:
        d = df[df["word_class"] == c]
        g.ax_joint.scatter(
            d[x].median(),
            d["log_fi"].median(),
            s=90,
            marker="X",
            color=CLASS_COLORS[c],
            edgecolor="white",
            zorder=3,
            label=f"{c} median (n={len(d)})",
        )
    kw = dict(
        hue="word_class",
        hue_order=order,
        palette=CLASS_COLORS,
        stat="density",
        common_norm=False,
        element="step",
        fill=False,
        legend=False,
    )
    sns.histplot(data=df, x=x, ax=g.ax_marg_x, **kw)
    sns.histplot(data=df, y="log_fi", ax=g.ax_marg_y, **kw)
    for ax in (g.ax_marg_x, g.ax_marg_y):
        ax.set_xlabel("")
        ax.set_ylabel("")
    g.ax_joint.legend(loc="lower right", fontsize=8, frameon=True)
    g.ax_joint.set_xlabel(x.replace("_", " "))
    g.ax_joint.set_ylabel(f"log10 {y.replace('_', ' ')}")
    if title:
        g.figure.suptitle(title, y=1.02)
    return g.figure


def fi_vs_distance(
    curves: pd.DataFrame,
    subset: str = "candidates",
    rules: Sequence[str] | None = None,
    title: str | None = None,
    specs: Sequence[SignalSpec] | None = None,
) -> Figure:
    """Mean KL of the kept tokens against distance, one line per selection rule,
    one panel per budget; bands are 95% bootstrap intervals over documents.
    ``specs``: the run's signals (``a.meta["signals"]``), for colours and labels."""
    colors, labels_of = rule_style(specs)
    df = curves[curves["subset"] == subset].copy()
    if rules is not None:
        df = df[df["rule"].isin(rules)]
    df["rule"] = df["rule"].astype(str)
    budgets = sorted(df["budget"].unique())
    import seaborn as sns

    fig = Figure(figsize=(5.2 * len(budgets), 4.2))
    axes = fig.subplots(1, len(budgets), sharey=True, squeeze=False)
    hue_order = [r for r in colors if r in set(df["rule"])]
    for ax, b in zip(axes[0], budgets):
        d = df[df["budget"] == b]
        sns.lineplot(
            data=d,
            x="d_mid",
            y="mean_kl",
            hue="rule",
            hue_order=hue_order,
            palette=colors,
            errorbar=("ci", 95),
            n_boot=500,
            seed=0,
            marker="o",
            ax=ax,
        )
        ax.set_xscale("log")
        ax.set_yscale("log")
        tau = "distance_from" in d and (d["distance_from"] == "tau").any()
        ax.set_xlabel("distance from eviction t − τ (tokens)" if tau else "distance d = t − i (tokens)")
        ax.set_ylabel("mean KL of kept tokens")
        ax.set_title(f"budget {b:.0%}")
        handles, labels = ax.get_legend_handles_labels()
        ax.legend(handles, [labels_of.get(lab, lab) for lab in labels], fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def word_class_bars(
    tokens: pd.DataFrame, value: str = "entropy_in_topk", min_count: int = 30, title: str | None = None
) -> Figure:
    """Median of a per-token value by word class and by UPOS (95% bootstrap intervals)."""
    df = tokens[np.isfinite(tokens[value].to_numpy(float))].copy()
    df["word_class"] = df["word_class"].astype("string").fillna("other").astype(str)
    df["upos"] = df["upos"].astype("string").fillna("none").astype(str)
    counts = df["upos"].value_counts()
    keep = counts[counts >= min_count].index
    upos_cls = df[df["upos"].isin(keep)].groupby("upos")["word_class"].agg(lambda s: s.mode().iloc[0])
    upos_order = df[df["upos"].isin(keep)].groupby("upos")[value].median().sort_values(ascending=False).index.tolist()
    import seaborn as sns

    fig = Figure(figsize=(11, 4))
    a, b = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 3]})
    cls_order = [c for c in CLASS_COLORS if c in set(df["word_class"])]
    sns.barplot(
        data=df,
        x="word_class",
        y=value,
        order=cls_order,
        hue="word_class",
        hue_order=cls_order,
        palette=CLASS_COLORS,
        estimator="median",
        errorbar=("ci", 95),
        n_boot=300,
        seed=0,
        ax=a,
        legend=False,
    )
    a.set_xlabel("")
    a.set_ylabel(f"median {value.replace('_', ' ')}")
    sns.barplot(
        data=df[df["upos"].isin(keep)],
        x="upos",
        y=value,
        order=upos_order,
        hue="upos",
        palette={u: CLASS_COLORS.get(upos_cls[u], "#999999") for u in upos_order},
        estimator="median",
        errorbar=("ci", 95),
        n_boot=300,
        seed=0,
        ax=b,
        legend=False,
    )
    b.set_xlabel(f"UPOS (coloured by word class; ≥ {min_count} tokens)")
    b.set_ylabel("")
    b.tick_params(axis="x", rotation=45)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def selection_word_mix(
    selection_summary: pd.DataFrame,
    subset: str = "candidates",
    title: str | None = None,
    specs: Sequence[SignalSpec] | None = None,
) -> Figure:
    """Word-class mix of the tokens each rule keeps, per budget (stacked shares)."""
    colors, labels_of = rule_style(specs)
    df = selection_summary[
        (selection_summary["subset"] == subset)
        & selection_summary["quantity"].isin(["share_content", "share_function"])
    ]
    wide = df.pivot_table(index=["budget", "rule"], columns="quantity", values="estimate").reset_index()
    wide["share_other"] = 1 - wide["share_content"] - wide["share_function"]
    budgets = sorted(wide["budget"].unique())
    fig = Figure(figsize=(5 * len(budgets), 3.8))
    axes = fig.subplots(1, len(budgets), sharey=True, squeeze=False)
    for ax, bud in zip(axes[0], budgets):
        w = wide[wide["budget"] == bud].set_index("rule")
        w = w.loc[[r for r in colors if r in w.index]]
        bottom = np.zeros(len(w))
        for c in ("content", "function", "other"):
            ax.bar(
                [labels_of.get(r, r) for r in w.index], w[f"share_{c}"], bottom=bottom, color=CLASS_COLORS[c], label=c
            )
            bottom += w[f"share_{c}"].to_numpy()
        ax.set_title(f"budget {bud:.0%}")
        ax.set_ylim(0, 1)
        ax.tick_params(axis="x", rotation=40)
        ax.set_ylabel("share of kept tokens")
    axes[0][-1].legend(loc="upper right", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def token_strip_html(
    tokens: pd.DataFrame,
    src: pd.DataFrame,
    doc_id: str,
    split_pos: int | None = None,
    value: str = "fi_total",
    max_tokens: int = 1500,
    cmap: str = "viridis",
) -> str:
    """The document's text with every measured token coloured by log10 FI (HTML).

    Tokens that were not ablated keep a white background; hovering shows the
    token's position, FI and entropy.
    """
    tok = tokens[tokens["doc_id"] == doc_id].sort_values("pos").head(max_tokens)
    s = src[src["doc_id"] == doc_id]
    if split_pos is not None:
        s = s[s["split_pos"] == split_pos]
    fi = dict(zip(s["source_pos"].to_numpy(), s[value].to_numpy(float)))
    vals = np.array([v for v in fi.values() if v > 0])
    lo, hi = (np.log10(vals.min()), np.log10(vals.max())) if vals.size else (0.0, 1.0)
    cm = matplotlib.colormaps[cmap]
    spans = []
    for p, t, e in zip(
        tok["pos"], token_text(tok).astype(str), tok.get("entropy_in_topk", pd.Series(np.nan, index=tok.index))
    ):
        text = html.escape(t).replace("\n", "<br>")
        if p in fi:
            v = fi[p]
            x = (np.log10(v) - lo) / (hi - lo) if v > 0 and hi > lo else 0.0
            r, g, b, _ = cm(float(np.clip(x, 0, 1)))
            fg = "#000" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "#fff"
            style = f"background:rgb({int(r * 255)},{int(g * 255)},{int(b * 255)});color:{fg}"
            spans.append(
                f'<span class="m" style="{style}" title="pos {p} · {value} {v:.3g} · entropy {e:.3g}">{text}</span>'
            )
        else:
            spans.append(f'<span title="pos {p}">{text}</span>')
    bar = "".join(
        f'<span style="background:rgb({int(c[0] * 255)},{int(c[1] * 255)},{int(c[2] * 255)});'
        'display:inline-block;width:12px">&nbsp;</span>'
        for c in (cm(x) for x in np.linspace(0, 1, 20))
    )
    legend = f'<div class="legend">log10 {value}: {lo:.1f} {bar} {hi:.1f} · white = not ablated</div>'
    return (
        f'<div class="strip"><div class="strip-title">{html.escape(str(doc_id))}'
        + (f" · split N={split_pos}" if split_pos is not None else "")
        + f"</div>{legend}<p>{''.join(spans)}</p></div>"
    )


def forest(values: pd.DataFrame, table: pd.DataFrame, title: str | None = None) -> Figure:
    """Per claim, each document's value (dots), the pooled estimate (diamond)
    and its interval (the inverted sign-flip test; arrows where unbounded).

    ``values``: per-document values (:func:`forward_influence.analysis.claims.claim_values`)
    with ``panel`` (e.g. corpus) and ``claim`` columns; ``table``: one row per
    (panel, claim) with estimate, ci_low, ci_high and ``label`` (e.g. "p 0.02").
    Panels are columns, claims rows.
    """
    panels = list(pd.unique(table["panel"]))
    claims_ = sorted(pd.unique(table["claim"]), key=str)
    fig = Figure(figsize=(3.6 * len(panels), 1.0 + 1.9 * len(claims_)))
    axes = fig.subplots(len(claims_), len(panels), squeeze=False, sharey="row")
    for i, c in enumerate(claims_):
        for j, pnl in enumerate(panels):
            ax = axes[i][j]
            v = values[(values["claim"] == c) & (values["panel"] == pnl)].sort_values("value")
            row = table[(table["claim"] == c) & (table["panel"] == pnl)]
            ax.axvline(0, color="#999999", lw=0.8)
            if len(v):
                ax.scatter(v["value"], np.arange(len(v)) + 1.0, s=14, color="#555555", zorder=3)
            if len(row):
                r = row.iloc[0]
                if np.isfinite(r.ci_low) and np.isfinite(r.ci_high):
                    ax.plot([r.ci_low, r.ci_high], [0, 0], color="#d95f02", lw=2.5, solid_capstyle="butt")
                else:  # unbounded: too few documents for any rejection
                    ax.axhline(0, color="#d95f02", lw=1.2, ls="--")
                    ax.text(0.02, 0.08, "interval unbounded", transform=ax.transAxes, fontsize=7, color="#d95f02")
                ax.scatter([r.estimate], [0], marker="D", s=40, color="#d95f02", zorder=4)
                ax.set_title(f"{pnl} · claim {c}: {r.get('label', '')}", fontsize=8.5)
            ax.set_yticks([])
            ax.tick_params(axis="x", labelsize=7.5)
    fig.supxlabel("per-document value (dots); pooled estimate and 95% interval (diamond, bar)", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
