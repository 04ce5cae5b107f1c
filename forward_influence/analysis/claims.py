"""The study's claims 1-3 as tests that can come out either way (docs/design.md §5).

Each claim is one number per document, tested at the document level
(:mod:`forward_influence.analysis.inference`: sign-flip p, the interval that
inverts it, Holm):

``1a`` *entropy-selected tokens carry more far influence than attention-selected ones*
    Within each unit (:mod:`forward_influence.analysis.selection`: a split, or
    a sliding-mode block), the entropy rule and the attention rule each keep
    the top ``b`` candidates by their signal; the statistic is the share of
    the unit's far FI (``d_tau > far``) the entropy rule keeps minus the
    attention rule's. **Against the study**: negative, when attention keeps
    more far influence.
``1b`` *attention-selected tokens' influence is concentrated nearby*
    Near fraction (``d_tau <= near``) of the kept tokens' FI, attention rule
    minus entropy rule. **Against**: negative, when the attention rule's kept
    influence reaches further than the entropy rule's.
``2`` *content words sit at higher entropy than function words*
    Rank-biserial content vs. function per document over one value per word.
    **Pre-declared reading**: the entropy signal of a word's *first subword*
    (``entropy_in_topk``: the model's uncertainty about which word comes next).
    The other readings (the word's mean over its subwords, every token,
    ``entropy_out_topk``, surprisal) stand beside it as sensitivity rows.
    **Against**: negative, function words higher.
``3`` *attention-based selection is biased toward function words*
    Function-word share of the attention rule's kept set minus the share
    among the candidates. **Against**: negative, attention under-selects them.

Distances count from the eviction time ``tau`` in both modes (split: ``N``;
sliding: ``i + D``), so every candidate of a unit has the same near and far
targets and claim 1 is tested in both. It needs some target beyond ``far``
(``--n-future`` / ``--horizon`` above ``--far``); where none is, or where a
Fisher run without distance blocks places each estimate at one distance, the
table says why claim 1 is absent.

Rows (column ``role``): ``claim`` rows are the family, Holm-adjusted together
(one run in ``fi-analyze``) and given a verdict; ``sensitivity`` rows (other
readings of claim 2; claims 1 and 3 without the first sliding block, whose
keys span the widest range of ages) and ``descriptive`` rows (far-FI share
kept, attention minus recency) carry estimate, interval and p, no verdict.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from forward_influence.analysis.inference import (
    MIN_DOCS,
    adjust_claims,
    claim_test,
    documents_needed,
    per_document_rank_biserial,
    smallest_p_adjusted,
    word_level,
)
from forward_influence.store.tables import far_targets

#: Documents needed before a claim gets a verdict other than inconclusive.
MIN_DOCS_VERDICT = MIN_DOCS
#: Row roles: in the family (verdict), beside it (no verdict).
CLAIM, SENSITIVITY, DESCRIPTIVE = "claim", "sensitivity", "descriptive"
#: The verdict of a claim the run cannot test.
NOT_TESTED = "not tested"

STATEMENTS = {
    "1a": "Entropy-selected tokens have larger FI at long distances than attention-selected ones",
    "1b": "Attention-selected tokens' influence is concentrated at short distances",
    "2": "Content words sit at high entropy, function words low",
    "3": "Attention-based selection is biased toward function words",
}
AGAINST = {
    "1a": "negative: the attention rule keeps more far FI",
    "1b": "negative: the attention rule's kept FI reaches further",
    "2": "negative: function words sit at higher entropy",
    "3": "negative: attention under-selects function words",
}
#: Claim 2's readings beside the pre-declared one: (reading, word level, column or None for cfg.entropy).
CLAIM2_READINGS = (
    ("word mean", "mean", None),
    ("all tokens", "token", None),
    ("entropy_out_topk", "first", "entropy_out_topk"),
    ("surprisal", "first", "surprisal"),
)
COLUMNS = [
    "claim",
    "reading",
    "role",
    "mode",
    "statement",
    "statistic",
    "against",
    "estimate",
    "ci_low",
    "ci_high",
    "p_value",
    "p_adjusted",
    "verdict",
    "n_docs",
    "note",
]
VALUE_COLUMNS = ["claim", "reading", "role", "statistic", "doc_id", "value", "weight"]


def _per_document(values: pd.Series, docs: pd.Series) -> pd.Series:
    """Mean over each document's units (NaN units skipped; documents without a finite unit dropped)."""
    v = values.to_numpy(float)
    ids, inv = np.unique(docs.astype(str).to_numpy(), return_inverse=True)
    ok = np.isfinite(v)
    n = np.bincount(inv[ok], minlength=len(ids))
    total = np.bincount(inv[ok], weights=v[ok], minlength=len(ids))
    keep = n > 0
    return pd.Series(total[keep] / n[keep], index=ids[keep])


