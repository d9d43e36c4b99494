"""The regime settings of the do-no-harm check and their caps."""

import mne
import numpy as np
import pytest

from mne_unfolded_sbl.benchmark import (DO_NO_HARM_SETTINGS, Setting,
                                        get_setting, run_benchmark,
                                        simulate_batches)
from mne_unfolded_sbl.benchmark.methods import SBLMethod
from mne_unfolded_sbl.benchmark.settings import SOURCE_SCALE, problem_from_forward
from mne_unfolded_sbl.datasets import make_info, make_montage


@pytest.fixture(scope="module")
def tiny_fwd(tiny_forward):
    fwd, info = tiny_forward
    fwd = mne.convert_forward_solution(fwd, surf_ori=True, force_fixed=True,
                                       use_cps=True, verbose="error")
    fwd_sim = fwd.copy()
    fwd_sim["sol"]["data"] = fwd["sol"]["data"] * 0.9
    return fwd, fwd_sim, info


def _problem(tiny_fwd, name, n_times=40):
    """The setting's simulation on the tiny sphere forward (no BEM)."""
    fwd, fwd_sim, info = tiny_fwd
    setting = get_setting(name)
    if setting.missing_fields():
        pytest.skip(f"the simulator lacks {setting.missing_fields()}")
    return problem_from_forward(fwd, fwd_sim, info=info,
                                setting=setting.replace(n_times=n_times))


def _snr_db(problem, batch):
    """Global SNR of each sample: total signal power over total noise
    power (expected noise variances)."""
    signal = np.einsum("mn,bnt->bmt", problem.L_sim, batch.X)
    power = (signal ** 2).mean(-1).sum(-1)
    return 10 * np.log10(power / batch.true_noise_var.sum(-1))


def test_regime_settings_declared():
    for name in DO_NO_HARM_SETTINGS:
        s = get_setting(name)
        assert s.n_times == 100 and s.description
    # the published single-dipole setting is unchanged (per-channel SNR)
    assert get_setting("single-dipole").config_overrides == dict(
        n_sources=1, spread=0.0, snr_db=(3.0, 5.0))
    focal = get_setting("single-focal").config_overrides
    assert focal["n_sources"] == 1 and focal["spread"] == 0.0
    assert focal["snr_mode"] == "global"
    mis = get_setting("miscaled-cov").config_overrides
    assert mis["noise_cov_scale"] == (0.3, 3.0) and mis["adhoc_cov_prob"] == 0.2
    assert get_setting("low-snr").config_overrides["footprint"] == (
        "gaussian", "diffusion")
    assert (get_setting("ico4").spacing, get_setting("ico4").montage) == (
        "ico4", "train-64")
    assert get_setting("cap-32").montage == "1020-32"
    assert get_setting("cap-128").montage == "egi-128"
    assert len(make_info("1020-32")["ch_names"]) == 32
    # a setting whose fields the simulator lacks is refused clearly
    odd = Setting("odd", "Odd", "train-64", "ico3", 100,
                  config_overrides=dict(n_sources=2, no_such_field=1))
    assert odd.missing_fields() == ["no_such_field"]
    with pytest.raises(ValueError, match="needs the SimulationConfig fields"):
        odd.simulation_config()


def test_regimes_simulate_what_they_claim(tiny_fwd):
    p = _problem(tiny_fwd, "single-focal")
    b = next(iter(simulate_batches(p, 8, seed=1)))
    active = (np.abs(b.X).sum(-1) > 0).sum(-1)
    assert active.tolist() == [1] * 8
    snr = _snr_db(p, b)
    assert snr.min() > 3.0 - 1e-6 and snr.max() < 5.0 + 1e-6
    # noise variances differ between sensors (heterogeneity), not with the
    # signal of each sensor
    assert np.ptp(np.log(b.noise_var), axis=1).max() > 0.1

    p = _problem(tiny_fwd, "multi-dipole")
    b = next(iter(simulate_batches(p, 8, seed=1)))
    active = (np.abs(b.X).sum(-1) > 0).sum(-1)
    assert active.min() >= 2 and active.max() <= 4
    snr = _snr_db(p, b)
    assert snr.min() > 1.0 - 1e-6 and snr.max() < 3.0 + 1e-6

    p = _problem(tiny_fwd, "low-snr")  # diffusion footprints: the mesh
    b = next(iter(simulate_batches(p, 8, seed=1)))
    assert (np.abs(b.X).sum(-1) > 0).sum(-1).max() > 3  # smooth sources
    snr = _snr_db(p, b)
    assert snr.min() > -5.0 - 1e-6 and snr.max() < 0.0 + 1e-6


