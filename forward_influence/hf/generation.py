"""Decoding through transformers' ``generate``: greedy or sampled, seeded in a forked RNG.

The one place a ``GenerationConfig`` is built. Greedy and sampling, stopping at
an end-of-sequence id and ``min_new_tokens`` come from transformers; the seed
is applied inside :func:`torch.random.fork_rng`, so no caller's global RNG state
changes (greedy decoding draws nothing).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch


@torch.no_grad()
def generate(model: Any, prompt_ids: torch.Tensor, *, max_new_tokens: int, min_new_tokens: int = 0, do_sample: bool = False,
             temperature: float = 1.0, top_p: float = 1.0, eos: Sequence[int] = (), pad: int | None = None, seed: int = 0,
             **generate_kwargs: Any) -> list[int]:
    """Continue ``prompt_ids`` ``(P,)``; returns the new ids exactly as generated (an end-of-sequence id included).

    Sampling uses ``temperature`` and nucleus ``top_p`` only (every other
    sampling filter off); ``generate_kwargs`` go to ``model.generate`` as they
    are (a cache, logits processors, stopping criteria).
    """
    from transformers import GenerationConfig

    eos = list(eos)
    # sampling-only flags only when sampling (greedy never reads them; transformers warns when they are set)
    sampling = dict(temperature=temperature, top_p=top_p, top_k=0, min_p=0.0, typical_p=1.0,
                    epsilon_cutoff=0.0, eta_cutoff=0.0) if do_sample else {}
    gc = GenerationConfig(
        max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, do_sample=do_sample, num_beams=1,
        repetition_penalty=1.0, no_repeat_ngram_size=0, eos_token_id=eos or None,
        pad_token_id=pad if pad is not None else (eos or [0])[0], **sampling,
    )
    dev = next(model.parameters()).device
    ids = prompt_ids.to(dev)[None]  # (1, P)
    cuda = list(range(torch.cuda.device_count())) if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=gc, **generate_kwargs)
    return out[0, ids.shape[1]:].tolist()

