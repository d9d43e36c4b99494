"""The multi-scale (smoothed-atom) source model of the core."""

import numpy as np
import pytest
import torch
from scipy import sparse

from mne_unfolded_sbl.core.multiscale import (MultiScaleBasis, diffusion_operator,
                                              orders_for_extents)
from mne_unfolded_sbl.core.solver import (convex_bounding, covariance_statistic,
                                          posterior_kernel)
from reference import posterior_covariance_numpy


def _grid(n):
    """4-neighbour adjacency of an n x n grid and its coordinates (mm)."""
    idx = np.arange(n * n).reshape(n, n)
    rows = np.r_[idx[:, :-1].ravel(), idx[:-1, :].ravel()]
    cols = np.r_[idx[:, 1:].ravel(), idx[1:, :].ravel()]
    A = sparse.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n * n,) * 2)
    xy = np.stack(np.meshgrid(np.arange(n), np.arange(n), indexing="ij"), -1)
    return (A + A.T).tocsr(), xy.reshape(-1, 2) * 5.0


def test_diffusion_and_atoms():
    A, _ = _grid(6)
    G = diffusion_operator(A)
    assert abs(G - G.T).max() < 1e-15
    basis = MultiScaleBasis(A, (0, 2, 1))
    assert basis.orders == (0, 1, 2) and basis.n_atoms == 3 * 36
    S = basis.S.toarray()
    np.testing.assert_allclose(S[:, :36], np.eye(36))  # order 0: the vertices
    np.testing.assert_allclose(np.linalg.norm(S, axis=0), 1.0)
    np.testing.assert_allclose(S[:, 36:72], (G @ np.eye(36)) /
                               np.linalg.norm(G @ np.eye(36), axis=0))
    # a 2-step atom reaches exactly the vertices within two grid steps
    centre = 14
    reach = np.flatnonzero(S[:, 72 + centre] > 0)
    d = np.abs(np.divmod(reach, 6)[0] - 2) + np.abs(np.divmod(reach, 6)[1] - 2)
    assert d.max() == 2 and len(reach) == 13
    with pytest.raises(ValueError, match="distinct"):
        MultiScaleBasis(A, (1, 1))
    assert orders_for_extents((0, 10, 20), 10.0) == (0, 1, 5)


def test_mapping_and_vertex_variance():
    A, _ = _grid(5)
    basis = MultiScaleBasis(A, (0, 1, 3))
    rng = np.random.default_rng(0)
    L = rng.standard_normal((12, 25))
    L_eff = basis.leadfield(L)
    np.testing.assert_allclose(L_eff, L @ basis.S.toarray())
    Xa = rng.standard_normal((basis.n_atoms, 4))
    np.testing.assert_allclose(basis.to_vertices(Xa), basis.S.toarray() @ Xa)
    gamma = rng.uniform(0.1, 1.0, basis.n_atoms)
    lam = rng.uniform(0.5, 1.0, 12)
    K = posterior_kernel(torch.as_tensor(L_eff), torch.as_tensor(gamma[None]),
                         torch.as_tensor(lam[None]))[0].numpy()
    var = basis.vertex_variance(gamma, K, L_eff)
    S = basis.S.toarray()
    dense = S @ posterior_covariance_numpy(L_eff, gamma, lam) @ S.T
    np.testing.assert_allclose(var, np.diag(dense), rtol=1e-9, atol=1e-12)


def test_extended_patch_is_recovered_better_than_with_points():
    """On a smooth patch the multi-scale model beats point sources."""
    A, xy = _grid(16)
    rng = np.random.default_rng(3)
    M, T = 32, 80  # 256 sources: the 16 x 16 grid
    # a smooth random 'lead field': sensors see blurred regions
    sens = rng.uniform(0, 75, (M, 2))
    L = np.exp(-((sens[:, None] - xy[None]) ** 2).sum(-1) / (2 * 20.0 ** 2))
    L = L + 0.05 * rng.standard_normal(L.shape)
    centre = np.array([40.0, 35.0])
    patch = np.exp(-((xy - centre) ** 2).sum(-1) / (2 * 10.0 ** 2))
    X = patch[:, None] * rng.standard_normal(T)[None]
    signal = L @ X
    Y = signal + 0.1 * signal.std() * rng.standard_normal((M, T))
    Cy = covariance_statistic(torch.as_tensor(Y[None]))
    lam = torch.full((M,), float((0.1 * signal.std()) ** 2), dtype=torch.float64)

    def estimate(Lmat, to_vertices):
        Lt = torch.as_tensor(Lmat)
        res = convex_bounding(Lt, Cy, learn_noise=False, noise_var=lam,
                              max_iter=100)
        K = posterior_kernel(Lt, res.gamma, res.lam[0:1])[0].numpy()
        return to_vertices(K @ Y)

    basis = MultiScaleBasis(A, (0, 2, 6, 12))
    X_point = estimate(L, lambda x: x)
    X_ms = estimate(basis.leadfield(L), basis.to_vertices)

    def err(Xe):
        return np.linalg.norm(Xe - X) ** 2 / np.linalg.norm(X) ** 2

    def corr(Xe):
        return np.corrcoef(np.linalg.norm(Xe, axis=1), patch)[0, 1]

    # measured: rMSE 0.008 vs 4.5, power-map correlation 0.999 vs 0.54
    assert err(X_ms) < 0.05 and err(X_ms) < 0.1 * err(X_point)
    assert corr(X_ms) > 0.9 > corr(X_point)
