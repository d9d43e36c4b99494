"""The comparison methods, defined once for the report and the benchmark.

Every method the report (:func:`mne_unfolded_sbl.report.compute_estimate`,
:func:`~mne_unfolded_sbl.report.add_unfolded_sbl_to_report`) and the
benchmark (:mod:`mne_unfolded_sbl.benchmark`) run is an entry of this
registry, with one set of settings. The report calls
:meth:`ComparisonMethod.estimate` on MNE objects; the benchmark wraps the
same entries in its per-sample (MNE) or batched (PyTorch) adapters, so a
name means the same solver with the same settings in both.

- ``"sloreta"``, ``"dspm"``, ``"eloreta"``, ``"mne"`` (:class:`MinimumNorm`;
  labels sLORETA, dSPM, eLORETA, MNE (min. norm)):
  :func:`mne.minimum_norm.apply_inverse` with the operator of
  :func:`make_inverse_operator` (fixed orientation, depth weighting
  :data:`DEPTH` where MNE allows it, i.e. for a free-orientation forward),
  ``lambda2`` = :data:`LAMBDA2`.
- ``"gamma-map"`` (:class:`GammaMap`; gamma_map (MNE)):
  :func:`mne.inverse_sparse.gamma_map` with :data:`GAMMA_MAP_SETTINGS` and
  ``alpha = 1 / nave``.
- ``"mxne"`` (:class:`MixedNorm`; MxNE (MNE)):
  :func:`mne.inverse_sparse.mixed_norm`, ``alpha`` = :data:`MXNE_ALPHA`
  percent of ``alpha_max``, fixed orientation, MNE's defaults otherwise.
- ``"cb"``, ``"cb-joint-25"``, ``"cb-source-25"`` (:class:`UnfoldedModel`;
  Convex bounding (γ,λ) / (γ), 25 it.): the classical convex-bounding
  solver, :data:`N_LAYERS` iterations, noise learned jointly (γ,λ) or
  known (γ).
- ``"cb-joint-conv"``, ``"cb-source-conv"`` (Convex bounding ..., converged):
  the same until the relative Type-II cost decrease is below
  :data:`CB_TOL` (at most :data:`CB_MAX_ITER` iterations); benchmark only.
- ``"bias-cb"``, ``"deep-cb"``, ``"deep-attn-cb"`` and ``"<model>-joint"``,
  ``"<model>-source"`` (Bias CB, Deep CB, Deep Attn CB with (γ,λ) or (γ)):
  the pretrained networks of :data:`~mne_unfolded_sbl.core.network.MODELS`.
- Source-model variants of every fixed-depth unfolded entry (classical
  ``cb-joint-25``, ``cb-source-25`` and the learned ``<model>-joint``,
  ``<model>-source``), by a suffix of the key (and of the label):
  ``"-multiscale"`` (``source_model="multiscale"``: extended cortical
  patches, kept per sample where the evidence beats the point model, e.g.
  ``"cb-joint-25-multiscale"``, ``"deep-cb-joint-multiscale"``; label
  "..., multi-scale") and ``"-loose"`` (loose orientation
  ``loose=`` :data:`LOOSE`, MNE's usual 0.2: three dipoles per vertex,
  the tangential ones with prior variance 0.2; a free-orientation forward
  is needed; ``"cb-joint-25-loose"``, label "..., loose 0.2"; another
  value ``x`` is ``"-loose<x>"``, e.g. ``"cb-joint-25-loose0.5"``).

A bare model name (``"cb"``, ``"deep-cb"``) takes ``learn_noise`` (and
``source_model``, ``loose``) from the caller; ``"<model>-joint"`` /
``"<model>-source"`` fix it. A network or the path of a ``.safetensors``
weights file is accepted as well. Labels of the
unfolded models come from :func:`mne_unfolded_sbl.core.network.model_label`.
"""

# License: BSD-3-Clause

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import mne
import numpy as np
from mne.inverse_sparse import gamma_map, mixed_norm
from mne.io.constants import FIFF
from mne.minimum_norm import apply_inverse, prepare_inverse_operator

