"""The headline across runs: one pre-declared family, the rows beside it, and the replication.

``fi-analyze`` decides the claims of one run (Holm over that run's claims).
A headline that presents several runs as one table needs one family for the
whole table, declared before the data are seen, and every statement checked
on documents it was not stated on. This module builds those tables from the
per-document values of each run (:func:`forward_influence.analysis.claims.claim_values`,
committed as CSV by ``scripts/headline_claims.py``), so they can be rebuilt
without measuring again.

The declaration (:data:`PRIMARY_MODE`)
--------------------------------------
One member per (corpus, claim): claims 1a, 1b and 3 in **sliding** mode (the
eviction setting the claims describe: every source seen by the same number
of queries, then evicted), claim 2 from the same sliding run's tokens (it
reads only the token table), each in its pre-declared reading (the ``primary``
rows). With two corpora the family has 8 members, Holm-adjusted together.

* ``secondary``: split-mode rows of the headline corpora (claims 1a, 1b, 3;
  split mode measures the prefill compressor's single eviction at N), raw p,
  no verdict.
* ``beside``: sensitivity readings and descriptive rows of the primary runs,
  raw p, no verdict.
* ``replication``: the same primary tests on the replication set of each
  corpus, Holm-adjusted within that set's own family, with the headline
  estimate, whether the sign agrees, and the replication verdict.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from forward_influence.analysis.claims import CLAIM, claims_from_values

#: The pre-declared mode of each claim's primary test.
PRIMARY_MODE = {"1a": "sliding", "1b": "sliding", "2": "sliding", "3": "sliding"}
#: Secondary (split-mode) claims: claim 2 reads the token table, measured once per corpus (primary run).
SECONDARY_CLAIMS = ("1a", "1b", "3")
KEYS = ("corpus", "mode")


def _primary_mode(values: pd.DataFrame) -> np.ndarray:
    return (values["mode"].to_numpy() == values["claim"].map(PRIMARY_MODE).to_numpy()) & (
        values["reading"] == "primary"
    ).to_numpy()


def headline(values: pd.DataFrame, cfg: Any, corpora: list[str]) -> pd.DataFrame:
    """The family: the primary test of each claim on each corpus of ``corpora``, Holm over all of them.

    ``values``: per-document values with ``corpus`` and ``mode`` columns.
    """
    v = values[values["corpus"].isin(corpora).to_numpy() & _primary_mode(values) & (values["role"] == CLAIM).to_numpy()]
    return claims_from_values(v, cfg, keys=KEYS)


def secondary(values: pd.DataFrame, cfg: Any, corpora: list[str]) -> pd.DataFrame:
    """Split-mode rows of the primary readings: tests without adjustment or verdict."""
    v = values[
        values["corpus"].isin(corpora)
        & (values["mode"] == "split")
        & (values["role"] == CLAIM)
        & (values["reading"] == "primary")
        & values["claim"].isin(SECONDARY_CLAIMS)
    ]
    return _no_verdict(claims_from_values(v, cfg, keys=KEYS), "secondary")


def beside(values: pd.DataFrame, cfg: Any, corpora: list[str]) -> pd.DataFrame:
    """Sensitivity readings and descriptive rows of the primary runs (no verdict)."""
    mode_ok = values["mode"].to_numpy() == values["claim"].map(PRIMARY_MODE).to_numpy()
    v = values[values["corpus"].isin(corpora).to_numpy() & mode_ok & (values["role"] != CLAIM).to_numpy()]
    return claims_from_values(v, cfg, keys=KEYS)


def replication(values: pd.DataFrame, cfg: Any, replicates: dict[str, str | None], head: pd.DataFrame) -> pd.DataFrame:
    """Per headline corpus and claim: the headline estimate, the replication
    set's estimate, interval, p, p_Holm (its own family), same sign, verdict.
    A corpus without a replication set gets one row per claim saying so."""
    rows = []
    for corpus, rep in replicates.items():
        h = head[head["corpus"] == corpus].set_index("claim")
        if rep is None:
            rows += [
                dict(
                    corpus=corpus,
                    replication="",
                    claim=c,
                    headline_estimate=h.at[c, "estimate"],
                    note="no replication set in the repository",
                )
                for c in h.index
            ]
            continue
        v = values[(values["corpus"] == rep).to_numpy() & _primary_mode(values) & (values["role"] == CLAIM).to_numpy()]
        r = claims_from_values(v, cfg, keys=KEYS).set_index("claim")
        for c in h.index:
            if c not in r.index:
                rows.append(
                    dict(
                        corpus=corpus,
                        replication=rep,
                        claim=c,
                        headline_estimate=h.at[c, "estimate"],
                        note="not measured on the replication set",
                    )
                )
                continue
            x = r.loc[c]
            rows.append(
                dict(
                    corpus=corpus,
                    replication=rep,
                    claim=c,
                    headline_estimate=h.at[c, "estimate"],
                    estimate=x.estimate,
                    ci_low=x.ci_low,
                    ci_high=x.ci_high,
                    p_value=x.p_value,
                    p_adjusted=x.p_adjusted,
                    n_docs=x.n_docs,
                    same_sign=bool(np.sign(x.estimate) == np.sign(h.at[c, "estimate"])),
                    verdict=x.verdict,
                    note=x.note,
                )
            )
    cols = [
        "corpus",
        "replication",
        "claim",
        "headline_estimate",
        "estimate",
        "ci_low",
        "ci_high",
        "p_value",
        "p_adjusted",
        "n_docs",
        "same_sign",
        "verdict",
        "note",
    ]
    out = pd.DataFrame(rows).reindex(columns=cols)
    out["n_docs"] = out["n_docs"].astype("Int64")
    return out


def _no_verdict(table: pd.DataFrame, role: str) -> pd.DataFrame:
    return table.assign(role=role, p_adjusted=np.nan, verdict="", note="")


def tables(values: pd.DataFrame, cfg: Any, replicates: dict[str, str | None]) -> dict[str, pd.DataFrame]:
    """Every headline table from the runs' per-document values: ``headline``
    (the family), ``secondary``, ``beside`` and ``replication``."""
    corpora = list(replicates)
    head = headline(values, cfg, corpora)
    return dict(
        headline=head,
        secondary=secondary(values, cfg, corpora + [r for r in replicates.values() if r]),  # replication split rows too
        beside=beside(values, cfg, corpora),
        replication=replication(values, cfg, replicates, head),
    )


def _p(x: float) -> str:
    return "" if not np.isfinite(x) else f"{x:.3g}"


def markdown(t: dict[str, pd.DataFrame], budget: float) -> str:
    """The headline tables as Markdown: the family with verdicts, the
    replication, and the rows beside them (no verdicts)."""
    from forward_influence.analysis.inference import interval_text

    out = [
        "**The family** (8 pre-declared tests; p (Holm) over all of them; verdict from p (Holm); the interval "
        "inverts the "
        f"test and excludes 0 exactly when the unadjusted p < 0.05; budget {budget:g}: the share of each unit's "
        "candidates kept)",
        "",
        "| corpus | claim | mode | documents | statistic | estimate | 95% CI | p | p (Holm) | verdict |",
        "|---|---|---|---:|---|---:|---|---:|---:|---|",
    ]
    for r in t["headline"].itertuples():
        out.append(
            f"| {r.corpus} | {r.claim} | {r.mode} | {r.n_docs} | {r.statistic} | {r.estimate:+.3f} | "
            f"{interval_text(r.ci_low, r.ci_high)} | "
            f"{_p(r.p_value)} | {_p(r.p_adjusted)} | **{r.verdict}** |"
        )
    out += [
        "",
        "**Replication** (the same tests on documents not used to state the claims; p (Holm) within the replication "
        "set's family)",
        "",
        "| corpus | claim | replication set | documents | headline estimate | replication estimate | 95% CI | p | p "
        "(Holm) | same sign | verdict |",
        "|---|---|---|---:|---:|---:|---|---:|---:|---|---|",
    ]
    for r in t["replication"].itertuples():
        if not r.replication or not np.isfinite(r.estimate):
            out.append(f"| {r.corpus} | {r.claim} | — | | {r.headline_estimate:+.3f} | | | | | | {r.note} |")
            continue
        out.append(
            f"| {r.corpus} | {r.claim} | {r.replication} | {r.n_docs} | {r.headline_estimate:+.3f} | "
            f"{r.estimate:+.3f} | "
            f"{interval_text(r.ci_low, r.ci_high)} | {_p(r.p_value)} | {_p(r.p_adjusted)} | "
            f"{'yes' if r.same_sign else 'no'} | **{r.verdict}** |"
        )
    side = pd.concat([t["secondary"], t["beside"]], ignore_index=True)
    out += [
        "",
        "**Beside the family** (secondary split-mode tests, other readings, position control: unadjusted p, no "
        "verdict)",
        "",
        "| corpus | claim | mode | reading | documents | statistic | estimate | 95% CI | p |",
        "|---|---|---|---|---:|---|---:|---|---:|",
    ]
    for r in side.itertuples():
        reading = "secondary (split)" if r.role == "secondary" else r.reading
        out.append(
            f"| {r.corpus} | {r.claim} | {r.mode} | {reading} | {r.n_docs} | {r.statistic} | {r.estimate:+.3f} | "
            f"{interval_text(r.ci_low, r.ci_high)} | {_p(r.p_value)} |"
        )
    return "\n".join(out)
