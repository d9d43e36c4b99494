"""Multi-scale ("flexible extent") source model: smoothed cortical atoms.

Extended cortical activity is modelled by atoms: every vertex's activity
smoothed on the cortical mesh by ``k`` steps of graph diffusion, for a few
orders ``k`` (order 0 is the point source). Each atom gets one variance,
learned by the same convex-bounding updates on the effective lead field
``L S`` (``S``: vertices x atoms); the estimate maps back to vertices as
``x = S x_atoms`` (and the posterior kernel as ``S K_atoms``).

Diffusion operator: the random walk with a self-loop on the source-space
mesh, symmetrically normalised, ``G = D^{-1/2} (A + I) D^{-1/2}`` (``A``
the adjacency, ``D`` its degree matrix plus one), so that ``G^k`` is
symmetric and atom ``(v, k)`` is column ``v`` of ``G^k``, scaled to unit
L2 norm. A step moves a walker to one of about six neighbours or keeps it
in place, so after ``k`` steps the RMS radius of an atom is about
``h sqrt(6 k / 7)`` on a mesh with mean edge length ``h``
(:func:`orders_for_extents` inverts this).

Type-II learning with a flat hyperprior is invariant to the scale of each
lead-field column, so the unit-norm convention only fixes the units of the
atom amplitudes, not the estimate.
"""

import numpy as np
from scipy import sparse

from ._utils import _validate_type

__all__ = ["DEFAULT_EXTENTS_MM", "MultiScaleBasis", "diffusion_operator",
           "evidence_cost", "orders_for_extents", "prefer_multiscale"]

#: Default atom radii (mm): the point source, then extents spanning focal
#: to ~20 cm^2 patches (a disc of 25 mm radius is ~20 cm^2).
DEFAULT_EXTENTS_MM = (0.0, 8.0, 16.0, 25.0)


def diffusion_operator(adjacency):
    """Symmetric one-step diffusion ``D^{-1/2} (A + I) D^{-1/2}``.

    Parameters
    ----------
    adjacency : scipy.sparse matrix, shape (N, N)
        Symmetric source-space adjacency (e.g. ``mne.spatial_src_adjacency``).

    Returns
    -------
    G : scipy.sparse.csr_matrix, shape (N, N)
    """
    A = sparse.csr_matrix(adjacency, dtype=np.float64)
    if A.shape[0] != A.shape[1]:
        raise ValueError(f"adjacency must be square, got shape {A.shape}.")
    A = ((A + A.T) > 0).astype(np.float64)
    A.setdiag(0)
    A.eliminate_zeros()
    A = A + sparse.eye(A.shape[0], format="csr")
    d = np.asarray(A.sum(1)).ravel() ** -0.5
    return sparse.csr_matrix(sparse.diags(d) @ A @ sparse.diags(d))


def evidence_cost(cost, dof, n_times):
    """Type-II cost with a BIC penalty for the effective source parameters.

    ``cost + dof log(T) / T`` per sample: the Type-II cost is ``-2 / T``
    times the log marginal likelihood (up to a constant), so this is the
    Bayesian information criterion on the same scale, with the effective
    number of parameters ``dof = tr(L Gamma L^T Sigma_y^{-1})``
    (:meth:`~mne_unfolded_sbl.core.network.UnfoldedOutput.effective_dof`).
    It decides between the point and the multi-scale source model of the
    same data: the richer model is kept where it explains the data better
    than its extra explained dimensions cost (extended activity), the point
    model where it does not (focal sources). A count of variances above a
    threshold would instead depend on how far small variances have shrunk
    after a fixed number of layers (measured: it rejected the multi-scale
    model on most extended patches after 25 layers).

    Parameters
    ----------
    cost : array-like, shape (B,)
        Final Type-II costs (normalised units, same data for the models
        compared).
    dof : array-like, shape (B,)
        Effective numbers of parameters.
    n_times : int
        Time samples behind the statistics.

    Returns
    -------
    penalised : ndarray, shape (B,)
    """
    T = float(n_times)
    return (np.asarray(cost, np.float64)
            + np.asarray(dof, np.float64) * np.log(T) / T)


def prefer_multiscale(point, multi, n_times):
    """Per sample, whether the multi-scale model wins the evidence.

    Parameters
    ----------
    point, multi : UnfoldedOutput
        The network's outputs on the point and on the atoms' lead field of
        the same statistics.
    n_times : int
        Time samples behind the statistics.

    Returns
    -------
    keep : ndarray of bool, shape (B,)
        True where the multi-scale :func:`evidence_cost` is lower (ties
        keep the point model).
    """
    costs = [evidence_cost(o.cost().detach().double().cpu().numpy(),
                           o.effective_dof().detach().double().cpu().numpy(),
                           n_times) for o in (point, multi)]
    return costs[1] < costs[0]


