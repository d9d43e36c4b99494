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
"""

from dataclasses import dataclass

import torch

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


@dataclass
class Precision:
    """The inverse statistical covariance ``W`` and ``log|Sigma_y|``."""

    W: torch.Tensor  # (B, M, M) in float64
    logdet: torch.Tensor  # (B,) float64


@dataclass
class SourceStats:
    """Convex-bounding source statistics (numerator ``a``, denominator ``b``)."""

    a: torch.Tensor  # (B, N)
    b: torch.Tensor  # (B, N)
    cost: torch.Tensor  # (B,) Type-II cost at the state the stats come from


@dataclass
class NoiseStats:
    """Convex-bounding noise statistics (numerator ``r``, denominator ``c``)."""

    r: torch.Tensor  # (B, M)
    c: torch.Tensor  # (B, M)
    cost: torch.Tensor  # (B,)


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


def model_covariance(L, gamma):
    """Return the source part ``L Gamma L^T`` of ``Sigma_y``, shape (B, M, M)."""
    return (L * gamma.to(L.dtype)[:, None, :]) @ L.T


def precision(S, lam):
    """Factorise ``Sigma_y = S + diag(lam)`` in float64.

    Parameters
    ----------
    S : torch.Tensor, shape (B, M, M)
        ``L Gamma L^T`` (see :func:`model_covariance`).
    lam : torch.Tensor, shape (B, M)
        Sensor noise variances.

    Returns
    -------
    prec : Precision
        ``W = Sigma_y^{-1}`` (from the Cholesky factor, never an explicit
        inverse of ``Sigma_y``) and ``log|Sigma_y|``, both float64.
    """
    sigma = S.to(torch.float64) + torch.diag_embed(lam.to(torch.float64))
    sigma = 0.5 * (sigma + sigma.transpose(-1, -2))
    chol, info = torch.linalg.cholesky_ex(sigma)
    if bool((info > 0).any()):
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
    W = torch.cholesky_inverse(chol)
    logdet = 2.0 * torch.log(chol.diagonal(dim1=-2, dim2=-1)).sum(-1)
    return Precision(W=W, logdet=logdet)


def type2_cost(prec, Cy):
    """Return the Type-II cost ``log|Sigma_y| + tr(C_y W)``, shape (B,)."""
    return prec.logdet + (prec.W * Cy.to(torch.float64)).sum((-1, -2))


def source_stats(L, Cy, gamma, prec):
    """Convex-bounding source statistics at the state ``(gamma, lam)``.

    ``b = diag(L^T W L)`` and ``a = gamma^2 diag(L^T W C_y W L)`` come from
    one stacked ``(2M x M) @ (M x N)`` product in the working precision.
    """
    W64 = prec.W
    Cy64 = Cy.to(torch.float64)
    P = W64 @ Cy64 @ W64  # (B, M, M), cheap: M^3
    stacked = torch.cat([W64, P], dim=-2).to(L.dtype) @ L  # (B, 2M, N)
    M = L.shape[0]
    b = (L * stacked[:, :M]).sum(-2)
    quad = (L * stacked[:, M:]).sum(-2)
    a = gamma.to(L.dtype) ** 2 * quad
    cost = type2_cost(prec, Cy)
    return SourceStats(a=a, b=b, cost=cost)


def noise_stats(Cy, lam, prec):
    """Convex-bounding noise statistics ``r = lam^2 diag(W C_y W)``, ``c = diag(W)``."""
    W64 = prec.W
    WC = W64 @ Cy.to(torch.float64)
    r = lam.to(torch.float64) ** 2 * (WC * W64).sum(-1)
    c = W64.diagonal(dim1=-2, dim2=-1)
    cost = type2_cost(prec, Cy)
    return NoiseStats(r=r.to(lam.dtype), c=c.to(lam.dtype), cost=cost)


def log_ratio_update(num, den, eps=LOG_EPS):
    """The classical log-domain update ``0.5 log(num+eps) - 0.5 log(den+eps)``.

    Returns the log-features too: ``(update, log(num + eps), log(den + eps))``.
    """
    s = torch.log(num + eps)
    q = torch.log(den + eps)
    return 0.5 * s - 0.5 * q, s, q


def hard_threshold(gamma, rel_threshold):
    """Set ``gamma_n = 0`` where ``gamma_n < rel_threshold * max(gamma)`` (eq. 24-25)."""
    if rel_threshold is None or rel_threshold <= 0:
        return gamma
    keep = gamma >= rel_threshold * gamma.amax(-1, keepdim=True)
    return torch.where(keep, gamma, torch.zeros_like(gamma))


def normalize_problem(L, Cy):
    """Scale lead field and data to unit-free, order-one quantities.

    The lead field is divided by ``l_scale = sqrt(||L||_F^2 / M)`` (so the
    mean diagonal of ``L L^T`` is 1) and each sample's ``C_y`` by
    ``y_scale^2 = tr(C_y) / M`` (unit mean sensor power).  Variances scale
    back as ``gamma = gamma_n * y_scale^2 / l_scale^2`` and
    ``lam = lam_n * y_scale^2``.  Because the solver runs on the
    normalised problem, multiplying the data by any ``c > 0`` multiplies
    the source estimates by ``c`` exactly.

    Returns
    -------
    L_n, Cy_n : torch.Tensor
        Normalised lead field ``(M, N)`` and statistics ``(B, M, M)``.
    l_scale : torch.Tensor
        Scalar.
    y_scale : torch.Tensor, shape (B,)
        Per-sample data scale.
    """
    M = L.shape[0]
    l_scale = torch.sqrt((L.to(torch.float64) ** 2).sum() / M)
    y_pow = Cy.to(torch.float64).diagonal(dim1=-2, dim2=-1).sum(-1) / M
    if bool((y_pow <= 0).any()) or not bool(torch.isfinite(y_pow).all()):
        raise ValueError(
            "The data have zero or non-finite power in at least one sample; "
            "remove flat or NaN/Inf channels or epochs before source imaging."
        )
    y_scale = torch.sqrt(y_pow)
    L_n = (L / l_scale.to(L.dtype)).to(L.dtype)
    Cy_n = (Cy / y_pow.to(Cy.dtype)[:, None, None]).to(L.dtype)
    return L_n, Cy_n, l_scale, y_scale


def posterior_mean(L, gamma, lam, Y):
    """Posterior mean ``Xbar = Gamma L^T W Y``.

    Parameters
    ----------
    L : torch.Tensor, shape (M, N)
    gamma : torch.Tensor, shape (B, N)
    lam : torch.Tensor, shape (B, M)
    Y : torch.Tensor, shape (B, M, T)

    Returns
    -------
    Xbar : torch.Tensor, shape (B, N, T), in the dtype of ``L``.
    """
    prec = precision(model_covariance(L, gamma), lam)
    WY = (prec.W @ Y.to(torch.float64)).to(L.dtype)  # (B, M, T)
    return gamma.to(L.dtype)[:, :, None] * (L.T @ WY)


@dataclass
class CBState:
    """State of the alternating solver between two iterations."""

    gamma: torch.Tensor  # (B, N)
    lam: torch.Tensor  # (B, M)
    S: torch.Tensor  # (B, M, M): L Gamma L^T for the current gamma


def initial_state(L, Cy, noise_var=None, noise_init=0.1):
    """Starting point of the solver on a normalised problem.

    ``gamma`` starts flat with ``diag(L Gamma L^T)`` equal, on average, to
    the data power not explained by the initial noise; ``lam`` starts at
    ``noise_var`` when given (known or initial noise, normalised units),
    else at ``noise_init`` times the mean sensor power (which is 1 after
    :func:`normalize_problem`).
    """
    B, M = Cy.shape[0], L.shape[0]
    N = L.shape[1]
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
class Problem:
    """A normalised problem and its starting state (see :func:`prepare`)."""

    L_n: torch.Tensor
    Cy_n: torch.Tensor
    l_scale: torch.Tensor
    y_scale: torch.Tensor
    state: CBState

    def to_input_units(self, gamma_n, lam_n):
        """Scale normalised ``(gamma, lam)`` back to the input units."""
        y2 = (self.y_scale ** 2).to(gamma_n.dtype)[:, None]
        l2 = (self.l_scale ** 2).to(gamma_n.dtype)
        return gamma_n * y2 / l2, lam_n * y2


def prepare(L, Cy, noise_var=None, noise_init=0.1):
    """Normalise ``(L, Cy)`` and build the starting state.

    ``noise_var`` (known or initial noise variances, shape ``(B, M)`` or
    ``(M,)``, in the units of ``Cy``) is normalised with the data.
    """
    L_n, Cy_n, l_scale, y_scale = normalize_problem(L, Cy)
    nv = None
    if noise_var is not None:
        y2 = (y_scale ** 2).to(L.dtype)[:, None]
        nv = noise_var.to(dtype=L.dtype, device=L.device) / y2
    state = initial_state(L_n, Cy_n, nv, noise_init)
    return Problem(L_n, Cy_n, l_scale, y_scale, state)


def source_step(L, Cy, state, correction=None, rel_threshold=None):
    """One convex-bounding source update (optionally corrected), in logs.

    ``log gamma <- 0.5 log(a + eps) - 0.5 log(b + eps) + Delta`` where
    ``Delta = correction(s, q, log_gamma)`` (zero for the classical solver).

    Returns
    -------
    gamma_new : torch.Tensor, shape (B, N)
    info : dict
        ``a, b, s, q, delta`` and the Type-II ``cost`` at the input state.
    """
    prec = precision(state.S, state.lam)
    st = source_stats(L, Cy, state.gamma, prec)
    log_g, s, q = log_ratio_update(st.a, st.b)
    delta = None
    if correction is not None:
        log_gamma_old = torch.log(state.gamma + LOG_EPS)
        delta = correction(s, q, log_gamma_old)
        log_g = log_g + delta
    gamma = hard_threshold(torch.exp(log_g.clamp(max=LOG_GAMMA_MAX)),
                           rel_threshold)
    return gamma, dict(a=st.a, b=st.b, s=s, q=q, delta=delta, cost=st.cost)


def noise_step(Cy, S, lam, correction=None):
    """One convex-bounding noise update (optionally corrected), in logs.

    Uses the posterior with the *updated* source variances (``S``) and the
    previous noise variances ``lam``, as in the alternating scheme.
    """
    prec = precision(S, lam)
    st = noise_stats(Cy, lam, prec)
    log_l, u, v = log_ratio_update(st.r, st.c)
    delta = None
    if correction is not None:
        delta = correction(u, v, torch.log(lam + LOG_EPS))
        log_l = log_l + delta
    return torch.exp(log_l.clamp(*LOG_LAMBDA_RANGE)), dict(r=st.r, c=st.c, u=u, v=v, delta=delta,
                                  cost=st.cost)


def cb_iteration(L, Cy, state, learn_noise, source_correction=None,
                 noise_correction=None, rel_threshold=None):
    """One alternating iteration: gamma from (gamma, lam), then lam.

    ``L Gamma L^T`` is formed once per iteration and shared by the noise
    update and the next source update (only the diagonal ``Lambda``
    differs), so a joint iteration costs three ``M^2 N`` products.
    """
    gamma, sinfo = source_step(L, Cy, state, source_correction, rel_threshold)
    S = model_covariance(L, gamma)
    ninfo = None
    lam = state.lam
    if learn_noise:
        lam, ninfo = noise_step(Cy, S, state.lam, noise_correction)
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
                    max_iter=25, tol=None, tol_type="cost", rel_threshold=None):
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

    Returns
    -------
    result : CBResult
    """
    if not learn_noise and noise_var is None:
        raise ValueError("noise_var is required when learn_noise=False.")
    prob = prepare(L, Cy, noise_var, noise_init)
    L_n, Cy_n, state = prob.L_n, prob.Cy_n, prob.state
    B = Cy.shape[0]
    done = torch.zeros(B, dtype=torch.bool, device=L.device)
    n_iter = torch.zeros(B, dtype=torch.long, device=L.device)
    costs = []
    for _ in range(max_iter):
        new, sinfo, _ = cb_iteration(L_n, Cy_n, state, learn_noise,
                                     rel_threshold=rel_threshold)
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
            elif tol_type == "gamma":
                change = ((new.gamma - state.gamma).abs().amax(-1)
                          / new.gamma.amax(-1).clamp_min(1e-300))
                done = done | (change < tol)
            else:
                raise ValueError(f"tol_type must be 'cost' or 'gamma', got {tol_type!r}")
        state = new
        if bool(done.all()):
            break
    final = precision(state.S, state.lam)
    costs.append(type2_cost(final, Cy_n))
    gamma, lam = prob.to_input_units(state.gamma, state.lam)
    return CBResult(
        gamma=gamma,
        lam=lam,
        n_iter=n_iter,
        converged=done,
        cost=torch.stack(costs),
    )
