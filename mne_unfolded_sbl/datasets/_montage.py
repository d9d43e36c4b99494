"""EEG montages and measurement info for the fsaverage template."""

import warnings
from functools import lru_cache

import mne
import numpy as np
from mne.utils import _validate_type

#: Montage whose positions are used for training (fitted to the fsaverage scalp).
TRAIN_MONTAGE = "fsaverage_1005"

#: The 63 recorded EEG channels of the THINGS-EEG2 cap (EasyCap 64-channel
#: 10-10 layout; Fz was the online reference and is not a recorded channel).
THINGS_EEG2_CH_NAMES = [
    "Fp1", "F3", "F7", "FT9", "FC5", "FC1", "C3", "T7", "TP9", "CP5", "CP1",
    "Pz", "P3", "P7", "O1", "Oz", "O2", "P4", "P8", "TP10", "CP6", "CP2", "Cz",
    "C4", "T8", "FT10", "FC6", "FC2", "F4", "F8", "Fp2", "AF7", "AF3", "AFz",
    "F1", "F5", "FT7", "FC3", "FCz", "C1", "C5", "TP7", "CP3", "P1", "P5",
    "PO7", "PO3", "POz", "PO4", "PO8", "P6", "P2", "CPz", "CP4", "TP8", "C6",
    "C2", "FC4", "FT8", "F6", "F2", "AF4", "AF8",
]  # fmt: skip

#: Training channels: the 64 sites of the BioSemi-64 10-10 layout (positions
#: from :data:`TRAIN_MONTAGE`). Deliberately a different layout from the
#: THINGS-EEG2 cap (it has Fpz, Fz, P9, P10 and Iz where THINGS has FT9,
#: FT10, TP9, TP10), so that the Things Cap settings test a real montage
#: transfer.
TRAIN_CH_NAMES = [
    "Fp1", "AF7", "AF3", "F1", "F3", "F5", "F7", "FT7", "FC5", "FC3", "FC1",
    "C1", "C3", "C5", "T7", "TP7", "CP5", "CP3", "CP1", "P1", "P3", "P5", "P7",
    "P9", "PO7", "PO3", "O1", "Iz", "Oz", "POz", "Pz", "CPz", "Fpz", "Fp2",
    "AF8", "AF4", "AFz", "Fz", "F2", "F4", "F6", "F8", "FT8", "FC6", "FC4",
    "FC2", "FCz", "Cz", "C2", "C4", "C6", "T8", "TP8", "CP6", "CP4", "CP2",
    "P2", "P4", "P6", "P8", "P10", "PO8", "PO4", "O2",
]  # fmt: skip

#: A 32-channel 10-20 cap: the 19 sites of the 10-20 system plus Oz, the
#: FC/CP rows (FC1/2/5/6, CP1/2/5/6) and TP9/10, PO9/10, the layout of the
#: common 32-channel EasyCap / actiCAP caps (positions from
#: :data:`TRAIN_MONTAGE`).
CAP32_CH_NAMES = [
    "Fp1", "Fp2", "F7", "F3", "Fz", "F4", "F8", "FC5", "FC1", "FC2", "FC6",
    "T7", "C3", "Cz", "C4", "T8", "TP9", "CP5", "CP1", "CP2", "CP6", "TP10",
    "P7", "P3", "Pz", "P4", "P8", "PO9", "O1", "Oz", "O2", "PO10",
]  # fmt: skip

#: Special montage names understood by :func:`make_montage` that are channel
#: subsets of :data:`TRAIN_MONTAGE` (positions fitted to the fsaverage scalp).
SPECIAL_MONTAGES = {
    "things-eeg2": THINGS_EEG2_CH_NAMES,
    "train-64": TRAIN_CH_NAMES,
    "1020-32": CAP32_CH_NAMES,
}

#: Special montage names understood by :func:`make_montage` that are built-in
#: MNE montages *fitted* to the fsaverage scalp (:func:`fit_to_template_scalp`):
#: MNE's positions of these caps (BioSemi's on a 95 mm sphere) are not on
#: the template head (a median 5-6 mm and up to 17-23 mm off its scalp, the
#: frontal electrodes inside it).
FITTED_MONTAGES = {
    "biosemi128": "biosemi128",
    "egi-128": "GSN-HydroCel-128",
}

MIN_EEG_CHANNELS = 10


def _standard_montage(name):
    """Make a built-in MNE montage, with an informative error if unknown."""
    try:
        with warnings.catch_warnings():  # deprecated aliases still work
            warnings.simplefilter("ignore", FutureWarning)
            return mne.channels.make_standard_montage(name)
    except ValueError:
        allowed = (sorted(SPECIAL_MONTAGES) + sorted(FITTED_MONTAGES)
                   + mne.channels.get_builtin_montages())
        raise ValueError(
            f"Unknown montage name {name!r}. Use one of {allowed}, or pass an "
            "mne.channels.DigMontage or an mne.Info with EEG positions."
        ) from None


