"""Decoding through transformers' ``generate``: greedy or sampled, seeded in a forked RNG.

The one place a ``GenerationConfig`` is built. Greedy and sampling, stopping at
an end-of-sequence id and ``min_new_tokens`` come from transformers; the seed
is applied inside :func:`torch.random.fork_rng`, so no caller's global RNG state
changes (greedy decoding draws nothing).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch


def _stop_when(stop: Callable[[list[int]], bool], prompt_len: int) -> Any:
    """A ``StoppingCriteria`` that ends generation once ``stop(new ids)`` is true (the last id kept)."""
    from transformers import StoppingCriteria

    class StopWhen(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
            done = [bool(stop(row[prompt_len:].tolist())) for row in input_ids]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StopWhen()


@torch.no_grad()
def generate(
    model: Any,
    prompt_ids: torch.Tensor,
    *,
    max_new_tokens: int,
    min_new_tokens: int = 0,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    eos: Sequence[int] = (),
    pad: int | None = None,
    seed: int = 0,
    stop_when: Callable[[list[int]], bool] | None = None,
    **generate_kwargs: Any,
) -> list[int]:
    """Continue ``prompt_ids`` ``(P,)``; returns the new ids exactly as generated (an end-of-sequence id included).

    Sampling uses ``temperature`` and nucleus ``top_p`` only (every other
    sampling filter off); ``generate_kwargs`` go to ``model.generate`` as they
    are (a cache, logits processors, stopping criteria). ``stop_when(new_ids)``
    ends generation when true (checked after each token, which is kept).
    Inside :meth:`forward_influence.compress.Compressor.apply`, the cache is a
    compressor's cut cache.
    """
    from transformers import GenerationConfig

    eos = list(eos)
    # sampling-only flags only when sampling (greedy never reads them; transformers warns when they are set)
    sampling = (
        dict(
            temperature=temperature, top_p=top_p, top_k=0, min_p=0.0, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0
        )
        if do_sample
        else {}
    )
    gc = GenerationConfig(
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens,
        do_sample=do_sample,
        num_beams=1,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        eos_token_id=eos,  # [] (not None): no EOS, not the model config's
        pad_token_id=pad if pad is not None else (eos or [0])[0],
        **sampling,
    )
    dev = next(model.parameters()).device
    ids = prompt_ids.to(dev)[None]  # (1, P)
    if stop_when is not None:
        from transformers import StoppingCriteriaList

        criteria = StoppingCriteriaList(generate_kwargs.pop("stopping_criteria", []))
        criteria.append(_stop_when(stop_when, ids.shape[1]))
        generate_kwargs["stopping_criteria"] = criteria
    cuda = list(range(torch.cuda.device_count())) if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=gc, **generate_kwargs
        )
    return out[0, ids.shape[1] :].tolist()
