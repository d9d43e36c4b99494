"""The registry of comparison methods (mne_unfolded_sbl.methods), shared by
the report and the benchmark."""

import mne
import numpy as np
import pytest

from mne_unfolded_sbl import methods
from mne_unfolded_sbl.benchmark import methods as bench_methods
from mne_unfolded_sbl.benchmark import resolve_methods, simulate_batches
from mne_unfolded_sbl.benchmark.settings import (SOURCE_SCALE,
                                                 problem_from_forward)
from mne_unfolded_sbl.core.network import MODELS, model_label
from mne_unfolded_sbl.report import (add_unfolded_sbl_to_report,
                                     compute_estimate)

MNE_KEYS = ("sloreta", "dspm", "eloreta", "mne", "gamma-map", "mxne")


@pytest.fixture(scope="module")
def problem(tiny_forward):
    """A benchmark problem on the small sphere-model forward."""
    fwd, info = tiny_forward
    fwd = mne.convert_forward_solution(fwd, surf_ori=True, force_fixed=True,
                                       use_cps=True, verbose="error")
    problem = problem_from_forward(fwd, info=info, n_times=30)
    return problem.with_config(problem.config.replace(
        n_sources=2, spread=0.0, snr_db=20.0))


@pytest.fixture(scope="module")
def batch(problem):
    return next(iter(simulate_batches(problem, 2, seed=4)))


@pytest.mark.parametrize("key", ["sloreta", "dspm", "eloreta", "gamma-map",
                                 "mxne"])
def test_report_and_benchmark_estimates_identical(problem, batch, key):
    """The report's and the benchmark's method of one name give the same
    estimate on the same data (the benchmark in simulator units)."""
    (bench,) = resolve_methods(key)
    bench.prepare(problem)
    sol = bench.solve(batch)
    assert not sol.failed.any()
    for i in range(len(batch)):
        evoked, cov = batch.mne_inputs(i, problem)
        res = compute_estimate(evoked, problem.fwd, cov, key, verbose=False)
        assert res["label"] == bench.label
        assert (res["unit"] == "A·m") == bench.current_units
        x = res["stc"].data / (SOURCE_SCALE if bench.current_units else 1.0)
        assert x.shape == sol.X[i].shape  # every source
        np.testing.assert_allclose(x, sol.X[i], rtol=1e-10, atol=0)
        assert np.abs(x).max() > 0


def test_one_definition_per_name():
    """Labels, units and settings come from the one registry entry."""
    bench = {m.key: m for m in resolve_methods("mne")}
    for key in MNE_KEYS:
        entry = methods.get_method(key)
        assert bench[key].spec == entry
        assert bench[key].label == entry.label
        assert bench[key].describe().startswith(entry.describe())
    gm = dict(methods.get_method("gamma-map").settings)
    assert gm == methods.GAMMA_MAP_SETTINGS
    assert gm["update_mode"] == 2 and gm["maxit"] == 10000
    assert methods.get_method("sloreta").lambda2 == methods.LAMBDA2
    assert not methods.get_method("sloreta").current_units
    assert methods.get_method("eloreta").current_units
    assert methods.get_method("mxne", mxne_alpha=5).alpha == 5
    # the benchmark's settings are the registry's
    for name in ("CB_TOL", "CB_MAX_ITER", "MXNE_ALPHA", "LAMBDA2", "N_LAYERS"):
        assert getattr(bench_methods, name) == getattr(methods, name)


