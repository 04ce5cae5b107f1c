"""The measurements behind the README's claims tables, declared once.

``scripts/headline_claims.py`` measures (resumably) and analyses them;
``--measure-only`` there runs only the measurements, as a queue.

Corpora
-------
``papers``        the 11 CC BY papers of data/arxiv.json (no replication set in the repository)
``squad``         the built-in SQuAD 2.0 dev Wikipedia articles 1-8: the claims are *stated* on these
``squad_rep``     SQuAD 2.0 dev articles 9-24: the *replication* set (never used to state a claim)

Modes
-----
``sliding``  each token seen by the 32 queries after it (``--delay 32``), then evicted; FI over the next
             256 queries (distances from the eviction 0-255: near <= 32, far > 128); first 1,024 tokens,
             every 8th source (blocks of 16 candidates = 128 positions compete).
``split``    prefill N = 1,024, F = 384 future tokens (far: d_tau > 128 has 255 targets), every 16th source.
"""

from __future__ import annotations

from typing import Any

SPLIT = dict(mode="split", n_prefix=(1024,), n_future=384, stride=16)
SLIDING = dict(mode="sliding", max_tokens=1024, delay=32, horizon=256, stride=8)
#: --small: the same code on short contexts (far d_tau > 128 still has targets: F = 160, H = 160)
SMALL = {
    "split": dict(mode="split", n_prefix=(256,), n_future=160, stride=16),
    "sliding": dict(mode="sliding", max_tokens=384, delay=32, horizon=160, stride=8),
}

#: SQuAD dev articles: the headline set (1-8) and the replication set (9-24), 1-based, inclusive.
SQUAD_HEADLINE = (1, 8)
SQUAD_REPLICATION = (9, 24)
#: Primary runs first: the family's modes (sliding), then the secondary split runs.
ORDER = ("papers-sliding", "squad-sliding", "squad_rep-sliding", "papers-split", "squad-split", "squad_rep-split")
#: Which set each corpus is for: the claims are stated on "headline" and replicated on "replication".
ROLE = {"papers": "headline", "squad": "headline", "squad_rep": "replication"}
#: The replication set of each headline corpus (None: the repository has none).
REPLICATES = {"papers": None, "squad": "squad_rep"}


def squad_ids(first: int, last: int) -> tuple[str, ...]:
    """Ids of the built-in SQuAD dev articles ``first``..``last`` (1-based, inclusive)."""
    from forward_influence.measurement.documents import builtin_documents

    return tuple(d.doc_id for d in builtin_documents()[first - 1 : last])


def corpora(papers: str, small: bool = False) -> dict[str, dict[str, Any]]:
    """``fi-measure`` document settings per corpus (``--small``: 2 documents each)."""
    head, rep = SQUAD_HEADLINE, SQUAD_REPLICATION
    if small:
        head, rep = (1, 2), (9, 10)
    return {
        "papers": dict(doc=papers, max_docs=2 if small else None),
        "squad": dict(doc=None, doc_ids=squad_ids(*head)),
        "squad_rep": dict(doc=None, doc_ids=squad_ids(*rep)),
    }


def runs(papers: str, small: bool = False) -> dict[str, dict[str, Any]]:
    """Every run's ``MeasureConfig`` fields (without ``out``), in :data:`ORDER`."""
    modes = SMALL if small else {"split": SPLIT, "sliding": SLIDING}
    docs = corpora(papers, small)
    out = {}
    for name in ORDER:
        corpus, mode = name.split("-")
        out[name] = {**docs[corpus], **modes[mode]}
    return out
