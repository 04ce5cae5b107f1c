"""forward_influence: measure which KV-cache entries matter for the distant future.

The public API mirrors the ``fi-measure`` CLI::

    from forward_influence import MeasureConfig, measure, load_model
    res = measure(MeasureConfig(n_prefix=(256,), n_future=128, max_docs=1))
    res.summary, res.tokens, res.influence

The names below are imported on first use (PEP 562), so ``import
forward_influence`` — or any torch-free layer such as
:mod:`forward_influence.analysis` — does not load torch. The package map is
in the README (*Architecture*); the layers, bottom to top:

========================  =====================================================
``config``, ``errors``    shared declarations (run configs, ``InputError``)
``runtime``               the host and device: allocator, threads, per-device defaults
``hf``                    model loading and all contact with transformers' internals
``store``                 run storage and tables (torch-free)
``execution``             where units run: in process or on a Ray cluster
``measurement``           documents, words, KL, signals, the ablation engine, Fisher, ``measure``
``analysis``              statistics, claims, figures and the report (torch-free)
``compress``              KV-cache compressors (prefill and decoding)
``integrations``          adapters to other libraries (kvpress)
``bench``                 ``fi-bench``: compressors on tasks
``cli``, ``tools``        entry points; GPU check and performance probes
========================  =====================================================
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Ablation": "forward_influence.measurement.ablation",
    "Document": "forward_influence.measurement.documents",
    "ForwardInfluenceEngine": "forward_influence.measurement.engine",
    "InputError": "forward_influence.errors",
    "MeasureConfig": "forward_influence.config",
    "MeasureResult": "forward_influence.store.results",
    "list_models": "forward_influence.hf.models",
    "load_documents": "forward_influence.measurement.documents",
    "load_model": "forward_influence.hf.models",
    "load_result": "forward_influence.measurement.run",
    "measure": "forward_influence.measurement.run",
    "tokenize": "forward_influence.measurement.documents",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from forward_influence.config import MeasureConfig
    from forward_influence.errors import InputError
    from forward_influence.hf.models import list_models, load_model
    from forward_influence.measurement.ablation import Ablation
    from forward_influence.measurement.documents import Document, load_documents, tokenize
    from forward_influence.measurement.engine import ForwardInfluenceEngine
    from forward_influence.measurement.run import load_result, measure
    from forward_influence.store.results import MeasureResult


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'forward_influence' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