from .core._utils import check_positive_int
from .core.network import MODEL_LABELS, MODELS, UnfoldedSBL, model_label
from .core.weights import DEFAULT_N_LAYERS, load_model, resolve_model
from .inverse import apply_unfolded_sbl
from .source_models import SOURCE_MODELS

__all__ = [
    "LAMBDA2", "DEPTH", "GAMMA_MAP_SETTINGS", "MXNE_ALPHA", "N_LAYERS",
    "CB_TOL", "CB_MAX_ITER", "LOOSE", "VARIANTS", "variant_suffix",
    "variant_methods",
    "ComparisonMethod", "MinimumNorm", "GammaMap", "MixedNorm",
    "UnfoldedModel",
    "get_method", "method_names", "mne_methods", "classical_methods",
    "unfolded_method", "make_inverse_operator", "expand_stc",
]

#: Regularisation of MNE's linear inverses, ``lambda2 = 1 / SNR**2`` with
#: SNR = 3 (MNE's usual choice for evoked data; use ``1.`` for single trials).
LAMBDA2 = 1.0 / 9.0
#: Depth-weighting exponent of the linear inverses. MNE applies it only to
#: a free-orientation forward (it refuses depth weighting of a
#: fixed-orientation one, e.g. the package's template forwards, which then
#: get none; sLORETA and dSPM normalise depth anyway).
DEPTH = 0.8
#: Settings of :func:`mne.inverse_sparse.gamma_map` (besides ``alpha = 1 /
#: nave``: with a single-trial noise covariance the whitened noise of the
#: evoked response has variance ``1 / nave``). ``update_mode=2`` is the
#: convex-bounding update (the fixed point of ``cb-*-conv``), ``depth=None``
#: as in the unfolded solver, MNE's defaults ``tol``, ``maxit`` and ``pca``
#: (run to convergence).
GAMMA_MAP_SETTINGS = dict(loose=0.0, depth=None, update_mode=2, tol=1e-6,
                          maxit=10000, pca=True)
#: MxNE regularisation in percent of ``alpha_max`` (doc/benchmarks.rst:
#: picked on a separate tuning set of the train-cap-ico3 setting).
MXNE_ALPHA = 10.0
#: Depth (iterations) of the classical solver and of the networks.
N_LAYERS = DEFAULT_N_LAYERS
#: Convex bounding "run to convergence": stop a sample when the relative
#: decrease of the Type-II cost falls below CB_TOL, at most CB_MAX_ITER.
CB_TOL = 1e-6
CB_MAX_ITER = 1000
#: Orientation prior of the ``"-loose"`` entries (MNE's usual value).
LOOSE = 0.2
#: Key suffixes of the source-model variants (see the module docs), and
#: the ``(source_model, loose)`` each stands for.
VARIANTS = {"": ("point", 0.0), "-multiscale": ("multiscale", 0.0),
            "-loose": ("point", LOOSE)}

_MODES = {True: "joint", False: "source"}


def _check_variant(source_model, loose):
    """``(source_model, loose)`` validated (the combinations MNE-side
    :func:`~mne_unfolded_sbl.apply_unfolded_sbl` accepts)."""
    if source_model not in SOURCE_MODELS:
        raise ValueError(f"source_model must be one of {SOURCE_MODELS}, got "
                         f"{source_model!r}.")
    if isinstance(loose, bool) or not isinstance(loose, (int, float, np.number)):
        raise TypeError(f"loose must be a number in [0, 1], got {loose!r}.")
    loose = float(loose)
    if not 0.0 <= loose <= 1.0:
        raise ValueError(f"loose must be between 0 (fixed orientation) and 1 "
                         f"(free orientation), got {loose}.")
    if source_model == "multiscale" and loose != 0.0:
        raise ValueError("source_model='multiscale' models patches of dipoles "
                         "normal to the cortex: use it with loose=0.")
    return source_model, loose


def variant_suffix(source_model="point", loose=0.0):
    """The key suffix of a source-model variant (``""`` for the point
    source, fixed orientation)."""
    source_model, loose = _check_variant(source_model, loose)
    if source_model == "multiscale":
        return "-multiscale"
    if loose == 0.0:
        return ""
    return "-loose" if loose == LOOSE else f"-loose{loose:g}"


