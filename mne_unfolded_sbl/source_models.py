"""Source models on MNE source spaces: orientations, extended atoms, output.

The solver works on the columns of a whitened lead field. This module
says what those columns are for an :class:`mne.Forward` and maps the
solver's answer back to MNE source estimates:

- **orientation** (``loose``, as in MNE): ``0`` keeps one dipole normal to
  the cortex per vertex; ``0 < loose <= 1`` keeps three (MNE's
  surface-oriented frame, normal last) that share one variance
  (``xyz_same_gamma``), the tangential ones with prior variance ``loose``
  relative to the normal one (MNE's orientation prior: columns scaled by
  its square root, estimates by it again);
- **extent** (``source_model``): ``"point"`` (one variance per vertex) or
  ``"multiscale"`` (one variance per smoothed cortical atom of
  :mod:`mne_unfolded_sbl.core.multiscale`; fixed orientation, surface
  source spaces). The multi-scale model is kept, sample by sample, only
  where its evidence beats the point model's (BIC on the Type-II cost,
  :func:`~mne_unfolded_sbl.core.multiscale.evidence_cost`), so focal
  sources keep the point model's estimate;
- **output** (``pick_ori``): ``None`` (fixed: signed; loose/free: the norm
  over the orientations, as MNE), ``"normal"`` (the normal component) or
  ``"vector"`` (:class:`mne.VectorSourceEstimate` in head coordinates).
"""

import mne
import numpy as np
from mne.forward import compute_orient_prior, is_fixed_orient
from mne.utils import (_check_option, _validate_type, logger, object_size,
                       sizeof_fmt)

from .core.multiscale import (DEFAULT_EXTENTS_MM, MultiScaleBasis,
                              orders_for_extents)

__all__ = ["KernelSourceEstimate", "PICK_ORIS", "SOURCE_MODELS", "SourceModel"]

#: Source models of :func:`~mne_unfolded_sbl.apply_unfolded_sbl`.
SOURCE_MODELS = ("point", "multiscale")
#: Output orientations, as in MNE.
PICK_ORIS = (None, "normal", "vector")


def check_loose(loose, src):
    """``loose`` as a float in [0, 1]; volume source spaces need 1."""
    _validate_type(loose, "numeric", "loose")
    loose = float(loose)
    if not 0.0 <= loose <= 1.0:
        raise ValueError(f"loose must be between 0 (fixed orientation) and 1 "
                         f"(free orientation), got {loose}.")
    kinds = {s["type"] for s in src}
    if kinds != {"surf"} and loose != 1.0:
        raise ValueError(
            f"The forward has a {'/'.join(sorted(kinds))} source space, whose "
            "dipoles have no cortical orientation: use loose=1 (free "
            "orientation) or a surface source space.")
    return loose


def check_source_model(source_model, loose, src):
    """Validate ``source_model`` for this orientation and source space."""
    _check_option("source_model", source_model, SOURCE_MODELS)
    if source_model == "multiscale":
        kinds = {s["type"] for s in src}
        if kinds != {"surf"}:
            raise ValueError(
                "source_model='multiscale' smooths activity along the cortical "
                f"mesh, which a {'/'.join(sorted(kinds))} source space does "
                "not have: use source_model='point' or a surface source space "
                "(mne.setup_source_space).")
        if loose != 0.0:
            raise ValueError(
                "source_model='multiscale' models extended patches of "
                "dipoles normal to the cortex: use loose=0 with it, or "
                f"source_model='point' with loose={loose}.")


def check_pick_ori(pick_ori, source_model):
    """``pick_ori`` must fit the orientations of ``source_model``."""
    _check_option("pick_ori", pick_ori, PICK_ORIS)
    if source_model.n_orient == 1 and pick_ori == "vector":
        raise ValueError(
            "pick_ori='vector' needs the three orientations of a loose or "
            "free orientation model, but the forward is used with fixed "
            "orientation (loose=0): pass loose > 0 (e.g. loose=0.2, or 1 for "
            "free orientation), or pick_ori=None.")
    if pick_ori == "normal" and source_model.src.kind != "surface":
        raise ValueError("pick_ori='normal' needs a surface source space "
                         "(dipoles with a cortical normal); use pick_ori=None "
                         "or 'vector'.")


