"""Statistics that test the study's claims on an ``fi-measure`` run.

Everything here is DataFrame in, DataFrame out; :func:`analyze` runs it all
and :mod:`forward_influence.report` turns the result into pictures and HTML.

Units, resampling and the rules used
------------------------------------
A *unit* is one set of measured sources that compete for a budget: a document
in ``sliding`` mode, a (document, split) pair in ``split`` mode. Forward
Influence is extremely heavy-tailed and its scale differs between documents,
so correlations are rank statistics computed *within* each unit; the pooled
coefficient is their weighted mean over units (tokens for Spearman ρ, pairs
for Kendall τ), so tokens of different documents are never ranked against
each other. Per-document intervals resample tokens (paired);
pooled intervals resample whole documents (``scipy.stats.bootstrap``,
percentile method), never tokens, since tokens of a document are not
independent.

*Position control.* In ``split`` mode early tokens are only ever seen from far
away, so position confounds FI (DESIGN §5). ``control="position"`` gives the
partial rank correlation given the token's position (ranks residualised on the
position's rank; Kendall: the partial-τ formula).

*Sinks.* The first ``sinks`` positions (attention sinks) carry most of the FI
and are kept by every practical compressor; every table is computed with
``subset="all"`` and ``subset="no_sinks"``, and the claim verdicts use
``no_sinks``.

*Verdicts* (95% intervals unless configured): *supported* when the interval
excludes the null on the side the study claims, *not supported* when it
excludes it on the other side, *inconclusive* when it covers the null or the
run has fewer than two documents.

>>> verdict(0.02, 0.10)
'supported'
>>> verdict(-0.3, -0.1)
'not supported'
>>> verdict(-0.05, 0.2)
'inconclusive'
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from .errors import InputError
from .measure import summarize
from .results import MeasureResult

#: Per-token signals correlated with FI (``pos`` is the recency baseline).
SIGNALS = (
    "entropy_in_topk",
    "entropy_in",
    "entropy_out_topk",
    "entropy_out",
    "surprisal",
    "attn_snapkv",
    "attn_h2o",
    "key_norm",
    "rep_change",
    "pos",
)
TARGETS = ("fi_total", "fi_near", "fi_far")
#: Selection rules: top tokens by a signal, a random draw, and the FI oracle.
RULES = ("entropy_in_topk", "entropy_in", "attn_snapkv", "attn_h2o", "random", "fi_oracle")
WORD_CLASSES = ("content", "function", "other")
SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"


@dataclass(frozen=True)
class AnalyzeConfig:
    """Settings of ``fi-analyze`` (the CLI flags are generated from these fields)."""

    near: int | None = dataclasses.field(default=None, metadata={"help": "near bucket d <= near (default: the run's)"})
    far: int | None = dataclasses.field(default=None, metadata={"help": "far bucket d > far (default: the run's)"})
    budgets: tuple[float, ...] = dataclasses.field(default=(0.2, 0.4), metadata={"help": "fractions of tokens kept by the selection rules", "type": "floats"})
    sinks: int = dataclasses.field(default=4, metadata={"help": "positions < sinks are attention sinks (reported with and without)"})
    entropy: str = dataclasses.field(default="entropy_in_topk", metadata={"help": "entropy signal the claims use"})
    attention: str = dataclasses.field(default="attn_snapkv", metadata={"help": "attention signal the claims use"})
    n_boot: int = dataclasses.field(default=999, metadata={"help": "bootstrap resamples"})
    confidence: float = dataclasses.field(default=0.95, metadata={"help": "confidence level of the intervals"})
    n_random: int = dataclasses.field(default=32, metadata={"help": "draws of the random selection rule"})
    seed: int = dataclasses.field(default=0, metadata={"help": "seed of the bootstrap and the random rule"})

    def validate(self) -> "AnalyzeConfig":
        if not self.budgets or any(not 0 < b <= 1 for b in self.budgets):
            raise InputError(f"--budgets must be fractions in (0, 1]; got {list(self.budgets)}")
        if not 0 < self.confidence < 1:
            raise InputError(f"--confidence must be in (0, 1); got {self.confidence}")
        if self.n_boot < 10:
            raise InputError(f"--n-boot must be >= 10; got {self.n_boot}")
        if self.sinks < 0 or self.n_random < 1:
            raise InputError("--sinks must be >= 0 and --n-random >= 1")
        for name in ("entropy", "attention"):
            if getattr(self, name) not in SIGNALS:
                raise InputError(f"--{name} must be one of {', '.join(SIGNALS)}; got {getattr(self, name)!r}")
        if self.near is not None and self.far is not None and self.far < self.near:
            raise InputError(f"--far ({self.far}) must be >= --near ({self.near})")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def verdict(lo: float, hi: float, direction: int = 1, null: float = 0.0) -> str:
    """Supported / not supported / inconclusive from an interval and the claimed sign."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return INCONCLUSIVE
    lo, hi = (lo - null) * direction, (hi - null) * direction
    lo, hi = min(lo, hi), max(lo, hi)
    if lo > 0:
        return SUPPORTED
    if hi < 0:
        return NOT_SUPPORTED
    return INCONCLUSIVE


