"""Forward Influence: the exact KL shift caused by removing KV-cache entries.

Definition (docs/design.md §1–2). Tokens ``x[0:T]``; an ablation removes a set of cache
entries (all layers, one layer, or one KV head of one layer) from what the
queries at or after an *eviction time* ``tau`` can see. Entries computed
before ``tau`` keep what they read. For a future query position ``t``::

    KL_i(t) = KL( p(. | t) || p_ablated_i(. | t) )

over the full vocabulary, computed by :func:`forward_influence.measurement.kl.centred_kl`
(float32 elementwise, sums that do not cancel; accurate to ~1e-12). Distance is ``d = t - i``.

Two modes share one mechanism (:func:`forward_influence.hf.forwards.ablated_forward`):

``split`` (``tau = N``)
    Prefill ``x[0:N]``; teacher-force ``x[N:N+F]`` at positions ``N..N+F-1``
    with entry ``i`` removed. All ablations of a split share the prefix K/V.
``sliding`` (``tau = i + D``, delay ``D >= 1``)
    Token ``i`` is seen by the queries ``i .. i+D-1`` (the window a compressor
    observes before deciding), then evicted; the ``H`` queries from ``tau`` on
    run without it, recomputing their own entries. Sources ``a..a+B-1`` are
    batched over the shared cache ``[0, a)``; each row re-runs the block plus
    ``D + H`` tokens. Every source gets the same distance profile: ``d = D ..
    D+H-1`` from the source, ``0 .. H-1`` from its eviction.

Each forward batch carries one *null* row (nothing hidden) first; the
ablated rows are compared with it, so reference and ablation go through the
same arithmetic. The noise floor is the KL between that batched null row and
a null row run alone (different batch composition): report it with results.
In ``split`` mode every batch of a split has the same reference; when the
lone and the batched null rows agree bitwise (the arithmetic of a row does
not depend on the batch it is in: so on CPU, rarely on CUDA) later batches
reuse the first batch's reference instead of carrying their own row
(``SplitResult.shared_reference``).

The noise floor sees only what the batch composition changes; it misses the
rounding noise of a row whose inputs differ from the reference's (every
ablated row), which dominates in bfloat16. The first batch of each split
therefore also carries a *dithered* null row: its input embeddings moved by
one rounding step (:func:`forward_influence.hf.forwards.dither_embeddings`), so
its every later rounding is decorrelated from the reference's as an ablated
row's are. Its KL is the *precision floor* (``precision_floor``): measured on
SmolLM2 at N=512, F=128, ~1e-12 per position in float32 but 6e-4 in
bfloat16, where the bfloat16 engine's median error against float32 was 7e-4
(and the median true FI 3e-6). KLs near or below it are rounding noise.

Examples
--------
>>> from forward_influence.measurement.engine import Ablation
>>> Ablation(positions=(3,), layers=(0,)).describe()
'pos=3 layers=0'
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from forward_influence.hf import anatomy, attention, forwards
from forward_influence.measurement.ablation import NULL, Ablation, SlidingResult, SplitResult, select_mask  # noqa: F401  (re-exported)
from forward_influence.measurement.kl import centred_kl_delta
from forward_influence.runtime import host
from forward_influence.runtime.devices import defaults_for

_WORKSPACE_FIELDS = {"scores": "score_bytes", "logits": "logit_bytes", "kl": "kl_bytes"}


def _workspace(device: torch.device, key: str, given: int | None) -> int:
    """A working-set bound (``scores``, ``logits`` or ``kl``): ``given``, else the
    device's default (:mod:`forward_influence.runtime.devices`), capped at its
    share of the free memory where the table sets one."""
    if given is not None:
        return given
    row = defaults_for(device)
    size = getattr(row, _WORKSPACE_FIELDS[key])
    if row.workspace_free_fraction is None:
        return size
    return max(1 << 20, min(size, int(host.available_bytes(device) * row.workspace_free_fraction)))


def sliding_groups(sources: Sequence[int], batch_size: int, tail: int) -> list[list[int]]:
    """The batches of sliding mode: indices into ``sources``, each group in
    ascending source order and at most ``batch_size`` long.

    Each row reruns the whole block (span + ``tail`` tokens, ``tail = D + H``)
    and every block carries one null row, so a source joins the group while
    the cost per source, (rows) * (block) / (sources), does not grow.

    >>> sliding_groups([0, 1, 2, 50], batch_size=8, tail=4)
    [[0, 1], [2], [3]]
    """
    order = sorted(range(len(sources)), key=lambda k: sources[k])
    groups: list[list[int]] = []
    k = 0
    while k < len(order):
        a = sources[order[k]]
        group = [order[k]]
        k += 1
        while k < len(order) and len(group) < batch_size:
            span_now = sources[group[-1]] - a
            span_next = sources[order[k]] - a
            g = len(group)
            if (g + 2) * (span_next + tail) * g > (g + 1) * (span_now + tail) * (g + 1):
                break
            group.append(order[k])
            k += 1
        groups.append(group)
    return groups


class ForwardInfluenceEngine:
    """Batched exact Forward Influence for one model.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A Llama/Qwen2/Mistral-style causal LM in eval mode.
    batch_size : int, optional
        Ablations per forward (plus the null row). Default: from free memory.
    max_score_bytes, logit_bytes, kl_bytes : int, optional
        Bounds on the float32 attention scores held at once (query chunking),
        the logits held at once (position chunking of the LM head) and one
        KL pass over the vocabulary. Default: the device's row of
        :data:`forward_influence.runtime.devices.DEFAULTS` (on CPU small
        enough to stay in cache: 8 MiB, 128 MiB, 4 MiB; on CUDA 1 GiB, 2 GiB,
        2 GiB, at most an eighth of the free memory each — not yet measured).
    kernel : {"auto", "flash", "matmul"}
        Attention kernel for the shared prefix (see :func:`forwards.ablated_forward`;
        ``auto``: the device's default where it applies).
    share_reference : bool
        In ``split`` mode let later batches reuse the first batch's null row
        when the noise-floor check finds the arithmetic batch-invariant
        (bitwise); False: every batch carries its own.
    precision_floor : bool
        Carry one dithered null row in the first batch of each split (the
        first block in sliding mode) and report its KL as the precision floor
        (one extra row per split).
    """

    def __init__(
        self,
        model: Any,
        batch_size: int | None = None,
        max_score_bytes: int | None = None,
        logit_bytes: int | None = None,
        kl_bytes: int | None = None,
        kernel: str = "auto",
        share_reference: bool = True,
        precision_floor: bool = True,
    ):
        self.model = model
        self.batch_size = batch_size
        self.share_reference = share_reference
        self.precision_floor = precision_floor
        self.max_score_bytes = _workspace(model.device, "scores", max_score_bytes)
        self.logit_bytes = _workspace(model.device, "logits", logit_bytes)
        self.kl_bytes = _workspace(model.device, "kl", kl_bytes)
        if kernel not in ("auto", "flash", "matmul"):
            raise ValueError(f"kernel must be auto, flash or matmul; got {kernel!r}")
        self.kernel = kernel
        self.n_layers = anatomy.n_layers(model)
        self.n_kv = anatomy.n_kv_heads(model)

    # ----------------------------------------------------------------- sizing
    def auto_batch_size(self, prefix_len: int, block_len: int) -> int:
        """Rows per forward that fit in the device's share of the free memory,
        at most its ``batch_cap`` (:mod:`forward_influence.runtime.devices`)."""
        if self.batch_size is not None:
            return self.batch_size
        cfg = self.model.config
        dev = self.model.device
        row = defaults_for(dev)
        elt = torch.finfo(self.model.dtype).bits // 8
        inter = getattr(cfg, "intermediate_size", 4 * cfg.hidden_size)
        per_row = block_len * (8 * cfg.hidden_size + 3 * inter) * elt  # transient layer activations
        per_row += block_len * cfg.num_attention_heads * (prefix_len + block_len)  # score share
        budget = int(host.available_bytes(dev) * row.batch_memory_fraction) - self.max_score_bytes - self.logit_bytes
        return int(max(1, min(row.batch_cap, budget // max(1, per_row))))

    # ------------------------------------------------------------- internals
    @torch.no_grad()
    def _kl_rows(self, hidden: torch.Tensor, row_pos: Sequence[np.ndarray]) -> list[np.ndarray]:
        """KL of rows ``1..B`` against row 0 at the given block positions.

        hidden ``(B+1, C, Dm)``; ``row_pos[b]`` are the block indices where
        row ``b+1`` is scored. Logits are made and reduced in chunks so that
        ablations × positions × vocab is never held at once.
        """
        rows, c, _ = hidden.shape
        vocab = anatomy.lm_head(self.model).weight.shape[0]
        lo = min(int(p.min()) for p in row_pos)
        hi = max(int(p.max()) for p in row_pos) + 1
        chunk = max(1, self.logit_bytes // (rows * vocab * 4))  # positions per LM-head GEMM
        sub = max(1, self.kl_bytes // (rows * vocab * 4))  # positions per cache-resident KL pass
        linear = anatomy.lm_head_is_linear(self.model)
        full = np.zeros((rows - 1, c), dtype=np.float64)
        for c0 in range(lo, hi, chunk):
            c1 = min(hi, c0 + chunk)
            h = hidden[:, c0:c1]  # (B+1, n, Dm)
            if linear:  # logit shifts straight from the hidden-state shifts: no large logits cancel
                h = torch.cat([h[:1], h[1:] - h[:1]])  # reference and shifts through one LM-head GEMM
            out = anatomy.logits_from_hidden(self.model, h)  # (B+1, n, V)
            ref_logp = torch.log_softmax(out[:1], dim=-1)  # (1, n, V)
            delta = out[1:] if linear else out[1:].sub_(out[:1])  # (B, n, V)
            for s0 in range(0, c1 - c0, sub):
                kl = centred_kl_delta(ref_logp[:, s0 : s0 + sub], delta[:, s0 : s0 + sub])  # (B, m) float64
                full[:, c0 + s0 : c0 + s0 + kl.shape[1]] = kl.cpu().numpy()
        return [full[b, p] for b, p in enumerate(row_pos)]

    @torch.no_grad()
    def _null_floor(
        self, prefix: Any, block: torch.Tensor, hidden_batched: torch.Tensor, start: int, positions: np.ndarray
    ) -> tuple[np.ndarray, bool]:
        """KL between the batched null row and a null row run alone, and
        whether their hidden states are bitwise identical."""
        one = attention.AblationBatch(
            positions=[()], select=select_mask([NULL], self.n_layers, self.n_kv), tau=torch.tensor([start])
        )
        alone = forwards.ablated_forward(
            self.model, prefix, block, one, self.max_score_bytes, self.kernel
        )  # (1, C, Dm)
        if torch.equal(alone, hidden_batched[:1]):
            return np.zeros(len(positions)), True  # the KL of identical states is exactly 0
        both = torch.cat([alone, hidden_batched[:1]], dim=0)  # (2, C, Dm)
        return self._kl_rows(both, [positions])[0], False

    def _batch(
        self,
        ablations: Sequence[Ablation],
        taus: Sequence[int],
        null: bool = True,
        dither: bool = False,
        null_tau: int | None = None,
    ) -> attention.AblationBatch:
        """Rows: the null reference (if ``null``), a dithered null row (if
        ``dither``; needs ``null``), then the ablations."""
        extra = [NULL] * (int(null) + int(dither and null))
        rows = [*extra, *ablations]
        t0 = taus[0] if null_tau is None else null_tau
        return attention.AblationBatch(
            positions=[tuple(a.positions) for a in rows],
            select=select_mask(rows, self.n_layers, self.n_kv),
            tau=torch.tensor([t0] * len(extra) + list(taus), dtype=torch.long),
            dither=(1,) if dither and null else (),
        )

    def _check(self, ablations: Sequence[Ablation], limit: int) -> None:
        for a in ablations:
            for q in a.positions:
                if not 0 <= q < limit:
                    raise ValueError(f"ablation position {q} out of range [0, {limit})")
            if a.layers is not None and any(not 0 <= l < self.n_layers for l in a.layers):
                raise ValueError(f"ablation layers {a.layers} out of range [0, {self.n_layers})")
            if a.kv_heads is not None and any(not 0 <= h < self.n_kv for h in a.kv_heads):
                raise ValueError(f"ablation kv_heads {a.kv_heads} out of range [0, {self.n_kv})")

    # ------------------------------------------------------------------- API
    def prefill(
        self, input_ids: torch.Tensor, on_tap: Callable | None = None, layer_hooks: Callable | None = None
    ) -> forwards.Prefill:
        """One causal forward of ``input_ids`` ``(T,)`` keeping the KV cache
        (callbacks: see :func:`forward_influence.hf.forwards.record_prefill`)."""
        return forwards.record_prefill(self.model, input_ids, on_tap=on_tap, layer_hooks=layer_hooks)

    @torch.no_grad()
    def split(
        self,
        input_ids: torch.Tensor,
        n_prefix: int,
        n_future: int,
        ablations: Sequence[Ablation],
        prefill: forwards.Prefill | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> SplitResult:
        """FI in ``split`` mode at ``N = n_prefix`` for each ablation.

        Parameters
        ----------
        input_ids : torch.Tensor
            ``(T,)`` with ``T >= n_prefix + n_future``.
        ablations : sequence of Ablation
            Positions must lie in ``[0, n_prefix)``.
        prefill : Prefill, optional
            A prefill of at least ``n_prefix`` tokens to reuse.
        progress : callable, optional
            Called with the number of ablations finished after each batch.

        Returns
        -------
        SplitResult
            ``kl`` is ``(len(ablations), n_future)``.
        """
        if n_prefix < 1 or n_future < 1 or input_ids.shape[0] < n_prefix + n_future:
            raise ValueError(
                f"need n_prefix >= 1, n_future >= 1 and {n_prefix + n_future} tokens; got {input_ids.shape[0]}"
            )
        self._check(ablations, n_prefix)
        if prefill is None:
            prefill = self.prefill(input_ids[:n_prefix])
        prefix = prefill.prefix(n_prefix)
        block = input_ids[n_prefix : n_prefix + n_future]
        bs = self.auto_batch_size(n_prefix, n_future)
        kl = np.zeros((len(ablations), n_future), dtype=np.float64)
        scored = np.arange(n_future)
        floor = None
        precision = None
        ref = None  # (1, F, Dm) the first batch's null row, once batch invariance is seen
        for s0 in range(0, len(ablations), bs):
            chunk = list(ablations[s0 : s0 + bs])
            dither = self.precision_floor and s0 == 0
            batch = self._batch(chunk, [n_prefix] * len(chunk), null=ref is None, dither=dither)
            hidden = forwards.ablated_forward(
                self.model, prefix, block, batch, self.max_score_bytes, self.kernel
            )  # (1+D+B or B, F, Dm)
            if ref is not None:
                hidden = torch.cat([ref, hidden])  # (B+1, F, Dm)
            rows = self._kl_rows(hidden, [scored] * (len(chunk) + dither))
            if dither:  # the dithered row's KL; below, only the reference row 0 of hidden is read
                precision, rows = rows[0], rows[1:]
            for b, row in enumerate(rows):
                kl[s0 + b] = row
            if floor is None:
                floor, same = self._null_floor(prefix, block, hidden, n_prefix, scored)
                if same and self.share_reference:
                    ref = hidden[:1].clone()
            if progress is not None:
                progress(len(chunk))
        if floor is None:  # no ablations: still report the floors
            batch = self._batch([], [], dither=self.precision_floor, null_tau=n_prefix)
            hidden = forwards.ablated_forward(
                self.model, prefix, block, batch, self.max_score_bytes, self.kernel
            )  # (1+D, F, Dm)
            if self.precision_floor:
                precision = self._kl_rows(hidden, [scored])[0]
            floor, _ = self._null_floor(prefix, block, hidden, n_prefix, scored)
        return SplitResult(
            split=n_prefix,
            ablations=list(ablations),
            kl=kl,
            noise_floor=floor,
            shared_reference=ref is not None,
            precision_floor=precision,
        )

    @torch.no_grad()
    def sliding(
        self,
        input_ids: torch.Tensor,
        sources: Sequence[int],
        horizon: int,
        layers: tuple[int, ...] | None = None,
        kv_heads: tuple[int, ...] | None = None,
        prefill: forwards.Prefill | None = None,
        progress: Callable[[int], None] | None = None,
        delay: int = 1,
    ) -> SlidingResult:
        """FI in ``sliding`` mode: each source evicted ``delay`` queries after it.

        Parameters
        ----------
        input_ids : torch.Tensor
            ``(T,)``.
        sources : sequence of int
            Source positions with ``s + delay + horizon <= T``.
        horizon : int
            ``H``: the queries ``s+D .. s+D+H-1`` are scored.
        delay : int
            ``D >= 1``: the queries ``s .. s+D-1`` still see the source
            (``delay=1``: evicted right after it is processed).

        Returns
        -------
        SlidingResult
            ``kl`` is ``(len(sources), horizon)`` in the order of ``sources``.
        """
        t = int(input_ids.shape[0])
        srcs = [int(s) for s in sources]
        if horizon < 1 or delay < 1:
            raise ValueError(f"horizon and delay must be >= 1, got {horizon} and {delay}")
        bad = [s for s in srcs if not 0 <= s or s + delay + horizon > t]
        if bad:
            raise ValueError(f"sources {bad[:5]} need 0 <= s and s + delay + horizon <= {t}")
        self._check([Ablation((s,), layers, kv_heads) for s in srcs], t)
        if prefill is None:
            prefill = self.prefill(input_ids)
        bs = self.auto_batch_size(max(srcs, default=0), delay + horizon + 16)
        tail = delay + horizon  # tokens each row runs after its last source
        kl = np.zeros((len(srcs), horizon), dtype=np.float64)
        floor = None
        precision = None
        for group in sliding_groups(srcs, bs, tail):
            a, last = srcs[group[0]], srcs[group[-1]]
            block = input_ids[a : last + tail]  # (C,) with C = last - a + D + H
            prefix = prefill.prefix(a)
            abls = [Ablation((srcs[g],), layers, kv_heads) for g in group]
            dither = self.precision_floor and floor is None
            batch = self._batch(abls, [srcs[g] + delay for g in group], dither=dither)
            hidden = forwards.ablated_forward(
                self.model, prefix, block, batch, self.max_score_bytes, self.kernel
            )  # (1+D+B, C, Dm)
            pos = [np.arange(srcs[g] - a + delay, srcs[g] - a + tail) for g in group]
            rows = self._kl_rows(hidden, pos[:1] * dither + pos)
            if dither:  # the dithered row's KL; below, only the reference row 0 of hidden is read
                precision, rows = rows[0], rows[1:]
            for g, row in zip(group, rows):
                kl[g] = row
            if floor is None:
                floor, _ = self._null_floor(prefix, block, hidden, a, pos[0])
            if progress is not None:
                progress(len(group))
        if floor is None:  # no sources
            floor = np.zeros(horizon)
        return SlidingResult(
            sources=srcs, horizon=horizon, kl=kl, noise_floor=floor, precision_floor=precision, delay=delay
        )
