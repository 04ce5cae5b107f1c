"""Rank statistics and document-resampling intervals (pure NumPy/SciPy).

Correlations are rank statistics (Spearman, Kendall τ-b, partial on a
covariate); intervals resample documents (:func:`cluster_bootstrap`, BCa,
with the percentile interval of the same resamples where BCa is undefined) or,
per document, tokens (:func:`token_bootstrap`). How a claim is decided —
sign-flip tests, Holm, verdicts — is :mod:`forward_influence.analysis.inference`.

The bootstrap functions take ``cfg`` with ``n_boot`` and ``confidence``
(an :class:`~forward_influence.analysis.analyze.AnalyzeConfig`).

>>> verdict(0.02, 0.10)
'supported'
>>> verdict(-0.3, -0.1)
'not supported'
>>> verdict(-0.05, 0.2)
'inconclusive'
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import stats

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"


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


def token_bootstrap(
    x: np.ndarray, y: np.ndarray, method: str, z: np.ndarray | None, cfg: Any, rng: np.random.Generator
) -> tuple[float, float, float]:
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
        res = stats.bootstrap(
            data,
            stat,
            paired=True,
            vectorized=True,
            n_resamples=cfg.n_boot,
            confidence_level=cfg.confidence,
            method="percentile",
            rng=rng,
        )
    return (est, *_interval(res))


def _bootstrap_ci(
    data: tuple[np.ndarray, ...], stat: Callable[..., np.ndarray], cfg: Any, rng: np.random.Generator
) -> tuple[float, float, str]:
    """BCa interval of ``stats.bootstrap``; percentile from the same resamples
    where BCa is undefined (all resamples equal, or NaN resamples)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.bootstrap(
            data, stat, vectorized=True, n_resamples=cfg.n_boot, confidence_level=cfg.confidence, method="BCa", rng=rng
        )
    lo, hi = _interval(res)
    if np.isfinite(lo) and np.isfinite(hi):
        return lo, hi, "BCa"
    dist = np.asarray(res.bootstrap_distribution, float)
    if not np.isfinite(dist).any():
        return np.nan, np.nan, "none"
    a = (1 - cfg.confidence) / 2
    lo, hi = np.nanquantile(dist, [a, 1 - a])
    return float(lo), float(hi), "percentile"


def document_bootstrap(
    n_groups: int, statistic: Callable[[np.ndarray], np.ndarray], cfg: Any, rng: np.random.Generator
) -> tuple[float, float, float, str]:
    """:func:`cluster_bootstrap` and the method its interval came from
    ("BCa", "percentile" where BCa is undefined, "none" below 2 groups)."""
    est = float(statistic(np.ones((1, n_groups)))[0])
    if n_groups < 2 or not np.isfinite(est):
        return est, np.nan, np.nan, "none"

    def stat(i: np.ndarray, axis: int = -1) -> np.ndarray:
        # i: (..., s) group indices of bootstrap (s = n) or jackknife (s = n - 1) samples
        i = np.moveaxis(np.asarray(i), axis, -1)
        flat = i.reshape(-1, i.shape[-1])  # (R, s)
        rows = np.arange(len(flat))[:, None] * n_groups
        m = np.bincount((rows + flat).ravel(), minlength=len(flat) * n_groups).reshape(
            len(flat), n_groups
        )  # (R, n_groups)
        return statistic(m.astype(float)).reshape(i.shape[:-1])

    return (est, *_bootstrap_ci((np.arange(n_groups),), stat, cfg, rng))


def cluster_bootstrap(
    n_groups: int, statistic: Callable[[np.ndarray], np.ndarray], cfg: Any, rng: np.random.Generator
) -> tuple[float, float, float]:
    """A statistic of whole groups (documents) and its BCa interval from
    resampling groups with replacement.

    ``statistic(M)`` takes ``M`` ``(R, n_groups)``, how often each group is in
    each of ``R`` resamples, and returns ``(R,)``; the estimate is at ``M = 1``.
    BCa's jackknife leaves one group out (a row of ``M`` with one zero). Where
    BCa is undefined (every resample gives the same value, or some give NaN)
    the percentile interval of the same resamples is returned instead.
    """
    return document_bootstrap(n_groups, statistic, cfg, rng)[:3]


def ratio_statistic(num: np.ndarray, den: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """``sum_k m_k num_k / sum_k m_k den_k`` for :func:`cluster_bootstrap`
    (a weighted mean over the rows of the resampled groups)."""

    def f(m: np.ndarray) -> np.ndarray:
        d = m @ den
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(d > 0, (m @ num) / np.where(d > 0, d, 1.0), np.nan)

    return f


def document_means(
    values: np.ndarray, groups: np.ndarray, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per group (document): ids, weighted mean of the finite ``values`` and
    their total weight; groups without weight are left out.

    >>> document_means(np.array([1.0, 3.0, np.nan, 5.0]), np.array(["a", "a", "b", "c"]))
    (array(['a', 'c'], dtype='<U1'), array([2., 5.]), array([2., 1.]))
    """
    values = np.asarray(values, float)
    w = np.ones_like(values) if weights is None else np.asarray(weights, float)
    w = np.where(np.isfinite(values), w, 0.0)
    uniq, inv = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    num = np.bincount(inv, weights=np.nan_to_num(values) * w, minlength=len(uniq))
    den = np.bincount(inv, weights=w, minlength=len(uniq))
    ok = den > 0
    return uniq[ok], num[ok] / den[ok], den[ok]


def group_mean_ci(
    values: np.ndarray, groups: np.ndarray, cfg: Any, rng: np.random.Generator, weights: np.ndarray | None = None
) -> tuple[float, float, float]:
    """Mean of ``values`` (NaN skipped, optionally weighted) with a BCa interval
    from resampling the ``groups`` (documents)."""
    _, mean, den = document_means(values, groups, weights)
    return cluster_bootstrap(len(den), ratio_statistic(mean * den, den), cfg, rng)


# --------------------------------------------------------------- word classes
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
