"""Benchmark adapters of the comparison methods.

The methods themselves (names, labels, settings) are the entries of the
registry :mod:`mne_unfolded_sbl.methods`, shared with the report; this
module runs them on a :class:`Batch` of simulated samples. Every adapter
turns the batch into source estimates ``(B, N, T)`` in the simulator's
units and reports the seconds it spent per sample. Three families:

- ``"sbl"`` (:class:`SBLMethod`): the convex-bounding solver (classical,
  fixed depth or run to convergence) and the learned unfolded networks,
  with the point, multi-scale or loose-orientation source model of the
  registry entry. Batched in PyTorch on the arrays (average-referenced lead
  field, data, the noise variances the solvers are told:
  :attr:`Batch.noise_var`).
- ``"linear"`` (:class:`MNELinearMethod`): MNE's minimum-norm family
  (sLORETA, dSPM, eLORETA, MNE).
- ``"sparse"`` (:class:`GammaMapMethod`, :class:`MxNEMethod`): MNE's
  sparse solvers.

MNE's methods run per sample through the registry entry's
:meth:`~mne_unfolded_sbl.methods.ComparisonMethod.estimate` (or its
prepared-operator steps) on an :class:`mne.EvokedArray` built from the
simulated array (montage info with an average-reference projector, data in
volts: the unit-free sources times
:data:`~mne_unfolded_sbl.benchmark.settings.SOURCE_SCALE`) with the
diagonal noise covariance of that sample that the solvers are told
(:attr:`Batch.noise_var`: the true one, except in settings that hand the
solvers a wrong one, such as ``miscaled-cov``).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from mne.utils import use_log_level as mne_log_level

from .. import methods as registry
from .._checks import check_tied_geometry
from ..core._utils import DTYPES
from ..core.multiscale import prefer_multiscale
from ..core.network import MODELS
from ..core.solver import convex_bounding, covariance_statistic, posterior_mean
from ..core.weights import with_sensor_order
# the settings live in the registry; re-exported for the CLI and runner
from ..methods import (CB_MAX_ITER, CB_TOL, LAMBDA2, MXNE_ALPHA, N_LAYERS,
                       expand_stc)
from .settings import SOURCE_SCALE

__all__ = ["Batch", "IncompatibleMethod", "Solution", "Method", "SBLMethod",
           "MNELinearMethod", "GammaMapMethod", "MxNEMethod",
           "classical_methods", "mne_methods", "learned_method_keys",
           "learned_method", "all_method_keys", "resolve_methods", "GROUPS",
           "CB_MAX_ITER", "CB_TOL", "LAMBDA2", "MXNE_ALPHA", "N_LAYERS"]


@dataclass
class Batch:
    """Simulated samples (simulator units) and per-sample MNE objects.

    ``noise_var`` holds the noise variances every method is *told*: the
    source-only SBL solvers' ``noise_var`` and the diagonal of the noise
    covariance of MNE's solvers (:meth:`mne_inputs`) both come from it, and
    nothing else. It is the simulator's ``noise_var_given`` where the
    simulation draws one (a miscaled or ad hoc covariance), else the true
    variances; ``noise_var_true`` keeps the true ones (None: the same).
    """

    Y: np.ndarray  # (B, M, T)
    X: np.ndarray  # (B, N, T)
    noise_var: np.ndarray  # (B, M) what the solvers are told
    index: np.ndarray  # (B,) sample indices
    #: (B, N, 3) dipole orientations (head coordinates) of problems scored
    #: on vectors (tilted dipoles), else None.
    ori: np.ndarray = None
    #: (B, M) the variances the noise was drawn with, where they differ
    #: from ``noise_var`` (None: equal).
    noise_var_true: np.ndarray = None
    _mne: dict = field(default_factory=dict)

    def __len__(self):
        return len(self.Y)

    @property
    def true_noise_var(self):
        """The variances the noise was drawn with (B, M)."""
        return self.noise_var if self.noise_var_true is None \
            else self.noise_var_true

    def mne_inputs(self, i, problem):
        """``(evoked, noise_cov)`` of sample ``i`` (built once, cached)."""
        if i not in self._mne:
            import mne

            # MEG+EEG problems: rows back to physical units
            scale = (np.ones(self.Y.shape[1]) if problem.row_scale is None
                     else np.asarray(problem.row_scale, float))
            ev = mne.EvokedArray(self.Y[i] * SOURCE_SCALE / scale[:, None],
                                 problem.info, tmin=0.0, nave=1, verbose=False)
            cov = mne.Covariance(self.noise_var[i] * SOURCE_SCALE ** 2
                                 / scale ** 2,
                                 list(problem.ch_names), bads=[],
                                 projs=list(problem.info["projs"]),
                                 nfree=self.Y.shape[-1], verbose=False)
            self._mne[i] = dict(evoked=ev, cov=cov)
        return self._mne[i]["evoked"], self._mne[i]["cov"]

    def inverse_operator(self, i, problem):
        """Inverse operator of sample ``i`` and its build time.

        :func:`mne_unfolded_sbl.methods.make_inverse_operator`, shared by
        all linear methods of the same sample (built once).
        """
        ev, cov = self.mne_inputs(i, problem)
        entry = self._mne[i]
        if "inv" not in entry:
            t0 = time.perf_counter()
            entry["inv"] = registry.make_inverse_operator(ev.info, problem.fwd,
                                                          cov)
            entry["inv_seconds"] = time.perf_counter() - t0
        return entry["inv"], entry["inv_seconds"]


class IncompatibleMethod(ValueError):
    """A method that cannot run on a setting (e.g. Bias CB on another
    source space); the runner skips it with a warning."""


@dataclass
class Solution:
    """What :meth:`Method.solve` returns."""

    X: np.ndarray  # (B, N, T) estimates, simulator units
    seconds: np.ndarray  # (B,) solve time per sample
    setup_seconds: np.ndarray = None  # (B,) per-sample setup (linear methods)
    n_iter: np.ndarray = None  # (B,) iterations (iterative methods)
    failed: np.ndarray = None  # (B,) bool: the solver raised
    #: (B, N, 3, T) dipole vectors in head coordinates (loose orientation;
    #: None: ``X`` along the cortical normal).
    X_vec: np.ndarray = None
    #: (B,) bool: the multi-scale model was kept (multi-scale methods).
    multiscale: np.ndarray = None


class Method:
    """Base class of the adapters: a registry entry run on batches.

    ``key``, ``label`` and ``current_units`` are those of the entry
    (:class:`mne_unfolded_sbl.methods.ComparisonMethod`); subclasses set
    ``family`` and ``solve``.
    """

    family = "?"
    batched = False

    def __init__(self, spec):
        self.spec = spec
        self.key = spec.key
        self.label = spec.label
        #: Whether the output is in current units (False: noise-normalised
        #: statistic, e.g. dSPM, whose rMSE has no physical meaning).
        self.current_units = spec.current_units
        self.setup_seconds = 0.0
        self.problem = None

    def __repr__(self):
        return f"<{type(self).__name__} {self.key!r}>"

    def prepare(self, problem):
        """One-time setup for a problem (timed into ``setup_seconds``)."""
        self.problem = problem

    def solve(self, batch):  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self):
        """One line for the documentation / run record."""
        return self.spec.describe()


# ----------------------------------------------------------------------------
# SBL (batched, torch)


class SBLMethod(Method):
    """Convex bounding (classical or learned network), batched in torch.

    Parameters
    ----------
    spec : mne_unfolded_sbl.methods.UnfoldedModel
        The registry entry: model (``"cb"``, a learned model name or a
        weights file), ``learn_noise`` (joint ``(gamma, lambda)`` or
        source-only with the noise variances the solvers are told,
        :attr:`Batch.noise_var`), depth ``n_layers`` of the classical
        solver, or ``tol`` to run it to convergence, and the
        source model:

        - ``source_model="multiscale"``: the atoms of
          :class:`~mne_unfolded_sbl.source_models.SourceModel` on the
          problem's source space (needs ``problem.fwd``); the network runs
          on the atoms' lead field and on the point lead field, and each
          sample keeps the model of lower
          :func:`~mne_unfolded_sbl.core.multiscale.evidence_cost`, as
          :func:`~mne_unfolded_sbl.apply_unfolded_sbl` does;
        - ``loose > 0``: three columns per source (the free-orientation
          lead field ``problem.L_free`` weighted by MNE's orientation
          prior), one variance each; needs a problem with the
          free-orientation lead field (``loose-forward``). The estimate
          is the norm over the orientations (``X``) and the vector in head
          coordinates (``X_vec``).
    dtype : "float32" | "float64"
        Working precision of the large products.
    """

    family = "sbl"
    batched = True

    def __init__(self, spec, *, dtype="float32"):
        super().__init__(spec)
        self.dtype = dtype
        self.net = None

    model = property(lambda self: self.spec.model)
    learn_noise = property(lambda self: self.spec.learn_noise)
    n_layers = property(lambda self: self.spec.n_layers)
    tol = property(lambda self: self.spec.tol)
    max_iter = property(lambda self: self.spec.max_iter)
    source_model = property(lambda self: getattr(self.spec, "source_model",
                                                 "point"))
    loose = property(lambda self: getattr(self.spec, "loose", 0.0))

    def prepare(self, problem):
        t0 = time.perf_counter()
        super().prepare(problem)
        self._dtype = DTYPES[self.dtype]
        self._basis = self._L_point = self._col_std = None
        self._n_orient = 1
        if self.loose:
            if problem.L_free is None:
                raise IncompatibleMethod(
                    f"{self.key}: loose orientation needs the free-orientation "
                    "lead field of a setting with tilted dipoles "
                    "('loose-forward'); this setting has fixed-orientation "
                    "sources only.")
            # MNE's orientation prior: tangential columns scaled by
            # sqrt(loose), estimates by it again
            self._col_std = np.tile([np.sqrt(self.loose)] * 2 + [1.0],
                                    problem.n_sources)
            self._L = torch.as_tensor(problem.L_free * self._col_std,
                                      dtype=self._dtype)
            self._n_orient = 3
        elif self.source_model == "multiscale":
            if problem.fwd is None:
                raise IncompatibleMethod(
                    f"{self.key}: the multi-scale source model needs the "
                    "source space of an MNE forward; a synthetic problem has "
                    "none.")
            from ..source_models import SourceModel

            with mne_log_level("error"):
                self._basis = SourceModel(problem.fwd, 0.0,
                                          "multiscale").basis
            self._L = torch.as_tensor(self._basis.leadfield(problem.L),
                                      dtype=self._dtype)
            self._L_point = torch.as_tensor(problem.L, dtype=self._dtype)
        else:
            self._L = torch.as_tensor(problem.L, dtype=self._dtype)
        # average-referenced simulations: the data have no power along 1
        self._null = problem.null_space()
        if self.tol is None:
            from ..core.weights import load_model

            n_layers = self.n_layers if self.model == "cb" else None
            self.net = load_model(self.model, learn_noise=self.learn_noise,
                                  n_layers=n_layers)
            self.net = self.net.to(dtype=self._dtype).eval()
            try:
                order = check_tied_geometry(self.net, problem.ch_names,
                                            None if problem.fwd is None
                                            else problem.fwd["src"],
                                            self._L.shape[1] // self._n_orient)
            except ValueError as err:
                raise IncompatibleMethod(f"{self.key}: {err}") from None
            if order is not None and self.learn_noise:
                self.net = with_sensor_order(self.net, order)
        self.setup_seconds = time.perf_counter() - t0

    def _inputs(self, batch):
        Y = torch.as_tensor(batch.Y, dtype=self._dtype)
        nv = None
        if not self.learn_noise:
            nv = torch.as_tensor(batch.noise_var, dtype=self._dtype)
        return Y, nv

    @torch.no_grad()
    def run(self, Y, noise_var, return_trajectory=False):
        """Run on torch inputs; return ``(X, n_iter, out)``."""
        Cy = covariance_statistic(Y)
        if self.tol is not None:
            res = convex_bounding(self._L, Cy, learn_noise=self.learn_noise,
                                  noise_var=noise_var, max_iter=self.max_iter,
                                  tol=self.tol, tol_type="cost",
                                  null_space=self._null)
            X = posterior_mean(self._L, res.gamma, res.lam, Y, self._null)
            return X, res.n_iter, res
        out = self.net(self._L, Cy, noise_var,
                       return_trajectory=return_trajectory,
                       null_space=self._null, n_orient=self._n_orient)
        n_iter = torch.full((len(Y),), self.net.n_layers)
        return out.posterior_mean(Y), n_iter, out

    @torch.no_grad()
    def _run_multiscale(self, Y, noise_var):
        """Atoms and point model; per sample the one of lower evidence cost.

        Returns ``(X (B, N, T) numpy float64, multiscale kept (B,))``.
        """
        Cy = covariance_statistic(Y)
        multi = self.net(self._L, Cy, noise_var, null_space=self._null)
        point = self.net(self._L_point, Cy, noise_var, null_space=self._null)
        keep = prefer_multiscale(point, multi, Y.shape[-1])
        X_atoms = multi.posterior_mean(Y).to(torch.float64).numpy()
        X_multi = self._basis.to_vertices(X_atoms)
        X_point = point.posterior_mean(Y).to(torch.float64).numpy()
        return np.where(keep[:, None, None], X_multi, X_point), keep

    def _vectors(self, X_cols):
        """Loose columns ``(B, 3N, T)`` -> head-coordinate vectors
        ``(B, N, 3, T)`` (orientation prior undone)."""
        X = X_cols * self._col_std[None, :, None]
        B, _, T = X.shape
        X = X.reshape(B, -1, 3, T)  # local frame (t1, t2, n)
        return np.einsum("nox,bnot->bnxt", self.problem.nn, X)

    def solve(self, batch):
        Y, nv = self._inputs(batch)
        t0 = time.perf_counter()
        X_vec = keep = None
        try:
            if self._basis is not None:
                X, keep = self._run_multiscale(Y, nv)
                n_iter = np.full(len(batch), float(self.net.n_layers))
            else:
                X, n_iter, _ = self.run(Y, nv)
                X = X.to(torch.float64).numpy()
                n_iter = np.asarray(n_iter.numpy(), float)
            if self._n_orient == 3:
                X_vec = self._vectors(X)
                X = np.linalg.norm(X_vec, axis=2)
        except (FloatingPointError, RuntimeError) as err:
            if len(batch) == 1:
                raise
            return self._solve_one_by_one(batch, err)
        dt = (time.perf_counter() - t0) / len(batch)
        failed = ~np.isfinite(X).all(axis=(1, 2))
        if failed.any():
            X[failed] = 0.0
            if X_vec is not None:
                X_vec[failed] = 0.0
            warnings.warn(f"{self.key}: non-finite estimates for samples "
                          f"{batch.index[failed].tolist()}", RuntimeWarning,
                          stacklevel=2)
        return Solution(X=X, seconds=np.full(len(batch), dt), n_iter=n_iter,
                        failed=failed, X_vec=X_vec, multiscale=keep)

    def _solve_one_by_one(self, batch, err):
        """The batch failed (e.g. a non-finite Sigma_y): isolate the
        failing samples; they get an all-zero estimate and ``failed``."""
        B = len(batch)
        X = np.zeros(batch.X.shape)
        X_vec = (np.zeros(batch.X.shape[:2] + (3,) + batch.X.shape[2:])
                 if self._n_orient == 3 else None)
        seconds = np.zeros(B)
        n_iter = np.full(B, np.nan)
        failed = np.zeros(B, bool)
        for i in range(B):
            one = Batch(Y=batch.Y[i:i + 1], X=batch.X[i:i + 1],
                        noise_var=batch.noise_var[i:i + 1],
                        index=batch.index[i:i + 1])
            try:
                sol = self.solve(one)
            except (FloatingPointError, RuntimeError):
                failed[i] = True
                continue
            X[i], seconds[i], n_iter[i] = sol.X[0], sol.seconds[0], sol.n_iter[0]
            if X_vec is not None:
                X_vec[i] = sol.X_vec[0]
            failed[i] = bool(sol.failed[0])
        warnings.warn(f"{self.key} failed on samples "
                      f"{batch.index[failed].tolist()} ({err})", RuntimeWarning,
                      stacklevel=3)
        return Solution(X=X, seconds=seconds, n_iter=n_iter, failed=failed,
                        X_vec=X_vec)


# ----------------------------------------------------------------------------
# MNE (per sample)


class _MNEMethod(Method):
    """Per-sample adapter of an MNE registry entry."""

    def __init__(self, spec):
        super().__init__(spec)
        self.family = spec.family

    def describe(self):
        return f"{self.spec.describe()}, per-sample noise covariance " \
            "(the one the solvers are told)"

    def prepare(self, problem):
        if problem.fwd is None or problem.info is None:
            raise ValueError(f"Method {self.key!r} needs an MNE forward model; "
                             "a synthetic problem has none (use the SBL methods).")
        super().prepare(problem)

    def _to_array(self, stc):
        """The estimate on every source, in the simulator's units."""
        x = expand_stc(stc, self.problem.fwd).data
        return x / SOURCE_SCALE if self.current_units else x

    def solve_one(self, batch, i):
        """``(x, seconds, setup seconds, n_iter)`` of sample ``i``."""
        ev, cov = batch.mne_inputs(i, self.problem)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            stc = self.spec.apply(ev, self.problem.fwd, cov)
            dt = time.perf_counter() - t0
        return self._to_array(stc), dt, 0.0, np.nan

    def solve(self, batch):
        B = len(batch)
        X = np.zeros(batch.X.shape)
        seconds = np.zeros(B)
        setup = np.zeros(B)
        n_iter = np.full(B, np.nan)
        failed = np.zeros(B, bool)
        for i in range(B):
            try:
                X[i], seconds[i], setup[i], n_iter[i] = self.solve_one(batch, i)
            except Exception as err:  # a solver failing on one sample
                if isinstance(err, (KeyboardInterrupt, MemoryError)):
                    raise
                failed[i] = True
                warnings.warn(f"{self.key} failed on sample {batch.index[i]}: "
                              f"{err}", RuntimeWarning, stacklevel=2)
        return Solution(X=X, seconds=seconds, setup_seconds=setup,
                        n_iter=n_iter, failed=failed)


