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

from forward_influence.errors import InputError

#: metrics summarised per task, in display order; lower is better for the first two
METRICS = {
    "fidelity": ("kl", "delta_nll"),
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
