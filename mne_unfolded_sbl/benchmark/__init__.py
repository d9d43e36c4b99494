"""Benchmark harness: settings, method adapters, runner, sweeps and plots.

Run it with ``mne-unfolded-sbl benchmark`` (see :mod:`.cli`) or from Python::

    from mne_unfolded_sbl.benchmark import run_benchmark
    res = run_benchmark("train-cap-ico3", "classical,sloreta", n_samples=50)
    res.write("out", "train-cap-ico3")

The do-no-harm check of every learned model against convex bounding
(``mne-unfolded-sbl benchmark --do-no-harm``) is :func:`run_do_no_harm`.
"""

from .do_no_harm import DoNoHarmResult, paired_difference, run_do_no_harm
from .methods import (Batch, GammaMapMethod, Method, MNELinearMethod,
                      MxNEMethod, SBLMethod, all_method_keys, resolve_methods)
from .runner import (BenchmarkResult, markdown_table, read_csv, run_benchmark,
                     sample_seed, simulate_batches, summarize, write_csv)
from .settings import (DO_NO_HARM_SETTINGS, SETTINGS, Problem, Setting,
                       get_setting, load_problem, synthetic_problem)
from .sweeps import SWEEPS, run_layer_curve, run_sweep

__all__ = [
    "Batch", "BenchmarkResult", "DO_NO_HARM_SETTINGS", "DoNoHarmResult",
    "GammaMapMethod", "MNELinearMethod", "Method", "MxNEMethod", "Problem",
    "SBLMethod", "SETTINGS", "SWEEPS", "Setting", "all_method_keys",
    "get_setting", "load_problem", "markdown_table", "paired_difference",
    "read_csv", "resolve_methods", "run_benchmark", "run_do_no_harm",
    "run_layer_curve", "run_sweep", "sample_seed", "simulate_batches",
    "summarize", "synthetic_problem", "write_csv",
]
