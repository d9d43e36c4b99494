"""The solver core and the unfolded network against independent references."""

import numpy as np
import pytest
import torch
from mne.inverse_sparse._gamma_map import _gamma_map_opt

from mne_unfolded_sbl.core.network import MODELS, UnfoldedSBL
from mne_unfolded_sbl.core.solver import (NullSpace, convex_bounding,
                                     covariance_statistic, hard_threshold,
                                     noise_stats, precision, model_covariance,
                                     prepare, source_stats)

from reference import average_reference, champagne_numpy, focal_problem


def _torch(*arrays, dtype=torch.float64):
    return [torch.as_tensor(a, dtype=dtype) for a in arrays]


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    return focal_problem(rng)


def _start(L, Y, noise_var, noise_init=0.1, null_space=None):
    """The solver's starting point, in input units, for the reference."""
    Lt, Yt = _torch(L, Y[None])
    nv = None if noise_var is None else torch.as_tensor(noise_var)
    prob = prepare(Lt, covariance_statistic(Yt), nv, noise_init, null_space)
    g0, l0 = prob.to_input_units(prob.state.gamma, prob.state.lam)
    return g0[0].numpy(), l0[0].numpy()


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("learn_noise", [True, False])
def test_untrained_network_equals_numpy_champagne(problem, model, learn_noise):
    """Every correction family starts as the classical solver (float64)."""
    L, X, Y, lam, _ = problem
    M, N = L.shape
    nv = None if learn_noise else lam
    net = UnfoldedSBL(25, model, learn_noise, n_sources=N, n_sensors=M).double()
    Lt, Yt = _torch(L, Y[None])
    with torch.no_grad():
        out = net(Lt, covariance_statistic(Yt),
                  None if nv is None else torch.as_tensor(nv))
        Xbar = out.posterior_mean(Yt)[0].numpy()
    g0, l0 = _start(L, Y, nv)
    g_ref, l_ref, _, _ = champagne_numpy(L, Y, g0, l0, 25, learn_noise)
    np.testing.assert_allclose(out.gamma[0].numpy(), g_ref, rtol=1e-9,
                               atol=1e-11 * g_ref.max())
    np.testing.assert_allclose(out.lam[0].numpy(), l_ref, rtol=1e-9)
    sigma = np.diag(l_ref) + (L * g_ref) @ L.T
    X_ref = g_ref[:, None] * (L.T @ np.linalg.solve(sigma, Y))
    np.testing.assert_allclose(Xbar, X_ref, rtol=1e-8,
                               atol=1e-10 * np.abs(X_ref).max())


def test_trained_corrections_change_the_update(problem):
    """Non-zero corrections act (the equality above is not vacuous)."""
    L, _, Y, _, _ = problem
    net = UnfoldedSBL(5, "deep-cb", True).double()
    Lt, Yt = _torch(L, Y[None])
    Cy = covariance_statistic(Yt)
    with torch.no_grad():
        base = net(Lt, Cy).gamma.clone()
        net.layers[0].source_correction.net[-1].bias.fill_(0.3)
        moved = net(Lt, Cy).gamma
    assert not torch.allclose(base, moved)
    assert len(list(net.layers[-1].parameters())) == 0  # last layer classical


@pytest.mark.parametrize("learn_noise", [True, False])
def test_cost_never_increases(problem, learn_noise):
    L, _, Y, lam, _ = problem
    Lt, Yt = _torch(L, Y[None])
    nv = None if learn_noise else torch.as_tensor(lam)
    res = convex_bounding(Lt, covariance_statistic(Yt), learn_noise=learn_noise,
                          noise_var=nv, max_iter=200)
    cost = res.cost[:, 0].numpy()
    assert len(cost) == 201
    assert np.all(np.diff(cost) <= 1e-10 * np.abs(cost[:-1]))
    assert cost[-1] < cost[0] - 1.0  # it does descend
    # and the reference computes the same cost trajectory up to a constant
    # (the package's cost is on the normalised problem)
    g0, l0 = _start(L, Y, None if learn_noise else lam)
    _, _, c_ref, _ = champagne_numpy(L, Y, g0, l0, 200, learn_noise)
    np.testing.assert_allclose(np.diff(cost), np.diff(c_ref), rtol=1e-6,
                               atol=1e-9)


