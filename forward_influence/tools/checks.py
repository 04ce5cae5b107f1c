"""Exactness checks against independent oracles, shared by the tests and ``scripts/gpu_check.py``.

Each check builds nothing itself: it takes a model (a tiny random one from
:func:`tiny_model`, on any device, in any dtype) and token ids, runs the
package's own code, runs an independent oracle, and returns
:class:`Check` results — a number, the bound it must respect and a
verdict. The fast test tier asserts them on the CPU; the GPU script runs the
same functions on CUDA.

Oracles. The engine (split and sliding, layer and head ablation, both
attention kernels) against one full forward with a 4-D mask
(:func:`forward_influence.hf.cache_api.full_forward_hiding`; a per-head mask
in eager attention for layer/head ablation); a compressed continuation
against a full forward hiding the dropped columns; the Fisher estimate's
gradient against a central finite difference, and its ``m = 0`` against the
engine's ablation.

Tolerances. In float32 (and float64) the bounds below. In a low-precision
dtype the oracle is a float32 copy of the same (rounded) weights, and the
bound is the *measured* precision floor: the median error of the KLs must
stay within :data:`FLOOR_FACTOR` times the median floor that the run itself
measured (the engine's dithered null row; for a compressed continuation,
the full-cache continuation's own KL to the float32 oracle).

>>> c = Check("demo", value=1e-6, bound=REL_TOL_ENGINE)
>>> c.passed, str(c)
(True, 'demo: 1e-06 <= 0.0001 pass')
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from forward_influence.hf import anatomy, cache_api, forwards
from forward_influence.hf import kernels as hf_kernels
from forward_influence.hf.random_models import TINY_VOCAB, tiny_config, tiny_model  # noqa: F401  (re-exported for the checks' callers)
from forward_influence.measurement.engine import Ablation, ForwardInfluenceEngine
from forward_influence.measurement.kl import centred_kl
from forward_influence.tools.oracles import oracle_layer_kl, oracle_sliding_kl, oracle_split_kl  # noqa: F401  (re-exported)

# Tolerances, named once (tests/conftest.py imports them from here).
REL_TOL_ENGINE = 1e-4  # engine vs independent 4-D-mask forward (fp32), relative to the row's largest KL
ABS_TOL_KL = 1e-9  # KL values that should be zero
FP32_PRECISION_FLOOR = 1e-8  # a dithered null row's KL in float32 (measured ~1e-12 on SmolLM2, ~1e-14 tiny models)
REL_TOL_LOGITS = 1e-4  # compressed continuation vs an independent 4-D-mask forward (fp32)
WRONG_POS_MIN_DIFF = 1e-3  # a position off by one must move the logits at least this much
WRONG_POS_FACTOR = 100  # ... and the engine's KLs by this many times REL_TOL_ENGINE
REL_TOL_GRAD = 2e-3  # autograd vs central difference, h = 1e-2 (transformers' RMSNorm computes in float32)
FD_STEP = 1e-2
REL_TOL_ABLATION = 1e-4  # Fisher bias -inf vs the engine's exact ablation (float32)
FLOOR_FACTOR = 10.0  # low precision: median |error| <= this x median measured floor (as the SmolLM2 bf16 test)
MIN_ABLATED_KL = 1e-6  # an ablated row's total KL must exceed this, or a null check proves nothing

SPLIT_N, SPLIT_F = 30, 14  # the tests' split
SLIDING_H = 9
SLIDING_SOURCES = (*range(0, 30, 3), 31)


@dataclass(frozen=True)
class Check:
    """One verdict: ``value`` must be ``<= bound`` (``below``) or ``>= bound``
    (a deliberate mistake that must be caught)."""

    name: str
    value: float
    bound: float
    below: bool = True
    detail: str = ""

    @property
    def passed(self) -> bool:
        if not math.isfinite(self.value):
            return False
        return self.value <= self.bound if self.below else self.value >= self.bound

    def __str__(self) -> str:
        rel = "<=" if self.below else ">="
        extra = f" ({self.detail})" if self.detail else ""
        return f"{self.name}: {self.value:.3g} {rel} {self.bound:.3g}{extra} {'pass' if self.passed else 'FAIL'}"


# --------------------------------------------------------------------------- #
# Tiny models
# --------------------------------------------------------------------------- #


def tiny_ids(n: int = 48, seed: int = 1) -> torch.Tensor:
    """``(n,)`` random token ids (the tests' ``ids`` fixture)."""
    return torch.randint(0, TINY_VOCAB, (n,), generator=torch.Generator().manual_seed(seed))


def float32_twin(model: Any) -> Any:
    """The model itself in float32/float64, else a float32 copy of its (rounded) weights."""
    return model if model.dtype in (torch.float32, torch.float64) else copy.deepcopy(model).float()


def kernels(model: Any) -> list[str]:
    """The engine's attention kernels that run on ``model``'s device and dtype."""
    probe = torch.empty(0, device=model.device, dtype=model.dtype)
    return ["flash", "matmul"] if hf_kernels.lse_kernel(probe) is not None else ["matmul"]


# --------------------------------------------------------------------------- #
# Comparisons
# --------------------------------------------------------------------------- #


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute difference relative to ``b``'s largest magnitude."""
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def allclose_ratio(a: np.ndarray, b: np.ndarray, rtol: float, atol: float) -> float:
    """``max |a - b| / (atol + rtol |b|)``: ``<= 1`` is ``numpy.allclose``."""
    return float((np.abs(np.asarray(a) - np.asarray(b)) / (atol + rtol * np.abs(np.asarray(b)))).max())


def _versus_oracle(name: str, kl: np.ndarray, exact: np.ndarray, floor: np.ndarray | None, dtype: torch.dtype) -> Check:
    """Rows of ``kl`` against the oracle's: float32 — the worst row's relative
    error; lower precision — median error over the median measured floor."""
    if dtype in (torch.float32, torch.float64):
        errs = [rel_err(k, e) for k, e in zip(kl, exact)]
        worst = int(np.argmax(errs))
        return Check(name, max(errs), REL_TOL_ENGINE, detail=f"worst row {worst}")
    med_floor = float(np.median(floor))
    err = float(np.median(np.abs(kl - exact)))
    return Check(
        name, err / max(med_floor, 1e-30), FLOOR_FACTOR, detail=f"median error {err:.2e} / median floor {med_floor:.2e}"
    )


# --------------------------------------------------------------------------- #
# Engine checks
# --------------------------------------------------------------------------- #


def check_split(
    model: Any,
    ids: torch.Tensor,
    kernel: str = "auto",
    positions: Sequence[int] | None = None,
    batch_size: int = 5,
    name: str = "engine_split",
) -> list[Check]:
    """Split mode (N=30, F=14) against the 4-D-mask forward; in float32 also
    the precision floor (below :data:`FP32_PRECISION_FLOOR`) and the noise floor."""
    pos = list(range(SPLIT_N)) if positions is None else list(positions)
    res = ForwardInfluenceEngine(model, batch_size=batch_size, kernel=kernel).split(
        ids, SPLIT_N, SPLIT_F, [Ablation((i,)) for i in pos]
    )
    exact = oracle_split_kl(float32_twin(model), ids, SPLIT_N, SPLIT_F, pos)
    out = [_versus_oracle(name, res.kl, exact, res.precision_floor, model.dtype)]
    if model.dtype in (torch.float32, torch.float64):
        out.append(Check(name + "_precision_floor", float(res.precision_floor.max()), FP32_PRECISION_FLOOR))
        out.append(Check(name + "_noise_floor", float(res.noise_floor.max()), ABS_TOL_KL))
    return out


def check_sliding(
    model: Any,
    ids: torch.Tensor,
    kernel: str = "auto",
    sources: Sequence[int] = SLIDING_SOURCES,
    horizon: int = SLIDING_H,
    batch_size: int = 4,
    name: str = "engine_sliding",
    delay: int = 1,
) -> list[Check]:
    """Sliding mode against the 4-D-mask forward hiding each source from the
    rows from its eviction time ``s + delay`` on."""
    res = ForwardInfluenceEngine(model, batch_size=batch_size, kernel=kernel).sliding(
        ids, list(sources), horizon, delay=delay
    )
    exact = oracle_sliding_kl(float32_twin(model), ids, sources, horizon, delay)
    return [_versus_oracle(name, res.kl, exact, res.precision_floor, model.dtype)]


def check_layer_head(
    model: Any, ids: torch.Tensor, kernel: str = "auto", pos: int = 5, layer: int = 1, name: str = "engine_layer_head"
) -> list[Check]:
    """Hiding ``pos`` at one layer, and at one KV head of it, against eager
    attention masked by hand (``model`` must use eager attention)."""
    abl = [Ablation((pos,), layers=(layer,)), Ablation((pos,), layers=(layer,), kv_heads=(0,))]
    res = ForwardInfluenceEngine(model, batch_size=4, kernel=kernel).split(ids, SPLIT_N, SPLIT_F, abl)
    oracle = float32_twin(model)
    exact = np.stack(
        [
            oracle_layer_kl(oracle, ids, SPLIT_N, SPLIT_F, pos, layer),
            oracle_layer_kl(oracle, ids, SPLIT_N, SPLIT_F, pos, layer, kv_head=0),
        ]
    )
    return [_versus_oracle(name, res.kl, exact, res.precision_floor, model.dtype)]


def check_kv_heads(
    model: Any,
    ids: torch.Tensor,
    kernel: str = "auto",
    pos: int = 5,
    layers: Sequence[int] | None = None,
    name: str = "engine_kv_head",
) -> list[Check]:
    """Hiding ``pos`` at one KV head of one layer, for every (layer, KV head),
    against eager attention masked by hand at that head's query group
    (``model`` must use eager attention). In float32 also two checks of the
    oracle's power: the engine's row differs, by at least
    :data:`WRONG_POS_FACTOR` x :data:`REL_TOL_ENGINE`, from the oracle hiding
    the *next* KV head, and from one grouping query heads ``h, h + Hkv, ...``
    (interleaved) instead of ``h g .. h g + g - 1`` (contiguous, as
    transformers' ``repeat_kv``)."""
    n_kv, n_layers = anatomy.n_kv_heads(model), anatomy.n_layers(model)
    hq = model.config.num_attention_heads
    g = hq // n_kv
    pairs = [(l, h) for l in (range(n_layers) if layers is None else layers) for h in range(n_kv)]
    res = ForwardInfluenceEngine(model, batch_size=4, kernel=kernel).split(
        ids, SPLIT_N, SPLIT_F, [Ablation((pos,), layers=(l,), kv_heads=(h,)) for l, h in pairs]
    )
    oracle = float32_twin(model)
    exact = np.stack([oracle_layer_kl(oracle, ids, SPLIT_N, SPLIT_F, pos, l, kv_head=h) for l, h in pairs])
    out = [_versus_oracle(name, res.kl, exact, res.precision_floor, model.dtype)]
    smallest = float(res.kl.sum(1).min())
    out.append(Check(name + "_ablated_rows_nonzero", smallest, MIN_ABLATED_KL, below=False))
    if model.dtype in (torch.float32, torch.float64) and n_kv > 1:
        wrong = np.stack(
            [oracle_layer_kl(oracle, ids, SPLIT_N, SPLIT_F, pos, l, kv_head=(h + 1) % n_kv) for l, h in pairs]
        )
        out.append(
            Check(
                name + "_wrong_head_caught",
                min(rel_err(k, w) for k, w in zip(res.kl, wrong)),
                WRONG_POS_FACTOR * REL_TOL_ENGINE,
                below=False,
            )
        )
        if g > 1:
            inter = [oracle_layer_kl(oracle, ids, SPLIT_N, SPLIT_F, pos, l, heads=range(h, hq, n_kv)) for l, h in pairs]
            out.append(
                Check(
                    name + "_interleaved_grouping_caught",
                    min(rel_err(k, w) for k, w in zip(res.kl, inter)),
                    WRONG_POS_FACTOR * REL_TOL_ENGINE,
                    below=False,
                )
            )
    return out


def check_kernels_agree(model: Any, ids: torch.Tensor, mode: str, name: str = "engine_kernels_agree") -> list[Check]:
    """The fused and the matmul kernel give the same KLs (split or sliding,
    with layer- and head-restricted rows); empty where only one kernel runs."""
    if kernels(model) != ["flash", "matmul"]:
        return []
    runs, floors = {}, []
    for kernel in ("flash", "matmul"):
        eng = ForwardInfluenceEngine(model, batch_size=5, kernel=kernel)
        if mode == "split":
            r = eng.split(
                ids,
                SPLIT_N,
                SPLIT_F,
                [Ablation((i,)) for i in range(0, SPLIT_N, 3)] + [Ablation((2, 9), layers=(1,), kv_heads=(1,))],
            )
            runs[kernel], floors = r.kl, floors + [r.precision_floor]
        else:
            a, b = (
                eng.sliding(ids, [0, 4, 5, 17, 30], 9, layers=(0, 2)),
                eng.sliding(ids, [3, 11], 9, layers=(1,), kv_heads=(1,)),
            )
            runs[kernel], floors = np.concatenate([a.kl, b.kl]), floors + [a.precision_floor]
    if model.dtype in (torch.float32, torch.float64):
        return [
            Check(
                name,
                allclose_ratio(runs["flash"], runs["matmul"], REL_TOL_ENGINE, ABS_TOL_KL),
                1.0,
                detail="allclose ratio",
            )
        ]
    return [_versus_oracle(name, runs["flash"], runs["matmul"], np.concatenate(floors), model.dtype)]


def check_batched_equals_single(
    model: Any, ids: torch.Tensor, batch_size: int = 7, name: str = "engine_batched_equals_single"
) -> list[Check]:
    """Batches of ``batch_size`` give the KLs of one ablation per forward (float32)."""
    abl = [Ablation((i,)) for i in range(0, SPLIT_N, 2)]
    one = ForwardInfluenceEngine(model, batch_size=1).split(ids, SPLIT_N, SPLIT_F, abl).kl
    many = ForwardInfluenceEngine(model, batch_size=batch_size).split(ids, SPLIT_N, SPLIT_F, abl).kl
    return [Check(name, allclose_ratio(many, one, REL_TOL_ENGINE, ABS_TOL_KL), 1.0, detail="allclose ratio")]


def check_null_rows(model: Any, ids: torch.Tensor, name: str = "engine_null_rows") -> list[Check]:
    """Null ablations in a batch give KL 0 (float32), and the ablated row between them does not."""
    res = ForwardInfluenceEngine(model, batch_size=3).split(
        ids, SPLIT_N, SPLIT_F, [Ablation(()), Ablation((4,)), Ablation(())]
    )
    value = float(np.abs(res.kl[[0, 2]]).max()) if res.kl[1].sum() > MIN_ABLATED_KL else math.inf
    return [Check(name, value, ABS_TOL_KL, detail=f"ablated row total {res.kl[1].sum():.2e}")]


def check_wrong_position_caught(
    model: Any, ids: torch.Tensor, name: str = "engine_wrong_position_caught"
) -> list[Check]:
    """The 4-D-mask comparison has power: an engine whose RoPE positions are
    off by one differs from the oracle by far more than the tolerance."""
    good = anatomy.position_ids
    anatomy.position_ids = lambda start, n, rows, device: good(start + 1, n, rows, device)
    try:
        res = ForwardInfluenceEngine(model, batch_size=4).split(ids, SPLIT_N, SPLIT_F, [Ablation((3,))])
    finally:
        anatomy.position_ids = good
    exact = oracle_split_kl(float32_twin(model), ids, SPLIT_N, SPLIT_F, [3])
    return [Check(name, rel_err(res.kl[0], exact[0]), WRONG_POS_FACTOR * REL_TOL_ENGINE, below=False)]


# --------------------------------------------------------------------------- #
# Compressed continuation
# --------------------------------------------------------------------------- #


@torch.no_grad()
def check_compressed_continuation(
    model: Any, prompt: torch.Tensor, n_prompt: int, compressor: Any, name: str = "compress_continuation"
) -> list[Check]:
    """A cut cache continued at the true positions equals one full forward
    hiding the dropped columns from the continuation's rows (``compressor``
    must keep the same entries at every layer and head); continuing leaves
    the kept entries untouched; a cache-index position is caught (float32)."""
    from forward_influence.compress import compress_prompt, get_compressor

    cache, _ = compress_prompt(model, prompt[:n_prompt], compressor)
    kept = set(cache.positions[0][0].tolist())
    same = all(set(p[h].tolist()) == kept for p in cache.positions for h in range(p.shape[0]))
    dropped = sorted(set(range(n_prompt)) - kept)
    oracle = float32_twin(model)
    ref = cache_api.full_forward_hiding(oracle, prompt, dropped, n_prompt)[n_prompt:]  # (F, V)
    kv = [(k.clone(), v.clone()) for k, v in cache.kv]
    out = cache.extend(prompt[n_prompt:], all_logits=True)  # (F, V)
    untouched = all(
        torch.equal(k, k2[:, :, : k.shape[2]]) and torch.equal(v, v2[:, :, : v.shape[2]])
        for (k, v), (k2, v2) in zip(kv, cache.kv)
    )
    shift = n_prompt - len(kept) if len(kept) != n_prompt else 1
    wrong = anatomy.logits_from_hidden(model, forwards.continue_forward(model, kv, prompt[n_prompt:], shift).hidden)
    if model.dtype in (torch.float32, torch.float64):
        first = Check(
            name,
            allclose_ratio(out.cpu().numpy(), ref.cpu().numpy(), REL_TOL_LOGITS, REL_TOL_LOGITS),
            1.0,
            detail="allclose ratio" + ("" if same else "; kept sets differ between heads"),
        )
    else:  # floor: the uncut continuation's own distance to the float32 oracle
        full_ref = cache_api.full_forward_hiding(oracle, prompt, None, n_prompt)[n_prompt:]
        full, _ = compress_prompt(model, prompt[:n_prompt], get_compressor("full"))
        floor = centred_kl(full_ref, full.extend(prompt[n_prompt:], all_logits=True)).cpu().numpy()
        err = centred_kl(ref, out).cpu().numpy()
        first = Check(
            name,
            float(np.median(err)) / max(float(np.median(floor)), 1e-30),
            FLOOR_FACTOR,
            detail=f"median KL to the oracle {np.median(err):.2e} / uncut {np.median(floor):.2e}",
        )
    if not same:
        first = Check(first.name, math.inf, first.bound, detail=first.detail)
    out = [first, Check(name + "_kept_untouched", 0.0 if untouched else 1.0, 0.0)]
    if model.dtype in (torch.float32, torch.float64):  # in 16-bit, rounding alone moves logits by more
        out.append(
            Check(
                name + "_wrong_position_caught",
                float((wrong.float() - ref).abs().max()),
                WRONG_POS_MIN_DIFF,
                below=False,
            )
        )
    return out


# --------------------------------------------------------------------------- #
# Fisher estimate
# --------------------------------------------------------------------------- #


def check_fisher_gradient(
    model: Any,
    ids: torch.Tensor,
    n: int = 24,
    f: int = 12,
    at: Sequence[int] = (0, 5, 23),
    name: str = "fisher_gradient_fd",
) -> list[Check]:
    """d log p / d m by autograd against a central difference (step
    :data:`FD_STEP`) at a few prefix positions; use a float64 model."""
    from forward_influence.measurement.fisher import FisherEstimator

    est = FisherEstimator(model)
    pre = forwards.record_prefill(model, ids[: n + f])
    prefix, fut = pre.prefix(n), ids[n : n + f]
    dev, dt = model.device, torch.promote_types(model.dtype, torch.float32)
    y = torch.randint(0, model.config.vocab_size, (f,), generator=torch.Generator().manual_seed(2)).to(dev)
    rows = torch.arange(f, device=dev)

    def loss(m: torch.Tensor) -> torch.Tensor:  # log-likelihood as a function of the weights m
        return est.log_probs(prefix, fut, torch.log(m))[rows, y].sum()

    m = torch.ones(n, dtype=dt, device=dev, requires_grad=True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(loss(m), m)
    worst = 0.0
    for i in at:
        e = torch.zeros(n, dtype=dt, device=dev)
        e[i] = FD_STEP
        with torch.no_grad():
            one = torch.ones(n, dtype=dt, device=dev)
            fd = float((loss(one + e) - loss(one - e)) / (2 * FD_STEP))
        worst = max(worst, abs(float(g[i]) - fd) / abs(fd))
    return [Check(name, worst, REL_TOL_GRAD)]


def check_fisher_ablation(
    model: Any,
    ids: torch.Tensor,
    n: int = 24,
    f: int = 12,
    at: Sequence[int] = (0, 7, 23),
    name: str = "fisher_m0_is_ablation",
) -> list[Check]:
    """The Fisher forward with ``m_i = 0`` (bias ``-inf``) is the engine's exact ablation of ``i``."""
    from forward_influence.measurement.fisher import FisherEstimator

    pre = forwards.record_prefill(model, ids[: n + f])
    est = FisherEstimator(model)
    exact = ForwardInfluenceEngine(model).split(ids, n, f, [Ablation((i,)) for i in at]).kl.sum(1)
    dt = torch.promote_types(model.dtype, torch.float32)
    worst = 0.0
    with torch.no_grad():
        lp0 = est.log_probs(pre.prefix(n), ids[n : n + f], torch.zeros(n, dtype=dt, device=model.device))
        for k, i in enumerate(at):
            b = torch.zeros(n, dtype=dt, device=model.device)
            b[i] = -float("inf")
            lp = est.log_probs(pre.prefix(n), ids[n : n + f], b)
            kl = float((lp0.exp() * (lp0 - lp)).sum())
            worst = max(worst, abs(kl - exact[k]) / exact[k])
    return [Check(name, worst, REL_TOL_ABLATION)]
