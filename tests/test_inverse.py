"""The MNE-facing API against MNE's own solvers and analytic expectations."""

from pathlib import Path

import numpy as np
import pytest
import torch
import mne
from mne.inverse_sparse import gamma_map

from mne_unfolded_sbl import (UnfoldedSBLOperator, apply_unfolded_sbl,
                              apply_unfolded_sbl_epochs,
                              make_unfolded_sbl_operator,
                              unfolded_sbl_trajectory)
from mne_unfolded_sbl.core.network import UnfoldedSBL
from mne_unfolded_sbl.core.simulator import SimulationConfig
from mne_unfolded_sbl.simulation import simulate_evoked

EASY = SimulationConfig(n_sources=(2, 2), spread=0.0, snr_db=(25.0, 25.0),
                        n_times=100)


def _power(data):
    return np.sqrt((data ** 2).mean(1))


def _pos(fwd):
    return np.concatenate([s["rr"][s["vertno"]] for s in fwd["src"]])


@pytest.fixture(scope="module")
def easy(train_fwd):
    evoked, stc_true, cov = simulate_evoked(train_fwd, EASY, seed=3,
                                            verbose=False)
    return train_fwd, evoked, stc_true, cov


def test_stc_metadata_and_units(easy):
    fwd, evoked, stc_true, cov = easy
    evoked = evoked.copy().shift_time(-0.1)
    stc = apply_unfolded_sbl(evoked, fwd, cov, model="cb", n_layers=200,
                             verbose=False)
    assert isinstance(stc, mne.SourceEstimate)
    for v, s in zip(stc.vertices, fwd["src"]):
        np.testing.assert_array_equal(v, s["vertno"])
    assert stc.tmin == pytest.approx(evoked.times[0])
    assert stc.tstep == pytest.approx(1.0 / evoked.info["sfreq"])
    assert stc.subject == "fsaverage"
    assert stc.data.shape == stc_true.data.shape
    # the strongest estimated sources are near the true ones (A.m units:
    # the peak amplitude is within a factor of 2 of the truth)
    p_true, p_est = _power(stc_true.data), _power(stc.data)
    pos = _pos(fwd)
    for c in np.argsort(p_true)[-2:]:
        nearest = np.argmin(np.linalg.norm(pos[np.argsort(p_est)[-4:]] - pos[c], axis=1))
        assert np.linalg.norm(pos[np.argsort(p_est)[-4:][nearest]] - pos[c]) < 0.015
    assert 0.5 < p_est.max() / p_true.max() < 2.0


def test_agrees_with_mne_gamma_map(tiny_forward):
    """Known-noise CB run long == MNE's convex-bounding gamma_map (update_mode=2)."""
    fwd, _ = tiny_forward
    fwd = mne.convert_forward_solution(fwd, surf_ori=True, force_fixed=True,
                                       use_cps=True, verbose=False)
    evoked, _, cov = simulate_evoked(fwd, EASY, seed=4, verbose=False)
    stc = apply_unfolded_sbl(evoked, fwd, cov, model="cb", learn_noise=False,
                             n_layers=1000, dtype="float64", verbose=False)
    stc_gm = gamma_map(evoked, fwd, cov, alpha=1.0 / evoked.nave, depth=None,
                       loose=0.0, update_mode=2, tol=1e-9, maxit=3000, pca=False,
                       verbose=False)
    ours = _power(stc.data)
    theirs = np.zeros(len(ours))
    vert = np.concatenate(stc.vertices)
    idx = {(h, v): i for i, (h, v) in enumerate(
        [(0, v) for v in stc.vertices[0]] + [(1, v) for v in stc.vertices[1]])}
    for h, verts in enumerate(stc_gm.vertices):
        for k, v in enumerate(verts):
            row = k + (len(stc_gm.vertices[0]) if h else 0)
            theirs[idx[(h, v)]] = _power(stc_gm.data[row:row + 1])[0]
    assert len(vert) == len(ours)
    sup = lambda p: set(np.flatnonzero(p > 0.05 * p.max()))  # noqa: E731
    assert sup(ours) == sup(theirs)
    top = np.argsort(ours)[-3:]
    np.testing.assert_allclose(ours[top], theirs[top], rtol=0.05)


