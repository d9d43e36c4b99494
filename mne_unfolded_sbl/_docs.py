"""Shared parameter documentation (as MNE's ``docdict``).

Parameter blocks that several public functions share are written once here
and inserted with :func:`fill_doc` (``%(name)s`` in a docstring), so that
``apply_unfolded_sbl``, ``apply_unfolded_sbl_epochs``, the trajectory, the
report and the command line describe a parameter the same way.
"""

from mne.utils.docs import docdict as _mne_docdict

docdict = {}

docdict["verbose"] = _mne_docdict["verbose"].strip("\n")
docdict["rank"] = """rank : None | dict | 'info' | 'full'
    Rank of the noise covariance, as in MNE (see
    :func:`mne.compute_rank`)."""
docdict["fwd_or_operator"] = """fwd : instance of mne.Forward | UnfoldedSBLOperator
    EEG forward solution on a surface source space; free or loose
    orientation forwards are converted to fixed orientation normal to
    the cortex. Or an operator from :func:`make_unfolded_sbl_operator`
    (then ``noise_cov=None``), which skips the preparation (picking,
    orientation, whitening) on repeated calls."""
docdict["noise_cov"] = """noise_cov : instance of mne.Covariance | None
    Noise covariance of single trials (as for
    :func:`mne.minimum_norm.make_inverse_operator`), used to whiten;
    with ``learn_noise=False`` it is the known noise (scaled by
    ``1 / nave`` for an evoked response). None only with an operator."""
docdict["model"] = """model : str | instance of UnfoldedSBL | path-like
    ``"cb"`` (classical convex bounding), ``"deep-cb"`` or
    ``"deep-attn-cb"`` (bundled pretrained weights), ``"bias-cb"``
    (bundled for ``learn_noise=True`` on the 64-channel training cap on
    fsaverage ico3 only; refused on any other geometry),
    a network (used as given, never modified), or the path of a
    ``.safetensors`` weights file written by the training CLI."""
docdict["learn_noise"] = """learn_noise : bool
    If True (default), learn the sensor-wise noise variances jointly
    with the source variances; else keep the whitened noise fixed."""
docdict["n_layers"] = """n_layers : int | None
    Number of unfolded layers (iterations), an integer >= 1. None uses
    the model's depth (25). Only the classical ``"cb"`` accepts another
    depth."""
docdict["loose"] = """loose : float
    Orientation constraint, as in MNE: 0 (default) keeps one dipole normal
    to the cortex per vertex; ``0 < loose < 1`` adds the two tangential
    dipoles with prior variance ``loose`` relative to the normal one; 1 is
    free orientation (needed by volume source spaces). The orientations of
    a vertex share one variance (``xyz_same_gamma``), so a vertex is active
    or pruned as a whole. Fixed orientation is the default because the
    bundled networks were trained on it, it keeps signed time courses and
    it is three times cheaper; use ``loose=0.2`` (MNE's usual value) when
    the forward's normals are uncertain (a template head)."""
docdict["source_model"] = """source_model : "point" | "multiscale"
    ``"point"`` (default): one variance per source. ``"multiscale"``:
    one variance per smoothed cortical atom (each vertex's activity
    diffused over the mesh at several extents, the point source
    included; see :mod:`mne_unfolded_sbl.core.multiscale`), for extended
    activity; surface source spaces with ``loose=0`` only."""
docdict["loose_apply"] = """loose : float | None
    Orientation constraint of the source model (see
    :func:`make_unfolded_sbl_operator`); None: 0 (fixed), or the
    operator's."""
docdict["source_model_apply"] = """source_model : "point" | "multiscale" | None
    Source model (see :func:`make_unfolded_sbl_operator`); None:
    ``"point"``, or the operator's."""
docdict["pick_ori"] = """pick_ori : None | "normal" | "vector"
    As in MNE: None gives the signed estimate for fixed orientation and
    the norm over the three orientations otherwise; ``"normal"`` the
    component normal to the cortex; ``"vector"`` a
    :class:`mne.VectorSourceEstimate` in head coordinates (loose or free
    orientation only)."""
docdict["device"] = """device : str
    Torch device, e.g. ``"cpu"`` or ``"cuda"``."""
docdict["dtype"] = """dtype : "float32" | "float64"
    Working precision of the large products (the small ``M x M``
    factorisations always run in float64)."""


# -- the report (mne_unfolded_sbl.report) -------------------------------------
docdict["report_evoked"] = """evoked : instance of mne.Evoked
    EEG evoked response with an average-reference projector."""
docdict["report_fwd"] = """fwd : instance of mne.Forward
    Forward solution on a surface source space (fixed orientation is
    used). Estimates are placed on all of its sources
    (:func:`mne_unfolded_sbl.methods.expand_stc`); its source positions
    give the peak positions and distances."""
docdict["report_noise_cov"] = """noise_cov : instance of mne.Covariance
    Single-trial noise covariance: whitening, and the known noise of
    ``learn_noise=False`` and of MNE's methods."""
docdict["report_method"] = """A name of the registry :mod:`mne_unfolded_sbl.methods`
    (case-insensitive): ``"cb"``, ``"bias-cb"``, ``"deep-cb"``,
    ``"deep-attn-cb"`` (unfolded SBL with ``learn_noise``; learned models
    fall back to ``"cb"``, with a ``note``, without weights), the same
    with the noise setting fixed (``"deep-cb-joint"``,
    ``"cb-source-25"``), ``"sloreta"``, ``"dspm"``, ``"mne"``,
    ``"eloreta"``, ``"gamma-map"`` or ``"mxne"`` (MNE's solvers, settings
    documented in :mod:`mne_unfolded_sbl.methods`); a network or a
    ``.safetensors`` weights file; or a registry entry."""


def fill_doc(obj):
    """Insert the :data:`docdict` entries into ``obj.__doc__``.

    Raises
    ------
    RuntimeError
        If the docstring names a key that is not in :data:`docdict`.
    """
    doc = obj.__doc__
    if not doc:
        return obj
    lines = doc.splitlines()
    indent = min((len(ln) - len(ln.lstrip()) for ln in lines[1:] if ln.strip()),
                 default=0)
    pad = " " * indent
    indented = {k: v.replace("\n", "\n" + pad) for k, v in docdict.items()}
    try:
        obj.__doc__ = doc % indented
    except (KeyError, TypeError, ValueError) as err:
        raise RuntimeError(f"Error documenting {obj.__qualname__}: {err!r}") \
            from None
    return obj
