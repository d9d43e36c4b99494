"""Failures an adversarial user found in the public API, one test each.

Every test here failed on the code before its fix: the call crashed with
an unrelated error, changed the caller's objects, or returned a silently
wrong (or silently empty) estimate.
"""

import copy
import pickle
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
import mne
from safetensors.torch import save_file

from mne_unfolded_sbl import (apply_unfolded_sbl, apply_unfolded_sbl_epochs,
                              make_unfolded_sbl_operator,
                              unfolded_sbl_trajectory)
from mne_unfolded_sbl.core.network import UnfoldedSBL
from mne_unfolded_sbl.core.simulator import SimulationConfig
from mne_unfolded_sbl.core.weights import load_model, load_weights, save_model
from mne_unfolded_sbl.simulation import simulate_evoked

EASY = SimulationConfig(n_sources=(2, 2), spread=0.0, snr_db=(15.0, 15.0),
                        n_times=100)


@pytest.fixture(scope="module")
def tiny(tiny_forward):
    """Simulated evoked (nave=1, its noise drawn from ``cov``) on the tiny
    32-channel forward."""
    fwd, _ = tiny_forward
    fwd = mne.convert_forward_solution(fwd, surf_ori=True, force_fixed=True,
                                       use_cps=True, verbose=False)
    evoked, _, cov = simulate_evoked(fwd, EASY, seed=0, verbose=False)
    return fwd, evoked, cov


