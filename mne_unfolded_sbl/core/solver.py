"""The convex-bounding (Champagne) solver core, in PyTorch.

Everything that touches the Type-II model goes through this module: the
classical solver run to convergence, the unfolded network (each layer is
one :func:`source_step` and, jointly, one :func:`noise_step`), training,
benchmarks and the MNE-facing API.

Model (fixed-orientation EEG, see ``doc/user_guide.rst``)::

    Y = L X + E,   x_n(t) ~ N(0, gamma_n),   e_m(t) ~ N(0, lambda_m)
    Sigma_y = Lambda + L Gamma L^T,  W = Sigma_y^{-1}
    cost(gamma, lambda) = log|Sigma_y| + tr(C_y W),   C_y = Y Y^T / T

Every statistic of the convex-bounding updates depends on the data only
through ``C_y`` (an ``M x M`` matrix), so an iteration costs ``O(N M^2)``
whatever the number of time samples ``T``::

    a_n = gamma_n^2 (L^T W C_y W L)_nn      b_n = (L^T W L)_nn
    r_m = lambda_m^2 (W C_y W)_mm           c_m = W_mm

All tensors are batched: ``L`` is ``(M, N)`` (shared by the batch),
``C_y`` is ``(B, M, M)``, ``gamma`` is ``(B, N)`` and ``lam`` is ``(B, M)``.
The small ``M x M`` matrix ``Sigma_y`` is factorised in float64 (with a
relative jitter only for the samples whose factorisation fails); the large
``M x N`` products run in the working precision of ``L``.

Referenced data (an average-reference or other projector, a rank-deficient
whitener) have no power in ``k`` sensor directions ``Q`` (``M x k``,
orthonormal), and neither has the lead field.  There the joint model is
ill-posed: the cost falls without bound as the noise variance in those
directions goes to zero.  Given a :class:`NullSpace`, the solver works with
the projected model ``P (L Gamma L^T + Lambda) P`` (``P = I - Q Q^T``) on
the data subspace, completed by a unit variance on the null directions::

    Sigma_y = L Gamma L^T + P Lambda P + Q Q^T

The source statistics keep their form; the noise denominator becomes
``c_m = (P W P)_mm = W_mm - (Q Q^T)_mm``.

Sources with several orientations (loose or free orientation) come as
groups of ``n_orient`` consecutive lead-field columns that share one
variance (``x_n(t) ~ N(0, gamma_n I)``, MNE's ``xyz_same_gamma=True``):
``gamma`` then has ``N / n_orient`` entries, and the group statistics are
the sums over its columns (the convex bound of ``log|Sigma_y|`` is linear
in ``gamma_n`` with slope ``tr(L_n^T W L_n)``)::

    a_n = gamma_n^2 sum_o (L^T W C_y W L)_(no,no)   b_n = sum_o (L^T W L)_(no,no)

The number of orientations is always ``L.shape[1] // gamma.shape[1]``.

Speed: a batch of :data:`KR_MIN_BATCH` samples or more forms ``L Gamma L^T``
and the diagonals ``(L^T W L)_nn``, ``(L^T P L)_nn`` as single GEMMs with
the Khatri-Rao table of ``L`` (:func:`khatri_rao`: the upper triangles of
``l_n l_n^T``, half the multiply-adds); smaller batches (inference on one
evoked response) multiply by ``L`` itself, which stays in cache. The
inverse ``W`` has its own backward pass (:class:`_InverseFromCholesky`),
and the normalised lead field and its tables are cached while the input
lead field lives (:func:`_normalized_lead_field`).
"""

import weakref
from dataclasses import dataclass
from functools import cached_property

import torch

#: The public surface; the iterations, statistics and normalisation below
#: are internals of the core (used by the network), not API.
__all__ = ["CBResult", "NullSpace", "convex_bounding", "covariance_statistic",
           "posterior_kernel", "posterior_mean", "posterior_variance"]

#: Additive stabiliser of the log-statistics (normalised units, see
#: :func:`normalize_problem`).  Small enough that the log-domain update
#: equals ``sqrt(a / b)`` to float64 round-off for every variance that
#: matters, large enough to keep ``log`` finite for pruned sources.
LOG_EPS = 1e-30

_JITTERS = (1e-12, 1e-10, 1e-8, 1e-6, 1e-4)

#: Bounds of the log-variances after each (corrected) update, in the
#: normalised units of :func:`normalize_problem` (unit mean sensor power,
#: unit mean lead-field row power). The classical solver never reaches
#: them; they stop learned corrections from compounding over layers into a
#: float32 overflow (gamma) or a singular ``Sigma_y`` (lambda -> 0).
LOG_GAMMA_MAX = float(torch.log(torch.tensor(1e8)))
LOG_LAMBDA_RANGE = (float(torch.log(torch.tensor(1e-10))), LOG_GAMMA_MAX)

#: The Khatri-Rao form of the large products (see :func:`khatri_rao`) is
#: used for batches of at least this many samples. One sample reads the
#: whole ``N x M(M+1)/2`` table per product (memory-bound: slower than the
#: GEMM with ``L``, which stays in cache); a batch shares the table.
KR_MIN_BATCH = 8
#: Largest Khatri-Rao table (bytes) built, kept while its lead field
#: lives; larger problems keep the GEMMs with ``L``. (ico3 x 64 channels:
#: 1284 x 2080 entries, 11 MB in float32; ico4 x 128 channels: 5124 x 8256,
#: 169 MB in float32, too large in float64.)
KR_MAX_BYTES = 256 * 2 ** 20


