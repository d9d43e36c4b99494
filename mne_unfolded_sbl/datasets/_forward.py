"""Fixed-orientation EEG (and MEG) forward models on fsaverage, cached."""

import hashlib
import json
from pathlib import Path

import mne
import numpy as np
from mne.io.constants import FIFF
from mne.utils import _check_option, _validate_type, logger, verbose, warn

from ..core.leadfield import DEFAULT_CONDUCTIVITY
from ._cache import atomic_write, cache_dir, check_writable, read_cached
from ._meg import _combine, make_meg_info, meg_sensor_positions
from ._montage import make_info
from ._subject import SUBJECT, _data_hash, resolve_source

#: Number of sources of the supported surface source spaces (both hemispheres).
SPACINGS = {"ico3": 1284, "ico4": 5124}
BEM_ICOS = (3, 4)
#: Median electrode-to-scalp distance (mm) above which a warning is emitted.
MAX_SCALP_DISTANCE = 10.0
#: Minimum MEG sensor-to-scalp distance (mm) below which a warning is emitted.
MIN_MEG_SCALP_DISTANCE = 5.0


def _check_conductivity(conductivity):
    _validate_type(conductivity, (list, tuple, np.ndarray), "conductivity")
    try:
        cond = np.asarray(conductivity, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(
            "conductivity must contain 3 numbers (brain, skull, scalp) in S/m, "
            f"got {conductivity!r}"
        ) from None
    if cond.shape != (3,) or not np.isfinite(cond).all() or (cond <= 0).any():
        raise ValueError(
            "conductivity must be 3 positive finite values (brain, skull, "
            f"scalp) in S/m for a 3-layer BEM, e.g. {DEFAULT_CONDUCTIVITY}; got "
            f"{conductivity!r}"
        )
    return tuple(float(c) for c in cond)


def _source_key(kind, subjects_dir):
    if kind == "embedded":
        return f"embedded-{_data_hash()}"
    return "real-" + hashlib.sha1(str(subjects_dir).encode()).hexdigest()[:8]


def _trans(subjects_dir):
    fname = Path(subjects_dir) / SUBJECT / "bem" / f"{SUBJECT}-trans.fif"
    return fname if fname.is_file() else "fsaverage"  # MNE's built-in copy


def _bem_fname(source_key, bem_ico, conductivity):
    cond = "-".join(f"{c:g}" for c in conductivity)
    return cache_dir() / "bem" / f"{source_key}-ico{bem_ico}-{cond}-bem-sol.fif"


def _check_bem(bem, bem_ico):
    n_vert = 10 * 4**bem_ico + 2
    if [s["np"] for s in bem["surfs"]] != [n_vert] * 3:
        return f"not a 3-layer ico{bem_ico} BEM"
    if bem.get("solution") is None or not np.isfinite(bem["solution"]).all():
        return "no valid BEM solution matrix"
    return None


def _bem_solution(subjects_dir, source_key, bem_ico, conductivity, cache):
    fname = _bem_fname(source_key, bem_ico, conductivity)
    if cache:
        bem = read_cached(
            fname,
            lambda f: mne.read_bem_solution(f, verbose=False),
            "BEM solution",
            lambda bem: _check_bem(bem, bem_ico),
        )
        if bem is not None:
            return bem
    cond = "-".join(f"{c:g}" for c in conductivity)
    logger.info(f"Computing the ico{bem_ico} 3-layer BEM solution ({cond} S/m)")
    model = mne.make_bem_model(
        SUBJECT, ico=bem_ico, conductivity=conductivity, subjects_dir=subjects_dir
    )
    bem = mne.make_bem_solution(model)
    if cache:
        atomic_write(
            fname, lambda f: mne.write_bem_solution(f, bem, verbose=False), "-sol.fif"
        )
    return bem


def electrode_scalp_distances(info, bem, trans):
    """Distances (m) from EEG electrodes to the BEM scalp, in MRI coordinates.

    Parameters
    ----------
    info : mne.Info
        Info with EEG channel positions (head coordinates).
    bem : mne.bem.ConductorModel | list of dict
        A BEM solution, or BEM surfaces (from :func:`mne.make_bem_model`),
        including the scalp.
    trans : path-like | str | mne.transforms.Transform
        The head<->MRI transform.

    Returns
    -------
    dist : ndarray, shape (n_eeg,)
        Distance of each electrode to its projection onto the scalp.
    """
    from mne.surface import _project_onto_surface

    head_mri_t = mne.transforms._get_trans(trans, "head", "mri")[0]
    picks = mne.pick_types(info, meg=False, eeg=True, exclude=())
    rr = np.array([info["chs"][pick]["loc"][:3] for pick in picks])
    rr = mne.transforms.apply_trans(head_mri_t, rr)
    surfs = bem["surfs"] if isinstance(bem, dict) else bem
    (scalp,) = [s for s in surfs if s["id"] == FIFF.FIFFV_BEM_SURF_ID_HEAD]
    proj = _project_onto_surface(rr, scalp, project_rrs=True)[2]
    return np.linalg.norm(proj - rr, axis=1)


def _meg_key(info):
    """The MEG sensor definition (names, coils, loc, dev_head_t), for keys."""
    picks = mne.pick_types(info, meg=True, ref_meg=False, exclude=())
    return dict(
        ch_names=[info["ch_names"][p] for p in picks],
        coil_types=[int(info["chs"][p]["coil_type"]) for p in picks],
        loc=np.round([info["chs"][p]["loc"][:12] * 1e6 for p in picks]).tolist(),
        dev_head_t=np.round(info["dev_head_t"]["trans"] * 1e6).tolist(),
    )


def _forward_key(info, spacing, conductivity, bem_ico, source_key):
    picks = mne.pick_types(info, meg=False, eeg=True, exclude=())
    desc = dict(
        ch_names=[info["ch_names"][p] for p in picks],
        pos=np.round([info["chs"][p]["loc"][:3] * 1e6 for p in picks]).tolist(),
        spacing=spacing,
        conductivity=conductivity,
        bem_ico=bem_ico,
        source=source_key,
        mne=mne.__version__.split(".dev")[0],
    )
    if len(mne.pick_types(info, meg=True, ref_meg=False, exclude=())):
        desc["meg"] = _meg_key(info)  # EEG-only keys are unchanged
    return hashlib.sha1(json.dumps(desc).encode()).hexdigest()[:16]


def _read_forward(fname):
    return mne.read_forward_solution(fname, verbose=False)


def _check_forward(fwd, info, spacing):
    """Return None if a cached forward matches the request, else why not."""
    picks = mne.pick_types(info, meg=True, eeg=True, ref_meg=False, exclude=())
    if fwd["sol"]["row_names"] != [info["ch_names"][p] for p in picks]:
        return "unexpected channels"
    if not 0 < fwd["nsource"] <= SPACINGS[spacing]:
        return f"{fwd['nsource']} sources"
    if not np.isfinite(fwd["sol"]["data"]).all():
        return "non-finite gain"
    return None


def _check_meg_scalp_distances(info, bem, trans):
    """Raise if MEG sensors are inside the scalp, warn if very close to it.

    Cheap (nearest scalp vertex and the side of its normal); MNE checks
    exactly again when computing the forward.
    """
    from scipy.spatial import cKDTree

    head_mri_t = mne.transforms._get_trans(trans, "head", "mri")[0]
    rr = mne.transforms.apply_trans(head_mri_t, meg_sensor_positions(info))
    (scalp,) = [s for s in bem["surfs"] if s["id"] == FIFF.FIFFV_BEM_SURF_ID_HEAD]
    dist, idx = cKDTree(scalp["rr"]).query(rr)
    inside = np.sum((rr - scalp["rr"][idx]) * scalp["nn"][idx], axis=1) < 0
    if inside.any():
        raise ValueError(
            f"{inside.sum()} MEG sensors are inside the fsaverage scalp: the MEG "
            "array is not placed around the template head (check "
            "info['dev_head_t'], e.g. use make_meg_info(dev_head_t=None))."
        )
    dist = dist * 1e3  # to the nearest vertex
    logger.info(
        f"MEG sensors to scalp vertices: min {dist.min():.1f} mm, "
        f"median {np.median(dist):.1f} mm"
    )
    if dist.min() < MIN_MEG_SCALP_DISTANCE:
        warn(
            f"A MEG sensor is only {dist.min():.1f} mm from the fsaverage "
            "scalp; the MEG array is probably not placed for this head."
        )


def _compute_forward(info, spacing, subjects_dir, bem):
    trans = _trans(subjects_dir)
    has_eeg = len(mne.pick_types(info, meg=False, eeg=True, exclude=())) > 0
    has_meg = len(mne.pick_types(info, meg=True, ref_meg=False, exclude=())) > 0
    if has_eeg:
        dist = electrode_scalp_distances(info, bem, trans) * 1e3
        logger.info(
            f"EEG electrodes to scalp: median {np.median(dist):.1f} mm, "
            f"max {dist.max():.1f} mm (MNE projects them onto the scalp)"
        )
        if np.median(dist) > MAX_SCALP_DISTANCE:
            warn(
                f"The EEG electrodes are a median {np.median(dist):.1f} mm away "
                "from the fsaverage scalp; the montage is probably not in "
                "fsaverage head coordinates. Use a template montage such as "
                "'fsaverage_1005'."
            )
    if has_meg:
        _check_meg_scalp_distances(info, bem, trans)
    src = mne.setup_source_space(
        SUBJECT, spacing=spacing, add_dist=False, subjects_dir=subjects_dir
    )
    fwd = mne.make_forward_solution(
        info, trans, src, bem, meg=has_meg, eeg=has_eeg, mindist=0.0
    )
    if fwd["nsource"] != SPACINGS[spacing]:
        warn(
            f"The forward has {fwd['nsource']} sources instead of "
            f"{SPACINGS[spacing]}: some sources lie outside the inner skull."
        )
    return fwd


@verbose
def resolve_bem_ico(bem_ico="auto", conductivity=DEFAULT_CONDUCTIVITY, *,
                    source="auto", verbose=None):
    """The BEM grade that ``bem_ico="auto"`` stands for.

    Parameters
    ----------
    bem_ico : "auto" | 3 | 4
        ``"auto"``: the accurate ico4 BEM when its solution (for this
        ``conductivity`` and fsaverage) is already cached, else the fast
        ico3 BEM (seconds; lead fields within about 8 %%). 3 or 4 are
        returned as they are.
    conductivity : tuple of float
        Brain, skull and scalp conductivities in S/m.
    source : ``"auto"`` | ``"embedded"`` | ``"real"`` | ``"download"``
        Which fsaverage, see :func:`get_subjects_dir`.
    %(verbose)s

    Returns
    -------
    bem_ico : 3 | 4
    """
    if bem_ico != "auto":
        _check_option("bem_ico", bem_ico, BEM_ICOS + ("auto",))
        return int(bem_ico)
    conductivity = _check_conductivity(conductivity)
    kind, subjects_dir = resolve_source(source)
    cached = _bem_fname(_source_key(kind, subjects_dir), 4, conductivity)
    return 4 if cached.is_file() else 3


def _meg_info(meg):
    """The MEG-only Info that ``make_template_forward(meg=...)`` stands for."""
    _validate_type(meg, (bool, mne.Info), "meg")
    if meg is True:
        return make_meg_info()
    picks = mne.pick_types(meg, meg=True, ref_meg=False, exclude=())
    if not len(picks):
        raise ValueError("meg is an Info without MEG channels")
    if meg["dev_head_t"] is None:
        raise ValueError("meg is an Info without a device->head transform "
                         "(info['dev_head_t'] is None)")
    locs = np.array([meg["chs"][p]["loc"][:12] for p in picks])
    if not np.isfinite(locs).all() or np.any(np.all(locs[:, :3] == 0, axis=1)):
        raise ValueError("Some MEG channels of meg have no position (loc)")
    meg = mne.pick_info(meg, picks)
    with meg._unlock():
        meg["projs"], meg["bads"], meg["comps"] = [], [], []
    return meg


def _template_info(montage, meg):
    """The (MEG then EEG) Info of a template forward request."""
    if montage is None and meg is False:
        raise ValueError("montage=None needs MEG channels: pass meg=True (the "
                         "synthetic array of make_meg_info) or a MEG Info")
    eeg_info = None if montage is None else make_info(montage)
    if meg is False:
        return eeg_info
    meg_info = _meg_info(meg)
    if eeg_info is None:
        return meg_info
    return _combine(meg_info, eeg_info)


@verbose
def make_template_forward(
    montage="train-64",
    spacing="ico3",
    conductivity=DEFAULT_CONDUCTIVITY,
    *,
    bem_ico=4,
    meg=False,
    source="auto",
    cache=True,
    verbose=None,
):
    """Make a fixed-orientation EEG (or MEG+EEG) forward on fsaverage, offline.

    The source space is the fsaverage white-matter surface subsampled at
    ``spacing``, with dipoles fixed normal to the cortex; the head model is a
    3-layer BEM (brain, skull, scalp). BEM solutions and forwards are cached
    on disk (see ``MNE_UNFOLDED_SBL_CACHE``), so repeated calls are fast.

    Parameters
    ----------
    montage : str | mne.channels.DigMontage | mne.Info | None
        EEG sensors: ``"train-64"`` (default: the 64-channel training cap,
        :data:`TRAIN_CH_NAMES`), ``"things-eeg2"`` (63 channels), a built-in
        montage name (e.g. ``"fsaverage_1005"``, 335 channels), a montage, or an
        Info whose EEG channels with positions are used. Positions must be in
        fsaverage head coordinates (template montages are); electrodes are
        projected onto the scalp by MNE. None: no EEG (needs ``meg``).
    spacing : ``"ico3"`` | ``"ico4"``
        Source spacing: 1284 or 5124 sources (vertices ``0..641`` /
        ``0..2561`` of each fsaverage hemisphere).
    conductivity : tuple of float
        Brain, skull and scalp conductivities in S/m.
    bem_ico : 3 | 4 | "auto"
        Icosahedron grade of the BEM surfaces (1280 or 5120 triangles per
        surface). 4 takes about a minute and 2 GB the first time; 3 is fast
        (lead fields within about 8 %%); ``"auto"`` is 4 when that BEM is
        already cached, else 3 (see :func:`resolve_bem_ico`).
    meg : bool | mne.Info
        Add MEG channels (before the EEG ones): True for the synthetic
        306-channel VectorView-like array of :func:`make_meg_info` (102
        sites), or an Info whose MEG channels (positions in device
        coordinates, ``dev_head_t`` placing them around the fsaverage head)
        are used, e.g. ``make_meg_info(51)``. The MEG forward uses the same
        3-layer BEM. False (default): EEG only.
    source : ``"auto"`` | ``"embedded"`` | ``"real"`` | ``"download"``
        Which fsaverage to use, see :func:`get_subjects_dir`.
    cache : bool
        Read and write cached BEM solutions and forwards. A cached file that
        cannot be read (e.g. truncated) is reported in a warning, deleted and
        computed again. An unwritable cache directory is reported before
        anything is computed.
    %(verbose)s

    Returns
    -------
    fwd : mne.Forward
        Fixed-orientation, surface-oriented EEG (MEG, MEG+EEG) forward (no
        projectors; apply an average reference with
        ``set_eeg_reference(projection=True)`` to the EEG data). Its
        ``fwd["info"]`` holds the channels (MEG first) and ``dev_head_t``.
    """
    _check_option("spacing", spacing, tuple(SPACINGS))
    bem_ico = resolve_bem_ico(bem_ico, conductivity, source=source)
    _validate_type(cache, bool, "cache")
    conductivity = _check_conductivity(conductivity)
    info = _template_info(montage, meg)
    kind, subjects_dir = resolve_source(source)
    source_key = _source_key(kind, subjects_dir)
    key = _forward_key(info, spacing, conductivity, bem_ico, source_key)
    fname = cache_dir() / "fwd" / f"{SUBJECT}-{spacing}-{key}-fwd.fif"
    fwd = None
    if cache:  # a corrupted file is deleted (with a warning) and recomputed
        fwd = read_cached(
            fname, _read_forward, "forward solution",
            lambda fwd: _check_forward(fwd, info, spacing),
        )
    if fwd is None:
        logger.info(f"Using the {kind} fsaverage in {subjects_dir}")
        if cache:  # fail now rather than after computing the BEM and forward
            check_writable(fname.parent)
            check_writable(_bem_fname(source_key, bem_ico, conductivity).parent)
        bem = _bem_solution(subjects_dir, source_key, bem_ico, conductivity, cache)
        fwd = _compute_forward(info, spacing, subjects_dir, bem)
        if cache:  # read back so that every call returns the same (float32) data
            atomic_write(
                fname,
                lambda f: mne.write_forward_solution(f, fwd, verbose=False),
                "-fwd.fif",
            )
            fwd = _read_forward(fname)
    return mne.convert_forward_solution(
        fwd, surf_ori=True, force_fixed=True, use_cps=True, verbose=False
    )