class SourceModel:
    """The solver's columns for one forward, and the way back to vertices.

    Parameters
    ----------
    fwd : mne.Forward
        The forward as prepared by MNE for ``loose`` (fixed orientation for
        ``loose=0``; surface-oriented free orientation otherwise).
    loose : float
    source_model : "point" | "multiscale"
    extents_mm : tuple of float
        Atom radii of the multi-scale model.
    """

    def __init__(self, fwd, loose, source_model="point",
                 extents_mm=DEFAULT_EXTENTS_MM):
        self.loose = float(loose)
        self.kind = source_model
        self.n_orient = 1 if is_fixed_orient(fwd) else 3
        #: Square root of MNE's orientation prior, per forward column.
        self.col_std = np.sqrt(compute_orient_prior(fwd, loose=self.loose,
                                                    verbose=False))
        self.source_nn = fwd["source_nn"]
        self.src = fwd["src"]
        self.subject = self.src._subject
        self.basis = None
        if source_model == "multiscale":
            adjacency = mne.spatial_src_adjacency(self.src, verbose=False)
            pos = fwd["source_rr"]
            a, b = adjacency.nonzero()
            edge_mm = 1e3 * float(np.mean(np.linalg.norm(pos[a] - pos[b], axis=1)))
            orders = orders_for_extents(extents_mm, edge_mm)
            self.basis = MultiScaleBasis(adjacency, orders)
            logger.info(f"    Multi-scale source model: diffusion orders "
                        f"{orders} (mean source spacing {edge_mm:.1f} mm), "
                        f"{self.basis.n_atoms} atoms")

    @property
    def n_vertices(self):
        """Number of source-space vertices."""
        return sum(len(s["vertno"]) for s in self.src)

    def __repr__(self):
        ori = "fixed" if self.n_orient == 1 else f"loose={self.loose:g}"
        return (f"<SourceModel | {self.kind}, {ori}, {self.n_vertices} "
                f"vertices>")

    def point_gain(self, gain):
        """The point-source lead field: columns weighted by the prior."""
        return np.asarray(gain) * self.col_std

    def solver_gain(self, gain):
        """The lead field the solver sees: columns weighted (and atoms)."""
        gain = self.point_gain(gain)
        return gain if self.basis is None else self.basis.leadfield(gain)

    def column_kernel(self, K):
        """Per-forward-column kernel from the solver's ``(n_cols, M)`` one."""
        if self.basis is not None:
            K = self.basis.to_vertices(K)
        return K * self.col_std[:, None]

    def make_stc(self, K_cols, sens_data, tmin, tstep, pick_ori):
        """A source estimate from the per-column kernel and the sensor data.

        Fixed orientation and ``pick_ori="normal"`` keep MNE's low-rank
        ``(kernel, sensor data)`` form; the norm over orientations and the
        vector estimate are formed here.
        """
        vertices = [s["vertno"] for s in self.src]
        if self.n_orient == 1:
            return _stc_class(self.src, False)(
                (K_cols, sens_data), vertices, tmin=tmin, tstep=tstep,
                subject=self.subject)
        K3 = K_cols.reshape(-1, 3, K_cols.shape[-1])
        if pick_ori == "normal":
            return _stc_class(self.src, False)(
                (K3[:, 2], sens_data), vertices, tmin=tmin, tstep=tstep,
                subject=self.subject)
        return self.stc_from_columns(K_cols @ sens_data, tmin, tstep, pick_ori)

    def stc_from_columns(self, X_cols, tmin, tstep, pick_ori):
        """A source estimate from an estimate per forward column ``(n_cols, T)``."""
        vertices = [s["vertno"] for s in self.src]
        kw = dict(tmin=tmin, tstep=tstep, subject=self.subject)
        if self.n_orient == 1:
            return _stc_class(self.src, False)(X_cols, vertices, **kw)
        X = X_cols.reshape(-1, 3, X_cols.shape[-1])
        if pick_ori == "normal":
            return _stc_class(self.src, False)(X[:, 2], vertices, **kw)
        if pick_ori == "vector":  # local (t1, t2, n) frame -> head x, y, z
            nn = self.source_nn.reshape(-1, 3, 3)
            X = np.einsum("vox,vot->vxt", nn, X)
            return _stc_class(self.src, True)(X, vertices, **kw)
        return _stc_class(self.src, False)(np.linalg.norm(X, axis=1),
                                           vertices, **kw)

    def make_std_stc(self, var_cols, times, pick_ori):
        """Posterior standard deviation (A·m) per source as a SourceEstimate.

        The posterior covariance does not depend on time: the estimate has
        the times of the data and the same value at every time (held as a
        rank-one ``(kernel, ones)`` pair: no ``n_sources x n_times`` array).
        Loose/free orientation: ``pick_ori="normal"`` gives the normal
        component's, otherwise ``sqrt`` of the summed variances of the three
        components (the scale of the vector's norm).
        """
        var = np.asarray(var_cols, np.float64)
        if self.n_orient == 3:
            var3 = var.reshape(-1, 3)
            var = var3[:, 2] if pick_ori == "normal" else var3.sum(1)
        std = np.sqrt(np.maximum(var, 0.0))
        vertices = [s["vertno"] for s in self.src]
        tstep = times[1] - times[0] if len(times) > 1 else 1.0
        return _stc_class(self.src, False)(
            (std[:, None], np.ones((1, len(times)))), vertices, tmin=times[0],
            tstep=tstep, subject=self.subject)