class _IdentityCache:
    """Values derived from a tensor, kept while that tensor lives unchanged.

    Keyed by the tensor's identity (not its contents) and checked against
    its in-place version counter, so a tensor modified in place is
    recomputed; the entry goes when the tensor is freed.
    """

    def __init__(self):
        self._entries = {}

    def get(self, tensor, build, depends=None):
        """``build()`` for ``tensor``, or the value cached for it.

        ``depends(value)`` names tensors of the value whose in-place
        modification invalidates it too. Inference tensors (made under
        :func:`torch.inference_mode`) have no version counter: their values
        are built every time, not cached.
        """
        if tensor.is_inference():
            return build()
        key = id(tensor)
        entry = self._entries.get(key)
        if (entry is not None and entry[0]() is tensor
                and entry[1] == self._versions(tensor, entry[2], depends)):
            return entry[2]
        value = build()
        if depends is not None and any(t.is_inference() for t in depends(value)):
            return value
        entries = self._entries

        def drop(ref, key=key):
            if entries.get(key, (None,))[0] is ref:
                del entries[key]

        entries[key] = (weakref.ref(tensor, drop),
                        self._versions(tensor, value, depends), value)
        return value

    @staticmethod
    def _versions(tensor, value, depends):
        extra = () if depends is None else depends(value)
        return (tensor._version, *(t._version for t in extra))


_KR_CACHE = _IdentityCache()
_LEAD_FIELD_CACHE = _IdentityCache()


@dataclass
class KhatriRao:
    """The upper triangle of ``l_n l_n^T`` for every lead-field column.

    With ``K = M (M + 1) / 2`` entries ``(i, j), i <= j``::

        LL[n, k] = L[i, n] L[j, n]
        (L diag(g) L^T)_ij = (g @ LL)_k                  (one GEMM per batch)
        l_n^T A l_n = (LL @ a)_n,   a_k = A_ij + A_ji (A_ii on the diagonal)

    so ``L Gamma L^T`` and the diagonal statistics ``(L^T A L)_nn`` of a
    whole batch are one ``(B, N) x (N, K)`` GEMM each, with half the
    multiply-adds of the products with ``L`` and no ``(N, B, M)``
    intermediate (which the backward pass would keep).
    """

    LL: torch.Tensor  # (N, K) in the dtype of L
    upper: torch.Tensor  # (K,) flat index i * M + j of each entry
    full: torch.Tensor  # (M * M,) the entry k of each (i, j)
    half_diag: torch.Tensor  # (K,) 0.5 on the diagonal, 1 elsewhere, float64


def _build_khatri_rao(L):
    M = L.shape[0]
    iu = torch.triu_indices(M, M, device=L.device)
    with torch.no_grad():
        LL = (L[iu[0]] * L[iu[1]]).T.contiguous()
    k = torch.arange(iu.shape[1], device=L.device)
    full = torch.empty(M, M, dtype=torch.long, device=L.device)
    full[iu[0], iu[1]] = k
    full[iu[1], iu[0]] = k
    half = torch.where(iu[0] == iu[1], 0.5, 1.0).to(torch.float64)
    return KhatriRao(LL, iu[0] * M + iu[1], full.reshape(-1), half)


def khatri_rao(L, batch_size=None):
    """The :class:`KhatriRao` table of ``L`` (cached while ``L`` lives), or
    None where the GEMMs with ``L`` are used instead: batches smaller than
    :data:`KR_MIN_BATCH`, tables larger than :data:`KR_MAX_BYTES`, and a
    lead field that requires a gradient."""
    M, N = L.shape
    size = N * M * (M + 1) // 2 * L.element_size()
    if ((batch_size is not None and batch_size < KR_MIN_BATCH)
            or size > KR_MAX_BYTES or L.requires_grad):
        return None
    return _KR_CACHE.get(L, lambda: _build_khatri_rao(L))


class NullSpace:
    """Sensor directions where data and lead field have no component.

    Parameters
    ----------
    Q : torch.Tensor | array-like, shape (M, k)
        Orthonormal basis of the directions (e.g. ``ones(M, 1) / sqrt(M)``
        for an average reference, see :meth:`average_reference`).
    """

    def __init__(self, Q):
        Q = torch.as_tensor(Q, dtype=torch.float64)
        if Q.ndim != 2 or Q.shape[1] >= Q.shape[0]:
            raise ValueError(f"Q must have shape (M, k) with k < M, got "
                             f"{tuple(Q.shape)}")
        gram = Q.T @ Q
        if not torch.allclose(gram, torch.eye(Q.shape[1], dtype=Q.dtype,
                                              device=Q.device), atol=1e-8):
            raise ValueError("The columns of Q must be orthonormal.")
        self.Q = Q
        self.Qt = Q.T.contiguous()
        self.QQt = Q @ Q.T
        self.diag = self.QQt.diagonal().clone()

    @classmethod
    def average_reference(cls, n_sensors, device=None):
        """The null space of an average reference, ``1 / sqrt(M)``."""
        M = int(n_sensors)
        return cls(torch.full((M, 1), M ** -0.5, dtype=torch.float64,
                              device=device))

    @property
    def rank(self):
        """Number of null directions ``k``."""
        return self.Q.shape[1]

    def to(self, device):
        """This null space on ``device``."""
        return NullSpace(self.Q.to(device))

    def _pcp_correction(self, C):
        # P C P = C - R Q^T - Q R^T with R = C Q - Q (Q^T C Q) / 2 (C symmetric)
        CQ = C @ self.Q
        RQt = (CQ - 0.5 * self.Q @ (self.Q.T @ CQ)) @ self.Q.T
        return RQt + RQt.transpose(-1, -2)

    def project(self, C):
        """``P C P`` for symmetric ``(B, M, M)`` float64 matrices."""
        return C - self._pcp_correction(C)

    def complete(self, C):
        """``P C P + Q Q^T``: a model covariance on the data subspace,
        completed by a unit variance on the null directions."""
        return C - self._pcp_correction(C) + self.QQt

    @cached_property
    def P(self):
        """The projector ``I - Q Q^T`` onto the data subspace, (M, M)
        float64 (made on first use)."""
        return torch.eye(self.Q.shape[0], dtype=self.Q.dtype,
                         device=self.Q.device) - self.QQt

    def noise_matrix(self, lam):
        """``P diag(lam) P + Q Q^T`` for noise variances ``lam`` (B, M):
        the noise part of the completed model covariance, float64 (B, M, M).

        ``Sigma_y = S + noise_matrix(lam)`` equals :meth:`complete` of
        ``S + diag(lam)`` for ``S = P S P`` (the source part ``L Gamma L^T``
        with ``L = P L``), up to round-off. The inference path forms it
        once per layer for both factorisations (two operations instead
        of the completion's nine per factorisation).
        """
        P = self.P
        return torch.baddbmm(self.QQt, P * lam[:, None, :],
                             P.expand(lam.shape[0], -1, -1))

    def complete_(self, C):
        """:meth:`complete` in place, for inference (no autograd).

        The same products as :meth:`complete` with half the operations and
        no temporaries of ``C``'s size besides ``R Q^T``: one evoked
        response factorises two such matrices per layer, and its cost is
        the number of small operations, not their arithmetic.
        """
        CQ = C @ self.Q
        RQt = torch.sub(CQ, self.Q @ (self.Qt @ CQ), alpha=0.5) @ self.Qt
        return C.sub_(RQt).sub_(RQt.transpose(-1, -2)).add_(self.QQt)