def test_statistics_from_cy_equal_statistics_from_y(problem):
    L, _, Y, _, _ = problem
    rng = np.random.default_rng(1)
    gamma = rng.uniform(0.1, 2, L.shape[1])
    lam = rng.uniform(0.5, 2, L.shape[0])
    Lt, Yt, gt, lt = _torch(L, Y[None], gamma[None], lam[None])
    Cy = covariance_statistic(Yt)
    prec = precision(model_covariance(Lt, gt), lt)
    st = source_stats(Lt, Cy, gt, prec)
    ns = noise_stats(Cy, lt, prec)
    W = np.linalg.inv(np.diag(lam) + (L * gamma) @ L.T)
    xbar = gamma[:, None] * (L.T @ W @ Y)
    np.testing.assert_allclose(st.a[0].numpy(), np.mean(xbar ** 2, 1), rtol=1e-9)
    np.testing.assert_allclose(st.b[0].numpy(), np.diag(L.T @ W @ L), rtol=1e-9)
    resid = Y - L @ xbar
    np.testing.assert_allclose(ns.r[0].numpy(), np.mean(resid ** 2, 1), rtol=1e-9)
    np.testing.assert_allclose(ns.c[0].numpy(), np.diag(W), rtol=1e-9)


def test_batch_equals_one_by_one():
    rng = np.random.default_rng(2)
    L, _, Y0, _, _ = focal_problem(rng)
    Ys = [Y0] + [focal_problem(np.random.default_rng(s))[2] for s in (3, 4)]
    Lt = torch.as_tensor(L)
    Yb = torch.as_tensor(np.stack(Ys))
    net = UnfoldedSBL(25, "cb", True).double()
    with torch.no_grad():
        batch = net(Lt, covariance_statistic(Yb)).gamma
        single = torch.cat([net(Lt, covariance_statistic(Yb[i:i + 1])).gamma
                            for i in range(3)])
    torch.testing.assert_close(batch, single, rtol=1e-10, atol=0)


@pytest.mark.parametrize("learn_noise", [True, False])
def test_float32_agrees_with_float64(problem, learn_noise):
    """float32 products (float64 factorisation) stay within 1e-3 relative."""
    L, _, Y, lam, _ = problem
    out = {}
    for dt in (torch.float32, torch.float64):
        Lt, Yt = _torch(L, Y[None], dtype=dt)
        nv = None if learn_noise else torch.as_tensor(lam, dtype=dt)
        net = UnfoldedSBL(25, "cb", learn_noise).to(dt)
        with torch.no_grad():
            out[dt] = net(Lt, covariance_statistic(Yt), nv).posterior_mean(Yt)
    x32, x64 = out[torch.float32].double(), out[torch.float64]
    rel = torch.linalg.norm(x32 - x64) / torch.linalg.norm(x64)
    assert rel < 1e-3


@pytest.mark.parametrize("c", [1e-12, 1e-6, 1e-3, 1.0, 1e3, 1e6])
@pytest.mark.parametrize("learn_noise", [True, False])
def test_scale_equivariance(problem, c, learn_noise):
    L, _, Y, lam, _ = problem
    Lt = torch.as_tensor(L)
    res = {}
    for scale in (1.0, c):
        Yt = torch.as_tensor(scale * Y[None])
        nv = None if learn_noise else torch.as_tensor(scale ** 2 * lam)
        net = UnfoldedSBL(25, "cb", learn_noise).double()
        with torch.no_grad():
            res[scale] = net(Lt, covariance_statistic(Yt), nv).posterior_mean(Yt)
    x1, xc = res[1.0][0].numpy(), res[c][0].numpy()
    np.testing.assert_allclose(xc, c * x1, rtol=1e-7, atol=1e-9 * c * np.abs(x1).max())
    power = lambda x: np.sqrt((x ** 2).mean(1))  # noqa: E731
    sup1 = power(x1) > 0.05 * power(x1).max()
    supc = power(xc) > 0.05 * power(xc).max()
    np.testing.assert_array_equal(sup1, supc)


def _support(power, rel=0.05):
    return set(np.flatnonzero(power > rel * power.max()))


def test_converged_solver_recovers_support_and_agrees_with_gamma_map():
    """Well-posed focal case: the true support, as MNE's gamma_map finds it."""
    rng = np.random.default_rng(5)
    L, X, Y, lam, support = focal_problem(rng, M=40, N=150, T=200, n_active=3,
                                          snr_scale=0.01, hetero=False)
    alpha = lam[0]
    Lt, Yt = _torch(L, Y[None])
    res = convex_bounding(Lt, covariance_statistic(Yt), learn_noise=False,
                          noise_var=torch.full((40,), alpha), max_iter=5000,
                          tol=1e-10)
    assert bool(res.converged.all())
    gamma = res.gamma[0].numpy()
    ours = _support(gamma)
    assert ours == set(support)
    # MNE's gamma_map, convex-bounding update (update_mode=2), same noise
    x_gm, active = _gamma_map_opt(Y.copy(), L.copy(), alpha, maxit=10000,
                                  tol=1e-8, update_mode=2)
    p = np.zeros(L.shape[1])
    p[active] = np.sqrt((x_gm ** 2).mean(1))
    assert _support(p) == ours
    # and the joint solver finds the same sources without being told the noise
    joint = convex_bounding(Lt, covariance_statistic(Yt), learn_noise=True,
                            max_iter=5000, tol=1e-10)
    assert _support(joint.gamma[0].numpy()) == set(support)


