"""KV-cache compressors: InfoKV and the baselines, prefill and decoding (DESIGN §6).

>>> from forward_influence.compress import list_compressors
>>> list_compressors()
['full', 'random', 'streaming_llm', 'knorm', 'snapkv', 'pyramidkv', 'tova', 'h2o', 'expected_attention', 'infokv', 'fi_oracle']

Prefill::

    cache, logits = compress_prompt(model, ids, get_compressor("infokv", budget=0.2))
    future_logits = cache.extend(next_ids, all_logits=True)   # true positions

Decoding::

    out = generate(model, ids, get_compressor("snapkv"), DecodingConfig(cache_budget=256))
"""

from .base import Compressor, FeatureSpec, LayerView, TokenFeatures, get_compressor, list_compressors, n_kept, register, top_entries
from .simple import Full, KNorm, Random, StreamingLLM
from .snapkv import TOVA, PyramidKV, SnapKV
from .h2o import H2O
from .expected_attention import ExpectedAttention
from .infokv import InfoKV
from .oracle import FIOracle
from .cache import CompressedCache, compress_prompt
from .decoding import DecodingConfig, Generation, generate

__all__ = [
    "CompressedCache", "Compressor", "DecodingConfig", "ExpectedAttention", "FIOracle", "FeatureSpec", "Full",
    "Generation", "H2O", "InfoKV", "KNorm", "LayerView", "PyramidKV", "Random", "SnapKV", "StreamingLLM", "TOVA",
    "TokenFeatures", "compress_prompt", "generate", "get_compressor", "list_compressors", "n_kept", "register", "top_entries",
]