def _inference(*tensors):
    """True where autograd records nothing for ``tensors``.

    The inference paths of the statistics (in-place updates, the two
    log-statistics of a step in one pass) run then; with a graph to record
    (training) the out-of-place expressions run, whose backward passes
    need their inputs intact. Both give the same values up to round-off.
    """
    return not (torch.is_grad_enabled()
                and any(t is not None and t.requires_grad for t in tensors))


def _null_space_like(null, device):
    if null is None or null.Q.device == torch.device(device):
        return null
    return null.to(device)


@dataclass
class Precision:
    """The inverse statistical covariance ``W`` and its Cholesky factor."""

    W: torch.Tensor  # (B, M, M) in float64
    chol: torch.Tensor  # (B, M, M) lower Cholesky factor of Sigma_y, float64

    @property
    def logdet(self):
        """``log|Sigma_y|``, shape (B,), float64."""
        return 2.0 * torch.log(self.chol.diagonal(dim1=-2, dim2=-1)).sum(-1)


@dataclass
class SourceStats:
    """Convex-bounding source statistics (numerator ``a``, denominator ``b``)."""

    a: torch.Tensor  # (B, N)
    b: torch.Tensor  # (B, N)
    cost: torch.Tensor | None  # (B,) Type-II cost at the state the stats
    # come from (None when not asked for)
    #: (B, 2, N) ``[b, a]`` with ``a`` and ``b`` its views, or None; set
    #: on the inference path (see :func:`_inference`)
    stacked: torch.Tensor | None = None


@dataclass
class NoiseStats:
    """Convex-bounding noise statistics (numerator ``r``, denominator ``c``)."""

    r: torch.Tensor  # (B, M)
    c: torch.Tensor  # (B, M)
    cost: torch.Tensor | None  # (B,)
    #: (B, 2, M) ``[c, r]`` with ``r`` and ``c`` its views, or None (as
    #: :attr:`SourceStats.stacked`)
    stacked: torch.Tensor | None = None


def covariance_statistic(Y):
    """Return the sufficient statistic ``C_y = Y Y^T / T``.

    Parameters
    ----------
    Y : torch.Tensor, shape (B, M, T) or (M, T)
        Sensor data.

    Returns
    -------
    C_y : torch.Tensor, shape (B, M, M)
        The data covariance (not mean-removed, as in the model).
    """
    if Y.ndim == 2:
        Y = Y[None]
    return Y @ Y.transpose(-1, -2) / Y.shape[-1]


def n_orient_of(L, gamma):
    """Columns of ``L`` per variance of ``gamma`` (1, or 3 for free/loose)."""
    n_cols, n_var = L.shape[-1], gamma.shape[-1]
    if n_var < 1 or n_cols % n_var:
        raise ValueError(f"The lead field has {n_cols} columns, which is not a "
                         f"multiple of the {n_var} source variances.")
    return n_cols // n_var


def column_variances(L, gamma):
    """``gamma`` repeated for the ``n_orient`` columns of each source."""
    n_orient = n_orient_of(L, gamma)
    return gamma if n_orient == 1 else gamma.repeat_interleave(n_orient, -1)


def model_covariance(L, gamma):
    """Return the source part ``L Gamma L^T`` of ``Sigma_y``, shape (B, M, M).

    Batches of :data:`KR_MIN_BATCH` or more use the Khatri-Rao form (one
    GEMM, exactly symmetric); smaller ones the product with ``L``.
    """
    g = column_variances(L, gamma).to(L.dtype)
    kr = khatri_rao(L, g.shape[0])
    if kr is not None:
        M = L.shape[0]
        B = g.shape[0]
        S = torch.gather(g @ kr.LL, 1, kr.full.expand(B, M * M))
        return S.view(B, M, M)
    return (L * g[:, None, :]) @ L.T


def precision(S, lam, null_space=None):
    """Factorise ``Sigma_y = S + diag(lam)`` in float64.

    Parameters
    ----------
    S : torch.Tensor, shape (B, M, M)
        ``L Gamma L^T`` (see :func:`model_covariance`).
    lam : torch.Tensor, shape (B, M)
        Sensor noise variances.
    null_space : NullSpace | None
        Directions without data: ``Sigma_y`` becomes
        ``P (S + diag(lam)) P + Q Q^T`` (see the module docstring).

    Returns
    -------
    prec : Precision
        ``W = Sigma_y^{-1}`` (from the Cholesky factor, never an explicit
        inverse of ``Sigma_y``) and the factor itself, both float64.
    """
    inference = _inference(S, lam)
    sigma = S.to(torch.float64, copy=True)
    # (inference: the float64 add_ upcasts lam exactly, without a copy)
    sigma.diagonal(dim1=-2, dim2=-1).add_(lam if inference
                                          else lam.to(torch.float64))
    if null_space is not None:
        # P (S + Lambda) P + Q Q^T; P S P = S up to round-off (L = P L)
        sigma = (null_space.complete_(sigma) if inference
                 else null_space.complete(sigma))
    return _factorize(sigma, inference)


