"""Learned models warn on geometries far outside their training."""

import warnings

import pytest

from mne_unfolded_sbl.core.network import UnfoldedSBL
from mne_unfolded_sbl.core.weights import check_training_domain, load_weights, save_model


def _net(domain):
    net = UnfoldedSBL(3, "deep-cb", True)
    net.training_domain = domain
    return net


def test_warns_outside_and_names_the_safe_model():
    net = _net(dict(n_sensors=[32, 128], n_sources=[1284, 5124]))
    assert check_training_domain(net, 64, 1284) is None
    assert check_training_domain(net, 24, 964) is None  # within the slack
    with pytest.warns(RuntimeWarning, match="model='cb'") as rec:
        msg = check_training_domain(net, 8, 10)
    assert "8 sensors (trained on 32-128)" in msg
    assert "10 sources (trained on 1284-5124)" in msg
    assert len(rec) == 1
    assert rec[0].filename == __file__  # the caller's line, not the package's
    with pytest.warns(RuntimeWarning, match="sources"):
        check_training_domain(net, 64, 40962)


def test_classical_and_unknown_domain_never_warn():
    cb = UnfoldedSBL(3, "cb", True)
    cb.training_domain = dict(n_sensors=[64, 64], n_sources=[1284, 1284])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_training_domain(cb, 8, 10) is None
        assert check_training_domain(_net(None), 8, 10) is None


def test_domain_travels_with_the_weights_file(tmp_path):
    net = UnfoldedSBL(3, "deep-cb", True)
    dom = dict(n_sensors=[32, 128], n_sources=[1284, 5124], shards=["a/ico3"])
    fname = save_model(net, tmp_path / "w.safetensors", card=dict(domain=dom))
    assert load_weights(fname).training_domain == dom
    fname2 = save_model(net, tmp_path / "w2.safetensors")
    assert load_weights(fname2).training_domain is None


def test_channel_types_outside_the_training_warn():
    """Channel types the network never saw warn; weights without a record
    of their types count as EEG-trained; None skips a check."""
    net = _net(dict(n_sensors=[32, 128], n_sources=[1284, 5124]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_training_domain(net, 64, 1284, ch_types=["eeg"]) is None
        assert check_training_domain(net, 64, None, ch_types=None) is None
        # the source count is skipped with None, not compared
        assert check_training_domain(net, 64, None) is None
    with pytest.warns(RuntimeWarning, match="model='cb'"):
        msg = check_training_domain(net, 102, None, ch_types=["mag", "eeg"])
    assert "magnetometer channels (trained on EEG only)" in msg
    assert "sensors" not in msg.split(":", 1)[1]
    with pytest.warns(RuntimeWarning) as rec:
        msg = check_training_domain(net, 306, 1284, ch_types=["grad", "mag"])
    assert len(rec) == 1  # one warning naming both problems
    assert "306 sensors (trained on 32-128)" in msg
    assert "gradiometer/magnetometer channels (trained on EEG only)" in msg
    # a domain that records MEG, or does not know its types
    for types in (["eeg", "grad", "mag"], None):
        net.training_domain = dict(n_sensors=[32, 400], n_sources=[1284, 5124],
                                   ch_types=types)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert check_training_domain(net, 306, 1284,
                                         ch_types=["grad", "mag"]) is None