def _variant_label(source_model, loose):
    if source_model == "multiscale":
        return ", multi-scale"
    return f", loose {loose:g}" if loose else ""


def _split_variant(key):
    """``(base key, source_model, loose)`` of a registry key."""
    if key.endswith("-multiscale"):
        return key[:-len("-multiscale")], "multiscale", 0.0
    base, sep, tail = key.rpartition("-loose")
    if sep and base:
        if tail == "":
            return base, "point", LOOSE
        try:
            loose = float(tail)
        except ValueError:
            return key, "point", 0.0
        if 0.0 < loose <= 1.0 and f"{loose:g}" == tail:
            return base, "point", loose
    return key, "point", 0.0


# ----------------------------------------------------------------------------
# the one scatter helper


def expand_stc(stc, fwd):
    """Return ``stc`` on every source of ``fwd`` (missing sources are zero).

    Sparse solvers (``gamma_map``, ``mixed_norm``) return only their active
    sources; the report and the benchmark compare estimates source by
    source.

    Parameters
    ----------
    stc : mne.SourceEstimate
        Surface estimate on a subset of the sources of ``fwd``.
    fwd : mne.Forward
        Forward solution.

    Returns
    -------
    stc : mne.SourceEstimate
        ``stc`` itself when it already has every source.

    Raises
    ------
    ValueError
        If ``stc`` has a vertex that is not a source of ``fwd``.
    """
    vertices = [s["vertno"] for s in fwd["src"]]
    if all(np.array_equal(a, b) for a, b in zip(stc.vertices, vertices)):
        return stc
    data = np.zeros((sum(len(v) for v in vertices), stc.data.shape[1]))
    offset = 0
    for h, (verts_full, verts) in enumerate(zip(vertices, stc.vertices)):
        rows = np.searchsorted(verts_full, verts)
        if np.any(verts_full[np.minimum(rows, len(verts_full) - 1)] != verts):
            raise ValueError("The source estimate has vertices that are not "
                             "in the forward solution.")
        src_rows = np.arange(len(verts)) + (len(stc.vertices[0]) if h else 0)
        data[offset + rows] = stc.data[src_rows]
        offset += len(verts_full)
    return mne.SourceEstimate(data, vertices, tmin=stc.tmin, tstep=stc.tstep,
                              subject=stc.subject)


def _result(stc, fwd, method, **extra):
    out = dict(stc=expand_stc(stc, fwd), label=method.label, name=method.key,
               note=None, noise_cov=None,
               unit="A·m" if method.current_units else "a.u.")
    out.update(extra)
    return out


# ----------------------------------------------------------------------------
# registry entries


@dataclass(frozen=True)
class ComparisonMethod:
    """One registry entry: a key, a display label and the settings.

    Subclasses implement :meth:`estimate`.
    """

    key: str
    label: str
    #: "linear", "sparse" or "sbl".
    family: ClassVar[str] = "?"
    #: Whether the estimate is a current (A·m); False for noise-normalised
    #: statistics (sLORETA, dSPM), whose rMSE has no physical meaning.
    current_units: ClassVar[bool] = True

    def describe(self):
        """One line with the settings (documentation, run records)."""
        return self.label

    def estimate(self, evoked, fwd, noise_cov):  # pragma: no cover - abstract
        """Localise ``evoked``; return a dict (see :meth:`apply`)."""
        raise NotImplementedError

    def apply(self, evoked, fwd, noise_cov):
        """Localise ``evoked``.

        Parameters
        ----------
        evoked : mne.Evoked
            EEG evoked response with an average-reference projector.
        fwd : mne.Forward
            Forward solution.
        noise_cov : mne.Covariance
            Single-trial noise covariance.

        Returns
        -------
        stc : mne.SourceEstimate
            The estimate on every source of ``fwd``.
        """
        return self.estimate(evoked, fwd, noise_cov)["stc"]


def make_inverse_operator(info, fwd, noise_cov):
    """The inverse operator of every linear method (shared settings).

    Fixed orientation (``loose=0``, ``fixed=True``), depth weighting
    :data:`DEPTH` for a free-orientation forward and none for a fixed one.
    """
    fixed_fwd = fwd["source_ori"] == FIFF.FIFFV_MNE_FIXED_ORI
    return mne.minimum_norm.make_inverse_operator(
        info, fwd, noise_cov, loose=0.0, fixed=True,
        depth=None if fixed_fwd else DEPTH, verbose=False)


