"""Tests of the benchmark harness (mne_unfolded_sbl.benchmark)."""

import math

import mne
import numpy as np
import pytest

from mne_unfolded_sbl.benchmark import (SETTINGS, get_setting, markdown_table,
                                        read_csv, resolve_methods, run_benchmark,
                                        run_layer_curve, run_sweep, sample_seed,
                                        simulate_batches, synthetic_problem)
from mne_unfolded_sbl.benchmark.settings import problem_from_forward
from mne_unfolded_sbl.benchmark.sweeps import get_sweep

METRIC_COLS = ["rmse_mean", "rmse_std", "emd_mm_mean", "emd_mm_std", "f1_mean",
               "f1_std", "le_mm_mean", "le_mm_std", "rmse_q25", "rmse_q75",
               "seconds_per_sample"]


@pytest.fixture(scope="module")
def synth():
    return synthetic_problem(n_sensors=24, n_sources=120, n_times=40, seed=1)


@pytest.fixture(scope="module")
def tiny_problem(tiny_forward):
    """Problem on the small sphere-model forward (MNE methods can run)."""
    fwd, info = tiny_forward
    fwd = mne.convert_forward_solution(fwd, surf_ori=True, force_fixed=True,
                                       use_cps=True, verbose="error")
    fwd_sim = fwd.copy()
    fwd_sim["sol"]["data"] = fwd["sol"]["data"] * 0.9  # mild model mismatch
    return problem_from_forward(fwd, fwd_sim, info=info, n_times=50)


def test_unknown_names_raise():
    with pytest.raises(ValueError, match="Unknown benchmark setting 'nope'"):
        get_setting("nope")
    with pytest.raises(ValueError, match="valid settings"):
        get_setting(None)
    with pytest.raises(ValueError, match="Unknown benchmark method 'nope'"):
        resolve_methods("classical,nope")
    with pytest.raises(ValueError, match="Unknown sweep"):
        get_sweep("nope")
    from mne_unfolded_sbl.core import weights

    full = weights.registry()
    with pytest.MonkeyPatch.context() as mp:  # as if it were not registered
        mp.setattr(weights, "registry", lambda: {
            k: v for k, v in full.items() if k != "bias-cb_joint"})
        with pytest.raises(ValueError, match="'bias-cb-joint': no pretrained "
                                             "weights"):
            resolve_methods("bias-cb-joint")
    assert set(SETTINGS) == {"train-cap-ico3", "things-cap-ico3",
                             "things-cap-ico4", "extended-patches",
                             "single-dipole", "loose-forward", "meg-eeg-ico3",
                             "meg-ico3",
                             "single-focal", "multi-dipole", "low-snr",
                             "miscaled-cov", "cap-32", "cap-128", "ico4"}
    assert get_setting("things-cap-ico4").spacing == "ico4"
    assert get_setting("things-cap-ico3").n_times == 600


def test_resolve_methods_groups():
    keys = [m.key for m in resolve_methods("classical")]
    assert keys == ["cb-source-25", "cb-source-conv", "cb-joint-25",
                    "cb-joint-conv"]
    keys = [m.key for m in resolve_methods(["sloreta", "classical", "sloreta"])]
    assert keys[0] == "sloreta" and keys.count("sloreta") == 1
    mne_keys = {m.key for m in resolve_methods("mne")}
    assert {"sloreta", "dspm", "eloreta", "gamma-map", "mxne"} <= mne_keys


def test_samples_reproducible(synth):
    """Sample i does not depend on the batch size or the sample count."""
    a = np.concatenate([b.Y for b in simulate_batches(synth, 5, seed=3,
                                                      batch_size=2)])
    b = next(iter(simulate_batches(synth, 3, seed=3, batch_size=8))).Y
    np.testing.assert_array_equal(a[:3], b)
    assert sample_seed(0, 1) != sample_seed(1, 0)


