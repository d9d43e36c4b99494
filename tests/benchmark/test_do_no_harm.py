"""The do-no-harm check: paired statistics, aggregate, command line."""

import math

import mne
import numpy as np
import pytest

from mne_unfolded_sbl import cli as top_cli
from mne_unfolded_sbl.benchmark import (get_setting, paired_difference,
                                        read_csv)
from mne_unfolded_sbl.benchmark import do_no_harm as dnh
from mne_unfolded_sbl.benchmark.settings import problem_from_forward

#: t quantile 0.975 with 3 degrees of freedom (tables; scipy.stats.t.ppf)
T975_3 = 3.1824463052837078


# ----------------------------------------------------------------------------
# statistics against hand-computed values


def test_paired_difference_worse():
    """Differences 1, 2, 3, 4: mean 2.5, sd sqrt(5/3), half-width
    t(0.975, 3) sd / 2 = 2.05426; above 0, so worse for a lower-is-better
    metric (FAIL) and better for a higher-is-better one (PASS)."""
    base = np.array([0.5, 0.5, 0.5, 0.5])
    model = base + [1.0, 2.0, 3.0, 4.0]
    half = T975_3 * math.sqrt(5.0 / 3.0) / 2.0
    assert half == pytest.approx(2.0542602567605206, rel=1e-12)
    res = paired_difference(model, base, "lower")
    assert res["n"] == 4
    assert res["mean"] == pytest.approx(2.5)
    assert res["lo"] == pytest.approx(2.5 - half, rel=1e-9)
    assert res["hi"] == pytest.approx(2.5 + half, rel=1e-9)
    assert res["model_mean"] == pytest.approx(3.0)
    assert res["baseline_mean"] == pytest.approx(0.5)
    assert res["rel"] == pytest.approx(5.0)  # (3 - 0.5) / 0.5
    assert res["verdict"] == "FAIL"
    assert paired_difference(model, base, "higher")["verdict"] == "PASS"
    # the mirror image: better for lower, worse for higher
    assert paired_difference(base, model, "lower")["verdict"] == "PASS"
    assert paired_difference(base, model, "higher")["verdict"] == "FAIL"


def test_paired_difference_includes_zero_and_edge_cases():
    """Differences -1, 1, -1, 1: mean 0, interval +-1.8374: PASS both ways;
    non-finite pairs dropped; one pair: no interval."""
    base = np.array([2.0, 2.0, 2.0, 2.0, np.nan])
    model = np.array([1.0, 3.0, 1.0, 3.0, 1.0])
    half = T975_3 * math.sqrt(4.0 / 3.0) / 2.0
    for better in ("lower", "higher"):
        res = paired_difference(model, base, better)
        assert res["n"] == 4 and res["verdict"] == "PASS"
        assert res["mean"] == pytest.approx(0.0, abs=1e-12)
        assert res["hi"] == pytest.approx(half, rel=1e-9)
        assert res["rel"] == pytest.approx(0.0, abs=1e-12)
    # same as scipy's paired t-test interval
    from scipy.stats import ttest_rel

    ci = ttest_rel(model[:4], base[:4]).confidence_interval(0.95)
    res = paired_difference(model, base)
    assert (res["lo"], res["hi"]) == pytest.approx((ci.low, ci.high))
    # identical estimates: interval [0, 0], no harm
    same = paired_difference(base[:4], base[:4])
    assert (same["lo"], same["hi"], same["verdict"]) == (0.0, 0.0, "PASS")
    one = paired_difference([1.0], [0.0])
    assert one["n"] == 1 and one["verdict"] == "n/a" and math.isnan(one["lo"])
    assert paired_difference([], [])["n"] == 0
    with pytest.raises(ValueError, match="paired"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="better"):
        paired_difference([1.0], [1.0], "up")


def _records(setting, method, rmse, f1, emd=None, le=None):
    emd = rmse if emd is None else emd
    le = [0.0] * len(rmse) if le is None else le
    return [dict(setting=setting, method=method, sample=i, rmse=r, f1=f,
                 emd=e, le=l)
            for i, (r, f, e, l) in enumerate(zip(rmse, f1, emd, le))]


