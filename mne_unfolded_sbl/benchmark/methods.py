"""Benchmark methods: one small adapter per solver, with a common interface.

Every method turns a :class:`Batch` of simulated samples into source
estimates ``(B, N, T)`` in the simulator's units and reports the seconds it
spent per sample. Three families:

- ``"sbl"``: the convex-bounding solver (classical, fixed depth or run to
  convergence) and the learned unfolded networks. Batched in PyTorch on the
  arrays (average-referenced lead field, data, true noise variances).
- ``"linear"``: MNE's minimum-norm family (sLORETA, dSPM, eLORETA, MNE).
- ``"sparse"``: MNE's sparse solvers (``gamma_map``, ``mixed_norm``).

MNE's methods run per sample on an :class:`mne.EvokedArray` built from the
simulated array (montage info with an average-reference projector, data in
volts: the unit-free sources times
:data:`~mne_unfolded_sbl.benchmark.settings.SOURCE_SCALE`) with the true
diagonal noise covariance of that sample.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core._utils import DTYPES
from .settings import SOURCE_SCALE

#: Regularisation of MNE's linear inverses, ``lambda2 = 1 / SNR**2`` with
#: SNR = 3 (MNE's usual choice for evoked data).
LAMBDA2 = 1.0 / 9.0
#: MxNE regularisation in percent of ``alpha_max`` (see doc/benchmarks.rst:
#: picked on a separate tuning set of the train-cap-ico3 setting).
MXNE_ALPHA = 10.0
#: Convex bounding "run to convergence": stop a sample when the relative
#: decrease of the Type-II cost falls below CB_TOL, at most CB_MAX_ITER.
CB_TOL = 1e-6
CB_MAX_ITER = 1000
#: Fixed depth of the classical solver and the networks.
N_LAYERS = 25



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
        """Fixed-orientation inverse operator of sample ``i`` and its build time.

        Shared by all linear methods of the same sample (built once).
        """
        self.mne_inputs(i, problem)
        entry = self._mne[i]
        if "inv" not in entry:
            from mne.minimum_norm import make_inverse_operator

            t0 = time.perf_counter()
            entry["inv"] = make_inverse_operator(
                problem.info, problem.fwd, entry["cov"], loose=0.0, depth=None,
                fixed=True, verbose=False)
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
    """Base class. Subclasses set ``key``, ``label``, ``family`` and ``solve``."""

    family = "?"
    batched = False
    #: Whether the output is in current units (False: noise-normalised
    #: statistic, e.g. dSPM, whose rMSE has no physical meaning).
    current_units = True

    def __init__(self, key, label):
        self.key = key
        self.label = label
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
        return self.label


# ----------------------------------------------------------------------------
# SBL (batched, torch)


class SBLMethod(Method):
    """Convex bounding (classical or learned network), batched in torch.

    Parameters
    ----------
    model : str | path-like
        ``"cb"`` or a learned model name / weights file (see
        :func:`mne_unfolded_sbl.core.weights.load_model`).
    learn_noise : bool
        Joint ``(gamma, lambda)`` or source-only with the true noise.
    n_layers : int
        Depth (iterations) for the fixed-depth classical solver.
    tol : float | None
        If given, run the classical solver to convergence (relative cost
        decrease below ``tol``, at most ``max_iter`` iterations).
    dtype : "float32" | "float64"
        Working precision of the large products.
    """

    family = "sbl"
    batched = True

    def __init__(self, key, label, *, model="cb", learn_noise=True,
                 n_layers=N_LAYERS, tol=None, max_iter=CB_MAX_ITER,
                 dtype="float32"):
        super().__init__(key, label)
        self.model = model
        self.learn_noise = bool(learn_noise)
        self.n_layers = n_layers
        self.tol = tol
        self.max_iter = max_iter
        self.dtype = dtype
        self.net = None

    def describe(self):
        noise = "joint (gamma, lambda)" if self.learn_noise else \
            "source-only, true noise"
        if self.tol is not None:
            return (f"{self.label}: classical convex bounding, {noise}, until "
                    f"the relative Type-II cost decrease < {self.tol:g} "
                    f"(max {self.max_iter} iterations)")
        if self.model == "cb":
            return (f"{self.label}: classical convex bounding, {noise}, "
                    f"{self.n_layers} iterations")
        return f"{self.label}: learned {self.model}, {noise}"

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


def _dense(stc, problem):
    """Scatter a (possibly sparse) fixed-orientation stc into ``(N, T)``."""
    verts = [s["vertno"] for s in problem.fwd["src"]]
    offsets = np.cumsum([0] + [len(v) for v in verts])
    rows = []
    for hemi, v in enumerate(stc.vertices):
        idx = np.searchsorted(verts[hemi], v)
        if not np.array_equal(verts[hemi][idx], v):
            raise RuntimeError("stc vertices are not in the forward source space")
        rows.append(offsets[hemi] + idx)
    rows = np.concatenate(rows).astype(int)
    X = np.zeros((problem.n_sources, stc.data.shape[1]))
    X[rows] = stc.data
    return X


class _MNEMethod(Method):
    def prepare(self, problem):
        if problem.fwd is None or problem.info is None:
            raise ValueError(f"Method {self.key!r} needs an MNE forward model; "
                             "a synthetic problem has none (use the SBL methods).")
        super().prepare(problem)

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
    """sLORETA, dSPM, eLORETA or MNE via :func:`mne.minimum_norm.apply_inverse`.

    The inverse operator (fixed orientation, no depth weighting: MNE needs a
    free-orientation forward for depth weighting with ``fixed=True``) is made
    with each sample's true noise covariance, shared by the linear methods
    and timed as per-sample *setup*; ``seconds`` is the application of the
    prepared operator only (``prepared=True``).
    """

    family = "linear"

    def __init__(self, key, label, method, lambda2=LAMBDA2):
        super().__init__(key, label)
        self.method = method
        self.lambda2 = lambda2
        self.current_units = method in ("MNE", "eLORETA")

    def describe(self):
        return (f"{self.label}: mne.minimum_norm.apply_inverse(method="
                f"{self.method!r}, lambda2={self.lambda2:.4g}), fixed "
                "orientation, depth=None, per-sample true noise covariance")

    def solve_one(self, batch, i):
        from mne.minimum_norm import apply_inverse, prepare_inverse_operator

        ev, _ = batch.mne_inputs(i, self.problem)
        inv, t_inv = batch.inverse_operator(i, self.problem)
        t0 = time.perf_counter()
        prep = prepare_inverse_operator(inv, 1, self.lambda2, self.method,
                                        verbose=False)
        t1 = time.perf_counter()
        stc = apply_inverse(ev, prep, self.lambda2, self.method, prepared=True,
                            verbose=False)
        t2 = time.perf_counter()
        x = _dense(stc, self.problem)
        if self.current_units:
            x = x / SOURCE_SCALE
        return x, t2 - t1, t_inv + (t1 - t0), np.nan


class GammaMapMethod(_MNEMethod):
    """:func:`mne.inverse_sparse.gamma_map` at the true noise level.

    ``alpha = 1``: with the true noise covariance the whitened noise has unit
    variance. ``update_mode=2`` is the convex-bounding update (the same
    fixed point as ``cb-source-conv``), ``depth=None`` as in our solver,
    default ``tol=1e-6`` and ``maxit=10000``. MNE prunes only gammas below
    machine epsilon, so most sources stay (tiny) in the estimate; support
    and peaks are found by the metrics' relative thresholds.
    """

    family = "sparse"

    def __init__(self, key="gamma-map", label="gamma_map (MNE)", *, alpha=1.0,
                 update_mode=2, tol=1e-6, maxit=10000, depth=None):
        super().__init__(key, label)
        self.kw = dict(alpha=alpha, update_mode=update_mode, tol=tol,
                       maxit=maxit, depth=depth)

    def describe(self):
        kw = ", ".join(f"{k}={v!r}" for k, v in self.kw.items())
        return (f"{self.label}: mne.inverse_sparse.gamma_map({kw}, loose=0), "
                "per-sample true noise covariance")

    def solve_one(self, batch, i):
        from mne.inverse_sparse import gamma_map

        ev, cov = batch.mne_inputs(i, self.problem)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            stc = gamma_map(ev, self.problem.fwd, cov, loose=0.0,
                            verbose=False, **self.kw)
            dt = time.perf_counter() - t0
        return _dense(stc, self.problem) / SOURCE_SCALE, dt, 0.0, np.nan


class MxNEMethod(_MNEMethod):
    """:func:`mne.inverse_sparse.mixed_norm` (L21 mixed norm, MxNE).

    ``alpha`` in percent of ``alpha_max`` (:data:`MXNE_ALPHA`), depth 0.8,
    debiasing and time PCA as MNE's defaults, fixed orientation.
    """

    family = "sparse"

    def __init__(self, key="mxne", label="MxNE (MNE)", *, alpha=MXNE_ALPHA):
        super().__init__(key, label)
        self.alpha = float(alpha)

    def describe(self):
        return (f"{self.label}: mne.inverse_sparse.mixed_norm(alpha="
                f"{self.alpha:g}, loose=0, depth=0.8, debias=True, "
                "time_pca=True), per-sample true noise covariance")

    def solve_one(self, batch, i):
        from mne.inverse_sparse import mixed_norm

        ev, cov = batch.mne_inputs(i, self.problem)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            stc = mixed_norm(ev, self.problem.fwd, cov, alpha=self.alpha,
                             loose=0.0, verbose=False)
            dt = time.perf_counter() - t0
        if stc.data.size == 0:
            return np.zeros(batch.X.shape[1:]), dt, 0.0, np.nan
        return _dense(stc, self.problem) / SOURCE_SCALE, dt, 0.0, np.nan


# ----------------------------------------------------------------------------
# registry of method names

_MODEL_LABELS = {"bias-cb": "Bias CB", "deep-cb": "Deep CB",
                 "deep-attn-cb": "Deep Attn CB"}


def _mode(learn_noise):
    return "joint" if learn_noise else "source"


def _greek(learn_noise):
    return "(γ,λ)" if learn_noise else "(γ)"


def classical_methods(dtype="float32"):
    """The four convex-bounding baselines, by key."""
    out = {}
    for learn_noise in (False, True):
        m, g = _mode(learn_noise), _greek(learn_noise)
        out[f"cb-{m}-{N_LAYERS}"] = SBLMethod(
            f"cb-{m}-{N_LAYERS}", f"Conv. Bound. {g}, {N_LAYERS} it.",
            learn_noise=learn_noise, dtype=dtype)
        out[f"cb-{m}-conv"] = SBLMethod(
            f"cb-{m}-conv", f"Conv. Bound. {g}, converged",
            learn_noise=learn_noise, tol=CB_TOL, max_iter=CB_MAX_ITER,
            dtype=dtype)
    return out


def mne_methods(mxne_alpha=MXNE_ALPHA):
    """MNE's solvers, by key."""
    return {
        "sloreta": MNELinearMethod("sloreta", "sLORETA", "sLORETA"),
        "dspm": MNELinearMethod("dspm", "dSPM", "dSPM"),
        "eloreta": MNELinearMethod("eloreta", "eLORETA", "eLORETA"),
        "mne": MNELinearMethod("mne", "MNE (min. norm)", "MNE"),
        "gamma-map": GammaMapMethod(),
        "mxne": MxNEMethod(alpha=mxne_alpha),
    }