def _values(
    claim: str, reading: str, role: str, statistic: str, per_doc: pd.Series, weights: Any = None
) -> dict[str, Any]:
    """Columns of :data:`VALUE_COLUMNS` for one reading (concatenated by :func:`claim_values`)."""
    n = len(per_doc)
    w = np.ones(n) if weights is None else np.asarray(weights, float)
    return dict(
        claim=[claim] * n,
        reading=[reading] * n,
        role=[role] * n,
        statistic=[statistic] * n,
        doc_id=list(per_doc.index.astype(str)),
        value=list(per_doc.to_numpy(float)),
        weight=list(w),
    )


def claim2_words(tokens: pd.DataFrame, level: str) -> pd.DataFrame:
    """One row per word (``first``: its first subword; ``mean``: the mean over
    its subwords, the first one's class) or per token (``token``)."""
    if level == "first":
        return word_level(tokens)
    df = tokens[tokens["word_class"].notna()] if "word_class" in tokens else tokens.iloc[:0]
    keys = ["doc_id", "pos"] if "pos" in df.columns else None
    df = df.drop_duplicates(keys) if keys else df
    if level == "token":
        return df
    num = df.select_dtypes("number").columns.difference(["word_idx", "pos"])
    first = word_level(df).set_index(["doc_id", "word_idx"])
    means = df.groupby(["doc_id", "word_idx"], sort=False)[list(num)].mean()
    return first.drop(columns=list(num)).join(means).reset_index()


def _claim2(tokens: pd.DataFrame, column: str, level: str) -> tuple[pd.Series, np.ndarray] | None:
    w = claim2_words(tokens, level)
    if column not in w.columns or not len(w):
        return None
    t = per_document_rank_biserial(
        w[column].to_numpy(float),
        w["word_class"].astype("string").fillna("other").to_numpy(),
        w["doc_id"].astype(str).to_numpy(),
    )
    t = t[t["weight"] > 0]
    # weights n_content * n_function: the weighted mean is the pooled within-document rank-biserial
    return pd.Series(t["rank_biserial"].to_numpy(), index=t["doc_id"].to_numpy()), t["weight"].to_numpy()


