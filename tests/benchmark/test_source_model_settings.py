"""The benchmark's source-model settings and methods: multi-scale, loose
orientation (tilted dipoles), MEG+EEG, the AP metric and confidence
intervals (mne_unfolded_sbl.benchmark)."""

import warnings

import mne
import numpy as np
import pytest
from scipy.stats import t as student_t

from mne_unfolded_sbl.benchmark import (get_setting, markdown_table,
                                        resolve_methods, run_benchmark,
                                        simulate_batches, summarize)
from mne_unfolded_sbl.benchmark import settings as bench_settings
from mne_unfolded_sbl.benchmark.methods import Solution
from mne_unfolded_sbl.benchmark.runner import (ci_halfwidth, score,
                                               tilted_orientations)
from mne_unfolded_sbl.benchmark.settings import (problem_from_forward,
                                                 problem_from_meg_eeg_forward,
                                                 with_free_orientation)


def _fixed(fwd):
    return mne.convert_forward_solution(fwd, surf_ori=True, force_fixed=True,
                                        use_cps=True, verbose="error")


def _free(fwd):
    return mne.convert_forward_solution(fwd, surf_ori=True, force_fixed=False,
                                        use_cps=True, verbose="error")


@pytest.fixture(scope="module")
def fixed_problem(tiny_forward):
    fwd, info = tiny_forward
    return problem_from_forward(_fixed(fwd), info=info, n_times=40)


@pytest.fixture(scope="module")
def tilted_problem(tiny_forward, fixed_problem):
    """Tilted dipoles (45 degree cone) on the tiny sphere-model forward."""
    fwd, _ = tiny_forward
    setting = fixed_problem.setting.replace(tilt_deg=45.0)
    problem = with_free_orientation(fixed_problem, _free(fwd))
    problem.setting = setting
    return problem.with_config(problem.config.replace(
        n_sources=2, spread=0.0, snr_db=25.0))


def test_new_settings():
    """The four source-model settings and what they simulate."""
    ext = get_setting("extended-patches").simulation_config()
    assert ext.n_sources == (2, 4) and ext.spread == (0.01, 0.02)
    assert ext.snr_db == (1.0, 3.0)
    one = get_setting("single-dipole").simulation_config()
    assert one.n_sources == (1, 1) and one.spread == (0.0, 0.0)
    assert one.snr_db == (3.0, 5.0)
    loose = get_setting("loose-forward")
    assert loose.tilt_deg == bench_settings.TILT_DEG and not loose.meg
    meg = get_setting("meg-eeg-ico3")
    assert meg.meg and meg.tilt_deg is None
    assert meg.simulation_config() == get_setting(
        "train-cap-ico3").simulation_config()


def test_meg_setting_waits_for_the_meg_template(monkeypatch):
    """Without make_template_forward(meg=...) the MEG+EEG setting says so."""
    def old_make_template_forward(montage, spacing, conductivity, *,
                                  bem_ico=4, source="auto", cache=True,
                                  verbose=None):
        raise AssertionError("must not be called")

    monkeypatch.setattr(bench_settings, "make_template_forward",
                        old_make_template_forward)
    with pytest.raises(ValueError, match="needs the MEG template"):
        bench_settings.load_problem("meg-eeg-ico3", bem_ico=3)