def test_runner_table_and_files(synth, tmp_path):
    res = run_benchmark(synth, "classical", n_samples=6, seed=0, progress=False)
    rows = res.summary()
    assert [r["method"] for r in rows] == ["cb-source-25", "cb-source-conv",
                                           "cb-joint-25", "cb-joint-conv"]
    for r in rows:
        assert r["n"] == 6
        for col in METRIC_COLS:
            assert col in r and math.isfinite(r[col]), col
        assert 0 <= r["f1_mean"] <= 1
    conv = {r["method"]: r["n_iter_mean"] for r in rows}
    assert conv["cb-source-25"] == 25 and conv["cb-joint-conv"] >= 2
    assert len(res.records) == 6 * 4
    paths = res.write(tmp_path, "synth")
    parsed = read_csv(paths["csv"])
    assert [r["method"] for r in parsed] == [r["method"] for r in rows]
    np.testing.assert_allclose([r["f1_mean"] for r in parsed],
                               [r["f1_mean"] for r in rows])
    samples = read_csv(paths["samples"])
    assert len(samples) == 24 and {"rmse", "emd", "le", "f1", "ap"} <= set(
        samples[0])
    md = paths["md"].read_text(encoding="utf-8")
    table = [ln for ln in md.splitlines() if ln.startswith("|")]
    # three tables (mean ± std, median [IQR], mean [95 % CI]), each header +
    # rule + 4 rows
    assert len(table) == 3 * (2 + 4)
    assert "mean [95 % CI of the mean]:" in md
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header[:7] == ["Method", "n", "rMSE", "EMD (mm)", "F1", "LE (mm)",
                          "AP"]
    assert all(len(ln.strip("|").split("|")) == len(header) for ln in table)
    assert markdown_table(rows).count("Convex bounding") == 8  # model_label


def test_cb_beats_sloreta_on_easy_case(tiny_problem):
    """One focal source at very high SNR: the sparse solver must find it."""
    problem = tiny_problem.with_config(tiny_problem.config.replace(
        n_sources=1, spread=0.0, snr_db=40.0))
    res = run_benchmark(problem, "cb-source-25,cb-joint-25,sloreta,dspm",
                        n_samples=6, seed=0, progress=False)
    rows = {r["method"]: r for r in res.summary()}
    for cb in ("cb-source-25", "cb-joint-25"):
        assert rows[cb]["f1_mean"] > rows["sloreta"]["f1_mean"] + 0.3
        assert rows[cb]["emd_mm_mean"] < rows["sloreta"]["emd_mm_mean"]
        assert rows[cb]["le_mm_mean"] <= rows["sloreta"]["le_mm_mean"] + 1e-9
        assert 0.005 < rows[cb]["rmse_mean"] < 0.1  # ~(1/0.9 - 1)**2
    # the linear methods' operator build is reported as per-sample setup
    assert rows["sloreta"]["setup_seconds_per_sample"] > 0


def test_mne_sparse_adapters(tiny_problem):
    res = run_benchmark(tiny_problem, "gamma-map,mxne,eloreta", n_samples=2,
                        seed=0, progress=False)
    rows = {r["method"]: r for r in res.summary()}
    assert set(rows) == {"gamma-map", "mxne", "eloreta"}
    for r in rows.values():
        assert r["n"] == 2 and r["n_failed"] == 0
        assert math.isfinite(r["emd_mm_mean"])


def test_mne_methods_need_forward(synth):
    with pytest.raises(ValueError, match="needs an MNE forward"):
        run_benchmark(synth, "sloreta", n_samples=1, progress=False)


def test_time_budget_skips(synth):
    res = run_benchmark(synth, "cb-joint-25", n_samples=6, batch_size=2,
                        max_seconds=0.0, progress=False)
    assert res.summary()[0]["n"] == 2  # the first batch runs, then skipped
    assert res.info["skipped_after_sample"] == {"cb-joint-25": 2}


def test_sweep_and_curve(synth, tmp_path):
    from mne_unfolded_sbl.benchmark import plots

    sw = run_sweep(synth, "n-sources", [1.0, 3], "cb-joint-25", n_samples=3,
                   progress=False)  # floats from the CLI become counts
    rows = sw.summary()
    assert [(r["value"], r["method"]) for r in rows] == [
        (1, "cb-joint-25"), (3, "cb-joint-25")]
    paths = sw.write(tmp_path, "sweep")
    assert len(read_csv(paths["csv"])) == 2
    png = plots.plot_lines(rows, "value", tmp_path / "sweep.png",
                           xlabel="sources")
    assert png.stat().st_size > 1000

    cu = run_layer_curve(synth, "cb-joint-25,cb-source-conv", n_samples=3,
                         cb_layers=30, progress=False)
    rows = cu.summary()
    layers = sorted({r["layer"] for r in rows})
    assert layers[:3] == [1, 2, 3] and layers[-1] == 30
    assert {r["method"] for r in rows} == {"cb-joint", "cb-source"}
    # the classical solver improves the fit over the iterations
    first = [r for r in rows if r["layer"] == 1 and r["method"] == "cb-joint"][0]
    last = [r for r in rows if r["layer"] == 30 and r["method"] == "cb-joint"][0]
    assert last["rmse_mean"] < first["rmse_mean"]
    assert plots.plot_metrics(
        run_benchmark(synth, "cb-joint-25", n_samples=2, progress=False),
        tmp_path / "box.png").is_file()


