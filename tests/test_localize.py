"""``mne-unfolded-sbl localize``: the user's own files, end to end, and the
errors for every missing piece (which must come before any computation)."""

import shutil
import warnings

import numpy as np
import pytest
import mne

from mne_unfolded_sbl import cli, datasets, report
from mne_unfolded_sbl.core.simulator import SimulationConfig
from mne_unfolded_sbl.report import peak_sources
from mne_unfolded_sbl.simulation import simulate_evoked

EASY = SimulationConfig(n_sources=(1, 1), spread=0.0, snr_db=(20.0, 20.0),
                        n_times=60)
N_EPOCHS = 40


@pytest.fixture(scope="module")
def cache_env(template_cache):
    """The package cache at the test cache; the fast brain renderer."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MNE_UNFOLDED_SBL_CACHE", str(template_cache))
        mp.setenv("MNE_UNFOLDED_SBL_3D", "matplotlib")  # fast, no probe
        yield template_cache


@pytest.fixture(scope="module")
def files(tmp_path_factory, train_fwd, cache_env):
    """FIF files as a user brings them, written from simulated data.

    ``ave``: two conditions, no digitisation (the forward's positions are
    used for the topomap; --template needs --montage); ``single``: one
    condition with digitisation; ``epo``: epochs with digitisation and no
    reference projector."""
    d = tmp_path_factory.mktemp("localize_data")
    evoked, stc_true, cov = simulate_evoked(train_fwd, EASY, seed=7,
                                            tmin=-0.1, verbose=False)
    evoked.comment = "aud"
    other = evoked.copy()
    other.comment = "vis"
    f = dict(ave=d / "sim-ave.fif", fwd=d / "sim-fwd.fif",
             cov=d / "sim-cov.fif", epo=d / "sim-epo.fif",
             single=d / "single-ave.fif", noref=d / "noref-ave.fif",
             renamed=d / "renamed-ave.fif", cov_short=d / "short-cov.fif",
             customref=d / "customref-ave.fif")
    mne.write_evokeds(f["ave"], [evoked.copy().set_montage(None),
                                 other.set_montage(None)], verbose=False)
    evoked.save(f["single"], verbose=False)
    with warnings.catch_warnings():  # stored with free orientation
        warnings.simplefilter("ignore", RuntimeWarning)
        mne.write_forward_solution(f["fwd"], train_fwd, verbose=False)
    cov.save(f["cov"], verbose=False)
    cov.copy().pick_channels(cov["names"][1:], ordered=True).save(
        f["cov_short"], verbose=False)
    # no average-reference projector
    noref = evoked.copy().del_proj()
    noref.save(f["noref"], verbose=False)
    noref.set_eeg_reference("average", projection=False, verbose=False).save(
        f["customref"], verbose=False)
    # a channel the forward does not have
    evoked.copy().rename_channels({"Fp1": "EXG1"}).save(f["renamed"],
                                                         verbose=False)
    # epochs: the same response in single-trial noise, two conditions, no
    # reference projector (as recorded)
    rng = np.random.default_rng(0)
    std = np.sqrt(cov["data"])[:, None]
    data = evoked.data[None] + std * rng.standard_normal(
        (N_EPOCHS,) + evoked.data.shape)
    info = evoked.copy().del_proj().info
    events = np.c_[np.arange(N_EPOCHS) * 100, np.zeros(N_EPOCHS, int),
                   np.repeat([1, 2], N_EPOCHS // 2)]
    mne.EpochsArray(data, info, events, tmin=evoked.times[0],
                    event_id={"aud/left": 1, "vis": 2}, baseline=(None, 0),
                    verbose=False).save(f["epo"], verbose=False)
    return {k: str(v) for k, v in f.items()}, stc_true, train_fwd


@pytest.fixture
def no_compute(monkeypatch):
    """Any computation (template forward, localisation) fails the test."""
    def forbidden(*args, **kwargs):
        raise AssertionError("computation started before the error")

    monkeypatch.setattr(report, "add_unfolded_sbl_to_report", forbidden)
    monkeypatch.setattr(datasets, "make_template_forward", forbidden)


def _error(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        cli.main(["localize"] + argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return exc.value.code, err


def _peak_rows(path):
    lines = open(path, encoding="utf-8").read().splitlines()
    head = lines[0].split("\t")
    return [dict(zip(head, line.split("\t"))) for line in lines[1:]]


def _distance_to_truth(row, stc_true, fwd):
    truth = peak_sources(stc_true, fwd, n=1)[0]["pos_mm"]
    xyz = [float(row[f"{c}_mni_mm"]) for c in "xyz"]
    return float(np.linalg.norm(np.subtract(xyz, truth)))


# ----------------------------------------------------------------------------
# end to end


def test_localize_forward_and_cov_files(files, tmp_path, capsys):
    """--fwd + --cov files (an evoked file with two conditions), loose
    orientation for the unfolded model: report, peaks, estimates, summary;
    the same --out again is refused without --overwrite."""
    f, stc_true, fwd = files
    out = tmp_path / "res"
    argv = ["localize", f["ave"], "--condition", "aud", "--fwd", f["fwd"],
            "--cov", f["cov"], "--out", str(out), "--compare", "sloreta",
            "--loose", "0.2"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    for text in ("'aud' of sim-ave.fif", "64 EEG channels",
                 "64 EEG channel(s) without a position",
                 "Strongest peak", "MNI305", "nA·m", "a.u.", "sLORETA",
                 "loose 0.2", str(out / "report.html")):
        assert text in printed, (text, printed)
    html = (out / "report.html").read_text(encoding="utf-8")
    for title in ("Peak sources", "Time courses at the peak sources",
                  "Learned noise (topomap)", "Convergence per layer",
                  "Brain: sLORETA", "Inputs and settings"):
        assert title in html, title
    rows = _peak_rows(out / "peaks.tsv")
    assert {r["method"] for r in rows} == {"Deep CB (γ,λ), loose 0.2",
                                           "sLORETA"}
    first = next(r for r in rows if r["method"].startswith("Deep CB"))
    assert _distance_to_truth(first, stc_true, fwd) < 20.0
    for name in ("unfolded-deep-cb", "sloreta"):
        stc = mne.read_source_estimate(out / "stc" / name)
        assert stc.data.shape == (fwd["nsource"], 60)
    # again: refused, before any computation
    code, err = _error(capsys, argv[1:])
    assert code == 2 and "--overwrite" in err and "already holds" in err


def test_localize_template_epochs_baseline(files, tmp_path, capsys):
    """An epochs file without reference projector, --template from its
    digitisation, baseline covariance, a time window, an event tag."""
    f, stc_true, fwd = files
    out = tmp_path / "res"
    assert cli.main([
        "localize", f["epo"], "--condition", "aud", "--template",
        "--cov", "baseline", "--set-average-reference", "--tmin", "0",
        "--tmax", "0.3", "--compare", "sloreta", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    n = N_EPOCHS // 2
    for text in (f"average of {n} 'aud' epochs", f"nave = {n}",
                 f"of {N_EPOCHS} epochs, shrunk", "fsaverage template",
                 "added an EEG average-reference projector", "0 to 300 ms"):
        assert text in printed, (text, printed)
    rows = _peak_rows(out / "peaks.tsv")
    first = next(r for r in rows if r["method"].startswith("Deep CB"))
    assert _distance_to_truth(first, stc_true, fwd) < 20.0
    assert 0.0 <= float(first["latency_ms"]) <= 300.0
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "Convergence per layer" in html
    assert len(list((out / "stc").iterdir())) == 4  # 2 methods x 2 hemis


# ----------------------------------------------------------------------------
# errors, before any computation


def test_help_lists_localize(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0 and "localize" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        cli.main(["localize", "--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    for opt in ("--template", "--fwd", "--cov", "--montage", "--compare",
                "--set-average-reference", "--overwrite", "--loose"):
        assert opt in out


@pytest.mark.parametrize("argv, expected", [
    # files that do not exist
    (["{d}/none-ave.fif", "--fwd", "{fwd}", "--cov", "{cov}"],
     ["none-ave.fif", "does not exist"]),
    (["{ave}", "--condition", "aud", "--fwd", "{d}/none-fwd.fif",
      "--cov", "{cov}"], ["--fwd", "none-fwd.fif", "does not exist"]),
    (["{ave}", "--condition", "aud", "--fwd", "{fwd}",
      "--cov", "{d}/none-cov.fif"], ["--cov", "none-cov.fif",
                                     "does not exist"]),
    # conditions
    (["{ave}", "--condition", "audio", "--fwd", "{fwd}", "--cov", "{cov}"],
     ["'audio'", "0: 'aud'", "1: 'vis'"]),
    (["{ave}", "--condition", "5", "--fwd", "{fwd}", "--cov", "{cov}"],
     ["'5'", "0: 'aud'"]),
    (["{ave}", "--fwd", "{fwd}", "--cov", "{cov}"],
     ["2 conditions", "--condition", "'aud'", "'vis'"]),
    (["{epo}", "--condition", "visual", "--fwd", "{fwd}", "--cov", "ad-hoc"],
     ["'visual'", "'aud/left'", "'vis'"]),
    # template without digitisation
    (["{ave}", "--condition", "vis", "--template", "--cov", "ad-hoc"],
     ["--template needs the EEG electrode positions", "--montage NAME",
      "set_montage"]),
    (["{ave}", "--condition", "1", "--template", "--cov", "ad-hoc",
      "--montage", "nope"], ["--montage", "'nope'", "biosemi64"]),
    (["{ave}", "--condition", "0", "--template", "--cov", "ad-hoc",
      "--montage", "biosemi32"],
     ["--montage biosemi32", "not in the montage", "--bads"]),
    # no average reference
    (["{noref}", "--fwd", "{fwd}", "--cov", "{cov}"],
     ["average-reference projector", "--set-average-reference",
      "set_eeg_reference('average', projection=True)"]),
    (["{customref}", "--fwd", "{fwd}", "--cov", "{cov}"],
     ["applied (custom) reference", "--set-average-reference"]),
    (["{epo}", "--template", "--cov", "baseline"],
     ["average-reference projector", "--set-average-reference"]),
    # channel mismatch with the forward and the covariance
    (["{renamed}", "--fwd", "{fwd}", "--cov", "ad-hoc"],
     ["not in the forward solution (--fwd)", "EXG1", "--bads EXG1"]),
    (["{single}", "--fwd", "{fwd}", "--cov", "{cov_short}"],
     ["not in the noise covariance (--cov)", "Fp1", "--bads Fp1"]),
    # other inputs
    (["{single}", "--fwd", "{fwd}", "--cov", "baseline"],
     ["--cov baseline needs an epochs file"]),
    (["{single}", "--fwd", "{fwd}", "--cov", "ad-hoc", "--tmin", "2"],
     ["--tmin/--tmax", "outside the data"]),
    (["{single}", "--fwd", "{fwd}", "--cov", "ad-hoc", "--tmin", "0.3",
      "--tmax", "0.1"], ["--tmin", "must be before --tmax"]),
    (["{single}", "--fwd", "{fwd}", "--cov", "ad-hoc", "--compare", "lcmv"],
     ["--compare", "'lcmv'", "sloreta"]),
    (["{single}", "--fwd", "{fwd}", "--cov", "ad-hoc", "--model", "nope"],
     ["--model", "'nope'"]),
    (["{single}", "--fwd", "{fwd}", "--cov", "ad-hoc", "--bads", "XX"],
     ["--bads", "'XX'"]),
    (["{single}", "--fwd", "{fwd}", "--cov", "ad-hoc", "--source-model",
      "multiscale", "--loose", "0.2"], ["--source-model", "loose=0"]),
    (["{single}", "--fwd", "{cov}", "--cov", "ad-hoc"],
     ["--fwd", "could not read", "forward solution"]),
    (["{single}", "--fwd", "{fwd}", "--template", "--cov", "ad-hoc"],
     ["not allowed with argument"]),
])
def test_localize_errors(files, tmp_path, capsys, no_compute, argv,
                         expected):
    """Every missing piece ends in one usage error naming the fix."""
    f, _, _ = files
    fill = dict(f, d=str(tmp_path))
    argv = [a.format(**fill) for a in argv] + ["--out", str(tmp_path / "o")]
    code, err = _error(capsys, argv)
    assert code == 2
    for text in expected:
        assert text in err, (text, err)
    assert not (tmp_path / "o" / "report.html").exists()


def test_existing_outputs_refused(files, tmp_path, capsys, no_compute):
    f, _, _ = files
    out = tmp_path / "o"
    (out / "stc").mkdir(parents=True)
    code, err = _error(capsys, [f["single"], "--fwd", f["fwd"], "--cov",
                                "ad-hoc", "--out", str(out)])
    assert code == 2 and "stc" in err and "--overwrite" in err
    (out / "stc").rmdir()
    (out / "x").write_text("not ours")  # other files are no obstacle
    code, err = _error(capsys, [f["single"], "--fwd", f["fwd"], "--cov",
                                "ad-hoc", "--out", str(out / "x")])
    assert code == 2 and "is a file" in err


def test_montage_makes_template_from_positions(files, tmp_path, monkeypatch):
    """--montage sets positions on data without digitisation; the template
    forward is then made for those positions (stopped right there)."""
    f, _, _ = files
    seen = {}

    class Reached(Exception):
        pass

    def fake_forward(montage, spacing, bem_ico, **kwargs):
        seen.update(montage=montage, spacing=spacing, bem_ico=bem_ico)
        raise Reached

    monkeypatch.setattr(datasets, "make_template_forward", fake_forward)
    with pytest.raises(Reached):
        cli.main(["localize", f["ave"], "--condition", "aud", "--template",
                  "--montage",
                  "train-64", "--cov", "ad-hoc", "--bem-ico", "3",
                  "--out", str(tmp_path / "o")])
    info = seen["montage"]
    assert isinstance(info, mne.Info) and len(info["ch_names"]) == 64
    assert all(np.isfinite(ch["loc"][:3]).all() and np.any(ch["loc"][:3])
               for ch in info["chs"])
    assert seen["spacing"] == "ico3" and seen["bem_ico"] == 3


def test_data_file_without_mne_suffix(files, tmp_path, capsys, no_compute):
    """A name without -ave/-epo is read as evoked, else epochs, else a
    clear error."""
    f, _, _ = files
    evoked_file = tmp_path / "mydata.fif"
    shutil.copy(f["ave"], evoked_file)
    code, err = _error(capsys, [str(evoked_file), "--condition", "nope",
                                "--fwd", f["fwd"], "--cov", "ad-hoc",
                                "--out", str(tmp_path / "o")])
    assert code == 2 and "'nope'" in err and "0: 'aud'" in err
    epochs_file = tmp_path / "myepochs.fif"
    shutil.copy(f["epo"], epochs_file)
    code, err = _error(capsys, [str(epochs_file), "--condition", "nope",
                                "--fwd", f["fwd"], "--cov", "ad-hoc",
                                "--out", str(tmp_path / "o")])
    assert code == 2 and "'aud/left'" in err
    junk = tmp_path / "junk.fif"
    junk.write_bytes(b"not a FIF file")
    code, err = _error(capsys, [str(junk), "--fwd", f["fwd"], "--cov",
                                "ad-hoc", "--out", str(tmp_path / "o")])
    assert code == 2 and "could not read" in err and "-epo.fif" in err


def test_bias_cb_on_another_geometry(files, tmp_path, capsys, no_compute):
    """The bundled Bias CB is tied to the training cap on ico3: a bad
    channel makes another geometry, refused before any computation with
    the models that transfer."""
    f, _, _ = files
    code, err = _error(capsys, [f["single"], "--fwd", f["fwd"], "--cov",
                                "ad-hoc", "--model", "bias-cb", "--bads",
                                "Fp1", "--out", str(tmp_path / "o")])
    assert code == 2
    for text in ("--model bias-cb", "'train-64' cap (64 channels)",
                 "model='deep-cb'"):
        assert text in err, (text, err)
