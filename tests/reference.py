"""Independent plain-NumPy references used by the tests.

Written from the textbook formulas (MATH.md), on the time series ``Y``
itself (no sufficient statistics, explicit inverses): deliberately nothing
shared with the package's solver.
"""

import numpy as np


def champagne_numpy(L, Y, gamma0, lam0, n_iter, learn_noise, Q=None):
    """Alternating convex-bounding Champagne (Wipf 2009; Cai 2021).

    With ``Q`` (M x k orthonormal: sensor directions without data, e.g. an
    average reference), the model is written in reduced coordinates
    ``U^T`` (``U`` an orthonormal basis of the complement of ``Q``): lead
    field ``U^T L``, data ``U^T Y`` and sensor noise ``e_m`` entering
    through the columns of ``E = U^T`` (noise covariance ``E Lambda E^T``).
    The noise update treats the ``e_m`` like sources: ``lam_m <-
    sqrt(mean(ebar_m^2) / (E^T W E)_mm)`` with ``ebar = Lambda E^T W Y``,
    which with ``Q = None`` (``E = I``) is the usual residual update.

    Returns gamma, lam and the Type-II cost before each iteration and at
    the end, and a function ``post(gamma, lam) -> (W, xbar, cost)``.
    """
    gamma = np.array(gamma0, float).copy()
    lam = np.array(lam0, float).copy()
    M = L.shape[0]
    if Q is None:
        E = np.eye(M)
    else:
        U = np.linalg.svd(np.eye(M) - Q @ Q.T)[0][:, : M - Q.shape[1]]
        E = U.T
    Lr, Yr = E @ L, E @ Y
    T = Y.shape[1]
    Cy = Yr @ Yr.T / T
    costs = []

    def post(gamma, lam):
        sigma = (E * lam) @ E.T + (Lr * gamma) @ Lr.T
        W = np.linalg.inv(sigma)
        xbar = gamma[:, None] * (Lr.T @ W @ Yr)
        cost = np.linalg.slogdet(sigma)[1] + np.trace(Cy @ W)
        return W, xbar, cost

    for _ in range(n_iter):
        W, xbar, cost = post(gamma, lam)
        costs.append(cost)
        a = np.mean(xbar ** 2, axis=1)
        b = np.einsum("mn,mk,kn->n", Lr, W, Lr)
        gamma = np.sqrt(a / b)
        if learn_noise:
            W, xbar, _ = post(gamma, lam)
            ebar = lam[:, None] * (E.T @ W @ Yr)
            r = np.mean(ebar ** 2, axis=1)
            c = np.einsum("km,kj,jm->m", E, W, E)
            lam = np.sqrt(r / c)
    costs.append(post(gamma, lam)[2])
    return gamma, lam, np.array(costs), post


def focal_problem(rng, M=32, N=200, T=150, n_active=3, snr_scale=0.05,
                  hetero=True):
    """A small random lead field with a few active sources and diagonal noise."""
    L = rng.standard_normal((M, N))
    # smooth-ish lead field: correlated columns like a real EEG gain
    L = L + 0.5 * np.roll(L, 1, axis=1)
    X = np.zeros((N, T))
    support = rng.choice(N, n_active, replace=False)
    X[support] = rng.standard_normal((n_active, T)) * 3.0
    signal = L @ X
    p = np.mean(signal ** 2)
    lam = p * snr_scale * (rng.uniform(0.2, 3.0, M) if hetero else np.ones(M))
    Y = signal + rng.standard_normal((M, T)) * np.sqrt(lam)[:, None]
    return L, X, Y, lam, np.sort(support)


def average_reference(L, Y):
    """Average-referenced copies of a lead field and data, and ``Q``."""
    M = L.shape[0]
    return (L - L.mean(0), Y - Y.mean(0), np.full((M, 1), 1 / np.sqrt(M)))


def champagne_grouped_numpy(L, Y, gamma0, lam0, n_iter, learn_noise, n_orient):
    """Champagne with one variance per group of ``n_orient`` columns.

    ``x_n(t) ~ N(0, gamma_n I)`` for the ``n_orient`` components of source
    ``n`` (free orientation, MNE's ``xyz_same_gamma``); the bound gives
    ``gamma_n <- sqrt(sum_o mean(xbar_no^2) / sum_o L_no^T W L_no)``.
    """
    gamma = np.array(gamma0, float).copy()
    lam = np.array(lam0, float).copy()

    def post(gamma, lam):
        g = np.repeat(gamma, n_orient)
        sigma = np.diag(lam) + (L * g) @ L.T
        W = np.linalg.inv(sigma)
        return W, g[:, None] * (L.T @ W @ Y)

    for _ in range(n_iter):
        W, xbar = post(gamma, lam)
        a = np.mean(xbar ** 2, axis=1).reshape(-1, n_orient).sum(1)
        b = np.einsum("mn,mk,kn->n", L, W, L).reshape(-1, n_orient).sum(1)
        gamma = np.sqrt(a / b)
        if learn_noise:
            W, xbar = post(gamma, lam)
            r = np.mean((Y - L @ xbar) ** 2, axis=1)
            lam = np.sqrt(r / np.diag(W))
    return gamma, lam, post


def posterior_covariance_numpy(L, gamma, lam):
    """Dense ``Sigma_x = Gamma - Gamma L^T W L Gamma`` (column variances)."""
    G = np.diag(gamma)
    W = np.linalg.inv(np.diag(lam) + L @ G @ L.T)
    return G - G @ L.T @ W @ L @ G


def fibonacci_sphere(n, radius, center):
    """``n`` points spread evenly on a sphere (a toy source space)."""
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    theta = np.pi * (1 + 5**0.5) * i
    xyz = np.c_[np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi),
                np.cos(phi)]
    return radius * xyz + np.asarray(center)
