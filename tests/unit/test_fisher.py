"""The Fisher estimate of FI (tier 1: tiny random models; one CLI-level run on the embedded model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_checks, tiny_model

from forward_influence.hf import forwards
from forward_influence.measurement.fisher import FisherEstimator, exact_fisher
from forward_influence.tools import checks

N, F = 24, 12
REL_TOL_EPS2 = 0.05  # KL(m_i = 1 - eps) / eps^2 vs the Fisher term, eps = 1e-2


@pytest.fixture(scope="module")
def setup():
    model = tiny_model().double()
    ids = torch.randint(0, 96, (N + F,), generator=torch.Generator().manual_seed(1))
    pre = forwards.record_prefill(model, ids)
    return model, ids, pre


def kl_rows(lp0: torch.Tensor, lp1: torch.Tensor) -> torch.Tensor:
    return (lp0.exp() * (lp0 - lp1)).sum(-1)


def test_gradient_wrt_m_equals_finite_difference(setup):
    model, ids, _ = setup
    assert_checks(checks.check_fisher_gradient(model, ids, N, F, at=(0, 5, N - 1)))


def test_m_zero_is_the_exact_ablation():
    ids = torch.randint(0, 96, (N + F,), generator=torch.Generator().manual_seed(1))
    assert_checks(checks.check_fisher_ablation(tiny_model(), ids, N, F, at=(0, 7, N - 1)))


def test_small_perturbation_matches_fisher_times_eps_squared(setup):
    model, ids, pre = setup
    est = FisherEstimator(model)
    fisher = exact_fisher(model, pre.prefix(N), ids[N:])  # ½ Σ_t E[g²]
    eps = 1e-2
    with torch.no_grad():
        lp0 = est.log_probs(pre.prefix(N), ids[N:], torch.zeros(N, dtype=torch.float64))
        for i in (0, 3, 11, N - 1):
            b = torch.zeros(N, dtype=torch.float64)
            b[i] = np.log1p(-eps)
            kl = float(kl_rows(lp0, est.log_probs(pre.prefix(N), ids[N:], b)).sum())
            assert abs(kl / eps**2 - fisher[i]) <= REL_TOL_EPS2 * fisher[i], (i, kl / eps**2, fisher[i])


def test_sampling_converges_to_the_expectation(setup):
    model, ids, pre = setup
    fisher = exact_fisher(model, pre.prefix(N), ids[N:])
    err = {}
    for s in (4, 256):
        r = FisherEstimator(model, samples=s, seed=3).split(ids, N, F, prefill=pre)
        z = (r.kl[:, 0] - fisher) / r.stderr[:, 0]
        err[s] = np.median(np.abs(r.kl[:, 0] / fisher - 1))
        if s == 256:
            assert np.mean(np.abs(z) < 3) >= 0.9  # the reported standard errors are honest
    assert err[256] < err[4] and err[256] < 0.15, err


def test_topk_with_the_whole_vocabulary_is_exact_up_to_signs(setup):
    model, ids, pre = setup
    fisher = exact_fisher(model, pre.prefix(N), ids[N:])
    runs = [
        FisherEstimator(model, samples=96, targets="topk", seed=k).split(ids, N, F, prefill=pre).kl[:, 0]
        for k in range(6)
    ]
    mean = np.mean(runs, 0)  # only the random signs remain random
    assert np.median(np.abs(mean / fisher - 1)) < 0.1


def test_blocks_add_up_and_layer_restriction(setup):
    model, ids, pre = setup
    one = exact_fisher(model, pre.prefix(N), ids[N:], layers=(1,))
    full = exact_fisher(model, pre.prefix(N), ids[N:])
    assert (one < full).mean() > 0.8  # one layer's weights matter less than all layers'
    r = FisherEstimator(model, samples=2, blocks=3).split(ids, N, F, prefill=pre)
    assert r.kl.shape == (N, 3) and [b - a for a, b in r.block_bounds] == [4, 4, 4]