def test_cli(tiny_forward, tmp_path, monkeypatch):
    """The CLI writes Markdown, CSV, PNG and run.json (setting patched to a
    tiny forward so that no BEM is computed)."""
    from mne_unfolded_sbl.benchmark import cli, settings

    fwd, info = tiny_forward

    def fake_load_problem(setting, *, bem_ico=None, config=None, verbose=None):
        setting = get_setting(setting)
        return problem_from_forward(fwd, info=info, setting=setting.replace(
            n_times=40), config=config)

    monkeypatch.setattr(settings, "load_problem", fake_load_problem)
    import mne_unfolded_sbl.benchmark.runner as runner

    monkeypatch.setattr(runner, "load_problem", fake_load_problem)
    out = tmp_path / "bench"
    assert cli.main(["--setting", "train-cap-ico3", "--methods",
                     "cb-joint-25,sloreta", "--n-samples", "3", "--out",
                     str(out), "--no-progress", "--threads", "1"]) == 0
    for name in ("train-cap-ico3.md", "train-cap-ico3.csv",
                 "train-cap-ico3_samples.csv", "train-cap-ico3.png", "run.json"):
        assert (out / name).is_file(), name
    rows = read_csv(out / "train-cap-ico3.csv")
    assert [r["method"] for r in rows] == ["cb-joint-25", "sloreta"]
    with pytest.raises(ValueError, match="Unknown benchmark setting"):
        cli.main(["--setting", "nope", "--out", str(out), "--no-progress"])
    with pytest.raises(ValueError, match="Unknown benchmark method"):
        cli.main(["--methods", "nope", "--out", str(out), "--no-progress"])


def test_top_level_cli_parser():
    """The lead's dispatcher finds the benchmark command."""
    from mne_unfolded_sbl import cli

    parser = cli.build_parser()
    args = parser.parse_args(["benchmark", "--methods", "classical",
                              "--n-samples", "5"])
    assert args.n_samples == 5 and args.methods == "classical"
    assert mne.__version__  # MNE present for the real settings


def test_weights_file_method(synth, tmp_path):
    """A .safetensors file is benchmarked like a registered model; an
    untrained network equals the classical solver at the same depth."""
    from mne_unfolded_sbl.core.network import UnfoldedSBL
    from mne_unfolded_sbl.core.weights import save_model

    fname = save_model(UnfoldedSBL(25, "deep-cb", True), tmp_path / "net.safetensors")
    res = run_benchmark(synth, ["cb-joint-25", str(fname)], n_samples=4,
                        progress=False)
    rows = res.summary()
    assert rows[1]["label"].startswith("Deep CB (γ,λ)")
    for col in ("rmse_mean", "f1_mean", "emd_mm_mean"):
        np.testing.assert_allclose(rows[0][col], rows[1][col], rtol=1e-4)
    curve = run_layer_curve(synth, [str(fname)], n_samples=2, progress=False)
    assert max(r["layer"] for r in curve.summary()) == 25


def test_bias_cb_on_other_source_space_is_skipped(synth, tmp_path):
    from mne_unfolded_sbl.core.network import UnfoldedSBL
    from mne_unfolded_sbl.core.weights import save_model

    fname = save_model(UnfoldedSBL(3, "bias-cb", True, n_sources=50,
                                   n_sensors=10), tmp_path / "bias.safetensors")
    with pytest.warns(RuntimeWarning, match="tied to the geometry.*10 channels x 50 sources"):
        res = run_benchmark(synth, ["cb-joint-25", str(fname)], n_samples=2,
                            progress=False)
    assert [r["method"] for r in res.summary()] == ["cb-joint-25"]
    assert str(fname) in res.info["incompatible"]


def test_sbl_failure_isolated(synth, monkeypatch):
    """A batch that raises is re-run sample by sample; only the failing
    sample is marked (all-zero estimate), the run goes on."""
    import torch

    from mne_unfolded_sbl.benchmark.methods import SBLMethod

    bad = next(iter(simulate_batches(synth, 3, seed=0))).Y[1]
    orig = SBLMethod.run

    def run(self, Y, nv, return_trajectory=False):
        if any(torch.allclose(y.double(), torch.as_tensor(bad)) for y in Y):
            raise FloatingPointError("Sigma_y is not positive definite")
        return orig(self, Y, nv, return_trajectory)

    monkeypatch.setattr(SBLMethod, "run", run)
    with pytest.warns(RuntimeWarning, match=r"failed on samples \[1\]"):
        res = run_benchmark(synth, "cb-joint-25", n_samples=3, progress=False)
    row = res.summary()[0]
    assert row["n"] == 3 and row["n_failed"] == 1
    rec = [r for r in res.records if r["sample"] == 1][0]
    assert rec["failed"] and rec["f1"] == 0 and rec["rmse"] == 1
