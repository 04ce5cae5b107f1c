"""KL and entropy arithmetic (tier 1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import entropy as sp_entropy

from forward_influence.measurement.kl import centred_kl, entropy

# Relative error allowed, by the size of the logit shift (KL ~ scale^2 / 2):
# the float32 elementwise arithmetic (see forward_influence.measurement.kl).
REL_TOL_BY_SCALE = {1e-1: 1e-4, 1e-3: 3e-4, 1e-4: 3e-3, 1e-5: 2e-2}


@pytest.mark.parametrize("scale", sorted(REL_TOL_BY_SCALE))
def test_centred_kl_accurate_for_tiny_shifts(scale):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(8, 4096, generator=g) * 4
    dz = torch.randn(8, 4096, generator=g) * scale
    zq = z + dz  # the float32 inputs are what the exact value is taken of
    p = torch.softmax(z.double(), -1)
    exact = (p * (torch.log_softmax(z.double(), -1) - torch.log_softmax(zq.double(), -1))).sum(-1)
    got = centred_kl(z, zq)
    assert got.dtype == torch.float64
    rel = ((got - exact).abs() / exact).max().item()
    assert rel < REL_TOL_BY_SCALE[scale], (scale, rel, exact.min().item())


#: the centred KL of two float32 logit rows against float64, KLs near 5e-9 (measured 4e-4; the plain sum: 46x)
REL_TOL_CENTRED = 0.002


def test_centred_kl_is_accurate_where_plain_float32_is_not():
    """The reason for the centred form: on float32 logits where the plain sum's KL is off by more than 1%
    (KLs near 1e-8), the package's KL stays within REL_TOL_CENTRED of the float64 value."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(8, 4096, generator=g) * 4
    dz = torch.randn(8, 4096, generator=g) * 1e-4
    zq = z + dz  # float32: the exact KL below is that of these two float32 rows
    lp, lq = torch.log_softmax(z, -1), torch.log_softmax(zq, -1)
    naive = (lp.exp() * (lp - lq)).sum(-1).double()
    p = torch.softmax(z.double(), -1)
    exact = (p * (torch.log_softmax(z.double(), -1) - torch.log_softmax(zq.double(), -1))).sum(-1)
    assert ((naive - exact).abs() / exact).max().item() > 0.01  # the plain form fails here
    ours = centred_kl(z, zq).double()
    assert ((ours - exact).abs() / exact).max().item() < REL_TOL_CENTRED


def test_kl_shift_invariant_and_zero():
    z = torch.randn(3, 50)
    assert centred_kl(z, z).abs().max() == 0
    assert centred_kl(z, z + 7.0).abs().max() < 1e-12


def test_entropy_matches_scipy():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(20, 300, generator=g) * 3
    want = sp_entropy(torch.softmax(z.double(), -1).numpy(), axis=-1)
    np.testing.assert_allclose(entropy(z).numpy(), want, rtol=1e-5)


def test_topk_entropy_on_hand_made_distribution():
    p = torch.tensor([0.5, 0.2, 0.2, 0.05, 0.05])
    # top-3 renormalised: [5/9, 2/9, 2/9]
    q = np.array([5, 2, 2]) / 9
    assert entropy(p.log(), topk=3).item() == pytest.approx(float(-(q * np.log(q)).sum()), rel=1e-6)
    assert entropy(p.log(), topk=10).item() == pytest.approx(float(sp_entropy(p.numpy())), rel=1e-6)
