"""``mne-unfolded-sbl benchmark``: Table-3 style comparison on simulated data.

Examples::

    mne-unfolded-sbl benchmark --setting train-cap-ico3 --n-samples 200 --out bench
    mne-unfolded-sbl benchmark --setting things-cap-ico3 --methods classical,sloreta
    mne-unfolded-sbl benchmark --sweep snr --n-samples 50 --out bench
    mne-unfolded-sbl benchmark --curve layers --n-samples 100 --out bench
    mne-unfolded-sbl benchmark --do-no-harm --threads 1 --out dnh
    mne-unfolded-sbl benchmark --do-no-harm --setting single-focal --n-samples 20 --out dnh
    python -m mne_unfolded_sbl.benchmark.cli --help

Writes ``{setting}.md`` / ``{setting}.csv`` (summary: mean, std, median,
quartiles of rMSE, EMD, F1, LE and seconds per sample, one row per
method), ``{setting}_samples.csv`` (every sample), ``{setting}.png`` (box
plots), and for sweeps / curves ``{setting}_sweep-{name}.*`` /
``{setting}_curve-layers.*``; ``run.json`` records the command, versions,
thread count and load average (one entry per run, appended). Existing
tables and figures are replaced only with ``--overwrite``.

``--do-no-harm`` runs the check of
:mod:`~mne_unfolded_sbl.benchmark.do_no_harm` instead: every registered
learned model (or those of ``--methods``) against convex bounding at 25
iterations, paired per sample, on the regime settings
(:data:`~mne_unfolded_sbl.benchmark.settings.DO_NO_HARM_SETTINGS`, or
``--setting``), 500 samples unless ``--n-samples``. It prints the tables and
writes ``do-no-harm.md``, ``do-no-harm.csv``, ``do-no-harm_aggregate.csv``
(always replaced: they are computed from the per-sample files) and
``do-no-harm_{setting}_samples.csv`` (per-sample results, reused and
extended by the next run; ``--overwrite`` recomputes them). The exit status
is 0 unless ``--strict`` and a model fails somewhere (1).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import mne
import numpy as np
import torch

from ..cli import arg_error, float_type, int_type
from ..core._utils import soft_import
from . import plots
from .methods import CB_MAX_ITER, CB_TOL, GROUPS, MXNE_ALPHA, resolve_methods
from .runner import run_benchmark
from .settings import DO_NO_HARM_SETTINGS, SETTINGS, get_setting
from .sweeps import SWEEPS, run_layer_curve, run_sweep

#: Files written per output stem (see the module docstring).
OUTPUT_SUFFIXES = (".md", ".csv", "_samples.csv", ".png")


def add_arguments(parser):
    """Add the ``benchmark`` options to an :class:`argparse.ArgumentParser`."""
    parser.add_argument(
        "--setting", action="append", metavar="NAME",
        help=f"benchmark setting, repeatable: {', '.join(SETTINGS)} or 'all' "
             "(default: train-cap-ico3; with --do-no-harm: "
             f"{', '.join(DO_NO_HARM_SETTINGS)})")
    parser.add_argument(
        "--methods",
        help="comma-separated method keys and groups "
             f"({', '.join(GROUPS)}); e.g. 'classical,sloreta,gamma-map'; a "
             "path ending in .safetensors adds those weights (default: "
             "'default' = every method except plain MNE minimum norm; with "
             "--do-no-harm: the learned models compared, default every "
             "registered one). Use --list-methods to see the keys.")
    parser.add_argument("--list-methods", action="store_true",
                        help="print the available methods and exit")
    parser.add_argument("--n-samples", type=int_type(1),
                        help="simulated samples per setting (or sweep point); "
                             "default 200 (--do-no-harm: 500), the paper "
                             "reports 1000")
    parser.add_argument("--seed", type=int_type(0), default=0,
                        help="simulation seed")
    parser.add_argument("--out", default="benchmark_out",
                        help="output folder (Markdown, CSV, PNG)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the tables and figures of an earlier "
                             "run in --out (run.json is appended to)")
    parser.add_argument("--sweep", choices=sorted(SWEEPS),
                        help="sweep one simulation parameter (Figures 5, 7)")
    parser.add_argument("--sweep-values", type=float_type(), nargs="+",
                        help="values of the sweep (SNR dB, source count, "
                             "spread in metres)")
    parser.add_argument("--curve", choices=["layers"],
                        help="metrics vs iteration/layer for the SBL methods "
                             "(Figure 4)")
    parser.add_argument("--cb-layers", type=int_type(1), default=100,
                        help="iterations of the classical solver in --curve "
                             "layers (default 100)")
    parser.add_argument("--max-seconds", type=float_type(0),
                        help="time budget per method and run (solve time); "
                             "a method that spent it skips the remaining "
                             "batches (its n is then smaller)")
    parser.add_argument("--dtype", choices=["float32", "float64"],
                        default="float32", help="precision of the SBL methods")
    parser.add_argument("--batch-size", type=int_type(1),
                        help="samples per batch (default: per setting)")
    parser.add_argument("--bem-ico", type=int, choices=[3, 4],
                        help="BEM resolution override (3 is fast; default 4)")
    parser.add_argument("--mxne-alpha", default=MXNE_ALPHA,
                        type=float_type(0, 100, min_inclusive=False,
                                        max_inclusive=False),
                        help="MxNE alpha in %% of alpha_max, in (0, 100) "
                             f"(default {MXNE_ALPHA:g})")
    parser.add_argument("--threads", type=int_type(1),
                        help="CPU threads for torch and BLAS (default: "
                             "library defaults; 1 is steadier on a shared "
                             "machine)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar")
    parser.add_argument("--do-no-harm", action="store_true",
                        help="compare every learned model with convex "
                             "bounding (25 it., same noise mode), paired per "
                             "sample, with 95%% CIs and PASS/FAIL per metric, "
                             "then over all settings against the targets")
    parser.add_argument("--strict", action="store_true",
                        help="with --do-no-harm: exit with status 1 when a "
                             "model fails on a setting")
    parser.add_argument("--emd-threshold", type=float_type(0, 1,
                                                           max_inclusive=False),
                        default=0.0,
                        help="with --do-no-harm: EMD over the sources above "
                             "this fraction of the peak (default 0: exact, as "
                             "the other tables; 0.01 is much faster on ico4 "
                             "and extended sources)")
    parser.set_defaults(_cb_tol=CB_TOL, _cb_max_iter=CB_MAX_ITER,
                        _parser=parser)
    return parser


def _settings(args):
    default = list(DO_NO_HARM_SETTINGS) if args.do_no_harm \
        else ["train-cap-ico3"]
    names = args.setting or default
    if "all" in names:
        names = list(SETTINGS)
    for n in names:
        get_setting(n)  # ValueError for unknown names
    return names


def _record(args, out, extra):
    rec = dict(
        command=" ".join(["mne-unfolded-sbl", "benchmark"] + sys.argv[2:])
        if Path(sys.argv[0]).name.startswith("mne-unfolded-sbl")
        else " ".join(sys.argv),
        date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        args={k: v for k, v in vars(args).items() if not k.startswith("_")},
        versions=dict(python=platform.python_version(), torch=torch.__version__,
                      mne=mne.__version__, numpy=np.__version__),
        machine=dict(platform=platform.platform(), cpus=os.cpu_count(),
                     torch_threads=torch.get_num_threads(),
                     loadavg=os.getloadavg() if hasattr(os, "getloadavg")
                     else None),
    )
    rec.update(extra)
    path = Path(out) / "run.json"
    old = json.loads(path.read_text()) if path.is_file() else []
    old = old if isinstance(old, list) else [old]
    path.write_text(json.dumps(old + [rec], indent=1, default=str))
    return path


def _stem(args, name):
    """Output stem of setting ``name`` for this run."""
    if args.curve == "layers":
        return f"{name}_curve-layers"
    if args.sweep:
        return f"{name}_sweep-{args.sweep}"
    return name


def _check_args(args):
    """Checks across options, before anything runs (usage error, status 2)."""
    if args.sweep and args.curve:
        arg_error(args, "give --sweep or --curve, not both")
    if args.strict and not args.do_no_harm:
        arg_error(args, "argument --strict: needs --do-no-harm")
    if args.emd_threshold and not args.do_no_harm:
        arg_error(args, "argument --emd-threshold: needs --do-no-harm")
    if args.do_no_harm:
        for opt, val in (("--sweep", args.sweep), ("--curve", args.curve),
                         ("--max-seconds", args.max_seconds)):
            if val is not None:
                arg_error(args, f"argument {opt}: not with --do-no-harm (the "
                          "check is paired over the same samples)")
        from .do_no_harm import check_settings, resolve_models

        check_settings(_settings(args))  # ValueError for unknown settings
        resolve_models(args.methods, args.dtype)  # ... and models
        return
    if args.sweep_values is not None:
        if not args.sweep:
            arg_error(args, "argument --sweep-values: needs --sweep")
        field_ = SWEEPS[args.sweep][0]
        bad = []
        if field_ == "n_sources":
            bad = [v for v in args.sweep_values if v != int(v) or v < 1]
            what = "whole numbers >= 1"
        elif field_ == "spread":
            bad = [v for v in args.sweep_values if v < 0]
            what = ">= 0 (metres)"
        if bad:
            arg_error(args, f"argument --sweep-values: the {args.sweep} sweep "
                      f"needs values {what}, got {bad}")
    names = _settings(args)  # ValueError for unknown names
    resolve_methods(args.methods, dtype=args.dtype,  # ... and methods
                    mxne_alpha=args.mxne_alpha)
    if not args.overwrite:
        out = Path(args.out)
        existing = [out / f"{_stem(args, n)}{suffix}" for n in names
                    for suffix in OUTPUT_SUFFIXES
                    if (out / f"{_stem(args, n)}{suffix}").exists()]
        if existing:
            arg_error(args, f"argument --out: {', '.join(map(str, existing))} "
                      "already exist(s); pass --overwrite to replace them or "
                      "choose another --out")


def _run_all(args):
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = dict(n_samples=args.n_samples, seed=args.seed,
                  progress=not args.no_progress)
    written = []
    for name in _settings(args):
        methods = resolve_methods(args.methods, dtype=args.dtype,
                                  mxne_alpha=args.mxne_alpha)
        if args.curve == "layers":
            res = run_layer_curve(name, methods, cb_layers=args.cb_layers,
                                  dtype=args.dtype, batch_size=args.batch_size,
                                  bem_ico=args.bem_ico, **common)
            stem = _stem(args, name)
            paths = res.write(out, stem)
            paths["png"] = plots.plot_lines(
                res.summary(), "layer", out / f"{stem}.png",
                xlabel="iteration / layer", title=res.info["title"], log_x=True)
        elif args.sweep:
            res = run_sweep(name, args.sweep, args.sweep_values, methods,
                            dtype=args.dtype, batch_size=args.batch_size,
                            max_seconds=args.max_seconds, bem_ico=args.bem_ico,
                            **common)
            stem = _stem(args, name)
            paths = res.write(out, stem)
            _, _, axis, scale = SWEEPS[args.sweep]
            paths["png"] = plots.plot_lines(
                res.summary(), "value", out / f"{stem}.png", xlabel=axis,
                title=res.info["title"], x_scale=scale)
        else:
            res = run_benchmark(name, methods, dtype=args.dtype,
                                batch_size=args.batch_size,
                                max_seconds=args.max_seconds,
                                bem_ico=args.bem_ico, **common)
            stem = _stem(args, name)
            paths = res.write(out, stem)
            paths["png"] = plots.plot_metrics(res, out / f"{stem}.png")
        _record(args, out, dict(output=stem, info=res.info))
        print((out / f"{stem}.md").read_text(encoding="utf-8")
              if (out / f"{stem}.md").is_file() else f"wrote {paths['csv']}")
        written.append(paths)
    return written


def _do_no_harm(args):
    """The ``--do-no-harm`` check; returns the exit status."""
    from .do_no_harm import cost_markdown, run_do_no_harm

    out = Path(args.out)
    res = run_do_no_harm(_settings(args), args.methods,
                         n_samples=args.n_samples, seed=args.seed, out=out,
                         bem_ico=args.bem_ico, dtype=args.dtype,
                         batch_size=args.batch_size,
                         progress=not args.no_progress,
                         reuse=not args.overwrite,
                         emd_threshold=args.emd_threshold)
    paths = res.write(out)
    _record(args, out, dict(output="do-no-harm", info=res.info))
    print(res.markdown())
    print("## Cost\n")
    print(cost_markdown(res.cost()))
    print(f"wrote {paths['md']}, {paths['csv']}, {paths['aggregate']}")
    return 1 if args.strict and res.failed else 0


def run(args):
    """Run the ``benchmark`` command from parsed arguments."""
    if args.list_methods:
        for m in resolve_methods("all"):
            print(f"{m.key:18s} {m.describe()}")
        return 0
    if args.n_samples is None:
        args.n_samples = 500 if args.do_no_harm else 200
    _check_args(args)
    limits = contextlib.nullcontext()
    if args.threads:
        torch.set_num_threads(int(args.threads))
        threadpoolctl = soft_import("threadpoolctl", strict=False)
        if threadpoolctl is not None:  # else BLAS follows OMP_NUM_THREADS
            limits = threadpoolctl.threadpool_limits(int(args.threads))
    with limits:
        if args.do_no_harm:
            return _do_no_harm(args)
        _run_all(args)
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="mne-unfolded-sbl benchmark",
        description="Compare solvers on simulated data (Table-3 style).")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
