"""The ``mne-unfolded-sbl`` dispatcher and the ``demo`` command's arguments."""

import subprocess
import sys

import pytest

from mne_unfolded_sbl import cli, demo


@pytest.fixture
def no_demo_run(monkeypatch):
    """Replace the (slow) demo by a recorder: a test that expects a refusal
    fails fast, instead of running the whole demo, if nothing refuses."""
    calls = []

    def fake_run_demo(out, **kwargs):
        calls.append((out, kwargs))
        return {}

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    return calls


def _error(capsys, argv):
    """Run the dispatcher on argv; return the exit status and stderr."""
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    return exc.value.code, capsys.readouterr().err


def test_help_imports_no_heavy_module():
    """``mne-unfolded-sbl --help`` loads no command module (no torch, no
    MNE); ``demo --help`` still shows the demo's options."""
    code = ("import sys\n"
            "from mne_unfolded_sbl import cli\n"
            "try:\n"
            "    cli.main(['--help'])\n"
            "except SystemExit as e:\n"
            "    assert e.code == 0, e.code\n"
            "heavy = [m for m in ('torch', 'mne', 'matplotlib', "
            "'mne_unfolded_sbl.benchmark', 'mne_unfolded_sbl.demo') "
            "if m in sys.modules]\n"
            "print('HEAVY', heavy)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "HEAVY []" in res.stdout, res.stdout
    for name in ("demo", "benchmark", "train"):
        assert name in res.stdout


def test_command_help(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--overwrite" in out and "--n-times" in out
    # the full parser (every command) still builds
    args = cli.build_parser().parse_args(["demo", "--n-times", "5"])
    assert args.n_times == 5
    assert _error(capsys, ["nope"])[0] == 2


@pytest.mark.parametrize("argv, option", [
    (["--n-times", "0"], "--n-times"),
    (["--n-times", "-5"], "--n-times"),
    (["--n-times", "1"], "--n-times"),  # the simulator needs 2
    (["--n-times", "2.5"], "--n-times"),
    (["--n-sources", "0"], "--n-sources"),
    (["--seed", "-1"], "--seed"),
    (["--sfreq", "0"], "--sfreq"),
    (["--sfreq", "nan"], "--sfreq"),
    (["--snr-db", "inf", "5"], "--snr-db"),
    (["--loose", "1.5"], "--loose"),
    (["--loose", "-0.1"], "--loose"),
    (["--loose", "nan"], "--loose"),
    (["--source-model", "patches"], "--source-model"),
])
def test_demo_numeric_options_validated(capsys, no_demo_run, argv, option):
    code, err = _error(capsys, ["demo"] + argv)
    assert code == 2
    assert f"argument {option}" in err and "Traceback" not in err
    assert not no_demo_run


def test_demo_snr_range_ordered(capsys, no_demo_run, tmp_path):
    code, err = _error(capsys, ["demo", "--out", str(tmp_path),
                                "--snr-db", "20", "5"])
    assert code == 2 and "--snr-db" in err and "LOW" in err
    assert not no_demo_run


def test_demo_refuses_to_overwrite(tmp_path, capsys, no_demo_run):
    report = tmp_path / "report.html"
    report.write_text("keep me")
    for out in (report, tmp_path):  # the file, or the folder holding it
        code, err = _error(capsys, ["demo", "--out", str(out)])
        assert code == 2
        assert str(report) in err and "--overwrite" in err
    assert not no_demo_run and report.read_text() == "keep me"
    # with --overwrite the demo runs (and is told it may overwrite)
    assert cli.main(["demo", "--out", str(report), "--overwrite"]) == 0
    assert no_demo_run[0][0] == report and no_demo_run[0][1]["overwrite"]
    # a new file is fine without the flag
    assert cli.main(["demo", "--out", str(tmp_path / "new.html")]) == 0


def test_run_demo_refuses_to_overwrite(tmp_path, monkeypatch):
    """The Python API refuses too (before any computation)."""
    import mne_unfolded_sbl.datasets as datasets

    def no_forward(*args, **kwargs):
        raise AssertionError("the demo started instead of refusing")

    monkeypatch.setattr(datasets, "make_template_forward", no_forward)
    monkeypatch.setattr(demo, "make_template_forward", no_forward,
                        raising=False)
    report = tmp_path / "r.html"
    report.write_text("keep me")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        demo.run_demo(report)
    assert report.read_text() == "keep me"


@pytest.mark.parametrize("name", ["out.png", "report.pdf", "x.htmlx"])
def test_demo_out_must_be_html_or_folder(tmp_path, capsys, no_demo_run, name):
    code, err = _error(capsys, ["demo", "--out", str(tmp_path / name)])
    assert code == 2 and "--out" in err and ".html" in err and name in err
    assert not no_demo_run


def test_demo_out_folder_meaning_kept(tmp_path, capsys, no_demo_run):
    """``--out`` is an .html file or a folder (created, report.html in it);
    an existing folder with a dot in its name and a trailing-slash path are
    folders too."""
    dotted = tmp_path / "results.v2"
    dotted.mkdir()
    for out, expected in ((tmp_path / "demo_out", tmp_path / "demo_out"),
                          (dotted, dotted),
                          (str(tmp_path / "new.v3") + "/", tmp_path / "new.v3"),
                          (tmp_path / "R.HTM", None)):
        assert cli.main(["demo", "--out", str(out)]) == 0
        got = no_demo_run[-1][0]
        assert got == (expected / "report.html" if expected else tmp_path / "R.HTM")
        assert got.parent.is_dir()


def test_demo_source_model_options(capsys, no_demo_run, tmp_path):
    """--source-model and --loose reach run_demo; multiscale needs loose 0."""
    assert cli.main(["demo", "--out", str(tmp_path / "a"), "--source-model",
                     "multiscale"]) == 0
    assert cli.main(["demo", "--out", str(tmp_path / "b"), "--loose",
                     "0.2"]) == 0
    (_, kw_ms), (_, kw_lo) = no_demo_run
    assert kw_ms["source_model"] == "multiscale" and kw_ms["loose"] == 0.0
    assert kw_lo["source_model"] == "point" and kw_lo["loose"] == 0.2
    code, err = _error(capsys, ["demo", "--out", str(tmp_path / "c"),
                                "--source-model", "multiscale", "--loose",
                                "0.2"])
    assert code == 2 and "argument --loose" in err and "multiscale" in err
    assert len(no_demo_run) == 2  # the refused call ran nothing


def test_run_demo_refuses_multiscale_with_loose(tmp_path):
    """The Python entry point refuses it before any computation."""
    with pytest.raises(ValueError, match="loose=0"):
        demo.run_demo(tmp_path / "r.html", source_model="multiscale",
                      loose=0.2)
    assert not (tmp_path / "r.html").exists()
