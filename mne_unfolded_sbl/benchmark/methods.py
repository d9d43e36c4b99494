"""Benchmark adapters of the comparison methods.

The methods themselves (names, labels, settings) are the entries of the
registry :mod:`mne_unfolded_sbl.methods`, shared with the report; this
module runs them on a :class:`Batch` of simulated samples. Every adapter
turns the batch into source estimates ``(B, N, T)`` in the simulator's
units and reports the seconds it spent per sample. Three families:

- ``"sbl"`` (:class:`SBLMethod`): the convex-bounding solver (classical,
  fixed depth or run to convergence) and the learned unfolded networks.
  Batched in PyTorch on the arrays (average-referenced lead field, data,
  true noise variances).
- ``"linear"`` (:class:`MNELinearMethod`): MNE's minimum-norm family
  (sLORETA, dSPM, eLORETA, MNE).
- ``"sparse"`` (:class:`GammaMapMethod`, :class:`MxNEMethod`): MNE's
  sparse solvers.

MNE's methods run per sample through the registry entry's
:meth:`~mne_unfolded_sbl.methods.ComparisonMethod.estimate` (or its
prepared-operator steps) on an :class:`mne.EvokedArray` built from the
simulated array (montage info with an average-reference projector, data in
volts: the unit-free sources times
:data:`~mne_unfolded_sbl.benchmark.settings.SOURCE_SCALE`) with the true
diagonal noise covariance of that sample.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import methods as registry
from ..core._utils import DTYPES
from ..core.network import MODELS
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
    """Simulated samples (simulator units) and per-sample MNE objects."""

    Y: np.ndarray  # (B, M, T)
    X: np.ndarray  # (B, N, T)
    noise_var: np.ndarray  # (B, M)
    index: np.ndarray  # (B,) sample indices
    _mne: dict = field(default_factory=dict)

    def __len__(self):
        return len(self.Y)

    def mne_inputs(self, i, problem):
        """``(evoked, noise_cov)`` of sample ``i`` (built once, cached)."""
        if i not in self._mne:
            import mne

            ev = mne.EvokedArray(self.Y[i] * SOURCE_SCALE, problem.info,
                                 tmin=0.0, nave=1, verbose=False)
            cov = mne.Covariance(self.noise_var[i] * SOURCE_SCALE ** 2,
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
        source-only with the true noise), depth ``n_layers`` of the
        classical solver, or ``tol`` to run it to convergence.
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

    def prepare(self, problem):
        t0 = time.perf_counter()
        super().prepare(problem)
        self._dtype = DTYPES[self.dtype]
        self._L = torch.as_tensor(problem.L, dtype=self._dtype)
        # average-referenced simulations: the data have no power along 1
        self._null = problem.config.null_space(problem.n_sensors)
        if self.tol is None:
            from ..core.weights import load_model

            n_layers = self.n_layers if self.model == "cb" else None
            self.net = load_model(self.model, learn_noise=self.learn_noise,
                                  n_layers=n_layers)
            self.net = self.net.to(dtype=self._dtype).eval()
            cfg = self.net.config
            if self.net.model == "bias-cb" and (
                    cfg.get("n_sources") != problem.n_sources or (
                        self.learn_noise
                        and cfg.get("n_sensors") != problem.n_sensors)):
                raise IncompatibleMethod(
                    f"{self.key}: Bias CB weights are tied to "
                    f"{cfg.get('n_sensors')} sensors x {cfg.get('n_sources')} "
                    f"sources; this setting has {problem.n_sensors} x "
                    f"{problem.n_sources}.")
        self.setup_seconds = time.perf_counter() - t0

    def _inputs(self, batch):
        Y = torch.as_tensor(batch.Y, dtype=self._dtype)
        nv = None
        if not self.learn_noise:
            nv = torch.as_tensor(batch.noise_var, dtype=self._dtype)
        return Y, nv

    @torch.inference_mode()
    def run(self, Y, noise_var, return_trajectory=False):
        """Run on torch inputs; return ``(X, n_iter, out)``."""
        from ..core.solver import convex_bounding, covariance_statistic, posterior_mean

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
                       null_space=self._null)
        n_iter = torch.full((len(Y),), self.net.n_layers)
        return out.posterior_mean(Y), n_iter, out

    def solve(self, batch):
        Y, nv = self._inputs(batch)
        t0 = time.perf_counter()
        try:
            X, n_iter, _ = self.run(Y, nv)
        except (FloatingPointError, RuntimeError) as err:
            if len(batch) == 1:
                raise
            return self._solve_one_by_one(batch, err)
        X = X.to(torch.float64).numpy()
        dt = (time.perf_counter() - t0) / len(batch)
        failed = ~np.isfinite(X).all(axis=(1, 2))
        if failed.any():
            X[failed] = 0.0
            warnings.warn(f"{self.key}: non-finite estimates for samples "
                          f"{batch.index[failed].tolist()}", RuntimeWarning,
                          stacklevel=2)
        return Solution(X=X, seconds=np.full(len(batch), dt),
                        n_iter=np.asarray(n_iter.numpy(), float), failed=failed)

    def _solve_one_by_one(self, batch, err):
        """The batch failed (e.g. a non-finite Sigma_y): isolate the
        failing samples; they get an all-zero estimate and ``failed``."""
        B = len(batch)
        X = np.zeros(batch.X.shape)
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
            failed[i] = bool(sol.failed[0])
        warnings.warn(f"{self.key} failed on samples "
                      f"{batch.index[failed].tolist()} ({err})", RuntimeWarning,
                      stacklevel=3)
        return Solution(X=X, seconds=seconds, n_iter=n_iter, failed=failed)


# ----------------------------------------------------------------------------
# MNE (per sample)


class _MNEMethod(Method):
    """Per-sample adapter of an MNE registry entry."""

    def __init__(self, spec):
        super().__init__(spec)
        self.family = spec.family

    def describe(self):
        return f"{self.spec.describe()}, per-sample true noise covariance"

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
    is made with each sample's true noise covariance, shared by the linear
    methods and timed as per-sample *setup* together with its preparation;
    ``seconds`` is the application of the prepared operator only.
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
    """A learned network from a method key (``deep-cb-joint``) or weights file."""
    if str(key).endswith(".safetensors"):
        from ..core.weights import load_weights

        net = load_weights(key)
        return SBLMethod(registry.unfolded_method(str(key), net.learn_noise),
                         dtype=dtype)
    model, _, mode = str(key).rpartition("-")
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
GROUPS = ("all", "classical", "mne", "learned", "sbl", "default")


def all_method_keys():
    """Every method key available in this installation."""
    return (list(registry.classical_methods()) + list(registry.mne_methods())
            + learned_method_keys())


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
        ``"sbl"`` (classical + learned). A path ending in ``.safetensors``
        adds that weights file. None means ``"default"``.

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
        elif key in valid:
            out.append(learned_method(key, dtype))  # raises if not registered
        else:
            raise ValueError(
                f"Unknown benchmark method {key!r}; valid methods are "
                f"{valid}, groups {list(GROUPS)}, or a .safetensors weights file.")
    if not out:
        raise ValueError("No benchmark method selected (e.g. 'learned' with no "
                         "registered weights).")
    return out
