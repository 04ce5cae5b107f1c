"""How far a run's numbers move with the thread count and the batching (recorded in ``run.json``).

The engine is exact up to floating-point rounding, and rounding depends on how a
computation is laid out: the order in which a CPU's threads sum a product, and
in sliding mode which tokens a batch recomputes (every row recomputes the
stretch from its batch's first source on, so the same source read in another
batch sees cache entries computed in another forward). Two valid runs therefore
agree to rounding, not bitwise, once they batch differently (a Ray worker's
memory-sized batch against the single process's).

How large is "to rounding"? A KL is ``~ 0.5 E_p[y^2]`` in the logit shift ``y``;
rounding adds ``e`` to ``y``, so ``sqrt(KL)`` moves by about ``|e|``, whatever
the KL. The run's *precision floor* is the KL that one rounding step's
perturbation produces (:mod:`forward_influence.measurement.engine`), so the
rule is ``|sqrt(KL_a) - sqrt(KL_b)| <= C sqrt(floor)`` per cell (:func:`kl_close`,
``C`` = :data:`SQRT_C`), and for a source's total FI over ``n`` targets, by
Cauchy-Schwarz, ``|FI_a - FI_b| <= 2 C sqrt(floor) sqrt(n FI) + n C^2 floor``
(:func:`fi_close`). Relative to the KL this is large for small KLs (0.3% at
KL ~ 1e-3 in float32) and small for large ones.

Each run checks the rule on itself: the first :data:`PROBE_ABLATIONS` sources
of its first document are measured three times (as one batch; as one batch
with another thread count, 1 or 2; one at a time), and ``run.json``'s
``reproducibility`` records, per change, the largest ``|d sqrt(KL)| /
sqrt(floor)`` and the largest relative change of total FI, with ``C`` and the
seconds it took. ``scripts/compare_runs.py --recorded`` and the distributed
tests compare runs by this rule. Measured on the 2-core CPU (SmolLM2-135M,
float32): the thread count changes nothing (bitwise) at equal batching; in
sliding mode, batch 12 against batch 1 over 13 sources x 128 targets gives
``|d sqrt(KL)| <= 1.02 sqrt(floor)`` (99th percentile 0.42) and total FI within
2.7e-5 relative; split mode is batch-invariant to 1e-8 on the CPU.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import torch

from forward_influence.measurement.engine import ForwardInfluenceEngine
from forward_influence.measurement.strategies import SplitFisher, Strategy, Unit, strategy_for

#: Sources re-measured by the probe (three times each).
PROBE_ABLATIONS = 3
#: ``C`` of the rule: two runs agree when ``|sqrt(KL_a) - sqrt(KL_b)| <= C sqrt(precision floor)``.
SQRT_C = 3.0


def kl_close(a: np.ndarray, b: np.ndarray, floor: float, c: float = SQRT_C) -> np.ndarray:
    """Cells of two KL arrays that agree to rounding (module docstring).

    >>> bool(kl_close(np.array([1e-3]), np.array([1e-3 + 2e-9]), 1e-12)[0])
    True
    >>> bool(kl_close(np.array([1e-3]), np.array([1.001e-3]), 1e-12)[0])
    False
    """
    return np.abs(np.sqrt(np.maximum(a, 0)) - np.sqrt(np.maximum(b, 0))) <= c * np.sqrt(floor)


def fi_close(a: np.ndarray, b: np.ndarray, n_targets: np.ndarray, floor: float, c: float = SQRT_C) -> np.ndarray:
    """Totals over ``n_targets`` cells that agree to rounding (module docstring)."""
    e = c * np.sqrt(floor)
    return np.abs(a - b) <= 2 * e * np.sqrt(n_targets * np.maximum(np.maximum(a, b), 0)) + n_targets * e * e


def _differences(a: Any, b: Any, floor: float) -> dict[str, float]:
    """How two influence tables of the same sources differ, in the rule's terms."""
    ka, kb = a["kl"].to_numpy(float), b["kl"].to_numpy(float)
    fa = a.groupby("source_pos", sort=False)["kl"].sum().to_numpy()
    fb = b.groupby("source_pos", sort=False)["kl"].sum().to_numpy()
    scale = np.maximum(np.abs(fa), np.abs(fb))
    with np.errstate(invalid="ignore", divide="ignore"):
        fi_rel = np.where(scale > 0, np.abs(fa - fb) / scale, 0.0)
    dsqrt = np.abs(np.sqrt(np.maximum(ka, 0)) - np.sqrt(np.maximum(kb, 0)))
    return {
        "sqrt_kl_over_floor_max": float(dsqrt.max() / np.sqrt(floor)) if floor > 0 else float("nan"),
        "fi_total_rel_max": float(fi_rel.max()),
    }


def thread_noise(
    engine: ForwardInfluenceEngine, strategy: Strategy, unit: Unit, prefill: Any, floor: np.ndarray | None
) -> dict[str, Any] | None:
    """The probe of the module docstring on ``unit`` (None for an estimate, or a unit without
    sources); ``floor``: the unit's precision floor per scored position."""
    if isinstance(strategy, SplitFisher) or floor is None or not len(floor):
        return None
    if unit.split is not None:
        sources = strategy.sources(unit.doc, unit.split)[:PROBE_ABLATIONS]
        probe_strategy = strategy_for(dataclasses.replace(strategy.cfg, positions=tuple(sources)))
        probe_unit = unit
    else:
        sources = list(unit.sources[:PROBE_ABLATIONS])
        probe_strategy, probe_unit = strategy, dataclasses.replace(unit, sources=tuple(sources))
    if not sources:
        return None
    kw = dict(kernel=engine.kernel, precision_floor=False)  # the probe compares ablations, not floors
    together = ForwardInfluenceEngine(engine.model, batch_size=len(sources), **kw)
    alone = ForwardInfluenceEngine(engine.model, batch_size=1, **kw)
    threads = torch.get_num_threads()
    other = 1 if threads > 1 else 2
    t0 = time.perf_counter()
    try:
        a = probe_strategy.measure(together, probe_unit, prefill, False).influence
        c = probe_strategy.measure(alone, probe_unit, prefill, False).influence
        torch.set_num_threads(other)
        b = probe_strategy.measure(together, probe_unit, prefill, False).influence
    finally:
        torch.set_num_threads(threads)
    pf = float(np.max(floor))
    thr, bat = _differences(a, b, pf), _differences(a, c, pf)
    return {
        "rule": "|sqrt(KL_a) - sqrt(KL_b)| <= sqrt_c * sqrt(precision_floor_max)",
        "sqrt_c": SQRT_C,
        "ablations": len(sources),
        "threads": [threads, other],
        "batch_sizes": [len(sources), 1],
        "precision_floor_max": pf,
        **{f"threads_{k}": v for k, v in thr.items()},
        **{f"batch_{k}": v for k, v in bat.items()},
        "seconds": round(time.perf_counter() - t0, 3),
    }
