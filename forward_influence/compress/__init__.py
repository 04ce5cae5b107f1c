"""KV-cache compressors: InfoKV and the baselines, prefill and decoding (docs/design.md §6).

>>> from forward_influence.compress import list_compressors
>>> list_compressors()  # doctest: +NORMALIZE_WHITESPACE
['full', 'random', 'streaming_llm', 'knorm', 'snapkv', 'pyramidkv', 'tova', 'h2o',
 'expected_attention', 'infokv', 'distilled', 'fi_oracle']

Prefill::

    cache, logits = compress_prompt(model, ids, get_compressor("infokv", budget=0.2))
    future_logits = cache.extend(next_ids, all_logits=True)   # true positions

Decoding (transformers' ``generate`` inside the block)::

    with get_compressor("snapkv").apply(model, DecodingConfig(cache_budget=256)) as run:
        tokens = forward_influence.hf.generation.generate(model, ids, max_new_tokens=256)
"""

# Registration order is the listing order (baselines first, InfoKV and the oracle last): keep these in order.
# isort: off
from forward_influence.compress.base import (
    Compressor,
    FeatureSpec,
    LayerView,
    Needs,
    TokenFeatures,
    get_compressor,
    list_compressors,
    n_kept,
    register,
    top_entries,
)
from forward_influence.compress.simple import Full, KNorm, Random, StreamingLLM
from forward_influence.compress.snapkv import TOVA, PyramidKV, SnapKV
from forward_influence.compress.h2o import H2O
from forward_influence.compress.expected_attention import ExpectedAttention
from forward_influence.compress.infokv import InfoKV
from forward_influence.compress.distilled import Distilled
from forward_influence.compress.oracle import FIOracle
from forward_influence.compress.compressed_cache import CompressedCache, compress_prompt
from forward_influence.compress.decoding import Decoding, DecodingConfig, apply
# isort: on

__all__ = [
    "CompressedCache",
    "Compressor",
    "Decoding",
    "DecodingConfig",
    "Distilled",
    "ExpectedAttention",
    "FIOracle",
    "FeatureSpec",
    "Full",
    "H2O",
    "InfoKV",
    "KNorm",
    "LayerView",
    "Needs",
    "PyramidKV",
    "Random",
    "SnapKV",
    "StreamingLLM",
    "TOVA",
    "TokenFeatures",
    "apply",
    "compress_prompt",
    "get_compressor",
    "list_compressors",
    "n_kept",
    "register",
    "top_entries",
]