def learned_method_keys():
    """Keys of every learned model whose weights are registered."""
    from ..core.weights import registry

    keys = []
    for name in sorted(registry()):
        model, _, mode = name.rpartition("_")
        if model in _MODEL_LABELS and mode in ("joint", "source"):
            keys.append(f"{model}-{mode}")
    return keys


def learned_method(key, dtype="float32"):
    """A learned network from a method key (``deep-cb-joint``) or weights file."""
    if str(key).endswith(".safetensors"):
        from ..core.weights import load_weights

        net = load_weights(key)
        name = _MODEL_LABELS.get(net.model, net.model)
        label = f"{name} {_greek(net.learn_noise)} [{Path(key).name}]"
        return SBLMethod(str(key), label, model=str(key),
                         learn_noise=net.learn_noise, dtype=dtype)
    model, _, mode = str(key).rpartition("-")
    if model not in _MODEL_LABELS or mode not in ("joint", "source"):
        raise ValueError(f"Not a learned-model key: {key!r}")
    learn_noise = mode == "joint"
    from ..core.weights import registry, registry_key

    if registry_key(model, learn_noise) not in registry():
        raise ValueError(
            f"Method {key!r}: no pretrained weights named "
            f"{registry_key(model, learn_noise)!r} are registered (available "
            f"learned methods: {learned_method_keys() or 'none'}). Pass a "
            "weights file (path ending in .safetensors) instead.")
    return SBLMethod(key, f"{_MODEL_LABELS[model]} {_greek(learn_noise)}",
                     model=model, learn_noise=learn_noise, dtype=dtype)


#: Method groups accepted by :func:`resolve_methods`.
GROUPS = ("all", "classical", "mne", "learned", "sbl", "default")


def all_method_keys():
    """Every method key available in this installation."""
    return (list(classical_methods()) + list(mne_methods())
            + learned_method_keys())


def resolve_methods(spec=None, *, dtype="float32", mxne_alpha=MXNE_ALPHA):
    """Turn a method specification into a list of :class:`Method`.

    Parameters
    ----------
    spec : None | str | list of str
        Method keys and/or groups, as a list or a comma-separated string.
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
    valid = list(classical) + list(mne_) + [f"{m}-{mo}" for m in _MODEL_LABELS
                                            for mo in ("joint", "source")]
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
