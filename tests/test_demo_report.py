"""The demo and the report helper (the brain figures: test_viz.py, the
method registry: test_methods.py)."""

import re
import warnings

import numpy as np
import pytest
import mne

from mne_unfolded_sbl.core import weights as pretrained
from mne_unfolded_sbl.core.network import UnfoldedSBL
from mne_unfolded_sbl import unfolded_sbl_trajectory
from mne_unfolded_sbl.core.weights import resolve_model
from mne_unfolded_sbl.methods import expand_stc
from mne_unfolded_sbl.report import (add_unfolded_sbl_to_report, peak_sources,
                                     source_positions_mri)
from mne_unfolded_sbl.core.simulator import SimulationConfig
from mne_unfolded_sbl.simulation import simulate_evoked

EASY = SimulationConfig(n_sources=(1, 1), spread=0.0, snr_db=(20.0, 20.0),
                        n_times=60)
IMG_RE = re.compile(r'<img[^>]*alt="([^"]*)"\s*src="data:image/(png|webp|jpeg)')


@pytest.fixture(scope="module")
def cache_env(template_cache):
    """Point the package cache (forwards, embedded subject) at the test cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MNE_UNFOLDED_SBL_CACHE", str(template_cache))
        mp.setenv("MNE_UNFOLDED_SBL_3D", "matplotlib")  # fast, no probe
        yield template_cache


@pytest.fixture(scope="module")
def easy(train_fwd, cache_env):
    evoked, stc_true, cov = simulate_evoked(train_fwd, EASY, seed=7,
                                            verbose=False)
    return train_fwd, evoked, stc_true, cov


@pytest.fixture(scope="module")
def subjects_dir(cache_env):
    from mne_unfolded_sbl.datasets import get_subjects_dir

    return get_subjects_dir(verbose=False)


def _no_weights(monkeypatch):
    """Behave as if no pretrained weights were registered."""
    monkeypatch.setattr(pretrained, "registry", lambda: {})


def test_demo_end_to_end(tmp_path, train_fwd, cache_env, monkeypatch, capsys):
    from mne_unfolded_sbl import demo

    _no_weights(monkeypatch)
    out = tmp_path / "demo"
    ret = demo.main(["--out", str(out), "--n-sources", "2", "--n-times", "40",
                     "--bem-ico", "3", "--no-mismatch", "--backend",
                     "matplotlib", "--seed", "3"])
    assert ret == 0
    html = (out / "report.html").read_text("utf-8")
    printed = capsys.readouterr().out
    # fallback is said, in the terminal and in the report
    assert "NOTE" in printed and "Falling back" in printed
    assert "Falling back to the classical convex-bounding solver" in html
    # the metrics table was printed
    assert "rMSE" in printed and "sLORETA" in printed and "EMD" in printed
    images = IMG_RE.findall(html)
    titles = [t for t, _ in images]
    for title in ("Brain: Ground truth (simulated)", "Brain: sLORETA",
                  "Time courses at the peak sources", "Learned noise (topomap)",
                  "Learned noise (noisiest channels)", "Convergence per layer"):
        assert title in titles, titles
    assert any(t.startswith("Brain: Convex bounding") for t in titles)
    # the demo always shows the posterior std of the unfolded model
    assert any(t.startswith("Posterior std: Convex bounding") for t in titles)
    assert "not because the data show them silent" in html
    assert len(images) >= 8
    for section in ("Summary", "Metrics against the ground truth",
                    "Peak sources", "Simulation settings"):
        assert section in html
    assert html.count("mus-peaks") >= 3  # truth + 2 estimates


def test_demo_meg_eeg_end_to_end(tmp_path, cache_env, monkeypatch, capsys):
    """``demo --sensors meg-eeg``: MEG+EEG template forward, noise per channel
    type at an SNR in the stated range, a report with the learned noise of
    every channel type, and the simulated sources found within 10 mm."""
    from mne_unfolded_sbl import demo

    results = {}
    run_demo = demo.run_demo

    def spy(*args, **kwargs):  # the CLI's results, for the checks below
        results.update(run_demo(*args, **kwargs))
        return results

    monkeypatch.setattr(demo, "run_demo", spy)
    out = tmp_path / "demo_meg"
    ret = demo.main(["--out", str(out), "--sensors", "meg-eeg", "--model",
                     "cb", "--compare", "sloreta", "--n-sources", "2",
                     "--n-times", "40", "--bem-ico", "3", "--no-mismatch",
                     "--backend", "matplotlib", "--seed", "3"])
    assert ret == 0
    printed = capsys.readouterr().out
    assert "306-channel template MEG array + montage train-64" in printed
    assert "370 channels x 1284 sources" in printed
    assert "SNR per channel type in 5-20 dB (mag" in printed
    assert "trained on EEG" not in printed  # cb asked for: no model note
    evoked, fwd = results["evoked"], results["fwd"]
    assert set(evoked.get_channel_types()) == {"mag", "grad", "eeg"}
    assert fwd["nchan"] == len(evoked.ch_names) == 370
    assert set(results["snr_db"]) == {"mag", "grad", "eeg"}
    assert all(5.0 <= v <= 20.0 for v in results["snr_db"].values())
    # the simulated sources are found: every true peak within 10 mm of one
    # of the unfolded estimate's five strongest peaks
    stc = results["report_results"]["estimates"]["unfolded"]["stc"]
    true_peaks = peak_sources(results["stc_true"], fwd, n=2)
    est = np.array([p["pos_mm"] for p in peak_sources(stc, fwd, n=5)])
    assert len(true_peaks) == 2
    for peak in true_peaks:
        dist = np.linalg.norm(est - peak["pos_mm"], axis=1).min()
        assert dist < 10.0, (peak, est)
    (row,) = [r for r in results["metrics"] if r["label"].startswith("Convex")]
    assert row["le_mm"] < 10.0 and row["f1"] > 0.5, row
    # the report: learned noise per channel type, the settings say MEG+EEG
    html = (out / "report.html").read_text("utf-8")
    titles = [t for t, _ in IMG_RE.findall(html)]
    for kind in ("mag", "grad", "eeg"):
        assert f"Learned noise (topomap, {kind})" in titles, titles
        assert f"Learned noise (noisiest channels, {kind})" in titles
    assert "Brain: Ground truth (simulated)" in titles
    assert "one variance per channel type" in html
    assert "--sensors meg-eeg" in html


def test_demo_sensors_errors(tmp_path, capsys):
    from mne_unfolded_sbl import demo

    with pytest.raises(SystemExit):
        demo.main(["--out", str(tmp_path / "x"), "--sensors", "eog"])
    assert "invalid choice: 'eog'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="sensors must be one of"):
        demo.run_demo(tmp_path / "y", sensors="MEG")
    assert not (tmp_path / "y").exists()  # nothing done


@pytest.mark.parametrize("argv, asked", [
    (["--spacing", "ico4"], "--montage train-64 --spacing ico4 --sensors eeg"),
    (["--montage", "biosemi32"], "--montage biosemi32 --spacing ico3"),
    (["--sensors", "meg-eeg"], "--sensors meg-eeg"),
])
def test_demo_bias_cb_on_another_geometry(tmp_path, capsys, monkeypatch, argv,
                                          asked):
    """The bundled Bias CB runs on the demo's default geometry only; any
    other is refused before the template forward, naming the fix."""
    from mne_unfolded_sbl import datasets, demo

    def forbidden(*args, **kwargs):
        raise AssertionError("template forward computed before the error")

    monkeypatch.setattr(demo, "make_template_forward", forbidden)
    monkeypatch.setattr(datasets, "make_template_forward", forbidden)
    with pytest.raises(SystemExit) as exc:
        demo.main(["--out", str(tmp_path / "x"), "--model", "bias-cb"] + argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2
    for text in ("argument --model", "'train-64' cap on the fsaverage ico3",
                 asked, "--model deep-cb"):
        assert text in err, (text, err)
    # the default geometry passes this check; Deep CB is never tied
    assert demo._tied_geometry_error("bias-cb", "train-64", "ico3", "eeg") is None
    assert demo._tied_geometry_error("deep-cb", "biosemi32", "ico4", "meg") is None


def test_out_path(tmp_path):
    from mne_unfolded_sbl.demo import _out_path

    assert _out_path(tmp_path / "x").name == "report.html"
    assert _out_path(tmp_path / "y" / "r.html") == tmp_path / "y" / "r.html"
    assert (tmp_path / "y").is_dir()


def test_cli_dispatches_demo():
    import argparse

    from mne_unfolded_sbl import demo
    from mne_unfolded_sbl.cli import COMMANDS

    assert COMMANDS["demo"][0] == "mne_unfolded_sbl.demo"
    parser = demo.add_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--out", "somewhere"])
    assert args.model == "deep-cb" and args.out == "somewhere"
    assert args.bem_ico == "auto" and args.mismatch
    assert args.sensors == "eeg"


def test_resolve_model_fallback(monkeypatch):
    _no_weights(monkeypatch)
    with pytest.warns(RuntimeWarning, match="Falling back"):
        net, name, note = resolve_model("deep-cb", learn_noise=True)
    assert name == "cb" and net.model == "cb" and "deep-cb" in note
    net, name, note = resolve_model("cb", learn_noise=False)
    assert name == "cb" and note is None and not net.learn_noise


def test_report_helper(easy, subjects_dir, monkeypatch):
    fwd, evoked, stc_true, cov = easy
    _no_weights(monkeypatch)
    report = mne.Report(title="test", verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = add_unfolded_sbl_to_report(
            report, evoked, fwd, cov, model="deep-cb",
            compare=("cb", "sloreta"), subjects_dir=subjects_dir,
            backend="matplotlib", true_noise_cov=cov, verbose=False)
    assert out["model"] == "cb" and out["note"]
    assert set(out["estimates"]) == {"unfolded", "sloreta"}  # cb not twice
    assert out["backend"] == "matplotlib"
    assert out["metrics"] is None  # no ground truth given
    titles = [c.name for c in report._content]
    sections = {c.section for c in report._content}
    assert len(sections) == 1
    expected = ["Summary", "Peak sources", "Time courses at the peak sources",
                "Learned noise (topomap)", "Learned noise (noisiest channels)",
                "Convergence per layer", "Brain: sLORETA"]
    for title in expected:
        assert title in titles, titles
    assert sum(t.startswith("Brain: ") for t in titles) == 2
    # the common time is the GFP peak of the evoked
    gfp = evoked.data.std(0)
    assert out["time"] == pytest.approx(evoked.times[np.argmax(gfp)])
    # convergence of the (fallback) classical solver only
    (traj,) = out["trajectories"].values()
    assert len(traj["cost"]) == 25 and np.isnan(traj["mean_abs_delta_source"]).all()


def test_peak_table_finds_simulated_source(easy):
    """Easy case: the top peak of the estimate is the simulated source."""
    fwd, evoked, stc_true, cov = easy
    from mne_unfolded_sbl import apply_unfolded_sbl

    stc = apply_unfolded_sbl(evoked, fwd, cov, model="cb", verbose=False)
    (true_peak,) = peak_sources(stc_true, fwd, n=1)
    peaks = peak_sources(stc, fwd, n=5)
    assert 1 <= len(peaks) <= 5
    top = peaks[0]
    assert set(top) >= {"hemi", "vertex", "pos_mm", "amplitude", "latency"}
    assert top["hemi"] == true_peak["hemi"]
    dist = np.linalg.norm(top["pos_mm"] - true_peak["pos_mm"])
    assert dist < 20.0, dist  # mm
    assert 0.5 < top["amplitude"] / true_peak["amplitude"] < 2.0
    assert abs(top["latency"] - true_peak["latency"]) <= 2 / evoked.info["sfreq"]
    # positions are fsaverage MRI coordinates of the white-surface vertex
    rr = source_positions_mri(fwd)
    idx = top["index"]
    np.testing.assert_allclose(rr[idx] * 1e3, top["pos_mm"])
    assert np.abs(rr).max() < 0.12  # metres, inside a head
    # amplitudes are sorted
    amps = [p["amplitude"] for p in peaks]
    assert amps == sorted(amps, reverse=True)


def test_expand_stc(easy):
    fwd, _, stc_true, _ = easy
    sub = stc_true.copy()
    keep = np.flatnonzero(np.abs(sub.data).max(1) > 0)
    n_lh = len(sub.vertices[0])
    vertices = [sub.vertices[0][keep[keep < n_lh]],
                sub.vertices[1][keep[keep >= n_lh] - n_lh]]
    small = mne.SourceEstimate(sub.data[keep], vertices, sub.tmin, sub.tstep)
    full = expand_stc(small, fwd)
    np.testing.assert_allclose(full.data, stc_true.data)


def test_trajectory_learned_and_classical(easy):
    fwd, evoked, stc_true, cov = easy
    traj = unfolded_sbl_trajectory(evoked, fwd, cov, "cb", n_layers=10,
                                   keep_deltas=True, return_sources=True)
    assert traj["model"] == "cb" and traj["note"] is None
    assert len(traj["cost"]) == 10 and len(traj["X"]) == 10
    assert traj["cost"][-1] < traj["cost"][0]
    assert traj["gamma_change"][-1] < traj["gamma_change"][0]
    assert traj["delta_source"] is None and traj["delta_noise"] is None
    assert traj["X"][-1].shape == stc_true.data.shape
    # an (untrained) learned network: corrections exist and are zero
    net = UnfoldedSBL(4, "deep-cb", learn_noise=True)
    traj = unfolded_sbl_trajectory(evoked, fwd, cov, net, keep_deltas=True)
    assert traj["model"] == "deep-cb"
    assert len(traj["delta_source"]) == 4 and traj["delta_source"][-1] is None
    np.testing.assert_array_equal(traj["mean_abs_delta_source"][:3], 0.0)
    assert np.isnan(traj["mean_abs_delta_source"][3])


def _titles_captions(report):
    return {c.name: c for c in report._content}


def test_report_posterior_std_and_source_models(easy, subjects_dir,
                                                monkeypatch):
    """posterior_std adds a brain picture of the unfolded model's std with
    a caption saying what it means; source_model / loose reach the
    unfolded estimates (and cb given by name), the summary says which."""
    from mne_unfolded_sbl.benchmark.settings import free_template_forward
    from mne_unfolded_sbl.report import STD_CAPTION

    fwd, evoked, stc_true, cov = easy
    _no_weights(monkeypatch)
    report = mne.Report(verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = add_unfolded_sbl_to_report(
            report, evoked, fwd, cov, model="cb", compare=("sloreta",),
            subjects_dir=subjects_dir, backend="matplotlib",
            stc_true=stc_true, source_model="multiscale",
            posterior_std=True, convergence=False, verbose=False)
    unfolded = out["estimates"]["unfolded"]
    assert unfolded["label"].endswith(", multi-scale")
    std = unfolded["std"]
    assert std is not None and (std.data >= 0).all()
    # constant over time, zero where the model pruned, largest near the truth
    np.testing.assert_allclose(std.data, std.data[:, :1] * np.ones_like(
        std.data))
    amp = np.abs(unfolded["stc"].data).max(1)
    assert std.data[:, 0][amp == 0].max(initial=0) <= 1e-3 * std.data.max()
    true_peak = np.argmax(np.abs(expand_stc(stc_true, fwd).data).max(1))
    pos = source_positions_mri(fwd)
    std_peak = np.argmax(std.data[:, 0])
    assert np.linalg.norm(pos[std_peak] - pos[true_peak]) < 0.03
    items = _titles_captions(report)
    title = f"Posterior std: {unfolded['label']}"
    assert title in items
    assert "prior switches them off" in STD_CAPTION
    assert "multi-scale" in items["Summary"].html
    assert "orientation: fixed" in items["Summary"].html
    assert "AP" in items["Metrics against the ground truth"].html
    # loose orientation on the free-orientation template forward
    free = free_template_forward("train-64", "ico3", bem_ico=3)
    assert not mne.forward.is_fixed_orient(free)
    report = mne.Report(verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = add_unfolded_sbl_to_report(
            report, evoked, free, cov, model="cb", compare=(),
            subjects_dir=subjects_dir, backend="matplotlib", loose=0.2,
            posterior_std=False, convergence=True, stc_true=stc_true,
            verbose=False)
    unfolded = out["estimates"]["unfolded"]
    assert unfolded["label"].endswith("loose 0.2") and unfolded["std"] is None
    assert (unfolded["stc"].data >= 0).all()  # the norm over orientations
    # ... scored against the true |amplitude|, not the signed one
    (row,) = out["metrics"]
    assert row["signed"] is False and row["rmse"] < 0.5, row
    items = _titles_captions(report)
    assert not any(t.startswith("Posterior std") for t in items)
    assert "loose = 0.2" in items["Summary"].html
    assert "point sources and fixed orientation" in \
        items["Convergence per layer"].html
    with pytest.raises(ValueError, match="loose=0"):
        add_unfolded_sbl_to_report(mne.Report(verbose=False), evoked, fwd,
                                   cov, source_model="multiscale", loose=0.2)
