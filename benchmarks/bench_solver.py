"""Speed of the convex-bounding core, the unfolded network and MNE's solvers.

Side by side in one run, on 64 channels x 1284 sources (the 64-channel
training cap on the ico3 fsaverage template, average-referenced):

* per evoked response (batch 1), at T = 100 and T = 10,000 samples:
  classical convex bounding at 25 iterations and run to convergence
  (relative Type-II cost decrease < 1e-6), the untrained 25-layer network
  (joint and source-only), every registered learned network,
  ``mne.inverse_sparse.gamma_map`` at its default tolerance (update_mode 2,
  the convex-bounding update, and MNE's default update_mode 1), sLORETA
  (``make_inverse_operator`` + ``apply_inverse``; apply alone and total),
  and ``apply_unfolded_sbl`` end to end;
* batched throughput (evoked/s) at batch 64 and 256, float32 and float64.

Every fixed-cost number is the median of ``--repeats`` runs after a
warm-up (``time.perf_counter``; the minimum is given in the notes, a
steadier estimate on a shared machine). Solvers run to convergence cost
what their sample needs: they are timed once on each of
``--conv-samples`` samples (median, iteration counts in the notes). Data
are simulated as in the benchmark harness (perturbed-conductivity forward,
5-20 focal sources, per-sensor SNR 5-30 dB). The Markdown table is printed
and written to ``--out``.

Without MNE (e.g. on a GPU machine), ``--device cuda`` or ``--no-mne``
measures only the network throughput, from a lead field ``.npz`` written
by ``mne_unfolded_sbl.datasets.save_leadfield_npz`` (``--leadfield``) or a
random Gaussian one::

    python benchmarks/bench_solver.py --out bench_cpu.md
    python benchmarks/bench_solver.py --save-leadfield train64_ico3.npz
    python benchmarks/bench_solver.py --device cuda --leadfield train64_ico3.npz \\
        --out bench_gpu.md
    python benchmarks/bench_solver.py --profile     # where the time goes
"""

import argparse
import contextlib
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from mne_unfolded_sbl.core._utils import soft_import
from mne_unfolded_sbl.core.leadfield import average_reference, read_leadfield_npz

TARGET_MS = 20.0  # 25 joint layers per evoked
TARGET_T_RATIO = 2.0  # T=10,000 vs T=100
TARGET_SPEEDUP = 10.0  # vs gamma_map at its default tolerance
SOURCE_SCALE = 10e-9  # A·m, as in simulate_evoked