@dataclass(frozen=True)
class MinimumNorm(ComparisonMethod):
    """sLORETA, dSPM, eLORETA or MNE (:func:`mne.minimum_norm.apply_inverse`).

    ``method`` is MNE's name of the method. The operator is
    :func:`make_inverse_operator`; :meth:`prepare` and
    :meth:`apply_prepared` split its application (the benchmark times them
    separately and shares the operator between the linear methods).
    """

    method: str = "sLORETA"
    lambda2: float = LAMBDA2
    family: ClassVar[str] = "linear"

    @property
    def current_units(self):
        return self.method in ("MNE", "eLORETA")

    def describe(self):
        return (f"{self.label}: mne.minimum_norm.apply_inverse(method="
                f"{self.method!r}, lambda2={self.lambda2:.4g}), fixed "
                f"orientation, depth={DEPTH} for free-orientation forwards, "
                "none for fixed ones")

    def prepare(self, inv, nave):
        """:func:`mne.minimum_norm.prepare_inverse_operator` for this method."""
        return prepare_inverse_operator(inv, nave, self.lambda2, self.method,
                                        verbose=False)

    def apply_prepared(self, evoked, prepared):
        """Apply an operator from :meth:`prepare` (sparse-free stc)."""
        return apply_inverse(evoked, prepared, self.lambda2, self.method,
                             prepared=True, verbose=False)

    def estimate(self, evoked, fwd, noise_cov):
        inv = make_inverse_operator(evoked.info, fwd, noise_cov)
        stc = self.apply_prepared(evoked, self.prepare(inv, evoked.nave))
        return _result(stc, fwd, self)


@dataclass(frozen=True)
class GammaMap(ComparisonMethod):
    """:func:`mne.inverse_sparse.gamma_map` with :data:`GAMMA_MAP_SETTINGS`.

    ``alpha = 1 / nave``. MNE prunes only gammas below machine epsilon, so
    most sources stay (tiny) in the estimate.
    """

    settings: tuple = tuple(GAMMA_MAP_SETTINGS.items())
    family: ClassVar[str] = "sparse"

    def describe(self):
        kw = ", ".join(f"{k}={v!r}" for k, v in self.settings)
        return (f"{self.label}: mne.inverse_sparse.gamma_map(alpha=1/nave, "
                f"{kw})")

    def estimate(self, evoked, fwd, noise_cov):
        stc = gamma_map(evoked, fwd, noise_cov, alpha=1.0 / evoked.nave,
                        verbose=False, **dict(self.settings))
        return _result(stc, fwd, self)


@dataclass(frozen=True)
class MixedNorm(ComparisonMethod):
    """:func:`mne.inverse_sparse.mixed_norm` (L21 mixed norm, MxNE).

    ``alpha`` in percent of ``alpha_max`` (:data:`MXNE_ALPHA`), fixed
    orientation, MNE's defaults otherwise (depth 0.8, debiasing, time PCA).
    """

    alpha: float = MXNE_ALPHA
    family: ClassVar[str] = "sparse"

    def describe(self):
        return (f"{self.label}: mne.inverse_sparse.mixed_norm(alpha="
                f"{self.alpha:g}, loose=0, depth=0.8, debias=True, "
                "time_pca=True)")

    def estimate(self, evoked, fwd, noise_cov):
        stc = mixed_norm(evoked, fwd, noise_cov, alpha=float(self.alpha),
                         loose=0.0, verbose=False)
        return _result(stc, fwd, self)


