"""A fixed bank of pre-simulated training samples, kept as sufficient statistics.

The streaming trainer (:mod:`.data`) simulates every batch afresh and runs
the whole network on it, so a progressive phase that trains layer ``k``
pays for the ``k`` frozen layers before it at every step. A bank instead
simulates ``bank_size`` samples once (on several lead fields: caps and
source spaces, each inverted with the default-conductivity lead field and
simulated with perturbed ones), and keeps per sample only what the solver
and the loss need, in the normalised units of
:func:`~mne_unfolded_sbl.core.solver.prepare`:

* ``Cy_n`` (M x M), the data statistic;
* ``X_n Y_n^T / T`` in low-rank form ``F A`` (``F``: N x r with
  ``r = n_sources`` at most, from a rank-revealing QR of ``X``; ``A``:
  r x M) and ``cxx_n = ||X_n||^2 / T``, so the normalised squared error of
  the posterior mean ``K Y_n`` (``K = Gamma L^T W``) is
  ``(tr(K Cy K^T) - 2 tr(K A^T F^T) + cxx) / cxx`` whatever ``T`` was
  (:func:`nmse_lowrank`): time courses of 20 to 500 samples cost the same,
  and a sample takes ``(N + M) r + M^2`` numbers;
* the given noise variances (source-only models start from them);
* the **cached state** before the layer the current phase trains: after a
  progressive phase the bank is advanced through the trained layer once
  (:meth:`SampleBank.advance`), so each step of the next phase runs one
  layer instead of ``k + 1``;
* the true temporal RMS amplitude of every source (``x_rms``, N numbers),
  the mass of the spatial term (:func:`~.loss.energy_distance`);
* the regime of the mixture the sample was drawn from (``regime``), for
  the objective's per-regime hinge;
* the per-sample, per-layer error, shape error (:func:`nmse_lowrank`),
  spatial error (energy distance of the RMS maps) and support error (one
  minus a soft F1 of the RMS maps, :func:`~.loss.support_error`) of
  classical convex bounding at the same depth (``l_ref``, ``s_ref``,
  ``e_ref``, ``f_ref``), the references of the objective and of its "do
  no harm" hinge (:mod:`.loss`).

The bank is rebuilt deterministically from the seed when a run resumes, and
advanced through the layers trained so far.
"""

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from ..core._utils import logger
from ..core.network import classical_network
from ..core.simulator import EEGSimulator, derive_seed
from ..core.solver import (CBState, NormalizedProblem, column_variances,
                           covariance_statistic, initial_state,
                           model_covariance, precision, prepare)
from .loss import SPATIAL_THRESHOLD, energy_distance, support_error

_BUILD, _DRAW = 11, 12  # stream tags of derive_seed
#: Version of the saved bank layout (:meth:`SampleBank.save`); bump it when
#: the simulator or the stored statistics change.
BANK_FORMAT = 5
_TENSORS = ("Cy", "F", "A", "cxx", "nv", "y_scale", "L_n", "Lt", "l_scale",
            "x_rms", "regime", "l_ref", "s_ref", "e_ref", "f_ref")
#: Samples per chunk when building and advancing a bank.
CHUNK = 128


def nmse_from_stats(K, Cy_n, Cxy_n, cxx_n):
    """Per-sample normalised squared error of ``K @ Y_n`` against ``X_n``.

    The plain form of :func:`nmse_lowrank` (a reference for its tests).

    Parameters
    ----------
    K : torch.Tensor, shape (B, N, M)
        Posterior-mean kernel in normalised units.
    Cy_n : torch.Tensor, shape (B, M, M)
    Cxy_n : torch.Tensor, shape (B, N, M)
        ``X_n Y_n^T / T``.
    cxx_n : torch.Tensor, shape (B,)
        ``||X_n||_F^2 / T``.

    Returns
    -------
    nmse : torch.Tensor, shape (B,), float64
        ``||K Y_n - X_n||^2 / ||X_n||^2``.
    """
    KC = K @ Cy_n.to(K.dtype)
    t1 = (KC * K).sum((1, 2), dtype=torch.float64)
    t2 = (K * Cxy_n.to(K.dtype)).sum((1, 2), dtype=torch.float64)
    cxx = cxx_n.to(torch.float64)
    return ((t1 - 2.0 * t2 + cxx) / cxx).clamp_min(0.0)