def _subset(montage, ch_names):
    """Return a copy of ``montage`` restricted to ``ch_names`` (in that order)."""
    pos = montage.get_positions()
    missing = [name for name in ch_names if name not in pos["ch_pos"]]
    if missing:
        raise ValueError(
            f"Channels {missing} are not in the montage; available: "
            f"{list(pos['ch_pos'])}"
        )
    return mne.channels.make_dig_montage(
        ch_pos={name: pos["ch_pos"][name] for name in ch_names},
        nasion=pos["nasion"],
        lpa=pos["lpa"],
        rpa=pos["rpa"],
        coord_frame=pos["coord_frame"],
    )


@lru_cache(maxsize=8)
def _template_scalp():
    """The embedded fsaverage scalp (MRI coordinates, m), its vertex normals,
    a KD-tree of its vertices, the head->MRI transform and the fiducials."""
    from mne.surface import complete_surface_info
    from scipy.spatial import cKDTree

    from ._subject import load_template_geometry

    geom = load_template_geometry()
    rr = np.asarray(geom["outer_skin"], np.float64) / 1000.0  # mm -> m
    surf = complete_surface_info(dict(rr=rr, tris=geom["tris"]), verbose=False)
    fid = dict(zip(geom["fiducial_idents"].tolist(),  # m, MRI coordinates
                   np.asarray(geom["fiducials"], np.float64)))
    return dict(rr=rr, nn=surf["nn"], tree=cKDTree(rr),
                head_mri_t=np.asarray(geom["head_mri_t"], np.float64), fid=fid)


def _signed_scalp_distance(rr_mri, scalp):
    """Signed distance (m) of points (MRI coordinates) to the scalp: to the
    tangent plane of the nearest vertex, positive outside."""
    _, idx = scalp["tree"].query(rr_mri)
    return np.sum((rr_mri - scalp["rr"][idx]) * scalp["nn"][idx], axis=1), idx


@lru_cache(maxsize=8)
def _fitted_positions(builtin):
    """Head-coordinate positions of a built-in montage fitted to the template
    scalp, and the fit: ``(ch_names, pos (n, 3), params (6,), before, after)``
    (``before``/``after``: absolute scalp distances in m)."""
    from scipy.optimize import least_squares

    montage = _standard_montage(builtin)
    info = mne.create_info(montage.ch_names, 100.0, "eeg")
    info.set_montage(montage)  # to head coordinates (its fiducials)
    head = np.array([ch["loc"][:3] for ch in info["chs"]])
    scalp = _template_scalp()
    T = scalp["head_mri_t"]
    rr = mne.transforms.apply_trans(T, head)
    center = rr.mean(0)

    def moved(x):
        return center + x[:3] * (rr - center) + x[3:]

    def residual(x):
        return _signed_scalp_distance(moved(x), scalp)[0]

    fit = least_squares(residual, np.r_[1.0, 1.0, 1.0, 0.0, 0.0, 0.0],
                        x_scale=np.r_[0.1, 0.1, 0.1, 0.01, 0.01, 0.01])
    rr_fit = moved(fit.x)
    dist, idx = _signed_scalp_distance(rr_fit, scalp)
    rr_fit = rr_fit - dist[:, None] * scalp["nn"][idx]  # onto the scalp
    before = np.abs(residual(np.r_[1.0, 1.0, 1.0, 0.0, 0.0, 0.0]))
    after = np.abs(_signed_scalp_distance(rr_fit, scalp)[0])
    pos = mne.transforms.apply_trans(np.linalg.inv(T), rr_fit)
    return (tuple(montage.ch_names), pos, fit.x, before, after)


def fit_to_template_scalp(name):
    """A built-in MNE montage fitted to the fsaverage template scalp.

    MNE's positions of caps such as BioSemi (on a sphere of radius 95 mm)
    or EGI HydroCel do not lie on the fsaverage scalp. This fits, in
    the template's MRI coordinates, a scaling along each axis (about the
    electrodes' centroid) and a translation (6 parameters) that minimise the
    squared distances of the electrodes to the template scalp (point to the
    tangent plane of the nearest scalp vertex; :func:`scipy.optimize.least_squares`),
    then moves every electrode onto the scalp along the normal. The layout
    of the cap is kept up to the scaling. Checked on BioSemi-64, whose 10-10
    sites have fsaverage positions in ``"fsaverage_1005"``: the fit brings
    them from a median 16 mm (max 26 mm) to 6 mm (max 13 mm) of those (see
    ``doc/benchmarks.rst``).

    Parameters
    ----------
    name : str
        A built-in MNE montage name (e.g. ``"biosemi128"``,
        ``"GSN-HydroCel-128"``).

    Returns
    -------
    montage : mne.channels.DigMontage
        In head coordinates, with the template's fiducials.
    fit : dict
        ``scale`` (3,), ``shift`` (3,, m, MRI coordinates), and the
        electrode-to-scalp distances (m) ``before`` and ``after`` the fit.
    """
    ch_names, pos, x, before, after = _fitted_positions(str(name))
    scalp = _template_scalp()
    mri_head = np.linalg.inv(scalp["head_mri_t"])
    fid = {k: mne.transforms.apply_trans(mri_head, v)
           for k, v in scalp["fid"].items()}
    from mne.io.constants import FIFF

    montage = mne.channels.make_dig_montage(
        ch_pos=dict(zip(ch_names, pos.copy())),
        nasion=fid[FIFF.FIFFV_POINT_NASION], lpa=fid[FIFF.FIFFV_POINT_LPA],
        rpa=fid[FIFF.FIFFV_POINT_RPA], coord_frame="head")
    return montage, dict(scale=x[:3].copy(), shift=x[3:].copy(),
                         before=before.copy(), after=after.copy())


