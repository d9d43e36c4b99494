"""End-to-end latency of one call, as a user feels it, beside sLORETA.

Times ``apply_unfolded_sbl(evoked, operator, None, model)`` followed by
reading ``stc.data`` (the source time courses formed), with a prepared
operator, at T = 100 / 1,000 / 10,000 samples, beside MNE's
``apply_inverse(evoked, inverse_operator, method="sLORETA")`` and reading
its ``stc.data``, in the same process and run. Template head: 64-channel
training cap, fsaverage ico3 (1284 sources), fast ico3 BEM.

Usage::

    python benchmarks/bench_latency.py --repeats 15 --out latency.md

Prints a Markdown table (median and 10-90 % range of ``--repeats`` calls
after a warm-up call each; the methods take turns call by call, so load
from other processes hits them alike) and the load average. GPU batched
epochs: ``--epochs-device cuda`` times ``apply_unfolded_sbl_epochs`` on a
GPU when one is present.

Before/after in one run: ``--baseline-rev REV`` also times the package as
it is at the git revision ``REV`` (all of ``mne_unfolded_sbl/``, imported
under another name from a ``git archive`` copy; the same bundled network
weights), interleaved with the current code::

    python benchmarks/bench_latency.py --repeats 21 --baseline-rev HEAD

Threads: by default every library keeps its own setting (pin them with
``OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1`` for the
one-thread table), and the solver of one evoked response runs on one
torch thread whatever the setting (``inverse._SERIAL_BATCH``).
``--threads N`` (``0``: one per CPU) sets torch's and NumPy's BLAS
threads to ``N`` for both methods; ``--serial-rule off`` lets the solver
use them too, ``both`` times our models with and without the rule, in
turns (the rule's check)::

    python benchmarks/bench_latency.py --threads 0 --serial-rule both
"""

import argparse
import importlib
import io
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

import mne
import numpy as np
import torch

import mne_unfolded_sbl.inverse as inverse
from mne_unfolded_sbl import (apply_unfolded_sbl, apply_unfolded_sbl_epochs,
                              make_unfolded_sbl_operator)
from mne_unfolded_sbl.core.simulator import SimulationConfig
from mne_unfolded_sbl.datasets import make_template_forward
from mne_unfolded_sbl.simulation import simulate_evoked


def _time_interleaved(fns, repeats, pause=0.0, clock=time.perf_counter):
    """Times (s) of each of ``fns`` (name -> callable), taking turns, with
    ``pause`` seconds before each call."""
    for fn in fns.values():
        fn()  # warm-up
    out = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            time.sleep(pause)
            t0 = clock()
            fn()
            out[k].append(clock() - t0)
    return out