class MNELinearMethod(_MNEMethod):
    """A :class:`~mne_unfolded_sbl.methods.MinimumNorm` entry per sample.

    The inverse operator (:func:`mne_unfolded_sbl.methods.make_inverse_operator`)
    is made with each sample's noise covariance (:attr:`Batch.noise_var`),
    shared by the linear methods and timed as per-sample *setup* together
    with its preparation; ``seconds`` is the application of the prepared
    operator only.
    """

    def solve_one(self, batch, i):
        ev, _ = batch.mne_inputs(i, self.problem)
        inv, t_inv = batch.inverse_operator(i, self.problem)
        t0 = time.perf_counter()
        prep = self.spec.prepare(inv, ev.nave)
        t1 = time.perf_counter()
        stc = self.spec.apply_prepared(ev, prep)
        t2 = time.perf_counter()
        return self._to_array(stc), t2 - t1, t_inv + (t1 - t0), np.nan


class GammaMapMethod(_MNEMethod):
    """The registry's ``gamma-map`` entry per sample (see
    :class:`~mne_unfolded_sbl.methods.GammaMap`)."""

    def __init__(self, spec=None):
        super().__init__(spec or registry.get_method("gamma-map"))


class MxNEMethod(_MNEMethod):
    """The registry's ``mxne`` entry per sample (see
    :class:`~mne_unfolded_sbl.methods.MixedNorm`)."""

    def __init__(self, spec=None, *, alpha=MXNE_ALPHA):
        super().__init__(spec or registry.get_method("mxne",
                                                     mxne_alpha=alpha))


