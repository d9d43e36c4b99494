"""Sources with several orientations sharing one variance; posterior variance."""

import numpy as np
import pytest
import torch

from mne_unfolded_sbl.core.network import UnfoldedSBL
from mne_unfolded_sbl.core.solver import (convex_bounding, covariance_statistic,
                                          posterior_variance, prepare)
from reference import champagne_grouped_numpy, posterior_covariance_numpy


@pytest.fixture(scope="module")
def free_problem():
    """24 sensors, 40 free-orientation sources (120 columns), 2 active."""
    rng = np.random.default_rng(5)
    M, Nv, T = 24, 40, 120
    L = rng.standard_normal((M, 3 * Nv))
    X = np.zeros((3 * Nv, T))
    for v in (4, 27):
        X[3 * v:3 * v + 3] = rng.standard_normal((3, T)) * [[3.0], [1.0], [0.5]]
    lam = 0.05 * np.mean((L @ X) ** 2) * rng.uniform(0.5, 2.0, M)
    Y = L @ X + rng.standard_normal((M, T)) * np.sqrt(lam)[:, None]
    return L, Y, lam


@pytest.mark.parametrize("learn_noise", [False, True])
def test_grouped_solver_equals_numpy_reference(free_problem, learn_noise):
    """One variance per 3 columns: the core equals a plain NumPy Champagne."""
    L, Y, lam = free_problem
    Lt = torch.as_tensor(L, dtype=torch.float64)
    Cy = covariance_statistic(torch.as_tensor(Y[None], dtype=torch.float64))
    noise_var = torch.as_tensor(lam, dtype=torch.float64)
    prob = prepare(Lt, Cy, noise_var, null_space=None, n_orient=3)
    assert prob.state.gamma.shape == (1, 40)
    g0, l0 = prob.to_input_units(prob.state.gamma, prob.state.lam)
    res = convex_bounding(Lt, Cy, learn_noise=learn_noise, noise_var=noise_var,
                          max_iter=12, n_orient=3)
    g_ref, l_ref, _ = champagne_grouped_numpy(L, Y, g0[0].numpy(), l0[0].numpy(),
                                              12, learn_noise, 3)
    np.testing.assert_allclose(res.gamma[0].numpy(), g_ref, rtol=1e-8,
                               atol=1e-10 * g_ref.max())
    np.testing.assert_allclose(res.lam[0].numpy(), l_ref, rtol=1e-8)
    # the two active vertices carry the largest variances
    assert set(np.argsort(res.gamma[0].numpy())[-2:]) == {4, 27}
    # the network runs the same grouped updates (untrained = classical)
    net = UnfoldedSBL(12, "deep-cb", learn_noise).to(torch.float64)
    out = net(Lt, Cy, noise_var, n_orient=3)
    torch.testing.assert_close(out.gamma, res.gamma, rtol=1e-9, atol=0)


def test_grouped_with_one_orientation_is_the_point_solver(free_problem):
    L, Y, lam = free_problem
    Lt = torch.as_tensor(L, dtype=torch.float64)
    Cy = covariance_statistic(torch.as_tensor(Y[None], dtype=torch.float64))
    a = convex_bounding(Lt, Cy, max_iter=5)
    b = convex_bounding(Lt, Cy, max_iter=5, n_orient=1)
    torch.testing.assert_close(a.gamma, b.gamma, rtol=0, atol=0)
    with pytest.raises(ValueError, match="multiple"):
        convex_bounding(Lt[:, :119], Cy, max_iter=1, n_orient=3)


@pytest.mark.parametrize("n_orient", [1, 3])
def test_posterior_variance_equals_dense_covariance(free_problem, n_orient):
    L, _, lam = free_problem
    rng = np.random.default_rng(1)
    gamma = rng.uniform(0.01, 2.0, L.shape[1] // n_orient)
    var = posterior_variance(torch.as_tensor(L), torch.as_tensor(gamma[None]),
                             torch.as_tensor(lam[None]))[0].numpy()
    dense = posterior_covariance_numpy(L, np.repeat(gamma, n_orient), lam)
    np.testing.assert_allclose(var, np.diag(dense), rtol=1e-9,
                               atol=1e-12 * gamma.max())
    # below the prior variance, and ~0 for a pruned source
    assert np.all(var <= np.repeat(gamma, n_orient) + 1e-12)
    gamma[0] = 0.0
    var0 = posterior_variance(torch.as_tensor(L), torch.as_tensor(gamma[None]),
                              torch.as_tensor(lam[None]))[0].numpy()
    assert np.all(var0[:n_orient] == 0)


def test_network_posterior_variance_in_input_units(free_problem):
    """The network's variance (normalised internally) is in the input units."""
    L, Y, lam = free_problem
    Lt = torch.as_tensor(L, dtype=torch.float64)
    Cy = covariance_statistic(torch.as_tensor(1e-3 * Y[None], dtype=torch.float64))
    out = UnfoldedSBL(4, "cb", True).to(torch.float64)(Lt, Cy, n_orient=3)
    direct = posterior_variance(Lt, out.gamma, out.lam)
    torch.testing.assert_close(out.posterior_variance(), direct, rtol=1e-9,
                               atol=1e-12 * float(direct.max()))
