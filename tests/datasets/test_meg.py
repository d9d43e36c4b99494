"""The synthetic MEG array, the template MEG(+EEG) forward and their physics."""

import mne
import numpy as np
import pytest
from mne.io.constants import FIFF
from scipy.spatial import cKDTree

from mne_unfolded_sbl.datasets import (TEMPLATE_DEV_HEAD_T, make_info,
                                       make_meg_info, make_template_forward,
                                       meg_sensor_positions)
from mne_unfolded_sbl.datasets._subject import load_template_geometry

FAST = dict(spacing="ico3", bem_ico=3)
MU0_4PI = 1e-7


def _frames(info, picks):
    locs = np.array([info["chs"][p]["loc"] for p in picks])
    return locs[:, :3], locs[:, 3:6], locs[:, 6:9], locs[:, 9:12]


def _scalp_head():
    geom = load_template_geometry()
    mri_head_t = np.linalg.inv(geom["head_mri_t"])
    rr = mne.transforms.apply_trans(mri_head_t, geom["outer_skin"] / 1000.0)
    surf = mne.surface.complete_surface_info(
        dict(rr=rr, tris=geom["tris"].astype(int)), verbose=False)
    return surf


@pytest.fixture(scope="module", autouse=True)
def _one_blas_thread():
    """Tiny LAPACK calls of scipy's Delaunay.find_simplex (MNE's inside-surface
    checks) can take 10-20 s with multithreaded OpenBLAS on a loaded machine."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        yield


@pytest.fixture
def cache_env(template_cache, monkeypatch):
    monkeypatch.setenv("MNE_UNFOLDED_SBL_CACHE", str(template_cache))
    return template_cache


@pytest.fixture(scope="module")
def meg_eeg_template(template_cache):
    """The default 306-channel array + train-64 cap on the ico3 template."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MNE_UNFOLDED_SBL_CACHE", str(template_cache))
        return make_template_forward("train-64", meg=True, verbose=False, **FAST)


# --------------------------------------------------------------- the array --
def test_meg_info_layout():
    """VectorView-like triplets with orthonormal frames on the helmet."""
    info = make_meg_info()
    assert len(info["ch_names"]) == 306
    mags = mne.pick_types(info, meg="mag")
    grads = mne.pick_types(info, meg="grad")
    assert len(mags) == 102 and len(grads) == 204
    assert info["ch_names"][:3] == ["MEG 0111", "MEG 0112", "MEG 0113"]
    layout = mne.channels.read_layout("Vectorview-all")
    assert set(info["ch_names"]) == set(layout.names)
    for picks, coil, unit in ((mags, FIFF.FIFFV_COIL_VV_MAG_T3, FIFF.FIFF_UNIT_T),
                              (grads, FIFF.FIFFV_COIL_VV_PLANAR_T1,
                               FIFF.FIFF_UNIT_T_M)):
        for p in picks:
            ch = info["chs"][p]
            assert ch["coil_type"] == coil and ch["unit"] == unit
            assert ch["kind"] == FIFF.FIFFV_MEG_CH
            assert ch["coord_frame"] == FIFF.FIFFV_COORD_DEVICE
    pos, ex, ey, ez = _frames(info, range(306))
    frame = np.stack([ex, ey, ez], axis=1)
    np.testing.assert_allclose(frame @ frame.transpose(0, 2, 1),
                               np.broadcast_to(np.eye(3), frame.shape), atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(frame), 1.0, atol=1e-9)  # right-handed
    # magnetometer normals point out of the helmet (device frame)
    center = pos[mags].mean(axis=0) - [0, 0, 0.05]
    assert (np.sum((pos[mags] - center) * ez[mags], axis=1) > 0).all()
    # each site: mag and both grads share position and normal, grads at 90 deg
    for k in range(102):
        m, g1, g2 = 3 * k, 3 * k + 1, 3 * k + 2
        np.testing.assert_allclose(pos[[g1, g2]], pos[[m, m]])
        np.testing.assert_allclose(ez[[g1, g2]], ez[[m, m]])
        assert abs(ex[g1] @ ex[g2]) < 1e-9
        np.testing.assert_allclose(ex[g2], ey[g1])
    # evenly spread, like VectorView's 102 sites (about 34 mm apart)

    sites = pos[mags]
    nn = cKDTree(sites).query(sites, k=2)[0][:, 1]
    assert 0.018 < nn.min() and 0.025 < np.median(nn) < 0.04 and nn.max() < 0.05
    # the helmet around the fsaverage head, 15-45 mm from the scalp
    assert isinstance(info["dev_head_t"], mne.transforms.Transform)
    np.testing.assert_array_equal(info["dev_head_t"]["trans"], TEMPLATE_DEV_HEAD_T)
    scalp = _scalp_head()  # 10242 vertices, about 3 mm apart
    head_pos = meg_sensor_positions(info)
    dist, idx = cKDTree(scalp["rr"]).query(head_pos)
    outside = np.sum((head_pos - scalp["rr"][idx]) * scalp["nn"][idx], axis=1) > 0
    assert outside.all()
    assert 0.015 < dist.min() and np.median(dist) < 0.03 and dist.max() < 0.045
    # digitization: fsaverage fiducials + scalp points, so "auto" spheres work
    kinds = [d["kind"] for d in info["dig"]]
    assert kinds.count(FIFF.FIFFV_POINT_CARDINAL) == 3
    assert kinds.count(FIFF.FIFFV_POINT_EXTRA) > 50
    sphere = mne.make_sphere_model("auto", "auto", info, verbose=False)
    assert 0.08 < sphere.radius < 0.1
    # deterministic
    info2 = make_meg_info()
    np.testing.assert_array_equal(_frames(info2, range(306))[0], pos)


