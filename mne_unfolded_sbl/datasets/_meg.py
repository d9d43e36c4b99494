"""A synthetic, VectorView-like MEG sensor array around the fsaverage head.

Nothing is downloaded: sensor locations are sampled on the Elekta/MEGIN 306m
helmet surface that MNE ships (``mne/data/helmets/306m.fif.gz``, MEG device
coordinates), and the helmet is placed around the fsaverage template head by
a fixed device->head transform (:data:`TEMPLATE_DEV_HEAD_T`).
"""

from functools import lru_cache
from pathlib import Path

import mne
import numpy as np
from mne.io.constants import FIFF
from mne.utils import _check_option, _validate_type

from ._montage import make_info

#: Device->head translation (m) that places the 306m helmet around the
#: fsaverage scalp (head coordinates of the template): the one, among
#: left-right symmetric placements on a 2.5 mm grid, with the smallest median
#: helmet-to-scalp distance such that the helmet is at least 18 mm outside
#: the scalp everywhere (helmet vertices: 18.7-35 mm, median 24 mm).
TEMPLATE_DEV_HEAD_T = np.array(
    [[1.0, 0.0, 0.0, 0.0],
     [0.0, 1.0, 0.0, -0.005],
     [0.0, 0.0, 1.0, 0.050],
     [0.0, 0.0, 0.0, 1.0]]
)  # fmt: skip
SENSOR_KINDS = ("mag+grad", "mag", "grad")
MIN_LOCATIONS, MAX_LOCATIONS = 4, 102
_HELMET = Path(mne.__file__).parent / "data" / "helmets" / "306m.fif.gz"
_N_DENSE = 12000  # samples of the helmet surface for the k-means placement
_GRAD = dict(kind=FIFF.FIFFV_MEG_CH, coil_type=FIFF.FIFFV_COIL_VV_PLANAR_T1,
             unit=FIFF.FIFF_UNIT_T_M)
_MAG = dict(kind=FIFF.FIFFV_MEG_CH, coil_type=FIFF.FIFFV_COIL_VV_MAG_T3,
            unit=FIFF.FIFF_UNIT_T)


def _normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@lru_cache(maxsize=1)
def _helmet_samples():
    """Area-uniform points (and interpolated outward normals) on the helmet."""
    surf = mne.read_bem_surfaces(_HELMET, verbose=False)[0]
    rr, nn, tris = surf["rr"], surf["nn"], surf["tris"]
    v0, v1, v2 = (rr[tris[:, k]] for k in range(3))
    area = 0.5 * np.linalg.norm(np.cross(v1 - v0, v2 - v0), axis=1)
    rng = np.random.default_rng(0)  # deterministic
    tri = rng.choice(len(tris), _N_DENSE, p=area / area.sum())
    u, v = rng.random((2, _N_DENSE))
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    w = np.stack([1 - u - v, u, v], axis=1)
    pts = np.einsum("nk,nkj->nj", w, rr[tris[tri]])
    nrm = _normalize(np.einsum("nk,nkj->nj", w, nn[tris[tri]]))
    return pts, nrm