def lowrank_cross(X, Y, rank):
    """``X Y^T / T`` as ``F @ A`` with ``F`` (B, N, r), ``A`` (B, r, M).

    Exact when ``rank(X) <= rank`` (``X`` is a sum of at most ``rank``
    sources with one time course each): ``F`` is an orthonormal basis of
    the range of ``X`` from a QR of ``X`` times a random ``T x r`` matrix.
    """
    T = X.shape[-1]
    X64, Y64 = X.to(torch.float64), Y.to(torch.float64)
    gen = torch.Generator(device=X.device).manual_seed(0)
    omega = torch.randn(T, int(rank), generator=gen, dtype=torch.float64,
                        device=X.device)
    F, _ = torch.linalg.qr(X64 @ omega)  # (B, N, r)
    A = (F.transpose(1, 2) @ X64) @ Y64.transpose(1, 2) / T
    return F, A


def nmse_lowrank(L_n, Lt, gamma, lam, null_space, Cy_n, F, A, cxx_n,
                 shape=False, rms=False):
    """Per-sample error of the posterior mean from low-rank statistics.

    ``||K Y_n - X_n||^2 / ||X_n||^2`` with ``K = Gamma L^T W`` at the state
    ``(gamma, lam)`` and ``X_n Y_n^T / T = F A``::

        tr(K Cy K^T) = sum_n gamma_n^2 (L^T W Cy W L)_nn
        tr(K A^T F^T) = sum_n gamma_n sum_j F_nj (L^T W A^T)_nj

    Both come from one product of the ``N x M`` transposed lead field with
    ``[W Cy W, W A^T]`` for the whole batch: no ``N x M`` kernel per sample
    is formed.

    With ``shape=True`` it also returns the *shape error* ``1 - cos^2``
    between the estimate and the truth (``cos = <Xhat, X> / (||Xhat||
    ||X||)``): the normalised error of the best-scaled estimate,
    ``min_a ||a Xhat - X||^2 / ||X||^2``. It does not reward shrinking an
    uncertain estimate towards zero, which lowers the plain error but not
    the scale-free metrics (EMD, F1, localisation error).

    With ``rms=True`` it also returns the temporal RMS amplitude of every
    estimated source, ``gamma_n sqrt((L^T W Cy W L)_nn)`` (the mass of the
    benchmark's EMD), from the same product.

    Returns
    -------
    nmse : torch.Tensor, shape (B,), float64
    shape_err : torch.Tensor, shape (B,), float64
        Only with ``shape=True``.
    rms : torch.Tensor, shape (B, N)
        Only with ``rms=True`` (last).
    """
    W = precision(model_covariance(L_n, gamma), lam, null_space).W
    Cy64 = Cy_n.to(torch.float64)
    B, M, r = W.shape[0], L_n.shape[0], A.shape[1]
    P = W @ (Cy64 @ W)
    G = torch.cat([P, W @ A.to(torch.float64).transpose(1, 2)], -1)
    LtG = (Lt @ G.to(L_n.dtype).transpose(0, 1).reshape(M, B * (M + r))
           ).view(-1, B, M + r)  # (N, B, M + r)
    c = (LtG[..., :M] * Lt[:, None, :]).sum(-1).T  # (B, N) diag(L^T P L)
    u = LtG[..., M:].transpose(0, 1)  # (B, N, r)
    g = column_variances(L_n, gamma).to(L_n.dtype)
    t1 = (g.square() * c).sum(-1, dtype=torch.float64)  # ||Xhat||^2 / T
    t2 = (g[:, :, None] * F.to(L_n.dtype) * u).sum((1, 2), dtype=torch.float64)
    cxx = cxx_n.to(torch.float64)
    err = ((t1 - 2.0 * t2 + cxx) / cxx).clamp_min(0.0)
    out = [err]
    if shape:
        tiny = torch.finfo(torch.float64).tiny
        cos2 = t2.square() / (t1 * cxx).clamp_min(tiny)
        out.append((1.0 - cos2).clamp(0.0, 1.0))
    if rms:
        out.append(g * c.clamp_min(torch.finfo(c.dtype).tiny).sqrt())
    return out[0] if len(out) == 1 else tuple(out)


class SampleErrors(NamedTuple):
    """Per-sample errors of estimates on bank samples (:meth:`_Shard.errors`);
    the ones not asked for are None. All shape (B,), float64."""

    nmse: torch.Tensor
    shape: torch.Tensor = None
    spatial: torch.Tensor = None
    support: torch.Tensor = None


@dataclass
class ShardSpec:
    """One lead field of a bank and how it is simulated.

    ``L_inv`` inverts; every sample is simulated with one of ``L_sims``
    (drawn uniformly), e.g. the same cap with perturbed conductivities.
    """

    name: str
    L_inv: np.ndarray  # (M, N), average-referenced
    L_sims: list  # of (M, N)
    pos: np.ndarray  # (N, 3)
    adjacency: object = None  # scipy.sparse (N, N) or None
    weight: float = 1.0


