"""Smoke test of the speed script (it prints tables; nothing is timed here)."""

import importlib.util
from pathlib import Path

import torch

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "bench_solver.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_solver", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_solver_throughput_table(tmp_path, capsys):
    mod = _load()
    out = tmp_path / "bench.md"
    assert mod.main(["--no-mne", "--batches", "1", "2", "--repeats", "1",
                     "--throughput-repeats", "1", "--out", str(out)]) == 0
    text = out.read_text()
    for row in ("25 layers joint, float32, batch 1",
                "25 layers source-only, float64, batch 2"):
        assert row in text
    assert "evoked/s" in text and "random Gaussian 64x1284" in text


def test_bench_solver_runners_agree():
    """The kernel and dense outputs of every runner describe the same
    estimate, and the runners match the network they wrap."""
    mod = _load()
    L, _ = mod.load_leadfield(n_channels=16, n_sources=60)
    Y, nv = mod.random_data(L, 2, 30, n_active=3)
    assert torch.allclose(Y.mean(-2), torch.zeros(2, 30, dtype=Y.dtype),
                          atol=1e-12)  # average-referenced
    L_t = torch.as_tensor(L)
    for kw in (dict(kind="cb", max_iter=5), dict(kind="net")):
        K = mod.sbl_runner(L_t, True, **kw)(Y, nv)
        X = mod.sbl_runner(L_t, True, output="mean", **kw)(Y, nv)
        torch.testing.assert_close(K @ Y, X, rtol=1e-8, atol=1e-10)
