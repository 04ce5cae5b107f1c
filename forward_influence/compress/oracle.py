"""The FI oracle: keeps the tokens with the highest measured Forward Influence
(an upper reference for validation, not a deployable method)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from forward_influence.compress.base import Compressor, LayerView, register


@register
@dataclass(frozen=True)
class FIOracle(Compressor):
    """Scores every entry by the measured FI of its position (the same ranking
    at every layer and KV head); unmeasured positions (a strided run) rank last.

    ``fi``: ``(T,)`` float64, NaN where unmeasured — build it with
    :meth:`from_result` from an ``fi-measure`` result.
    """

    fi: Any = field(default=None, compare=False)
    name = "fi_oracle"
    inputs = ("measured_fi",)

    @classmethod
    def for_run(cls, seed: int = 0, measured_fi: Any = None, model_file: Any = None, **hyper: Any) -> FIOracle | None:
        """With the measured FI of the document (``measured_fi``: the ``fi`` field), else None."""
        return None if measured_fi is None else cls(**hyper, fi=measured_fi)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fi is None:
            raise ValueError("fi_oracle needs measured FI: FIOracle.from_result(result, doc_id, budget=...)")

    @classmethod
    def from_result(
        cls, result: Any, doc_id: str, budget: float = 1.0, split_pos: int | None = None, column: str = "fi_total"
    ) -> FIOracle:
        """From a :class:`~forward_influence.MeasureResult` (or its ``summary``
        table): the position ablations of ``doc_id`` at split ``split_pos``
        (the only split if None)."""
        summary = result.summary if hasattr(result, "summary") else result
        s = summary[(summary["doc_id"] == doc_id) & summary["layer"].isna()]
        if s.empty:
            raise ValueError(f"no position ablations of document {doc_id!r} in the result")
        splits = s["split_pos"].dropna().unique()
        if split_pos is None:
            if len(splits) > 1:
                raise ValueError(f"document {doc_id!r} has splits {sorted(splits)}: pass split_pos")
        else:
            s = s[s["split_pos"] == split_pos]
        return cls.from_frame(s, budget, column)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, budget: float = 1.0, column: str = "fi_total") -> FIOracle:
        """From a table with ``source_pos`` and ``column`` columns."""
        n = int(frame["source_pos"].max()) + 1
        fi = np.full(n, np.nan)
        fi[frame["source_pos"].to_numpy(dtype=np.int64)] = frame[column].to_numpy(dtype=np.float64)
        return cls(budget=budget, fi=torch.from_numpy(fi))

    def score(self, view: LayerView) -> torch.Tensor:
        fi = self.fi.to(view.keys.device)
        pos = view.positions.clamp(max=fi.shape[0] - 1)
        s = fi[pos].masked_fill(view.positions >= fi.shape[0], float("nan"))  # (Hkv, n)
        return torch.nan_to_num(s, nan=float("-inf"))