class _Shard:
    """The tensors of one shard (see :class:`SampleBank`)."""

    def __init__(self, spec, n, sim_config, seed, index, net_kwargs, device,
                 dtype, saved=None):
        self.name = spec.name
        #: source-to-source distances (m), the ground cost of the spatial term
        self.dist = torch.cdist(*(2 * [torch.as_tensor(
            np.asarray(spec.pos, np.float64))])).to(device, dtype)
        self.noise_init = float(net_kwargs.get("noise_init", 0.1))
        self.learn_noise = bool(net_kwargs.get("learn_noise", True))
        if saved is not None:  # from SampleBank.load: no simulation
            self.n = int(saved["n"])
            for k in _TENSORS:
                if k in saved:
                    setattr(self, k, saved[k].to(device))
            self.null_space = _regimes(sim_config)[0][1].null_space(
                self.L_n.shape[0], device)
            self.reset()
            return
        self.n = int(n)
        L = torch.as_tensor(np.asarray(spec.L_inv, np.float64)).to(device, dtype)
        regimes = _regimes(sim_config)
        weights = np.array([w for w, _ in regimes]) / sum(w for w, _ in regimes)
        sims = [[EEGSimulator(Ls, spec.pos, cfg, device=device, dtype=dtype,
                              seed=0, **_adjacency_kw(spec))
                 for Ls in spec.L_sims] for _, cfg in regimes]
        self.null_space = sims[0][0].null_space
        rank = max(int(cfg.n_sources[1]) for _, cfg in regimes)
        chunks = dict(Cy=[], F=[], A=[], cxx=[], nv=[], y_scale=[], x_rms=[],
                      regime=[])
        for c, start in enumerate(range(0, self.n, CHUNK)):
            b = min(CHUNK, self.n - start)
            seed_c = derive_seed(seed, _BUILD, index, c)
            rng = np.random.default_rng(seed_c)
            which = int(rng.integers(len(spec.L_sims)))
            if len(regimes) == 1:  # (the draws of banks without a mixture)
                parts = [(0, b, seed_c)]
            else:
                counts = rng.multinomial(b, weights)
                parts = [(r, int(k), derive_seed(seed_c, r))
                         for r, k in enumerate(counts) if k]
            for r, k, seed_p in parts:
                s = sims[r][which].sample(k, seed=seed_p)
                stats, lead_field = self._statistics(L, s, rank, dtype)
                stats["regime"] = torch.full((k,), r, dtype=torch.long,
                                             device=device)
                for key, v in stats.items():
                    chunks[key].append(v)
        for k, v in chunks.items():
            if v:
                setattr(self, k, torch.cat(v))
        self.L_n, self.l_scale, self.Lt = lead_field
        self.reset()
        self.l_ref, self.s_ref, self.e_ref, self.f_ref = \
            self._classical_reference(net_kwargs["n_layers"])

    def _statistics(self, L, s, rank, dtype):
        """The stored statistics of the simulated samples ``s``, and the
        normalised lead field ``(L_n, l_scale, Lt)`` (the same for every
        batch of the shard)."""
        Y, X = s["Y"], s["X"]
        nv = s.get("noise_var_given", s["noise_var"])
        prob = prepare(L, covariance_statistic(Y), nv, 0.1, self.null_space)
        ys = prob.y_scale.to(dtype)
        Yn = Y / ys[:, None, None]
        Xn = X * (prob.l_scale.to(dtype) / ys)[:, None, None]
        F, A = lowrank_cross(Xn, Yn, rank)
        stats = dict(Cy=prob.Cy_n.to(torch.float32), F=F.to(dtype),
                     A=A.to(dtype),
                     cxx=Xn.square().sum((1, 2), dtype=torch.float64) / Y.shape[-1],
                     nv=(nv / ys[:, None] ** 2).to(dtype), y_scale=prob.y_scale,
                     x_rms=Xn.square().mean(-1).sqrt().to(dtype))
        return stats, (prob.L_n, prob.l_scale, prob.Lt)

    # -- states ----------------------------------------------------------
    def initial_state(self, idx):
        """The solver's starting state ``(gamma, lam)`` of samples ``idx``
        (:func:`~mne_unfolded_sbl.core.solver.initial_state`)."""
        nv = None if self.learn_noise else self.nv[idx]
        st = initial_state(self.L_n, self.Cy[idx], nv, self.noise_init)
        return st.gamma, st.lam

    def reset(self):
        """Cached states back to the solver's starting state."""
        states = [self.initial_state(idx) for idx in self._chunks()]
        self.gamma = torch.cat([g for g, _ in states])
        self.lam = torch.cat([lm for _, lm in states])

    def _chunks(self):
        """Index tensors of the samples, :data:`CHUNK` at a time."""
        for a in range(0, self.n, CHUNK):
            yield torch.arange(a, min(a + CHUNK, self.n), device=self.L_n.device)

    def problem(self, idx, gamma=None, lam=None):
        """A :class:`NormalizedProblem` of samples ``idx`` at the cached state."""
        g = self.gamma[idx] if gamma is None else gamma
        lm = self.lam[idx] if lam is None else lam
        state = CBState(gamma=g, lam=lm, S=model_covariance(self.L_n, g))
        return NormalizedProblem(self.L_n, self.Cy[idx].to(torch.float64),
                                 self.l_scale, self.y_scale[idx], state,
                                 self.null_space, self.Lt)

    def errors(self, idx, gamma, lam, shape=False, spatial=False,
               support=False):
        """Per-sample errors of the posterior mean at ``(gamma, lam)``.

        Always its error (:func:`nmse_lowrank`); with ``shape=True`` also
        its shape error, with ``spatial=True`` its spatial error (the
        energy distance of the estimated and true RMS maps without their
        sources below :data:`~.loss.SPATIAL_THRESHOLD` of the peak,
        :func:`~.loss.energy_distance`), with ``support=True`` its support
        error (:func:`~.loss.support_error` of those maps).

        Returns
        -------
        errors : SampleErrors
        """
        maps = spatial or support
        out = nmse_lowrank(self.L_n, self.Lt, gamma, lam, self.null_space,
                           self.Cy[idx], self.F[idx], self.A[idx],
                           self.cxx[idx], shape=shape, rms=maps)
        out = list(out) if isinstance(out, tuple) else [out]
        rms = out.pop() if maps else None
        x_rms = self.x_rms[idx]
        return SampleErrors(
            nmse=out[0], shape=out[1] if shape else None,
            spatial=(energy_distance(x_rms, rms, self.dist, SPATIAL_THRESHOLD)
                     if spatial else None),
            support=support_error(x_rms, rms) if support else None)

    @torch.no_grad()
    def advance(self, net, start, stop):
        """Run layers ``start .. stop - 1`` of ``net`` on every cached state."""
        for idx in self._chunks():
            out = net.run(self.problem(idx), start=start, stop=stop)
            self.gamma[idx] = out.gamma_n.to(self.gamma.dtype)
            self.lam[idx] = out.lam_n.to(self.lam.dtype)

    @torch.no_grad()
    def _classical_reference(self, n_layers):
        """Errors, shape errors, spatial errors and support errors of
        classical convex bounding after every layer, four (n, K) tensors."""
        net = classical_network(n_layers, self.learn_noise,
                                noise_init=self.noise_init).to(
            self.L_n.device, self.L_n.dtype)
        refs = [torch.empty(self.n, n_layers, dtype=torch.float64,
                            device=self.L_n.device) for _ in range(4)]
        for idx in self._chunks():
            out = net.run(self.problem(idx), return_trajectory=True)
            for k, st in enumerate(out.trajectory):
                vals = self.errors(idx, st["gamma"], st["lam"], shape=True,
                                   spatial=True, support=True)
                for ref, v in zip(refs, vals):
                    ref[idx, k] = v.to(torch.float64)
        return tuple(refs)