def test_unfolded_labels_and_keys():
    """Unfolded models are labelled by core.network.model_label."""
    for model in MODELS:
        for learn_noise in (True, False):
            entry = methods.get_method(model, learn_noise=learn_noise)
            assert entry.label.startswith(model_label(model, learn_noise))
            assert entry.model == model and entry.learn_noise is learn_noise
    assert methods.get_method("deep-cb-source").label == model_label(
        "deep-cb", False)
    cb = methods.get_method("cb", learn_noise=True)
    assert cb.key == "cb-joint-25" and cb == methods.get_method("cb-joint-25")
    assert cb.label == f"{model_label('cb', True)}, 25 it."
    conv = methods.get_method("cb-source-conv")
    assert conv.tol == methods.CB_TOL and conv.label.endswith("converged")
    assert methods.get_method("CB", n_layers=7).n_layers == 7
    assert [m.key for m in resolve_methods("classical")] == list(
        methods.classical_methods())
    with pytest.raises(ValueError, match="Only the classical"):
        methods.get_method("deep-cb", n_layers=7)
    with pytest.raises(TypeError, match="n_layers must be an integer"):
        methods.get_method("cb", n_layers=2.9)


def test_unknown_method_lists_valid_names(tiny_forward):
    with pytest.raises(ValueError, match="Unknown method 'sloretta'") as err:
        methods.get_method("sloretta")
    for name in MNE_KEYS + MODELS + ("cb-joint-25", "deep-cb-joint"):
        assert repr(name) in str(err.value)
    # the report does not silently fall back to convex bounding on a typo
    with pytest.raises(ValueError, match="valid methods are"):
        compute_estimate(None, None, None, "sloretta")
    report = mne.Report(verbose=False)
    fwd, info = tiny_forward
    evoked = mne.EvokedArray(np.zeros((len(info["ch_names"]), 3)), info)
    with pytest.raises(ValueError, match="Unknown method 'gamma_map'"):
        add_unfolded_sbl_to_report(report, evoked, fwd, None,
                                   compare=("gamma_map",), verbose=False)
    assert not report._content  # failed before adding anything
    with pytest.raises(ValueError, match="Unknown benchmark method 'sloretta'"
                       r".*'gamma-map'"):
        resolve_methods("sloretta")
    with pytest.raises(TypeError, match="method must be"):
        methods.get_method(3)


def test_converged_cb_is_benchmark_only(problem, batch):
    evoked, cov = batch.mne_inputs(0, problem)
    with pytest.raises(ValueError, match="benchmark method on arrays"):
        methods.get_method("cb-joint-conv").apply(evoked, problem.fwd, cov)


def test_expand_stc_one_home(problem):
    """One scatter helper, used by the report and the benchmark."""
    from mne_unfolded_sbl import report

    assert report.expand_stc is methods.expand_stc
    assert bench_methods.expand_stc is methods.expand_stc
    fwd = problem.fwd
    verts = [s["vertno"] for s in fwd["src"]]
    sub = [verts[0][[1, 4]], verts[1][[0]]]
    stc = mne.SourceEstimate(np.arange(6.0).reshape(3, 2), sub, 0.0, 0.01)
    full = methods.expand_stc(stc, fwd)
    assert full.data.shape == (fwd["nsource"], 2)
    np.testing.assert_array_equal(full.data[[1, 4, len(verts[0])]], stc.data)
    assert np.count_nonzero(full.data.any(1)) == 3  # nothing elsewhere
    assert methods.expand_stc(full, fwd) is full
    empty = mne.SourceEstimate(np.zeros((0, 2)), [np.array([], int)] * 2,
                               0.0, 0.01)  # MxNE without active source
    np.testing.assert_array_equal(methods.expand_stc(empty, fwd).data, 0.0)
    bad = mne.SourceEstimate(np.ones((1, 2)), [np.array([10 ** 6]),
                                               np.array([], int)], 0.0, 0.01)
    with pytest.raises(ValueError, match="not in the forward"):
        methods.expand_stc(bad, fwd)


