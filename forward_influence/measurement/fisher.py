r"""Fast Forward Influence: a Fisher estimate for every prefix token at once.

The idea
--------
Give every prefix cache entry ``j`` a weight ``m_j`` that scales its
unnormalised attention weight for the future queries at every layer, i.e.
add ``b_j = log m_j`` to those queries' attention logits of key ``j``.
``m = 1`` is the unperturbed model; ``m_i = 0`` (``b_i = -inf``) is exactly
the ablation of entry ``i`` (docs/design.md §4, split mode).

For a future position ``t`` and a target ``y`` let
``g_{t,i}(y) = ∂ log p_t(y) / ∂ m_i`` at ``m = 1`` (equal to ``∂/∂b_i`` at
``b = 0``). Expanding the KL to second order in ``m_i``,

.. math::

    KL(p_t \,\|\, p_t|_{m_i = 1 - \epsilon}) \approx \tfrac{\epsilon^2}{2}
    \mathbb{E}_{y \sim p_t}[g_{t,i}(y)^2]

(the Fisher information of ``m_i``; the first-order term vanishes because
``E_y[g] = 0``). The estimate takes ``ε = 1``.

One backward pass scores every ``i``: draw one target ``y_t ~ p_t`` at every
future position independently (inputs stay teacher-forced), and backpropagate
``L = Σ_t log p_t(y_t)`` to ``b``. Then ``G_i = Σ_t g_{t,i}(y_t)`` and, since
``E[g_t g_{t'}] = E[g_t] E[g_{t'}] = 0`` for ``t ≠ t'``,
``E[G_i²] = Σ_t E[g_{t,i}²] ≈ 2 Σ_t KL_i(t)``. ``S`` samples cost ``S``
backward passes (plus one forward), independent of the number of tokens; the
spread of ``½ G²`` over the samples gives each token's standard error.

Variance control (``targets="topk"``): instead of sampling ``y``, take the
``r``-th most likely token at every ``t`` for ``r = 1..k`` with weights
``sqrt(p_t(y))`` and random signs ``ε_t = ±1``:
``L_r = Σ_t ε_t sqrt(p_t(y_{t,r})) log p_t(y_{t,r})``; then
``Σ_r E_ε[G_r²] = Σ_t Σ_{y ∈ top-k} p_t(y) g_t(y)²`` — the exact expectation
over the top-k targets (the remaining probability mass is left out, so this
slightly under-estimates when ``p_t`` is flat).

Distance buckets: restricting ``L`` to a block of future positions gives that
block's estimate; ``blocks=K`` splits the future into ``K`` blocks at
``K × S`` backward passes, and each block's estimate is reported at its
centre position.

Where it can be wrong: the ablation is not a small perturbation (``m_i``
goes from 1 to 0), so tokens that receive a large share of attention — the
attention sinks above all, and tokens just before the split seen from near
distances — are misjudged by the quadratic term; ``scripts/validate_fisher.py``
measures this against the exact engine.

>>> import torch
>>> from transformers import LlamaConfig, LlamaForCausalLM
>>> m = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
...     num_attention_heads=4, num_key_value_heads=2)).eval()
>>> r = FisherEstimator(m, samples=4).split(torch.arange(24) % 64, 16, 8, sources=range(16))
>>> r.kl.shape, r.stderr.shape
((16, 1), (16, 1))
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from forward_influence.config import FISHER_TARGETS
from forward_influence.hf import anatomy, forwards


@dataclass
class FisherResult:
    """Estimated FI per source and future block.

    Attributes
    ----------
    kl : numpy.ndarray
        ``(len(sources), K)`` estimated Σ_t KL over each block of future positions.
    stderr : numpy.ndarray
        ``(len(sources), K)`` standard error over the samples (NaN for ``topk``).
    block_bounds : list of (int, int)
        Future-index ranges ``[a, b)`` of the blocks (relative to ``N``).
    seconds : float
    """

    kl: np.ndarray
    stderr: np.ndarray
    block_bounds: list[tuple[int, int]]
    seconds: float = 0.0


@contextlib.contextmanager
def _frozen(model: Any) -> Iterator[None]:
    """No weight gradients (nor their saved tensors) while estimating."""
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)


class FisherEstimator:
    """Fisher estimate of Forward Influence in ``split`` mode (see the module docstring).

    Parameters
    ----------
    model : transformers causal LM
    samples : int
        ``S``: sampled targets per position (``targets="sample"``), or the ``k``
        of ``targets="topk"``.
    targets : {"sample", "topk"}
    blocks : int
        Future blocks (distance resolution); cost ``blocks × samples`` backward passes.
    seed : int
    """

    def __init__(self, model: Any, samples: int = 8, targets: str = "sample", blocks: int = 1, seed: int = 0):
        if samples < 1 or blocks < 1:
            raise ValueError("samples and blocks must be >= 1")
        if targets not in FISHER_TARGETS:
            raise ValueError(f"targets must be one of {FISHER_TARGETS}, got {targets!r}")
        self.model = model
        self.samples = samples
        self.targets = targets
        self.blocks = blocks
        self.seed = seed

    def log_probs(
        self,
        prefix: Sequence[tuple[torch.Tensor, torch.Tensor]],
        future: torch.Tensor,
        bias: torch.Tensor,
        layers: Sequence[int] | None = None,
        kv_heads: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """``(F, V)`` float32 log-probabilities of the future with ``bias`` on the prefix keys."""
        h = forwards.biased_forward(self.model, prefix, future, bias, layers, kv_heads)[0]  # (F, Dm)
        return torch.log_softmax(anatomy.logits_from_hidden(self.model, h), dim=-1)  # (F, V)

    def split(
        self,
        input_ids: torch.Tensor,
        n_prefix: int,
        n_future: int,
        sources: Sequence[int] | None = None,
        layers: Sequence[int] | None = None,
        kv_heads: Sequence[int] | None = None,
        prefill: forwards.Prefill | None = None,
    ) -> FisherResult:
        """Estimate FI of prefix positions ``sources`` (default all) over the next ``n_future`` tokens."""
        t0 = time.perf_counter()
        n, f = n_prefix, n_future
        if n < 1 or f < 1 or n + f > int(input_ids.shape[0]):
            raise ValueError(f"need 1 <= n_prefix, 1 <= n_future and n_prefix + n_future <= {int(input_ids.shape[0])}")
        srcs = np.arange(n) if sources is None else np.asarray(list(sources), dtype=np.int64)
        if prefill is None:
            prefill = forwards.record_prefill(self.model, input_ids[: n + f])
        prefix = [(k.detach(), v.detach()) for k, v in prefill.prefix(n)]
        future = input_ids[n : n + f]
        dev = self.model.device
        edges = np.linspace(0, f, self.blocks + 1).round().astype(int)
        bounds = [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        est = np.zeros((len(srcs), len(bounds)))
        se = np.full((len(srcs), len(bounds)), np.nan)
        with _frozen(self.model), torch.enable_grad():
            bias = torch.zeros(
                n, device=dev, dtype=torch.promote_types(self.model.dtype, torch.float32), requires_grad=True
            )
            logp = self.log_probs(prefix, future, bias, layers, kv_heads)  # (F, V)
            p = logp.detach().exp()
            passes = [(k, r) for k in range(len(bounds)) for r in range(self.samples)]
            sq = np.zeros((len(bounds), self.samples, len(srcs)))
            for j, (k, r) in enumerate(passes):
                a, b = bounds[k]
                if self.targets == "sample":
                    y = torch.multinomial(p[a:b].cpu(), 1, generator=gen)[:, 0].to(dev)  # (b-a,)
                    loss = logp[torch.arange(a, b, device=dev), y].sum()
                else:
                    y = p[a:b].topk(self.samples, dim=-1).indices[:, r]  # r-th most likely token per position
                    sign = (torch.randint(0, 2, (b - a,), generator=gen) * 2 - 1).to(dev, torch.float32)
                    rows = torch.arange(a, b, device=dev)
                    loss = (sign * p[rows, y].sqrt() * logp[rows, y]).sum()
                (grad,) = torch.autograd.grad(loss, bias, retain_graph=j < len(passes) - 1)
                sq[k, r] = 0.5 * grad.double().cpu().numpy()[srcs] ** 2
        if self.targets == "sample":
            est[:] = sq.mean(1).T
            if self.samples > 1:
                se[:] = (sq.std(1, ddof=1) / np.sqrt(self.samples)).T
        else:
            est[:] = sq.sum(1).T
        return FisherResult(kl=est, stderr=se, block_bounds=bounds, seconds=time.perf_counter() - t0)


def exact_fisher(
    model: Any,
    prefix: Sequence[tuple[torch.Tensor, torch.Tensor]],
    future: torch.Tensor,
    layers: Sequence[int] | None = None,
    kv_heads: Sequence[int] | None = None,
) -> np.ndarray:
    """``½ Σ_t E_{y~p_t}[g_{t,i}(y)²]`` for every prefix ``i`` from the full
    Jacobian ``∂ log p / ∂ b`` — ``F × V`` backward passes: for tests on tiny models."""
    est = FisherEstimator(model)
    n = prefix[0][0].shape[2]
    with _frozen(model):
        bias0 = torch.zeros(n, dtype=torch.promote_types(model.dtype, torch.float32), device=model.device)
        jac = torch.autograd.functional.jacobian(
            lambda b: est.log_probs(prefix, future, b, layers, kv_heads), bias0, vectorize=True
        )  # (F, V, N)
        with torch.no_grad():
            p = est.log_probs(prefix, future, bias0, layers, kv_heads).exp()  # (F, V)
    return (0.5 * (p[..., None].double() * jac.double() ** 2).sum((0, 1))).cpu().numpy()
