"""KL divergence between next-token distributions, accurate down to ~1e-12.

A plain float32 ``sum(p * (log p - log q))`` loses KLs below ~1e-6: the
terms are differences of numbers near ``log p ~ -10`` whose rounding errors do
not cancel. We use the centred form. With logits ``z`` (reference) and ``z'``
(ablated) and ``delta = z' - z``::

    KL(p || q) = log E_p[exp(delta)] - E_p[delta]
               = log1p( E_p[ expm1(delta - mu) ] ),   mu = E_p[delta]

The expectation is accumulated in float64 and ``expm1``/``log1p`` keep full
relative precision for tiny arguments, so float32 rounding in ``delta`` (a
few 1e-7 of a logit) only contributes at second order (~1e-13).

>>> import torch
>>> z = torch.tensor([[0.0, 1.0, 2.0]])
>>> float(centred_kl(z, z)[0])
0.0
>>> zq = z + torch.tensor([[0.0, 0.0, 1e-3]])
>>> p, q = torch.softmax(z.double(), -1), torch.softmax(zq.double(), -1)
>>> exact = float((p * (p.log() - q.log())).sum())
>>> abs(float(centred_kl(z, zq)[0]) - exact) / exact < 1e-6
True
"""

from __future__ import annotations

import torch


def centred_kl(ref_logits: torch.Tensor, logits: torch.Tensor, ref_logp: torch.Tensor | None = None) -> torch.Tensor:
    """``KL(softmax(ref_logits) || softmax(logits))`` over the last dim.

    Parameters
    ----------
    ref_logits : torch.Tensor
        ``(..., V)`` reference scores (broadcast against ``logits``).
    logits : torch.Tensor
        ``(..., V)`` perturbed scores.
    ref_logp : torch.Tensor, optional
        ``(..., V)`` float32 ``log_softmax(ref_logits)``, if already computed.

    Returns
    -------
    torch.Tensor
        ``(...)`` float64, ``>= 0``.
    """
    ref = ref_logits.float()
    if ref_logp is None:
        ref_logp = torch.log_softmax(ref, dim=-1)
    p = ref_logp.exp()  # (..., V)
    delta = logits.float() - ref  # (..., V)
    mu = (p.double() * delta.double()).sum(-1, keepdim=True)  # (..., 1) float64
    inner = (p.double() * torch.expm1(delta.double() - mu)).sum(-1)  # (...)
    return torch.log1p(inner).clamp_min(0.0)


def entropy(logits: torch.Tensor, topk: int | None = None) -> torch.Tensor:
    """Entropy (nats) of ``softmax(logits)``, or of its renormalised top-k.

    Parameters
    ----------
    logits : torch.Tensor
        ``(..., V)``.
    topk : int, optional
        Keep the ``topk`` largest probabilities and renormalise first.

    Returns
    -------
    torch.Tensor
        ``(...)`` float32.

    >>> import torch, math
    >>> round(float(entropy(torch.zeros(4))), 6) == round(math.log(4), 6)
    True
    >>> round(float(entropy(torch.tensor([0.0, 0.0, -1e9]), topk=2)), 6) == round(math.log(2), 6)
    True
    """
    x = logits.float()
    if topk is not None:
        x = torch.topk(x, k=min(topk, x.shape[-1]), dim=-1).values
    logp = torch.log_softmax(x, dim=-1)
    return -(logp.exp() * logp).sum(-1)
