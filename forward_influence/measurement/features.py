"""Token features shared by the signals and the compressors: the final logits in
row chunks (for the top-k entropy) and the representation change.

One implementation of each, used by :mod:`forward_influence.measurement.signals`
(the study's columns), :class:`forward_influence.compress.CompressedCache` and
:mod:`forward_influence.integrations.kvpress` (InfoKV's inputs), so a signal
and the compressor that ranks by it read the same numbers.

The representation change
-------------------------
``r_l(i) = 1 - cos(h_{l0}(i), h_l(i))`` for layers ``l > l0``, and ``r_l(i) = 1``
for ``l <= l0``, where ``h_l`` is the output of decoder layer ``l`` (before the
final norm) and ``l0`` the early layer. At and below ``l0`` no change has been
measured yet; InfoKV multiplies ``r_l`` into its entropy score, and 1 — the
neutral factor — leaves the entropy term as it is there instead of zeroing
it (``1 - cos(h_{l0}, h_{l0})`` would be 0) or reading layers below ``l0``
against a later one. The early-to-last change is ``r_{L-1}``, the last
row: 1 for a model with no layer after ``l0``.

>>> import torch
>>> rep = RepChange(n_layers=3, n_tokens=2, early_layer=1)
>>> h = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
>>> for layer, hidden in enumerate([h, h, torch.tensor([[0.0, 1.0], [0.0, 1.0]])]):
...     rep(layer, hidden)
>>> rep.values.tolist()
[[1.0, 1.0], [1.0, 1.0], [1.0, 0.0]]
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as Fn

from forward_influence.hf import anatomy

#: float32 ``(rows, V)`` tensors a logit chunk may hold at once: the logits
#: and the temporaries of a softmax, a log-softmax and a top-k.
LOGIT_COPIES = 4


def logit_chunks(model: Any, hidden: torch.Tensor, chunk_bytes: int) -> Iterator[tuple[int, torch.Tensor]]:
    """``(c0, logits)`` for row chunks of the final hidden state ``(T, Dm)``:
    float32 logits ``(n, V)`` of rows ``c0 .. c0 + n - 1``, with ``n`` such that
    :data:`LOGIT_COPIES` of them fit in ``chunk_bytes`` (at least one row)."""
    vocab = anatomy.lm_head(model).weight.shape[0]
    rows = max(1, chunk_bytes // (LOGIT_COPIES * 4 * vocab))
    for c0 in range(0, hidden.shape[0], rows):
        yield c0, anatomy.logits_from_hidden(model, hidden[c0 : c0 + rows])


def rep_change(early: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """``1 - cos(early, hidden)`` per row: ``(T, Dm)`` twice → ``(T,)`` float32."""
    return 1.0 - Fn.cosine_similarity(early.float(), hidden.float(), dim=-1)


class RepChange:
    """A layer hook (``layer_hooks=`` of :mod:`forward_influence.hf.forwards`)
    that records ``r_l`` for one forward of ``n_tokens`` tokens.

    Attributes
    ----------
    values : torch.Tensor
        ``(n_layers, n_tokens)`` float32 on the CPU: ``r_l`` (the module
        docstring), 1 until the layers after ``early_layer`` have run.
    """

    def __init__(self, n_layers: int, n_tokens: int, early_layer: int):
        self.early_layer = early_layer
        self.values = torch.ones(n_layers, n_tokens)
        self._early: torch.Tensor | None = None

    @torch.no_grad()
    def __call__(self, layer: int, hidden: torch.Tensor) -> None:
        """``hidden`` ``(T, Dm)``: the output of decoder layer ``layer`` (layers come in order)."""
        if layer == self.early_layer:
            self._early = hidden.float().clone()
        elif layer > self.early_layer and self._early is not None:
            self.values[layer] = rep_change(self._early, hidden).cpu()
