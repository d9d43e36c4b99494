"""Sliding-window localisation of continuous data (apply_unfolded_sbl_raw)."""

import mne
import numpy as np
import pytest

from mne_unfolded_sbl import apply_unfolded_sbl, apply_unfolded_sbl_raw


@pytest.fixture(scope="module")
def raw_case(train_fwd):
    """8 s at 50 Hz: source A active in the first half, B in the second."""
    rng = np.random.default_rng(0)
    sfreq, n = 50.0, 400
    G = train_fwd["sol"]["data"]
    a, b = 100, 900
    X = np.zeros((G.shape[1], n))
    X[a, :200] = rng.standard_normal(200) * 30e-9
    X[b, 200:] = rng.standard_normal(200) * 30e-9
    clean = G @ X
    noise = np.full(len(G), np.mean(clean ** 2) / 30)
    Y = clean + rng.standard_normal(clean.shape) * np.sqrt(noise)[:, None]
    info = mne.create_info(train_fwd["sol"]["row_names"], sfreq, "eeg")
    raw = mne.io.RawArray(Y, info, verbose=False)
    raw.set_eeg_reference(projection=True, verbose=False)
    cov = mne.Covariance(noise, raw.ch_names, [], raw.info["projs"], 100)
    return train_fwd, raw, cov, (a, b)


def test_windows_without_overlap_equal_evoked_calls(raw_case):
    """overlap=0: each window is localised as its own evoked response."""
    fwd, raw, cov, _ = raw_case
    kw = dict(model="cb", n_layers=40, dtype="float64", verbose=False)
    stc = apply_unfolded_sbl_raw(raw, fwd, cov, window=2.0, overlap=0.0, **kw)
    assert stc.data.shape == (fwd["nsource"], len(raw.times))
    assert stc.tmin == 0 and stc.tstep == pytest.approx(1 / 50)
    for k in range(4):
        seg = raw.get_data()[:, 100 * k:100 * (k + 1)]
        ev = mne.EvokedArray(seg, raw.info, tmin=k * 2.0, nave=1,
                             verbose=False)
        ref = apply_unfolded_sbl(ev, fwd, cov, **kw)
        np.testing.assert_allclose(stc.data[:, 100 * k:100 * (k + 1)],
                                   ref.data, rtol=1e-7,
                                   atol=1e-7 * np.abs(ref.data).max())


def test_overlap_cross_fades_and_tracks_the_active_source(raw_case):
    fwd, raw, cov, (a, b) = raw_case
    stc = apply_unfolded_sbl_raw(raw, fwd, cov, model="cb", window=1.0,
                                 overlap=0.5, n_layers=40, dtype="float64",
                                 start=0, stop=400, verbose=False)
    power = stc.data ** 2
    first, second = power[:, 20:180].sum(1), power[:, 220:380].sum(1)
    assert np.argmax(first) == a and np.argmax(second) == b
    # samples 100-124 lie in the windows starting at 75 and 100 only: the
    # estimate is their sin^2-weighted mean (weights summing to one)
    taper = np.sin(np.pi * (np.arange(50) + 0.5) / 50) ** 2
    est = {}
    for s0 in (75, 100):
        ev = mne.EvokedArray(raw.get_data()[:, s0:s0 + 50], raw.info,
                             nave=1, verbose=False)
        est[s0] = apply_unfolded_sbl(ev, fwd, cov, model="cb", n_layers=40,
                                     dtype="float64", verbose=False).data
    t = np.arange(100, 125)
    w1, w2 = taper[t - 75], taper[t - 100]
    expected = (est[75][:, t - 75] * w1 + est[100][:, t - 100] * w2) / (w1 + w2)
    np.testing.assert_allclose(stc.data[:, t], expected, rtol=1e-7,
                               atol=1e-7 * np.abs(expected).max())
    # the same span started later: time axis follows raw.times
    part = apply_unfolded_sbl_raw(raw, fwd, cov, model="cb", window=1.0,
                                  overlap=0.5, n_layers=10, start=100,
                                  stop=300, verbose=False)
    assert part.tmin == pytest.approx(2.0) and part.shape[1] == 200


def test_raw_bad_arguments(raw_case):
    fwd, raw, cov, _ = raw_case
    for kw, match in ((dict(overlap=1.0), "overlap"),
                      (dict(window=0.1), "at least 10 samples"),
                      (dict(window=100.0), "fewer than one window"),
                      (dict(batch_size=0), "batch_size")):
        with pytest.raises(ValueError, match=match):
            apply_unfolded_sbl_raw(raw, fwd, cov, model="cb", **kw)
    with pytest.raises(TypeError, match="raw"):
        apply_unfolded_sbl_raw(raw.get_data(), fwd, cov)