def orders_for_extents(extents_mm, edge_length_mm):
    """Diffusion orders whose atoms have about the given RMS radii.

    ``k = round(7 r^2 / (6 h^2))`` for radius ``r`` on a mesh of mean edge
    length ``h``; order 0 for ``r = 0``. Duplicates are dropped.

    Returns
    -------
    orders : tuple of int
        Sorted, unique.
    """
    h = float(edge_length_mm)
    if not h > 0:
        raise ValueError(f"edge_length_mm must be > 0, got {edge_length_mm}.")
    orders = sorted({int(round(7.0 * float(r) ** 2 / (6.0 * h * h)))
                     for r in extents_mm})
    return tuple(orders)


class MultiScaleBasis:
    """Atoms of several diffusion orders on one source space.

    Parameters
    ----------
    adjacency : scipy.sparse matrix, shape (N, N)
        Source-space adjacency.
    orders : sequence of int
        Diffusion orders, e.g. ``(0, 1, 4, 9)``; 0 is the point source.

    Attributes
    ----------
    S : scipy.sparse.csr_matrix, shape (N, N * n_orders)
        Atoms as columns, order by order (unit L2 norm each).
    """

    def __init__(self, adjacency, orders):
        _validate_type(orders, (list, tuple), "orders")
        orders = tuple(int(k) for k in orders)
        if not orders or min(orders) < 0 or len(set(orders)) != len(orders):
            raise ValueError(f"orders must be distinct non-negative integers, "
                             f"got {orders}.")
        G = diffusion_operator(adjacency)
        N = G.shape[0]
        blocks, P, k_done = [], sparse.eye(N, format="csr"), 0
        for k in sorted(orders):
            for _ in range(k - k_done):
                P = sparse.csr_matrix(G @ P)
                P.data[P.data < 1e-6 * P.data.max()] = 0.0  # negligible tails
                P.eliminate_zeros()
            k_done = k
            norms = np.sqrt(np.asarray(P.multiply(P).sum(0))).ravel()
            blocks.append(sparse.csr_matrix(P @ sparse.diags(1.0 / norms)))
        self.orders = tuple(sorted(orders))
        self.n_vertices = N
        self.S = sparse.hstack(blocks, format="csr")

    @property
    def n_atoms(self):
        """Number of atoms (vertices x orders)."""
        return self.S.shape[1]

    def __repr__(self):
        return (f"<MultiScaleBasis | {self.n_vertices} vertices, orders "
                f"{self.orders}, {self.n_atoms} atoms>")

    def leadfield(self, L):
        """The effective lead field ``L S``, shape (M, n_atoms)."""
        L = np.asarray(L, np.float64)
        if L.shape[1] != self.n_vertices:
            raise ValueError(f"The lead field has {L.shape[1]} sources but the "
                             f"basis {self.n_vertices} vertices.")
        return np.asarray((self.S.T @ L.T).T)

    def to_vertices(self, X):
        """Map atom amplitudes or kernels ``(..., n_atoms, K)`` to vertices."""
        X = np.asarray(X)
        moved = np.moveaxis(X, -2, 0)
        out = self.S @ moved.reshape(moved.shape[0], -1)
        return np.moveaxis(out.reshape((self.n_vertices,) + moved.shape[1:]),
                           0, -2)

    def vertex_variance(self, gamma, kernel_atoms, L_eff):
        """Posterior variance per vertex, ``diag(S Sigma_a S^T)``.

        Parameters
        ----------
        gamma : ndarray, shape (n_atoms,)
            Atom variances.
        kernel_atoms : ndarray, shape (n_atoms, M)
            Posterior kernel of the atoms ``Gamma L_eff^T W``.
        L_eff : ndarray, shape (M, n_atoms)
            The effective lead field.

        Returns
        -------
        var : ndarray, shape (n_vertices,)
            ``sum_j S_nj^2 gamma_j - (S K_a L_eff Gamma S^T)_nn``, clamped at
            zero against round-off.
        """
        prior = np.asarray(self.S.multiply(self.S) @ gamma).ravel()
        A = self.S @ (np.asarray(gamma)[:, None] * np.asarray(L_eff).T)  # S Gamma L^T
        Kv = self.S @ kernel_atoms  # S Gamma L^T W
        return np.maximum(prior - np.einsum("nm,nm->n", Kv, A), 0.0)
