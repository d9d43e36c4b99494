"""Tests of the MNE-facing simulation (mne_unfolded_sbl.simulation)."""

import mne
import numpy as np
import pytest
import torch
from mne.io.constants import FIFF

from mne_unfolded_sbl.core.simulator import SimulationConfig
from mne_unfolded_sbl.simulation import simulate_evoked, simulator_from_forward


def test_simulate_evoked(tiny_forward):
    fwd, info = tiny_forward
    assert fwd["sol"]["ncol"] == 3 * fwd["nsource"]  # free orientation
    config = SimulationConfig(n_times=3000, snr_db=10.0)
    evoked, stc, cov = simulate_evoked(fwd, config, seed=0, tmin=-0.2)
    fwd_fixed = mne.convert_forward_solution(fwd, surf_ori=True, force_fixed=True,
                                             use_cps=True, verbose="error")
    G = fwd_fixed["sol"]["data"]
    # evoked
    assert isinstance(evoked, mne.EvokedArray)
    assert evoked.ch_names == fwd_fixed["sol"]["row_names"]
    assert evoked.nave == 1 and evoked.info["sfreq"] == 100.0
    assert evoked.times[0] == pytest.approx(-0.2) and len(evoked.times) == 3000
    assert len(evoked.info["projs"]) == 1 and not evoked.info["projs"][0]["active"]
    assert "Average" in evoked.info["projs"][0]["desc"]
    pos_ev = np.array([ch["loc"][:3] for ch in evoked.info["chs"]])
    pos_in = np.array([ch["loc"][:3] for ch in info["chs"]])
    np.testing.assert_allclose(pos_ev, pos_in)
    rms = np.sqrt(np.mean(evoked.data**2))
    assert 1e-7 < rms < 1e-4  # volts, micro-volt range
    # stc
    assert isinstance(stc, mne.SourceEstimate)
    assert stc.subject == "tiny"
    for v, s in zip(stc.vertices, fwd["src"]):
        np.testing.assert_array_equal(v, s["vertno"])
    assert stc.data.shape == (G.shape[1], 3000)
    assert stc.tmin == pytest.approx(-0.2) and stc.tstep == pytest.approx(0.01)
    assert 1e-9 < np.abs(stc.data).max() < 1e-7  # A.m, nA.m range
    # noise model: data = G X + noise with the covariance returned
    assert cov["diag"] and cov.ch_names == evoked.ch_names
    clean = G @ stc.data
    resid = evoked.data - clean
    np.testing.assert_allclose(cov.data, np.mean(clean**2, axis=1) / 10.0, rtol=1e-6)
    realised = 10 * np.log10(np.mean(clean**2, axis=1) / np.mean(resid**2, axis=1))
    np.testing.assert_allclose(realised, 10.0, atol=0.6)
    # reproducible, and usable by MNE inverse code
    evoked2, stc2, _ = simulate_evoked(fwd, config, seed=0, tmin=-0.2)
    np.testing.assert_array_equal(evoked.data, evoked2.data)
    np.testing.assert_array_equal(stc.data, stc2.data)
    inv = mne.minimum_norm.make_inverse_operator(evoked.info, fwd, cov, fixed=True,
                                                 verbose="error")
    stc_mne = mne.minimum_norm.apply_inverse(evoked.copy().crop(None, 0.0), inv,
                                             verbose="error")
    assert stc_mne.data.shape[0] == G.shape[1]


def test_from_forward_matches_gain(tiny_forward):
    fwd, _ = tiny_forward
    sim = simulator_from_forward(fwd, SimulationConfig(n_sources=(1, 3)),
                                 dtype=torch.float64, seed=0)
    fwd_fixed = mne.convert_forward_solution(fwd, surf_ori=True, force_fixed=True,
                                             use_cps=True, verbose="error")
    np.testing.assert_allclose(sim.L.numpy(), fwd_fixed["sol"]["data"], rtol=1e-12)
    pos = np.concatenate([s["rr"][s["vertno"]] for s in fwd["src"]])
    np.testing.assert_allclose(sim.pos.numpy(), pos)
    with pytest.raises(TypeError, match="fwd"):
        simulate_evoked("not a forward")


def _fixed_gain(fwd):
    fwd = mne.convert_forward_solution(fwd, surf_ori=True, force_fixed=True,
                                       use_cps=True, verbose="error")
    return fwd["sol"]["data"], fwd["sol"]["row_names"]