# ----------------------------------------------------------------------------
# method names and groups


def _adapter(spec, dtype="float32"):
    if isinstance(spec, registry.UnfoldedModel):
        return SBLMethod(spec, dtype=dtype)
    if isinstance(spec, registry.MinimumNorm):
        return MNELinearMethod(spec)
    if isinstance(spec, registry.GammaMap):
        return GammaMapMethod(spec)
    return MxNEMethod(spec)


def classical_methods(dtype="float32"):
    """The four convex-bounding baselines, by key."""
    return {k: SBLMethod(spec, dtype=dtype)
            for k, spec in registry.classical_methods().items()}


def mne_methods(mxne_alpha=MXNE_ALPHA):
    """MNE's solvers, by key."""
    return {k: _adapter(spec)
            for k, spec in registry.mne_methods(mxne_alpha).items()}


def learned_method_keys():
    """Keys of every learned model whose weights are registered."""
    from ..core.weights import registry as weights_registry

    keys = []
    for name in sorted(weights_registry()):
        model, _, mode = name.rpartition("_")
        if model in MODELS and model != "cb" and mode in ("joint", "source"):
            keys.append(f"{model}-{mode}")
    return keys


def learned_method(key, dtype="float32"):
    """A learned network from a method key (``deep-cb-joint``,
    ``deep-cb-joint-multiscale``) or weights file."""
    if str(key).endswith(".safetensors"):
        from ..core.weights import load_weights

        net = load_weights(key)
        return SBLMethod(registry.unfolded_method(str(key), net.learn_noise),
                         dtype=dtype)
    base, _, _ = registry._split_variant(str(key))
    model, _, mode = base.rpartition("-")
    if model not in MODELS or model == "cb" or mode not in ("joint", "source"):
        raise ValueError(f"Not a learned-model key: {key!r}")
    learn_noise = mode == "joint"
    from ..core.weights import registry as weights_registry
    from ..core.weights import registry_key

    if registry_key(model, learn_noise) not in weights_registry():
        raise ValueError(
            f"Method {key!r}: no pretrained weights named "
            f"{registry_key(model, learn_noise)!r} are registered (available "
            f"learned methods: {learned_method_keys() or 'none'}). Pass a "
            "weights file (path ending in .safetensors) instead.")
    return SBLMethod(registry.get_method(key), dtype=dtype)


