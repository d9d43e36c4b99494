"""Tests of the MNE-facing simulation (mne_unfolded_sbl.simulation)."""

import mne
import numpy as np
import pytest
import torch

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
