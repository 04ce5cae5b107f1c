"""The study's claims 1-3 as tests that can come out either way (DESIGN §5).

Each claim is one number per document, tested at the document level:

``1a`` *entropy-selected tokens carry more far influence than attention-selected ones*
    Within each unit (sliding: a document; split: a (document, split)), the
    entropy rule and the attention rule each keep the top ``b`` candidates by
    their signal; the statistic is the share of the unit's far FI the entropy
    rule keeps minus the attention rule's. **Against the study**: negative,
    when attention keeps more far influence.
``1b`` *attention-selected tokens' influence is concentrated nearby* (sliding only)
    Near fraction of the kept tokens' FI, attention rule minus entropy rule.
    **Against**: negative, when the attention rule's kept influence reaches
    further than the entropy rule's.
``2`` *content words sit at higher entropy than function words*
    One value per word (its first subword's entropy), rank-biserial content
    vs. function per document. **Against**: negative, function words higher.
``3`` *attention-based selection is biased toward function words*
    Function-word share of the attention rule's kept set minus the share
    among the candidates. **Against**: negative, attention under-selects them.

Distances: in sliding mode the near/far buckets count from the eviction time
``tau = i + D`` and every source has the same profile, so claim 1 is clean
there. In split mode only sources below ``N - window`` compete (the window is
kept whole by every attention method; those are also the only sources with
near FI, so claim 1b cannot be tested there and is left out — it would hold by
construction). A Fisher run without distance blocks places each estimate at
one distance: no distance-based claim is made from it.

Verdicts: a two-sided document-level sign-flip permutation test per claim,
Holm-adjusted over the claims of the table (one run: one corpus × mode);
*supported* / *not supported* when the adjusted p is below ``1 - confidence``
on the claimed / the other side, *inconclusive* otherwise and always with
fewer than ``MIN_DOCS_VERDICT`` documents. The interval is a BCa bootstrap
over documents (:mod:`forward_influence.analysis.stats`).
"""

from __future__ import annotations

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

#: Documents needed before a claim gets a verdict other than inconclusive.
MIN_DOCS_VERDICT = MIN_DOCS

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


def _per_document(values: pd.Series, docs: pd.Series) -> pd.Series:
    """Mean over each document's units (NaN units skipped)."""
    return values.groupby(docs.astype(str).to_numpy(), sort=True).mean().dropna()


def claims(sel: pd.DataFrame, tokens: pd.DataFrame, bias: pd.DataFrame, cfg: Any, mode: str,
           distance_claims: bool = True, note: str = "") -> pd.DataFrame:
    """The claims table of one run.

    Parameters
    ----------
    sel : DataFrame
        :func:`forward_influence.analysis.selection.selection` (uses ``subset == "candidates"``).
    tokens : DataFrame
        Token table with ``doc_id``, ``word_class``, ``is_word_start`` and the
        entropy column (claim 2; empty or without words: no claim 2).
    bias : DataFrame
        :func:`forward_influence.analysis.selection.function_bias` (claim 3; empty: none).
    cfg : AnalyzeConfig
        ``entropy``, ``attention``, ``budgets`` (claims use the smallest),
        ``n_boot``, ``confidence``, ``seed``.
    mode : {"split", "sliding"}
    distance_claims : bool
        False for estimates without distance resolution: no claim 1.
    note : str
        Added to every row (e.g. "Fisher estimate").

    Returns
    -------
    DataFrame
        claim, mode, statement, statistic, against, estimate, ci_low,
        ci_high, p_value, p_adjusted, verdict, n_docs, note.
    """
    rng = np.random.default_rng(cfg.seed)
    budget = min(cfg.budgets)
    rows: list[dict[str, Any]] = []

    def add(claim: str, statistic: str, per_doc: pd.Series, weights: np.ndarray | None = None) -> None:
        res = claim_test(per_doc.to_numpy(float), weights, cfg, rng)
        rows.append(dict(claim=claim, mode=mode, statement=STATEMENTS[claim], statistic=statistic, against=AGAINST[claim],
                         direction=1, note=note, **res))

    s = sel[(sel["subset"] == "candidates") & (sel["budget"] == budget)] if len(sel) else sel
    if distance_claims and len(s):
        ent = s[s["rule"] == cfg.entropy].set_index("unit")
        att = s[s["rule"] == cfg.attention].set_index("unit").loc[ent.index]
        add("1a", f"far-FI share kept, {cfg.entropy} − {cfg.attention}, budget {budget:g}",
            _per_document(ent["kept_share_far"] - att["kept_share_far"], ent["doc_id"]))
        if mode == "sliding":
            add("1b", f"near fraction of kept FI, {cfg.attention} − {cfg.entropy}, budget {budget:g}",
                _per_document(att["near_frac"] - ent["near_frac"], ent["doc_id"]))
    if len(tokens) and "word_class" in tokens:
        w = word_level(tokens)
        t = per_document_rank_biserial(w[cfg.entropy].to_numpy(float), w["word_class"].astype("string").fillna("other").to_numpy(),
                                       w["doc_id"].astype(str).to_numpy())
        # weights n_content * n_function: the weighted mean is the pooled within-document rank-biserial
        add("2", f"rank-biserial of {cfg.entropy}, content vs function words (first subword)", t["rank_biserial"], t["weight"].to_numpy())
    b = bias[(bias["rule"] == cfg.attention) & (bias["budget"] == budget)] if len(bias) else bias
    if len(b):
        add("3", f"function share of {cfg.attention} top-{budget:g} minus candidates' share", _per_document(b["excess"], b["doc_id"]))
    cols = ["claim", "mode", "statement", "statistic", "against", "estimate", "ci_low", "ci_high", "p_value", "p_adjusted",
            "verdict", "n_docs", "note"]
    if not rows:
        return pd.DataFrame(columns=cols)
    out = adjust_claims(pd.DataFrame(rows), alpha=1 - cfg.confidence, min_docs=MIN_DOCS_VERDICT)
    few = out["n_docs"] < MIN_DOCS_VERDICT
    for i in out.index[few]:
        _add_note(out, i, f"fewer than {MIN_DOCS_VERDICT} documents: estimates only")
    # a family too small for any verdict: "inconclusive" there says nothing about the effect
    alpha, family = 1 - cfg.confidence, out["p_value"].notna()  # adjust_claims' Holm family
    floor = pd.Series(np.nan, index=out.index)
    floor[family] = smallest_p_adjusted(out.loc[family, "n_docs"].to_numpy())
    m = int(family.sum())
    for i in out.index[family & ~few & (floor >= alpha)]:
        _add_note(out, i, f"cannot be decided: with {out.at[i, 'n_docs']} documents and {m} claims the smallest possible "
                          f"p (Holm) is {floor[i]:.3g} >= {alpha:g}; needs >= {documents_needed(m, alpha)} documents")
    return out[cols]


def _add_note(table: pd.DataFrame, i: Any, text: str) -> None:
    """Append ``text`` to row ``i``'s note, ``; ``-separated."""
    table.at[i, "note"] = f"{table.at[i, 'note']}; {text}" if table.at[i, "note"] else text
