"""Summaries of ``fi-bench`` results: means with paired bootstrap intervals.

Every method is scored on the same samples, so differences are paired: the
interval of ``mean(x_method - x_ref)`` resamples samples (not rows) with
replacement, ``n_resamples`` times (percentile interval, 95%), with
:func:`scipy.stats.bootstrap` as :mod:`forward_influence.analysis.stats` does.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from forward_influence.analysis.inference import MIN_DOCS
from forward_influence.compress.specs import base_name
from forward_influence.errors import InputError

#: metrics summarised per task, in display order; lower is better for the first two
METRICS = {
    "fidelity": ("kl", "delta_nll", "kl_far"),
    "retrieval": ("exact_match", "nll"),
    "qa": ("contains", "nll", "exact_match"),
    "ifeval": ("prompt_strict", "inst_strict", "prompt_loose", "inst_loose", "agree_tokens", "agree_prefix"),
}
EXTRA = ("fi_kept_share",)

#: Columns every ``fi-bench`` run's tables have (checked when a run directory is read).
REQUIRED_COLUMNS = {
    "results": ("task", "sample_id", "method", "budget", "seconds"),
    "summary": ("task", "metric", "method", "budget", "n", "mean", "lo", "hi"),
}


def paired_interval(
    x: np.ndarray, y: np.ndarray | None, n_resamples: int, rng: np.random.Generator
) -> tuple[float, float, float]:
    """Mean of ``x - y`` (or of ``x``) and its 95% percentile bootstrap interval
    (:func:`scipy.stats.bootstrap`; NaN pairs dropped; one value: the value).

    >>> m, lo, hi = paired_interval(np.array([1.0, 2, 3, 4]), np.array([0.0, 1, 2, 3]), 200, np.random.default_rng(0))
    >>> (m, lo, hi)
    (1.0, 1.0, 1.0)
    """
    d = x if y is None else x - y
    d = d[np.isfinite(d)]
    if d.size == 0:
        return (float("nan"),) * 3
    m = float(d.mean())
    if d.size == 1:  # scipy needs two values; every resample is the value
        return m, m, m
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # all values equal: a degenerate (but right) interval
        res = stats.bootstrap(
            (d,), np.mean, vectorized=True, n_resamples=n_resamples, confidence_level=0.95, method="percentile", rng=rng
        )
    return m, float(res.confidence_interval.low), float(res.confidence_interval.high)


def summarize_bench(results: pd.DataFrame, n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """One row per (task, metric, method, budget): mean with interval, and the
    paired difference to ``full`` and to ``snapkv`` (where present)."""
    rng = np.random.default_rng(seed)
    rows = []
    for task, df in results.groupby("task", sort=False):
        metrics = [m for m in METRICS.get(task, ()) + EXTRA if m in df.columns]
        for metric in metrics:
            wide = df.pivot_table(index="sample_id", columns=["method", "budget"], values=metric, aggfunc="mean")
            for method, budget in wide.columns:
                x = wide[(method, budget)].to_numpy(dtype=float)
                row = {
                    "task": task,
                    "metric": metric,
                    "method": method,
                    "budget": budget,
                    "n": int(np.isfinite(x).sum()),
                }
                row["mean"], row["lo"], row["hi"] = paired_interval(x, None, n_resamples, rng)
                for ref in ("full", "snapkv"):
                    if (ref, budget) in wide.columns and ref != method:
                        y = wide[(ref, budget)].to_numpy(dtype=float)
                        row[f"vs_{ref}"], row[f"vs_{ref}_lo"], row[f"vs_{ref}_hi"] = paired_interval(
                            x, y, n_resamples, rng
                        )
                rows.append(row)
    return pd.DataFrame(rows)


#: Never "the best deployable method" of the gap closed, in any setting: the reference, the oracle and the
#: method judged.
NOT_DEPLOYABLE = ("full", "fi_oracle", "distilled")


def gap_closed(
    results: pd.DataFrame,
    n_resamples: int = 2000,
    seed: int = 0,
    method: str = "distilled",
    oracle: str = "fi_oracle",
) -> pd.DataFrame:
    """The gap ``method`` closes between the best deployable method and the FI oracle, per fidelity
    metric (``kl``, ``kl_far``) and budget: ``G = (KL_best - KL_method) / (KL_best - KL_oracle)`` on
    document-mean KLs, ``KL_best`` the deployable method (every method but :data:`NOT_DEPLOYABLE`) with
    the lowest mean on the same documents (those every method scored).

    The 95% percentile interval resamples documents (``n_resamples``), choosing the best method again
    in every resample; so does the denominator's. G is *not defined* (``defined`` False) unless the
    denominator's interval lies above 0: where it contains 0 (the oracle not distinguishable from the
    best method), where the oracle is worse than the best (G's sign would mean nothing), and with fewer
    than :data:`~forward_influence.analysis.inference.MIN_DOCS` documents (the claims' bar for any
    verdict; the point estimates are still given). Empty when the results hold no fidelity rows of both
    methods.

    >>> r = pd.DataFrame({"task": "fidelity", "sample_id": np.repeat(list("abcde"), 3), "budget": 0.2,
    ...     "method": ["snapkv", "distilled", "fi_oracle"] * 5, "kl": [1.0, 0.6, 0.2] * 5})
    >>> g = gap_closed(r, 200).iloc[0]
    >>> (g["best"], round(float(g["gap_closed"]), 3), bool(g["defined"]))
    ('snapkv', 0.5, True)
    """
    cols = ["task", "metric", "budget", "n", "best", "kl_best", "kl_method", "kl_oracle", "gap_closed", "lo", "hi"]
    cols += ["denominator", "denominator_lo", "denominator_hi", "defined"]
    fid = results[results["task"] == "fidelity"] if "task" in results.columns else results.iloc[:0]
    rows = []
    if fid.empty or not {method, oracle} <= set(fid["method"]):
        return pd.DataFrame(columns=cols)
    rng = np.random.default_rng(seed)
    for metric in (m for m in ("kl", "kl_far") if m in fid.columns):
        for budget, df in fid.groupby("budget", sort=True):
            wide = df.pivot_table(index="sample_id", columns="method", values=metric, aggfunc="mean").dropna()
            never = {base_name(m) for m in (*NOT_DEPLOYABLE, method, oracle)}  # in any setting (NAME:KEY=VALUE)
            deploy = [m for m in wide.columns if m not in {method, oracle} and base_name(m) not in never]
            if wide.empty or not deploy or method not in wide or oracle not in wide:
                continue
            x = wide[[*deploy, method, oracle]].to_numpy(float)  # (docs, methods)
            n = len(x)
            idx = np.vstack([np.arange(n)[None], rng.integers(0, n, (n_resamples, n))])  # row 0: the data
            means = x[idx].mean(axis=1)  # (1 + B, methods)
            best = means[:, : len(deploy)].min(axis=1)
            den = best - means[:, -1]
            g = (best - means[:, -2]) / np.where(den == 0, np.nan, den)
            dlo, dhi = np.percentile(den[1:], [2.5, 97.5]) if n > 1 else (np.nan, np.nan)
            defined = bool(n >= MIN_DOCS and dlo > 0)
            glo, ghi = np.nanpercentile(g[1:], [2.5, 97.5]) if defined else (np.nan, np.nan)
            rows.append(
                {
                    "task": "fidelity",
                    "metric": metric,
                    "budget": budget,
                    "n": n,
                    "best": deploy[int(np.argmin(means[0, : len(deploy)]))],
                    "kl_best": best[0],
                    "kl_method": means[0, -2],
                    "kl_oracle": means[0, -1],
                    "gap_closed": g[0],
                    "lo": glo,
                    "hi": ghi,
                    "denominator": den[0],
                    "denominator_lo": dlo,
                    "denominator_hi": dhi,
                    "defined": defined,
                }
            )
    return pd.DataFrame(rows, columns=cols)


def gap_text(row: pd.Series) -> str:
    """``G 0.42 [0.20, 0.61]`` or ``G not defined: ...`` (and why) for one row of :func:`gap_closed`."""
    if row["n"] < MIN_DOCS:
        return (
            f"G not defined: fewer than the {MIN_DOCS} documents any verdict needs (estimate {row['gap_closed']:.2f})"
        )
    if not row["defined"]:
        return (
            f"G not defined: best - oracle {row['denominator']:+.4f} "
            f"[{row['denominator_lo']:+.4f}, {row['denominator_hi']:+.4f}] is not above 0"
        )
    return f"G {row['gap_closed']:.2f} [{row['lo']:.2f}, {row['hi']:.2f}]"


def load_run(out: str | Path) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame]:
    """``run.json``, ``results.parquet`` and ``summary.parquet`` of a finished
    ``fi-bench`` run, checked (schema version, readable tables, columns).

    Raises
    ------
    InputError
        As :func:`forward_influence.store.results.read_run_json` and
        :func:`~forward_influence.store.results.read_tables`; also an unfinished run.
    """
    from forward_influence.store.results import read_run_json, read_tables

    meta = read_run_json(out, "fi-bench")
    if meta.get("status") != "complete":
        raise InputError(
            f"{out}: the fi-bench run did not finish (status {meta.get('status')!r}); rerun the same command to "
            "resume it"
        )
    tables = read_tables(out, REQUIRED_COLUMNS, meta, "fi-bench")
    return meta, tables["results"], tables["summary"]
