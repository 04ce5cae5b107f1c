"""Forward Influence tables reduced per source: torch-free, shared by the
measurement (which writes ``summary.parquet``) and the analysis (which
re-buckets with its own thresholds)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def bucket_distance(influence: pd.DataFrame) -> np.ndarray:
    """The distance the near/far buckets count: from the source in split mode
    (only sources within ``near`` of N have near targets there), from the
    eviction time ``tau = i + D`` in sliding mode (DESIGN §5, claim 1)."""
    sliding = (influence["mode"] == "sliding").to_numpy()
    return np.where(sliding, influence["distance_tau"].to_numpy(), influence["distance"].to_numpy())


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