def claim_values(
    sel: pd.DataFrame, tokens: pd.DataFrame, bias: pd.DataFrame, cfg: Any, mode: str, distance_claims: bool = True
) -> pd.DataFrame:
    """Every claim's (and every reading's) value per document.

    Parameters
    ----------
    sel : DataFrame
        :func:`forward_influence.analysis.selection.selection` (uses ``subset == "candidates"``).
    tokens : DataFrame
        Token table with ``doc_id``, ``word_class``, ``word_idx`` (or
        ``is_word_start``) and the signal columns (claim 2; empty or without
        words: no claim 2).
    bias : DataFrame
        :func:`forward_influence.analysis.selection.function_bias` (claim 3; empty: none).
    cfg : AnalyzeConfig
        ``entropy``, ``attention``, ``budgets`` (claims use the smallest).
    mode : {"split", "sliding"}
    distance_claims : bool
        False where claim 1 cannot be tested (no target beyond far; a
        Fisher estimate without distance blocks).

    Returns
    -------
    DataFrame
        claim, reading, role, statistic, doc_id, value, weight.
    """
    budget = min(cfg.budgets)
    frames: list[dict[str, Any]] = []
    ent_name, att = cfg.entropy, cfg.attention
    s = sel[(sel["subset"] == "candidates") & (sel["budget"] == budget)] if len(sel) else sel
    if distance_claims and len(s):
        by_rule = {r: g.set_index("unit") for r, g in s.groupby("rule", sort=False)}
        ent = by_rule[ent_name]
        att_t = by_rule[att].loc[ent.index]
        later = ent["block"] != 0
        for reading, keep in (("primary", slice(None)), ("without first block", later)):
            if reading != "primary" and (mode != "sliding" or not later.any() or later.all()):
                continue
            role = CLAIM if reading == "primary" else SENSITIVITY
            e, a = ent.loc[keep], att_t.loc[keep]
            frames.append(
                _values(
                    "1a",
                    reading,
                    role,
                    f"far-FI share kept (d_τ > far), {ent_name} − {att}, budget {budget:g}",
                    _per_document(e["kept_share_far"] - a["kept_share_far"], e["doc_id"]),
                )
            )
            frames.append(
                _values(
                    "1b",
                    reading,
                    role,
                    f"near fraction (d_τ ≤ near) of kept FI, {att} − {ent_name}, budget {budget:g}",
                    _per_document(a["near_frac"] - e["near_frac"], e["doc_id"]),
                )
            )
        if "recency" in by_rule:
            rec = by_rule["recency"].loc[ent.index]
            frames.append(
                _values(
                    "1a",
                    "attention − recency",
                    DESCRIPTIVE,
                    f"far-FI share kept, {att} − recency, budget {budget:g}",
                    _per_document(att_t["kept_share_far"] - rec["kept_share_far"], ent["doc_id"]),
                )
            )
    if len(tokens) and "word_class" in tokens:
        readings = [("primary", "first", ent_name)] + [
            (r, lv, col or ent_name) for r, lv, col in CLAIM2_READINGS if (col or ent_name, lv) != (ent_name, "first")
        ]
        for reading, level, column in readings:
            got = _claim2(tokens, column, level)
            if got is None:
                continue
            what = {"first": "first subword", "mean": "mean over a word's subwords", "token": "every token"}[level]
            frames.append(
                _values(
                    "2",
                    reading,
                    CLAIM if reading == "primary" else SENSITIVITY,
                    f"rank-biserial of {column}, content vs function words ({what})",
                    *got,
                )
            )
    b = bias[(bias["rule"] == att) & (bias["budget"] == budget)] if len(bias) else bias
    if len(b):
        later = b["block"] != 0 if "block" in b else pd.Series(False, index=b.index)
        for reading, bb in (("primary", b), ("without first block", b[later])):
            if reading != "primary" and (mode != "sliding" or not later.any() or later.all()):
                continue
            frames.append(
                _values(
                    "3",
                    reading,
                    CLAIM if reading == "primary" else SENSITIVITY,
                    f"function share of {att} top-{budget:g} minus candidates' share",
                    _per_document(bb["excess"], bb["doc_id"]),
                )
            )
    return pd.DataFrame({c: [x for f in frames for x in f[c]] for c in VALUE_COLUMNS})


def claims_from_values(
    values: pd.DataFrame, cfg: Any, mode: str = "", note: str = "", keys: Sequence[str] = ()
) -> pd.DataFrame:
    """One row per (``keys``..., claim, reading) of :func:`claim_values`-shaped
    ``values``: estimate, the sign-flip p and the interval that inverts it;
    Holm over the ``claim`` rows (the family: every claim row passed in) with
    their verdicts; other rows get neither. ``keys`` (e.g. corpus, mode) are
    columns of ``values`` kept in the result."""
    rows = []
    by = [*keys, "claim", "reading", "role", "statistic"]
    for key, g in values.groupby(by, sort=False):
        head = dict(zip(by, key))
        res = claim_test(g["value"].to_numpy(float), g["weight"].to_numpy(float), cfg, np.random.default_rng(cfg.seed))
        rows.append(
            {
                "mode": mode,
                **head,
                "statement": STATEMENTS[head["claim"]],
                "against": AGAINST[head["claim"]],
                "direction": 1,
                "note": note,
                **res,
            }
        )
    if not rows:
        return pd.DataFrame(columns=list(dict.fromkeys([*keys, *COLUMNS])))
    out = pd.DataFrame(rows)
    fam = out["role"] == CLAIM
    adjusted = adjust_claims(out[fam], alpha=1 - cfg.confidence, min_docs=MIN_DOCS_VERDICT)
    out["p_adjusted"], out["verdict"] = np.nan, ""
    out.loc[fam, "p_adjusted"] = adjusted["p_adjusted"]
    out.loc[fam, "verdict"] = adjusted["verdict"]
    _family_notes(out, fam, 1 - cfg.confidence)
    return out


