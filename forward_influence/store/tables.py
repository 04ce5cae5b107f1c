"""Forward Influence tables reduced per source: torch-free, shared by the
measurement (which writes ``summary.parquet``) and the analysis (which
re-buckets with its own thresholds).

Distances
---------
Every influence row carries two distances of its target ``t``:

``distance_tau = t - tau``
    from the source's *eviction time* ``tau`` (split mode: ``tau = N``;
    sliding mode: ``tau = i + D``). The near/far buckets and every claim
    count this one (:data:`DISTANCE_FROM`): a compressor that evicts an entry
    at ``tau`` loses what the queries from ``tau`` on would have read.
``distance = t - i``
    from the source ``i``, kept for the study's own FI-vs-distance figures.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from forward_influence.store.schema import DISTANCE_FROM  # noqa: F401  (where the convention is declared)


def bucket_distance(influence: pd.DataFrame) -> np.ndarray:
    """The distance the near/far buckets count: from the eviction time ``tau``
    in both modes (``distance_tau``; see the module docstring)."""
    return influence["distance_tau"].to_numpy()


def summarize_influence(influence: pd.DataFrame, near: int = 32, far: int = 128) -> pd.DataFrame:
    """Per (doc, mode, split, source, layer, head): FI total, near (d <= near),
    mid, far (d > far), max and the number of scored targets (``d`` from
    :func:`bucket_distance`); with a ``kl_se`` column (an estimate), also
    ``fi_total_se`` (independent blocks)."""
    keys = ["doc_id", "mode", "split_pos", "source_pos", "layer", "kv_head"]
    d = bucket_distance(influence)
    df = influence.assign(
        _near=np.where(d <= near, influence["kl"], 0.0),
        _mid=np.where((d > near) & (d <= far), influence["kl"], 0.0),
        _far=np.where(d > far, influence["kl"], 0.0),
    )
    aggs = dict(
        fi_total=("kl", "sum"),
        fi_near=("_near", "sum"),
        fi_mid=("_mid", "sum"),
        fi_far=("_far", "sum"),
        fi_max=("kl", "max"),
        n_targets=("kl", "size"),
    )
    if "kl_se" in influence:
        df["_var"] = influence["kl_se"] ** 2
        aggs["fi_total_se"] = ("_var", "sum")
    out = df.groupby(keys, dropna=False, sort=False).agg(**aggs).reset_index()
    if "fi_total_se" in out:
        out["fi_total_se"] = np.sqrt(out["fi_total_se"])
    out["n_targets"] = out["n_targets"].astype(np.int64)
    return out


def far_targets(influence: pd.DataFrame, far: int) -> bool:
    """Whether any target lies beyond ``far`` from its eviction time (claim 1 needs one)."""
    return bool(len(influence)) and bool((bucket_distance(influence) > far).any())


def _byte_decoder() -> dict[str, int]:
    """The inverse of byte-level BPE's byte-to-symbol map (GPT-2 family: ``Ġ`` = space, ``Ċ`` = newline)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def token_text(tokens: pd.DataFrame) -> pd.Series:
    """What each token reads as in its document: the ``text`` column (the
    document's characters ``[char_start, char_end)``, written since schema
    version 3), else the ``token`` symbol decoded from byte-level BPE
    (``Ġanalysis`` -> `` analysis``) or SentencePiece (``▁`` -> space).

    >>> token_text(pd.DataFrame({"token": ["Ġanalysis", "Ċ", "▁word"]})).tolist()
    [' analysis', '\\n', ' word']
    """
    if "text" in tokens.columns:
        return tokens["text"].astype("string")
    dec = _byte_decoder()

    def one(sym: str) -> str:
        if all(ch in dec for ch in sym):
            return bytes(dec[ch] for ch in sym).decode("utf-8", errors="replace")
        return sym.replace("▁", " ")

    return pd.Series([one(str(t)) for t in tokens["token"]], index=tokens.index, dtype="string")
