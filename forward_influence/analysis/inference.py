"""How a claim is decided: document-level tests, their intervals, Holm, verdicts (pure NumPy/SciPy/pandas).

How a claim is decided
----------------------
Every claim is reduced to one number per *document* ``x_k`` (a difference of
two selection rules in that document, a within-document rank-biserial, ...)
and optionally a fixed weight ``w_k >= 0`` (its tokens or units; weights
must not depend on the signs of the values).

* **Estimate**: the weighted mean ``T = sum_k w_k x_k / sum_k w_k``.
* **p-value**: the document-level sign-flip permutation test
  (:func:`sign_flip_test`) of H0 "each ``x_k`` is symmetric about 0", which
  holds when the two rules (classes) being compared are exchangeable within a
  document. ``p`` is the share of the ``2^n`` sign patterns ``s`` whose
  ``|sum_k s_k w_k x_k|`` reaches the observed one, enumerated exactly for
  ``n <= 16`` documents (Monte Carlo with the ``+1`` correction above). It is
  exact at any ``n``, for heavy tails and unequal document scales alike.
* **Interval**: the same test inverted (:func:`inversion_interval`): the
  shifts ``delta`` for which the test of ``x - delta`` does not reject at
  ``alpha``. A pattern that flips the documents ``F`` and keeps ``U`` reaches
  the observed ``|T(delta)|`` exactly when ``delta`` lies between the
  weighted means of ``x`` over ``F`` and over ``U`` (a closed interval that
  always holds the estimate), so the interval's ends are order statistics of
  those means, computed from the same patterns, Monte Carlo draws and tie
  rule as ``p``. Hence the interval excludes 0 exactly when the unadjusted
  ``p < alpha``. With ``n <= 5`` documents no pattern set can reject at 0.05
  (the smallest p is ``2/32``): the interval is unbounded.
* **Multiplicity**: Holm's step-down adjustment over a pre-declared family
  (:func:`holm`, :func:`adjust_claims`): the claims of one run in
  ``fi-analyze``; the primary test of each claim per corpus in the README.
* **Verdict** (:func:`claim_verdict`): *supported* when the adjusted ``p <
  alpha`` and the estimate has the claimed sign, *not supported* when ``p <
  alpha`` with the opposite sign, otherwise *inconclusive*; always
  inconclusive below :data:`MIN_DOCS` documents.

The smallest two-sided sign-flip p with ``n`` documents is ``2 / 2^n``
(the observed pattern and its mirror image), so whether a family of ``m``
claims can reach ``alpha = 0.05`` after Holm (``m * 2 / 2^n < alpha``) is a
matter of ``n`` alone:

====  ============  ===================================
 n    min p         can reject after Holm over m claims
====  ============  ===================================
 5    1/16          never (not even m = 1)
 6    1/32          m = 1
 7    1/64          m <= 3
 8    1/128         m <= 6 (a family of 4: yes)
 11   1/1024        m <= 51
====  ============  ===================================

With 8 documents and 4 claims, a claim is decided only when its 8
per-document values all share one sign (anything else has ``p >= 1/64``).

>>> claim_verdict(0.3, 0.03, direction=1, n_docs=8)
'supported'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from forward_influence.analysis.stats import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED

#: Documents needed before a claim gets a verdict other than inconclusive.
MIN_DOCS = 5
#: Up to this many documents the sign-flip test enumerates all 2^n patterns.
EXACT_MAX_DOCS = 16
#: Monte Carlo sign patterns above :data:`EXACT_MAX_DOCS`.
N_PERM = 9_999
#: ``|T*| >= |T|`` up to this share of ``sum |w x|`` (float ties count as reached).
TIE_RTOL = 1e-9
#: Elements of one ``(rows, patterns)`` block of the sign-flip test.
_BLOCK = 4_000_000


class SignFlipResult(NamedTuple):
    """Result of :func:`sign_flip_test` (arrays when the values are 2-D)."""

    statistic: Any  #: weighted mean of the finite values
    p_value: Any  #: two-sided
    n_docs: Any  #: finite values
    exact: bool  #: all 2^n patterns enumerated (else Monte Carlo)
    ci_low: float = np.nan  #: the test inverted at ``alpha`` (1-D values with ``alpha``; -inf: unbounded)
    ci_high: float = np.nan


def _sign_patterns(n: int) -> np.ndarray:
    """All ``2^n`` sign patterns, ``(2^n, n)`` of ±1 (row 0: no flip)."""
    bits = (np.arange(2**n)[:, None] >> np.arange(n)) & 1
    return 1.0 - 2.0 * bits


def sign_flip_test(
    values: np.ndarray,
    weights: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
    n_perm: int = N_PERM,
    exact_max: int = EXACT_MAX_DOCS,
    alpha: float | None = None,
) -> SignFlipResult:
    """Document-level sign-flip permutation test of H0 "the per-document values
    are symmetric about 0".

    Statistic ``T = sum_k w_k x_k / sum_k w_k`` over the finite values ``x_k``
    (documents). Under H0 every pattern of signs ``s`` is as likely as the
    observed one, so the two-sided ``p`` is the share of patterns with
    ``|T(s)| >= |T|`` (up to :data:`TIE_RTOL`), the observed pattern included:
    all ``2^n`` patterns when ``n <= exact_max``, else ``n_perm`` random ones
    with ``p = (1 + hits) / (1 + n_perm)``. ``p`` lies in ``[2 / 2^n, 1]``: with
    8 documents the smallest p is ``2/256 = 1/128``.

    Parameters
    ----------
    values : ``(n,)``, or ``(R, n)`` for ``R`` independent tests at once (in
        2-D a NaN gets weight 0, which leaves p unchanged).
    weights : ``(n,)`` or like ``values``, finite and >= 0; fixed, not chosen
        from the data's signs. Default: equal.
    rng : for the Monte Carlo patterns.
    alpha : with 1-D values, also the interval of shifts the test does not
        reject at ``alpha`` (:func:`inversion_interval`, the same patterns).

    >>> r = sign_flip_test(np.array([0.3, 0.1, 0.2, 0.5, 0.4, 0.2, 0.1, 0.6]))
    >>> r.p_value == 1 / 128, r.exact, r.n_docs
    (True, True, 8)
    >>> float(sign_flip_test(np.array([1.0, -1.0, np.nan])).p_value)
    1.0
    """
    x = np.asarray(values, float)
    w = np.ones_like(x) if weights is None else np.broadcast_to(np.asarray(weights, float), x.shape).copy()
    if x.ndim not in (1, 2):
        raise ValueError(f"values must be 1-D (documents) or 2-D (tests, documents); got shape {x.shape}")
    if not (np.isfinite(w).all() and (w >= 0).all()):
        raise ValueError("weights must be finite and >= 0")
    if n_perm < 1 or exact_max < 0:
        raise ValueError(f"n_perm must be >= 1 and exact_max >= 0; got {n_perm}, {exact_max}")
    one = x.ndim == 1
    if one:
        ok = np.isfinite(x)
        x, w = x[ok][None], w[ok][None]
    w = np.where(np.isfinite(x), w, 0.0)
    wx = np.nan_to_num(x) * w  # (R, n)
    r, n = wx.shape
    with np.errstate(invalid="ignore", divide="ignore"):
        stat = wx.sum(1) / w.sum(1)
    exact = n <= exact_max
    if exact:
        signs = _sign_patterns(n)  # (P, n)
    else:
        rng = rng if rng is not None else np.random.default_rng()
        signs = np.where(rng.random((n_perm, n)) < 0.5, -1.0, 1.0)  # (P, n)
    obs = np.abs(wx.sum(1))  # (R,)
    tol = TIE_RTOL * np.abs(wx).sum(1)
    hits = np.zeros(r)
    step = max(1, _BLOCK // max(1, len(signs)))
    for r0 in range(0, r, step):
        t = np.abs(wx[r0 : r0 + step] @ signs.T)  # (rows, P)
        hits[r0 : r0 + step] = (t >= (obs - tol)[r0 : r0 + step, None]).sum(1)
    p = hits / len(signs) if exact else (1 + hits) / (1 + n_perm)
    p = np.where(np.isfinite(stat), np.minimum(p, 1.0), np.nan)
    nd = np.isfinite(x).sum(1)
    if one:
        lo, hi = inversion_interval(x[0], w[0], signs, alpha, exact) if alpha is not None and n else (np.nan, np.nan)
        return SignFlipResult(float(stat[0]), float(p[0]), int(nd[0]), exact, lo, hi)
    return SignFlipResult(stat, p, nd, exact)


def inversion_interval(
    values: np.ndarray, weights: np.ndarray, signs: np.ndarray, alpha: float, exact: bool
) -> tuple[float, float]:
    """The shifts ``delta`` whose sign-flip test (:func:`sign_flip_test`, the
    same ``signs``) does not reject ``x - delta`` at ``alpha``: ``(low, high)``,
    ``±inf`` where unbounded.

    A pattern flipping the documents ``F`` (keeping ``U``) reaches the observed
    statistic at ``delta`` exactly when ``(delta - m_F)(m_U - delta) >= 0``,
    with ``m_F``, ``m_U`` the weighted means of ``x`` over ``F`` and ``U``: a
    closed interval holding the estimate (patterns that flip all or none: every
    ``delta``). Counts are therefore unimodal around the estimate, and the
    acceptance region ``count(delta) >= c`` is the interval from the ``c``-th
    smallest lower end to the ``c``-th largest upper end. ``c`` makes ``p >=
    alpha``: ``ceil(alpha P)`` of ``P`` enumerated patterns, ``ceil(alpha (1 +
    P) - 1)`` of ``P`` Monte Carlo ones. Each end is widened by the test's tie
    tolerance (:data:`TIE_RTOL` of ``sum w |x - end|``, turned into a shift:
    ``tol / (2 W_F)`` at ``m_F``), so ties count on both sides alike.

    >>> x = np.array([0.3, 0.1, 0.2, 0.5, 0.4, 0.2, 0.1, 0.6])
    >>> lo, hi = inversion_interval(x, np.ones(8), _sign_patterns(8), 0.05, True)
    >>> bool(lo > 0), bool(hi < 0.6)
    (True, True)
    """
    x, w = np.asarray(values, float), np.asarray(weights, float)
    flip = signs < 0  # (P, n)
    wf, wu = flip @ w, ~flip @ w
    sf, su = flip @ (w * x), ~flip @ (w * x)
    trivial = (wf <= 0) | (wu <= 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mf, mu = (
            np.where(trivial, 0.0, sf / np.where(trivial, 1.0, wf)),
            np.where(trivial, 0.0, su / np.where(trivial, 1.0, wu)),
        )
    tol_f = TIE_RTOL * np.abs(x[None, :] - mf[:, None]) @ w / (2 * np.where(trivial, 1.0, wf))
    tol_u = TIE_RTOL * np.abs(x[None, :] - mu[:, None]) @ w / (2 * np.where(trivial, 1.0, wu))
    lo = np.where(trivial, -np.inf, np.where(mf <= mu, mf - tol_f, mu - tol_u))
    hi = np.where(trivial, np.inf, np.where(mf <= mu, mu + tol_u, mf + tol_f))
    n_pat = len(signs)
    c = int(np.ceil(alpha * n_pat - 1e-9)) if exact else int(np.ceil(alpha * (1 + n_pat) - 1 - 1e-9))
    if c <= 0:
        return -np.inf, np.inf
    return float(np.sort(lo)[c - 1]), float(np.sort(hi)[n_pat - c])


def interval_text(lo: float, hi: float, fmt: str = "+.3f") -> str:
    """An interval for tables: ``[lo, hi]``, or "—" where it is unbounded or missing.

    >>> interval_text(-0.1, 0.25), interval_text(-np.inf, np.inf)
    ('[-0.100, +0.250]', '—')
    """
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "—"
    return f"[{lo:{fmt}}, {hi:{fmt}}]"


def holm(pvalues: np.ndarray, axis: int = -1) -> np.ndarray:
    """Holm step-down adjusted p-values along ``axis`` (one family per slice).

    Sorted ascending, ``p_(j)`` becomes ``max_{i <= j} min(1, (m - i + 1) p_(i))``
    with ``m`` the number of finite p-values; NaN stays NaN and is not counted.

    Hand-computed: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 gives
    0.02, 0.03, 0.06, 0.04; the running maximum turns the last into 0.06.

    >>> holm([0.01, 0.04, 0.03, 0.005, np.nan]).round(6).tolist()
    [0.03, 0.06, 0.06, 0.02, nan]
    """
    p = np.moveaxis(np.asarray(pvalues, float), axis, -1)
    if ((p < 0) | (p > 1)).any():
        raise ValueError("p-values must be in [0, 1] (or NaN)")
    order = np.argsort(p, axis=-1)  # NaN last
    ps = np.take_along_axis(p, order, -1)
    m = np.isfinite(ps).sum(-1, keepdims=True)
    adj = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(p.shape[-1])) * ps), axis=-1)
    out = np.empty_like(p)
    np.put_along_axis(out, order, adj, -1)
    return np.moveaxis(out, -1, axis)


def smallest_p_adjusted(n_docs: np.ndarray, exact_max: int = EXACT_MAX_DOCS, n_perm: int = N_PERM) -> np.ndarray:
    """The smallest Holm-adjusted p each claim of one family can reach, however strong its effect.

    The sign-flip p of a claim over ``n`` documents is at least ``2 / 2^n`` (exact
    enumeration) or ``1 / (1 + n_perm)`` (Monte Carlo, ``n > exact_max``), reached
    when every document lies on one side. Holm's adjustment is monotone in the
    raw p-values, so every claim's adjusted p is smallest when every raw p is at
    its minimum: the floor is Holm of those minima. Where it is ``>= alpha`` the
    claim is inconclusive whatever the data, and the table must say so rather
    than let "inconclusive" read as "no effect".

    >>> smallest_p_adjusted(np.array([6, 6, 6, 6])).round(4).tolist()   # 4 x 2/64
    [0.125, 0.125, 0.125, 0.125]
    >>> float(smallest_p_adjusted(np.array([8, 8, 8, 8]))[0])           # 4 x 2/256
    0.03125
    """
    n = np.asarray(n_docs, dtype=float)
    p_min = np.where(n <= exact_max, 2.0 / 2.0 ** np.clip(n, 0, exact_max), 1.0 / (1 + n_perm))
    return holm(np.minimum(p_min, 1.0))


def documents_needed(m: int, alpha: float = 0.05) -> int:
    """Fewest documents per claim with which a family of ``m`` claims can reach ``p_Holm < alpha``
    (the first ``n`` whose :func:`smallest_p_adjusted` is below ``alpha``).

    >>> documents_needed(4), documents_needed(1)
    (8, 6)
    """
    n = 1
    while smallest_p_adjusted(np.full(m, n)).min() >= alpha:
        n += 1
    return n


def claim_verdict(
    estimate: float,
    p_adjusted: float,
    direction: int = 1,
    *,
    n_docs: int,
    alpha: float = 0.05,
    min_docs: int = MIN_DOCS,
) -> str:
    """Supported / not supported / inconclusive from an (adjusted) p-value.

    *Supported* when ``p_adjusted < alpha`` and ``sign(estimate) * direction >
    0``, *not supported* when ``p_adjusted < alpha`` and the sign is the other,
    *inconclusive* otherwise and always when ``n_docs < min_docs``.

    >>> claim_verdict(-0.2, 0.01, direction=-1, n_docs=8), claim_verdict(-0.2, 0.01, n_docs=8)
    ('supported', 'not supported')
    >>> claim_verdict(0.5, 0.001, n_docs=4), claim_verdict(0.5, 0.2, n_docs=8)
    ('inconclusive', 'inconclusive')
    """
    if direction not in (1, -1):
        raise ValueError(f"direction must be 1 or -1; got {direction}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1); got {alpha}")
    if (
        n_docs < min_docs
        or not (np.isfinite(estimate) and np.isfinite(p_adjusted))
        or p_adjusted >= alpha
        or estimate == 0
    ):
        return INCONCLUSIVE
    return SUPPORTED if estimate * direction > 0 else NOT_SUPPORTED


def claim_test(values: np.ndarray, weights: np.ndarray | None, cfg: Any, rng: np.random.Generator) -> dict[str, Any]:
    """Estimate, sign-flip p and the interval that inverts that test, from per-document values.

    ``values`` ``(n_docs,)`` (NaN dropped with its weight), ``weights`` ``(n_docs,)``
    or None, ``cfg.confidence`` the interval's level (``alpha = 1 - confidence``).
    Returns estimate (weighted mean), ci_low, ci_high (:func:`inversion_interval`;
    ``±inf`` where unbounded), p_value (two-sided, :func:`sign_flip_test`),
    n_docs, exact (p enumerated), ci_method ("sign-flip inversion").

    >>> from types import SimpleNamespace
    >>> r = claim_test(np.array([0.2, 0.4, 0.1, 0.3, 0.5, 0.2, 0.3, 0.1]), None, SimpleNamespace(confidence=0.95), None)
    >>> r["p_value"] < 0.05, r["ci_low"] > 0
    (True, True)
    """
    x = np.asarray(values, float)
    w = np.ones_like(x) if weights is None else np.asarray(weights, float)
    ok = np.isfinite(x) & (w > 0)
    x, w = x[ok], w[ok]
    test = sign_flip_test(x, w, rng=rng, alpha=1 - cfg.confidence)
    return dict(
        estimate=test.statistic,
        ci_low=test.ci_low,
        ci_high=test.ci_high,
        p_value=test.p_value,
        n_docs=test.n_docs,
        exact=test.exact,
        ci_method="sign-flip inversion",
    )


def adjust_claims(
    df: pd.DataFrame, alpha: float = 0.05, by: str | Sequence[str] | None = None, min_docs: int = MIN_DOCS
) -> pd.DataFrame:
    """Holm-adjust a claims table and decide its verdicts.

    ``df`` needs columns estimate, p_value, direction (±1) and n_docs. Returns
    a copy with ``p_adjusted`` (Holm over the whole frame, or within each
    group of ``by``) and ``verdict`` (:func:`claim_verdict`). Claims with a
    NaN p-value are not counted in the family.
    """
    out = df.copy()
    keys = (
        np.zeros(len(out), dtype=int) if by is None else out.groupby(by, sort=False, dropna=False).ngroup().to_numpy()
    )
    p = out["p_value"].to_numpy(float)
    adj = np.full(len(out), np.nan)
    for k in np.unique(keys):
        adj[keys == k] = holm(p[keys == k])
    out["p_adjusted"] = adj
    out["verdict"] = [
        claim_verdict(e, pa, int(d), n_docs=int(n), alpha=alpha, min_docs=min_docs)
        for e, pa, d, n in zip(out["estimate"], adj, out["direction"], out["n_docs"])
    ]
    return out


# --------------------------------------------------------------- word classes
def word_level(tokens: pd.DataFrame) -> pd.DataFrame:
    """One row per word: its first subword token.

    Uses ``(doc_id, word_idx)`` when the table has ``word_idx`` (first by
    ``pos``; tokens without a word dropped), else the rows with
    ``is_word_start``; duplicates of one token (a token that is a candidate in
    several splits) are kept once.
    """
    df = tokens.sort_values("pos", kind="stable") if "pos" in tokens.columns else tokens
    if "word_idx" in df.columns:
        df = df[df["word_idx"].notna()]
        return df.drop_duplicates(["doc_id", "word_idx"], keep="first")
    if "is_word_start" not in df.columns:
        raise ValueError("the token table needs word_idx or is_word_start")
    df = df[df["is_word_start"].fillna(False).astype(bool)]
    return df.drop_duplicates(["doc_id", "pos"], keep="first") if "pos" in df.columns else df


def per_document_rank_biserial(
    values: np.ndarray, classes: np.ndarray, docs: np.ndarray, positive: str = "content", negative: str = "function"
) -> pd.DataFrame:
    """Rank-biserial ``P(A > B) − P(A < B)`` of class ``positive`` (A) against
    ``negative`` (B) within each document (pass one value per word, see
    :func:`word_level`).

    Columns: doc_id, rank_biserial (NaN without both classes), n_positive,
    n_negative, weight (``n_positive * n_negative``: the weighted mean of the
    rank-biserials is the pooled within-document one).

    >>> t = per_document_rank_biserial(np.array([3.0, 1.0, 2.0, 0.0, 5.0]),
    ...     np.array(["content", "function", "content", "function", "function"]), np.array(list("aaabb")))
    >>> t.rank_biserial.tolist(), t.weight.tolist()
    ([1.0, nan], [2.0, 0.0])
    """
    values = np.asarray(values, float)
    classes, docs = np.asarray(classes).astype(str), np.asarray(docs).astype(str)
    rows = []
    for d in pd.unique(docs):
        ix = (docs == d) & np.isfinite(values)
        a, b = values[ix & (classes == positive)], np.sort(values[ix & (classes == negative)])
        n = len(a) * len(b)
        u = (np.searchsorted(b, a, "left") + np.searchsorted(b, a, "right")).sum() / 2  # ties count half
        rows.append(
            dict(
                doc_id=d,
                rank_biserial=2 * u / n - 1 if n else np.nan,
                n_positive=len(a),
                n_negative=len(b),
                weight=float(n),
            )
        )
    return pd.DataFrame(rows, columns=["doc_id", "rank_biserial", "n_positive", "n_negative", "weight"])
