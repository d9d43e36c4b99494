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
after a warm-up call each). GPU batched epochs: ``--epochs-device cuda``
times ``apply_unfolded_sbl_epochs`` on a GPU when one is present.
"""

import argparse
import os
import platform
import statistics
import sys
import time

import mne
import numpy as np
import torch

from mne_unfolded_sbl import (apply_unfolded_sbl, apply_unfolded_sbl_epochs,
                              make_unfolded_sbl_operator)
from mne_unfolded_sbl.core.simulator import SimulationConfig
from mne_unfolded_sbl.datasets import make_template_forward
from mne_unfolded_sbl.simulation import simulate_evoked


def _time(fn, repeats):
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _fmt(ts):
    q = np.quantile(ts, [0.1, 0.9])
    return f"{1e3 * statistics.median(ts):.1f} ({1e3 * q[0]:.1f}-{1e3 * q[1]:.1f})"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--times", type=int, nargs="+", default=[100, 1000, 10000])
    p.add_argument("--models", nargs="+", default=["cb", "deep-cb"])
    p.add_argument("--epochs-device", default=None,
                   help="also time batched epochs on this device (e.g. cuda)")
    p.add_argument("--out", help="write the table to this Markdown file")
    args = p.parse_args(argv)
    mne.set_log_level("error")
    fwd = make_template_forward("train-64", "ico3", bem_ico=3)
    cfg = SimulationConfig(n_sources=(3, 3), snr_db=(10.0, 10.0),
                           n_times=max(args.times))
    evoked_full, _, cov = simulate_evoked(fwd, cfg, seed=0)
    inv = mne.minimum_norm.make_inverse_operator(evoked_full.info, fwd, cov,
                                                 fixed=True, depth=None)
    op = make_unfolded_sbl_operator(evoked_full.info, fwd, cov)
    rows = []
    for T in args.times:
        ev = evoked_full.copy().crop(tmax=evoked_full.times[T - 1])
        row = {"T": T}
        row["sLORETA"] = _time(lambda: mne.minimum_norm.apply_inverse(
            ev, inv, 1.0 / 9, "sLORETA").data, args.repeats)
        for model in args.models:
            row[model] = _time(lambda: apply_unfolded_sbl(
                ev, op, None, model).data, args.repeats)
        rows.append(row)
    cols = ["sLORETA"] + args.models
    lines = [f"# bench_latency.py ({time.strftime('%Y-%m-%d %H:%M %Z')})", "",
             f"* {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} CPUs, torch {torch.__version__} "
             f"({torch.get_num_threads()} threads), mne {mne.__version__}",
             f"* command: python benchmarks/bench_latency.py "
             f"{' '.join(sys.argv[1:] if argv is None else argv)}",
             "* ms per call incl. reading stc.data: median (10-90 %), "
             "prepared operators", "",
             "| T | " + " | ".join(cols) + " | " +
             " | ".join(f"{m} / sLORETA" for m in args.models) + " |",
             "|---" * (1 + 2 * len(cols) - 1) + "|"]
    for r in rows:
        ref = statistics.median(r["sLORETA"])
        lines.append(f"| {r['T']:,} | " + " | ".join(_fmt(r[c]) for c in cols)
                     + " | " + " | ".join(
                         f"{statistics.median(r[m]) / ref:.2f}x"
                         for m in args.models) + " |")
    if args.epochs_device:
        epochs = mne.EpochsArray(
            np.repeat(evoked_full.data[None, :, :100], 4096, 0),
            evoked_full.info, verbose=False)
        for model in args.models:
            ts = _time(lambda: apply_unfolded_sbl_epochs(
                epochs, op, None, model, device=args.epochs_device), 3)
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
