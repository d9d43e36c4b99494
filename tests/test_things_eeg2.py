"""THINGS-EEG2 loader on small files in the dataset's raw format."""

import numpy as np
import pytest
import mne

from mne_unfolded_sbl import things_eeg2 as te
from mne_unfolded_sbl.datasets import THINGS_EEG2_CH_NAMES, make_info

SFREQ = 1000.0
ONSETS = np.arange(500, 4500, 200)  # 20 image onsets, 200 ms apart
TARGETS = (3, 11)  # onsets carrying the target code 99999


def _write(path, *, scale=1.0, n_times=5000, seed=0, extra=None, drop=None,
           data=None):
    """A pickled-dict .npy like the dataset's raw_eeg_{training,test}.npy."""
    rng = np.random.default_rng(seed)
    eeg = rng.normal(0.0, 10e-6, (63, n_times)) if data is None else data
    stim = np.zeros(n_times)
    stim[ONSETS] = 1 + np.arange(len(ONSETS))
    stim[ONSETS[list(TARGETS)]] = te.TARGET_EVENT
    d = dict(raw_eeg_data=np.vstack([eeg * scale, stim]),
             ch_names=THINGS_EEG2_CH_NAMES + ["stim"],
             ch_types=["eeg"] * 63 + ["stim"], sfreq=SFREQ,
             highpass=0.01, lowpass=100.0)
    d.update(extra or {})
    for key in drop or ():
        del d[key]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, d, allow_pickle=True)
    return path


@pytest.fixture()
def raw_file(tmp_path):
    return _write(tmp_path / "sub-01" / "ses-01" / "raw_eeg_test.npy")


def test_read_raw(raw_file):
    raw = te.read_things_eeg2_raw(raw_file)
    assert isinstance(raw, mne.io.RawArray)
    assert raw.ch_names == THINGS_EEG2_CH_NAMES + ["stim"]
    types = raw.get_channel_types()
    assert types.count("eeg") == 63 and types[-1] == "stim"
    assert raw.info["sfreq"] == SFREQ
    assert raw.n_times == 5000
    # volts kept as volts
    np.testing.assert_allclose(np.std(raw.get_data(picks="eeg")), 10e-6, rtol=0.05)
    # montage: the fsaverage-fitted template positions of the cap, the same
    # (head coordinates) as in the template forward models' info
    pos = raw.get_montage().get_positions()["ch_pos"]
    assert set(pos) == set(THINGS_EEG2_CH_NAMES)
    ref = make_info("things-eeg2")
    for name in ("Oz", "Cz", "Fp1", "TP10"):
        np.testing.assert_allclose(
            raw.info["chs"][raw.ch_names.index(name)]["loc"][:3],
            ref["chs"][ref.ch_names.index(name)]["loc"][:3], atol=1e-9)
    assert np.linalg.norm(pos["Oz"] - pos["Fp1"]) > 0.1  # metres apart
    assert pos["Oz"][1] < 0 < pos["Fp1"][1]  # occipital behind frontal
    assert raw.info["bads"] == []


def test_microvolts_are_converted(tmp_path):
    fname = _write(tmp_path / "uv.npy", scale=1e6)  # stored in µV
    raw = te.read_things_eeg2_raw(fname)
    np.testing.assert_allclose(np.std(raw.get_data(picks="eeg")), 10e-6, rtol=0.05)
    raw = te.read_things_eeg2_raw(fname, units="V")
    assert np.std(raw.get_data(picks="eeg")) > 1
    raw = te.read_things_eeg2_raw(_write(tmp_path / "v.npy"), units="uV")
    assert np.std(raw.get_data(picks="eeg")) < 1e-9


def test_events(raw_file):
    raw = te.read_things_eeg2_raw(raw_file)
    events = te.find_things_eeg2_events(raw)
    assert len(events) == len(ONSETS) - len(TARGETS)
    assert te.TARGET_EVENT not in events[:, 2]
    expected = np.delete(ONSETS, TARGETS)
    np.testing.assert_array_equal(events[:, 0], expected)
    np.testing.assert_array_equal(events[:, 2],
                                  np.delete(1 + np.arange(len(ONSETS)), TARGETS))
    all_events = te.find_things_eeg2_events(raw, include_targets=True)
    assert len(all_events) == len(ONSETS)
    assert (all_events[:, 2] == te.TARGET_EVENT).sum() == len(TARGETS)


def test_epochs(raw_file):
    raw = te.read_things_eeg2_raw(raw_file)
    epochs = te.make_things_eeg2_epochs(raw, tmin=-0.1, tmax=0.2)
    assert len(epochs) == len(ONSETS) - len(TARGETS)
    assert epochs.times[0] == pytest.approx(-0.1)
    assert epochs.times[-1] == pytest.approx(0.2)
    assert len(epochs.times) == 301
    assert epochs.ch_names == THINGS_EEG2_CH_NAMES  # EEG only
    assert any(p["desc"] == "Average EEG reference" for p in epochs.info["projs"])
    base = epochs.get_data()[..., epochs.times <= 1e-9].mean(-1)
    np.testing.assert_allclose(base, 0.0, atol=1e-12)
    decimated = te.make_things_eeg2_epochs(raw, decim=4, h_freq=40.0)
    assert decimated.info["sfreq"] == SFREQ / 4


