"""Tests for the offline fsaverage template head models."""

import mne
import numpy as np
import pytest
from mne.bem import _ico_downsample
from mne.surface import _CheckInside
from mne.utils import catch_logging

from mne_unfolded_sbl import datasets
from mne_unfolded_sbl.datasets import (
    THINGS_EEG2_CH_NAMES,
    TRAIN_CH_NAMES,
    TRAIN_MONTAGE,
    get_subjects_dir,
    leadfield_from_forward,
    make_info,
    make_montage,
    make_template_forward,
    save_leadfield_npz,
)
from mne_unfolded_sbl.datasets import _forward, _subject
from mne_unfolded_sbl.core.leadfield import average_reference, read_leadfield_npz

FAST = dict(montage="things-eeg2", spacing="ico3", bem_ico=3)
PERTURBED = (0.33, 0.0045, 0.27)


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    """Use a private cache dir for the tests of this module."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(datasets.CACHE_ENV, str(tmp_path_factory.mktemp("sbl_cache")))
        yield


@pytest.fixture(scope="module")
def fwd_embedded(_cache):
    return make_template_forward(**FAST, source="embedded")


def _topo_stats(a, b):
    """Per-column average-referenced scale (b ~ s a) and correlation."""
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    scale = (a * b).sum(0) / (a * a).sum(0)
    corr = (a * b).sum(0) / np.linalg.norm(a, axis=0) / np.linalg.norm(b, axis=0)
    return scale, corr


def test_channel_lists():
    """The THINGS cap has 63 channels; all names exist in the train montage."""
    assert len(THINGS_EEG2_CH_NAMES) == len(set(THINGS_EEG2_CH_NAMES)) == 63
    assert "Fz" not in THINGS_EEG2_CH_NAMES
    assert len(TRAIN_CH_NAMES) == len(set(TRAIN_CH_NAMES)) == 64
    montage = make_montage("things-eeg2")
    assert montage.ch_names == THINGS_EEG2_CH_NAMES
    assert make_montage("train-64").ch_names == TRAIN_CH_NAMES
    full = make_montage(TRAIN_MONTAGE)
    assert set(TRAIN_CH_NAMES) <= set(full.ch_names)
    info = make_info("things-eeg2")
    assert info["ch_names"] == THINGS_EEG2_CH_NAMES
    assert info["projs"] == [] and info["sfreq"] == 100.0
    assert make_montage("biosemi64", ch_names=["Cz", "Pz"]).ch_names == ["Cz", "Pz"]


def test_embedded_subject_files():
    """The materialised subject has FreeSurfer files MNE can read."""
    subjects_dir = get_subjects_dir("embedded")
    fs_dir = subjects_dir / "fsaverage"
    for name in _subject.REQUIRED_FILES:
        assert (fs_dir / name).is_file()
    ico5 = mne.surface._get_ico_surface(5)
    for name in _subject.BEM_SURFACES:
        _, tris = mne.read_surface(fs_dir / "bem" / f"{name}.surf")
        np.testing.assert_array_equal(tris, ico5["tris"])  # ico-decimatable
    fids, frame = mne.io.read_fiducials(fs_dir / "bem" / "fsaverage-fiducials.fif")
    assert len(fids) == 3 and frame == mne.io.constants.FIFF.FIFFV_COORD_MRI
    trans = mne.read_trans(fs_dir / "bem" / "fsaverage-trans.fif")
    mne_trans = mne.transforms._get_trans("fsaverage", "head", "mri")[0]
    np.testing.assert_allclose(trans["trans"], mne_trans["trans"])
    # the embedded dir is reused, not rewritten
    assert get_subjects_dir("embedded") == subjects_dir


def test_bem_surfaces_nested():
    """Inner skull inside outer skull inside scalp, with bounded thickness."""
    geom = _subject.load_template_geometry()
    tmin, tmax, scalp_min = geom["thickness_bounds"]
    # all surfaces are star-shaped on the same rays: radii must be ordered
    rel = {name: geom[name] - geom["center"] for name in _subject.BEM_SURFACES}
    radius = {name: np.linalg.norm(rr, axis=1) for name, rr in rel.items()}
    for name in ("outer_skull", "outer_skin"):
        cos = (rel[name] * rel["inner_skull"]).sum(1) / radius[name]
        np.testing.assert_allclose(cos / radius["inner_skull"], 1, atol=1e-6)
    thick = radius["outer_skull"] - radius["inner_skull"]
    scalp = radius["outer_skin"] - radius["outer_skull"]
    assert (tmin, tmax, scalp_min) == (3.0, 7.0, 2.0)
    assert thick.min() >= tmin - 1e-3 and thick.max() <= tmax + 1e-3
    assert scalp.min() >= scalp_min - 1e-3
    assert 5 < np.median(thick) < 7
    # independent solid-angle check on the ico3 meshes used by the fast BEM
    surfs = {
        name: mne.surface.complete_surface_info(
            _ico_downsample(dict(rr=geom[name] / 1e3, tris=geom["tris"]), 3),
            verbose=False,
        )
        for name in _subject.BEM_SURFACES
    }
    for inner, outer in (("inner_skull", "outer_skull"), ("outer_skull", "outer_skin")):
        inside = _CheckInside(surfs[outer])(surfs[inner]["rr"], verbose=False)
        assert inside.all(), (inner, outer)


def test_template_forward(fwd_embedded):
    """ico3 forward: 1284 fixed sources on vertices 0..641, finite gain."""
    fwd = fwd_embedded
    assert isinstance(fwd, mne.Forward)
    assert mne.forward.is_fixed_orient(fwd) and fwd["surf_ori"]
    assert fwd["nsource"] == 1284
    assert fwd["sol"]["data"].shape == (63, 1284)
    assert np.isfinite(fwd["sol"]["data"]).all()
    assert fwd["info"]["ch_names"] == THINGS_EEG2_CH_NAMES
    for src in fwd["src"]:
        np.testing.assert_array_equal(src["vertno"], np.arange(642))
    # normals are unit vectors (fixed, normal to the cortex)
    np.testing.assert_allclose(np.linalg.norm(fwd["source_nn"], axis=1), 1, atol=1e-6)


def test_electrodes_on_scalp(fwd_embedded):
    """Template electrodes sit within a few mm of the template scalp."""
    subjects_dir = get_subjects_dir("embedded")
    surfs = mne.make_bem_model("fsaverage", ico=3, subjects_dir=subjects_dir)
    trans = subjects_dir / "fsaverage" / "bem" / "fsaverage-trans.fif"
    dist = datasets.electrode_scalp_distances(fwd_embedded["info"], surfs, trans)
    assert dist.shape == (63,)
    assert np.median(dist) < 4e-3 and dist.max() < 10e-3


def test_forward_cache(fwd_embedded, monkeypatch):
    """The second call reads the cached forward and gives the same gain."""
    with catch_logging() as log:
        fwd = make_template_forward(**FAST, source="embedded", verbose=True)
    log = log.getvalue()
    assert "Using cached forward solution" in log
    assert "Computing" not in log
    assert list(datasets.cache_dir().glob("fwd/fsaverage-ico3-*-fwd.fif"))
    np.testing.assert_array_equal(fwd["sol"]["data"], fwd_embedded["sol"]["data"])

    class Recomputed(Exception):
        pass

    def recompute(*args, **kwargs):
        raise Recomputed

    monkeypatch.setattr(_forward, "_bem_solution", recompute)
    with pytest.raises(Recomputed):
        make_template_forward(**FAST, source="embedded", cache=False)


def test_perturbed_conductivity(fwd_embedded):
    """Perturbed conductivities scale topographies, barely change their shape."""
    fwd = make_template_forward(**FAST, conductivity=PERTURBED, source="embedded")
    scale, corr = _topo_stats(fwd_embedded["sol"]["data"], fwd["sol"]["data"])
    assert 0.8 < np.median(scale) < 0.9
    assert corr.min() > 0.99


def test_info_input(fwd_embedded):
    """An Info is reduced to its EEG channels with positions."""
    raw = mne.io.RawArray(np.zeros((63, 1)), make_info("things-eeg2"))
    extra = mne.create_info(["STI", "X1"], raw.info["sfreq"], ["stim", "eeg"])
    raw.add_channels([mne.io.RawArray(np.zeros((2, 1)), extra)], force_update_info=True)
    raw.set_eeg_reference(projection=True)
    with pytest.warns(RuntimeWarning, match="without positions.*X1"):
        info = make_info(raw.info)
    assert info["ch_names"] == THINGS_EEG2_CH_NAMES
    assert info["projs"] == []
    with pytest.warns(RuntimeWarning, match="without positions"):
        fwd = make_template_forward(raw.info, "ico3", bem_ico=3, source="embedded")
    np.testing.assert_allclose(fwd["sol"]["data"], fwd_embedded["sol"]["data"])


def test_leadfield_npz(fwd_embedded, tmp_path):
    """Lead fields round-trip through numpy-only npz files."""
    fname = tmp_path / "lf.npz"
    save_leadfield_npz(fwd_embedded, fname)
    with np.load(fname) as npz:  # stored as float32, in the forward's reference
        assert npz["gain"].dtype == np.float32
        np.testing.assert_allclose(npz["gain"], fwd_embedded["sol"]["data"],
                                   rtol=1e-6)
    lf = read_leadfield_npz(fname)  # average-referenced on reading
    np.testing.assert_allclose(
        lf.L, average_reference(fwd_embedded["sol"]["data"]),
        rtol=1e-5, atol=1e-6 * np.abs(lf.L).max())
    np.testing.assert_allclose(lf.pos, fwd_embedded["source_rr"], atol=1e-7)
    np.testing.assert_allclose(lf.nn, fwd_embedded["source_nn"], atol=1e-6)
    for vert in lf.vertices:
        np.testing.assert_array_equal(vert, np.arange(642))
    assert lf.ch_names == THINGS_EEG2_CH_NAMES
    assert lf.subject == "fsaverage"
    cached = next(datasets.cache_dir().glob("fwd/fsaverage-ico3-*-fwd.fif"))
    free = mne.read_forward_solution(cached)  # the cache holds free orientations
    with pytest.raises(ValueError, match="fixed orientation"):
        save_leadfield_npz(free, fname)
    with pytest.raises(TypeError, match="fwd"):
        save_leadfield_npz(fwd_embedded["sol"]["data"], fname)


def test_bad_inputs(monkeypatch, tmp_path):
    """Bad arguments raise errors that name the problem."""
    with pytest.raises(ValueError, match="Unknown montage name 'nope'"):
        make_montage("nope")
    with pytest.raises(ValueError, match="not in the montage"):
        make_montage("things-eeg2", ch_names=["Cz", "XYZ"])
    with pytest.raises(ValueError, match="spacing"):
        make_template_forward(spacing="ico5")
    with pytest.raises(ValueError, match="bem_ico"):
        make_template_forward(bem_ico=5)
    with pytest.raises(ValueError, match="source"):
        make_template_forward(source="web")
    few = make_montage("things-eeg2", ch_names=THINGS_EEG2_CH_NAMES[:5])
    with pytest.raises(ValueError, match="at least 10 are needed"):
        make_template_forward(few)
    with pytest.raises(ValueError, match="at least 10 are needed"):
        make_info(mne.create_info(20, 100.0, "eeg"))  # no positions
    with pytest.raises(ValueError, match="3 positive finite"):
        make_template_forward(conductivity=(0.3, -0.006, 0.3))
    with pytest.raises(ValueError, match="3 positive finite"):
        make_template_forward(conductivity=(0.3,))
    with pytest.raises(TypeError, match="conductivity must contain 3 numbers"):
        make_template_forward(conductivity=("a", "b", "c"))
    with pytest.raises(TypeError, match="conductivity"):
        make_template_forward(conductivity=0.3)
    with pytest.raises(TypeError, match="montage"):
        make_template_forward(montage=64)


def test_sources_offline(monkeypatch, tmp_path):
    """'real' fails clearly without a download; 'download' wraps errors."""
    monkeypatch.setattr(_subject, "_real_candidates", lambda: [tmp_path])
    assert get_subjects_dir("auto") == get_subjects_dir("embedded")
    with pytest.raises(RuntimeError, match="No downloaded fsaverage"):
        get_subjects_dir("real")

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(mne.datasets, "fetch_fsaverage", offline)
    with pytest.raises(RuntimeError, match="Could not download.*source='embedded'"):
        get_subjects_dir("download")


@pytest.mark.skipif(_subject._find_real() is None, reason="no real fsaverage")
def test_embedded_vs_real(fwd_embedded):
    """Embedded and real fsaverage give similar lead fields."""
    fwd_real = make_template_forward(**FAST, source="real")
    np.testing.assert_allclose(
        fwd_real["source_rr"], fwd_embedded["source_rr"], atol=1e-3
    )
    scale, corr = _topo_stats(fwd_real["sol"]["data"], fwd_embedded["sol"]["data"])
    assert np.median(corr) > 0.9
    assert 0.6 < np.median(scale) < 1.6


@pytest.mark.slow
def test_ico4_bem_forward(fwd_embedded):
    """ico4 BEM and ico4 sources (slow: 1-3 min and 2 GB for the ico4 BEM)."""
    fwd = make_template_forward("things-eeg2", "ico4", source="embedded")
    assert fwd["nsource"] == 5124
    for src in fwd["src"]:
        np.testing.assert_array_equal(src["vertno"], np.arange(2562))
    fwd3 = make_template_forward("things-eeg2", "ico3", source="embedded")
    rel = np.linalg.norm(fwd3["sol"]["data"] - fwd_embedded["sol"]["data"])
    assert rel / np.linalg.norm(fwd3["sol"]["data"]) < 0.15


def test_leadfield_from_forward_average_reference(tmp_path, monkeypatch):
    """The gain is average-referenced exactly as MNE's projector does it."""
    monkeypatch.setenv("MNE_UNFOLDED_SBL_CACHE", str(tmp_path))
    fwd = make_template_forward("things-eeg2", "ico3", bem_ico=3, verbose=False)
    lf = leadfield_from_forward(fwd)
    L, pos, names = lf.L, lf.pos, lf.ch_names
    # MNE's own projector, applied to the gain columns as if they were data
    info = mne.create_info(fwd["sol"]["row_names"], 100.0, "eeg")
    evk = mne.EvokedArray(fwd["sol"]["data"].copy(), info, verbose=False)
    evk.set_eeg_reference(projection=True, verbose=False).apply_proj(verbose=False)
    np.testing.assert_allclose(L, evk.data, atol=1e-12 * np.abs(L).max())
    assert names == fwd["sol"]["row_names"] and pos.shape == (1284, 3)
    # the same from the numpy-only lead-field file
    save_leadfield_npz(fwd, tmp_path / "lf.npz")
    lf2 = read_leadfield_npz(tmp_path / "lf.npz")
    L2, names2 = lf2.L, lf2.ch_names
    np.testing.assert_allclose(L2, L, rtol=1e-5, atol=1e-6 * np.abs(L).max())
    assert names2 == names