def _shared_noise(lam, null_space):
    """The noise part of ``Sigma_y`` that both factorisations of an
    inference layer share (:func:`_precision_with_noise`): ``lam`` itself
    without a null space, else :meth:`NullSpace.noise_matrix`."""
    return lam if null_space is None else null_space.noise_matrix(lam)


def _precision_with_noise(S, noise):
    """:func:`precision` on the inference path of a layer: ``Sigma_y = S
    + noise`` with ``noise`` from :func:`_shared_noise` (a ``(B, M)``
    diagonal or a ``(B, M, M)`` matrix). The source half-step and the
    noise half-step of a layer factorise ``S + Lambda`` for two ``S`` and
    the same ``Lambda``: with a null space its completion
    ``P Lambda P + Q Q^T`` is formed once (``P S P = S`` up to round-off,
    ``L = P L``). No autograd."""
    sigma = S.to(torch.float64, copy=True)
    if noise.ndim == 2:
        sigma.diagonal(dim1=-2, dim2=-1).add_(noise)
    else:
        sigma.add_(noise)
    return _factorize(sigma, True)


def _factorize(sigma, inference):
    """The Cholesky factor of ``sigma`` (B, M, M) float64 (with a jitter
    for the samples whose factorisation fails) and the inverse, as a
    :class:`Precision`."""
    # the factorisation reads the lower triangle only: no symmetrisation
    info = None
    if inference:
        # raises where any sample fails (then the flags and the jitter
        # below): no separate check of the flags when all succeed
        try:
            chol = torch.linalg.cholesky(sigma)
        except torch.linalg.LinAlgError:
            chol, info = torch.linalg.cholesky_ex(sigma)
    else:
        chol, info = torch.linalg.cholesky_ex(sigma)
    if info is not None and bool(info.any()):
        # Only the samples whose factorisation failed get a jitter relative
        # to their mean diagonal; the others stay exact.
        scale = sigma.diagonal(dim1=-2, dim2=-1).mean(-1)
        eye = torch.eye(sigma.shape[-1], dtype=sigma.dtype, device=sigma.device)
        for jitter in _JITTERS:
            bad = info > 0
            if not bool(bad.any()):
                break
            shift = torch.where(bad, jitter * scale, torch.zeros_like(scale))
            sigma = sigma + shift[:, None, None] * eye
            chol, info = torch.linalg.cholesky_ex(sigma)
        if bool((info > 0).any()):
            raise FloatingPointError(
                "Sigma_y is not positive definite even after adding a jitter "
                "of 1e-4 times its mean diagonal; the data or lead field "
                "contain non-finite or degenerate values."
            )
    if torch.is_grad_enabled() and sigma.requires_grad:
        W = _InverseFromCholesky.apply(sigma, chol.detach())
    else:
        W = torch.cholesky_inverse(chol)
    return Precision(W=W, chol=chol)


class _InverseFromCholesky(torch.autograd.Function):
    """``W = Sigma^{-1}`` from the Cholesky factor of ``Sigma``, with the
    backward pass of the inverse of a symmetric matrix,
    ``dSigma = -W sym(dW) W`` (two products), instead of the backward
    through :func:`torch.cholesky_inverse` and the factorisation (several
    triangular solves): the same gradient (PyTorch's Cholesky backward
    returns this symmetric gradient too) at a third of the cost. The
    factor is an input for the forward only."""

    generate_vmap_rule = True

    @staticmethod
    def forward(sigma, chol):
        return torch.cholesky_inverse(chol)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad_W):
        W, = ctx.saved_tensors
        sym = 0.5 * (grad_W + grad_W.transpose(-1, -2))
        return -(W @ sym @ W), None


def type2_cost(prec, Cy):
    """Return the Type-II cost ``log|Sigma_y| + tr(C_y W)``, shape (B,)."""
    return prec.logdet + (prec.W * Cy.to(torch.float64)).sum((-1, -2))