@dataclass(frozen=True)
class UnfoldedModel(ComparisonMethod):
    """The classical convex-bounding solver or a learned unfolded network.

    On MNE objects it runs :func:`mne_unfolded_sbl.apply_unfolded_sbl`;
    the benchmark runs the same settings batched on arrays.

    ``model`` is a name of :data:`~mne_unfolded_sbl.core.network.MODELS`,
    a network or a weights path; ``n_layers`` the depth (``"cb"`` only;
    None: the model's); ``tol`` (``"cb"`` only) runs the classical solver
    to convergence instead (benchmark only); ``source_model`` and
    ``loose`` as in :func:`~mne_unfolded_sbl.apply_unfolded_sbl` (the
    ``"-multiscale"`` and ``"-loose"`` variants).
    """

    model: object = "cb"
    learn_noise: bool = True
    n_layers: int | None = None
    tol: float | None = None
    max_iter: int = CB_MAX_ITER
    source_model: str = "point"
    loose: float = 0.0
    family: ClassVar[str] = "sbl"

    def _variant_text(self):
        if self.source_model == "multiscale":
            return (", multi-scale source model (point and extended-patch "
                    "atoms; kept per sample where its evidence (BIC) beats "
                    "the point model)")
        if self.loose:
            return (f", loose orientation (loose={self.loose:g}: three "
                    "dipoles per vertex, one variance)")
        return ""

    def describe(self):
        noise = ("joint (gamma, lambda)" if self.learn_noise
                 else "source-only, true noise")
        if self.tol is not None:
            return (f"{self.label}: classical convex bounding, {noise}, until "
                    f"the relative Type-II cost decrease < {self.tol:g} "
                    f"(max {self.max_iter} iterations)")
        if self.model == "cb":
            return (f"{self.label}: classical convex bounding, {noise}, "
                    f"{self.n_layers or N_LAYERS} iterations"
                    f"{self._variant_text()}")
        return f"{self.label}: learned {self.model}, {noise}" \
            f"{self._variant_text()}"

    def estimate(self, evoked, fwd, noise_cov, *, fallback=True,
                 posterior_std=False):
        """Localise ``evoked``; return a dict.

        Parameters
        ----------
        evoked, fwd, noise_cov
            As in :meth:`ComparisonMethod.apply`.
        fallback : bool
            If True, a learned model without weights falls back to the
            classical ``"cb"`` (:func:`~mne_unfolded_sbl.core.weights.resolve_model`),
            with ``note`` saying so; else that is an error.
        posterior_std : bool
            Also return the posterior standard deviation of every source
            (``return_posterior_std`` of
            :func:`~mne_unfolded_sbl.apply_unfolded_sbl`).

        Returns
        -------
        result : dict
            ``stc`` (A·m, every source of ``fwd``; for loose orientation the
            norm over the three orientations, as MNE's ``pick_ori=None``),
            ``label``, ``name`` (model actually run), ``note`` (fallback
            message or None), ``noise_cov`` (learned noise with
            ``learn_noise``, else None), ``unit`` (``"A·m"``), ``std``
            (posterior std as a SourceEstimate, A·m, constant over time;
            None unless ``posterior_std``), ``signed`` (False for loose
            orientation: the estimate is a norm).
        """
        if self.tol is not None:
            raise ValueError(
                f"{self.key!r} (run to convergence) is a benchmark method on "
                "arrays; on MNE objects use a fixed depth ('cb', n_layers).")
        if fallback:
            net, name, note = resolve_model(self.model, self.learn_noise,
                                            self.n_layers)
        else:
            net = load_model(self.model, self.learn_noise, self.n_layers)
            name, note = (self.model if self.model in MODELS else net.model), None
        out = apply_unfolded_sbl(evoked, fwd, noise_cov, model=net,
                                 learn_noise=self.learn_noise,
                                 loose=self.loose,
                                 source_model=self.source_model,
                                 return_noise_cov=self.learn_noise,
                                 return_posterior_std=bool(posterior_std),
                                 verbose=False)
        out = list(out) if isinstance(out, tuple) else [out]
        stc = out.pop(0)
        cov = out.pop(0) if self.learn_noise else None
        std = out.pop(0) if posterior_std else None
        label = self.label
        if note is not None:
            cb = unfolded_method("cb", self.learn_noise,
                                 source_model=self.source_model,
                                 loose=self.loose)
            label = (f"{cb.label} [fallback for "
                     f"{MODEL_LABELS.get(str(self.model), self.model)}]")
        elif not (isinstance(self.model, str) and self.model in MODELS):
            label = _network_label(net, self.model) + _variant_label(
                self.source_model, self.loose)
        return dict(stc=stc, label=label, name=name, note=note,
                    noise_cov=cov, unit="A·m", std=std,
                    signed=self.loose == 0.0)