def test_meg_only_setting(meg_eeg_forward, monkeypatch):
    """meg-ico3: the MEG+EEG template forward with the EEG rows dropped, so
    no reference and per-type scaling of the MEG rows only; cb localises."""
    fwd, _ = meg_eeg_forward
    setting = get_setting("meg-ico3")
    assert setting.meg and not setting.eeg
    assert setting.simulation_config() == get_setting(
        "meg-eeg-ico3").simulation_config()
    calls = []

    def template_forward(setting, conductivity, meg=False, verbose="error"):
        calls.append(meg)
        return fwd.copy()

    monkeypatch.setattr(bench_settings, "_template_forward", template_forward)
    p = bench_settings.load_problem("meg-ico3", bem_ico=3)
    assert calls == [True, True]
    types = np.array(p.info.get_channel_types())
    assert set(types) == {"mag", "grad"} and len(types) == 72
    assert not p.eeg_rows.any() and not p.info["projs"]
    for kind in ("mag", "grad"):
        assert np.sqrt(np.mean(p.L[types == kind] ** 2)) == pytest.approx(1.0)
    p = p.with_config(p.config.replace(n_sources=1, spread=0.0, snr_db=30.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = run_benchmark(p, "cb-joint-25", n_samples=3, seed=1,
                            progress=False)
    assert np.mean([r["le"] for r in res.records]) < 0.005
    assert not any(r["failed"] for r in res.records)


def test_tilted_orientations_in_cone():
    rng = np.random.default_rng(0)
    ori = tilted_orientations(5000, 30.0, rng)
    np.testing.assert_allclose(np.linalg.norm(ori, axis=1), 1.0)
    angle = np.degrees(np.arccos(ori[:, 2]))
    assert angle.max() <= 30.0 + 1e-9 and angle.max() > 29.0
    # uniform on the cap: half of the solid angle below cos = (1 + cos30)/2
    assert np.mean(ori[:, 2] > (1 + np.cos(np.radians(30))) / 2) == \
        pytest.approx(0.5, abs=0.03)
    assert abs(ori[:, 0].mean()) < 0.02 and abs(ori[:, 1].mean()) < 0.02


def test_tilted_simulation(tilted_problem):
    """Tilted dipoles: orientations in the cone around each normal, data
    from the free lead field along them, the same sources as without tilt."""
    p = tilted_problem
    batch = next(iter(simulate_batches(p, 3, seed=2)))
    assert batch.ori.shape == (3, p.n_sources, 3)
    cos = np.einsum("bnx,nx->bn", batch.ori, p.normals)
    assert cos.min() >= np.cos(np.radians(45.0)) - 1e-9
    assert cos.min() < 0.95  # really tilted
    # noiseless part of the data: the free lead field along the orientations
    M, N = p.L_sim_free.shape[0], p.n_sources
    local = np.einsum("bnx,nox->bno", batch.ori, p.nn)
    L_tilt = np.einsum("mno,no->mn", p.L_sim_free.reshape(M, N, 3), local[0])
    signal = L_tilt @ batch.X[0]
    signal -= signal.mean(0)
    resid = batch.Y[0] - signal
    # what is left is the noise: variance per channel ~ the true one
    ratio = resid.var(1) / batch.noise_var[0]
    assert 0.3 < np.median(ratio) < 2.0
    # the same centres and time courses as the untilted problem
    flat = p.with_config(p.config)
    flat.setting = p.setting.replace(tilt_deg=None)
    same = next(iter(simulate_batches(flat, 3, seed=2)))
    np.testing.assert_allclose(same.X, batch.X)
    np.testing.assert_allclose(same.ori[0], p.normals)


def test_vector_scoring(tilted_problem):
    """Every method is scored on dipole vectors: the truth scores 0, a
    fixed-orientation estimate of the exact normal projection loses the
    tangential part."""
    p = tilted_problem
    batch = next(iter(simulate_batches(p, 2, seed=5)))
    V = batch.X[:, :, None, :] * batch.ori[..., None]
    perfect = score(p, batch, Solution(X=batch.X, seconds=None, X_vec=V))
    np.testing.assert_allclose(perfect["rmse"], 0.0, atol=1e-12)
    np.testing.assert_allclose(perfect["f1"], 1.0)
    cos = np.einsum("bnx,nx->bn", batch.ori, p.normals)
    fixed = score(p, batch, Solution(X=batch.X * cos[..., None],
                                     seconds=None))
    # || x ori - (x cos) n ||^2 = x^2 sin^2
    expect = (np.sum(batch.X ** 2 * (1 - cos[..., None] ** 2), axis=(1, 2))
              / np.sum(batch.X ** 2, axis=(1, 2)))
    np.testing.assert_allclose(fixed["rmse"], expect, rtol=1e-10)
    assert (fixed["rmse"] > 0.01).all()


def test_loose_method_beats_fixed_on_tilted_dipoles(tilted_problem):
    """cb with loose=0.2 recovers tilted dipoles (vector rMSE) better than
    the fixed-orientation cb on the same samples."""
    res = run_benchmark(tilted_problem, "cb-source-25,cb-source-25-loose",
                        n_samples=6, seed=1, progress=False)
    rmse = {m: np.array([r["rmse"] for r in res.records if r["method"] == m])
            for m in ("cb-source-25", "cb-source-25-loose")}
    assert np.mean(rmse["cb-source-25-loose"]) < 0.8 * np.mean(
        rmse["cb-source-25"])
    ap = {m: np.mean([r["ap"] for r in res.records if r["method"] == m])
          for m in ("cb-source-25", "cb-source-25-loose")}
    assert ap["cb-source-25-loose"] > ap["cb-source-25"] + 0.2, ap


def test_loose_needs_free_forward(fixed_problem):
    """A loose method on a fixed-orientation setting is skipped, with why."""
    with pytest.warns(RuntimeWarning, match="free-orientation lead field"):
        res = run_benchmark(fixed_problem, "cb-joint-25,cb-joint-25-loose",
                            n_samples=2, progress=False)
    assert {r["method"] for r in res.records} == {"cb-joint-25"}
    assert "cb-joint-25-loose" in res.info["incompatible"]


def test_multiscale_adapter_selects_per_sample(fixed_problem):
    """Samples where the evidence keeps the point model get exactly the
    point method's estimate; extended patches at high SNR keep the
    multi-scale model for some samples, and then it differs."""
    p = fixed_problem.with_config(fixed_problem.config.replace(
        n_sources=1, spread=(0.0, 0.03), snr_db=30.0))
    ms, pt = resolve_methods("cb-source-25-multiscale,cb-source-25")
    ms.prepare(p)
    pt.prepare(p)
    assert ms._basis is not None and ms._L.shape[1] == ms._basis.n_atoms
    batch = next(iter(simulate_batches(p, 12, seed=0)))
    sol_ms, sol_pt = ms.solve(batch), pt.solve(batch)
    keep = sol_ms.multiscale
    assert keep.dtype == bool and keep.shape == (12,)
    assert keep.any() and not keep.all(), keep
    np.testing.assert_allclose(sol_ms.X[~keep], sol_pt.X[~keep], rtol=1e-6,
                               atol=1e-9 * np.abs(sol_pt.X).max())
    diff = np.abs(sol_ms.X[keep] - sol_pt.X[keep]).max(axis=(1, 2))
    assert (diff > 1e-3 * np.abs(sol_pt.X[keep]).max()).all()
    # the runner records the choice and the table says how often
    res = run_benchmark(p, [ms], n_samples=12, progress=False)
    assert [r["multiscale"] for r in res.records] == keep.tolist()
    (row,) = res.summary()
    assert row["n_multiscale"] == keep.sum()
    assert f"for {keep.sum()} of 12 samples" in markdown_table([row])


def test_multiscale_needs_a_source_space():
    from mne_unfolded_sbl.benchmark import synthetic_problem

    synth = synthetic_problem(n_sensors=16, n_sources=40, n_times=40)
    with pytest.warns(RuntimeWarning, match="source space"):
        res = run_benchmark(synth, "cb-joint-25,cb-joint-25-multiscale",
                            n_samples=2, progress=False)
    assert "cb-joint-25-multiscale" in res.info["incompatible"]


def test_resolve_variant_groups():
    keys = [m.key for m in resolve_methods("multiscale")]
    assert keys[:2] == ["cb-joint-25-multiscale", "cb-source-25-multiscale"]
    assert all(k.endswith("-multiscale") for k in keys)
    (loose,) = resolve_methods("cb-joint-25-loose")
    assert loose.loose == 0.2 and loose.spec.source_model == "point"
    (half,) = resolve_methods("cb-source-25-loose0.5")
    assert half.loose == 0.5 and not half.learn_noise
    with pytest.raises(ValueError, match="Unknown|Not a learned"):
        resolve_methods("cb-joint-conv-multiscale")


def test_meg_eeg_problem(meg_eeg_forward):
    """MEG+EEG: per-type unit-RMS rows, the EEG rows alone referenced, MNE
    methods get physical units back, and cb finds a strong dipole."""
    fwd, info = meg_eeg_forward
    fwd = _fixed(fwd)
    p = problem_from_meg_eeg_forward(fwd, n_times=40)
    types = np.array(p.info.get_channel_types())
    assert set(types) == {"mag", "grad", "eeg"}
    for kind in ("mag", "grad", "eeg"):
        rows = types == kind
        assert np.sqrt(np.mean(p.L[rows] ** 2)) == pytest.approx(1.0)
    np.testing.assert_array_equal(p.eeg_rows, types == "eeg")
    null = p.null_space()
    q = null.Q.numpy()[:, 0]
    assert np.all(q[types != "eeg"] == 0) and np.allclose(
        q[types == "eeg"], 1 / np.sqrt((types == "eeg").sum()))
    p = p.with_config(p.config.replace(n_sources=1, spread=0.0, snr_db=30.0))
    batch = next(iter(simulate_batches(p, 3, seed=1)))
    eeg = types == "eeg"
    np.testing.assert_allclose(batch.Y[:, eeg].mean(1), 0.0, atol=1e-12)
    assert np.abs(batch.Y[:, ~eeg].mean(1)).max() > 1e-6  # MEG untouched
    evoked, cov = batch.mne_inputs(0, p)
    np.testing.assert_allclose(
        evoked.data, batch.Y[0] * bench_settings.SOURCE_SCALE
        / p.row_scale[:, None])
    mag = types == "mag"
    assert np.abs(evoked.data[mag]).max() < 1e-9  # tesla, not unit-RMS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = run_benchmark(p, "cb-joint-25,sloreta", n_samples=3, seed=1,
                            progress=False)
    le = {m: np.mean([r["le"] for r in res.records if r["method"] == m])
          for m in ("cb-joint-25", "sloreta")}
    assert le["cb-joint-25"] < 0.005, le
    assert not any(r["failed"] for r in res.records)


def test_confidence_intervals_and_ap_column():
    """The summary's ci95 is the Student-t half-width; the CI table and the
    AP column appear when asked / when recorded."""
    rng = np.random.default_rng(0)
    vals = rng.normal(1.0, 0.3, 25)

    class M:
        key, label, current_units = "m", "Method M", True

    recs = [dict(method="m", label="Method M", rmse=v, emd=0.01, le=0.002,
                 f1=0.5, ap=0.7, empty=False, failed=False, seconds=0.1,
                 setup_seconds=np.nan, n_iter=25.0) for v in vals]
    (row,) = summarize(recs, [M()])
    half = student_t.ppf(0.975, 24) * vals.std(ddof=1) / 5.0
    assert row["rmse_ci95"] == pytest.approx(half)
    assert ci_halfwidth(1.0, 1) != ci_halfwidth(1.0, 1)  # NaN for n = 1
    md = markdown_table([row], ci=True)
    lo, hi = vals.mean() - half, vals.mean() + half
    assert f"{vals.mean():.3f} [{lo:.3f}, {hi:.3f}]" in md
    assert "| AP |" in md
    old = [{k: v for k, v in r.items() if k != "ap"} for r in recs]
    (row_old,) = summarize(old, [M()])  # records without AP (older runs)
    assert "| AP |" not in markdown_table([row_old])


def test_bias_cb_has_no_multiscale_variant(fixed_problem, tmp_path):
    """A Bias CB of the problem's own geometry runs as the point model, and
    its multi-scale variant (atoms are not its sources) is incompatible."""
    from mne_unfolded_sbl import methods as registry
    from mne_unfolded_sbl.benchmark.methods import IncompatibleMethod, SBLMethod
    from mne_unfolded_sbl.core.network import UnfoldedSBL
    from mne_unfolded_sbl.core.weights import save_model

    p = fixed_problem
    fname = save_model(UnfoldedSBL(3, "bias-cb", True, n_sources=p.n_sources,
                                   n_sensors=p.n_sensors),
                       tmp_path / "bias.safetensors")
    point = SBLMethod(registry.unfolded_method(str(fname), True))
    point.prepare(p)
    multi = SBLMethod(registry.unfolded_method(str(fname), True,
                                               source_model="multiscale"))
    with pytest.raises(IncompatibleMethod, match="multi-scale model's atoms"):
        multi.prepare(p)