def test_hard_threshold():
    g = torch.tensor([[1.0, 1e-2, 1e-4, 0.5]], dtype=torch.float64)
    np.testing.assert_array_equal(hard_threshold(g, 1e-3).numpy(),
                                  [[1.0, 1e-2, 0.0, 0.5]])
    assert hard_threshold(g, None) is g


def test_trajectory_has_one_entry_per_layer(problem):
    L, _, Y, _, _ = problem
    Lt, Yt = _torch(L, Y[None])
    net = UnfoldedSBL(7, "deep-cb", True).double()
    with torch.no_grad():
        out = net(Lt, covariance_statistic(Yt), return_trajectory=True)
    assert len(out.trajectory) == 7
    assert out.trajectory[0]["delta_source"].shape == (1, L.shape[1])
    assert out.trajectory[-1]["delta_source"] is None  # classical last layer
    costs = torch.stack([t["cost"][0] for t in out.trajectory])
    assert torch.all(costs[1:] <= costs[:-1] + 1e-9)


def test_source_only_needs_noise(problem):
    L, _, Y, _, _ = problem
    Lt, Yt = _torch(L, Y[None])
    with pytest.raises(ValueError, match="noise_var"):
        UnfoldedSBL(3, "cb", learn_noise=False)(Lt, covariance_statistic(Yt))
    with pytest.raises(ValueError, match="model must be one of"):
        UnfoldedSBL(3, "deep-xx")


def test_runaway_corrections_stay_finite(problem):
    """Corrections pushing every layer up/down cannot overflow Sigma_y."""
    L, _, Y, _, _ = problem
    Lt, Yt = _torch(L, Y[None], dtype=torch.float32)
    Cy = covariance_statistic(Yt)
    for sign in (1.0, -1.0):
        net = UnfoldedSBL(25, "deep-cb", True)
        with torch.no_grad():
            for layer in net.layers[:-1]:
                layer.source_correction.net[-1].bias.fill_(sign * 100.0)
                layer.noise_correction.net[-1].bias.fill_(-sign * 100.0)
            out = net(Lt, Cy)
            X = out.posterior_mean(Yt)
        assert torch.isfinite(out.gamma).all() and torch.isfinite(X).all()
        assert torch.isfinite(out.lam).all() and (out.lam > 0).all()


# ---------------------------------------------------------------------------
# referenced data: the null space of the average reference / projectors


@pytest.fixture(scope="module")
def referenced():
    L, X, Y, lam, support = focal_problem(np.random.default_rng(5))
    Lr, Yr, Q = average_reference(L, Y)
    return Lr, Yr, lam, Q


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("learn_noise", [True, False])
def test_null_space_network_equals_reduced_numpy_champagne(referenced, model,
                                                           learn_noise):
    """With a NullSpace the untrained network is Champagne written in the
    reduced coordinates of the data subspace (independent NumPy code)."""
    L, Y, lam, Q = referenced
    M, N = L.shape
    ns = NullSpace(Q)
    nv = None if learn_noise else lam
    net = UnfoldedSBL(25, model, learn_noise, n_sources=N, n_sensors=M).double()
    Lt, Yt = _torch(L, Y[None])
    with torch.no_grad():
        out = net(Lt, covariance_statistic(Yt),
                  None if nv is None else torch.as_tensor(nv), null_space=ns)
        Xbar = out.posterior_mean(Yt)[0].numpy()
        K = out.posterior_kernel()[0].numpy()
    g0, l0 = _start(L, Y, nv, null_space=ns)
    g_ref, l_ref, _, post = champagne_numpy(L, Y, g0, l0, 25, learn_noise, Q=Q)
    np.testing.assert_allclose(out.gamma[0].numpy(), g_ref, rtol=1e-8,
                               atol=1e-11 * g_ref.max())
    np.testing.assert_allclose(out.lam[0].numpy(), l_ref, rtol=1e-8)
    X_ref = post(g_ref, l_ref)[1]
    np.testing.assert_allclose(Xbar, X_ref, rtol=1e-7,
                               atol=1e-10 * np.abs(X_ref).max())
    # the kernel form gives the same posterior mean
    np.testing.assert_allclose(K @ Y, Xbar, rtol=1e-7,
                               atol=1e-10 * np.abs(X_ref).max())