def test_scale_equivariance_api(easy):
    fwd, evoked, _, cov = easy
    base = apply_unfolded_sbl(evoked, fwd, cov, model="cb", dtype="float64",
                              verbose=False)
    for c in (1e-6, 1e3):
        ev = evoked.copy()
        ev.data *= c
        cv = cov.copy()
        cv["data"] = cv["data"] * c ** 2
        for noise_cov in (cov, cv):  # data alone, and data with its noise
            stc = apply_unfolded_sbl(ev, fwd, noise_cov, model="cb",
                                     dtype="float64", verbose=False)
            np.testing.assert_allclose(stc.data, c * base.data, rtol=1e-6,
                                       atol=1e-9 * c * np.abs(base.data).max())


def test_residual_and_learned_noise_flag_noisy_channel(train_fwd):
    cfg = SimulationConfig(n_sources=(3, 3), spread=0.0, snr_db=(20.0, 20.0))
    evoked, _, cov = simulate_evoked(train_fwd, cfg, seed=1, verbose=False)
    rng = np.random.default_rng(0)
    bad = 10
    evoked.data[bad] += rng.standard_normal(evoked.data.shape[1]) * 20 * np.sqrt(
        cov["data"][bad])
    stc, resid, learned = apply_unfolded_sbl(
        evoked, train_fwd, cov, model="cb", return_residual=True,
        return_noise_cov=True, verbose=False)
    assert isinstance(resid, mne.Evoked) and isinstance(learned, mne.Covariance)
    assert learned["diag"] and learned["names"] == evoked.ch_names
    ratio = learned["data"] / cov["data"]
    assert np.argmax(ratio) == bad
    assert ratio[bad] > 20 * np.median(ratio)
    # residual = data - G X (average-referenced), explained variance high
    ev = evoked.copy().apply_proj()
    fit = train_fwd["sol"]["data"] @ stc.data
    fit -= fit.mean(0)
    np.testing.assert_allclose(resid.copy().apply_proj().data, ev.data - fit,
                               atol=1e-3 * np.abs(ev.data).max())
    assert np.linalg.norm(resid.data) < 0.5 * np.linalg.norm(ev.data)


def test_reference_subspace_and_lazy_kernel(train_fwd):
    """The average reference removes one sensor direction: the solver works
    in the remaining subspace, so the jointly learned noise stays right on
    every channel however long it runs; the stc holds the posterior kernel
    (T-independent) and equals the explicit posterior mean."""
    from mne_unfolded_sbl.core.solver import covariance_statistic

    cfg = SimulationConfig(n_sources=(3, 3), spread=0.0, snr_db=(10.0, 10.0))
    evoked, _, cov = simulate_evoked(train_fwd, cfg, seed=2, verbose=False)
    stc, learned = apply_unfolded_sbl(evoked, train_fwd, cov, model="cb",
                                      n_layers=300, return_noise_cov=True,
                                      dtype="float64", verbose=False)
    ratio = learned["data"] / cov["data"]
    assert 0.7 < np.median(ratio) < 1.4
    assert ratio.min() > 0.3 and ratio.max() < 3  # no channel collapses
    assert stc._kernel is not None and stc._data is None  # not formed yet
    op = make_unfolded_sbl_operator(evoked.info, train_fwd, cov, verbose=False)
    gain, wh, null = op.gain, op.whitener, op.null_space
    sel = [evoked.ch_names.index(n) for n in op.ch_names]
    assert null.rank == 1  # the average-reference projector
    Q = null.Q.numpy()
    np.testing.assert_allclose(np.abs(Q), 1 / np.sqrt(len(Q)), rtol=1e-6)
    assert np.abs(Q.T @ wh).max() < 1e-10 * np.abs(wh).max()
    Y = torch.as_tensor((wh @ evoked.data[sel])[None])
    net = UnfoldedSBL(300, "cb", True).double()
    with torch.no_grad():
        X = net(torch.as_tensor(gain), covariance_statistic(Y),
                null_space=null).posterior_mean(Y)[0].numpy()
    np.testing.assert_allclose(stc.data, X, rtol=1e-6,
                               atol=1e-9 * np.abs(X).max())