# --------------------------------------------------------------------- tables
def source_table(result: MeasureResult, cfg: AnalyzeConfig | None = None) -> pd.DataFrame:
    """One row per ablated source (whole-model ablations): FI buckets joined with
    the token's signals and word tags; ``unit`` names the competing set."""
    cfg = (cfg or AnalyzeConfig()).validate()
    run = result.config
    near = cfg.near if cfg.near is not None else run.near
    far = cfg.far if cfg.far is not None else run.far
    inf = ablation_rows(result.influence)
    summ = summarize(inf, near, far) if (near, far) != (run.near, run.far) else ablation_rows(result.summary)
    tok = result.tokens.rename(columns={"pos": "source_pos"})
    df = summ.merge(tok, on=["doc_id", "source_pos"], how="left", validate="many_to_one")
    df["pos"] = df["source_pos"]
    split = df["split_pos"].astype("string").fillna("-")
    df["unit"] = (df["doc_id"].astype(str) + "@" + split.astype(str)).astype("string")
    df["is_sink"] = df["pos"] < cfg.sinks
    return df.reset_index(drop=True)


def ablation_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of whole-model ablations, or, in a run made with ``--layer`` (and
    ``--kv-head``), of its one layer/head ablation."""
    whole = df[df["layer"].isna() & df["kv_head"].isna()]
    if len(whole):
        return whole
    kinds = df[["layer", "kv_head"]].drop_duplicates()
    if len(kinds) != 1:
        raise InputError("the run mixes several layer/head ablations; analyze one with a single --layer/--kv-head")
    return df


def _subsets(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {"all": df, "no_sinks": df[~df["is_sink"]]}


# --------------------------------------------------------------- correlations
def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    den = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(-1) / np.where(den > 0, den, 1.0), np.nan)


def _residual(a: np.ndarray, z: np.ndarray) -> np.ndarray:
    """``a`` minus its least-squares fit on ``[1, z]`` (along the last axis)."""
    zc = z - z.mean(-1, keepdims=True)
    ac = a - a.mean(-1, keepdims=True)
    zz = (zc * zc).sum(-1, keepdims=True)
    beta = np.where(zz > 0, (zc * ac).sum(-1, keepdims=True) / np.where(zz > 0, zz, 1.0), 0.0)
    return ac - beta * zc


def spearman(x: np.ndarray, y: np.ndarray, z: np.ndarray | None = None, axis: int = -1) -> np.ndarray:
    """Spearman ρ along ``axis`` (vectorised); partial on ``z`` when given.

    >>> round(float(spearman(np.arange(10.0), np.arange(10.0) ** 3)), 6)
    1.0
    """
    rx = stats.rankdata(x, axis=axis)
    ry = stats.rankdata(y, axis=axis)
    rx, ry = np.moveaxis(rx, axis, -1), np.moveaxis(ry, axis, -1)
    if z is not None:
        rz = np.moveaxis(stats.rankdata(z, axis=axis), axis, -1)
        rx, ry = _residual(rx, rz), _residual(ry, rz)
    return _pearson_rows(rx, ry)


def _tau_b_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall τ-b of each row pair of ``(R, n)`` arrays, by pair signs (chunked)."""
    r, n = x.shape
    out = np.empty(r)
    step = max(1, int(8e6 // max(1, n * n)))
    for r0 in range(0, r, step):
        xs = x[r0 : r0 + step].astype(np.float32)
        ys = y[r0 : r0 + step].astype(np.float32)
        sx = np.sign(xs[:, :, None] - xs[:, None, :])
        sy = np.sign(ys[:, :, None] - ys[:, None, :])
        num = np.einsum("rij,rij->r", sx, sy, dtype=np.float64)
        den = np.sqrt(np.abs(sx).sum((1, 2), dtype=np.float64) * np.abs(sy).sum((1, 2), dtype=np.float64))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[r0 : r0 + step] = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return out


def kendall(x: np.ndarray, y: np.ndarray, z: np.ndarray | None = None, axis: int = -1) -> np.ndarray:
    """Kendall τ-b along ``axis`` (vectorised); partial on ``z`` when given:
    ``(τxy − τxz τyz) / sqrt((1 − τxz²)(1 − τyz²))``.

    >>> round(float(kendall(np.arange(6.0), -np.arange(6.0))), 6)
    -1.0
    >>> x, y = np.random.default_rng(0).normal(size=(2, 40))
    >>> bool(np.isclose(kendall(x, y), stats.kendalltau(x, y).statistic))
    True
    """
    x, y = np.moveaxis(np.asarray(x, float), axis, -1), np.moveaxis(np.asarray(y, float), axis, -1)
    shape = x.shape[:-1]
    xs, ys = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
    txy = _tau_b_rows(xs, ys)
    if z is not None:
        zs = np.moveaxis(np.asarray(z, float), axis, -1).reshape(-1, x.shape[-1])
        txz, tyz = _tau_b_rows(xs, zs), _tau_b_rows(ys, zs)
        den = np.sqrt((1 - txz**2) * (1 - tyz**2))
        with np.errstate(invalid="ignore", divide="ignore"):
            txy = np.where(den > 0, (txy - txz * tyz) / np.where(den > 0, den, 1.0), np.nan)
    return txy.reshape(shape) if shape else txy[0]


CORRELATIONS: dict[str, Callable[..., np.ndarray]] = {"spearman": spearman, "kendall": kendall}


def _interval(res: Any) -> tuple[float, float]:
    ci = res.confidence_interval
    return float(ci.low), float(ci.high)


def token_bootstrap(x: np.ndarray, y: np.ndarray, method: str, z: np.ndarray | None, cfg: AnalyzeConfig, rng: np.random.Generator) -> tuple[float, float, float]:
    """Correlation and its interval from resampling tokens (pairs) of one document."""
    f = CORRELATIONS[method]
    ok = np.isfinite(x) & np.isfinite(y) & (np.isfinite(z) if z is not None else True)
    x, y = x[ok], y[ok]
    z = z[ok] if z is not None else None
    if len(x) < 4 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return np.nan, np.nan, np.nan
    est = float(f(x, y, z))
    data = (x, y) if z is None else (x, y, z)

    def stat(*arrs: np.ndarray, axis: int = -1) -> np.ndarray:
        return f(arrs[0], arrs[1], arrs[2] if len(arrs) > 2 else None, axis=axis)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.bootstrap(data, stat, paired=True, vectorized=True, n_resamples=cfg.n_boot,
                              confidence_level=cfg.confidence, method="percentile", rng=rng)
    return (est, *_interval(res))


def cluster_bootstrap(n_groups: int, statistic: Callable[[np.ndarray], np.ndarray], cfg: AnalyzeConfig, rng: np.random.Generator) -> tuple[float, float, float]:
    """A statistic of whole groups (documents) and its interval from resampling
    groups with replacement.

    ``statistic(M)`` takes ``M`` ``(R, n_groups)``, how often each group is in
    each of ``R`` resamples, and returns ``(R,)``; the estimate is at ``M = 1``.
    """
    est = float(statistic(np.ones((1, n_groups)))[0])
    if n_groups < 2 or not np.isfinite(est):
        return est, np.nan, np.nan

    def stat(i: np.ndarray, axis: int = -1) -> np.ndarray:
        i = np.moveaxis(np.asarray(i), axis, -1)
        flat = i.reshape(-1, n_groups)
        m = np.zeros(flat.shape)
        np.add.at(m, (np.arange(len(flat))[:, None], flat), 1.0)
        return statistic(m).reshape(i.shape[:-1])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.bootstrap((np.arange(n_groups),), stat, vectorized=True, n_resamples=cfg.n_boot,
                              confidence_level=cfg.confidence, method="percentile", rng=rng)
    return (est, *_interval(res))


def ratio_statistic(num: np.ndarray, den: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """``sum_k m_k num_k / sum_k m_k den_k`` for :func:`cluster_bootstrap`
    (a weighted mean over the rows of the resampled groups)."""

    def f(m: np.ndarray) -> np.ndarray:
        d = m @ den
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(d > 0, (m @ num) / np.where(d > 0, d, 1.0), np.nan)

    return f


def group_mean_ci(values: np.ndarray, groups: np.ndarray, cfg: AnalyzeConfig, rng: np.random.Generator, weights: np.ndarray | None = None) -> tuple[float, float, float]:
    """Mean of ``values`` (NaN skipped, optionally weighted) with an interval
    from resampling the ``groups`` (documents)."""
    values = np.asarray(values, float)
    w = np.ones_like(values) if weights is None else np.asarray(weights, float)
    w = np.where(np.isfinite(values), w, 0.0)
    uniq, inv = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    num = np.bincount(inv, weights=np.nan_to_num(values) * w, minlength=len(uniq))
    den = np.bincount(inv, weights=w, minlength=len(uniq))
    return cluster_bootstrap(len(uniq), ratio_statistic(num, den), cfg, rng)


def correlations(src: pd.DataFrame, cfg: AnalyzeConfig | None = None, signals: Sequence[str] = SIGNALS, targets: Sequence[str] = TARGETS) -> pd.DataFrame:
    """Spearman and Kendall of FI targets with signals, pooled and per document.

    *Pooled* is the within-unit coefficient averaged over units (weights: the
    unit's tokens for ρ, its pairs for τ), so documents of different FI scale
    are never ranked against each other; its interval resamples documents.
    *Document* rows resample that document's tokens.

    Columns: scope (pooled / document), doc_id, subset (all / no_sinks),
    control (none / position), signal, target, method, estimate, ci_low,
    ci_high, n_tokens, n_docs.
    """
    cfg = (cfg or AnalyzeConfig()).validate()
    rng = np.random.default_rng(cfg.seed)
    rows: list[dict[str, Any]] = []
    signals = [s for s in signals if s in src.columns]
    for subset, df in _subsets(src).items():
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
                        rows.append(dict(scope="pooled", doc_id=None, subset=subset, control=control, signal=signal,
                                         target=target, method=method, estimate=est, ci_low=lo, ci_high=hi,
                                         n_tokens=int(ok.sum()), n_docs=len(docs)))
                if subset != "no_sinks":
                    continue
                for d in docs:
                    ix = doc_of == d
                    for method in CORRELATIONS:
                        est, lo, hi = token_bootstrap(x[ix], y[ix], method, None, cfg, rng)
                        rows.append(dict(scope="document", doc_id=d, subset=subset, control="none", signal=signal,
                                         target=target, method=method, estimate=est, ci_low=lo, ci_high=hi,
                                         n_tokens=int(ok[ix].sum()), n_docs=1))
    out = pd.DataFrame(rows)
    out["doc_id"] = out["doc_id"].astype("string")
    return out


# ------------------------------------------------------------ selection rules
def selection_draws(df: pd.DataFrame, rule: str, budget: float, n_random: int = 32, seed: int = 0) -> np.ndarray:
    """Boolean ``(draws, rows)``: which rows a rule keeps at ``budget`` within each unit.

    A unit of ``n`` candidates keeps ``max(1, round(budget * n))``: the highest
    scores (NaN scores last; ties to the earlier position), ``fi_total`` for the
    oracle, or ``n_random`` seeded uniform draws for ``random``.

    >>> t = pd.DataFrame({"unit": ["a"] * 5, "pos": range(5), "s": [0.1, 0.9, 0.5, np.nan, 0.7]})
    >>> selection_draws(t, "s", 0.4).astype(int).tolist()
    [[0, 1, 0, 0, 1]]
    """
    if not 0 < budget <= 1:
        raise InputError(f"budget must be in (0, 1]; got {budget}")
    units = df["unit"].to_numpy()
    pos = df["pos"].to_numpy()
    n_draws = n_random if rule == "random" else 1
    keep = np.zeros((n_draws, len(df)), dtype=bool)
    rng = np.random.default_rng(seed)
    col = "fi_total" if rule == "fi_oracle" else rule
    if rule != "random" and col not in df.columns:
        raise InputError(f"unknown selection rule {rule!r}; valid: {', '.join(RULES)} or a signal column")
    for u in pd.unique(units):
        ix = np.flatnonzero(units == u)
        k = max(1, int(round(budget * len(ix))))
        if rule == "random":
            for r in range(n_draws):
                keep[r, rng.choice(ix, size=k, replace=False)] = True
            continue
        s = df[col].to_numpy(float)[ix]
        s = np.where(np.isfinite(s), s, -np.inf)
        order = np.lexsort((pos[ix], -s))  # score descending, then earlier position
        keep[0, ix[order[:k]]] = True
    return keep


def selection(src: pd.DataFrame, cfg: AnalyzeConfig | None = None, rules: Sequence[str] = RULES) -> pd.DataFrame:
    """Per unit, rule and budget: what the kept tokens carry.

    Columns: subset, unit, doc_id, rule, budget, n, k, mean_fi_{total,near,far}
    of the kept tokens, kept_share_{total,near,far} (share of the unit's FI the
    kept tokens hold), near_frac (their FI at d <= near over their total),
    share_{content,function,other} (word-class mix), jaccard with the FI top set.
    Random: averages over the draws.
    """
    cfg = (cfg or AnalyzeConfig()).validate()
    rows = []
    for subset, df in _subsets(src).items():
        df = df.reset_index(drop=True)
        units = df["unit"].to_numpy()
        uniq = list(pd.unique(units))
        fi = {t: df[t].to_numpy(float) for t in TARGETS}
        wc = df["word_class"].astype("string").fillna("other").to_numpy() if "word_class" in df else np.full(len(df), "other")
        for budget in cfg.budgets:
            oracle = selection_draws(df, "fi_oracle", budget)[0]
            for rule in rules:
                draws = selection_draws(df, rule, budget, cfg.n_random, cfg.seed)
                for u in uniq:
                    ix = units == u
                    acc: dict[str, list[float]] = {}
                    for d in draws:
                        sel = d & ix
                        k = sel.sum()
                        vals = {f"mean_{t}": fi[t][sel].mean() for t in TARGETS}
                        for t in TARGETS:
                            tot = fi[t][ix].sum()
                            vals[f"kept_share_{t[3:]}"] = fi[t][sel].sum() / tot if tot > 0 else np.nan
                        ft = fi["fi_total"][sel].sum()
                        vals["near_frac"] = fi["fi_near"][sel].sum() / ft if ft > 0 else np.nan
                        for c in WORD_CLASSES:
                            vals[f"share_{c}"] = float((wc[sel] == c).mean()) if k else np.nan
                        inter = (sel & oracle).sum()
                        vals["jaccard"] = inter / (k + (oracle & ix).sum() - inter)
                        for key, v in vals.items():
                            acc.setdefault(key, []).append(float(v))
                    first = np.flatnonzero(ix)[0]
                    rows.append(dict(subset=subset, unit=u, doc_id=df["doc_id"].iloc[first], rule=rule, budget=budget,
                                     n=int(ix.sum()), k=int((draws[0] & ix).sum()),
                                     **{key: float(np.nanmean(v)) if np.isfinite(v).any() else np.nan for key, v in acc.items()}))
    out = pd.DataFrame(rows)
    out["doc_id"] = out["doc_id"].astype("string")
    return out


def selection_summary(sel: pd.DataFrame, cfg: AnalyzeConfig | None = None, columns: Sequence[str] = ("kept_share_total", "kept_share_near", "kept_share_far", "near_frac", "share_function", "share_content", "jaccard")) -> pd.DataFrame:
    """Mean over units of each selection column per (subset, rule, budget), with
    intervals from resampling documents."""
    cfg = (cfg or AnalyzeConfig()).validate()
    rng = np.random.default_rng(cfg.seed)
    rows = []
    for (subset, rule, budget), g in sel.groupby(["subset", "rule", "budget"], sort=False):
        for c in columns:
            est, lo, hi = group_mean_ci(g[c].to_numpy(float), g["doc_id"].to_numpy(), cfg, rng)
            rows.append(dict(subset=subset, rule=rule, budget=budget, quantity=c, estimate=est, ci_low=lo, ci_high=hi,
                             n_units=len(g), n_docs=g["doc_id"].nunique()))
    return pd.DataFrame(rows)


def distance_curves(result: MeasureResult, src: pd.DataFrame, cfg: AnalyzeConfig | None = None, rules: Sequence[str] = RULES) -> pd.DataFrame:
    """Mean KL of the kept tokens as a function of distance, per document.

    Distances are binned in powers of two (1, 2-3, 4-7, ...). Columns: subset,
    rule, budget, doc_id, d_lo, d_hi, d_mid (geometric), mean_kl, n.
    Plot with bands over documents (:func:`forward_influence.figures.fi_vs_distance`).
    """
    cfg = (cfg or AnalyzeConfig()).validate()
    inf = ablation_rows(result.influence)
    key = ["doc_id", "split_pos", "source_pos"]
    d = inf["distance"].to_numpy()
    b = np.floor(np.log2(np.maximum(d, 1))).astype(np.int64)
    base = inf[key].assign(bin=b, kl=inf["kl"].to_numpy(float))
    frames = []
    for subset, df in _subsets(src).items():
        df = df.reset_index(drop=True)
        for budget in cfg.budgets:
            for rule in rules:
                w = selection_draws(df, rule, budget, cfg.n_random, cfg.seed).mean(0)
                wt = df[key].assign(w=w)
                wt = wt[wt["w"] > 0]
                m = base.merge(wt, on=key, how="inner")
                m["wkl"] = m["kl"] * m["w"]
                g = m.groupby(["doc_id", "bin"], sort=True).agg(wkl=("wkl", "sum"), w=("w", "sum"), n=("kl", "size")).reset_index()
                g["mean_kl"] = g["wkl"] / g["w"]
                g = g.assign(subset=subset, rule=rule, budget=budget)
                frames.append(g.drop(columns=["wkl", "w"]))
    out = pd.concat(frames, ignore_index=True)
    out["d_lo"] = 2 ** out["bin"]
    out["d_hi"] = 2 ** (out["bin"] + 1) - 1
    out["d_mid"] = np.sqrt(out["d_lo"] * out["d_hi"])
    out["doc_id"] = out["doc_id"].astype("string")
    return out[["subset", "rule", "budget", "doc_id", "d_lo", "d_hi", "d_mid", "mean_kl", "n"]]


# ---------------------------------------------------------------- word classes
def rank_biserial(a: np.ndarray, b: np.ndarray) -> float:
    """``P(A > B) − P(A < B)`` from Mann–Whitney U (ties count half).

    >>> rank_biserial(np.array([3.0, 4.0]), np.array([1.0, 2.0]))
    1.0
    """
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) == 0 or len(b) == 0:
        return np.nan
    u = stats.mannwhitneyu(a, b, alternative="two-sided").statistic
    return float(2 * u / (len(a) * len(b)) - 1)


def word_class_tests(tokens: pd.DataFrame, cfg: AnalyzeConfig | None = None, columns: Sequence[str] = ("entropy_in_topk", "entropy_in", "surprisal", "fi_total", "fi_far"), level: str = "token") -> pd.DataFrame:
    """Content vs. function words: Mann–Whitney U, its p-value, and the
    rank-biserial effect (positive: content higher) with an interval from
    resampling documents. ``level="word_start"`` uses only each word's first token."""
    cfg = (cfg or AnalyzeConfig()).validate()
    rng = np.random.default_rng(cfg.seed)
    df = tokens[tokens["is_word_start"].fillna(False).astype(bool)] if level == "word_start" else tokens
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
        u_kl = np.array([[(np.searchsorted(fb, ca, "left") + np.searchsorted(fb, ca, "right")).sum() / 2 for fb in fun] for ca in con])
        n_con = np.array([len(x) for x in con], dtype=float)
        n_fun = np.array([len(x) for x in fun], dtype=float)

        def eff(m: np.ndarray, u_kl=u_kl, n_con=n_con, n_fun=n_fun) -> np.ndarray:
            den = (m @ n_con) * (m @ n_fun)
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.where(den > 0, 2 * np.einsum("rk,kl,rl->r", m, u_kl, m) / np.where(den > 0, den, 1.0) - 1, np.nan)

        est, lo, hi = cluster_bootstrap(len(docs), eff, cfg, rng)
        rows.append(dict(level=level, column=c, n_content=len(a), n_function=len(b), median_content=float(np.median(a)),
                         median_function=float(np.median(b)), u=float(test.statistic), p_value=float(test.pvalue),
                         rank_biserial=est, ci_low=lo, ci_high=hi, n_docs=len(docs)))
    return pd.DataFrame(rows)


def by_group(df: pd.DataFrame, group: str, columns: Sequence[str]) -> pd.DataFrame:
    """Median, mean and count of ``columns`` per ``group`` (word_class or upos)."""
    cols = [c for c in columns if c in df.columns]
    g = df.groupby(df[group].astype("string").fillna("none"), sort=True)[cols]
    out = g.agg(["median", "mean", "count"])
    out.columns = [f"{a}_{b}" for a, b in out.columns]
    return out.reset_index().rename(columns={group: "group"}).assign(grouping=group)


def candidate_tokens(result: MeasureResult, cfg: AnalyzeConfig) -> pd.DataFrame:
    """Tokens a compressor chooses from: the prefix ``[0, N)`` of each split
    (split mode) or the whole document (sliding), one unit per split/document."""
    tok = result.tokens
    run = result.config
    if run.mode == "split":
        parts = [tok[tok["pos"] < n].assign(split_pos=n) for n in run.n_prefix]
        df = pd.concat(parts, ignore_index=True)
    else:
        df = tok.assign(split_pos=pd.NA)
    split = df["split_pos"].astype("string").fillna("-")
    df["unit"] = (df["doc_id"].astype(str) + "@" + split.astype(str)).astype("string")
    df["is_sink"] = df["pos"] < cfg.sinks
    return df.reset_index(drop=True)


def function_bias(cand: pd.DataFrame, cfg: AnalyzeConfig, rules: Sequence[str]) -> pd.DataFrame:
    """Per unit, rule and budget: function-word share of the kept tokens minus
    the share among all candidates (claim 3), over every candidate token."""
    rows = []
    df = cand[~cand["is_sink"]].reset_index(drop=True)
    wc = df["word_class"].astype("string").fillna("other").to_numpy()
    units = df["unit"].to_numpy()
    for budget in cfg.budgets:
        for rule in rules:
            if rule != "random" and rule not in df.columns:
                continue
            draws = selection_draws(df, rule, budget, cfg.n_random, cfg.seed)
            for u in pd.unique(units):
                ix = units == u
                base = float((wc[ix] == "function").mean())
                kept = float(np.mean([(wc[d & ix] == "function").mean() for d in draws]))
                rows.append(dict(unit=u, doc_id=df["doc_id"][np.flatnonzero(ix)[0]], rule=rule, budget=budget,
                                 share_function_kept=kept, share_function_base=base, excess=kept - base))
    out = pd.DataFrame(rows)
    out["doc_id"] = out["doc_id"].astype("string")
    return out


# ---------------------------------------------------------------------- claims
def _unit_mean_ci(values: pd.Series, docs: pd.Series, cfg: AnalyzeConfig, rng: np.random.Generator) -> tuple[float, float, float]:
    return group_mean_ci(values.to_numpy(float), docs.to_numpy(), cfg, rng)


def claims(sel: pd.DataFrame, words: pd.DataFrame, bias: pd.DataFrame, cfg: AnalyzeConfig, mode: str) -> pd.DataFrame:
    """The study's claims 1-3 (DESIGN §1): statistic, interval, verdict.

    1a  entropy-selected tokens hold more far FI than attention-selected:
        kept far-FI share (entropy − attention), mean over units.
    1b  attention-selected tokens' FI is concentrated nearby: near fraction of
        the kept tokens' FI (attention − entropy).
    2   content words sit at higher entropy than function words: rank-biserial.
    3   attention selection is biased toward function words: function share of
        the attention-kept tokens minus the candidates' share.
    Claims 1 use the smallest budget and ``no_sinks``.
    """
    rng = np.random.default_rng(cfg.seed)
    budget = min(cfg.budgets)
    s = sel[(sel["subset"] == "no_sinks") & (sel["budget"] == budget)]
    ent = s[s["rule"] == cfg.entropy].set_index("unit")
    att = s[s["rule"] == cfg.attention].set_index("unit")
    rows = []
    n_docs = s["doc_id"].nunique()

    def add(claim: str, text: str, statistic: str, est: float, lo: float, hi: float, direction: int = 1, note: str = "") -> None:
        v = verdict(lo, hi, direction) if n_docs >= 2 else INCONCLUSIVE
        rows.append(dict(claim=claim, mode=mode, statement=text, statistic=statistic, estimate=est, ci_low=lo, ci_high=hi,
                         verdict=v, n_docs=n_docs, note=note))

    diff = (ent["kept_share_far"] - att["kept_share_far"]).dropna()
    add("1a", "Entropy-selected tokens have larger FI at long distances than attention-selected ones",
        f"far-FI share kept, {cfg.entropy} − {cfg.attention}, budget {budget:g}",
        *_unit_mean_ci(diff, ent.loc[diff.index, "doc_id"], cfg, rng))
    diff = (att["near_frac"] - ent["near_frac"]).dropna()
    note = "split mode: only sources within `near` of N have near targets" if mode == "split" else ""
    if len(diff):
        add("1b", "Attention-selected tokens' influence is concentrated at short distances",
            f"near fraction of kept FI, {cfg.attention} − {cfg.entropy}, budget {budget:g}",
            *_unit_mean_ci(diff, att.loc[diff.index, "doc_id"], cfg, rng), note=note)
    w = words[(words["column"] == cfg.entropy) & (words["level"] == "token")]
    if len(w):
        r = w.iloc[0]
        add("2", "Content words sit at high entropy, function words low",
            f"rank-biserial of {cfg.entropy}, content vs function (p={r.p_value:.1e})", r.rank_biserial, r.ci_low, r.ci_high)
    b = bias[(bias["rule"] == cfg.attention) & (bias["budget"] == budget)]
    if len(b):
        add("3", "Attention-based selection is biased toward function words",
            f"function share of {cfg.attention} top-{budget:g} minus candidates' share",
            *_unit_mean_ci(b["excess"], b["doc_id"], cfg, rng))
    return pd.DataFrame(rows)


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
    meta: dict[str, Any]

    TABLES = ("correlations", "selection", "selection_summary", "distance_curves", "word_tests", "word_groups", "function_bias", "claims")


def analyze(result: MeasureResult, cfg: AnalyzeConfig | None = None) -> Analysis:
    """All tables for the report of one ``fi-measure`` run."""
    cfg = (cfg or AnalyzeConfig()).validate()
    run = result.config
    src = source_table(result, cfg)
    if src["doc_id"].nunique() < 1 or len(src) < 4:
        raise InputError("the run has fewer than 4 measured sources; measure more (lower --stride or more documents)")
    rules = [r for r in RULES if r in ("random", "fi_oracle") or r in src.columns]
    sel = selection(src, cfg, rules)
    cand = candidate_tokens(result, cfg)
    tok_fi = cand.merge(src[["doc_id", "split_pos", "source_pos", "fi_total", "fi_far"]].rename(columns={"source_pos": "pos"}),
                        on=["doc_id", "split_pos", "pos"], how="left") if run.mode == "split" else \
        cand.merge(src[["doc_id", "source_pos", "fi_total", "fi_far"]].rename(columns={"source_pos": "pos"}), on=["doc_id", "pos"], how="left")
    has_words = "word_class" in cand.columns
    words = pd.concat([word_class_tests(tok_fi, cfg, level=lv) for lv in ("token", "word_start")], ignore_index=True) if has_words else pd.DataFrame()
    groups = pd.concat([by_group(tok_fi, g, ("entropy_in_topk", "entropy_in", "surprisal", "fi_total", "fi_far")) for g in ("word_class", "upos")], ignore_index=True) if has_words else pd.DataFrame()
    bias = function_bias(cand, cfg, [r for r in rules if r != "fi_oracle"]) if has_words else pd.DataFrame()
    tables = dict(
        sources=src,
        tokens=tok_fi,
        correlations=correlations(src, cfg),
        selection=sel,
        selection_summary=selection_summary(sel, cfg),
        distance_curves=distance_curves(result, src, cfg, rules),
        word_tests=words,
        word_groups=groups,
        function_bias=bias,
    )
    tables["claims"] = claims(sel, words if has_words else pd.DataFrame(columns=["column", "level"]), bias if has_words else pd.DataFrame(columns=["rule", "budget"]), cfg, run.mode)
    near = cfg.near if cfg.near is not None else run.near
    far = cfg.far if cfg.far is not None else run.far
    meta = {"analyze_config": cfg.to_dict(), "near": near, "far": far, "run": {k: result.meta.get(k) for k in ("run_id", "config", "model", "versions", "git_sha", "seed", "noise_floor_max", "seconds_total")}}
    return Analysis(meta=meta, **tables)