def _perturbed(net, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return net


def _snapshot(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _assert_unchanged(net, snap, dtype, training):
    assert net.training is training
    assert all(m.training is training for m in net.modules())
    for k, v in net.state_dict().items():
        assert v.dtype == dtype and v.device.type == "cpu", k
        assert torch.equal(v, snap[k]), k


# --------------------------------------------------------------------------
# F1: threads with different dtypes share the bundled (cached) network


def test_f1_threads_with_different_dtypes(tiny):
    fwd, evoked, cov = tiny
    op = make_unfolded_sbl_operator(evoked.info, fwd, cov, verbose=False)
    kw = dict(model="deep-cb", verbose=False)
    ref = {dt: apply_unfolded_sbl(evoked, op, None, dtype=dt, **kw).data
           for dt in ("float32", "float64")}
    dtypes = ["float32", "float64"] * 12
    with ThreadPoolExecutor(max_workers=6) as ex:
        futures = [ex.submit(apply_unfolded_sbl, evoked, op, None, dtype=dt,
                             **kw) for dt in dtypes]
        stcs = [f.result() for f in futures]  # re-raises a thread's error
    for dt, stc in zip(dtypes, stcs):
        np.testing.assert_allclose(stc.data, ref[dt],
                                   rtol=1e-4 if dt == "float32" else 1e-9,
                                   atol=1e-6 * np.abs(ref[dt]).max())
    # and the float64 run really ran in float64 (not a float32 network)
    assert not np.array_equal(ref["float32"], ref["float64"])


# --------------------------------------------------------------------------
# F2: a network passed as model= is left as it was


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_f2_user_network_is_not_modified(tiny, dtype):
    fwd, evoked, cov = tiny
    net = _perturbed(UnfoldedSBL(4, "deep-cb", True))
    torch_dtype = torch.float64 if dtype == "float32" else torch.float32
    net = net.to(torch_dtype).train()  # the other precision, training mode
    snap = _snapshot(net)
    apply_unfolded_sbl(evoked, fwd, cov, model=net, dtype=dtype, verbose=False)
    _assert_unchanged(net, snap, torch_dtype, True)
    epochs = mne.EpochsArray(evoked.data[None].repeat(2, 0), evoked.info,
                             verbose=False)
    apply_unfolded_sbl_epochs(epochs, fwd, cov, model=net, dtype=dtype,
                              verbose=False)
    _assert_unchanged(net, snap, torch_dtype, True)
    unfolded_sbl_trajectory(evoked, fwd, cov, model=net, verbose=False)
    _assert_unchanged(net, snap, torch_dtype, True)
    # an eval-mode network is not switched to training either
    net.eval()
    apply_unfolded_sbl(evoked, fwd, cov, model=net, dtype=dtype, verbose=False)
    _assert_unchanged(net, snap, torch_dtype, False)


# --------------------------------------------------------------------------
# F3: known noise at or above the data power gives a near-zero map


def test_f3_known_noise_above_data_power(tiny):
    fwd, evoked, cov = tiny
    kw = dict(model="cb", learn_noise=False, verbose=False)
    # an average of many low-SNR trials left at EvokedArray's default nave=1
    avg = evoked.copy()
    avg.data = evoked.data / 30.0
    with pytest.raises(ValueError, match=r"nave=1.*evoked\.nave.*learn_noise"
                                         r"=True"):
        apply_unfolded_sbl(avg, fwd, cov, **kw)
    avg.nave = 1000  # the documented fix
    with _no_warning():
        stc = apply_unfolded_sbl(avg, fwd, cov, **kw)
    assert np.abs(stc.data).max() > 1e-10  # A.m: a real map
    # a covariance in µV² for data in V
    cov_uv = cov.copy()
    cov_uv["data"] = cov["data"] * 1e12
    with pytest.raises(ValueError, match=r"units.*V²"):
        apply_unfolded_sbl(evoked, fwd, cov_uv, **kw)
    # learn_noise=True is the other fix: it does not need the noise level
    stc = apply_unfolded_sbl(evoked, fwd, cov_uv, model="cb", verbose=False)
    assert np.abs(stc.data).max() > 1e-10
    # the same for single trials
    epochs = mne.EpochsArray(evoked.data[None].repeat(3, 0), evoked.info,
                             verbose=False)
    with pytest.raises(ValueError, match="units"):
        apply_unfolded_sbl_epochs(epochs, fwd, cov_uv, **kw)


def test_f3_data_at_the_noise_level_warns(tiny):
    """Noise-only data with the right noise: every source is pruned, which
    is said, not returned silently."""
    fwd, evoked, cov = tiny
    rng = np.random.default_rng(5)
    noise = mne.EvokedArray(
        rng.standard_normal(evoked.data.shape) * np.sqrt(cov["data"])[:, None],
        evoked.info, nave=1, verbose=False)
    with pytest.warns(RuntimeWarning, match="(?s)data power.*noise.*nave"):
        stc = apply_unfolded_sbl(noise, fwd, cov, model="cb",
                                 learn_noise=False, verbose=False)
    assert isinstance(stc, mne.SourceEstimate)


class _no_warning:
    def __enter__(self):
        import warnings
        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("error", RuntimeWarning)

    def __exit__(self, *args):
        return self._cm.__exit__(*args)


# --------------------------------------------------------------------------
# F4: an operator reused on data with other projectors


def _ssp(evoked, seed):
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(len(evoked.ch_names))
    v -= v.mean()
    v /= np.linalg.norm(v)
    return mne.Projection(data=dict(nrow=1, ncol=len(v), row_names=None,
                                    col_names=evoked.ch_names, data=v[None]),
                          kind=1, desc=f"test-ssp-{seed}", active=False,
                          explained_var=None)


def test_f4_operator_refuses_other_projectors(tiny):
    fwd, evoked, cov = tiny
    kw = dict(model="cb", verbose=False)
    op = make_unfolded_sbl_operator(evoked.info, fwd, cov, verbose=False)
    with_ssp = evoked.copy().add_proj([_ssp(evoked, 1)])
    match = r"(?s)projector.*test-ssp-1.*make_unfolded_sbl_operator"
    with pytest.raises(ValueError, match=match):
        apply_unfolded_sbl(with_ssp, op, None, **kw)
    epochs = mne.EpochsArray(with_ssp.data[None], with_ssp.info, verbose=False)
    with pytest.raises(ValueError, match=match):
        apply_unfolded_sbl_epochs(epochs, op, None, **kw)
    with pytest.raises(ValueError, match=match):
        unfolded_sbl_trajectory(with_ssp, op, None, **kw)
    # the other way round: the operator has a projector the data lack
    op_ssp = make_unfolded_sbl_operator(with_ssp.info, fwd, cov,
                                        verbose=False)
    with pytest.raises(ValueError, match=match):
        apply_unfolded_sbl(evoked, op_ssp, None, **kw)
    # another projector with the same description is still another one
    other = evoked.copy().add_proj([_ssp(evoked, 2)])
    other.info["projs"][-1]["desc"] = "test-ssp-1"
    with pytest.raises(ValueError, match="projector"):
        apply_unfolded_sbl(other, op_ssp, None, **kw)
    # the fix named by the error
    op_fixed = make_unfolded_sbl_operator(with_ssp.info, fwd, cov,
                                          verbose=False)
    stc = apply_unfolded_sbl(with_ssp, op_fixed, None, **kw)
    np.testing.assert_allclose(
        stc.data, apply_unfolded_sbl(with_ssp, fwd, cov, **kw).data,
        rtol=1e-6, atol=1e-9 * np.abs(stc.data).max())
    # an applied (active) projector is the same projector
    applied = with_ssp.copy().apply_proj()
    apply_unfolded_sbl(applied, op_fixed, None, **kw)


# --------------------------------------------------------------------------
# F5: n_layers is a positive integer


@pytest.mark.parametrize("bad, err, match", [
    (0, ValueError, "n_layers must be >= 1"),
    (-3, ValueError, "n_layers must be >= 1"),
    (2.9, TypeError, "n_layers must be an integer"),
    (True, TypeError, "n_layers must be an integer"),
    ("5", TypeError, "n_layers must be an integer"),
])
def test_f5_n_layers_validated(tiny, bad, err, match):
    fwd, evoked, cov = tiny
    with pytest.raises(err, match=match):
        load_model("cb", n_layers=bad)
    with pytest.raises(err, match=match):
        load_model("deep-cb", n_layers=bad)
    with pytest.raises(err, match=match):
        UnfoldedSBL(bad, "cb")
    with pytest.raises(err, match=match):
        apply_unfolded_sbl(evoked, fwd, cov, model="cb", n_layers=bad)
    epochs = mne.EpochsArray(evoked.data[None], evoked.info, verbose=False)
    with pytest.raises(err, match=match):
        apply_unfolded_sbl_epochs(epochs, fwd, cov, model="cb", n_layers=bad)
    with pytest.raises(err, match=match):
        unfolded_sbl_trajectory(evoked, fwd, cov, model="cb", n_layers=bad)


def test_f5_valid_n_layers():
    assert load_model("cb", n_layers=None).n_layers == 25
    assert load_model("cb", n_layers=np.int64(3)).n_layers == 3
    assert load_model("deep-cb", n_layers=25).n_layers == 25


# --------------------------------------------------------------------------
# F9: clear errors for wrong inputs


def test_f9a_covariance_as_array_or_path(tiny, tmp_path):
    fwd, evoked, cov = tiny
    match = r"(?s)noise_cov must be an instance of mne\.Covariance.*mne\.read_cov"
    for bad in (np.diag(cov["data"]), str(tmp_path / "x-cov.fif"),
                tmp_path / "x-cov.fif"):
        with pytest.raises(TypeError, match=match):
            apply_unfolded_sbl(evoked, fwd, bad, model="cb")
        with pytest.raises(TypeError, match=match):
            make_unfolded_sbl_operator(evoked.info, fwd, bad)


@pytest.mark.parametrize("nave", [0, -2, np.nan])
def test_f9b_bad_nave(tiny, nave):
    fwd, evoked, cov = tiny
    ev = evoked.copy()
    ev.nave = nave
    for learn_noise in (False, True):
        with pytest.raises(ValueError, match=r"evoked\.nave must be > 0"):
            apply_unfolded_sbl(ev, fwd, cov, model="cb",
                               learn_noise=learn_noise)


def test_f9c_non_finite_weights(tiny, tmp_path):
    fwd, evoked, cov = tiny
    net = UnfoldedSBL(4, "deep-cb", True)
    with torch.no_grad():
        net.layers[1].source_correction.net[0].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"(?s)network passed as model.*"
                                         r"non-finite.*layers\.1\."):
        apply_unfolded_sbl(evoked, fwd, cov, model=net)
    fname = save_model(net, tmp_path / "diverged.safetensors")
    match = r"(?s)diverged\.safetensors.*non-finite.*layers\.1\."
    with pytest.raises(ValueError, match=match):
        load_weights(fname)
    with pytest.raises(ValueError, match=match):
        apply_unfolded_sbl(evoked, fwd, cov, model=fname)


def test_f9d_foreign_weights(tmp_path):
    import json

    # tensors of a 4-layer Deep Attn CB under the config of a Deep CB
    attn = UnfoldedSBL(4, "deep-attn-cb", True)
    deep = UnfoldedSBL(4, "deep-cb", True)
    fname = tmp_path / "foreign.safetensors"
    save_file({k: v.contiguous() for k, v in attn.state_dict().items()},
              str(fname), metadata={"config": json.dumps(deep.config)})
    with pytest.raises(ValueError, match=r"(?s)foreign\.safetensors.*"
                                         r"deep-cb.*missing.*unexpected"):
        load_weights(fname)
    # the right names with other shapes (hidden width 16, config says 32)
    small = UnfoldedSBL(4, "deep-cb", True, hidden=16)
    fname = tmp_path / "shapes.safetensors"
    save_file({k: v.contiguous() for k, v in small.state_dict().items()},
              str(fname), metadata={"config": json.dumps(deep.config)})
    with pytest.raises(ValueError, match=r"(?s)shapes\.safetensors.*hidden.*"
                                         r"shape.*\(16, 5\).*\(32, 5\)"):
        load_weights(fname)
    # a config from another version of the package
    fname = tmp_path / "future.safetensors"
    save_model(deep, fname)
    save_file({k: v.contiguous() for k, v in deep.state_dict().items()},
              str(fname), metadata={"config": json.dumps(
                  dict(deep.config, n_experts=4))})
    with pytest.raises(ValueError, match=r"(?s)future\.safetensors.*"
                                         r"n_experts"):
        load_weights(fname)


def test_f9e_nan_epoch_is_named(tiny):
    fwd, evoked, cov = tiny
    data = evoked.data[None].repeat(40, 0).copy()
    data[17, 3, 5] = np.nan
    data[31, :, 2] = np.inf
    epochs = mne.EpochsArray(data, evoked.info, proj=False, verbose=False)
    with pytest.raises(ValueError, match=r"(?s)epoch.*\[17, 31\].*"
                                         r"epochs\.drop\(\[17, 31\]\)"):
        apply_unfolded_sbl_epochs(epochs, fwd, cov, model="cb")
    epochs.drop([17, 31], verbose=False)  # the fix named
    assert len(apply_unfolded_sbl_epochs(epochs, fwd, cov, model="cb",
                                         verbose=False)) == 38


# --------------------------------------------------------------------------
# F10: the estimate stays a low-rank (kernel, sensor data) pair


def test_f10_repr_keeps_the_kernel(tiny, tmp_path):
    fwd, evoked, cov = tiny
    stc = apply_unfolded_sbl(evoked, fwd, cov, model="cb", verbose=False)
    assert isinstance(stc, mne.SourceEstimate)
    assert stc._data is None and stc._kernel is not None
    text = repr(stc)
    assert stc._data is None and stc._kernel is not None  # not formed
    n_src = sum(len(v) for v in stc.vertices)
    assert text.startswith("<SourceEstimate | ")
    for part in (f"{n_src} vertices", "subject : tiny", "tmin : 0.0 (ms)",
                 f"data shape : {stc.shape}", "kernel"):
        assert part in text, (part, text)
    # MNE's behaviour is kept and gives sensible types
    cropped = stc.copy().crop(0.1, 0.5)
    assert cropped._data is None and cropped.shape[1] == 41
    assert "data shape : (324, 41)" in repr(cropped)
    for other in (stc.copy(), cropped, pickle.loads(pickle.dumps(stc)),
                  copy.deepcopy(stc)):
        assert isinstance(other, mne.SourceEstimate)
        assert repr(other).startswith("<SourceEstimate | ")
        assert other._data is None  # still the kernel
    assert stc._data is None
    np.testing.assert_allclose(cropped.data, stc.data[:, 10:51])
    total = stc.copy() + stc  # MNE forms the data for arithmetic
    assert isinstance(total, mne.SourceEstimate)
    np.testing.assert_allclose(total.data, 2 * stc.data)
    assert stc.mean().data.shape == (n_src, 1)
    stc.save(tmp_path / "est", overwrite=True, verbose=False)
    back = mne.read_source_estimate(tmp_path / "est")
    assert type(back) is mne.SourceEstimate
    np.testing.assert_allclose(back.data, stc.data, rtol=1e-6)
    # once formed, MNE's own repr (with the size of the data)
    assert stc._data is not None
    mne_repr = mne.SourceEstimate.__repr__(stc)
    assert repr(stc).split(" | ", 1)[1] == mne_repr.split(" | ", 1)[1]
    assert repr(stc).startswith("<SourceEstimate | ")


def test_learned_model_warns_outside_its_training_geometry(tiny):
    """A learned network trained on other geometries warns and names 'cb'."""
    fwd, evoked, cov = tiny
    net = UnfoldedSBL(4, "deep-cb", True)
    n_src = fwd["sol"]["data"].shape[1]
    net.training_domain = dict(n_sensors=[128, 128], n_sources=[n_src, n_src])
    with pytest.warns(RuntimeWarning, match=r"model='cb'.*|32 sensors"):
        apply_unfolded_sbl(evoked, fwd, cov, model=net, verbose=False)
    net.training_domain = dict(n_sensors=[32, 64], n_sources=[n_src, n_src])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        apply_unfolded_sbl(evoked, fwd, cov, model=net, verbose=False)


def _bias_net(tmp_path, n_sources, n_sensors, learn_noise=True, **train):
    """A Bias CB saved with a training record and loaded back."""
    net = UnfoldedSBL(3, "bias-cb", learn_noise, n_sources=n_sources,
                      n_sensors=n_sensors)
    card = {"train_config": train} if train else None
    return load_model(save_model(net, tmp_path / "bias.safetensors", card=card),
                      learn_noise=learn_noise)


def _ico_src(k, subject="fsaverage"):
    n = 10 * 4 ** k + 2
    return [dict(vertno=np.arange(n), subject_his_id=subject)] * 2


@pytest.mark.parametrize("learn_noise", [True, False])
def test_bias_cb_is_tied_to_its_training_geometry(tmp_path, learn_noise):
    """Bias CB runs only on its training cap (same channels, any order) and
    source space (fsaverage, same ico spacing); the error names what differs
    and the models that transfer. Other networks are not checked."""
    from mne_unfolded_sbl._checks import check_tied_geometry
    from mne_unfolded_sbl.core.weights import tied_geometry
    from mne_unfolded_sbl.datasets import TRAIN_CH_NAMES

    net = _bias_net(tmp_path, 1284, 64, learn_noise, data_mode="bank",
                    bank_shards=["train-64/ico3"])
    geom = tied_geometry(net)
    assert (geom["montage"], geom["spacing"], geom["n_sources"]) == (
        "train-64", "ico3", 1284)
    assert geom["n_sensors"] == (64 if learn_noise else None)
    names = list(TRAIN_CH_NAMES)
    check_tied_geometry(net, names, _ico_src(3))  # its own geometry
    # the cap's channels in another order: the sensor offsets follow the
    # names (the permutation to apply), none for a source-only model
    order = check_tied_geometry(net, names[::-1], _ico_src(3))
    if learn_noise:
        np.testing.assert_array_equal(order, np.arange(64)[::-1])
    else:
        assert order is None
    cases = [
        (names[1:], _ico_src(3), rf"1 of its channel\(s\) missing or bad "
                                 rf"\(\['{names[0]}'\]\)"),
        (names[:-1] + ["X1"], _ico_src(3), r"channel\(s\) not in it \(\['X1'\]"),
        (names, _ico_src(3, "sample"), "1284 sources of subject 'sample'"),
        (names, _ico_src(4), "a source space of 5124 sources"),
    ]
    for ch_names, src, match in cases:
        with pytest.raises(ValueError, match=match) as err:
            check_tied_geometry(net, ch_names, src)
        assert "'train-64' cap (64 channels) on the fsaverage ico3" in str(err.value)
        assert "model='deep-cb'" in str(err.value)
    # the solver's unknowns: the sources (point model) or atoms (multi-scale)
    check_tied_geometry(net, names, _ico_src(3), n_unknowns=1284)
    with pytest.raises(ValueError, match="3000 unknowns"):
        check_tied_geometry(net, names, _ico_src(3), n_unknowns=3000)
    with pytest.raises(ValueError) as err:  # another source space, point model
        check_tied_geometry(net, names, _ico_src(4), n_unknowns=5124)
    assert "5124 sources" in str(err.value)
    assert "unknowns" not in str(err.value)  # the atoms are not the cause
    # another training record: several geometries record none, the sizes
    # alone are checked
    net = _bias_net(tmp_path, 1284, 64, learn_noise, data_mode="bank",
                    bank_shards=["train-64/ico3", "1020-32/ico3"])
    assert tied_geometry(net)["montage"] is None
    check_tied_geometry(net, names[::-1], _ico_src(3, "sample"))
    with pytest.raises(ValueError, match="5124 sources"):
        check_tied_geometry(net, names, _ico_src(4))
    deep = UnfoldedSBL(3, "deep-cb", learn_noise)
    assert tied_geometry(deep) is None
    check_tied_geometry(deep, ["Cz"], _ico_src(4, "sample"))


def test_bias_cb_on_another_subject_refused_by_the_api(tiny, tmp_path):
    """apply_unfolded_sbl refuses a Bias CB of the fsaverage source space on
    another subject's forward with the same numbers of channels and
    sources; without a training record it runs (sizes match)."""
    fwd, evoked, cov = tiny
    n_src = sum(len(s["vertno"]) for s in fwd["src"])
    n_ch = len(evoked.ch_names)
    net = _bias_net(tmp_path, n_src, n_ch, data_mode="stream",
                    montage="biosemi32", spacing="ico2")
    with pytest.raises(ValueError, match=f"{n_src} sources of subject 'tiny'"
                       r".*model='deep-cb'"):
        apply_unfolded_sbl(evoked, fwd, cov, model=net, verbose=False)
    stc = apply_unfolded_sbl(evoked, fwd, cov,
                             model=_bias_net(tmp_path, n_src, n_ch),
                             verbose=False)
    assert np.isfinite(stc.data).all()
    # the multi-scale model's atoms are not the sources of the offsets
    with pytest.raises(ValueError, match="multi-scale model's atoms"):
        apply_unfolded_sbl(evoked, fwd, cov, model=_bias_net(tmp_path, n_src, n_ch),
                           source_model="multiscale", verbose=False)