@lru_cache(maxsize=16)
def _helmet_locations(n_locations):
    """``n_locations`` evenly spread sensor sites on the helmet (device frame).

    Lloyd's k-means on dense surface samples, started from farthest-point
    sampling; each site is the sample nearest to its cluster centroid, so it
    lies on the helmet with the helmet's outward normal.
    """
    from scipy.spatial import cKDTree

    pts, nrm = _helmet_samples()
    idx = [int(np.argmax(pts[:, 2]))]  # farthest-point init from the top
    dist = np.linalg.norm(pts - pts[idx[0]], axis=1)
    for _ in range(n_locations - 1):
        idx.append(int(np.argmax(dist)))
        dist = np.minimum(dist, np.linalg.norm(pts - pts[idx[-1]], axis=1))
    centers = pts[idx]
    for _ in range(100):
        labels = cKDTree(centers).query(pts)[1]
        new = np.array([pts[labels == k].mean(axis=0) if np.any(labels == k)
                        else centers[k] for k in range(n_locations)])
        done = np.abs(new - centers).max() < 1e-6
        centers = new
        if done:
            break
    site = cKDTree(pts).query(centers)[1]
    pos, ez = pts[site], nrm[site]
    names = _vectorview_names(pos)
    order = np.argsort(names)
    names, pos, ez = tuple(names[k] for k in order), pos[order], ez[order]
    # tangent frame: ex along the helmet "upwards" (towards the device +z
    # axis), or towards the front near the top; ey = ez x ex
    ref = np.where(np.abs(ez[:, 2:]) < 0.9, [0.0, 0.0, 1.0], [0.0, 1.0, 0.0])
    ex = _normalize(ref - np.sum(ref * ez, axis=1, keepdims=True) * ez)
    ey = np.cross(ez, ex)
    return names, pos, ex, ey, ez


def _flatten(pos):
    """Azimuthal equidistant projection about the device z axis, normalised."""
    theta = np.arccos(pos[:, 2] / np.linalg.norm(pos, axis=1))
    rho = np.maximum(np.linalg.norm(pos[:, :2], axis=1, keepdims=True), 1e-12)
    xy = theta[:, None] * pos[:, :2] / rho
    return (xy - xy.mean(axis=0)) / xy.std(axis=0)


def _vectorview_names(pos):
    """Name each site after the VectorView triplet at about the same place.

    MNE finds the "Vectorview" layouts from the coil types, and pairs and
    plots planar gradiometers through these layouts' channel names, so the
    sites get VectorView names ("MEG 0111" magnetometer, "MEG 0112" and
    "MEG 0113" gradiometers, ...): the triplet whose 2D layout position is
    matched to the site's flattened position (assignment, then an affine
    refit, a few times). Positions stay those of the synthetic sites.
    """
    from scipy.optimize import linear_sum_assignment

    layout = mne.channels.read_layout("Vectorview-all")
    centre = layout.pos[:, :2] + layout.pos[:, 2:4] / 2
    prefixes = sorted({name[:-1] for name in layout.names})
    ref = np.array([
        centre[[k for k, n in enumerate(layout.names) if n[:-1] == prefix]].mean(0)
        for prefix in prefixes])
    ref = (ref - ref.mean(axis=0)) / ref.std(axis=0)
    flat = np.c_[_flatten(pos), np.ones(len(pos))]
    xy = flat[:, :2]
    for _ in range(5):
        rows, cols = linear_sum_assignment(
            np.sum((xy[:, None] - ref[None]) ** 2, axis=-1))
        xy = flat @ np.linalg.lstsq(flat[rows], ref[cols], rcond=None)[0]
    out = [None] * len(pos)
    for row, col in zip(rows, cols):
        out[row] = prefixes[col]
    return out


def _as_dev_head_t(dev_head_t):
    if dev_head_t is None:
        return mne.transforms.Transform("meg", "head", TEMPLATE_DEV_HEAD_T)
    _validate_type(dev_head_t, (mne.transforms.Transform, np.ndarray, list, tuple),
                   "dev_head_t")
    if isinstance(dev_head_t, mne.transforms.Transform):
        dev_head_t = mne.transforms._ensure_trans(dev_head_t, "meg", "head")
        mat = dev_head_t["trans"]
    else:
        mat = np.asarray(dev_head_t, dtype=float)
    if mat.shape != (4, 4) or not np.isfinite(mat).all():
        raise ValueError(
            "dev_head_t must be a finite 4 x 4 device->head matrix or an "
            f"mne.transforms.Transform, got shape {mat.shape}")
    rot = mat[:3, :3]
    if (not np.allclose(rot @ rot.T, np.eye(3), atol=1e-6)
            or not np.allclose(mat[3], [0, 0, 0, 1])
            or np.linalg.det(rot) < 0):
        raise ValueError("dev_head_t must be a rigid transform (a rotation and "
                         "a translation, in metres)")
    return mne.transforms.Transform("meg", "head", mat)