# ----------------------------------------------------------------------------
# helpers


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timeit(fn, repeats=7, warmup=1, device="cpu"):
    """Median and all times (s) of ``fn()`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def load_leadfield(path=None, n_channels=64, n_sources=1284, seed=0):
    """Average-referenced lead field from an ``.npz`` (numpy only) or random."""
    if path:
        L = read_leadfield_npz(path).L
        return L, f"{path} ({L.shape[0]}x{L.shape[1]})"
    rng = np.random.default_rng(seed)
    return (average_reference(rng.standard_normal((n_channels, n_sources))),
            f"random Gaussian {n_channels}x{n_sources}")


def random_data(L, batch, n_times, seed=0, n_active=10, snr_db=10.0):
    """Focal random data ``Y = L X + E``, average-referenced (no MNE).

    ``X`` has ``n_active`` random sources with white time courses; it is
    never formed densely, so large batches fit in memory.
    Returns ``Y`` (B, M, T) and the noise variances (B, M), float64 CPU.
    """
    g = torch.Generator().manual_seed(seed)
    L = torch.as_tensor(L, dtype=torch.float64)
    M, N = L.shape
    idx = torch.stack([torch.randperm(N, generator=g)[:n_active]
                       for _ in range(batch)])  # (B, K)
    S = torch.randn(batch, n_active, n_times, generator=g, dtype=torch.float64)
    LX = L.T[idx].transpose(1, 2) @ S  # (B, M, K) @ (B, K, T)
    nv = LX.pow(2).mean(-1) / 10 ** (snr_db / 10)
    Y = LX + nv.sqrt()[..., None] * torch.randn(LX.shape, generator=g,
                                                 dtype=torch.float64)
    return Y - Y.mean(-2, keepdim=True), nv  # average reference


class Table:
    def __init__(self):
        self.rows = []

    def add(self, section, what, t100=None, t10k=None, note=""):
        self.rows.append((section, what, t100, t10k, note))

    def markdown(self, cols=("T = 100", "T = 10,000")):
        out = [f"| Section | Method | {cols[0]} | {cols[1]} | Notes |",
               "|---|---|---|---|---|"]
        for sec, what, a, b, note in self.rows:
            out.append(f"| {sec} | {what} | {_ms(a)} | {_ms(b)} | {note} |")
        return "\n".join(out)


def _ms(t):
    if t is None:
        return "–"
    if isinstance(t, str):
        return t
    return f"{t * 1e3:.1f} ms" if t < 1 else f"{t:.2f} s"


# ----------------------------------------------------------------------------
# torch-only parts (CPU or CUDA)


def sbl_runner(L_t, learn_noise, *, kind="net", max_iter=25, tol=None,
               model="cb", output="kernel"):
    """A closure ``f(Y, nv) -> estimate`` running one SBL variant.

    ``kind="cb"``: :func:`~mne_unfolded_sbl.core.solver.convex_bounding`
    (``max_iter`` iterations, or until the relative cost decrease < ``tol``);
    ``kind="net"``: the 25-layer :class:`~mne_unfolded_sbl.core.network.UnfoldedSBL`
    (``model="cb"`` untrained, or a registered learned model). The data are
    average-referenced: every variant gets the reference's null space.
    ``output="kernel"`` returns the posterior kernel ``K`` (N x M, what
    ``apply_unfolded_sbl`` puts in the SourceEstimate: flat in T);
    ``"mean"`` the dense posterior mean ``K Y`` (N x T).
    """
    from mne_unfolded_sbl.core.network import UnfoldedSBL
    from mne_unfolded_sbl.core.solver import (NullSpace, convex_bounding,
                                         covariance_statistic, posterior_kernel,
                                         posterior_mean)

    null = NullSpace.average_reference(L_t.shape[0], L_t.device)
    if kind == "cb":
        def run(Y, nv):
            Cy = covariance_statistic(Y)
            res = convex_bounding(L_t, Cy, learn_noise=learn_noise,
                                  noise_var=None if learn_noise else nv,
                                  max_iter=max_iter, tol=tol, tol_type="cost",
                                  null_space=null)
            run.n_iter = int(res.n_iter.max())
            if output == "mean":
                return posterior_mean(L_t, res.gamma, res.lam, Y, null)
            return posterior_kernel(L_t, res.gamma, res.lam, null)
        run.n_iter = None
        return run
    if model == "cb":
        net = UnfoldedSBL(25, "cb", learn_noise)
    else:
        from mne_unfolded_sbl.core.weights import load_model

        net = load_model(model, learn_noise=learn_noise)
    net = net.to(device=L_t.device, dtype=L_t.dtype).eval()

    def run(Y, nv):
        Cy = covariance_statistic(Y)
        out = net(L_t, Cy, None if learn_noise else nv, null_space=null)
        if output == "mean":
            return out.posterior_mean(Y)
        return out.posterior_kernel()
    run.n_iter = None
    return run


def throughput(L, device, dtypes, batches, n_times, repeats, table,
               variants=(("joint", True), ("source-only", False)),
               ms_column=False):
    for dtype in dtypes:
        L_t = torch.as_tensor(L, dtype=dtype, device=device)
        for name, learn_noise in variants:
            run = sbl_runner(L_t, learn_noise)
            for B in batches:
                Y, nv = random_data(L, B, n_times, seed=B)
                Y = Y.to(device=device, dtype=dtype)
                nv = nv.to(device=device, dtype=dtype)
                try:
                    with torch.inference_mode():
                        t, _ = timeit(lambda Y=Y, nv=nv: run(Y, nv),
                                      repeats, 1, device)
                except torch.OutOfMemoryError:
                    table.add("throughput", f"25 layers {name}, {str(dtype)[6:]}, "
                              f"batch {B}", "out of memory", None)
                    torch.cuda.empty_cache()
                    continue
                per = f"{t * 1e3 / B:.2f} ms/evoked"
                table.add("throughput",
                          f"25 layers {name}, {str(dtype)[6:]}, batch {B}",
                          f"{B / t:,.0f} evoked/s", per if ms_column else None,
                          ("" if ms_column else per + ", ")
                          + f"batch {t * 1e3:.0f} ms, T={n_times}")
                print(table.rows[-1], flush=True)
                del Y, nv


# ----------------------------------------------------------------------------
# CPU with MNE


def mne_problem(n_samples, seed=0):
    """Forward, info, lead field and simulated evoked data.

    ``n_samples`` maps T to the number of samples drawn at that length.
    Data are simulated with the perturbed-conductivity forward (0.33,
    0.0045, 0.27 S/m), as in the benchmark harness (no inverse crime); the
    solvers use the default-conductivity forward.
    """
    import mne

    from mne_unfolded_sbl.datasets import make_info, make_template_forward
    from mne_unfolded_sbl.core.simulator import EEGSimulator, SimulationConfig

    fwd = make_template_forward("train-64", "ico3", verbose="error")
    fwd_sim = make_template_forward("train-64", "ico3", (0.33, 0.0045, 0.27),
                                    verbose="error")
    L = average_reference(fwd["sol"]["data"])
    L_sim = average_reference(fwd_sim["sol"]["data"])
    pos = fwd["source_rr"]
    info = make_info("train-64", sfreq=100.0)
    info = mne.pick_info(info, [info["ch_names"].index(c)
                                for c in fwd["sol"]["row_names"]])
    data = {}
    for T, n in n_samples.items():
        sim = EEGSimulator(L_sim, pos, SimulationConfig(n_times=T),
                           dtype=torch.float64)
        data[T] = []
        for i in range(n):
            s = sim.sample(1, seed=seed + i)
            ev = mne.EvokedArray(s["Y"][0].numpy() * SOURCE_SCALE, info, nave=1,
                                 verbose=False)
            ev.set_eeg_reference(projection=True, verbose=False)
            cov = mne.Covariance(s["noise_var"][0].numpy() * SOURCE_SCALE ** 2,
                                 ev.ch_names, bads=[], projs=ev.info["projs"],
                                 nfree=T, verbose=False)
            data[T].append(dict(Y=s["Y"], nv=s["noise_var"], evoked=ev, cov=cov))
    return fwd, L, data


def _gamma_map_timed(ev, fwd, cov, update_mode):
    """One gamma_map call: (seconds, iterations) from MNE's log."""
    import re

    import mne
    from mne.inverse_sparse import gamma_map

    with warnings.catch_warnings(), mne.utils.catch_logging() as log:
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        gamma_map(ev, fwd, cov, alpha=1.0, loose=0.0, depth=None,
                  update_mode=update_mode, verbose=True)
        dt = time.perf_counter() - t0
    its = re.findall(r"Iteration: (\d+)", log.getvalue())
    return dt, (int(its[-1]) + 1 if its else -1)