def test_compare_and_aggregate_by_hand():
    """Two settings: rMSE of CB 1.0 / 0.5, of the model 0.7 / 0.45 (pooled
    means 0.75 and 0.575: -23.3 %, target -20 % met); F1 0.5 -> 0.55 (+10 %,
    target +13 % not met). A third setting where the model cannot run."""
    recs = []
    recs += _records("a", "cb-joint-25", [1.0, 1.0], [0.5, 0.5])
    recs += _records("a", "deep-cb-joint", [0.7, 0.7], [0.55, 0.55])
    recs += _records("b", "cb-joint-25", [0.5, 0.5], [0.5, 0.5])
    recs += _records("b", "deep-cb-joint", [0.45, 0.45], [0.55, 0.55])
    recs += _records("c", "cb-joint-25", [0.5, 0.5], [0.5, 0.5])
    models = {"deep-cb-joint": ("Deep CB (γ,λ)", "cb-joint-25")}
    rows = dnh.compare(recs, models, ["a", "b", "c"],
                       incompatible={"c": {"deep-cb-joint": "tied"}})
    assert [r["verdict"] for r in rows] == ["PASS", "PASS", dnh.NA_GEOMETRY]
    a = rows[0]
    assert a["rmse"]["mean"] == pytest.approx(-0.3)
    assert (a["rmse"]["lo"], a["rmse"]["hi"]) == pytest.approx((-0.3, -0.3))
    assert a["rmse"]["rel"] == pytest.approx(-0.3)
    agg = dnh.aggregate(recs, models, rows)
    e = agg["models"][0]
    assert (e["n"], e["settings_run"], e["settings_passed"],
            e["settings_na"]) == (4, 2, 2, 1)
    assert e["rmse"]["rel"] == pytest.approx((0.575 - 0.75) / 0.75)
    assert e["rmse"]["met"] is True and e["emd"]["met"] is True
    assert e["f1"]["rel"] == pytest.approx(0.1)
    assert e["f1"]["met"] is False
    assert e["le"]["met"] is None  # no target (and CB's mean is 0)
    # the pair is missing from the run (whether or not it is registered)
    assert agg["attn"]["joint"]["status"] == (
        "n/a (deep-attn-cb-joint not in this run)")
    md = dnh.markdown(rows, agg)
    assert "n/a (geometry)" in md and "−23.3 % met" in md
    assert "+10.0 % not met" in md


def test_attn_against_deep_cb():
    """Deep Attn CB worse than Deep CB on rMSE beyond the interval: the
    "Deep Attn CB >= Deep CB" target is not met."""
    rng = np.random.default_rng(0)
    cb = 0.5 + 0.1 * rng.random(6)
    recs = _records("a", "cb-source-25", cb, [0.5] * 6)
    recs += _records("a", "deep-cb-source", cb - 0.1, [0.6] * 6)
    recs += _records("a", "deep-attn-cb-source", cb + 0.05, [0.6] * 6)
    models = {"deep-cb-source": ("Deep CB (γ)", "cb-source-25"),
              "deep-attn-cb-source": ("Deep Attn CB (γ)", "cb-source-25")}
    rows = dnh.compare(recs, models, ["a"])
    assert [r["verdict"] for r in rows] == ["PASS", "FAIL"]
    agg = dnh.aggregate(recs, models, rows)
    assert agg["attn"]["source"]["status"] == "not met"
    assert agg["attn"]["source"]["rmse"]["verdict"] == "FAIL"
    assert agg["attn"]["joint"]["status"].startswith("n/a")


# ----------------------------------------------------------------------------
# command line (tiny sphere forward instead of the template, no BEM)


@pytest.fixture
def tiny_regimes(tiny_forward, monkeypatch):
    """Every setting loads the tiny sphere forward with its own simulation."""
    fwd, info = tiny_forward
    fwd = mne.convert_forward_solution(fwd, surf_ori=True, force_fixed=True,
                                       use_cps=True, verbose="error")
    fwd_sim = fwd.copy()
    fwd_sim["sol"]["data"] = fwd["sol"]["data"] * 0.9

    def fake_load_problem(setting, *, bem_ico=None, config=None, verbose=None):
        setting = get_setting(setting).replace(n_times=40)
        return problem_from_forward(fwd, fwd_sim, info=info, setting=setting,
                                    config=config)

    monkeypatch.setattr(dnh, "load_problem", fake_load_problem)


def _needs_regime_fields():
    missing = get_setting("miscaled-cov").missing_fields()
    if missing:
        pytest.skip(f"the simulator lacks {missing}")


def test_cli_do_no_harm_end_to_end(tiny_regimes, tmp_path, capsys):
    _needs_regime_fields()
    out = tmp_path / "dnh"
    argv = ["benchmark", "--do-no-harm", "--setting", "single-focal",
            "--setting", "miscaled-cov", "--methods", "deep-cb-joint",
            "--n-samples", "4", "--out", str(out), "--no-progress",
            "--threads", "1"]
    assert top_cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "### single-focal" in printed and "### miscaled-cov" in printed
    assert "Deep CB (γ,λ)" in printed and "All settings" in printed
    assert "Estimated wall time" in printed
    for name in ("do-no-harm.md", "do-no-harm.csv", "do-no-harm_aggregate.csv",
                 "do-no-harm_single-focal_samples.csv", "run.json"):
        assert (out / name).is_file(), name
    rows = read_csv(out / "do-no-harm.csv")
    assert {(r["setting"], r["model"], r["metric"]) for r in rows} == {
        (s, "deep-cb-joint", m) for s in ("single-focal", "miscaled-cov")
        for m in ("rmse", "emd", "f1", "le")}
    assert all(r["n"] == 4 and r["verdict"] in ("PASS", "FAIL") for r in rows)
    samples = read_csv(out / "do-no-harm_single-focal_samples.csv")
    assert {r["method"] for r in samples} == {"cb-joint-25", "deep-cb-joint"}
    # a second run reuses the 4 samples and adds 2 (same seeds: paired)
    res = dnh.run_do_no_harm(["single-focal"], "deep-cb-joint", n_samples=6,
                             out=out, progress=False)
    assert [(r["first"], r["methods"]) for r in res.info["runs"][
        "single-focal"]] == [(4, ["cb-joint-25", "deep-cb-joint"])]
    again = read_csv(out / "do-no-harm_single-focal_samples.csv")
    assert len(again) == 2 * 6
    old = {(r["method"], r["sample"]): r["rmse"] for r in samples}
    for r in again:
        if r["sample"] < 4:
            assert r["rmse"] == old[(r["method"], r["sample"])]