def test_fetch_local_and_errors(tmp_path, raw_file, monkeypatch):
    root = raw_file.parents[2]
    assert te.fetch_things_eeg2(1, 1, "test", path=root) == raw_file
    # the dataset's own layout (raw_data/sub-XX/...) is found too
    other = _write(tmp_path / "ds" / "raw_data" / "sub-02" / "ses-03"
                   / "raw_eeg_training.npy")
    assert te.fetch_things_eeg2(2, 3, "training", path=tmp_path / "ds") == other
    # the environment variable names the folder
    monkeypatch.setenv(te.PATH_ENV, str(root))
    assert te.fetch_things_eeg2() == raw_file
    # missing, no URL: a clear error naming the OSF project and the target
    with pytest.raises(RuntimeError, match="osf.io/3jk45") as err:
        te.fetch_things_eeg2(5, 2, "test", path=tmp_path / "none")
    assert "sub-05/ses-02/raw_eeg_test.npy" in str(err.value)
    # a registered URL that cannot be reached: the offline error
    monkeypatch.setitem(te.THINGS_EEG2_URLS, "sub-05/ses-02/raw_eeg_test.npy",
                        ("http://127.0.0.1:9/raw_eeg_test.npy", None))
    with pytest.raises(RuntimeError, match="offline"):
        te.fetch_things_eeg2(5, 2, "test", path=tmp_path / "none")
    with pytest.raises(ValueError, match="subject"):
        te.things_eeg2_fname(11, 1)
    with pytest.raises(ValueError, match="partition"):
        te.things_eeg2_fname(1, 1, "train")


def test_bad_files(tmp_path):
    np.save(tmp_path / "array.npy", np.zeros((3, 3)))
    with pytest.raises(ValueError, match="raw-data dict"):
        te.read_things_eeg2_raw(tmp_path / "array.npy")
    with pytest.raises(ValueError, match="lacks the keys"):
        te.read_things_eeg2_raw(_write(tmp_path / "k.npy", drop=["sfreq"]))
    with pytest.raises(ValueError, match="shape"):
        te.read_things_eeg2_raw(_write(tmp_path / "s.npy",
                                       extra=dict(ch_names=["a", "b"])))
    with pytest.raises(FileNotFoundError):
        te.read_things_eeg2_raw(tmp_path / "nothing.npy")
    nan = np.zeros((63, 5000))
    nan[0, 10] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        te.read_things_eeg2_raw(_write(tmp_path / "n.npy", data=nan))


def test_unknown_channel_marked_bad(tmp_path):
    names = THINGS_EEG2_CH_NAMES[:-1] + ["XYZ", "stim"]
    fname = _write(tmp_path / "u.npy", extra=dict(ch_names=names))
    with pytest.warns(RuntimeWarning, match="XYZ"):
        raw = te.read_things_eeg2_raw(fname)
    assert raw.info["bads"] == ["XYZ"]


def test_occipital_response_localised(tmp_path, template_cache, monkeypatch):
    """Loader + montage + template forward agree: an occipital source
    simulated into the file format is localised to occipital cortex."""
    monkeypatch.setenv("MNE_UNFOLDED_SBL_CACHE", str(template_cache))
    from mne_unfolded_sbl import apply_unfolded_sbl
    from mne_unfolded_sbl.datasets import make_template_forward
    from mne_unfolded_sbl.report import peak_sources, source_positions_mri

    fwd = make_template_forward("things-eeg2", "ico3", bem_ico=3, verbose=False)
    assert fwd["sol"]["row_names"] == THINGS_EEG2_CH_NAMES
    pos = source_positions_mri(fwd)
    src = int(np.argmin(pos[:, 1]))  # the most posterior source
    rng = np.random.default_rng(1)
    n_times = 5000
    x = np.zeros(n_times)
    t = np.arange(200) / SFREQ
    for onset in ONSETS:
        x[onset:onset + 200] += 40e-9 * np.exp(-((t - 0.1) / 0.02) ** 2)
    eeg = np.outer(fwd["sol"]["data"][:, src], x)
    eeg += rng.uniform(1e-6, 3e-6, (63, 1)) * rng.normal(size=(63, n_times))
    raw = te.read_things_eeg2_raw(_write(tmp_path / "vep.npy", data=eeg))
    epochs = te.make_things_eeg2_epochs(raw, include_targets=True)
    cov = mne.compute_covariance(epochs, tmax=0.0, verbose=False)
    evoked = epochs.average().crop(0.0, 0.2)
    stc = apply_unfolded_sbl(evoked, fwd, cov, model="cb", verbose=False)
    top = peak_sources(stc, fwd, n=1)[0]
    assert top["pos_mm"][1] < -65.0  # occipital
    assert np.linalg.norm(top["pos_mm"] - pos[src] * 1e3) < 25.0
    assert abs(top["latency"] - 0.1) < 0.02