def test_null_space_keeps_joint_learning_well_posed(referenced):
    """With the null space the joint cost decreases monotonically to a
    finite limit, as the reduced-coordinate reference computes it."""
    L, Y, lam, Q = referenced
    Lt, Yt = _torch(L, Y[None])
    res = convex_bounding(Lt, covariance_statistic(Yt), learn_noise=True,
                          max_iter=400, null_space=NullSpace(Q))
    cost = res.cost[:, 0].numpy()
    assert np.all(np.diff(cost) <= 1e-10 * np.abs(cost[:-1]))
    assert abs(cost[-1] - cost[-2]) < 1e-6 * abs(cost[-1])  # converging
    g0, l0 = _start(L, Y, None, null_space=NullSpace(Q))
    _, _, c_ref, _ = champagne_numpy(L, Y, g0, l0, 60, True, Q=Q)
    np.testing.assert_allclose(np.diff(cost[:61]), np.diff(c_ref), rtol=1e-6,
                               atol=1e-9)


def test_without_null_space_referenced_noise_collapses():
    """Average-referenced data have no power along the reference: without
    the null space the joint noise estimate collapses (to the solver's lower
    bound) within 25 iterations; with it, it stays of the order of the
    truth."""
    rng = np.random.default_rng(0)
    M, N, T = 32, 300, 100
    L = rng.standard_normal((M, N))
    X = np.zeros((N, T))
    X[:5] = rng.standard_normal((5, T))
    lam = np.full(M, 0.05 * np.mean((L @ X) ** 2))
    Y = L @ X + rng.standard_normal((M, T)) * np.sqrt(lam)[:, None]
    L, Y, Q = average_reference(L, Y)
    Lt, Yt = _torch(L, Y[None])
    Cy = covariance_statistic(Yt)
    good = convex_bounding(Lt, Cy, learn_noise=True, null_space=NullSpace(Q))
    bad = convex_bounding(Lt, Cy, learn_noise=True)
    assert np.median(good.lam[0].numpy() / lam) > 0.05
    assert np.median(bad.lam[0].numpy() / lam) < 1e-6


def test_null_space_ignores_the_null_component(referenced):
    """Whatever the data hold along the null directions (round-off, an
    unapplied reference) does not change the estimate."""
    L, Y, lam, Q = referenced
    rng = np.random.default_rng(9)
    Y2 = Y + Q @ rng.standard_normal((1, Y.shape[1])) * 3.0
    ns = NullSpace(Q)
    Lt = torch.as_tensor(L)
    out = [convex_bounding(Lt, covariance_statistic(torch.as_tensor(y[None])),
                           null_space=ns) for y in (Y, Y2)]
    torch.testing.assert_close(out[0].gamma, out[1].gamma, rtol=1e-9, atol=0)
    torch.testing.assert_close(out[0].lam, out[1].lam, rtol=1e-9, atol=0)


def test_null_space_checks_and_statistics(referenced):
    L, Y, _, Q = referenced
    with pytest.raises(ValueError, match="orthonormal"):
        NullSpace(2 * Q)
    with pytest.raises(ValueError, match="shape"):
        NullSpace(np.eye(4))
    ns = NullSpace(Q)
    assert ns.rank == 1
    # P (S + Lambda) P + Q Q^T, factorised: W restricted to the data
    # subspace is the pseudo-inverse of the projected covariance
    rng = np.random.default_rng(3)
    gamma = rng.uniform(0.1, 2, L.shape[1])
    lam = rng.uniform(0.5, 2, L.shape[0])
    Lt, gt, lt = _torch(L, gamma[None], lam[None])
    prec = precision(model_covariance(Lt, gt), lt, ns)
    P = np.eye(len(Q)) - Q @ Q.T
    sigma_p = P @ ((L * gamma) @ L.T + np.diag(lam)) @ P
    W = prec.W[0].numpy()
    np.testing.assert_allclose(P @ W @ P, np.linalg.pinv(sigma_p), rtol=1e-8,
                               atol=1e-10)
    Cy = covariance_statistic(_torch(Y[None])[0])
    c = noise_stats(Cy, lt, prec, ns).c[0].numpy()
    np.testing.assert_allclose(c, np.diag(np.linalg.pinv(sigma_p)), rtol=1e-8)