def _network_label(net, source):
    """Label of a network given as an object or a weights file."""
    src = (Path(source).name if isinstance(source, (str, Path))
           else "custom network")
    return (f"{model_label(net.model, net.learn_noise)} "
            f"[{src}, {net.n_layers} layers]")


# ----------------------------------------------------------------------------
# lookup


def mne_methods(mxne_alpha=MXNE_ALPHA):
    """MNE's solvers, by key.

    Parameters
    ----------
    mxne_alpha : float
        MxNE regularisation (percent of ``alpha_max``).

    Returns
    -------
    methods : dict of str -> ComparisonMethod
    """
    return {
        "sloreta": MinimumNorm("sloreta", "sLORETA", method="sLORETA"),
        "dspm": MinimumNorm("dspm", "dSPM", method="dSPM"),
        "eloreta": MinimumNorm("eloreta", "eLORETA", method="eLORETA"),
        "mne": MinimumNorm("mne", "MNE (min. norm)", method="MNE"),
        "gamma-map": GammaMap("gamma-map", "gamma_map (MNE)"),
        "mxne": MixedNorm("mxne", "MxNE (MNE)", alpha=float(mxne_alpha)),
    }


def unfolded_method(model, learn_noise=True, *, n_layers=None, tol=None,
                    max_iter=CB_MAX_ITER, source_model="point", loose=0.0):
    """The registry entry of an unfolded model and setting.

    Parameters
    ----------
    model : str | UnfoldedSBL | path-like
        A name of :data:`~mne_unfolded_sbl.core.network.MODELS`, a network
        or a weights file.
    learn_noise : bool
        Joint ``(gamma, lambda)`` or source-only with known noise.
    n_layers : int | None
        Depth of ``"cb"`` (None: :data:`N_LAYERS`).
    tol : float | None
        ``"cb"`` only: run to convergence (relative cost decrease below
        ``tol``, at most ``max_iter`` iterations).
    max_iter : int
        See ``tol``.
    source_model : "point" | "multiscale"
        Source model (the ``"-multiscale"`` variant).
    loose : float
        Orientation constraint, 0 (fixed) to 1 (free) (the ``"-loose"``
        variant for :data:`LOOSE`).

    Returns
    -------
    method : UnfoldedModel
        Key ``"cb-joint-25"``, ``"cb-source-conv"``, ``"deep-cb-joint"``,
        ``"cb-joint-25-multiscale"``, ``"deep-cb-joint-loose"``, or the
        path for a weights file (with the variant's suffix).
    """
    learn_noise = bool(learn_noise)
    mode = _MODES[learn_noise]
    suffix = variant_suffix(source_model, loose)
    source_model, loose = _check_variant(source_model, loose)
    vlabel = _variant_label(source_model, loose)
    variant = dict(source_model=source_model, loose=loose)
    if suffix and tol is not None:
        raise ValueError("Run to convergence ('cb-*-conv') is defined for "
                         "the point source with fixed orientation only; use "
                         "a fixed depth with source_model/loose.")
    if isinstance(model, str) and model in MODELS:
        if model != "cb" and (n_layers is not None or tol is not None):
            raise ValueError(f"Only the classical 'cb' takes a depth or a "
                             f"tolerance, not {model!r}.")
        if model == "cb":
            n_layers = (N_LAYERS if n_layers is None
                        else check_positive_int(n_layers, "n_layers"))
            depth = "conv" if tol is not None else str(n_layers)
            tail = "converged" if tol is not None else f"{n_layers} it."
            return UnfoldedModel(
                f"cb-{mode}-{depth}{suffix}",
                f"{model_label('cb', learn_noise)}, {tail}{vlabel}",
                model="cb", learn_noise=learn_noise, n_layers=n_layers,
                tol=tol, max_iter=max_iter, **variant)
        return UnfoldedModel(f"{model}-{mode}{suffix}",
                             model_label(model, learn_noise) + vlabel,
                             model=model, learn_noise=learn_noise, **variant)
    net = load_model(model, learn_noise=learn_noise)  # checks the setting
    key = (f"{net.model}-{mode}-custom" if isinstance(model, UnfoldedSBL)
           else str(model))
    return UnfoldedModel(key + suffix, _network_label(net, model) + vlabel,
                         model=model, learn_noise=learn_noise, **variant)