def _iters(its):
    its = sorted(its)
    if len(its) == 1:
        return f"{its[0]} it."
    return f"{statistics.median(its):.0f} it. [{its[0]}–{its[-1]}]"


def per_evoked(args, table):
    from mne.minimum_norm import (apply_inverse, make_inverse_operator,
                                  prepare_inverse_operator)

    from mne_unfolded_sbl import apply_unfolded_sbl
    from mne_unfolded_sbl.core.weights import registry

    Ts = (100, 10_000)
    n_conv = args.conv_samples
    fwd, L, data = mne_problem({100: n_conv, 10_000: 1})
    L32 = torch.as_tensor(L, dtype=torch.float32)
    res = {}

    def sbl_row(label, key, learn_noise, **kw):
        times, notes = [], []
        for T in Ts:
            run = sbl_runner(L32, learn_noise, **kw)
            samples = [(d["Y"].to(torch.float32), d["nv"].to(torch.float32))
                       for d in data[T]]
            with torch.inference_mode():
                if kw.get("tol") is None:  # fixed cost: repeat on one sample
                    t, all_t = timeit(lambda: run(*samples[0]), args.repeats)
                    notes.append(f"T={T}: min {_ms(min(all_t))}")
                else:  # cost depends on the sample: one run per sample
                    run(*samples[0])  # warm-up
                    ts, its = [], []
                    for Y, nv in samples:
                        t0 = time.perf_counter()
                        run(Y, nv)
                        ts.append(time.perf_counter() - t0)
                        its.append(run.n_iter)
                    t = statistics.median(ts)
                    notes.append(f"T={T}: {_iters(its)}")
            times.append(t)
        res[key] = times
        table.add("per evoked", label, *times, "; ".join(notes))
        print(table.rows[-1], flush=True)

    sbl_row("CB joint, 25 it. (convex_bounding + posterior kernel)", "cb25j",
            True, kind="cb", max_iter=25)
    sbl_row("CB source-only, 25 it.", "cb25s", False, kind="cb", max_iter=25)
    sbl_row("CB joint, to convergence (cost tol 1e-6, max 1000 it.)", "cbcj",
            True, kind="cb", max_iter=1000, tol=1e-6)
    sbl_row("CB source-only, to convergence (cost tol 1e-6)", "cbcs", False,
            kind="cb", max_iter=1000, tol=1e-6)
    sbl_row("untrained network, 25 layers, joint", "netj", True)
    sbl_row("untrained network, 25 layers, source-only", "nets", False)
    sbl_row("untrained network, 25 layers, joint, + dense X = K Y (N x T)",
            "netj_dense", True, output="mean")
    for name in sorted(registry()):
        model, _, mode = name.rpartition("_")
        sbl_row(f"learned {name}", name, mode == "joint", model=model)

    # MNE's gamma_map: one run per sample (its cost depends on the sample)
    for um in (2, 1):
        times, notes = [], []
        for T in Ts:
            if T > 100 and args.skip_long_gamma_map:
                times.append("skipped")
                continue
            runs = [_gamma_map_timed(d["evoked"], fwd, d["cov"], um)
                    for d in data[T]]
            times.append(statistics.median(r[0] for r in runs))
            notes.append(f"T={T}: {_iters([r[1] for r in runs])}")
        res[f"gm{um}"] = times
        table.add("per evoked", f"mne gamma_map, default tol 1e-6, update_mode={um}"
                  f"{' (CB)' if um == 2 else ' (MNE default, MacKay)'}",
                  *times, "; ".join(notes))
        print(table.rows[-1], flush=True)

    data = {T: d[0] for T, d in data.items()}  # one sample from here on
    rows = {k: [] for k in ("make", "apply", "prepared", "total")}
    for T in Ts:
        ev, cov = data[T]["evoked"], data[T]["cov"]
        make = lambda: make_inverse_operator(ev.info, fwd, cov, loose=0.0,  # noqa
                                             depth=None, fixed=True, verbose=False)
        inv = make()
        prep = prepare_inverse_operator(inv, 1, 1 / 9, "sLORETA", verbose=False)
        rows["make"].append(timeit(make, args.repeats))
        rows["apply"].append(timeit(lambda: apply_inverse(
            ev, inv, 1 / 9, "sLORETA", verbose=False), args.repeats))
        rows["prepared"].append(timeit(lambda: apply_inverse(
            ev, prep, 1 / 9, "sLORETA", prepared=True, verbose=False),
            args.repeats))
        rows["total"].append(timeit(lambda: apply_inverse(
            ev, make(), 1 / 9, "sLORETA", verbose=False), args.repeats))
    for key, label in (("make", "sLORETA: make_inverse_operator"),
                       ("apply", "sLORETA: apply_inverse"),
                       ("prepared", "sLORETA: apply_inverse, prepared operator"),
                       ("total", "sLORETA: total (make + apply)")):
        v = rows[key]
        table.add("per evoked", label, *(x[0] for x in v),
                  "; ".join(f"T={T}: min {_ms(min(x[1]))}" for T, x in zip(Ts, v)))

    from mne_unfolded_sbl import make_unfolded_sbl_operator

    def api_row(label, make_call):
        """Time ``make_call(evoked, cov)()`` at every T and add a row."""
        times, notes = [], []
        for T in Ts:
            call = make_call(data[T]["evoked"], data[T]["cov"])
            t, all_t = timeit(call, args.repeats)
            times.append(t)
            notes.append(f"T={T}: min {_ms(min(all_t))}")
        table.add("per evoked", label, *times, "; ".join(notes))
        print(table.rows[-1], flush=True)

    models = [(n.rpartition("_")[0], n.endswith("joint")) for n in sorted(registry())]
    for model, learn_noise in [("cb", True), ("cb", False)] + models:
        api_row(f"apply_unfolded_sbl(model={model!r}, learn_noise={learn_noise}) "
                "end to end", lambda ev, cov: lambda: apply_unfolded_sbl(
                    ev, fwd, cov, model=model, learn_noise=learn_noise,
                    verbose=False))
    for model, learn_noise in [("cb", True)] + [m for m in models if m[1]]:
        def with_operator(ev, cov):  # forward and noise covariance prepared once
            op = make_unfolded_sbl_operator(ev.info, fwd, cov, verbose=False)
            return lambda: apply_unfolded_sbl(ev, op, None, model=model,
                                              learn_noise=learn_noise,
                                              verbose=False)
        api_row(f"apply_unfolded_sbl(model={model!r}) with a prepared operator",
                with_operator)
    api_row("apply_unfolded_sbl(model='cb') + dense stc.data",
            lambda ev, cov: lambda: apply_unfolded_sbl(
                ev, fwd, cov, model="cb", verbose=False).data)
    return res, L


