"""Shared fixtures."""

import numpy as np
import pytest


@pytest.fixture(scope="session")
def tiny_forward(tmp_path_factory):
    """A small free-orientation EEG forward: two spherical 'hemispheres' (ico2
    sources on ico3 surfaces) in a 3-shell sphere head model, biosemi32 cap."""
    import mne
    from mne.surface import _get_ico_surface

    subjects_dir = tmp_path_factory.mktemp("subjects")
    surf_dir = subjects_dir / "tiny" / "surf"
    surf_dir.mkdir(parents=True)
    ico = _get_ico_surface(3)
    for hemi, x in (("lh", -30.0), ("rh", 30.0)):
        mne.write_surface(surf_dir / f"{hemi}.sphere", ico["rr"] * 100.0, ico["tris"])
        mne.write_surface(surf_dir / f"{hemi}.white", ico["rr"] * 25.0 + [x, 0.0, 20.0],
                          ico["tris"])
    src = mne.setup_source_space("tiny", spacing="ico2", subjects_dir=subjects_dir,
                                 add_dist=False, verbose="error")
    montage = mne.channels.make_standard_montage("biosemi32")
    info = mne.create_info(montage.ch_names, 100.0, "eeg")
    info.set_montage(montage)
    sphere = mne.make_sphere_model(r0=(0.0, 0.0, 0.0), head_radius=0.095,
                                   verbose="error")
    fwd = mne.make_forward_solution(info, None, src, sphere, meg=False, eeg=True,
                                    verbose="error")
    return fwd, info


@pytest.fixture(scope="session")
def template_cache(tmp_path_factory):
    """A private cache for template head models, shared by the session."""
    return tmp_path_factory.mktemp("mus_cache")


@pytest.fixture(scope="session")
def train_fwd(template_cache):
    """The 64-channel training-cap ico3 forward (fast ico3 BEM)."""
    import os
    from mne_unfolded_sbl.datasets import make_template_forward

    old = os.environ.get("MNE_UNFOLDED_SBL_CACHE")
    os.environ["MNE_UNFOLDED_SBL_CACHE"] = str(template_cache)
    try:
        return make_template_forward("train-64", "ico3", bem_ico=3, verbose=False)
    finally:
        if old is None:
            del os.environ["MNE_UNFOLDED_SBL_CACHE"]
        else:
            os.environ["MNE_UNFOLDED_SBL_CACHE"] = old


@pytest.fixture(scope="session")
def meg_eeg_forward(tiny_forward):
    """A small free-orientation MEG+EEG forward on the ``tiny_forward`` geometry.

    Same source space and sphere head (r0 = 0, 95 mm) as ``tiny_forward``, with
    72 MEG channels (24 magnetometers, 48 planar gradiometers: 24 sites of
    :func:`mne_unfolded_sbl.datasets.make_meg_info`, 14-37 mm outside the
    sphere) before the 32 biosemi32 EEG channels. ``info`` has an (inactive)
    EEG average-reference projector, as ``set_eeg_reference(projection=True)``
    adds it. Returns ``(fwd, info)``.
    """
    import mne
    from mne_unfolded_sbl.datasets import make_meg_info

    eeg_fwd, _ = tiny_forward
    dev_head_t = np.eye(4)
    dev_head_t[:3, 3] = (0.0, -0.01, 0.005)  # helmet around the 95 mm sphere
    info = make_meg_info(24, montage="biosemi32", dev_head_t=dev_head_t)
    evoked = mne.EvokedArray(np.zeros((len(info["ch_names"]), 1)), info)
    info = evoked.set_eeg_reference(projection=True, verbose="error").info
    sphere = mne.make_sphere_model(r0=(0.0, 0.0, 0.0), head_radius=0.095,
                                   verbose="error")
    fwd = mne.make_forward_solution(info, None, eeg_fwd["src"], sphere, meg=True,
                                    eeg=True, verbose="error")
    return fwd, info