def source_stats(L, Cy, gamma, prec, with_cost=True, Lt=None):
    """Convex-bounding source statistics at the state ``(gamma, lam)``.

    ``b = diag(L^T W L)`` and ``a = gamma^2 diag(L^T W C_y W L)`` come from
    one product for the whole batch, in the working precision of ``L``:
    for batches of :data:`KR_MIN_BATCH` or more, the Khatri-Rao table of
    ``L`` (:func:`khatri_rao`) times the triangles of ``[W_1, P_1, ...,
    W_B, P_B]`` (``P = W C_y W``); for smaller ones, the ``N x M``
    transposed lead field ``Lt`` (pass ``L.T.contiguous()`` to reuse it
    across calls) times those matrices side by side, then the row-wise
    products with ``Lt``. Without a gradient to record (inference), small
    batches multiply ``[W; P]`` by ``L`` instead and reduce over the
    sensors in place, and ``a`` and ``b`` come as views of one tensor
    (:attr:`SourceStats.stacked`).
    """
    W = prec.W
    Cy64 = Cy.to(torch.float64)
    P = W @ (Cy64 @ W)  # (B, M, M), cheap: M^3
    B, M = W.shape[0], L.shape[0]
    inference = _inference(L, Cy, gamma, W)
    kr = khatri_rao(L, B)
    if kr is not None:
        # (L^T A L)_nn for A = W_1, P_1, ..., W_B, P_B: one (2B, K) x (K, N)
        # GEMM with the upper triangle of A + A^T, halved on the diagonal
        # (P = W C_y W is symmetric only up to round-off: this is the
        # quadratic form of the full A)
        A = torch.stack([W, P], 1)
        A = (A + A.transpose(-1, -2)).reshape(2 * B, M * M)
        A = (torch.gather(A, 1, kr.upper.expand(2 * B, -1))
             * kr.half_diag).to(L.dtype)
        bq = (A @ kr.LL.T).view(B, 2, -1)  # (B, 2, N)
    elif inference:
        # (B * 2M, M) x (M, N), then sum_m over rows: the reduction runs
        # along contiguous N, in place (40 % less time than the row-wise
        # products with Lt, which reduce over 64-element rows)
        G = torch.cat([W, P], dim=-2).to(L.dtype)  # (B, 2M, M)
        bq = (G.view(2 * B * M, M) @ L).view(B, 2, M, -1).mul_(L).sum(-2)
    else:
        if Lt is None:
            Lt = L.T.contiguous()
        G = torch.cat([W, P], dim=-1).to(L.dtype)  # (B, M, 2M)
        LtG = Lt @ G.transpose(0, 1).reshape(M, 2 * M * B)  # (N, B * 2M)
        bq = (LtG.view(-1, B, 2, M) * Lt[:, None, None, :]).sum(-1)  # (N, B, 2)
        bq = bq.permute(1, 2, 0)  # (B, 2, N)
    n_orient = n_orient_of(L, gamma)
    if n_orient > 1:  # one variance per group of columns: sum the group
        bq = bq.reshape(B, 2, -1, n_orient).sum(-1)
    cost = type2_cost(prec, Cy64) if with_cost else None
    if inference:  # a in place: bq is [b, a], the input of _log_ratio_stacked
        bq[:, 1].mul_(gamma.to(L.dtype).square())
        return SourceStats(a=bq[:, 1], b=bq[:, 0], cost=cost, stacked=bq)
    a = gamma.to(L.dtype).square() * bq[:, 1]
    return SourceStats(a=a, b=bq[:, 0], cost=cost)


def noise_stats(Cy, lam, prec, null_space=None, with_cost=True):
    """Convex-bounding noise statistics.

    ``r = lam^2 diag(W C_y W)`` and ``c = diag(W)``, or, with a
    ``null_space``, ``c = diag(P W P) = diag(W) - diag(Q Q^T)``. Without a
    gradient to record, ``r`` and ``c`` are views of one ``(B, 2, M)``
    tensor ``[c, r]`` (:attr:`NoiseStats.stacked`).
    """
    W = prec.W
    Cy64 = Cy.to(torch.float64)
    r = lam.to(torch.float64).square() * ((W @ Cy64) * W).sum(-1)
    c = W.diagonal(dim1=-2, dim2=-1)
    if null_space is not None:
        c = c - null_space.diag
    cost = type2_cost(prec, Cy64) if with_cost else None
    if _inference(Cy, lam, W):
        stacked = torch.stack([c, r], 1).to(lam.dtype)
        return NoiseStats(r=stacked[:, 1], c=stacked[:, 0], cost=cost,
                          stacked=stacked)
    return NoiseStats(r=r.to(lam.dtype), c=c.to(lam.dtype), cost=cost)


def log_ratio_update(num, den, eps=LOG_EPS):
    """The classical log-domain update ``0.5 log(num+eps) - 0.5 log(den+eps)``.

    Returns the log-features too: ``(update, log(num + eps), log(den + eps))``.
    ``num`` and ``den`` are non-negative in exact arithmetic; values that
    round-off made negative (float32 products) count as zero.
    """
    s = torch.log(num.clamp_min(0.0) + eps)
    q = torch.log(den.clamp_min(0.0) + eps)
    return 0.5 * (s - q), s, q


def _log_ratio_stacked(stacked, eps=LOG_EPS):
    """:func:`log_ratio_update` of ``stacked = [den, num]`` (B, 2, P) in one
    pass (the inference path of the statistics): the same expressions, one
    kernel per operation for both statistics instead of two."""
    logs = stacked.clamp_min(0.0).add_(eps).log_()
    q, s = logs.unbind(1)
    return torch.sub(s, q).mul_(0.5), s, q


def _log_ratio(stats, num, den):
    """:func:`log_ratio_update` of the statistics ``stats`` (numerator and
    denominator ``num``, ``den``), from ``stats.stacked`` where set."""
    if stats.stacked is not None:
        return _log_ratio_stacked(stats.stacked)
    return log_ratio_update(num, den)


def hard_threshold(gamma, rel_threshold):
    """Set ``gamma_n = 0`` where ``gamma_n < rel_threshold * max(gamma)`` (eq. 24-25)."""
    if rel_threshold is None or rel_threshold <= 0:
        return gamma
    keep = gamma >= rel_threshold * gamma.amax(-1, keepdim=True)
    return torch.where(keep, gamma, torch.zeros_like(gamma))


def normalize_problem(L, Cy, null_space=None):
    """Scale lead field and data to unit-free, order-one quantities.

    The lead field is divided by ``l_scale = sqrt(||L||_F^2 / M)`` (so the
    mean diagonal of ``L L^T`` is 1) and each sample's ``C_y`` by
    ``y_scale^2 = tr(C_y) / M`` (unit mean sensor power).  Variances scale
    back as ``gamma = gamma_n * y_scale^2 / l_scale^2`` and
    ``lam = lam_n * y_scale^2``.  Because the solver runs on the
    normalised problem, multiplying the data by any ``c > 0`` multiplies
    the source estimates by ``c`` exactly.

    With a ``null_space``, ``C_y`` is first projected onto the data
    subspace (``P C_y P``), which removes round-off outside it.

    Returns
    -------
    L_n : torch.Tensor, shape (M, N)
        Normalised lead field, in the dtype of ``L``.
    Cy_n : torch.Tensor, shape (B, M, M)
        Normalised statistics, float64 (they only enter the small ``M x M``
        algebra).
    l_scale : torch.Tensor
        Scalar.
    y_scale : torch.Tensor, shape (B,)
        Per-sample data scale.
    """
    return _normalize(L, Cy, null_space)[:4]


