"""``mne-unfolded-sbl benchmark``: argument checks, output files, unit notes."""

import mne
import pytest

from mne_unfolded_sbl import cli as top_cli
from mne_unfolded_sbl.benchmark import (cli, get_setting, markdown_table,
                                        read_csv, run_benchmark, run_sweep,
                                        synthetic_problem)
from mne_unfolded_sbl.benchmark.settings import problem_from_forward

NOT_CURRENT = "not in A·m"


@pytest.fixture(scope="module")
def synth():
    return synthetic_problem(n_sensors=24, n_sources=120, n_times=40, seed=1)


@pytest.fixture(scope="module")
def tiny_problem(tiny_forward):
    fwd, info = tiny_forward
    fwd = mne.convert_forward_solution(fwd, surf_ori=True, force_fixed=True,
                                       use_cps=True, verbose="error")
    fwd_sim = fwd.copy()
    fwd_sim["sol"]["data"] = fwd["sol"]["data"] * 0.9
    return problem_from_forward(fwd, fwd_sim, info=info, n_times=40)


@pytest.fixture
def tiny_settings(tiny_forward, monkeypatch):
    """Every setting loads the tiny sphere forward (no BEM is computed)."""
    from mne_unfolded_sbl.benchmark import runner, settings

    fwd, info = tiny_forward

    def fake_load_problem(setting, *, bem_ico=None, config=None, verbose=None):
        setting = get_setting(setting)
        return problem_from_forward(fwd, info=info, setting=setting.replace(
            n_times=40), config=config)

    monkeypatch.setattr(settings, "load_problem", fake_load_problem)
    monkeypatch.setattr(runner, "load_problem", fake_load_problem)


def _parse_error(capsys, argv):
    """Parse argv with the top-level dispatcher's parser; return stderr."""
    with pytest.raises(SystemExit) as exc:
        top_cli.build_parser().parse_args(["benchmark"] + argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("argv, option", [
    (["--n-samples", "0"], "--n-samples"),
    (["--n-samples", "-3"], "--n-samples"),
    (["--n-samples", "1.5"], "--n-samples"),
    (["--batch-size", "0"], "--batch-size"),
    (["--cb-layers", "0"], "--cb-layers"),
    (["--threads", "0"], "--threads"),
    (["--seed", "-1"], "--seed"),
    (["--max-seconds", "-1"], "--max-seconds"),
    (["--max-seconds", "nan"], "--max-seconds"),
    (["--mxne-alpha", "0"], "--mxne-alpha"),
    (["--mxne-alpha", "100"], "--mxne-alpha"),
    (["--sweep", "snr", "--sweep-values", "5", "inf"], "--sweep-values"),
])
def test_numeric_options_validated(capsys, argv, option):
    err = _parse_error(capsys, argv)
    assert f"argument {option}" in err and "Traceback" not in err


@pytest.mark.parametrize("argv", [
    ["--sweep", "n-sources", "--sweep-values", "2.5"],
    ["--sweep", "n-sources", "--sweep-values", "0", "3"],
    ["--sweep", "spread", "--sweep-values", "-0.001"],
    ["--sweep-values", "1", "2"],  # values without a sweep
])
def test_sweep_values_checked(capsys, argv, tmp_path, monkeypatch):
    import mne_unfolded_sbl.benchmark.cli as bcli

    monkeypatch.setattr(bcli, "_run_all", lambda args: pytest.fail("ran"),
                        raising=False)
    with pytest.raises(SystemExit) as exc:
        cli.main(argv + ["--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "--sweep" in capsys.readouterr().err


def test_api_refuses_empty_runs(synth):
    with pytest.raises(ValueError, match="n_samples"):
        run_benchmark(synth, "cb-joint-25", n_samples=0, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        run_benchmark(synth, "cb-joint-25", n_samples=2, batch_size=0,
                      progress=False)


def test_rmse_marked_when_not_in_current_units(tiny_problem, tmp_path):
    """sLORETA and dSPM output noise-normalised statistics: their rMSE cells
    carry a mark and the table a footnote; A·m methods carry none."""
    res = run_benchmark(tiny_problem, "cb-joint-25,sloreta,dspm,eloreta",
                        n_samples=2, progress=False)
    rows = {r["method"]: r for r in res.summary()}
    assert not rows["sloreta"]["current_units"]
    assert not rows["dspm"]["current_units"]
    assert rows["eloreta"]["current_units"] and rows["cb-joint-25"]["current_units"]
    md = markdown_table(res.summary())
    table = [ln for ln in md.splitlines() if ln.startswith("|")]
    marked = {ln.split("|")[1].strip() for ln in table
              if "†" in ln.split("|")[3]}
    assert marked == {"sLORETA", "dSPM"}
    assert sum("†" in ln for ln in table) == 4  # two tables x two methods
    assert "rMSE" in md and NOT_CURRENT in md
    # ... and in what is written, and read back from the CSV
    paths = res.write(tmp_path, "t")
    assert NOT_CURRENT in paths["md"].read_text(encoding="utf-8")
    back = read_csv(paths["csv"])
    assert NOT_CURRENT in markdown_table(back)
    # no note when every method is in A·m
    clean = markdown_table([r for r in res.summary()
                            if r["method"] in ("cb-joint-25", "eloreta")])
    assert NOT_CURRENT not in clean and "†" not in clean


def test_sweep_table_marks_rmse(tiny_problem, tmp_path):
    sw = run_sweep(tiny_problem, "snr", [10.0], "sloreta", n_samples=1,
                   progress=False)
    md = sw.write(tmp_path, "sw")["md"].read_text(encoding="utf-8")
    assert NOT_CURRENT in md and "†" in md


def test_cli_prints_and_writes_unit_note(tiny_settings, tmp_path, capsys):
    out = tmp_path / "bench"
    assert top_cli.main(["benchmark", "--methods", "cb-joint-25,sloreta",
                         "--n-samples", "2", "--out", str(out),
                         "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert NOT_CURRENT in printed and "sLORETA" in printed
    assert NOT_CURRENT in (out / "train-cap-ico3.md").read_text(encoding="utf-8")


def test_cli_refuses_to_overwrite(tiny_settings, tmp_path, capsys):
    out = tmp_path / "bench"
    out.mkdir()
    old = out / "train-cap-ico3.csv"
    old.write_text("keep me")
    argv = ["benchmark", "--methods", "cb-joint-25", "--n-samples", "1",
            "--out", str(out), "--no-progress"]
    with pytest.raises(SystemExit) as exc:
        top_cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert str(old) in err and "--overwrite" in err
    assert old.read_text() == "keep me"
    assert not (out / "train-cap-ico3.md").exists()
    # --overwrite replaces them
    assert top_cli.main(argv + ["--overwrite"]) == 0
    assert old.read_text() != "keep me"
    assert len(__import__("json").loads((out / "run.json").read_text())) == 1