@lru_cache(maxsize=1)
def _template_dig():
    """fsaverage fiducials and ~120 upper-scalp points, in head coordinates."""
    from ._subject import load_template_geometry

    geom = load_template_geometry()
    mri_head_t = np.linalg.inv(geom["head_mri_t"])
    fid = mne.transforms.apply_trans(mri_head_t, geom["fiducials"])
    fid = dict(zip(geom["fiducial_idents"].tolist(), fid))
    scalp = mne.transforms.apply_trans(
        mri_head_t, geom["outer_skin"][:162].astype(float) / 1000.0)  # ico2
    hsp = scalp[scalp[:, 2] > 0.0]  # above the fiducial plane
    return (fid[FIFF.FIFFV_POINT_NASION], fid[FIFF.FIFFV_POINT_LPA],
            fid[FIFF.FIFFV_POINT_RPA], hsp)


def _combine(meg_info, eeg_info):
    """An Info with the MEG channels of ``meg_info`` then ``eeg_info``'s EEG."""
    meg_picks = mne.pick_types(meg_info, meg=True, ref_meg=False, exclude=())
    eeg_picks = mne.pick_types(eeg_info, meg=False, eeg=True, exclude=())
    chs = [meg_info["chs"][p] for p in meg_picks]
    chs += [eeg_info["chs"][p] for p in eeg_picks]
    names = [ch["ch_name"] for ch in chs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"MEG and EEG channels share names: {dup}")
    info = mne.create_info(names, meg_info["sfreq"], "misc")
    with info._unlock():
        for new, ch in zip(info["chs"], chs):
            for key in ("loc", "kind", "coil_type", "unit", "unit_mul", "cal",
                        "range", "coord_frame"):
                new[key] = ch[key].copy() if key == "loc" else ch[key]
        info["dev_head_t"] = meg_info["dev_head_t"].copy()
        info["dig"] = [d.copy() for d in eeg_info["dig"] or []]
    info._update_redundant()
    info._check_consistency()
    return info


