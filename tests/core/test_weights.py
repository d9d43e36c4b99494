"""Bundled weights: hash-checked loading, stored reference output, errors."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mne_unfolded_sbl.core import weights as pretrained
from mne_unfolded_sbl.core.network import UnfoldedSBL
from mne_unfolded_sbl.core.weights import (check_finite_parameters,
                                           fetch_weights, load_model,
                                           load_weights, registry,
                                           resolve_model, save_model)
from mne_unfolded_sbl.core.solver import NullSpace, covariance_statistic

REFERENCE = Path(__file__).parents[1] / "data" / "deep-cb_joint_reference.npz"


def test_registry_lists_bundled_files_with_hashes():
    reg = registry()
    assert "deep-cb_joint" in reg
    for key, entry in reg.items():
        path = fetch_weights(key)
        assert path.is_file() and len(entry["sha256"]) == 64


def test_bundled_weights_reproduce_reference_output():
    ref = np.load(REFERENCE)
    if str(ref["sha256"]) != registry()["deep-cb_joint"]["sha256"]:
        pytest.fail("deep-cb_joint weights changed: regenerate "
                    "tests/data/deep-cb_joint_reference.npz with "
                    "tools/make_weights_reference.py")
    net = load_model("deep-cb", learn_noise=True).double()
    assert net.model == "deep-cb" and net.n_layers == 25 and net.learn_noise
    null = NullSpace.average_reference(ref["L"].shape[0])  # referenced data
    with torch.no_grad():
        out = net(torch.tensor(ref["L"]),
                  covariance_statistic(torch.tensor(ref["Y"])[None]),
                  null_space=null)
    np.testing.assert_allclose(out.gamma[0].numpy(), ref["gamma"], rtol=1e-9,
                               atol=1e-12 * ref["gamma"].max())
    np.testing.assert_allclose(out.lam[0].numpy(), ref["lam"], rtol=1e-9)
    # and the learned corrections are really in use (differs from classical)
    cb = UnfoldedSBL(25, "cb", True).double()
    with torch.no_grad():
        g_cb = cb(torch.tensor(ref["L"]),
                  covariance_statistic(torch.tensor(ref["Y"])[None]),
                  null_space=null).gamma
    assert not np.allclose(g_cb[0].numpy(), ref["gamma"], rtol=1e-3)


def test_corrupted_bundled_file_is_refused(tmp_path, monkeypatch):
    src = pretrained._bundled_dir()
    fake = tmp_path / "bundle"
    shutil.copytree(src, fake)
    entry = json.loads((fake / "registry.json").read_text())["deep-cb_joint"]
    with open(fake / entry["file"], "r+b") as f:  # flip one byte
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    monkeypatch.setattr(pretrained, "_bundled_dir", lambda: fake)
    with pytest.raises(ValueError, match="corrupted or was modified"):
        load_model("deep-cb", learn_noise=True)


def test_unregistered_model_gives_clear_error(monkeypatch):
    """A family without registered weights (here: all six registered but
    one, taken out of the registry) names the missing key."""
    full = registry()
    monkeypatch.setattr(pretrained, "registry", lambda: {
        k: v for k, v in full.items() if k != "deep-attn-cb_source"})
    with pytest.raises(ValueError, match="No pretrained weights named "
                                         "'deep-attn-cb_source'"):
        load_model("deep-attn-cb", learn_noise=False)


def test_save_load_round_trip(tmp_path):
    net = UnfoldedSBL(4, "deep-attn-cb", True)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    fname = save_model(net, tmp_path / "w.safetensors", card={"note": "test"})
    back = load_weights(fname)
    assert back.config == net.config
    for (k, a), (_, b) in zip(net.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), k


def test_resolve_model_falls_back_only_for_bundled_names(tmp_path):
    """A bundled name without weights falls back to "cb" (with a warning);
    a network or file the user chose is never silently replaced."""
    full = registry()
    with pytest.MonkeyPatch.context() as mp, \
            pytest.warns(RuntimeWarning, match="Falling back"):
        mp.setattr(pretrained, "registry", lambda: {
            k: v for k, v in full.items() if k != "deep-attn-cb_source"})
        net, name, note = resolve_model("deep-attn-cb", learn_noise=False)
    assert name == "cb" and net.model == "cb" and note
    with pytest.raises(FileNotFoundError, match="not found"):
        resolve_model(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="learn_noise=True was requested"):
        resolve_model(UnfoldedSBL(3, "deep-cb", False), learn_noise=True)
    with pytest.raises(ValueError, match="n_layers must be >= 1"):
        resolve_model("deep-cb", n_layers=0)
    with pytest.raises(ValueError, match="only possible with model='cb'"):
        resolve_model("deep-cb", n_layers=3)  # not "cb" with 25 layers
    with pytest.raises(TypeError, match="state dict"):
        resolve_model(UnfoldedSBL(3, "cb").state_dict())


def test_check_finite_parameters():
    net = UnfoldedSBL(3, "deep-cb", True)
    check_finite_parameters(net)
    with torch.no_grad():
        net.layers[0].noise_correction.net[2].bias[1] = float("inf")
    with pytest.raises(ValueError, match=r"The network has non-finite.*"
                                         r"layers\.0\.noise_correction"):
        check_finite_parameters(net)


def test_feature_sets_are_versioned_with_the_weights(tmp_path):
    """Files without ``features`` (the first bundled weights) keep the
    absolute features they were trained with; new networks (and the
    bundled Deep CB since the regime-mixture runs) use and
    store the relative ones, and the two give different corrections."""
    import json

    from safetensors.torch import load_file, save_file

    from mne_unfolded_sbl.core.corrections import FEATURE_SETS
    from mne_unfolded_sbl.core.network import UnfoldedSBL
    from mne_unfolded_sbl.core.weights import read_metadata, save_model

    assert load_model("deep-cb", learn_noise=True).config["features"] == "relative"
    net = UnfoldedSBL(3, "deep-cb", True)
    assert net.config["features"] == "relative"
    fname = save_model(net, tmp_path / "new.safetensors")
    assert read_metadata(fname)[0]["features"] == "relative"
    assert load_weights(fname).config["features"] == "relative"
    # a file written before the versioning: config without "features"
    config, card = read_metadata(fname)
    del config["features"]
    save_file(load_file(str(fname)), str(tmp_path / "old.safetensors"),
              metadata={"config": json.dumps(config), "card": json.dumps(card)})
    assert load_weights(tmp_path / "old.safetensors").config["features"] == "absolute"
    s, q, g = torch.randn(3, 2, 50).unbind(0)
    za = FEATURE_SETS["absolute"][0](s, q, g)
    zr = FEATURE_SETS["relative"][0](s, q, g)
    assert za.shape == zr.shape and not torch.allclose(za, zr)
    # relative features: differences within a sample (a common shift of the
    # numerators, denominators and states of all sources changes none but
    # the step feature)
    shifted = FEATURE_SETS["relative"][0](s + 3, q + 3, g + 3)
    torch.testing.assert_close(shifted[..., [0, 1, 3, 4]], zr[..., [0, 1, 3, 4]])
    with pytest.raises(ValueError, match="features must be one of"):
        UnfoldedSBL(3, "deep-cb", True, features="raw")


def _without_config_setting(fname, key, out):
    """A copy of the weights file ``fname`` whose stored config lacks
    ``key``, as files written before that setting existed."""
    from safetensors.torch import load_file, save_file

    from mne_unfolded_sbl.core.weights import read_metadata

    config, card = read_metadata(fname)
    del config[key]
    save_file(load_file(str(fname)), str(out),
              metadata={"config": json.dumps(config), "card": json.dumps(card)})
    return out


def _bias_problem(seed=0, n_sensors=12, n_sources=40, n_times=30):
    rng = np.random.default_rng(seed)
    L = torch.tensor(rng.standard_normal((n_sensors, n_sources)))
    X = np.zeros((n_sources, n_times))
    X[[3, 17]] = rng.standard_normal((2, n_times))
    Y = L.numpy() @ X + 0.3 * rng.standard_normal((n_sensors, n_times))
    return L, covariance_statistic(torch.tensor(Y)[None])


@pytest.mark.parametrize("learn_noise", [True, False])
def test_centered_bias_cannot_shift_all_variances(learn_noise):
    """A centred Bias CB whose offsets are the same for every source (and
    sensor) is exactly the classical solver: a common offset is removed.
    Uncentred, the same offsets change the estimate; centred, offsets that
    differ between sources still act."""
    L, Cy = _bias_problem()
    M, N = L.shape
    noise = None if learn_noise else torch.full((M,), 0.09, dtype=L.dtype)
    ref = UnfoldedSBL(6, "cb", learn_noise).double()(L, Cy, noise).gamma_n

    def run(centered, offsets):
        net = UnfoldedSBL(6, "bias-cb", learn_noise, n_sources=N,
                          n_sensors=M, centered_bias=centered).double()
        with torch.no_grad():
            for name, p in net.named_parameters():
                p.copy_(offsets(p.shape[0]))
        return net(L, Cy, noise).gamma_n

    torch.testing.assert_close(run(True, lambda n: torch.full((n,), 1.5)), ref,
                               rtol=1e-10, atol=1e-14)
    assert not torch.allclose(run(False, lambda n: torch.full((n,), 1.5)), ref,
                              rtol=1e-3)
    ramp = run(True, lambda n: torch.linspace(-1, 1, n))
    assert not torch.allclose(ramp, ref, rtol=1e-3)


def test_bias_files_without_centered_setting_stay_uncentred(tmp_path):
    """Centring is stored with the weights; files written before the
    setting existed load uncentred, as they were trained."""
    assert not UnfoldedSBL(3, "bias-cb", True, n_sources=40,
                           n_sensors=12).config["centered_bias"]
    net = UnfoldedSBL(3, "bias-cb", True, n_sources=40, n_sensors=12,
                      centered_bias=True)
    assert net.config["centered_bias"] is True
    assert net.layers[0].source_correction.centered
    fname = save_model(net, tmp_path / "new.safetensors")
    assert load_weights(fname).layers[0].source_correction.centered
    old = load_weights(_without_config_setting(
        fname, "centered_bias", tmp_path / "old.safetensors"))
    assert old.config["centered_bias"] is False
    assert not old.layers[0].source_correction.centered
    assert not old.layers[0].noise_correction.centered


def test_average_weights(tmp_path):
    """The weight average is (1 - alpha) a + alpha b parameter by parameter,
    its ends are the inputs, its card names both inputs by sha256, and
    networks of different configs are refused."""
    from mne_unfolded_sbl.core.weights import read_metadata, sha256
    from mne_unfolded_sbl.training.export import average_weights

    nets = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        net = UnfoldedSBL(3, "deep-cb", True)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.1 * torch.randn_like(p))
        nets.append(net)
    a = save_model(nets[0], tmp_path / "a.safetensors", card={"name": "a"})
    b = save_model(nets[1], tmp_path / "b.safetensors", card={"name": "b"})
    for alpha in (0.0, 0.25, 1.0):
        out = average_weights(a, b, alpha, tmp_path / f"avg{alpha}.safetensors")
        avg = load_weights(out).state_dict()
        for k, va in nets[0].state_dict().items():
            vb = nets[1].state_dict()[k]
            torch.testing.assert_close(avg[k], (1 - alpha) * va + alpha * vb,
                                       rtol=1e-6, atol=1e-7)
    card = read_metadata(out)[1]
    assert card["name"] == "b"
    assert card["weight_average"]["sha256_a"] == sha256(a)
    assert card["weight_average"]["alpha"] == 1.0
    other = save_model(UnfoldedSBL(3, "deep-cb", False), tmp_path / "c.safetensors")
    with pytest.raises(ValueError, match="different networks"):
        average_weights(a, other, 0.5, tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="alpha must be in"):
        average_weights(a, b, 1.5, tmp_path / "x.safetensors")
    # a file written before a config setting existed averages with a new one
    # (the bundled joint Deep Attn CB predates ``centered_bias``)
    old = _without_config_setting(a, "centered_bias", tmp_path / "old.safetensors")
    out = average_weights(old, b, 0.5, tmp_path / "mixed.safetensors")
    assert load_weights(out).config == nets[1].config


def _perturbed_network(model, learn_noise, seed=0, **kwargs):
    torch.manual_seed(seed)
    net = UnfoldedSBL(4, model, learn_noise, **kwargs).double()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return net


@pytest.mark.parametrize("model", ["bias-cb", "deep-cb", "deep-attn-cb"])
def test_scale_output_scales_raw_corrections(model, monkeypatch):
    """Before its bound, every correction module's output is exactly
    ``alpha`` times the unscaled one (Bias CB offsets, the last affine
    layer of the MLPs, the attention decoder plus its pointwise branch)."""
    from mne_unfolded_sbl.core import corrections

    monkeypatch.setattr(corrections, "_bound_correction",
                        lambda delta, *args, **kwargs: delta)
    kwargs = dict(n_sources=40, n_sensors=12) if model == "bias-cb" else {}
    net = _perturbed_network(model, True, **kwargs)
    rng = np.random.default_rng(1)
    modules = [m for m in net.modules() if hasattr(m, "scale_output_")]
    # source and noise corrections of every layer but the classical last one
    assert len(modules) == 2 * (net.n_layers - 1)
    for module in modules:
        n = module.bias.shape[0] if model == "bias-cb" else 40
        num, den, state = (torch.tensor(rng.standard_normal((2, n)))
                           for _ in range(3))
        num[:, :5] += 4.0  # a few active sources for the attention branch
        before = module(num, den, state).clone()  # Bias CB: a view
        assert before.abs().max() > 1e-3  # the perturbation reaches the output
        module.scale_output_(0.3)
        torch.testing.assert_close(module(num, den, state), 0.3 * before,
                                   rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("model", ["bias-cb", "deep-cb", "deep-attn-cb"])
@pytest.mark.parametrize("learn_noise", [True, False])
def test_shrink_weights(model, learn_noise, tmp_path):
    """Shrinkage by 0 gives the classical solver exactly, by 1 the trained
    network's parameters, in between an estimate between the two; the card
    names the input by sha256; alpha outside [0, 1] is refused."""
    from mne_unfolded_sbl.core.weights import read_metadata, sha256
    from mne_unfolded_sbl.training.export import shrink_weights

    L, Cy = _bias_problem()
    M, N = L.shape
    kwargs = dict(n_sources=N, n_sensors=M) if model == "bias-cb" else {}
    net = _perturbed_network(model, learn_noise, **kwargs)
    fname = save_model(net, tmp_path / "trained.safetensors", card={"name": "x"})
    net = load_weights(fname).double()  # as stored (float32 parameters)
    noise = None if learn_noise else torch.full((M,), 0.09, dtype=L.dtype)

    def gamma(path):
        with torch.no_grad():
            return load_weights(path).double()(L, Cy, noise).gamma_n

    with torch.no_grad():
        ref = UnfoldedSBL(4, "cb", learn_noise).double()(L, Cy, noise).gamma_n
        trained = net(L, Cy, noise).gamma_n
    assert not torch.allclose(trained, ref, rtol=1e-3)
    zero = shrink_weights(fname, 0.0, tmp_path / "a0.safetensors")
    torch.testing.assert_close(gamma(zero), ref, rtol=1e-10, atol=1e-14)
    one = shrink_weights(fname, 1.0, tmp_path / "a1.safetensors")
    for k, v in load_weights(one).state_dict().items():
        torch.testing.assert_close(v.double(), net.state_dict()[k], rtol=0,
                                   atol=0)  # bit for bit
    half = gamma(shrink_weights(fname, 0.5, tmp_path / "a.5.safetensors"))
    assert not torch.allclose(half, ref, rtol=1e-3)
    assert not torch.allclose(half, trained, rtol=1e-3)
    card = read_metadata(tmp_path / "a.5.safetensors")[1]
    assert card["name"] == "x"
    assert card["shrinkage"]["alpha"] == 0.5
    assert card["shrinkage"]["sha256"] == sha256(fname)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        shrink_weights(fname, -0.1, tmp_path / "x.safetensors")


def test_with_sensor_order_follows_the_channels():
    """Data whose sensors come in another order, with the offsets permuted
    the same way, give the same sources and the same noise per sensor; the
    offsets left in place give another estimate (they are per sensor)."""
    from mne_unfolded_sbl.core.weights import with_sensor_order

    L, Cy = _bias_problem()
    M, N = L.shape
    net = _perturbed_network("bias-cb", True, n_sources=N, n_sensors=M)
    perm = torch.tensor(np.random.default_rng(3).permutation(M))
    with torch.no_grad():
        ref = net(L, Cy)
        moved = with_sensor_order(net, perm)
        out = moved(L[perm], Cy[:, perm][:, :, perm])
        naive = net(L[perm], Cy[:, perm][:, :, perm])
    torch.testing.assert_close(out.gamma, ref.gamma, rtol=1e-9, atol=1e-14)
    torch.testing.assert_close(out.lam, ref.lam[:, perm], rtol=1e-9, atol=0)
    assert not torch.allclose(naive.gamma, ref.gamma, rtol=1e-3)
    # the network itself is unchanged, the copy's offsets are permuted
    b0 = net.layers[0].noise_correction.bias
    torch.testing.assert_close(moved.layers[0].noise_correction.bias, b0[perm])
    assert not torch.equal(moved.layers[0].noise_correction.bias, b0)
    with pytest.raises(ValueError, match="permutation of the network's 12"):
        with_sensor_order(net, [0, 0] + list(range(2, 12)))
    with pytest.raises(ValueError, match="Only a joint Bias CB"):
        with_sensor_order(UnfoldedSBL(3, "deep-cb", True), range(12))