def _normalize(L, Cy, null_space=None):
    """:func:`normalize_problem`, and ``L_n^T`` (contiguous) as fifth value."""
    M = L.shape[0]
    l_scale, L_n, Lt = _normalized_lead_field(L)
    Cy64 = Cy.to(torch.float64)
    if null_space is not None:
        Cy64 = null_space.project(Cy64)
    y_pow = Cy64.diagonal(dim1=-2, dim2=-1).sum(-1) / M
    if bool((y_pow <= 0).any()) or not bool(torch.isfinite(y_pow).all()):
        raise ValueError(
            "The data have zero or non-finite power in at least one sample; "
            "remove flat or NaN/Inf channels or epochs before source imaging."
        )
    y_scale = torch.sqrt(y_pow)
    Cy_n = Cy64 / y_pow[:, None, None]
    return L_n, Cy_n, l_scale, y_scale, Lt


def _normalized_lead_field(L):
    """``(l_scale, L_n, L_n^T contiguous)`` of :func:`normalize_problem`.

    Cached while ``L`` (and the returned tensors) live unchanged, so that
    repeated calls with one lead field (every evoked response of an
    operator, every training batch) share ``L_n`` and everything cached on
    it (:func:`khatri_rao`). Computed afresh when ``L`` requires a gradient.
    """
    def build():
        M = L.shape[0]
        l_scale = torch.sqrt((L.to(torch.float64) ** 2).sum() / M)
        L_n = (L / l_scale.to(L.dtype)).to(L.dtype)
        return l_scale, L_n, L_n.T.contiguous()

    if L.requires_grad:
        return build()
    # valid while neither L nor the returned tensors were modified in place
    return _LEAD_FIELD_CACHE.get(L, build, depends=lambda v: v[1:])


def posterior_kernel(L, gamma, lam, null_space=None, S=None, right=None):
    """Linear map from data to posterior mean, ``K = Gamma L^T W``.

    Parameters
    ----------
    L : torch.Tensor, shape (M, N)
    gamma : torch.Tensor, shape (B, N)
    lam : torch.Tensor, shape (B, M)
    null_space : NullSpace | None
    S : torch.Tensor, shape (B, M, M) | None
        ``L Gamma L^T`` where already formed (a network's final state
        holds it), else formed here.
    right : torch.Tensor, shape (M, M') | None
        Return ``K @ right`` instead (e.g. with a whitener: the kernel of
        the data as recorded), ``right`` applied to the ``M x M`` inverse
        before the product with the lead field.

    Returns
    -------
    K : torch.Tensor, shape (B, N, M) (``M'`` with ``right``), in the dtype
        of ``L``; the posterior mean of data ``Y`` is ``K @ Y`` (one row
        per lead-field column).
    """
    return _kernel_and_gain(L, gamma, lam, null_space, S, right)[0]


def _kernel_and_gain(L, gamma, lam, null_space, S=None, right=None):
    """``(Gamma L^T W, L^T W)`` per column, both (B, N, M).

    ``S``: ``L Gamma L^T`` where already formed (the final state of a
    network holds it), else formed here. ``right`` (M, M'): both are
    multiplied by it on the right (e.g. by a whitener: the kernel of the
    data as recorded), ``W right`` formed first (``M^2 M'``) so that the
    product with the lead field stays the only ``N M M'`` one.
    """
    prec = precision(model_covariance(L, gamma) if S is None else S, lam,
                     null_space)
    W = prec.W
    if right is not None:
        W = W @ right.to(dtype=W.dtype, device=W.device)
    B, M, Mr = W.shape
    # L^T W for the whole batch in one (N x M) @ (M x BM) product
    LtW = (L.T @ W.to(L.dtype).transpose(0, 1).reshape(M, B * Mr)
           ).view(-1, B, Mr).transpose(0, 1)
    g = column_variances(L, gamma).to(L.dtype)
    return g[:, :, None] * LtW, LtW


def posterior_variance(L, gamma, lam, null_space=None):
    """Posterior variance of every source, ``diag(Gamma - Gamma L^T W L Gamma)``.

    The diagonal of the posterior covariance ``Sigma_x`` (MATH.md), from the
    same factorisation as the posterior mean: ``gamma_n - gamma_n^2
    (L^T W L)_nn`` per lead-field column, in ``O(N M^2)``.

    Parameters
    ----------
    L : torch.Tensor, shape (M, N)
    gamma : torch.Tensor, shape (B, N) or (B, N / n_orient)
    lam : torch.Tensor, shape (B, M)
    null_space : NullSpace | None

    Returns
    -------
    var : torch.Tensor, shape (B, N)
        One variance per lead-field column, in the units of ``gamma``
        (clamped at 0 against round-off).
    """
    K, LtW = _kernel_and_gain(L, gamma, lam, null_space)
    g = column_variances(L, gamma).to(L.dtype)
    # (L^T W L)_nn = sum_m (L^T W)_nm L_mn
    b = (LtW * L.T[None]).sum(-1)
    return (g - g.square() * b).clamp_min(0.0)


def posterior_mean(L, gamma, lam, Y, null_space=None):
    """Posterior mean ``Xbar = Gamma L^T W Y``.

    Parameters
    ----------
    L : torch.Tensor, shape (M, N)
    gamma : torch.Tensor, shape (B, N)
    lam : torch.Tensor, shape (B, M)
    Y : torch.Tensor, shape (B, M, T)
    null_space : NullSpace | None

    Returns
    -------
    Xbar : torch.Tensor, shape (B, N, T), in the dtype of ``L``.
    """
    return posterior_kernel(L, gamma, lam, null_space) @ Y.to(L.dtype)