def test_miscaled_cov_reaches_every_method(tiny_fwd, monkeypatch):
    """miscaled-cov hands the solvers scaled (or flat) noise variances, the
    same to the SBL solvers and to MNE's noise covariance."""
    p = _problem(tiny_fwd, "miscaled-cov")
    b = next(iter(simulate_batches(p, 20, seed=0)))
    assert b.noise_var_true is not None
    ratio = b.noise_var / b.noise_var_true
    flat = np.array([np.allclose(v, v[0]) for v in b.noise_var])
    assert 0 < flat.sum() < 20  # ad hoc in some samples (p = 0.2)
    scaled = ratio[~flat]
    np.testing.assert_allclose(scaled, scaled[:, :1] * np.ones_like(scaled),
                               rtol=1e-6)  # one factor per sample ...
    assert scaled.min() >= 0.3 - 1e-9 and scaled.max() <= 3.0 + 1e-9
    assert np.ptp(np.log(scaled[:, 0])) > 0.5  # ... that varies
    # MNE's noise covariance is built from the same variances
    ev, cov = b.mne_inputs(0, p)
    np.testing.assert_allclose(cov["data"], b.noise_var[0] * SOURCE_SCALE ** 2)
    # the source-only SBL solver is told the same variances
    seen = []
    orig = SBLMethod.run

    def run(self, Y, noise_var, return_trajectory=False):
        seen.append(noise_var.double().numpy().copy())
        return orig(self, Y, noise_var, return_trajectory)

    monkeypatch.setattr(SBLMethod, "run", run)
    run_benchmark(p, "cb-source-25", n_samples=3, batch_size=3, seed=0,
                  progress=False)
    first = next(iter(simulate_batches(p, 3, seed=0)))
    np.testing.assert_allclose(seen[0], first.noise_var, rtol=1e-6)
    assert not np.allclose(seen[0], first.noise_var_true, rtol=1e-3)


def test_given_noise_var_routing_without_options(tiny_fwd, monkeypatch):
    """The one code path: whatever the simulator says the solver is told
    (``noise_var_given``) becomes ``Batch.noise_var``."""
    from mne_unfolded_sbl.core import simulator

    fwd, fwd_sim, info = tiny_fwd
    p = problem_from_forward(fwd, fwd_sim, info=info, n_times=40)
    orig = simulator.EEGSimulator.sample

    def sample(self, *args, **kwargs):
        d = orig(self, *args, **kwargs)
        d["noise_var_given"] = 2.0 * d["noise_var"]
        return d

    monkeypatch.setattr(simulator.EEGSimulator, "sample", sample)
    b = next(iter(simulate_batches(p, 2, seed=0)))
    np.testing.assert_allclose(b.noise_var, 2.0 * b.noise_var_true)
    np.testing.assert_allclose(b.true_noise_var, b.noise_var_true)


def test_caps_fitted_to_the_scalp():
    """1020-32: fsaverage_1005 positions; biosemi128 / egi-128: MNE's
    positions fitted onto the template scalp (they were mm off)."""
    from mne_unfolded_sbl.datasets._montage import (CAP32_CH_NAMES,
                                                    fit_to_template_scalp)

    cap = make_montage("1020-32")
    ref = make_montage("fsaverage_1005").get_positions()["ch_pos"]
    assert cap.ch_names == CAP32_CH_NAMES
    for ch, pos in cap.get_positions()["ch_pos"].items():
        np.testing.assert_allclose(pos, ref[ch])
    for name, builtin in (("biosemi128", "biosemi128"),
                          ("egi-128", "GSN-HydroCel-128")):
        info = make_info(name)
        assert len(info["ch_names"]) == 128
        _, fit = fit_to_template_scalp(builtin)
        assert np.median(fit["before"]) > 3e-3  # MNE's: off the scalp
        assert fit["before"].max() > 15e-3
        assert fit["after"].max() < 1e-3  # fitted: on it
        assert np.all((fit["scale"] > 0.85) & (fit["scale"] < 1.2))
        assert info["ch_names"] == mne.channels.make_standard_montage(
            builtin).ch_names
    # the fit checked where fsaverage positions are known: BioSemi-64's
    # 10-10 sites move from ~16 mm to ~6 mm (median) of fsaverage_1005's
    fitted, _ = fit_to_template_scalp("biosemi64")
    a = make_info(fitted)
    raw = make_info("biosemi64")
    full = make_info("fsaverage_1005")
    where = {c["ch_name"]: c["loc"][:3] for c in full["chs"]}
    err = [np.linalg.norm(c["loc"][:3] - where[c["ch_name"]]) for c in a["chs"]]
    err0 = [np.linalg.norm(c["loc"][:3] - where[c["ch_name"]])
            for c in raw["chs"]]
    assert np.median(err0) > 12e-3 and np.median(err) < 8e-3


@pytest.mark.slow
def test_cap_forwards(template_cache, monkeypatch):
    """Template forwards of the caps (ico3 BEM), electrodes on the scalp."""
    from mne_unfolded_sbl.datasets import (electrode_scalp_distances,
                                           get_subjects_dir,
                                           make_template_forward)

    monkeypatch.setenv("MNE_UNFOLDED_SBL_CACHE", str(template_cache))
    subjects_dir = get_subjects_dir()
    head = mne.read_bem_surfaces(
        subjects_dir / "fsaverage" / "bem" / "fsaverage-head.fif",
        verbose=False)
    for name, n in (("1020-32", 32), ("biosemi128", 128), ("egi-128", 128)):
        fwd = make_template_forward(name, "ico3", bem_ico=3, verbose=False)
        assert fwd["sol"]["data"].shape == (n, 1284)
        dist = electrode_scalp_distances(
            make_info(name), head,
            subjects_dir / "fsaverage" / "bem" / "fsaverage-trans.fif")
        assert np.median(dist) < 3e-3 and dist.max() < 8e-3
