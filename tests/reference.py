"""Independent plain-NumPy references used by the tests.

Written from the textbook formulas (MATH.md), on the time series ``Y``
itself (no sufficient statistics, explicit inverses): deliberately nothing
shared with the package's solver.
"""

import numpy as np


def champagne_numpy(L, Y, gamma0, lam0, n_iter, learn_noise):
    """Alternating convex-bounding Champagne (Wipf 2009; Cai 2021).

    Returns gamma, lam and the Type-II cost before each iteration and at
    the end.
    """
    gamma = np.array(gamma0, float).copy()
    lam = np.array(lam0, float).copy()
    T = Y.shape[1]
    Cy = Y @ Y.T / T
    costs = []

    def post(gamma, lam):
        sigma = np.diag(lam) + (L * gamma) @ L.T
        W = np.linalg.inv(sigma)
        xbar = gamma[:, None] * (L.T @ W @ Y)
        cost = np.linalg.slogdet(sigma)[1] + np.trace(Cy @ W)
        return W, xbar, cost

    for _ in range(n_iter):
        W, xbar, cost = post(gamma, lam)
        costs.append(cost)
        a = np.mean(xbar ** 2, axis=1)
        b = np.einsum("mn,mk,kn->n", L, W, L)
        gamma = np.sqrt(a / b)
        if learn_noise:
            W, xbar, _ = post(gamma, lam)
            resid = Y - L @ xbar
            r = np.mean(resid ** 2, axis=1)
            c = np.diag(W)
            lam = np.sqrt(r / c)
    costs.append(post(gamma, lam)[2])
    return gamma, lam, np.array(costs)


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