@dataclass
class CBState:
    """State of the alternating solver between two iterations."""

    gamma: torch.Tensor  # (B, N)
    lam: torch.Tensor  # (B, M)
    S: torch.Tensor  # (B, M, M): L Gamma L^T for the current gamma


def initial_state(L, Cy, noise_var=None, noise_init=0.1, n_orient=1):
    """Starting point of the solver on a normalised problem.

    ``gamma`` starts flat with ``diag(L Gamma L^T)`` equal, on average, to
    the data power not explained by the initial noise; ``lam`` starts at
    ``noise_var`` when given (known or initial noise, normalised units),
    else at ``noise_init`` times the mean sensor power (which is 1 after
    :func:`normalize_problem`). With ``n_orient`` columns per source,
    ``gamma`` has ``N / n_orient`` entries.
    """
    B, M = Cy.shape[0], L.shape[0]
    if L.shape[1] % int(n_orient):
        raise ValueError(f"The lead field has {L.shape[1]} columns, not a "
                         f"multiple of n_orient={n_orient}.")
    N = L.shape[1] // int(n_orient)
    dtype, device = L.dtype, L.device
    if noise_var is None:
        lam = torch.full((B, M), float(noise_init), dtype=dtype, device=device)
    else:
        lam = noise_var.to(dtype=dtype, device=device).expand(B, M).clone()
    # mean diag(L L^T) == 1 after normalisation, mean sensor power == 1
    g0 = torch.clamp(1.0 - lam.mean(-1), min=0.1)
    gamma = g0[:, None].expand(B, N).clone()
    return CBState(gamma=gamma, lam=lam, S=model_covariance(L, gamma))


@dataclass
class NormalizedProblem:
    """A normalised problem and its starting state (see :func:`prepare`)."""

    L_n: torch.Tensor
    Cy_n: torch.Tensor
    l_scale: torch.Tensor
    y_scale: torch.Tensor
    state: CBState
    null_space: NullSpace | None = None
    Lt: torch.Tensor | None = None  # L_n.T, contiguous (N, M)

    def to_input_units(self, gamma_n, lam_n):
        """Scale normalised ``(gamma, lam)`` back to the input units."""
        y2 = (self.y_scale ** 2).to(gamma_n.dtype)[:, None]
        l2 = (self.l_scale ** 2).to(gamma_n.dtype)
        return gamma_n * y2 / l2, lam_n * y2


def prepare(L, Cy, noise_var=None, noise_init=0.1, null_space=None,
            n_orient=1):
    """Normalise ``(L, Cy)`` and build the starting state.

    ``noise_var`` (known or initial noise variances, shape ``(B, M)`` or
    ``(M,)``, in the units of ``Cy``) is normalised with the data.
    ``null_space`` (a :class:`NullSpace`) names the sensor directions the
    data and the lead field do not reach (see the module docstring).
    ``n_orient`` columns of ``L`` share one variance (1: fixed orientation,
    3: free or loose orientation).
    """
    null_space = _null_space_like(null_space, L.device)
    L_n, Cy_n, l_scale, y_scale, Lt = _normalize(L, Cy, null_space)
    nv = None
    if noise_var is not None:
        y2 = (y_scale ** 2).to(L.dtype)[:, None]
        nv = noise_var.to(dtype=L.dtype, device=L.device) / y2
    state = initial_state(L_n, Cy_n, nv, noise_init, n_orient)
    return NormalizedProblem(L_n, Cy_n, l_scale, y_scale, state, null_space,
                             Lt)


def source_step(L, Cy, state, correction=None, rel_threshold=None,
                null_space=None, with_cost=True, Lt=None, prec=None):
    """One convex-bounding source update (optionally corrected), in logs.

    ``log gamma <- 0.5 log(a + eps) - 0.5 log(b + eps) + Delta`` where
    ``Delta = correction(s, q, log_gamma)`` (zero for the classical solver).

    ``prec``: the :class:`Precision` of ``state`` where the caller formed
    it already (:func:`cb_iteration` on the inference path), else formed
    here.

    Returns
    -------
    gamma_new : torch.Tensor, shape (B, N)
    info : dict
        ``a, b, s, q, delta`` and the Type-II ``cost`` at the input state
        (None unless ``with_cost``).
    """
    if prec is None:
        prec = precision(state.S, state.lam, null_space)
    st = source_stats(L, Cy, state.gamma, prec, with_cost, Lt)
    log_g, s, q = _log_ratio(st, st.a, st.b)
    delta = None
    if correction is not None:
        log_gamma_old = torch.log(state.gamma + LOG_EPS)
        delta = correction(s, q, log_gamma_old)
        log_g = log_g + delta
    gamma = hard_threshold(torch.exp(log_g.clamp(max=LOG_GAMMA_MAX)),
                           rel_threshold)
    return gamma, dict(a=st.a, b=st.b, s=s, q=q, delta=delta, cost=st.cost)


def noise_step(Cy, S, lam, correction=None, null_space=None, with_cost=True,
               prec=None):
    """One convex-bounding noise update (optionally corrected), in logs.

    Uses the posterior with the *updated* source variances (``S``) and the
    previous noise variances ``lam``, as in the alternating scheme.
    ``prec``: the :class:`Precision` of ``S`` and ``lam`` where the
    caller formed it already (:func:`cb_iteration` on the inference
    path), else formed here.
    """
    if prec is None:
        prec = precision(S, lam, null_space)
    st = noise_stats(Cy, lam, prec, null_space, with_cost)
    log_l, u, v = _log_ratio(st, st.r, st.c)
    delta = None
    if correction is not None:
        delta = correction(u, v, torch.log(lam + LOG_EPS))
        log_l = log_l + delta
    lam = torch.exp(log_l.clamp(*LOG_LAMBDA_RANGE))
    return lam, dict(r=st.r, c=st.c, u=u, v=v, delta=delta, cost=st.cost)


