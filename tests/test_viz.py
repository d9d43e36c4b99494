"""The headless figures (mne_unfolded_sbl.viz): brain renderer and plots."""

import sys

import matplotlib
import numpy as np
import pytest
import mne

import mne_unfolded_sbl.viz as viz
from mne_unfolded_sbl.report import source_positions_mri
from mne_unfolded_sbl.viz import available_3d_backend, plot_source_estimate
from mne_unfolded_sbl.viz._brain import _panels

matplotlib.use("Agg", force=False)

#: Every name ``from mne_unfolded_sbl.viz import X`` offered before the
#: module became a package.
PUBLIC = ("available_3d_backend", "plot_source_estimate", "figure_to_array",
          "plot_time_courses", "plot_noise_topomap", "plot_noisiest_channels",
          "plot_convergence", "plot_corrections")


@pytest.fixture(scope="module")
def subjects_dir(template_cache):
    """The embedded fsaverage, cached in the test cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MNE_UNFOLDED_SBL_CACHE", str(template_cache))
        mp.setenv("MNE_UNFOLDED_SBL_3D", "matplotlib")  # fast, no probe
        from mne_unfolded_sbl.datasets import get_subjects_dir

        yield get_subjects_dir(verbose=False)


def test_public_api_kept():
    assert set(viz.__all__) == set(PUBLIC)
    for name in PUBLIC:
        assert callable(getattr(viz, name)), name
    # the figure functions live in figures, the renderer in _brain
    from mne_unfolded_sbl.viz import _brain, figures

    assert viz.plot_source_estimate is figures.plot_source_estimate
    assert viz.available_3d_backend is _brain.available_3d_backend


def test_optional_dependencies_missing(monkeypatch):
    """Without pyvista / nilearn: a clear error for backend='pyvista', the
    matplotlib renderer for "auto", no nilearn surfaces."""
    from mne_unfolded_sbl.viz import _brain

    monkeypatch.setitem(sys.modules, "pyvista", None)  # import fails
    monkeypatch.setitem(sys.modules, "nilearn", None)
    monkeypatch.delenv("MNE_UNFOLDED_SBL_3D", raising=False)
    with pytest.raises(ImportError, match="backend='pyvista' needs the "
                       "optional package 'pyvista': pip install pyvista"):
        _brain.resolve_backend("pyvista")
    _brain._probe_pyvista.cache_clear()
    try:
        assert _brain.resolve_backend("auto") == "matplotlib"
    finally:
        _brain._probe_pyvista.cache_clear()
    assert _brain._nilearn_fsaverage5() is None


def _is_brain_image(img):
    """Not blank: a visible cortex and coloured (active) spots."""
    img = np.asarray(img, float)
    assert img.ndim == 3 and img.shape[2] == 3
    assert img.std() > 20
    nonwhite = np.any(img < 235, axis=-1).mean()
    assert 0.15 < nonwhite < 0.95, nonwhite
    brains = img[: int(0.7 * img.shape[0])]  # above the colour bar
    r, g, b = brains[..., 0], brains[..., 1], brains[..., 2]
    grey = (np.abs(r - g) < 12) & (np.abs(g - b) < 12) & (r < 220)
    hot = (r > 150) & (r - b > 80)
    assert grey.mean() > 0.1  # the cortex
    return int(hot.sum())


def test_panels_layout():
    panels, shape = _panels(("lateral", "medial", "posterior", "ventral"), "both")
    assert shape == (2, 3)
    assert [p[4] for p in panels if p[2] == "lateral"] == ["left lateral",
                                                          "right lateral"]
    panels, shape = _panels(("lateral",), "lh")
    assert shape == (1, 1)
    panels, shape = _panels(("dorsal",), "both")
    assert shape == (1, 1)


def _focal_stc(fwd):
    vertices = [s["vertno"] for s in fwd["src"]]
    data = np.zeros((sum(len(v) for v in vertices), 3))
    pos = source_positions_mri(fwd)
    lat = np.argmin(pos[:len(vertices[0]), 0])  # most lateral left source
    data[lat] = [1e-9, 20e-9, 5e-9]
    data[len(vertices[0]) + 10] = [0, 8e-9, 0]
    return mne.SourceEstimate(data, vertices, 0.0, 0.01, subject="fsaverage")


def test_brain_render_matplotlib(train_fwd, subjects_dir):
    stc = _focal_stc(train_fwd)
    img = plot_source_estimate(stc, subjects_dir, backend="matplotlib",
                               title="test", return_image=True)
    assert _is_brain_image(img) > 20  # active spots are visible
    # an all-zero estimate renders a bare cortex (no colour, no error)
    zero = stc.copy()
    zero.data[:] = 0
    img = plot_source_estimate(zero, subjects_dir, backend="matplotlib",
                               views=("lateral",), return_image=True)
    assert _is_brain_image(img) == 0
    with pytest.raises(ValueError, match="view"):
        plot_source_estimate(stc, subjects_dir, views=("sideways",))


def test_brain_render_pyvista(train_fwd, subjects_dir, monkeypatch):
    monkeypatch.delenv("MNE_UNFOLDED_SBL_3D", raising=False)
    if available_3d_backend() != "pyvista":
        pytest.skip("PyVista cannot render off-screen here")
    stc = _focal_stc(train_fwd)
    fig = plot_source_estimate(stc, subjects_dir, backend="auto",
                               views=("lateral", "posterior"))
    assert fig._mus_backend == "pyvista"
    from mne_unfolded_sbl.viz import figure_to_array

    assert _is_brain_image(figure_to_array(fig)) > 20


def test_backend_env(monkeypatch):
    monkeypatch.setenv("MNE_UNFOLDED_SBL_3D", "matplotlib")
    assert available_3d_backend() == "matplotlib"


def test_value_and_time_labels(train_fwd, subjects_dir):
    """The colour bar names what is shown (e.g. a posterior std) and the
    title can replace the time."""
    stc = _focal_stc(train_fwd)
    fig = plot_source_estimate(stc, subjects_dir, backend="matplotlib",
                               views=("lateral",), title="Posterior std",
                               value_label="posterior std",
                               time_label="constant over time")
    texts = [fig._suptitle.get_text()] + [
        ax.get_xlabel() for ax in fig.axes]
    assert "Posterior std — constant over time" in texts
    assert any(t.startswith("posterior std (nA·m)") for t in texts)
    import matplotlib.pyplot as plt

    plt.close(fig)
    fig = plot_source_estimate(stc, subjects_dir, backend="matplotlib",
                               views=("lateral",), time="rms")
    assert fig._suptitle.get_text() == "temporal RMS"
    assert any(ax.get_xlabel().startswith("|source amplitude|")
               for ax in fig.axes)
    plt.close(fig)
    with pytest.raises(TypeError, match="time_label"):
        plot_source_estimate(stc, subjects_dir, time_label=3)


def test_noise_scatter_title_without_spread_in_the_truth():
    """Equal true noise on every channel: no (undefined) correlation is
    shown, the median ratio is."""
    from mne_unfolded_sbl.viz.figures import plot_noise_topomap

    info = mne.create_info([f"EEG{i:03d}" for i in range(1, 33)], 100.0, "eeg")
    montage = mne.channels.make_standard_montage("biosemi32")
    montage.rename_channels(dict(zip(montage.ch_names, info.ch_names)))
    info.set_montage(montage, verbose=False)
    rng = np.random.default_rng(0)
    learned = 1e-6 * (1 + 0.1 * rng.standard_normal(32))
    fig = plot_noise_topomap(info, learned, std_true=np.full(32, 1e-6))
    title = [a.get_title() for a in fig.axes if "learned vs true" in a.get_title()][0]
    assert "equal on all channels" in title and "r =" not in title
    fig2 = plot_noise_topomap(info, learned, std_true=learned * 1.1)
    assert any("r = 1.00" in a.get_title() for a in fig2.axes)
    matplotlib.pyplot.close("all")