def _regimes(sim_config):
    """``[(weight, SimulationConfig), ...]`` from one config or a mixture."""
    if isinstance(sim_config, (list, tuple)):
        if not sim_config:
            raise ValueError("A regime mixture needs at least one regime.")
        return [(float(w), cfg) for w, cfg in sim_config]
    return [(1.0, sim_config)]


def _adjacency_kw(spec):
    # only simulators that know the keyword get it (older cores lack it)
    if spec.adjacency is None:
        return {}
    return dict(adjacency=spec.adjacency)


class SampleBank:
    """Pre-simulated samples on several lead fields (see the module docstring).

    Parameters
    ----------
    specs : list of ShardSpec
    size : int
        Samples in all, split over the shards in proportion to their weights.
    sim_config : SimulationConfig | list of (float, SimulationConfig)
        The simulation, or a mixture of regimes with their weights: every
        chunk of a shard's samples is split among the regimes by a seeded
        multinomial draw.
    seed : int
    net_kwargs : dict
        ``n_layers``, ``learn_noise``, ``noise_init`` of the network.
    device, dtype
    """

    def __init__(self, specs, size, sim_config, seed, net_kwargs, device,
                 dtype, saved=None):
        w = np.array([float(s.weight) for s in specs])
        if not len(specs) or (w <= 0).any():
            raise ValueError("A bank needs at least one shard, each with a "
                             "positive weight.")
        counts = np.maximum(1, np.floor(size * w / w.sum())).astype(int)
        counts[0] += int(size) - counts.sum()
        saved = saved or [None] * len(specs)
        self.shards = [
            _Shard(spec, n, sim_config, seed, i, net_kwargs, device, dtype, sv)
            for i, (spec, n, sv) in enumerate(zip(specs, counts, saved))]
        self.weights = torch.as_tensor(w / w.sum())
        self.seed = int(seed)
        #: the layer the cached states stand before
        self.position = 0
        logger.info("Sample bank: " + ", ".join(
            f"{s.name} {s.n}" for s in self.shards))

    @property
    def size(self):
        return sum(s.n for s in self.shards)

    def save(self, fname):
        """Write the simulated statistics and the classical reference.

        The cached states are not saved (a loaded bank starts at layer 0).
        """
        torch.save(dict(format=BANK_FORMAT, shards=[
            dict(n=s.n, **{k: getattr(s, k).cpu() for k in _TENSORS})
            for s in self.shards]), fname)

    @classmethod
    def load(cls, fname, specs, size, sim_config, seed, net_kwargs, device,
             dtype):
        """A bank written by :meth:`save` (same arguments as the constructor;
        a file of another format or shape raises ``ValueError``)."""
        d = torch.load(fname, map_location="cpu", weights_only=True)
        if d.get("format") != BANK_FORMAT or len(d["shards"]) != len(specs):
            raise ValueError(f"{fname} is not a bank of this layout.")
        return cls(specs, size, sim_config, seed, net_kwargs, device, dtype,
                   saved=d["shards"])

    def move_to(self, net, layer):
        """Cached states before ``layer`` (advance, or reset and advance)."""
        if layer < self.position:
            for s in self.shards:
                s.reset()
            self.position = 0
        if layer > self.position:
            for s in self.shards:
                s.advance(net, self.position, layer)
        self.position = int(layer)

    def draw(self, phase, step, batch_size):
        """``(shard, idx)`` of the batch of ``(phase, step)`` (seeded)."""
        gen = torch.Generator().manual_seed(
            derive_seed(self.seed, _DRAW, phase, step))
        k = int(torch.multinomial(self.weights, 1, generator=gen))
        shard = self.shards[k]
        idx = torch.randint(0, shard.n, (int(batch_size),), generator=gen)
        return shard, idx.to(shard.L_n.device)

    def batch(self, phase, step, batch_size):
        """A training batch: problem at the cached state plus loss statistics."""
        shard, idx = self.draw(phase, step, batch_size)
        return dict(bank=True, shard=shard, idx=idx, problem=shard.problem(idx),
                    start=self.position)

    @torch.no_grad()
    def evaluate(self, net, stop):
        """Errors after layer ``stop - 1`` from the cached states.

        Returns
        -------
        res : dict
            ``nmse`` and ``ref`` (classical at the same depth), ``shape``
            and ``shape_ref`` (the shape errors), ``spatial`` and
            ``spatial_ref`` (the spatial errors), ``support`` and
            ``support_ref`` (the support errors) and ``regime`` (each
            sample's regime), per shard name, as numpy arrays.
        """
        res = {}
        for s in self.shards:
            parts = []
            for idx in s._chunks():
                out = net.run(s.problem(idx), start=self.position, stop=stop)
                parts.append(s.errors(idx, out.gamma_n, out.lam_n, shape=True,
                                      spatial=True, support=True))
            cat = SampleErrors(*(torch.cat(v).cpu().numpy()
                                 for v in zip(*parts)))
            res[s.name] = dict(nmse=cat.nmse,
                               ref=s.l_ref[:, stop - 1].cpu().numpy(),
                               shape=cat.shape,
                               shape_ref=s.s_ref[:, stop - 1].cpu().numpy(),
                               spatial=cat.spatial,
                               spatial_ref=s.e_ref[:, stop - 1].cpu().numpy(),
                               support=cat.support,
                               support_ref=s.f_ref[:, stop - 1].cpu().numpy(),
                               regime=s.regime.cpu().numpy())
        return res


__all__ = ["SampleBank", "SampleErrors", "ShardSpec", "lowrank_cross",
           "nmse_from_stats", "nmse_lowrank"]