def test_source_model_variants_in_the_registry():
    """Multi-scale and loose entries: keys, labels, settings, parsing."""
    names = methods.method_names()
    for key in ("cb-joint-25-multiscale", "cb-source-25-multiscale",
                "deep-cb-joint-multiscale", "cb-joint-25-loose",
                "deep-cb-source-loose"):
        assert key in names
        entry = methods.get_method(key)
        assert entry.key == key
    ms = methods.get_method("cb-joint-25-multiscale")
    assert (ms.source_model, ms.loose, ms.n_layers) == ("multiscale", 0.0, 25)
    assert ms.label == f"{model_label('cb', True)}, 25 it., multi-scale"
    assert "evidence" in ms.describe()
    lo = methods.get_method("deep-cb-joint-loose")
    assert (lo.model, lo.source_model, lo.loose) == ("deep-cb", "point",
                                                      methods.LOOSE)
    assert lo.label == f"{model_label('deep-cb', True)}, loose 0.2"
    half = methods.get_method("cb-source-25-loose0.5")
    assert half.loose == 0.5 and not half.learn_noise
    # a bare name takes the caller's source model, and gets the variant key
    assert methods.get_method("cb", source_model="multiscale") == ms
    assert methods.get_method("deep-cb", loose=0.2) == lo
    assert methods.get_method("cb", loose=0.0).key == "cb-joint-25"
    assert methods.variant_suffix("point", 0.3) == "-loose0.3"
    assert set(methods.variant_methods()) <= set(names)
    with pytest.raises(ValueError, match="loose=0"):
        methods.get_method("cb", source_model="multiscale", loose=0.2)
    with pytest.raises(ValueError, match="source_model must be"):
        methods.get_method("cb", source_model="patch")
    with pytest.raises(ValueError, match="between 0"):
        methods.get_method("cb", loose=1.5)
    for bad in ("cb-joint-conv-multiscale", "cb-joint-25-loose2",
                "cb-joint-25-loosex", "sloreta-multiscale"):
        with pytest.raises(ValueError, match="Unknown method"):
            methods.get_method(bad)
    with pytest.raises(ValueError, match="point source with fixed"):
        methods.unfolded_method("cb", True, tol=1e-6,
                                source_model="multiscale")
    # the benchmark resolves the same entries
    (bench,) = resolve_methods("cb-joint-25-multiscale")
    assert bench.spec == ms and bench.label == ms.label


def test_variant_estimates_are_the_api_estimates(tiny_forward):
    """The registry's multi-scale and loose entries run apply_unfolded_sbl
    with that source model (same estimate), and give the posterior std."""
    from mne_unfolded_sbl import apply_unfolded_sbl

    fwd, info = tiny_forward
    free = mne.convert_forward_solution(fwd, surf_ori=True, use_cps=True,
                                        verbose="error")
    fixed = mne.convert_forward_solution(fwd, surf_ori=True, force_fixed=True,
                                         use_cps=True, verbose="error")
    rng = np.random.default_rng(0)
    x = np.zeros((fixed["nsource"], 30))
    x[[5, 200]] = 1e-8 * rng.standard_normal((2, 30))
    data = fixed["sol"]["data"] @ x
    data += 1e-7 * rng.standard_normal(data.shape)
    evoked = mne.EvokedArray(data, info, nave=1, verbose=False)
    evoked.set_eeg_reference(projection=True, verbose=False)
    cov = mne.make_ad_hoc_cov(evoked.info, verbose=False)
    for key, f, kw in (("cb-joint-25-multiscale", fixed,
                        dict(source_model="multiscale")),
                       ("cb-joint-25-loose", free, dict(loose=0.2))):
        res = compute_estimate(evoked, f, cov, key, posterior_std=True,
                               verbose=False)
        stc, _, std = apply_unfolded_sbl(
            evoked, f, cov, "cb", learn_noise=True, return_noise_cov=True,
            return_posterior_std=True, verbose=False, **kw)
        np.testing.assert_allclose(res["stc"].data, stc.data, rtol=1e-6,
                                   atol=1e-6 * np.abs(stc.data).max())
        np.testing.assert_allclose(res["std"].data, std.data, rtol=1e-6)
        assert res["label"] == methods.get_method(key).label
        assert (res["std"].data >= 0).all() and res["std"].data.max() > 0
    # MNE's methods have no posterior std
    assert compute_estimate(evoked, fixed, cov, "sloreta",
                            posterior_std=True, verbose=False)["std"] is None