def test_do_no_harm_reuses_weights_under_another_key(tiny_regimes, tmp_path):
    """Records of a weights file are reused when the same weights are
    checked under their registered key (same sha256): nothing is run
    again, and the per-sample results are those of the file."""
    import shutil

    from mne_unfolded_sbl.core.weights import fetch_weights

    _needs_regime_fields()
    copy = tmp_path / "copy.safetensors"
    shutil.copy(fetch_weights("deep-cb_joint"), copy)
    out = tmp_path / "dnh"
    first = dnh.run_do_no_harm(["single-focal"], str(copy), n_samples=3,
                               out=out, progress=False)
    (file_key,) = {r["method"] for r in first.records} - {"cb-joint-25"}
    assert file_key != "deep-cb-joint"
    again = dnh.run_do_no_harm(["single-focal"], "deep-cb-joint",
                               n_samples=3, out=out, progress=False)
    assert again.info["runs"] == {}  # everything reused
    old = {r["sample"]: r["rmse"] for r in first.records
           if r["method"] == file_key}
    new = {r["sample"]: r["rmse"] for r in again.records
           if r["method"] == "deep-cb-joint"}
    assert new == old and len(new) == 3
    assert {r["label"] for r in again.records
            if r["method"] == "deep-cb-joint"} == {"Deep CB (γ,λ)"}
    (row,) = again.rows
    (row0,) = first.rows
    assert row["model"] == "deep-cb-joint"
    assert row["rmse"] == row0["rmse"] and row["n"] == 3
    # other weights are not confused with them: their samples are run
    from mne_unfolded_sbl.core.network import UnfoldedSBL
    from mne_unfolded_sbl.core.weights import save_model

    other = save_model(UnfoldedSBL(25, "deep-cb", True),
                       tmp_path / "other.safetensors")
    res = dnh.run_do_no_harm(["single-focal"], str(other), n_samples=3,
                             out=out, progress=False)
    (runs,) = res.info["runs"]["single-focal"]
    assert runs["first"] == 0 and len(runs["methods"]) == 1


def test_cli_do_no_harm_geometry_and_strict(tiny_regimes, tmp_path,
                                            monkeypatch, capsys):
    """Bias CB weights of another geometry are reported n/a (geometry);
    --strict exits with 1 on a FAIL."""
    from mne_unfolded_sbl.core.network import UnfoldedSBL
    from mne_unfolded_sbl.core.weights import save_model

    fname = save_model(UnfoldedSBL(3, "bias-cb", True, n_sources=50,
                                   n_sensors=10), tmp_path / "bias.safetensors")
    out = tmp_path / "dnh"
    argv = ["benchmark", "--do-no-harm", "--setting", "single-dipole",
            "--methods", f"deep-cb-source,{fname}", "--n-samples", "3",
            "--out", str(out), "--no-progress", "--emd-threshold", "0.01"]
    with pytest.warns(RuntimeWarning, match="tied to the geometry"):
        assert top_cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "n/a (geometry)" in printed and "0 / 0 (1 n/a)" in printed
    assert "EMD over the sources above 0.01 of the peak" in printed
    samples = read_csv(out / "do-no-harm_single-dipole_samples.csv")
    assert {r["emd_threshold"] for r in samples} == {0.01}
    monkeypatch.setattr(dnh.DoNoHarmResult, "failed", property(lambda s: True))
    assert top_cli.main(argv + ["--methods", "deep-cb-source"]) == 0
    assert top_cli.main(argv + ["--methods", "deep-cb-source",
                                "--strict"]) == 1


def test_cli_do_no_harm_errors(tmp_path, capsys):
    out = str(tmp_path)
    with pytest.raises(ValueError, match="Unknown benchmark setting 'nope'"):
        top_cli.main(["benchmark", "--do-no-harm", "--setting", "nope",
                      "--out", out])
    with pytest.raises(ValueError, match="not a learned model"):
        top_cli.main(["benchmark", "--do-no-harm", "--setting",
                      "single-dipole", "--methods", "cb-joint-25",
                      "--out", out])
    for argv, opt in ((["--strict"], "--strict"),
                      (["--emd-threshold", "0.01"], "--emd-threshold"),
                      (["--do-no-harm", "--sweep", "snr"], "--sweep"),
                      (["--do-no-harm", "--max-seconds", "5"],
                       "--max-seconds")):
        with pytest.raises(SystemExit) as exc:
            top_cli.main(["benchmark", "--out", out] + argv)
        assert exc.value.code == 2
        assert f"argument {opt}" in capsys.readouterr().err
