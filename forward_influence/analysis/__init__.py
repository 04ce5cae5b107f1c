"""Analysis: statistics, selection, claims, figures and the report of an ``fi-measure`` run (torch-free).

DataFrames in, DataFrames out. :func:`analyze` (in :mod:`.analyze`) runs it
all; :mod:`.report` writes it to disk. ``from forward_influence.analysis import
AnalyzeConfig, analyze`` imports them on first use (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {"Analysis": "analyze", "AnalyzeConfig": "analyze", "analyze": "analyze", "analyze_run": "report"}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from forward_influence.analysis.analyze import Analysis, AnalyzeConfig, analyze
    from forward_influence.analysis.report import analyze_run


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