def cb_iteration(L, Cy, state, learn_noise, source_correction=None,
                 noise_correction=None, rel_threshold=None, null_space=None,
                 with_cost=True, Lt=None):
    """One alternating iteration: gamma from (gamma, lam), then lam.

    ``L Gamma L^T`` is formed once per iteration and shared by the noise
    update and the next source update (only the noise part of ``Sigma_y``
    differs), so a joint iteration costs three ``M^2 N`` products.
    ``Lt`` is ``L.T.contiguous()`` (formed here when not given).
    """
    # inference (no graph to record): the noise part of Sigma_y, which the
    # two factorisations of the layer share, is formed once
    # (_precision_with_noise); with a graph, precision() as before
    noise = (_shared_noise(state.lam, null_space)
             if not torch.is_grad_enabled() else None)
    prec = None if noise is None else _precision_with_noise(state.S, noise)
    gamma, sinfo = source_step(L, Cy, state, source_correction, rel_threshold,
                               null_space, with_cost, Lt, prec)
    S = model_covariance(L, gamma)
    ninfo = None
    lam = state.lam
    if learn_noise:
        prec = None if noise is None else _precision_with_noise(S, noise)
        lam, ninfo = noise_step(Cy, S, state.lam, noise_correction, null_space,
                                with_cost, prec)
    return CBState(gamma=gamma, lam=lam, S=S), sinfo, ninfo


@dataclass
class CBResult:
    """Result of :func:`convex_bounding` (variances in the input units)."""

    gamma: torch.Tensor  # (B, N)
    lam: torch.Tensor  # (B, M)
    n_iter: torch.Tensor  # (B,) iterations until convergence (or max_iter)
    converged: torch.Tensor  # (B,) bool
    cost: torch.Tensor  # (n_iter_run + 1, B) Type-II cost (normalised units)


def convex_bounding(L, Cy, *, learn_noise=True, noise_var=None, noise_init=0.1,
                    max_iter=25, tol=None, tol_type="cost", rel_threshold=None,
                    null_space=None, n_orient=1):
    """Classical convex-bounding Champagne, fixed depth or to convergence.

    Parameters
    ----------
    L : torch.Tensor, shape (M, N)
        Lead field (whitened).
    Cy : torch.Tensor, shape (B, M, M)
        Data statistic (:func:`covariance_statistic`).
    learn_noise : bool
        If True, learn ``lam`` jointly (gamma, lambda); else keep it fixed.
    noise_var : torch.Tensor, shape (B, M) or (M,) | None
        Known (``learn_noise=False``) or initial noise variances, in the
        units of ``Cy``.  Required when ``learn_noise`` is False.
    noise_init : float
        Initial noise as a fraction of the mean sensor power when
        ``noise_var`` is None.
    max_iter : int
        Number of iterations (the fixed depth when ``tol`` is None).
    tol : float | None
        Stop a sample when the relative cost decrease (``tol_type="cost"``)
        or the max relative change of gamma (``"gamma"``) falls below tol.
    tol_type : "cost" | "gamma"
    rel_threshold : float | None
        Optional relative hard threshold after each source update.
    null_space : NullSpace | None
        Sensor directions without data (average reference, projectors);
        see the module docstring.
    n_orient : int
        Consecutive columns of ``L`` that share one variance (1: fixed
        orientation; 3: free or loose orientation, MNE's
        ``xyz_same_gamma=True``).

    Returns
    -------
    result : CBResult
        ``gamma`` has ``N / n_orient`` entries per sample.
    """
    if not learn_noise and noise_var is None:
        raise ValueError("noise_var is required when learn_noise=False.")
    if tol_type not in ("cost", "gamma"):
        raise ValueError(f"tol_type must be 'cost' or 'gamma', got {tol_type!r}")
    prob = prepare(L, Cy, noise_var, noise_init, null_space, n_orient)
    L_n, Cy_n, state, null_space = prob.L_n, prob.Cy_n, prob.state, prob.null_space
    B = Cy.shape[0]
    done = torch.zeros(B, dtype=torch.bool, device=L.device)
    n_iter = torch.zeros(B, dtype=torch.long, device=L.device)
    costs = []
    for _ in range(max_iter):
        new, sinfo, _ = cb_iteration(L_n, Cy_n, state, learn_noise,
                                     rel_threshold=rel_threshold,
                                     null_space=null_space, Lt=prob.Lt)
        costs.append(sinfo["cost"])
        # frozen samples keep their converged state
        keep = done[:, None]
        new = CBState(
            gamma=torch.where(keep, state.gamma, new.gamma),
            lam=torch.where(keep, state.lam, new.lam),
            S=torch.where(done[:, None, None], state.S, new.S),
        )
        n_iter = n_iter + (~done).long()
        if tol is not None:
            if tol_type == "cost":
                if len(costs) >= 2:
                    rel = (costs[-2] - costs[-1]).abs() / costs[-1].abs().clamp_min(1e-30)
                    done = done | (rel < tol)
            else:
                change = ((new.gamma - state.gamma).abs().amax(-1)
                          / new.gamma.amax(-1).clamp_min(1e-300))
                done = done | (change < tol)
        state = new
        if bool(done.all()):
            break
    final = precision(state.S, state.lam, null_space)
    costs.append(type2_cost(final, Cy_n))
    gamma, lam = prob.to_input_units(state.gamma, state.lam)
    return CBResult(
        gamma=gamma,
        lam=lam,
        n_iter=n_iter,
        converged=done,
        cost=torch.stack(costs),
    )
