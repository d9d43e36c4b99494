"""Benchmark harness: settings, method adapters, runner, sweeps and plots.

Run it with ``mne-unfolded-sbl benchmark`` (see :mod:`.cli`) or from Python::

    from mne_unfolded_sbl.benchmark import run_benchmark
    res = run_benchmark("train-cap-ico3", "classical,sloreta", n_samples=50)
    res.write("out", "train-cap-ico3")
"""

from .methods import (Batch, GammaMapMethod, Method, MNELinearMethod,
                      MxNEMethod, SBLMethod, all_method_keys, resolve_methods)
from .runner import (BenchmarkResult, markdown_table, read_csv, run_benchmark,
                     sample_seed, simulate_batches, summarize, write_csv)
from .settings import (SETTINGS, Problem, Setting, get_setting, load_problem,
                       synthetic_problem)
from .sweeps import SWEEPS, run_layer_curve, run_sweep

__all__ = [
    "Batch", "BenchmarkResult", "GammaMapMethod", "MNELinearMethod", "Method",
    "MxNEMethod", "Problem", "SBLMethod", "SETTINGS", "SWEEPS", "Setting",
    "all_method_keys", "get_setting", "load_problem", "markdown_table",
    "read_csv", "resolve_methods", "run_benchmark", "run_layer_curve",
    "run_sweep", "sample_seed", "simulate_batches", "summarize",
    "synthetic_problem", "write_csv",
]
