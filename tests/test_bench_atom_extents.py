"""Smoke test of benchmarks/bench_atom_extents.py (atom radii of the
multi-scale source model)."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "bench_atom_extents.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_atom_extents", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_atom_extents_table(bench, template_cache, monkeypatch, capsys):
    """Two sets on two samples: a table per setting, the paired difference
    to the default, and the default set reproduces the registry's
    cb-joint-25-multiscale (checked by the script itself)."""
    monkeypatch.setenv("MNE_UNFOLDED_SBL_CACHE", str(template_cache))
    ret = bench.main(["--n-samples", "2", "--settings", "single-dipole",
                      "--extents", "0,8", "0,8,16,25", "--threads", "1",
                      "--rst"])
    assert ret == 0
    out = capsys.readouterr().out
    assert "| Atom radii | orders | atoms | rMSE |" in out
    assert "| Convex bounding (γ,λ), 25 it. | – | 1284 |" in out
    assert "| extents (0, 8) mm | (0, 1) | 2568 |" in out
    assert "| extents (0, 8, 16, 25) mm (default) | (0, 1, 4, 9) | 5136 |" in out
    assert "Paired difference to the default set" in out
    assert '.. csv-table::' in out
    assert out.count("extents (0, 8) mm") == 4  # 2 tables x (md + rst)


def test_bench_atom_extents_errors(bench, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--extents", "0,eight"])
    assert "comma-separated radii" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--extents", "0,-8"])
    with pytest.raises(SystemExit):
        bench.main(["--n-samples", "1"])
