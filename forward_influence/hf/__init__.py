"""All contact with transformers: loading models (:mod:`.models`), and its internals —
attention dispatch (:mod:`.attention`, :mod:`.kernels`), the forwards built on it (:mod:`.forwards`),
model anatomy (:mod:`.anatomy`), the Cache API (:mod:`.cache_api`), a ``Cache`` over a compressor's
cut cache for ``generate`` (:mod:`.cut_cache`) and ``generate`` itself (:mod:`.generation`).

No other layer imports transformers' cache, attention or model modules, reads forward keyword
arguments such as ``past_key_values``, or writes cache layers (checked by ``lint-imports`` and
``tests/unit/test_architecture.py``). Supported: transformers 5.2 – 5.x.
"""
