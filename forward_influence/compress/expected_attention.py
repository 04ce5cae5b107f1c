"""Expected Attention (Devoto et al., 2025): the attention each entry should
receive from *future* queries, from the statistics of the queries seen so far."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from forward_influence.compress.base import Compressor, LayerView, Needs, register
from forward_influence.hf import anatomy
from forward_influence.hf.attention import AttentionTap


@register
@dataclass(frozen=True)
class ExpectedAttention(Compressor):
    """Future queries are modelled as Gaussian with the mean ``mu`` and
    covariance ``S`` of the pre-RoPE queries seen so far (positions
    ``>= n_sink``), rotated by the average RoPE matrix ``R`` of the next
    ``n_future`` positions. Entry ``j`` scores
    ``softmax_j(mu' k_j / sqrt(D) + k_j' S' k_j / (2 D)) * ||v_j||`` (mean over
    the query heads of a KV group), ``mu' = R mu``, ``S' = R S R'``. The first
    ``n_sink`` positions (the base class's field, 4 by default as in kvpress's
    ExpectedAttentionPress) are left out of the statistics and the softmax and
    always kept.

    State: the running count, mean ``(Hq, D)`` and covariance ``(Hq, D, D)``
    (merged across blocks with Chan's formula, so decoding uses every query
    since the prompt; kvpress's DecodingPress uses its last 256 hidden states).
    """

    n_future: int = 512
    n_sink: int = 4
    use_covariance: bool = True
    use_vnorm: bool = True
    epsilon: float = 0.0
    name = "expected_attention"

    def needs(self) -> Needs:
        return Needs(attn_inputs=True, state=True)

    def observe(self, tap: AttentionTap, positions: torch.Tensor, keys: torch.Tensor, state: dict) -> None:
        skip = max(0, self.n_sink - tap.start)
        h = tap.attn_input[skip:]  # (c, Dm)
        if h.shape[0] == 0:
            return
        q = anatomy.prerope_queries(tap.module, h)  # (Hq, c, D)
        mu = q.mean(dim=1, keepdim=True)  # (Hq, 1, D)
        centred = q - mu
        cov = torch.einsum("nsi,nsj->nij", centred, centred) / h.shape[0]  # (Hq, D, D)
        n_b, mu = h.shape[0], mu[:, 0]
        if "count" in state:  # Chan et al.: merge two means and covariances
            n_a = state["count"]
            n = n_a + n_b
            delta = mu - state["mean"]  # (Hq, D)
            cov = (n_a * state["cov"] + n_b * cov) / n + (n_a * n_b / n**2) * delta[:, :, None] * delta[:, None, :]
            mu = state["mean"] + delta * (n_b / n)
            n_b = n
        state.update(count=n_b, mean=mu, cov=cov, end=tap.start + tap.query.shape[1])

    def _rotated(self, view: LayerView) -> tuple[torch.Tensor, torch.Tensor]:
        st = view.state
        mu, cov = st["mean"], st["cov"]  # (Hq, D), (Hq, D, D)
        d = mu.shape[-1]
        future = torch.arange(st["end"], st["end"] + self.n_future)
        cos, sin = anatomy.rope_cos_sin(view.model, future, mu)  # (n_future, D)
        eye = torch.eye(d, device=cos.device, dtype=cos.dtype)
        p = anatomy.rotate_half(eye).T  # rotate_half as a matrix: p @ x == rotate_half(x)
        r = (cos[:, :, None] * eye + sin[:, :, None] * p).mean(0)  # (D, D) average rotation
        mu = mu @ r.T
        return mu, (r @ cov @ r.T if self.use_covariance else cov)

    def score(self, view: LayerView) -> torch.Tensor:
        hkv, n = view.positions.shape
        mu, cov = self._rotated(view)  # (Hq, D), (Hq, D, D)
        hq, d = mu.shape
        g = hq // hkv
        keys = view.keys.repeat_interleave(g, dim=0).transpose(1, 2)  # (Hq, D, n)
        logits = torch.matmul(mu[:, None], keys)[:, 0] / math.sqrt(d)  # (Hq, n)
        if self.use_covariance:
            logits = logits + torch.einsum("hin,hij,hjn->hn", keys, cov, keys) / d / 2
        sink = view.positions < self.n_sink  # (Hkv, n)
        logits = logits.masked_fill(sink.repeat_interleave(g, dim=0), float("-inf"))
        probs = torch.softmax(logits, dim=-1).view(hkv, g, n).mean(1)  # (Hkv, n)
        if self.use_vnorm:
            probs = (probs + self.epsilon) * view.values.norm(dim=-1)
        return probs  # the sinks (0 here) are kept by Compressor.layer_scores