def make_montage(name, ch_names=None):
    """Make an EEG montage that fits the fsaverage template head.

    Parameters
    ----------
    name : str
        A built-in MNE montage name (see
        :func:`mne.channels.get_builtin_montages`; ``"fsaverage_1005"`` and
        friends are fitted to the fsaverage scalp, others are used as they
        are), or a special name: ``"things-eeg2"`` (the 63 channels of
        :data:`THINGS_EEG2_CH_NAMES`), ``"train-64"``
        (:data:`TRAIN_CH_NAMES`) or ``"1020-32"`` (:data:`CAP32_CH_NAMES`),
        all with :data:`TRAIN_MONTAGE` positions; ``"biosemi128"`` (BioSemi
        128) or ``"egi-128"`` (EGI ``"GSN-HydroCel-128"``): MNE's positions
        fitted to the template scalp (:func:`fit_to_template_scalp`).
    ch_names : list of str | None
        Keep only these channels, in this order. None keeps all.

    Returns
    -------
    montage : mne.channels.DigMontage
        The montage.
    """
    _validate_type(name, str, "name")
    key = name.lower()
    if key in SPECIAL_MONTAGES:
        montage = _subset(_standard_montage(TRAIN_MONTAGE), SPECIAL_MONTAGES[key])
    elif key in FITTED_MONTAGES:
        montage = fit_to_template_scalp(FITTED_MONTAGES[key])[0]
    else:
        montage = _standard_montage(name)
    if ch_names is not None:
        montage = _subset(montage, list(ch_names))
    return montage


def _eeg_info_from_info(info):
    """Return a clean EEG-only Info (no projectors) from a user Info."""
    picks = mne.pick_types(info, meg=False, eeg=True, exclude=())
    ch_names = [info["ch_names"][pick] for pick in picks]
    has_pos = [
        np.isfinite(ch["loc"][:3]).all() and np.any(ch["loc"][:3] != 0)
        for ch in (info["chs"][pick] for pick in picks)
    ]
    _check_n_channels(int(np.sum(has_pos)), "the Info")
    dropped = [name for name, ok in zip(ch_names, has_pos) if not ok]
    if dropped:
        mne.utils.warn(f"Dropping EEG channels without positions: {dropped}")
    info = info.copy()
    with info._unlock():
        info["projs"] = []
        info["bads"] = []
    return mne.pick_info(info, [p for p, ok in zip(picks, has_pos) if ok], copy=False)


def _check_n_channels(n, what):
    if n < MIN_EEG_CHANNELS:
        raise ValueError(
            f"{what} has only {n} EEG channels with positions; at least "
            f"{MIN_EEG_CHANNELS} are needed. Set a montage first, e.g. "
            "inst.set_montage('standard_1005')."
        )


def make_info(montage, sfreq=100.0):
    """Make an EEG-only :class:`mne.Info` with the montage set.

    No projector is added: remember to use
    ``inst.set_eeg_reference(projection=True)`` on the data before inverse
    modelling.

    Parameters
    ----------
    montage : str | mne.channels.DigMontage | mne.Info
        A montage name (see :func:`make_montage`), a montage, or an Info whose
        EEG channels with positions are kept (other channels, channels without
        positions, bads and projectors are dropped).
    sfreq : float
        Sampling frequency (ignored when ``montage`` is an Info).

    Returns
    -------
    info : mne.Info
        The measurement info (EEG channels only).
    """
    _validate_type(montage, (str, mne.channels.DigMontage, mne.Info), "montage")
    if isinstance(montage, mne.Info):
        return _eeg_info_from_info(montage)
    if isinstance(montage, str):
        montage = make_montage(montage)
    _check_n_channels(len(montage.ch_names), "The montage")
    info = mne.create_info(montage.ch_names, float(sfreq), "eeg")
    info.set_montage(montage)
    return info
