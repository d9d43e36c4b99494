"""Sweeps over SNR, number of sources and spatial spread (paper Figures 5, 7)
and metric versus iteration / layer (Figure 4)."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import torch

from ..core.network import model_label
from ..methods import unfolded_method
from .methods import SBLMethod, resolve_methods
from .runner import (BenchmarkResult, _evaluate, as_problem, simulate_batches,
                     summarize)

#: name -> (SimulationConfig field, default values, axis label, value scale
#: for display). Every sweep point fixes the field to one value (the other
#: ranges stay those of the setting).
SWEEPS = {
    "snr": ("snr_db", [-10.0, -5.0, 0.0, 5.0, 10.0, 20.0, 30.0],
            "per-sensor SNR (dB)", 1.0),
    "n-sources": ("n_sources", [1, 2, 3, 5, 10, 15, 20, 30, 40],
                  "number of active sources", 1.0),
    "spread": ("spread", [0.0, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015],
               "spatial spread sigma (mm)", 1e3),
}


def get_sweep(name):
    """The sweep definition; ValueError for an unknown name."""
    if name not in SWEEPS:
        raise ValueError(f"Unknown sweep {name!r}; valid sweeps are {sorted(SWEEPS)}.")
    return SWEEPS[name]


def run_sweep(setting, sweep, values=None, methods=None, *, n_samples=100,
              seed=0, progress=True, **kwargs):
    """Run the benchmark at every value of one simulation parameter.

    Parameters
    ----------
    setting : str | Setting | Problem
    sweep : "snr" | "n-sources" | "spread"
    values : list | None
        Values (SNR in dB, source count, spread in metres); None uses
        :data:`SWEEPS` defaults.
    methods, n_samples, seed, **kwargs
        As in :func:`~mne_unfolded_sbl.benchmark.run_benchmark`. Every sweep
        point uses the same sample seeds.

    Returns
    -------
    result : BenchmarkResult
        Records carry a ``value`` column; ``result.summary()`` has one row
        per (value, method).
    """
    from .runner import run_benchmark

    field_, defaults, axis, _ = get_sweep(sweep)
    values = list(defaults if values is None else values)
    if field_ == "n_sources":
        if any(float(v) != int(v) for v in values):
            raise ValueError(f"n-sources sweep values must be integers, got {values}")
        values = [int(v) for v in values]
    else:
        values = [float(v) for v in values]
    problem = as_problem(setting, kwargs.pop("bem_ico", None))
    dtype = kwargs.get("dtype", "float32")
    if methods is None or isinstance(methods, str) or (
            len(methods) and isinstance(methods[0], str)):
        kw = {}
        if kwargs.get("mxne_alpha") is not None:
            kw["mxne_alpha"] = kwargs["mxne_alpha"]
        methods = resolve_methods(methods, dtype=dtype, **kw)
    kwargs.pop("mxne_alpha", None)
    records, t0 = [], time.perf_counter()
    for v in values:
        config = problem.config.replace(**{field_: v})
        if field_ == "n_sources" and int(v) > problem.n_sources:
            raise ValueError(f"n_sources={v} exceeds the {problem.n_sources} sources")
        res = run_benchmark(problem.with_config(config), methods,
                            n_samples=n_samples, seed=seed, progress=progress,
                            extra=dict(sweep=sweep, value=v), **kwargs)
        records += res.records
    info = dict(res.info, sweep=sweep, field=field_, values=values, axis=axis,
                wall_seconds=time.perf_counter() - t0,
                title=f"{problem.setting.label}: sweep over {axis}, "
                      f"{n_samples} samples per point, seed {seed}")
    return SweepResult(records=records, methods=methods, info=info)


class SweepResult(BenchmarkResult):
    """A :class:`BenchmarkResult` whose summary is per (value, method)."""

    by_key = "value"

    def summary(self):
        return summarize(self.records, self.methods, by=(self.by_key,))

    def write(self, out_dir, stem):
        from pathlib import Path

        from .runner import markdown_table, write_csv

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        rows = self.summary()
        paths = dict(csv=write_csv(rows, out_dir / f"{stem}.csv"),
                     samples=write_csv(self.records,
                                       out_dir / f"{stem}_samples.csv"),
                     md=out_dir / f"{stem}.md")
        paths["md"].write_text(
            markdown_table(rows, title=self.info.get("title"),
                           extra_cols=(self.by_key,)), encoding="utf-8")
        return paths


# ----------------------------------------------------------------------------
# metric versus iteration / layer (Figure 4)


def _curve_layers(n_layers, max_layers):
    """Layers (1-based) at which a curve is evaluated: every one up to 25,
    then every 5th up to 50, then every 25th."""
    sel = [k for k in range(1, n_layers + 1)
           if k <= 25 or (k <= 50 and k % 5 == 0) or k % 25 == 0
           or k == n_layers]
    return [k for k in sel if k <= max_layers]


def run_layer_curve(setting, methods=None, *, n_samples=100, seed=0,
                    cb_layers=100, dtype="float32", batch_size=None,
                    progress=True, bem_ico=None, metric_kw=None):
    """Metrics of the posterior mean after every iteration / layer.

    The classical solver (source-only and joint) runs ``cb_layers``
    iterations as an untrained network; every learned network runs its own
    depth. Uses ``return_trajectory=True`` and
    ``out.posterior_mean(Y, layer=k)``.

    Parameters
    ----------
    methods : None | str | list
        SBL methods (keys or groups, see
        :func:`~mne_unfolded_sbl.benchmark.methods.resolve_methods`); None
        means the classical joint and source-only solvers plus every
        registered learned model. Non-SBL methods are ignored; the
        "converged" variants are replaced by one ``cb_layers``-deep run.

    Returns
    -------
    result : BenchmarkResult
        Records carry a ``layer`` column (1-based); summary per (layer, method).
    """
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    problem = as_problem(setting, bem_ico)
    if methods is None:
        methods = "sbl"
    if isinstance(methods, str) or (len(methods) and isinstance(methods[0], str)):
        methods = resolve_methods(methods, dtype=dtype)
    curve_methods, seen = [], set()
    for m in methods:
        if not isinstance(m, SBLMethod):
            continue
        if m.model == "cb":
            key = f"cb-{'joint' if m.learn_noise else 'source'}"
            if key in seen:
                continue
            seen.add(key)
            # the registry's classical solver, cb_layers deep, one curve
            # per noise setting (its depth is the x axis, not in the label)
            spec = unfolded_method("cb", m.learn_noise, n_layers=cb_layers)
            m = SBLMethod(replace(spec, key=key,
                                  label=model_label("cb", m.learn_noise)),
                          dtype=dtype)
        curve_methods.append(m)
    if not curve_methods:
        raise ValueError("run_layer_curve needs at least one SBL method.")
    for m in curve_methods:
        m.prepare(problem)
    metric_kw = dict(metric_kw or {})
    records = []
    total = sum(len(_curve_layers(m.net.n_layers, m.net.n_layers))
                for m in curve_methods) * int(n_samples)
    bar = tqdm(total=total, disable=not progress, unit="eval",
               desc=f"{problem.setting.name} layers")
    for batch in simulate_batches(problem, n_samples, seed, batch_size):
        for m in curve_methods:
            Y, nv = m._inputs(batch)
            with torch.no_grad():
                _, _, out = m.run(Y, nv, return_trajectory=True)
                for k in _curve_layers(m.net.n_layers, m.net.n_layers):
                    X = out.posterior_mean(Y, layer=k - 1).to(torch.float64).numpy()
                    res = _evaluate(problem, batch.X, X, metric_kw)
                    for j, idx in enumerate(batch.index):
                        records.append(dict(
                            layer=k, method=m.key, label=m.label,
                            sample=int(idx), rmse=res["rmse"][j],
                            emd=res["emd"][j], le=res["le"][j], f1=res["f1"][j],
                            precision=res["precision"][j],
                            recall=res["recall"][j], empty=bool(res["empty"][j]),
                            failed=False, seconds=np.nan, setup_seconds=np.nan,
                            n_iter=float(k)))
                    bar.update(len(batch))
    bar.close()
    info = dict(setting=problem.setting.name, n_samples=int(n_samples),
                seed=int(seed), cb_layers=cb_layers, dtype=dtype,
                wall_seconds=time.perf_counter() - t_start,
                methods={m.key: m.describe() for m in curve_methods},
                title=f"{problem.setting.label}: metrics vs iteration/layer, "
                      f"{n_samples} samples, seed {seed}")
    return CurveResult(records=records, methods=curve_methods, info=info)


class CurveResult(SweepResult):
    """Summary per (layer, method)."""

    by_key = "layer"