def make_meg_info(n_locations=102, *, sensors="mag+grad", montage=None,
                  sfreq=100.0, dev_head_t=None):
    """Make an Info with a synthetic VectorView-like MEG array (offline).

    ``n_locations`` sensor sites are spread evenly (k-means) over the helmet
    surface of the Elekta/MEGIN VectorView/TRIUX that MNE ships
    (``mne/data/helmets/306m.fif.gz``, the surface ``plot_alignment`` draws
    for these coils). Each site carries, like a VectorView triplet, a
    magnetometer (``FIFFV_COIL_VV_MAG_T3``, normal = outward helmet normal)
    and two orthogonal planar gradiometers (``FIFFV_COIL_VV_PLANAR_T1``, same
    position and normal, gradient directions 90 degrees apart). Sensor
    positions and orientations (``loc``: position, then ex, ey, ez) are in
    MEG device coordinates; ``info["dev_head_t"]`` places the helmet in head
    coordinates. This is **not** the real VectorView array (sites about 31
    mm apart, as in a VectorView, but not at its positions): use the Info,
    trans and forward of your recording for real data.

    Parameters
    ----------
    n_locations : int
        Number of sensor sites (4 to 102, the number of VectorView sites).
    sensors : ``"mag+grad"`` | ``"mag"`` | ``"grad"``
        Sensors per site: a magnetometer and two planar gradiometers (3
        channels), a magnetometer, or two gradiometers. Channels carry
        VectorView names (``"MEG 0111"`` magnetometer, ``"MEG 0112"``,
        ``"MEG 0113"`` its gradiometer pair, ...), each site that of the
        VectorView triplet at about the same place of the 2D layout, so that
        MNE's Vectorview layouts (gradiometer pairing in topomaps) and
        :func:`mne.read_vectorview_selection` work, approximately; the
        positions are those of the synthetic sites.
    montage : None | str | mne.channels.DigMontage | mne.Info
        Also add EEG channels (after the MEG ones), as :func:`make_info`
        makes them (e.g. ``"train-64"``); no projector is added. None: MEG
        only, with the fsaverage fiducials and upper-scalp points (head
        coordinates) as digitization, so e.g.
        ``mne.make_sphere_model("auto", "auto", info)`` works.
    sfreq : float
        Sampling frequency.
    dev_head_t : None | array, shape (4, 4) | mne.transforms.Transform
        The device->head transform. None (default) places the helmet around
        the fsaverage template head (:data:`TEMPLATE_DEV_HEAD_T`: sensors
        18-32 mm from the scalp, median 24 mm); EEG montages fitted to
        fsaverage then match. Give another (rigid) transform for another
        head, e.g. a sphere model centred elsewhere.

    Returns
    -------
    info : mne.Info
        Measurement info with the MEG (then EEG) channels.
    """
    _validate_type(n_locations, "int", "n_locations")
    if not MIN_LOCATIONS <= n_locations <= MAX_LOCATIONS:
        raise ValueError(
            f"n_locations must be between {MIN_LOCATIONS} and {MAX_LOCATIONS}, "
            f"got {n_locations}")
    _validate_type(sensors, str, "sensors")
    _check_option("sensors", sensors, SENSOR_KINDS)
    _validate_type(sfreq, "numeric", "sfreq")
    if not (np.isfinite(sfreq) and sfreq > 0):
        raise ValueError(f"sfreq must be positive, got {sfreq}")
    dev_head_t = _as_dev_head_t(dev_head_t)
    prefixes, pos, ex, ey, ez = _helmet_locations(int(n_locations))
    names, types, locs = [], [], []
    for k, prefix in enumerate(prefixes):
        if sensors in ("mag+grad", "mag"):
            names.append(f"{prefix}1")
            types.append("mag")
            locs.append(np.concatenate([pos[k], ex[k], ey[k], ez[k]]))
        if sensors in ("mag+grad", "grad"):
            names += [f"{prefix}2", f"{prefix}3"]
            types += ["grad", "grad"]
            locs.append(np.concatenate([pos[k], ex[k], ey[k], ez[k]]))
            locs.append(np.concatenate([pos[k], ey[k], -ex[k], ez[k]]))
    info = mne.create_info(names, float(sfreq), types)
    with info._unlock():
        for ch, loc, kind in zip(info["chs"], locs, types):
            ch.update(_MAG if kind == "mag" else _GRAD)
            ch["loc"] = loc.astype(float)
            ch["coord_frame"] = FIFF.FIFFV_COORD_DEVICE
        info["dev_head_t"] = dev_head_t
    if montage is not None:
        return _combine(info, make_info(montage, sfreq=float(sfreq)))
    nasion, lpa, rpa, hsp = _template_dig()
    dig = mne.channels.make_dig_montage(nasion=nasion, lpa=lpa, rpa=rpa, hsp=hsp,
                                        coord_frame="head")
    info.set_montage(dig)
    return info


def meg_sensor_positions(info):
    """Positions (m, head coordinates) of the MEG sensors of ``info``.

    Parameters
    ----------
    info : mne.Info
        Info with MEG channels and ``dev_head_t``.

    Returns
    -------
    pos : ndarray, shape (n_meg, 3)
        Sensor centres in head coordinates.
    """
    picks = mne.pick_types(info, meg=True, ref_meg=False, exclude=())
    if info["dev_head_t"] is None:
        raise ValueError("info['dev_head_t'] is None")
    rr = np.array([info["chs"][p]["loc"][:3] for p in picks]).reshape(-1, 3)
    return mne.transforms.apply_trans(info["dev_head_t"], rr)
