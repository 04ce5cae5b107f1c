"""forward_influence: measure which KV-cache entries matter for the distant future.

The public API mirrors the ``fi-measure`` CLI::

    from forward_influence import MeasureConfig, measure, load_model
    res = measure(MeasureConfig(n_prefix=(256,), n_future=128, max_docs=1))
    res.summary, res.tokens, res.influence
"""

from .config import MeasureConfig
from .documents import Document, load_documents, tokenize
from .engine import Ablation, ForwardInfluenceEngine
from .errors import InputError
from .measure import load_result, measure
from .models import list_models, load_model
from .results import MeasureResult

__version__ = "0.1.0"

__all__ = [
    "Ablation",
    "Document",
    "ForwardInfluenceEngine",
    "InputError",
    "MeasureConfig",
    "MeasureResult",
    "list_models",
    "load_documents",
    "load_model",
    "load_result",
    "measure",
    "tokenize",
]