def targets(res):
    lines = []
    j100, j10k = res["netj"]
    lines.append(f"* 25 joint layers per evoked (T=100): {j100 * 1e3:.1f} ms "
                 f"(target < {TARGET_MS:.0f} ms: "
                 f"{'met' if j100 * 1e3 < TARGET_MS else 'NOT met'}).")
    ratio = j10k / j100
    lines.append(f"* T=10,000 / T=100 for 25 joint layers: {ratio:.2f}x (target "
                 f"< {TARGET_T_RATIO:.0f}x: "
                 f"{'met' if ratio < TARGET_T_RATIO else 'NOT met'}).")
    for um in (2, 1):
        gm = res.get(f"gm{um}", [None])[0]
        if isinstance(gm, float):
            sp = gm / res["nets"][0]
            lines.append(
                f"* gamma_map (update_mode={um}, T=100) / 25 source-only layers: "
                f"{sp:.0f}x (target >= {TARGET_SPEEDUP:.0f}x: "
                f"{'met' if sp >= TARGET_SPEEDUP else 'NOT met'}); vs CB "
                f"source-only to convergence: {gm / res['cbcs'][0]:.1f}x.")
    return "\n".join(lines)


def profile(L, device, n_times=100, batch=1):
    """Where the 25-layer joint network spends its time (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile as tprofile

    L_t = torch.as_tensor(L, dtype=torch.float32, device=device)
    run = sbl_runner(L_t, True)  # the untrained 25-layer joint network
    Y, nv = random_data(L, batch, n_times)
    Y = Y.to(device=device, dtype=torch.float32)
    with torch.inference_mode():
        for _ in range(2):
            run(Y, nv)
        acts = [ProfilerActivity.CPU] + (
            [ProfilerActivity.CUDA] if str(device).startswith("cuda") else [])
        with tprofile(activities=acts) as prof:
            for _ in range(5):
                run(Y, nv)
    key = "self_cuda_time_total" if str(device).startswith("cuda") else \
        "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=18)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", help="write the Markdown table to this file")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--no-mne", action="store_true",
                   help="throughput only, without MNE (implied by --device cuda)")
    p.add_argument("--leadfield", help=".npz lead field (save_leadfield_npz) for "
                   "the MNE-free throughput")
    p.add_argument("--save-leadfield", metavar="NPZ",
                   help="write the 64-channel ico3 lead field to NPZ and exit")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--throughput-repeats", type=int, default=3,
                   help="repeats of the batched throughput runs")
    p.add_argument("--conv-samples", type=int, default=5,
                   help="samples (at T=100) over which the to-convergence "
                        "solvers (CB, gamma_map) are timed, one run each")
    p.add_argument("--skip-long-gamma-map", action="store_true",
                   help="do not run gamma_map at T=10,000 (minutes)")
    p.add_argument("--batches", type=int, nargs="+",
                   help="throughput batch sizes (default 1 8 32 128 on CPU; "
                        "1 64 256 1024 4096 on CUDA)")
    p.add_argument("--threads", type=int, help="torch/BLAS threads")
    p.add_argument("--profile", action="store_true",
                   help="print a torch.profiler table of 25 joint layers")
    args = p.parse_args(argv)

    if args.save_leadfield:
        from mne_unfolded_sbl.datasets import (make_template_forward,
                                               save_leadfield_npz)

        save_leadfield_npz(make_template_forward("train-64", "ico3",
                                                 verbose="error"),
                           args.save_leadfield)
        print(f"wrote {args.save_leadfield}")
        return 0
    limits = contextlib.nullcontext()
    if args.threads:
        torch.set_num_threads(args.threads)
        threadpoolctl = soft_import("threadpoolctl", strict=False)
        if threadpoolctl is not None:  # else BLAS follows OMP_NUM_THREADS
            limits = threadpoolctl.threadpool_limits(args.threads)
    cuda = args.device.startswith("cuda")
    no_mne = args.no_mne or cuda
    header = [
        f"# bench_solver.py ({time.strftime('%Y-%m-%d %H:%M %Z')})", "",
        f"* machine: {platform.platform()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}, {torch.get_num_threads()} torch threads, "
        f"device {args.device}"
        + (f" ({torch.cuda.get_device_name()})" if cuda else ""),
        f"* load average at start: {os.getloadavg()[0]:.2f}"
        if hasattr(os, "getloadavg") else "",
        f"* median of {args.repeats} runs after a warm-up (min in the notes; "
        f"throughput: {args.throughput_repeats} runs); "
        f"solvers run to convergence: median of one run on each of "
        f"{args.conv_samples} samples at T=100 (1 at T=10,000); per-evoked SBL "
        "rows in float32",
    ]
    table = Table()
    text = []
    with limits:
        if no_mne:
            L, desc = load_leadfield(args.leadfield)
            header.append(f"* lead field: {desc}, average reference")
            batches = args.batches or ([1, 64, 256, 1024, 4096] if cuda
                                       else [1, 8, 32, 128])
            throughput(L, args.device, (torch.float32, torch.float64), batches,
                       100, args.throughput_repeats, table, ms_column=True)
            text.append(table.markdown(cols=("throughput", "per evoked")))
        else:
            header.append("* lead field: 64-channel training cap (train-64), "
                          "ico3 (1284 sources), fsaverage template, "
                          "average reference; data simulated (5-20 focal "
                          "sources, per-sensor SNR 5-30 dB) with the "
                          "perturbed-conductivity forward")
            res, L = per_evoked(args, table)
            throughput(L, "cpu", (torch.float32, torch.float64),
                       args.batches or [8, 32, 128], 100, args.throughput_repeats,
                       table)
            text.append(table.markdown())
            text.append("")
            text.append(targets(res))
        if args.profile:
            prof = profile(L, args.device)
            text += ["", "Profile of 25 joint layers (batch 1, T=100, float32):",
                     "", "```", prof, "```"]
    header.append(f"* load average at end: {os.getloadavg()[0]:.2f}"
                  if hasattr(os, "getloadavg") else "")
    md = "\n".join([h for h in header if h] + [""] + text) + "\n"
    print(md)
    if args.out:
        Path(args.out).write_text(md, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