def test_rank_full_still_removes_the_reference(easy):
    """rank="full" keeps the reference direction in MNE's whitener (with a
    huge gain); the operator projects first, as MNE's inverse operators
    do, so the estimate equals the rank-aware one."""
    import warnings

    fwd, evoked, _, cov = easy
    kw = dict(model="cb", dtype="float64", return_noise_cov=True,
              verbose=False)
    stc, noise = apply_unfolded_sbl(evoked, fwd, cov, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MNE: rank-deficient covariance
        op = make_unfolded_sbl_operator(evoked.info, fwd, cov, rank="full",
                                        verbose=False)
    assert "data rank 63" in repr(op)
    stc_full, noise_full = apply_unfolded_sbl(evoked, op, None, **kw)
    np.testing.assert_allclose(stc_full.data, stc.data, rtol=1e-5,
                               atol=1e-6 * np.abs(stc.data).max())
    np.testing.assert_allclose(noise_full["data"], noise["data"], rtol=1e-5)


def test_extra_ssp_projector_is_a_second_null_direction(easy):
    """An SSP projector on top of the average reference removes one more
    direction: the operator solves in the 62-dimensional rest, and whatever
    the data hold along the projector's vector leaves the estimate alone."""
    fwd, evoked, _, cov = easy
    rng = np.random.default_rng(7)
    v = rng.standard_normal(len(evoked.ch_names))
    v -= v.mean()
    v /= np.linalg.norm(v)
    proj = mne.Projection(data=dict(nrow=1, ncol=len(v), row_names=None,
                                    col_names=evoked.ch_names, data=v[None]),
                          kind=1, desc="test-ssp", active=False,
                          explained_var=None)
    ev = evoked.copy().add_proj([proj])
    assert len(evoked.info["projs"]) == 1  # the fixture is untouched
    cov2 = cov.copy()
    cov2["projs"] = list(ev.info["projs"])
    op = make_unfolded_sbl_operator(ev.info, fwd, cov2, verbose=False)
    assert "data rank 62" in repr(op)
    kw = dict(model="cb", dtype="float64", return_noise_cov=True,
              verbose=False)
    stc, noise = apply_unfolded_sbl(ev, op, None, **kw)
    ev_more = ev.copy()
    ev_more.data = ev.data + np.outer(v, rng.standard_normal(ev.data.shape[1])
                                      ) * 5 * np.abs(ev.data).max()
    stc2, noise2 = apply_unfolded_sbl(ev_more, op, None, **kw)
    np.testing.assert_allclose(stc2.data, stc.data, rtol=1e-6,
                               atol=1e-8 * np.abs(stc.data).max())
    ratio = noise["data"] / cov["data"]
    assert 0.5 < np.median(ratio) < 2 and ratio.min() > 0.05


def test_epochs_batched_equals_one_by_one(easy):
    fwd, evoked, _, cov = easy
    rng = np.random.default_rng(2)
    data = evoked.data[None] + rng.standard_normal((3,) + evoked.data.shape) * 3e-7
    epochs = mne.EpochsArray(data, evoked.info, tmin=evoked.times[0],
                             verbose=False)  # keeps the average reference
    stcs, covs = apply_unfolded_sbl_epochs(epochs, fwd, cov, model="cb",
                                           return_noise_cov=True, batch_size=2,
                                           dtype="float64", verbose=False)
    assert len(stcs) == 3 and len(covs) == 3  # two passes: 2 + 1 epochs
    with pytest.raises(ValueError, match="batch_size"):
        apply_unfolded_sbl_epochs(epochs, fwd, cov, model="cb", batch_size=0,
                                  verbose=False)
    for k in range(3):
        ev = mne.EvokedArray(data[k], evoked.info, tmin=evoked.times[0], nave=1)
        single = apply_unfolded_sbl(ev, fwd, cov, model="cb", dtype="float64",
                                    verbose=False)
        np.testing.assert_allclose(stcs[k].data, single.data, rtol=1e-7,
                                   atol=1e-9 * np.abs(single.data).max())


def test_prepared_operator_equals_direct_call(easy):
    """An operator made once gives the same estimates as the one-shot call,
    for evoked and epochs, and refuses data it was not made for."""
    fwd, evoked, _, cov = easy
    op = make_unfolded_sbl_operator(evoked.info, fwd, cov, verbose=False)
    assert isinstance(op, UnfoldedSBLOperator)
    assert "64 channels (eeg)" in repr(op) and "data rank 63" in repr(op)
    kw = dict(model="cb", dtype="float64", verbose=False)
    direct = apply_unfolded_sbl(evoked, fwd, cov, **kw)
    for _ in range(2):  # reusable
        stc = apply_unfolded_sbl(evoked, op, None, **kw)
        np.testing.assert_array_equal(stc.data, direct.data)
    epochs = mne.EpochsArray(evoked.data[None].repeat(2, 0), evoked.info,
                             tmin=evoked.times[0], verbose=False)
    stcs = apply_unfolded_sbl_epochs(epochs, op, None, **kw)
    np.testing.assert_allclose(stcs[1].data, direct.data, rtol=1e-10,
                               atol=1e-12 * np.abs(direct.data).max())
    with pytest.raises(ValueError, match="noise_cov=None"):
        apply_unfolded_sbl(evoked, op, cov, **kw)
    with pytest.raises(ValueError, match="noise_cov is required"):
        apply_unfolded_sbl(evoked, fwd, None, **kw)
    bad = evoked.copy()
    bad.info["bads"] = [bad.ch_names[5]]
    with pytest.raises(ValueError, match="mark as bad"):
        apply_unfolded_sbl(bad, op, None, **kw)
    # an operator made without that channel runs on the same data
    op_bad = make_unfolded_sbl_operator(bad.info, fwd, cov, verbose=False)
    assert len(op_bad.ch_names) == 63
    stc = apply_unfolded_sbl(evoked, op_bad, None, **kw)
    np.testing.assert_array_equal(
        stc.data, apply_unfolded_sbl(bad, fwd, cov, **kw).data)


def test_trajectory_with_operator(tiny_forward):
    """unfolded_sbl_trajectory takes an operator as apply_unfolded_sbl does,
    gives the same trajectory as with the forward and covariance, and its
    last layer's sources are apply_unfolded_sbl's estimate."""
    fwd, _ = tiny_forward
    evoked, _, cov = simulate_evoked(fwd, EASY, seed=1, verbose=False)
    op = make_unfolded_sbl_operator(evoked.info, fwd, cov, verbose=False)
    for learn_noise in (True, False):
        kw = dict(model="cb", n_layers=8, learn_noise=learn_noise,
                  verbose=False)
        traj = unfolded_sbl_trajectory(evoked, op, None, return_sources=True,
                                       **kw)
        direct = unfolded_sbl_trajectory(evoked, fwd, cov, **kw)
        assert traj["model"] == "cb" and traj["note"] is None
        assert len(traj["cost"]) == 8 and len(traj["X"]) == 8
        for key in ("cost", "gamma_change", "lam_change"):
            np.testing.assert_allclose(traj[key], direct[key], rtol=1e-10)
        stc = apply_unfolded_sbl(evoked, op, None, dtype="float64", **kw)
        np.testing.assert_allclose(traj["X"][-1], stc.data, rtol=1e-6,
                                   atol=1e-9 * np.abs(stc.data).max())
    with pytest.raises(ValueError, match="noise_cov=None"):
        unfolded_sbl_trajectory(evoked, op, cov, model="cb")


def test_free_orientation_forward_is_converted(tiny_forward):
    fwd_free, info = tiny_forward
    evoked, _, cov = simulate_evoked(fwd_free, EASY, seed=0, verbose=False)
    stc = apply_unfolded_sbl(evoked, fwd_free, cov, model="cb", verbose=False)
    fixed = mne.convert_forward_solution(fwd_free, surf_ori=True, force_fixed=True,
                                         use_cps=True, verbose=False)
    stc2 = apply_unfolded_sbl(evoked, fixed, cov, model="cb", verbose=False)
    assert stc.data.shape[0] == fixed["nsource"]
    np.testing.assert_allclose(stc.data, stc2.data, rtol=1e-5,
                               atol=1e-6 * np.abs(stc2.data).max())


def test_network_instance_and_float32(easy):
    fwd, evoked, _, cov = easy
    net = UnfoldedSBL(25, "deep-cb", True)  # untrained == classical
    a = apply_unfolded_sbl(evoked, fwd, cov, model=net, verbose=False)
    b = apply_unfolded_sbl(evoked, fwd, cov, model="cb", dtype="float64",
                           verbose=False)
    np.testing.assert_allclose(a.data, b.data, rtol=1e-3,
                               atol=1e-3 * np.abs(b.data).max())


# --------------------------------------------------------------------------
# bad input gets a clear error


def test_error_channel_mismatch(easy):
    fwd, evoked, _, cov = easy
    # (MNE's copies share projector objects: rebuild the projector)
    ev = evoked.copy().del_proj()
    ev.rename_channels({ev.ch_names[0]: "XYZ1"})
    ev.set_eeg_reference(projection=True, verbose=False)
    with pytest.raises(ValueError, match="missing from the forward.*XYZ1"):
        apply_unfolded_sbl(ev, fwd, cov, model="cb")
    cv = mne.Covariance(cov["data"][1:], cov["names"][1:], [], cov["projs"], 1)
    with pytest.raises(ValueError, match="missing from the noise covariance"):
        apply_unfolded_sbl(evoked, fwd, cv, model="cb")
    # marking the channel bad is the documented fix
    ev.info["bads"] = ["XYZ1"]
    apply_unfolded_sbl(ev, fwd, cov, model="cb", verbose=False)


def test_error_no_average_reference(easy):
    fwd, evoked, _, cov = easy
    ev = evoked.copy().del_proj()
    with pytest.raises(ValueError, match="average reference"):
        apply_unfolded_sbl(ev, fwd, cov, model="cb")


def test_error_unmodelled_channels_and_volume(easy, tiny_forward):
    fwd, evoked, _, cov = easy
    info = mne.create_info(["MEG 001", "MEG 002"], 100.0, "mag")
    ev = mne.EvokedArray(np.ones((2, 10)), info)
    with pytest.raises(ValueError, match="missing from the forward"):
        apply_unfolded_sbl(ev, fwd, cov, model="cb")  # MEG data, EEG forward
    stim = mne.EvokedArray(np.ones((1, 10)), mne.create_info(1, 100.0, "stim"))
    with pytest.raises(ValueError, match="no good MEG or EEG"):
        apply_unfolded_sbl(stim, fwd, cov, model="cb")
    vol = fwd.copy()
    vol["src"][0]["type"] = "vol"
    with pytest.raises(ValueError, match="loose=1"):
        apply_unfolded_sbl(evoked, vol, cov, model="cb")


def test_error_nan_and_bad_cov(easy):
    fwd, evoked, _, cov = easy
    ev = evoked.copy()
    ev.data[3, 5] = np.nan
    with pytest.raises(ValueError, match="NaN/Inf"):
        apply_unfolded_sbl(ev, fwd, cov, model="cb")
    neg = mne.Covariance(-cov["data"], cov["names"], [], cov["projs"], 1)
    with pytest.raises(ValueError, match="non-positive"):
        apply_unfolded_sbl(evoked, fwd, neg, model="cb")
    full = np.diag(cov["data"]).copy()
    full[0, 0] = -full[0, 0] * 100
    with pytest.raises(ValueError, match="not positive semi-definite"):
        apply_unfolded_sbl(evoked, fwd, mne.Covariance(full, cov["names"], [],
                                                       cov["projs"], 1),
                           model="cb")


def test_error_models_and_devices(easy, tmp_path):
    fwd, evoked, _, cov = easy
    with pytest.raises(ValueError, match="Unknown model 'champagne'"):
        apply_unfolded_sbl(evoked, fwd, cov, model="champagne")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            apply_unfolded_sbl(evoked, fwd, cov, model="cb", device="cuda")
    with pytest.raises(ValueError, match="learn_noise=False"):
        apply_unfolded_sbl(evoked, fwd, cov, model=UnfoldedSBL(5, "cb", False))
    with pytest.raises(ValueError, match="return_noise_cov=True needs"):
        apply_unfolded_sbl(evoked, fwd, cov, model="cb", learn_noise=False,
                           return_noise_cov=True)
    with pytest.raises(ValueError, match="only possible with model='cb'"):
        apply_unfolded_sbl(evoked, fwd, cov, model=UnfoldedSBL(5, "deep-cb"),
                           n_layers=3)
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not a weights file")
    with pytest.raises(ValueError, match="corrupted or not a safetensors"):
        apply_unfolded_sbl(evoked, fwd, cov, model=bad)
    with pytest.raises(TypeError, match="evoked"):
        apply_unfolded_sbl(evoked.data, fwd, cov, model="cb")


def test_bundled_bias_cb_on_its_geometry_only(easy):
    """The bundled Bias CB (γ,λ) is the trained ``bias-cb_joint2`` shrunk by
    0.75 (its model card), runs on the training cap on ico3 and finds the
    sources there as convex bounding does; one bad channel is another
    geometry and is refused with the fix; no source-only Bias CB ships."""
    from safetensors.torch import load_file

    from mne_unfolded_sbl.core.weights import fetch_weights, read_metadata

    fname = fetch_weights("bias-cb_joint")
    trained = load_file(str(Path(__file__).parents[1] / "training_state"
                            / "bias-cb_joint2" / "bias-cb_joint.safetensors"))
    bundled = load_file(str(fname))
    assert set(bundled) == set(trained) and len(bundled) == 48
    for k, v in trained.items():
        torch.testing.assert_close(bundled[k], 0.75 * v, rtol=1e-6, atol=0)
    assert read_metadata(fname)[1]["shrinkage"]["alpha"] == 0.75

    fwd, evoked, stc_true, cov = easy
    stc = apply_unfolded_sbl(evoked, fwd, cov, model="bias-cb", verbose=False)
    cb = apply_unfolded_sbl(evoked, fwd, cov, model="cb", verbose=False)
    # the offsets act, a little at 25 dB (8e-4 of the peak; float32 round-off
    # is below 1e-6)
    assert np.abs(stc.data - cb.data).max() > 1e-4 * np.abs(cb.data).max()
    p_true, p_est = _power(stc_true.data), _power(stc.data)
    pos = _pos(fwd)
    for c in np.argsort(p_true)[-2:]:
        d = np.linalg.norm(pos[np.argsort(p_est)[-4:]] - pos[c], axis=1)
        assert d.min() < 0.015
    # the cap's channels in another order: the sensor offsets follow the
    # channel names (same sources, same noise per channel)
    kw = dict(model="bias-cb", dtype="float64", return_noise_cov=True,
              verbose=False)
    ref, noise = apply_unfolded_sbl(evoked, fwd, cov, **kw)
    rev = evoked.copy().reorder_channels(evoked.ch_names[::-1])
    out, noise_rev = apply_unfolded_sbl(rev, fwd, cov, **kw)
    np.testing.assert_allclose(out.data, ref.data, rtol=0,
                               atol=1e-9 * np.abs(ref.data).max())
    lam = dict(zip(noise.ch_names, noise.data))
    np.testing.assert_allclose(noise_rev.data,
                               [lam[c] for c in noise_rev.ch_names], rtol=1e-9)
    bad = evoked.copy()
    bad.info["bads"] = [bad.ch_names[5]]
    with pytest.raises(ValueError, match=r"'train-64' cap \(64 channels\) on "
                                         r"the fsaverage ico3.*model='deep-cb'"):
        apply_unfolded_sbl(bad, fwd, cov, model="bias-cb", verbose=False)
    with pytest.raises(ValueError, match=r"'bias-cb_source'.*registered with "
                                         r"learn_noise=True \(bias-cb_joint\)"):
        apply_unfolded_sbl(evoked, fwd, cov, model="bias-cb", learn_noise=False,
                           verbose=False)
