"""Statistics that test the study's claims on an ``fi-measure`` run.

Everything here is DataFrame in, DataFrame out; :func:`analyze` runs it all
and :mod:`forward_influence.analysis.report` turns the result into pictures and HTML.

Units, resampling and the rules used
------------------------------------
A *unit* is one set of measured sources that compete for a budget: a document
in ``sliding`` mode, a (document, split) pair in ``split`` mode. Forward
Influence is extremely heavy-tailed and its scale differs between documents,
so correlations are rank statistics computed *within* each unit; the pooled
coefficient is their weighted mean over units (tokens for Spearman ρ, pairs
for Kendall τ), so tokens of different documents are never ranked against
each other. Per-document intervals resample tokens (paired, percentile);
pooled intervals resample whole documents (``scipy.stats.bootstrap``, BCa),
never tokens, since tokens of a document are not independent.

*Position control.* In ``split`` mode early tokens are only ever seen from far
away, so position confounds FI (docs/design.md §2.1). ``control="position"`` gives the
partial rank correlation given the token's position (ranks residualised on the
position's rank; Kendall: the partial-τ formula).

*Candidates.* The first ``sinks`` positions (attention sinks) carry most of
the FI and are kept by every practical compressor; in split mode the last
``window`` positions before ``N`` are kept whole by every attention method.
Neither competes for a budget: every table is computed with ``subset="all"``
and ``subset="candidates"`` (the rest), and the claims use the candidates.

*Signals* obey the causality rule of :mod:`forward_influence.measurement.signals`: the
attention signals of a source are those read before its eviction time
(``source_signals``), per split.

*Claims* and their verdicts: :mod:`forward_influence.analysis.claims` (statistics:
:mod:`forward_influence.analysis.inference`). The word-class table tests one value per
word (its first subword), since a word's subword pieces are not independent.

>>> AnalyzeConfig(budgets=(0.2,)).validate().budgets
(0.2,)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from forward_influence.analysis.claims import MIN_DOCS_VERDICT, claim1_absent, claim_values, claims, claims_from_values  # noqa: F401
from forward_influence.analysis.inference import word_level
from forward_influence.analysis.selection import (  # noqa: F401  (re-exported: the analysis API in one place)
    BLOCK,
    FI_TARGETS,
    WORD_CLASSES,
    ablation_rows,
    candidate_tokens,
    distance_curves,
    function_bias,
    selection,
    selection_draws,
    selection_summary,
    subsets,
    with_source_signals,
)
from forward_influence.analysis.stats import (  # noqa: F401
    CORRELATIONS,
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    cluster_bootstrap,
    group_mean_ci,
    kendall,
    rank_biserial,
    ratio_statistic,
    spearman,
    token_bootstrap,
    verdict,
)
from forward_influence.errors import InputError
from forward_influence.store import schema
from forward_influence.store.results import MeasureResult
from forward_influence.store.tables import summarize_influence

#: The position: correlated with FI beside the run's signals, as the recency baseline.
POSITION = "pos"
#: Token segments of a run of ``fi-measure --generate`` (``all``: no restriction).
SEGMENTS = ("all", "generated", "prompt")


@dataclass(frozen=True)
class AnalyzeConfig:
    """Settings of ``fi-analyze`` (the CLI flags are generated from these fields)."""

    near: int | None = dataclasses.field(default=None, metadata={"help": "near bucket d <= near (default: the run's)"})
    far: int | None = dataclasses.field(default=None, metadata={"help": "far bucket d > far (default: the run's)"})
    budgets: tuple[float, ...] = dataclasses.field(
        default=(0.2, 0.4), metadata={"help": "fractions of tokens kept by the selection rules", "type": "floats"}
    )
    sinks: int = dataclasses.field(
        default=4, metadata={"help": "positions < sinks are attention sinks (reported with and without)"}
    )
    block: int = dataclasses.field(
        default=BLOCK,
        metadata={
            "help": "sliding mode: measured candidates per competing block (consecutive positions; a short last block "
            "joins its neighbour)"
        },
    )
    entropy: str = dataclasses.field(default="entropy_in_topk", metadata={"help": "entropy signal the claims use"})
    attention: str = dataclasses.field(default="attn_snapkv", metadata={"help": "attention signal the claims use"})
    n_boot: int = dataclasses.field(default=999, metadata={"help": "bootstrap resamples"})
    confidence: float = dataclasses.field(default=0.95, metadata={"help": "confidence level of the intervals"})
    n_random: int = dataclasses.field(default=32, metadata={"help": "draws of the random selection rule"})
    seed: int = dataclasses.field(default=0, metadata={"help": "seed of the bootstrap and the random rule"})
    segment: str = dataclasses.field(
        default="all",
        metadata={
            "help": "runs of fi-measure --generate: restrict sources, candidates and claim 2's words to generated or "
            "prompt tokens (all, generated, prompt)"
        },
    )

    def validate(self) -> AnalyzeConfig:
        if not self.budgets or any(not 0 < b <= 1 for b in self.budgets):
            raise InputError(f"--budgets must be fractions in (0, 1]; got {list(self.budgets)}")
        if not 0 < self.confidence < 1:
            raise InputError(f"--confidence must be in (0, 1); got {self.confidence}")
        if self.n_boot < 10:
            raise InputError(f"--n-boot must be >= 10; got {self.n_boot}")
        if self.sinks < 0 or self.n_random < 1:
            raise InputError("--sinks must be >= 0 and --n-random >= 1")
        if self.block < 4:
            raise InputError(
                f"--block must be >= 4 candidates (a rule keeps a fraction of each block); got {self.block}"
            )
        if self.near is not None and self.far is not None and self.far < self.near:
            raise InputError(f"--far ({self.far}) must be >= --near ({self.near})")
        if self.segment not in SEGMENTS:
            raise InputError(f"--segment must be one of {', '.join(SEGMENTS)}; got {self.segment!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


# --------------------------------------------------------------------- tables
def buckets(result: MeasureResult, cfg: AnalyzeConfig) -> tuple[int, int]:
    """The (near, far) distance thresholds: the analysis's, else the run's."""
    run = result.config
    return (cfg.near if cfg.near is not None else run.near, cfg.far if cfg.far is not None else run.far)


def source_table(result: MeasureResult, cfg: AnalyzeConfig | None = None) -> pd.DataFrame:
    """One row per ablated source (whole-model ablations): FI buckets joined with
    the token's signals, the source's attention signals at its eviction time
    and word tags; ``unit`` names the competing set, ``is_candidate`` whether
    it competes (not a sink; in split mode not in the window before N)."""
    cfg = (cfg or AnalyzeConfig()).validate()
    run = result.config
    near, far = buckets(result, cfg)
    inf = ablation_rows(result.influence)
    summ = summarize_influence(inf, near, far) if (near, far) != (run.near, run.far) else ablation_rows(result.summary)
    df = summ.assign(pos=summ["source_pos"])
    df = with_source_signals(df, result, cfg)
    return df.reset_index(drop=True)


# --------------------------------------------------------------- correlations
def correlations(
    src: pd.DataFrame,
    cfg: AnalyzeConfig,
    signals: Sequence[str],
    targets: Sequence[str] = FI_TARGETS,
) -> pd.DataFrame:
    """Spearman and Kendall of FI targets with signals, pooled and per document.

    *Pooled* is the within-unit coefficient averaged over units (weights: the
    unit's tokens for ρ, its pairs for τ), so documents of different FI scale
    are never ranked against each other; its interval resamples documents.
    *Document* rows resample that document's tokens.

    Columns: scope (pooled / document), doc_id, subset (all / candidates),
    control (none / position), signal, target, method, estimate, ci_low,
    ci_high, n_tokens, n_docs.
    """
    cfg = (cfg or AnalyzeConfig()).validate()
    rng = np.random.default_rng(cfg.seed)
    rows: list[dict[str, Any]] = []
    signals = [s for s in signals if s in src.columns]
    for subset, df in subsets(src).items():
        docs = list(pd.unique(df["doc_id"]))
        doc_of = df["doc_id"].to_numpy()
        units = df["unit"].to_numpy()
        uniq = list(pd.unique(units))
        unit_doc = np.array([docs.index(doc_of[np.flatnonzero(units == u)[0]]) for u in uniq])
        pos = df["pos"].to_numpy(float)
        for target in targets:
            y = df[target].to_numpy(float)
            for signal in signals:
                x = df[signal].to_numpy(float)
                ok = np.isfinite(x) & np.isfinite(y)
                for method, f in CORRELATIONS.items():
                    for control in ("none", "position"):
                        if control == "position" and signal == "pos":
                            continue
                        coef, weight = np.full(len(uniq), np.nan), np.zeros(len(uniq))
                        for j, u in enumerate(uniq):
                            m = ok & (units == u)
                            n = int(m.sum())
                            if n < 4 or np.ptp(x[m]) == 0 or np.ptp(y[m]) == 0:
                                continue
                            coef[j] = f(x[m], y[m], pos[m] if control == "position" else None)
                            weight[j] = n if method == "spearman" else n * (n - 1) / 2
                        est, lo, hi = group_mean_ci(coef, np.array(docs)[unit_doc], cfg, rng, weights=weight)
                        rows.append(
                            dict(
                                scope="pooled",
                                doc_id=None,
                                subset=subset,
                                control=control,
                                signal=signal,
                                target=target,
                                method=method,
                                estimate=est,
                                ci_low=lo,
                                ci_high=hi,
                                n_tokens=int(ok.sum()),
                                n_docs=len(docs),
                            )
                        )
                if subset != "candidates":
                    continue
                for d in docs:
                    ix = doc_of == d
                    for method in CORRELATIONS:
                        est, lo, hi = token_bootstrap(x[ix], y[ix], method, None, cfg, rng)
                        rows.append(
                            dict(
                                scope="document",
                                doc_id=d,
                                subset=subset,
                                control="none",
                                signal=signal,
                                target=target,
                                method=method,
                                estimate=est,
                                ci_low=lo,
                                ci_high=hi,
                                n_tokens=int(ok[ix].sum()),
                                n_docs=1,
                            )
                        )
    out = pd.DataFrame(rows)
    out["doc_id"] = out["doc_id"].astype("string")
    return out


# ---------------------------------------------------------------- word classes
def word_class_tests(
    tokens: pd.DataFrame,
    cfg: AnalyzeConfig | None = None,
    columns: Sequence[str] = ("entropy_in_topk", "entropy_in", "surprisal", "fi_total", "fi_far"),
    level: str = "word",
) -> pd.DataFrame:
    """Content vs. function words: Mann–Whitney U, its p-value, and the
    rank-biserial effect (positive: content higher) with an interval from
    resampling documents. ``level="word"``: one value per word, its first
    subword (:func:`forward_influence.analysis.inference.word_level`), so the p-value
    does not count a word's pieces as independent; ``"token"``: every token."""
    cfg = (cfg or AnalyzeConfig()).validate()
    rng = np.random.default_rng(cfg.seed)
    df = word_level(tokens) if level == "word" else tokens
    docs = list(pd.unique(df["doc_id"]))
    cls = df["word_class"].astype("string").fillna("other").to_numpy()
    doc = df["doc_id"].to_numpy()
    by_doc = [np.flatnonzero(doc == d) for d in docs]
    rows = []
    for c in columns:
        if c not in df.columns:
            continue
        v = df[c].to_numpy(float)
        a, b = v[cls == "content"], v[cls == "function"]
        a, b = a[np.isfinite(a)], b[np.isfinite(b)]
        if len(a) == 0 or len(b) == 0:
            continue
        test = stats.mannwhitneyu(a, b, alternative="two-sided")
        # U of content tokens of document k against function tokens of document l:
        # a resample with document multiplicities m has U = m' U_kl m.
        con = [v[ix][(cls[ix] == "content") & np.isfinite(v[ix])] for ix in by_doc]
        fun = [np.sort(v[ix][(cls[ix] == "function") & np.isfinite(v[ix])]) for ix in by_doc]
        u_kl = np.array(
            [
                [(np.searchsorted(fb, ca, "left") + np.searchsorted(fb, ca, "right")).sum() / 2 for fb in fun]
                for ca in con
            ]
        )
        n_con = np.array([len(x) for x in con], dtype=float)
        n_fun = np.array([len(x) for x in fun], dtype=float)

        def eff(m: np.ndarray, u_kl=u_kl, n_con=n_con, n_fun=n_fun) -> np.ndarray:
            den = (m @ n_con) * (m @ n_fun)
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.where(
                    den > 0, 2 * np.einsum("rk,kl,rl->r", m, u_kl, m) / np.where(den > 0, den, 1.0) - 1, np.nan
                )

        est, lo, hi = cluster_bootstrap(len(docs), eff, cfg, rng)
        rows.append(
            dict(
                level=level,
                column=c,
                n_content=len(a),
                n_function=len(b),
                median_content=float(np.median(a)),
                median_function=float(np.median(b)),
                u=float(test.statistic),
                p_value=float(test.pvalue),
                rank_biserial=est,
                ci_low=lo,
                ci_high=hi,
                n_docs=len(docs),
            )
        )
    return pd.DataFrame(rows)


def by_group(df: pd.DataFrame, group: str, columns: Sequence[str]) -> pd.DataFrame:
    """Median, mean and count of ``columns`` per ``group`` (word_class or upos)."""
    cols = [c for c in columns if c in df.columns]
    g = df.groupby(df[group].astype("string").fillna("none"), sort=True)[cols]
    out = g.agg(["median", "mean", "count"])
    out.columns = [f"{a}_{b}" for a, b in out.columns]
    return out.reset_index().rename(columns={group: "group"}).assign(grouping=group)


# ---------------------------------------------------------------------- driver
@dataclass
class Analysis:
    """Every table of an analysis (see :func:`analyze`)."""

    sources: pd.DataFrame
    tokens: pd.DataFrame
    correlations: pd.DataFrame
    selection: pd.DataFrame
    selection_summary: pd.DataFrame
    distance_curves: pd.DataFrame
    word_tests: pd.DataFrame
    word_groups: pd.DataFrame
    function_bias: pd.DataFrame
    claims: pd.DataFrame
    claim_documents: pd.DataFrame
    segment_claims: pd.DataFrame
    meta: dict[str, Any]

    TABLES = (
        "correlations",
        "selection",
        "selection_summary",
        "distance_curves",
        "word_tests",
        "word_groups",
        "function_bias",
        "claims",
        "claim_documents",
        "segment_claims",
    )


def in_segment(df: pd.DataFrame, segment: str) -> pd.DataFrame:
    """Rows of ``df`` (with the token's ``segment`` column) in ``segment``; all for ``"all"``.

    >>> t = pd.DataFrame({"pos": [0, 1, 2], "segment": ["prompt", "generated", "generated"]})
    >>> in_segment(t, "generated").pos.tolist(), len(in_segment(t, "all"))
    ([1, 2], 3)
    """
    if segment == "all":
        return df
    if "segment" not in df.columns:
        raise InputError(
            f"--segment {segment} needs a run of fi-measure --generate (this run's tokens have no prompt/generated "
            "segment)"
        )
    return df[(df["segment"] == segment).fillna(False).to_numpy(bool)].reset_index(drop=True)


def segments_of(result: MeasureResult) -> list[str]:
    """The segments a run's tokens have (``[]`` for a run on documents)."""
    if "segment" not in result.tokens.columns:
        return []
    return [s for s in ("prompt", "generated") if (result.tokens["segment"] == s).any()]


def _claims_table(
    result: MeasureResult, cfg: AnalyzeConfig, sel: pd.DataFrame, cand: pd.DataFrame, rules: Sequence[str]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The claims of one run restricted to ``cfg.segment`` (with a ``segment``
    column), their per-document values, and the function-word bias table claim 3 reads."""
    run = result.config
    has_words = "word_class" in cand.columns
    bias = (
        function_bias(cand, cfg, [r for r in rules if r != "fi_oracle"]) if has_words and len(cand) else pd.DataFrame()
    )
    absent = claim1_absent(result, ablation_rows(result.influence), buckets(result, cfg)[1])
    note = f"{run.method} estimate" if run.method != "exact" else ""
    words = in_segment(result.tokens, cfg.segment) if has_words else pd.DataFrame()
    values = claim_values(sel, words, bias, cfg, run.mode, distance_claims=not absent)
    table = claims(sel, words, bias, cfg, run.mode, distance_claims=not absent, note=note, absent=absent)
    return table.assign(segment=cfg.segment), values.assign(segment=cfg.segment), bias


def segment_claims(result: MeasureResult, cfg: AnalyzeConfig | None = None) -> pd.DataFrame:
    """The claims table once per segment of a ``--generate`` run (prompt,
    generated); a segment without 4 measured sources gets the claims that need
    no ablation (2 and 3). Empty for a run on documents."""
    cfg = (cfg or AnalyzeConfig()).validate()
    frames = []
    for seg in segments_of(result):
        sub = dataclasses.replace(cfg, segment=seg)
        src = in_segment(source_table(result, sub), seg)
        rules = run_rules(result, src)
        sel = selection(src, sub, rules) if len(src) >= 4 else pd.DataFrame()
        cand = in_segment(candidate_tokens(result, sub), seg)
        frames.append(_claims_table(result, sub, sel, cand, rules)[0])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def run_rules(result: MeasureResult, src: pd.DataFrame) -> list[str]:
    """The selection rules of a run (its rule signals by rank, then the baselines) that ``src`` can rank by."""
    rules = schema.rules(schema.run_signals(result.meta))
    return [r.name for r in rules if r.name in ("random", "fi_oracle") or r.name in src.columns]


def check_signals(result: MeasureResult, cfg: AnalyzeConfig) -> tuple[schema.SignalSpec, ...]:
    """The run's signals; --entropy and --attention must be among them."""
    specs = schema.run_signals(result.meta)
    names = schema.signal_names(specs, ranked=True)
    for name in ("entropy", "attention"):
        if getattr(cfg, name) not in names:
            raise InputError(
                f"--{name} must be one of the run's signals ({', '.join(names)}); got {getattr(cfg, name)!r}"
            )
    return specs


def analyze(result: MeasureResult, cfg: AnalyzeConfig | None = None) -> Analysis:
    """All tables for the report of one ``fi-measure`` run (restricted to
    ``cfg.segment``; with ``"all"``, a ``--generate`` run also gets
    :func:`segment_claims`)."""
    cfg = (cfg or AnalyzeConfig()).validate()
    specs = check_signals(result, cfg)
    run = result.config
    src = in_segment(source_table(result, cfg), cfg.segment)
    where = "" if cfg.segment == "all" else f" in the {cfg.segment} segment"
    if src["doc_id"].nunique() < 1 or len(src) < 4:
        raise InputError(
            f"the run has fewer than 4 measured sources{where}; measure more (lower --stride or more documents)"
        )
    if int(src["is_candidate"].sum()) < 4:
        raise InputError(
            f"the run has fewer than 4 measured sources{where} that compete for a budget (the first --sinks positions, "
            "and in split mode the --window before N, do not); measure more (a larger --n-prefix or lower --stride)"
        )
    rules = run_rules(result, src)
    sel = selection(src, cfg, rules)
    cand = in_segment(candidate_tokens(result, cfg), cfg.segment)
    keys = ["doc_id", "split_pos", "pos"] if run.mode == "split" else ["doc_id", "pos"]
    tok_fi = cand.merge(src[keys + ["fi_total", "fi_far"]], on=keys, how="left")  # src["pos"] is the source
    has_words = "word_class" in cand.columns
    # one value per word (its first subword): subword pieces of a word are not independent
    words = word_class_tests(tok_fi, cfg) if has_words else pd.DataFrame()
    groups = (
        pd.concat(
            [
                by_group(tok_fi, g, ("entropy_in_topk", "entropy_in", "surprisal", "fi_total", "fi_far"))
                for g in ("word_class", "upos")
            ],
            ignore_index=True,
        )
        if has_words
        else pd.DataFrame()
    )
    claims_table, claim_docs, bias = _claims_table(result, cfg, sel, cand, rules)
    tables = dict(
        sources=src,
        tokens=tok_fi,
        correlations=correlations(src, cfg, [*schema.signal_names(specs, ranked=True), POSITION]),
        selection=sel,
        selection_summary=selection_summary(sel, cfg),
        distance_curves=distance_curves(result, src, cfg, rules),
        word_tests=words,
        word_groups=groups,
        function_bias=bias,
        claims=claims_table,
        claim_documents=claim_docs,
        segment_claims=segment_claims(result, cfg)
        if cfg.segment == "all" and len(segments_of(result))
        else pd.DataFrame(),
    )
    near, far = buckets(result, cfg)
    meta = {
        "analyze_config": cfg.to_dict(),
        "segment": cfg.segment,
        "segments": segments_of(result),
        "near": near,
        "far": far,
        "signals": [spec.to_dict() for spec in specs],
        "run": {
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
                "generation",
                "skipped",
            )
        },
    }
    return Analysis(meta=meta, **tables)