def load_baseline(rev):
    """``apply_unfolded_sbl`` and ``make_unfolded_sbl_operator`` of the
    package as it is at git revision ``rev``.

    The package directory of ``rev`` (``git archive``) is imported under
    another name from a temporary directory: every module of the old
    version (solver, network, corrections, API and its caches) runs, with
    the bundled weights of the installed package (``pretrained_weights``
    is imported by its absolute name).
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    archive = subprocess.run(["git", "archive", rev, "mne_unfolded_sbl"],
                             cwd=root, check=True, capture_output=True).stdout
    tmp = tempfile.mkdtemp(prefix="baseline_")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(tmp, **kwargs)
    name = "_baseline_mne_unfolded_sbl"
    os.rename(os.path.join(tmp, "mne_unfolded_sbl"), os.path.join(tmp, name))
    sys.path.insert(0, tmp)
    try:
        pkg = importlib.import_module(name)
        return (pkg.apply_unfolded_sbl, pkg.make_unfolded_sbl_operator,
                importlib.import_module(name + ".inverse"))
    finally:
        sys.path.remove(tmp)


def _fmt(ts):
    q = np.quantile(ts, [0.1, 0.9])
    return (f"{1e3 * statistics.median(ts):.1f} ({1e3 * q[0]:.1f}-"
            f"{1e3 * q[1]:.1f}; min {1e3 * min(ts):.1f})")


def _with_serial_batch(module, value, fn):
    """``fn`` with ``module._SERIAL_BATCH`` (the batch size from which the
    solver keeps the caller's threads) set to ``value`` during the call."""
    def call():
        old = module._SERIAL_BATCH
        module._SERIAL_BATCH = value
        try:
            return fn()
        finally:
            module._SERIAL_BATCH = old
    return call


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--times", type=int, nargs="+", default=[100, 1000, 10000])
    p.add_argument("--models", nargs="+", default=["cb", "deep-cb"])
    p.add_argument("--epochs-device", default=None,
                   help="also time batched epochs on this device (e.g. cuda)")
    p.add_argument("--pause", type=float, default=0.0,
                   help="seconds of idle before each timed call (lets the "
                   "BLAS threads of the previous call go to sleep: OpenBLAS "
                   "threads spin ~0.1 s after a product, on a core the next "
                   "call may need)")
    p.add_argument("--cpu-time", action="store_true",
                   help="report the process's CPU time per call instead of "
                   "wall time: on a loaded machine, with every library on "
                   "one thread (OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1), "
                   "close to the wall time of one idle core")
    p.add_argument("--baseline-rev", metavar="REV",
                   help="also time the package as it is at this git "
                   "revision (e.g. HEAD), interleaved")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="set torch's and NumPy's BLAS threads to N (0: one "
                   "per CPU) for both methods; default: leave each library "
                   "as the environment set it")
    p.add_argument("--serial-rule", choices=("on", "off", "both"),
                   default="on", help="whether our solver runs one evoked "
                   "response on one torch thread (the package's rule, "
                   "'on') or on the threads set ('off'); 'both' times "
                   "each model both ways, in turns")
    p.add_argument("--out", help="write the table to this Markdown file")
    args = p.parse_args(argv)
    if args.threads is not None:
        from threadpoolctl import threadpool_limits

        n_threads = args.threads or os.cpu_count()
        torch.set_num_threads(n_threads)
        threadpool_limits(n_threads)  # NumPy / SciPy BLAS (sLORETA)
    baseline = load_baseline(args.baseline_rev) if args.baseline_rev else None
    mne.set_log_level("error")
    fwd = make_template_forward("train-64", "ico3", bem_ico=3)
    cfg = SimulationConfig(n_sources=(3, 3), snr_db=(10.0, 10.0),
                           n_times=max(args.times))
    evoked_full, _, cov = simulate_evoked(fwd, cfg, seed=0)
    inv = mne.minimum_norm.make_inverse_operator(evoked_full.info, fwd, cov,
                                                 fixed=True, depth=None)
    op = make_unfolded_sbl_operator(evoked_full.info, fwd, cov)
    rows = []
    load0 = os.getloadavg()
    models = list(args.models)
    if baseline is not None:
        apply_baseline, make_baseline_operator, inverse_baseline = baseline
        op_baseline = make_baseline_operator(evoked_full.info, fwd, cov)
        models = [f"{m} ({args.baseline_rev})" for m in args.models] + models
    # "<model> [threads]": the solver on the threads set (no serial rule)
    threaded = " [threads]"
    if args.serial_rule == "off":
        models = [m + threaded for m in models]
    elif args.serial_rule == "both":
        models = models + [m + threaded for m in models]

    def call(model, ev):
        serial = not model.endswith(threaded)
        model = model.removesuffix(threaded)
        if model.endswith(")"):
            name = model.rsplit(" (", 1)[0]
            fn, module = (lambda: apply_baseline(ev, op_baseline, None,
                                                 name).data,
                          inverse_baseline)
        else:
            fn, module = (lambda: apply_unfolded_sbl(ev, op, None,
                                                     model).data, inverse)
        # 1: every batch keeps the threads set
        return fn if serial else _with_serial_batch(module, 1, fn)

    for T in args.times:
        ev = evoked_full.copy().crop(tmax=evoked_full.times[T - 1])
        fns = {"sLORETA": lambda ev=ev: mne.minimum_norm.apply_inverse(
            ev, inv, 1.0 / 9, "sLORETA").data}
        fns.update({m: call(m, ev) for m in models})
        row = _time_interleaved(
            fns, args.repeats, args.pause,
            time.process_time if args.cpu_time else time.perf_counter)
        row["T"] = T
        rows.append(row)
    load1 = os.getloadavg()
    cols = ["sLORETA"] + models
    lines = [f"# bench_latency.py ({time.strftime('%Y-%m-%d %H:%M %Z')})", "",
             f"* {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} CPUs, torch {torch.__version__} "
             f"({torch.get_num_threads()} threads), mne {mne.__version__}",
             "* thread settings: " + (", ".join(
                 f"{k}={os.environ[k]}" for k in (
                     "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                     "MKL_NUM_THREADS") if k in os.environ) or "defaults")
             + ("" if args.threads is None else
                f"; --threads {args.threads}: torch and BLAS on "
                f"{torch.get_num_threads()} threads")
             + "; our solver on one torch thread per evoked response "
             + {"on": "(the package's rule)",
                "off": "off: on the threads set",
                "both": "(plain names) and on the threads set "
                        "(`[threads]`)"}[args.serial_rule],
             f"* load average (1/5/15 min) {load0[0]:.2f} / {load0[1]:.2f} / "
             f"{load0[2]:.2f} at the start, {load1[0]:.2f} / {load1[1]:.2f} / "
             f"{load1[2]:.2f} at the end",
             f"* command: python benchmarks/bench_latency.py "
             f"{' '.join(sys.argv[1:] if argv is None else argv)}",
             f"* {'CPU' if args.cpu_time else 'wall'} "
             "ms per call incl. reading stc.data: median (10-90 %; "
             "minimum), "
             "prepared operators, methods taking turns call by call"
             + (f", {args.pause:g} s idle before each call" if args.pause
                else ""), "",
             "| T | " + " | ".join(cols) + " | " +
             " | ".join(f"{m} / sLORETA" for m in models) + " |",
             "|---" * (1 + 2 * len(cols) - 1) + "|"]
    for r in rows:
        ref = statistics.median(r["sLORETA"])
        lines.append(f"| {r['T']:,} | " + " | ".join(_fmt(r[c]) for c in cols)
                     + " | " + " | ".join(
                         f"{statistics.median(r[m]) / ref:.2f}x"
                         for m in models) + " |")
    if args.epochs_device:
        epochs = mne.EpochsArray(
            np.repeat(evoked_full.data[None, :, :100], 4096, 0),
            evoked_full.info, verbose=False)
        for model in args.models:
            ts = _time_interleaved({model: lambda: apply_unfolded_sbl_epochs(
                epochs, op, None, model, device=args.epochs_device)},
                3)[model]
            lines.append(f"\n{model} epochs on {args.epochs_device}: "
                         f"{len(epochs) / statistics.median(ts):,.0f} "
                         "evoked/s (4096 epochs, T=100)")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