#: Method groups accepted by :func:`resolve_methods`.
GROUPS = ("all", "classical", "mne", "learned", "sbl", "default",
          "multiscale", "loose")


def variant_method_keys(suffix):
    """Keys of the ``"-multiscale"`` or ``"-loose"`` variants available here:
    of ``cb-joint-25``, ``cb-source-25`` and the registered learned models."""
    base = ["cb-joint-25", "cb-source-25"] + learned_method_keys()
    return [k + suffix for k in base]


def all_method_keys():
    """Every method key available in this installation (the source-model
    variants included)."""
    return (list(registry.classical_methods()) + list(registry.mne_methods())
            + learned_method_keys() + variant_method_keys("-multiscale")
            + variant_method_keys("-loose"))


def resolve_methods(spec=None, *, dtype="float32", mxne_alpha=MXNE_ALPHA):
    """Turn a method specification into a list of :class:`Method`.

    Parameters
    ----------
    spec : None | str | list of str
        Method keys (of the registry :mod:`mne_unfolded_sbl.methods`)
        and/or groups, as a list or a comma-separated string.
        Groups: ``"all"`` (every method, including MNE's ``mne`` minimum
        norm), ``"default"`` (``all`` without the plain minimum norm),
        ``"classical"`` (the four convex-bounding baselines), ``"mne"``
        (MNE's solvers), ``"learned"`` (every registered learned model),
        ``"sbl"`` (classical + learned), ``"multiscale"`` /
        ``"loose"`` (the source-model variants of ``cb-joint-25``,
        ``cb-source-25`` and the registered learned models, e.g.
        ``cb-joint-25-multiscale``, ``deep-cb-joint-loose``). A path
        ending in ``.safetensors`` adds that weights file. None means
        ``"default"``.

    Raises
    ------
    ValueError
        For an unknown name, listing the valid ones.
    """
    if spec is None:
        spec = ["default"]
    if isinstance(spec, str):
        spec = [s.strip() for s in spec.split(",") if s.strip()]
    classical = classical_methods(dtype)
    mne_ = mne_methods(mxne_alpha)
    learned = learned_method_keys()
    keys = []
    for item in spec:
        if item == "all":
            keys += list(classical) + list(mne_) + learned
        elif item == "default":
            keys += list(classical) + [k for k in mne_ if k != "mne"] + learned
        elif item == "classical":
            keys += list(classical)
        elif item == "mne":
            keys += list(mne_)
        elif item == "learned":
            keys += learned
        elif item == "sbl":
            keys += list(classical) + learned
        elif item == "multiscale":
            keys += variant_method_keys("-multiscale")
        elif item == "loose":
            keys += variant_method_keys("-loose")
        else:
            keys.append(item)
    out, seen = [], set()
    # bare model names ("deep-cb") are for the report, whose learn_noise
    # argument completes them; the benchmark names the setting
    valid = [k for k in registry.method_names() if k not in MODELS]
    for key in keys:
        if key in seen:
            continue
        seen.add(key)
        if key in classical:
            out.append(classical[key])
        elif key in mne_:
            out.append(mne_[key])
        elif str(key).endswith(".safetensors"):
            out.append(learned_method(key, dtype))
        elif key in valid or registry._split_variant(str(key))[0] != key:
            spec = _variant_spec(key)
            if spec is not None:  # a classical cb variant
                out.append(SBLMethod(spec, dtype=dtype))
            else:
                out.append(learned_method(key, dtype))  # raises if unknown
        else:
            raise ValueError(
                f"Unknown benchmark method {key!r}; valid methods are "
                f"{valid}, groups {list(GROUPS)}, or a .safetensors weights file.")
    if not out:
        raise ValueError("No benchmark method selected (e.g. 'learned' with no "
                         "registered weights).")
    return out


def _variant_spec(key):
    """The registry entry of a classical ``cb`` source-model variant
    (``cb-joint-25-multiscale``), None for other keys."""
    base, _, _ = registry._split_variant(str(key))
    if base == key or not base.startswith("cb-"):
        return None
    return registry.get_method(key)  # ValueError for an unknown variant
