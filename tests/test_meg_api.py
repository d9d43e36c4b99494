"""MEG and MEG+EEG through the public API (sphere-model forward)."""

import mne
import numpy as np
import pytest

from mne_unfolded_sbl import apply_unfolded_sbl, make_unfolded_sbl_operator


@pytest.fixture(scope="module")
def meg_case(meg_eeg_forward):
    """One superficial source, loose orientation; per-type noise levels."""
    fwd, info = meg_eeg_forward
    fwd = mne.convert_forward_solution(fwd, surf_ori=True, use_cps=True,
                                       verbose="error")
    rng = np.random.default_rng(2)
    z = fwd["source_rr"][:, 2]
    v = int(np.argmax(z))
    X = np.zeros((fwd["sol"]["data"].shape[1], 200))
    X[3 * v:3 * v + 3] = np.outer([0.3, 0.2, 1.0], rng.standard_normal(200)) * 30e-9
    G = fwd["sol"]["data"]
    clean = G @ X
    types = np.array(info.get_channel_types())
    noise = np.empty(len(G))
    for t in ("mag", "grad", "eeg"):  # 10 dB per channel type
        noise[types == t] = np.mean(clean[types == t] ** 2) / 10
    noise *= rng.uniform(0.5, 2.0, len(noise))  # heteroscedastic
    Y = clean + rng.standard_normal(clean.shape) * np.sqrt(noise)[:, None]
    evoked = mne.EvokedArray(Y, info, nave=1, verbose=False)
    cov = mne.Covariance(noise, info["ch_names"], [], info["projs"], 200)
    return fwd, evoked, cov, v, noise, types


@pytest.mark.parametrize("picks", ["meg", "eeg", "all"])
def test_meg_eeg_and_both_find_the_source(meg_case, picks):
    fwd, evoked, cov, v, _, _ = meg_case
    ev = evoked.copy().pick({"meg": "meg", "eeg": "eeg", "all": "data"}[picks])
    if picks == "meg":
        ev.del_proj()  # no EEG: no average reference needed
    stc = apply_unfolded_sbl(ev, fwd, cov, model="cb", loose=0.2,
                             n_layers=100, dtype="float64", verbose=False)
    peak = np.argmax(np.linalg.norm(stc.data, axis=1))
    if picks == "eeg":  # 32 EEG channels on a sphere: a mesh neighbour at most
        adj = mne.spatial_src_adjacency(fwd["src"], verbose=False).tocsr()
        assert peak == v or adj[v, peak]
    else:
        assert peak == v
    op = make_unfolded_sbl_operator(ev.info, fwd, cov, loose=0.2,
                                    verbose=False)
    expected = {"meg": {"grad", "mag"}, "eeg": {"eeg"},
                "all": {"grad", "mag", "eeg"}}[picks]
    assert set(op.info.get_channel_types()) == expected
    # MEG alone: no reference direction; with EEG the reference removes one
    k = 0 if op.null_space is None else op.null_space.rank
    assert k == (0 if picks == "meg" else 1)


def test_learned_noise_for_every_channel_type(meg_case):
    """Joint learning returns a noise variance per channel in the data's
    units (T², (T/m)², V²), near the truth for every type."""
    fwd, evoked, cov, _, noise, types = meg_case
    # whiten with a deliberately wrong flat covariance per type: the learned
    # noise must find the true heteroscedastic levels
    flat = np.empty_like(noise)
    for t in ("mag", "grad", "eeg"):
        flat[types == t] = noise[types == t].mean()
    cov_flat = mne.Covariance(flat, cov["names"], [], cov["projs"], 200)
    _, learned = apply_unfolded_sbl(evoked, fwd, cov_flat, model="cb",
                                    loose=0.2, n_layers=200,
                                    return_noise_cov=True, dtype="float64",
                                    verbose=False)
    ratio = learned["data"] / noise
    for t in ("mag", "grad", "eeg"):
        r = ratio[types == t]
        assert 0.6 < np.median(r) < 1.6, (t, np.median(r))
    # the per-channel ordering follows the truth, not the flat whitener
    assert np.corrcoef(np.log(learned["data"][types == "grad"]),
                       np.log(noise[types == "grad"]))[0, 1] > 0.6


def test_eeg_without_reference_is_refused_with_meg(meg_case):
    fwd, evoked, cov, _, _, _ = meg_case
    ev = evoked.copy().del_proj()
    with pytest.raises(ValueError, match="average reference"):
        apply_unfolded_sbl(ev, fwd, cov, model="cb", loose=0.2)


@pytest.mark.parametrize("picks", ["meg", "eeg", "all"])
def test_eeg_trained_networks_warn_on_meg(meg_case, picks):
    """A network trained on EEG warns on data with MEG channels and names
    the classical solver; on EEG alone it stays silent. The multi-scale
    model (atoms, no source count) gets the channel-type check too."""
    import warnings

    from mne_unfolded_sbl.core.network import UnfoldedSBL

    fwd, evoked, cov, _, _, _ = meg_case
    ev = evoked.copy().pick({"meg": "meg", "eeg": "eeg", "all": "data"}[picks])
    if picks == "meg":
        ev.del_proj()
    fwd = mne.convert_forward_solution(fwd, force_fixed=True, use_cps=True,
                                       verbose="error")
    net = UnfoldedSBL(2, "deep-cb", True)
    n_src = fwd["sol"]["data"].shape[1]
    # the bundled networks' record: counts only (types default to EEG)
    net.training_domain = dict(n_sensors=[24, 128], n_sources=[n_src, n_src])
    for source_model in ("point", "multiscale"):
        if picks == "eeg":
            with warnings.catch_warnings():
                warnings.simplefilter("error", RuntimeWarning)
                apply_unfolded_sbl(ev, fwd, cov, model=net, verbose=False,
                                   source_model=source_model)
            continue
        with pytest.warns(RuntimeWarning,
                          match=r"gradiometer/magnetometer channels \(trained on EEG only\)"
                                r".*model='cb'") as rec:
            apply_unfolded_sbl(ev, fwd, cov, model=net, verbose=False,
                               source_model=source_model)
        # attributed to the user's line, not to the package's internals
        assert {r.filename for r in rec} == {__file__}
    # weights that record MEG among their types do not warn for it
    net.training_domain = dict(n_sensors=[24, 128], n_sources=[n_src, n_src],
                               ch_types=["eeg", "grad", "mag"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        apply_unfolded_sbl(ev, fwd, cov, model=net, verbose=False)