def test_meg_info_vectorview_names(tmp_path):
    """VectorView names at about VectorView places: selections and grad
    topomaps (which go through MNE's Vectorview layouts) work."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    info = make_meg_info(montage="train-64")
    pos = meg_sensor_positions(info)
    centre = {}
    for sel in ("Left-frontal", "Right-frontal", "Left-temporal",
                "Right-temporal", "Left-occipital", "Right-occipital", "Vertex"):
        names = mne.read_vectorview_selection(sel, info=info)
        assert len(names) >= 30
        centre[sel] = pos[[info["ch_names"].index(n) for n in names]].mean(axis=0)
    assert centre["Left-temporal"][0] < -0.07 < 0.07 < centre["Right-temporal"][0]
    assert centre["Left-frontal"][1] > 0.05 and centre["Right-frontal"][1] > 0.05
    assert centre["Left-occipital"][1] < -0.05 and centre["Right-occipital"][1] < -0.05
    assert centre["Vertex"][2] > max(c[2] for k, c in centre.items() if k != "Vertex")
    evoked = mne.EvokedArray(np.ones((len(info["ch_names"]), 1)) * 1e-13, info)
    for ch_type in ("mag", "grad", "eeg"):
        evoked.plot_topomap(times=[0.0], ch_type=ch_type, show=False)
    plt.close("all")
    small = make_meg_info(10)
    assert set(small["ch_names"]) < set(info["ch_names"])


@pytest.mark.parametrize("sensors, n_ch, n_mag", [("mag", 10, 10), ("grad", 20, 0),
                                                  ("mag+grad", 30, 10)])
def test_meg_info_options(sensors, n_ch, n_mag):
    """Sensor kinds, EEG montage, sampling rate and placement."""
    info = make_meg_info(10, sensors=sensors, sfreq=250.0)
    assert len(info["ch_names"]) == n_ch and info["sfreq"] == 250.0
    assert len(mne.pick_types(info, meg="mag")) == n_mag
    shift = np.eye(4)
    shift[:3, 3] = [0.0, 0.01, 0.02]
    both = make_meg_info(10, sensors=sensors, montage="train-64",
                         dev_head_t=mne.transforms.Transform("meg", "head", shift))
    eeg = make_info("train-64")
    assert both["ch_names"] == info["ch_names"] + eeg["ch_names"]
    np.testing.assert_array_equal(both["dev_head_t"]["trans"], shift)
    for name in eeg["ch_names"]:
        np.testing.assert_array_equal(both["chs"][both["ch_names"].index(name)]["loc"],
                                      eeg["chs"][eeg["ch_names"].index(name)]["loc"])
    np.testing.assert_allclose(meg_sensor_positions(both),
                               meg_sensor_positions(info) + shift[:3, 3] -
                               TEMPLATE_DEV_HEAD_T[:3, 3])
    assert len(both["dig"]) == len(eeg["dig"])
    # the inverse transform (head -> meg) is accepted too
    inv = mne.transforms.invert_transform(both["dev_head_t"])
    np.testing.assert_allclose(make_meg_info(10, dev_head_t=inv)["dev_head_t"]["trans"],
                               shift)


def test_meg_info_errors():
    with pytest.raises(ValueError, match="between 4 and 102"):
        make_meg_info(3)
    with pytest.raises(ValueError, match="between 4 and 102"):
        make_meg_info(103)
    with pytest.raises(TypeError, match="n_locations"):
        make_meg_info(10.0)
    with pytest.raises(ValueError, match="sensors"):
        make_meg_info(10, sensors="axial")
    with pytest.raises(ValueError, match="sfreq"):
        make_meg_info(10, sfreq=0)
    with pytest.raises(ValueError, match="4 x 4"):
        make_meg_info(10, dev_head_t=np.eye(3))
    with pytest.raises(ValueError, match="rigid"):
        make_meg_info(10, dev_head_t=np.diag([2.0, 1, 1, 1]))
    with pytest.raises(TypeError, match="dev_head_t"):
        make_meg_info(10, dev_head_t="identity")
    with pytest.raises(ValueError, match="[Uu]nknown montage"):
        make_meg_info(10, montage="no-such-cap")
    pos = make_info("train-64").get_montage().get_positions()
    ch_pos = dict(pos["ch_pos"])
    name = make_meg_info(10)["ch_names"][0]
    ch_pos[name] = ch_pos.pop("Cz")
    clash = mne.channels.make_dig_montage(ch_pos=ch_pos, coord_frame="head")
    with pytest.raises(ValueError, match=f"share names.*{name}"):
        make_meg_info(10, montage=clash)


# ------------------------------------------------------------ the physics --
def _sarvas(r, rq, q):
    """Sarvas (1987): B at points ``r`` of a dipole ``q`` at ``rq`` in a sphere
    centred at the origin (primary + volume currents)."""
    a_vec = r - rq
    a = np.linalg.norm(a_vec, axis=1)
    rn = np.linalg.norm(r, axis=1)
    a_dot_r = np.sum(a_vec * r, axis=1)
    F = a * (rn * a + rn**2 - r @ rq)
    grad_f = ((a**2 / rn + a_dot_r / a + 2 * a + 2 * rn)[:, None] * r
              - (a + 2 * rn + a_dot_r / a)[:, None] * rq)
    qxr = np.cross(q, rq)
    return MU0_4PI / F[:, None] ** 2 * (F[:, None] * qxr - (r @ qxr)[:, None] * grad_f)


def _point_coil_gain(info, r0, rq, q):
    """Point magnetometers; gradiometers: two points 16.8 mm apart along ex."""
    trans = info["dev_head_t"]["trans"]
    out = np.zeros(len(info["ch_names"]))
    for p, ch in enumerate(info["chs"]):
        pos = mne.transforms.apply_trans(trans, ch["loc"][:3]) - r0
        ex, ez = trans[:3, :3] @ ch["loc"][3:6], trans[:3, :3] @ ch["loc"][9:12]
        if ch["coil_type"] == FIFF.FIFFV_COIL_VV_MAG_T3:
            out[p] = _sarvas(pos[None], rq, q)[0] @ ez
        else:
            base = 0.0168
            b = _sarvas(np.array([pos + base / 2 * ex, pos - base / 2 * ex]), rq, q)
            out[p] = (b[0] - b[1]) @ ez / base
    return out


def _sphere_gain(info, r0, rr):
    src = mne.setup_volume_source_space(
        pos=dict(rr=np.atleast_2d(rr), nn=np.tile([0.0, 0.0, 1.0], (len(rr), 1))),
        verbose=False)
    fwd = mne.make_forward_solution(info, None, src, mne.make_sphere_model(r0, None),
                                    meg=True, eeg=False, verbose=False)
    return fwd["sol"]["data"]  # (n_meg, 3 * n_sources), x/y/z dipoles


def test_sphere_model_physics():
    """MNE's sphere-model field of the array matches an independent Sarvas
    formula (so positions, normals and gradient directions are right), a
    radial dipole is silent and a tangential one gives the dipolar map."""
    info = make_meg_info(60)
    mags = mne.pick_types(info, meg="mag")
    grads = mne.pick_types(info, meg="grad")
    r0 = np.array([0.0, 0.01, 0.045])
    rq = np.array([0.015, 0.0, 0.06])  # dipole position relative to r0
    gain = _sphere_gain(info, r0, (r0 + rq)[None])
    assert np.isfinite(gain).all()
    for j, q in enumerate(np.eye(3)):
        ref = _point_coil_gain(info, r0, rq, q)
        for picks in (mags, grads):
            g = gain[picks, j]
            assert np.corrcoef(ref[picks], g)[0, 1] > 0.99
            assert np.linalg.norm(ref[picks] - g) / np.linalg.norm(g) < 0.15
    radial = rq / np.linalg.norm(rq)
    assert np.abs(gain @ radial).max() < 1e-10 * np.abs(gain).max()
    # tangential dipole along x: by the right-hand rule B_r ~ (rq x q) . r, so
    # the field leaves the head at +y (in front of the dipole) and enters at -y
    q = np.cross([0.0, 1.0, 0.0], radial)
    q /= np.linalg.norm(q)  # tangential, mostly along +x
    b = gain[mags] @ q
    pos = meg_sensor_positions(info)[mags] - r0
    p_max, p_min = pos[np.argmax(b)], pos[np.argmin(b)]
    assert 0.5 < b.max() / -b.min() < 2
    assert p_max[1] > 0.01 and p_min[1] < -0.01
    axis = (p_max - p_min) / np.linalg.norm(p_max - p_min)
    assert abs(axis @ q) < 0.35  # extrema on either side of the dipole, not along it
    mid = (p_max + p_min) / 2
    assert np.degrees(np.arccos(mid @ radial / np.linalg.norm(mid))) < 20
    # gradiometers peak right above the dipole (zero line of the mag map)
    g_pair = np.hypot(*(gain[grads] @ q).reshape(-1, 2).T)
    top = meg_sensor_positions(info)[grads[::2][np.argmax(g_pair)]] - r0
    assert np.degrees(np.arccos(top @ radial / np.linalg.norm(top))) < 20


def test_bem_agrees_with_sphere(meg_eeg_template):
    """For superficial tangential sources, the template BEM forward and a
    sphere fitted to the head agree (MEG topography correlation > 0.9)."""
    fwd = meg_eeg_template
    info = fwd["info"]
    meg = mne.pick_types(info, meg=True, exclude=())
    src = fwd["src"]
    rr = np.concatenate([s["rr"][s["vertno"]] for s in src])  # head coordinates
    nn = np.concatenate([s["nn"][s["vertno"]] for s in src])
    assert src[0]["coord_frame"] == FIFF.FIFFV_COORD_HEAD
    meg_info = make_meg_info()  # the array of the forward, with the head shape
    assert meg_info["ch_names"] == [info["ch_names"][p] for p in meg]
    r0 = mne.make_sphere_model("auto", None, meg_info, verbose=False)["r0"]
    rel = rr - r0
    radial = rel / np.linalg.norm(rel, axis=1, keepdims=True)
    tangential = np.abs(np.sum(nn * radial, axis=1)) < 0.3
    depth = np.linalg.norm(rel, axis=1)
    superficial = np.flatnonzero(tangential & (depth > np.percentile(depth, 85)))
    assert len(superficial) >= 10
    pick = superficial[np.argsort(depth[superficial])[-10:]]
    g_sph = _sphere_gain(meg_info, r0, rr[pick]).reshape(len(meg), len(pick), 3)
    g_sph = np.einsum("cik,ik->ci", g_sph, nn[pick])
    g_bem = fwd["sol"]["data"][meg][:, pick]
    for picks in (mne.pick_types(meg_info, meg="mag"),
                  mne.pick_types(meg_info, meg="grad")):
        corr = [np.corrcoef(g_bem[picks, i], g_sph[picks, i])[0, 1]
                for i in range(len(pick))]
        assert np.min(corr) > 0.9, corr
        ratio = np.linalg.norm(g_bem[picks], axis=0) / np.linalg.norm(g_sph[picks],
                                                                      axis=0)
        assert (0.5 < ratio).all() and (ratio < 1.5).all(), ratio


# ------------------------------------------------- the template forward --
def test_template_meg_eeg_forward(meg_eeg_template, train_fwd, cache_env):
    """Shapes, channel types and order, fixed orientation, and caching."""
    fwd = meg_eeg_template
    eeg = make_info("train-64")
    meg = make_meg_info()
    assert fwd["sol"]["data"].shape == (306 + 64, 1284)
    assert fwd["sol"]["row_names"] == meg["ch_names"] + eeg["ch_names"]
    assert fwd["info"]["ch_names"] == fwd["sol"]["row_names"]
    types = fwd["info"].get_channel_types()
    assert types.count("mag") == 102 and types.count("grad") == 204
    assert types.count("eeg") == 64
    assert mne.forward.is_fixed_orient(fwd) and fwd["surf_ori"]
    np.testing.assert_allclose(fwd["info"]["dev_head_t"]["trans"], TEMPLATE_DEV_HEAD_T)
    assert np.isfinite(fwd["sol"]["data"]).all()
    # sensible magnitudes: mu0 / (4 pi) / r**2 ~ 1e-5 T / (A m) at r = 10 cm for
    # mags; gradiometers about 1 / (2 cm) times larger; EEG as the EEG forward
    mags = np.abs(fwd["sol"]["data"][mne.pick_types(fwd["info"], meg="mag")])
    grads = np.abs(fwd["sol"]["data"][mne.pick_types(fwd["info"], meg="grad")])
    assert 1e-8 < np.median(mags) < 1e-5 and 1e-6 < mags.max() < 1e-4
    assert 10 < np.median(grads) / np.median(mags) < 100
    eeg = train_fwd["sol"]["data"]  # the EEG-only forward, same BEM
    eeg_rows = mne.pick_types(fwd["info"], meg=False, eeg=True)
    np.testing.assert_allclose(fwd["sol"]["data"][eeg_rows], eeg, rtol=1e-5,
                               atol=1e-7 * np.abs(eeg).max())
    # cached: same data, nothing recomputed
    n_files = len(list((cache_env / "fwd").glob("*-fwd.fif")))
    again = make_template_forward("train-64", meg=True, verbose=False, **FAST)
    np.testing.assert_array_equal(again["sol"]["data"], fwd["sol"]["data"])
    assert len(list((cache_env / "fwd").glob("*-fwd.fif"))) == n_files


def test_template_meg_only_and_cache_key(cache_env):
    """montage=None: MEG only; the key includes the MEG array definition."""
    small = make_meg_info(8, sensors="mag")
    fwd = make_template_forward(None, meg=small, verbose=False, **FAST)
    assert fwd["sol"]["data"].shape == (8, 1284)
    assert fwd["info"].get_channel_types() == ["mag"] * 8
    files = set((cache_env / "fwd").glob("*-fwd.fif"))
    # the same array moved by 1 cm is another forward (another cache file)
    moved = TEMPLATE_DEV_HEAD_T.copy()
    moved[2, 3] += 0.01
    fwd2 = make_template_forward(None, meg=make_meg_info(8, sensors="mag",
                                                         dev_head_t=moved),
                                 verbose=False, **FAST)
    assert len(set((cache_env / "fwd").glob("*-fwd.fif")) - files) == 1
    assert not np.allclose(fwd2["sol"]["data"], fwd["sol"]["data"])
    # farther sensors see weaker fields
    assert np.linalg.norm(fwd2["sol"]["data"]) < np.linalg.norm(fwd["sol"]["data"])
    # an Info with MEG and EEG: only its MEG channels are used for meg=
    again = make_template_forward(None, meg=make_meg_info(8, sensors="mag",
                                                          montage="train-64"),
                                  verbose=False, **FAST)
    np.testing.assert_array_equal(again["sol"]["data"], fwd["sol"]["data"])


def test_template_meg_errors(cache_env):
    with pytest.raises(ValueError, match="montage=None needs MEG"):
        make_template_forward(None, **FAST)
    with pytest.raises(TypeError, match="meg"):
        make_template_forward(meg="vectorview", **FAST)
    with pytest.raises(ValueError, match="without MEG channels"):
        make_template_forward(meg=make_info("train-64"), **FAST)
    no_pos = mne.create_info(["MEG 0111", "MEG 0112"], 100.0, ["mag", "grad"])
    with pytest.raises(ValueError, match="dev_head_t"):
        make_template_forward(None, meg=no_pos, **FAST)
    with no_pos._unlock():
        no_pos["dev_head_t"] = mne.transforms.Transform("meg", "head")
    with pytest.raises(ValueError, match="no position"):
        make_template_forward(None, meg=no_pos, **FAST)
    inside = TEMPLATE_DEV_HEAD_T.copy()
    inside[2, 3] -= 0.06  # helmet pushed down into the head
    with pytest.raises(ValueError, match="inside the fsaverage scalp"):
        make_template_forward(None, meg=make_meg_info(8, dev_head_t=inside),
                              verbose=False, **FAST)


# --------------------------------------------------- the test fixture --
def test_meg_eeg_forward_fixture(meg_eeg_forward, tiny_forward):
    """The small MEG+EEG sphere forward used by API tests."""
    fwd, info = meg_eeg_forward
    eeg_fwd, eeg_info = tiny_forward
    assert fwd["sol"]["row_names"] == info["ch_names"]
    types = info.get_channel_types()
    assert types.count("mag") == 24 and types.count("grad") == 48
    assert types.count("eeg") == 32 and fwd["nsource"] == eeg_fwd["nsource"]
    assert not mne.forward.is_fixed_orient(fwd)
    assert [p["desc"] for p in info["projs"]] == ["Average EEG reference"]
    eeg = mne.pick_types(info, meg=False, eeg=True)
    np.testing.assert_allclose(fwd["sol"]["data"][eeg], eeg_fwd["sol"]["data"],
                               rtol=1e-6)
    r = np.linalg.norm(meg_sensor_positions(info), axis=1)
    assert r.min() > 0.095 + 0.01  # outside the sphere head
    stc = mne.simulation.simulate_sparse_stc(fwd["src"], 2, np.arange(20) / 100.0,
                                             random_state=0)
    evoked = mne.simulation.simulate_evoked(fwd, stc, info, mne.make_ad_hoc_cov(info),
                                            nave=30, random_state=0, verbose=False)
    assert evoked.data.shape == (104, 20) and np.isfinite(evoked.data).all()