class KernelSourceEstimate(mne.SourceEstimate):
    """An :class:`mne.SourceEstimate` that stays a ``(kernel, sens_data)`` pair.

    MNE's ``SourceEstimate.__repr__`` reads ``self.data``, which forms
    ``kernel @ sens_data`` (``n_sources x n_times``: about 1 GB for 20k
    sources and 1e5 samples) just to print a summary. This subclass only
    changes the repr of an unformed estimate; everything else (``data``,
    ``copy``, ``crop``, arithmetic, ``save``, ``plot``, pickling) is MNE's,
    and ``isinstance(stc, mne.SourceEstimate)`` holds.
    """

    def __repr__(self):  # noqa: D105
        if self._data is not None or self._kernel is None:
            text = super().__repr__()  # formed: MNE's repr costs nothing
            return "<SourceEstimate" + text[text.index(" |"):]
        s = f"{sum(len(v) for v in self.vertices)} vertices"
        if self.subject is not None:
            s += f", subject : {self.subject}"
        s += f", tmin : {1e3 * self.tmin} (ms)"
        s += f", tmax : {1e3 * self.times[-1]} (ms)"
        s += f", tstep : {1e3 * self.tstep} (ms)"
        s += f", data shape : {self.shape}"
        held = sum(object_size(x) for x in
                   self.vertices + [self._kernel, self._sens_data])
        itemsize = np.result_type(self._kernel, self._sens_data).itemsize
        formed = int(np.prod(self.shape)) * itemsize
        s += (f", ~{sizeof_fmt(held)} as kernel {self._kernel.shape} @ sensor "
              f"data {self._sens_data.shape} (stc.data, formed on first "
              f"access: ~{sizeof_fmt(formed)})")
        return f"<SourceEstimate | {s}>"


def _stc_class(src, vector):
    """MNE's source-estimate class for this source space."""
    kind = src.kind
    if kind == "surface":
        return mne.VectorSourceEstimate if vector else KernelSourceEstimate
    if kind == "volume":
        return mne.VolVectorSourceEstimate if vector else mne.VolSourceEstimate
    return mne.MixedVectorSourceEstimate if vector else mne.MixedSourceEstimate