def test_simulate_meg_eeg_per_type_snr(meg_eeg_forward):
    """MEG+EEG: white noise of one variance per channel type at the stated
    SNR, the covariance is that of the noise, EEG (only) referenced."""
    fwd, _ = meg_eeg_forward
    G, names = _fixed_gain(fwd)
    config = SimulationConfig(n_sources=(2, 2), n_times=2000, snr_db=8.0)
    evoked, stc, cov, snr = simulate_evoked(fwd, config, seed=1,
                                            sensors="meg-eeg", return_snr=True)
    types = np.array(evoked.get_channel_types())
    assert evoked.ch_names == names  # MEG first, as in the forward
    assert [(k, int(np.sum(types == k))) for k in dict.fromkeys(types)] == \
        [("mag", 24), ("grad", 48), ("eeg", 32)]
    assert evoked.info["dev_head_t"] is not None
    meg_chs = [ch for ch in evoked.info["chs"] if ch["kind"] == FIFF.FIFFV_MEG_CH]
    src_chs = {ch["ch_name"]: ch for ch in fwd["info"]["chs"]}
    for ch in meg_chs:  # the sensors of the forward
        assert ch["coil_type"] == src_chs[ch["ch_name"]]["coil_type"]
        np.testing.assert_allclose(ch["loc"], src_chs[ch["ch_name"]]["loc"])
    # the average reference covers the EEG channels only, not applied
    (proj,) = evoked.info["projs"]
    assert not proj["active"] and "Average" in proj["desc"]
    assert set(proj["data"]["col_names"]) == set(np.array(names)[types == "eeg"])
    assert cov["projs"][0]["data"]["col_names"] == proj["data"]["col_names"]
    # stated SNR per type, one noise variance per type
    clean = G @ stc.data
    resid = evoked.data - clean
    assert cov["diag"] and cov.ch_names == evoked.ch_names
    assert set(snr) == {"mag", "grad", "eeg"}
    for kind in ("mag", "grad", "eeg"):
        rows = types == kind
        var = cov.data[rows]
        np.testing.assert_allclose(var, var[0], rtol=1e-12)  # per type
        np.testing.assert_allclose(
            10 * np.log10(np.mean(clean[rows] ** 2) / var[0]), 8.0, atol=1e-9)
        assert snr[kind] == pytest.approx(8.0)
        # the noise drawn has this variance (T = 2000: within a few %)
        assert np.mean(resid[rows] ** 2) / var[0] == pytest.approx(1.0, abs=0.04)
    # the covariance matches the noise: whitened, the noise is white
    white = resid / np.sqrt(cov.data)[:, None]
    np.testing.assert_allclose(np.mean(white ** 2, axis=1), 1.0, atol=0.15)
    corr = np.corrcoef(white)
    assert np.abs(corr - np.eye(len(corr))).max() < 0.12
    # MNE takes the covariance with this evoked (per-type whitening)
    inv = mne.minimum_norm.make_inverse_operator(evoked.info, fwd, cov,
                                                 fixed=True, verbose="error")
    assert inv["info"]["ch_names"] == names


def test_simulate_meg_snr_range_and_sources(meg_eeg_forward, tiny_forward):
    """The SNR of each type is drawn in the range; the sources depend on
    the seed only (not on the sensors or noise model); MEG alone has no
    projector; per-channel noise works for MEG too."""
    fwd, _ = meg_eeg_forward
    G, names = _fixed_gain(fwd)
    config = SimulationConfig(n_sources=(1, 3), n_times=50, snr_db=(2.0, 12.0))
    ev, stc, cov, snr = simulate_evoked(fwd, config, seed=5, sensors="meg",
                                        return_snr=True)
    assert set(ev.get_channel_types()) == {"mag", "grad"}
    assert ev.info["projs"] == [] and cov["projs"] == []
    assert set(snr) == {"mag", "grad"}
    assert all(2.0 <= v <= 12.0 for v in snr.values())
    assert snr["mag"] != pytest.approx(snr["grad"])
    ev2, stc2, cov2 = simulate_evoked(fwd, config, seed=5, sensors="meg")
    np.testing.assert_array_equal(ev.data, ev2.data)
    np.testing.assert_array_equal(cov.data, cov2.data)
    _, stc_eeg, _ = simulate_evoked(fwd, config, seed=5)  # per-channel EEG
    np.testing.assert_array_equal(stc.data, stc_eeg.data)
    # an EEG-only forward gives the same EEG sensors (and sources) as the
    # EEG rows of the MEG+EEG one
    ev_tiny, stc_tiny, _ = simulate_evoked(tiny_forward[0], config, seed=5)
    np.testing.assert_allclose(stc_tiny.data, stc_eeg.data)
    # per-channel noise on MEG: each channel at its own drawn SNR
    ev, stc, cov, snr = simulate_evoked(fwd, config.replace(snr_db=6.0),
                                        seed=2, sensors="meg-eeg",
                                        noise="per-channel", return_snr=True)
    clean = G @ stc.data
    np.testing.assert_allclose(cov.data, np.mean(clean ** 2, axis=1) / 10**0.6,
                               rtol=1e-6)
    assert all(v == pytest.approx(6.0) for v in snr.values())


def test_simulate_sensors_errors(meg_eeg_forward, tiny_forward):
    eeg_fwd, _ = tiny_forward
    meg_fwd, _ = meg_eeg_forward
    with pytest.raises(ValueError, match="needs MEG channels.*0 MEG"):
        simulate_evoked(eeg_fwd, sensors="meg-eeg")
    with pytest.raises(ValueError, match="needs MEG channels"):
        simulate_evoked(eeg_fwd, sensors="meg")
    meg_only = mne.pick_types_forward(meg_fwd, meg=True, eeg=False)
    with pytest.raises(ValueError, match="needs EEG channels"):
        simulate_evoked(meg_only, sensors="meg-eeg")
    with pytest.raises(ValueError, match="'eeg' needs EEG channels.*72 MEG"):
        simulate_evoked(meg_only)  # sensors="eeg"
    with pytest.raises(ValueError, match="Invalid value for the 'sensors'"):
        simulate_evoked(meg_fwd, sensors="meeg")
    with pytest.raises(TypeError, match="sensors"):
        simulate_evoked(meg_fwd, sensors=("meg", "eeg"))
    with pytest.raises(ValueError, match="Invalid value for the 'noise'"):
        simulate_evoked(meg_fwd, sensors="meg", noise="white")
    with pytest.raises(TypeError, match="return_snr"):
        simulate_evoked(meg_fwd, sensors="meg", return_snr="yes")
    # an info without the helmet position
    info = mne.pick_info(meg_fwd["info"], mne.pick_types(
        meg_fwd["info"], meg=True, exclude=()))
    with info._unlock():
        info["dev_head_t"] = None
    with pytest.raises(ValueError, match="dev_head_t"):
        simulate_evoked(meg_fwd, sensors="meg", info=info)