def classical_methods():
    """The four convex-bounding baselines of the benchmark, by key."""
    out = {}
    for learn_noise in (False, True):
        for tol in (None, CB_TOL):
            m = unfolded_method("cb", learn_noise, tol=tol)
            out[m.key] = m
    return out


def _learned_keys():
    return [f"{m}-{mode}" for m in MODELS if m != "cb"
            for mode in _MODES.values()]


def variant_methods():
    """The source-model variants of the fixed-depth unfolded entries, by key.

    ``cb-joint-25``, ``cb-source-25`` and every ``<model>-joint``,
    ``<model>-source``, each with the ``"-multiscale"`` and ``"-loose"``
    suffix (see the module docs).
    """
    out = {}
    bases = [("cb", lm) for lm in (True, False)] + [
        (m, lm) for m in MODELS if m != "cb" for lm in (True, False)]
    for suffix, (source_model, loose) in VARIANTS.items():
        if not suffix:
            continue
        for model, learn_noise in bases:
            m = unfolded_method(model, learn_noise, source_model=source_model,
                                loose=loose)
            out[m.key] = m
    return out


def method_names():
    """Every method name :func:`get_method` accepts (besides weights files
    and other ``"-loose<x>"`` values)."""
    return (list(mne_methods()) + list(MODELS) + list(classical_methods())
            + _learned_keys() + list(variant_methods()))


def _is_weights_path(method):
    return (isinstance(method, (Path, UnfoldedSBL))
            or (isinstance(method, str) and (
                method.endswith(".safetensors") or Path(method).is_file())))


def get_method(method, *, learn_noise=True, n_layers=None,
               mxne_alpha=MXNE_ALPHA, source_model="point", loose=0.0):
    """Look a method up in the registry.

    Parameters
    ----------
    method : str | UnfoldedSBL | path-like | ComparisonMethod
        A name of :func:`method_names` (case-insensitive), a network or a
        weights file; an entry is returned as is.
    learn_noise : bool
        For a bare model name (``"cb"``, ``"deep-cb"``) or a network.
    n_layers : int | None
        Depth of ``"cb"``.
    mxne_alpha : float
        MxNE regularisation.
    source_model : "point" | "multiscale"
        For a bare model name or a network: the source model. A key with a
        variant suffix (``"cb-joint-25-multiscale"``) says it itself.
    loose : float
        For a bare model name or a network: the orientation constraint.

    Returns
    -------
    method : ComparisonMethod

    Raises
    ------
    ValueError
        For an unknown name, listing the valid ones.
    """
    if isinstance(method, ComparisonMethod):
        return method
    if _is_weights_path(method):
        return unfolded_method(method, learn_noise, source_model=source_model,
                               loose=loose)
    if not isinstance(method, str):
        raise TypeError(f"method must be a str, an UnfoldedSBL, a path or a "
                        f"ComparisonMethod, got {type(method).__name__}.")
    key = method.lower()
    mne_ = mne_methods(mxne_alpha)
    if key in mne_:
        return mne_[key]
    if key in MODELS:
        return unfolded_method(key, learn_noise, n_layers=n_layers,
                               source_model=source_model, loose=loose)
    classical = classical_methods()
    if key in classical:
        return classical[key]
    if key in _learned_keys():
        model, _, mode = key.rpartition("-")
        return unfolded_method(model, mode == "joint")
    base, sm, lo = _split_variant(key)
    if base != key:
        if base in classical and classical[base].tol is None:
            spec = classical[base]
            return unfolded_method("cb", spec.learn_noise,
                                   n_layers=spec.n_layers, source_model=sm,
                                   loose=lo)
        if base in _learned_keys():
            model, _, mode = base.rpartition("-")
            return unfolded_method(model, mode == "joint", source_model=sm,
                                   loose=lo)
    raise ValueError(f"Unknown method {method!r}; valid methods are "
                     f"{method_names()}, an UnfoldedSBL network or a "
                     ".safetensors weights file.")
