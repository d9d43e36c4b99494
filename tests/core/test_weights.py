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