def _family_notes(out: pd.DataFrame, fam: pd.Series, alpha: float) -> None:
    """Say when a family member has too few documents for any verdict, so that
    "inconclusive" is not read as "no effect"."""
    few = fam & (out["n_docs"] < MIN_DOCS_VERDICT)
    for i in out.index[few]:
        _add_note(out, i, f"fewer than {MIN_DOCS_VERDICT} documents: estimates only")
    family = fam & out["p_value"].notna()
    floor = pd.Series(np.nan, index=out.index)
    floor[family] = smallest_p_adjusted(out.loc[family, "n_docs"].to_numpy())
    m = int(family.sum())
    for i in out.index[family & ~few & (floor >= alpha)]:
        _add_note(
            out,
            i,
            f"cannot be decided: with {out.at[i, 'n_docs']} documents and {m} claims the smallest possible "
            f"p (Holm) is {floor[i]:.3g} >= {alpha:g}; needs >= {documents_needed(m, alpha)} documents",
        )


def claims(
    sel: pd.DataFrame,
    tokens: pd.DataFrame,
    bias: pd.DataFrame,
    cfg: Any,
    mode: str,
    distance_claims: bool = True,
    note: str = "",
    absent: str = "",
) -> pd.DataFrame:
    """The claims table of one run (see the module docstring).

    Parameters are those of :func:`claim_values`; ``note`` is added to every
    row (e.g. "Fisher estimate"); ``absent`` says why claim 1 is not tested
    (with ``distance_claims=False``: rows 1a and 1b with verdict ``not tested``).

    Returns
    -------
    DataFrame
        claim, reading, role, mode, statement, statistic, against, estimate,
        ci_low, ci_high (``±inf``: unbounded), p_value, p_adjusted, verdict,
        n_docs, note.
    """
    out = claims_from_values(claim_values(sel, tokens, bias, cfg, mode, distance_claims), cfg, mode, note)
    if not distance_claims and absent:
        missing = [
            dict(
                claim=c,
                reading="primary",
                role=CLAIM,
                mode=mode,
                statement=STATEMENTS[c],
                statistic="",
                against=AGAINST[c],
                estimate=np.nan,
                ci_low=np.nan,
                ci_high=np.nan,
                p_value=np.nan,
                p_adjusted=np.nan,
                verdict=NOT_TESTED,
                n_docs=0,
                note="; ".join(x for x in (note, absent) if x),
            )
            for c in ("1a", "1b")
        ]
        out = pd.concat([pd.DataFrame(missing), out], ignore_index=True)
    return out[COLUMNS].reset_index(drop=True) if len(out) else pd.DataFrame(columns=COLUMNS)


def claim1_absent(result: Any, influence: pd.DataFrame, far: int) -> str:
    """Why claim 1 cannot be tested on a run (a :class:`~forward_influence.store.results.MeasureResult`
    and its ablation rows); "" when it can."""
    run = result.config
    if run.method != "exact" and run.fisher_blocks <= 1:
        return "claim 1 not tested: a Fisher estimate with one future block places each estimate at one distance"
    if not far_targets(influence, far):
        what = "--n-future" if run.mode == "split" else "--horizon"
        return (
            f"claim 1 not tested: no target lies beyond far = {far} from the eviction time; "
            f"measure with {what} >= {far + 2} (the headline runs use --n-future 384, --horizon 256)"
        )
    return ""


def _add_note(table: pd.DataFrame, i: Any, text: str) -> None:
    """Append ``text`` to row ``i``'s note, ``; ``-separated."""
    table.at[i, "note"] = f"{table.at[i, 'note']}; {text}" if table.at[i, "note"] else text
