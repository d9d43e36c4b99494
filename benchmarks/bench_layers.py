"""Training-side speed of the unfolded solver: forward and backward per batch.

A 25-layer joint Deep CB (``UnfoldedSBL(25, "deep-cb", True)``) on the
64-channel training cap x ico3 lead field (64 x 1284, average-referenced,
float32), with the zero-initialised last linear layers of its corrections
perturbed (seeded) so that every correction is non-zero, as after some
training. One step is the forward pass over a batch of focal random data
(T = 100), the posterior mean and a per-sample normalised MSE against the
true sources, and the backward pass (no optimiser step, no gradient
checkpointing). Also the forward pass alone without gradients.

Usage::

    python benchmarks/bench_layers.py --batch 64 256 --repeats 5
    python benchmarks/bench_layers.py --leadfield train64_ico3.npz   # no MNE
    # A/B against another solver.py in the same process, interleaved
    # (steadier on a shared machine): a file, or the one at a git revision
    python benchmarks/bench_layers.py --baseline-solver /tmp/solver_old.py
    python benchmarks/bench_layers.py --baseline-rev HEAD --threads 1

Prints a Markdown table: median (10-90 %) ms per batch of ``--repeats``
steps after one warm-up step, and samples per minute.
"""

import argparse
import importlib.util
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from mne_unfolded_sbl.core import network
from mne_unfolded_sbl.core.leadfield import average_reference, read_leadfield_npz
from mne_unfolded_sbl.core.solver import NullSpace, covariance_statistic

#: The solver functions the network module imports by name.
_SOLVER_NAMES = ("CBState", "cb_iteration", "model_covariance",
                 "posterior_kernel", "posterior_mean", "posterior_variance",
                 "precision", "prepare", "type2_cost")


def load_leadfield(path=None):
    """The 64 x 1284 template lead field (average-referenced), float64."""
    if path:
        return read_leadfield_npz(path).L
    from mne_unfolded_sbl.datasets import make_template_forward

    fwd = make_template_forward("train-64", "ico3", bem_ico=3, verbose="error")
    return average_reference(fwd["sol"]["data"])


def make_batch(L, batch, n_times=100, n_active=10, snr_db=10.0, seed=0,
               dtype=torch.float32):
    """Focal random sources ``X`` and data ``Y = L X + E`` (average-referenced)."""
    g = torch.Generator().manual_seed(seed)
    L64 = torch.as_tensor(L, dtype=torch.float64)
    M, N = L64.shape
    X = torch.zeros(batch, N, n_times, dtype=torch.float64)
    for b in range(batch):
        idx = torch.randperm(N, generator=g)[:n_active]
        X[b, idx] = torch.randn(n_active, n_times, generator=g,
                                dtype=torch.float64)
    LX = L64 @ X
    nv = LX.pow(2).mean(-1) / 10 ** (snr_db / 10)
    Y = LX + nv.sqrt()[..., None] * torch.randn(LX.shape, generator=g,
                                                 dtype=torch.float64)
    Y = Y - Y.mean(-2, keepdim=True)
    return dict(Y=Y.to(dtype), X=X.to(dtype), Cy=covariance_statistic(Y))


def make_network(n_layers=25, model="deep-cb", seed=0, scale=0.05,
                 dtype=torch.float32):
    """The network with its zero-initialised last layers perturbed."""
    torch.manual_seed(seed)
    net = network.UnfoldedSBL(n_layers, model, True).to(dtype)
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, torch.nn.Sequential):
                last = mod[-1]
                if isinstance(last, torch.nn.Linear):
                    last.weight.normal_(0.0, scale)
                    last.bias.normal_(0.0, scale)
    return net


def nmse(X_est, X):
    d = X_est - X
    return ((d * d).sum((1, 2), dtype=torch.float64)
            / (X * X).sum((1, 2), dtype=torch.float64))


def load_solver(path):
    """A ``solver.py`` from ``path`` as a standalone module (it needs only
    torch), to patch into the network for an A/B comparison."""
    spec = importlib.util.spec_from_file_location("_baseline_solver", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


class use_solver:
    """Context: the network module uses the functions of ``mod``."""

    def __init__(self, mod):
        self.mod = mod

    def __enter__(self):
        self.saved = {k: getattr(network, k) for k in _SOLVER_NAMES}
        if self.mod is not None:
            for k in _SOLVER_NAMES:
                setattr(network, k, getattr(self.mod, k))

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            setattr(network, k, v)


def step_fns(net, L, data, null):
    def train_step():
        net.train()
        net.zero_grad(set_to_none=True)
        out = net(L, data["Cy"], null_space=null)
        loss = nmse(out.posterior_mean(data["Y"]), data["X"]).mean()
        loss.backward()
        return float(loss.detach())

    def forward():
        net.eval()
        with torch.no_grad():
            out = net(L, data["Cy"], null_space=null)
            return out.posterior_mean(data["Y"])

    return dict(train=train_step, forward=forward)


def _fmt(ts, batch):
    med = statistics.median(ts)
    q = np.quantile(ts, [0.1, 0.9])
    return (f"{1e3 * med:,.0f} ({1e3 * q[0]:,.0f}-{1e3 * q[1]:,.0f})",
            f"{60 * batch / med:,.0f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, nargs="+", default=[64])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--n-layers", type=int, default=25)
    p.add_argument("--model", default="deep-cb")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's)")
    p.add_argument("--leadfield", help=".npz lead field instead of the "
                   "template forward (needs no MNE)")
    p.add_argument("--baseline-solver", metavar="PATH",
                   help="also time with the solver.py at PATH, interleaved")
    p.add_argument("--baseline-rev", metavar="REV",
                   help="also time with core/solver.py as at this git "
                   "revision (e.g. HEAD), interleaved")
    p.add_argument("--out", help="also write the table to this file")
    args = p.parse_args(argv)
    if args.baseline_rev:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        text = subprocess.run(
            ["git", "show", f"{args.baseline_rev}:mne_unfolded_sbl/core/solver.py"],
            cwd=root, check=True, capture_output=True, text=True).stdout
        fd, args.baseline_solver = tempfile.mkstemp(suffix="_solver.py")
        with os.fdopen(fd, "w") as f:
            f.write(text)
    if args.threads:
        torch.set_num_threads(args.threads)
    L64 = load_leadfield(args.leadfield)
    L = torch.as_tensor(L64, dtype=torch.float32)
    null = NullSpace.average_reference(L.shape[0])
    net = make_network(args.n_layers, args.model)
    solvers = {"current": None}
    if args.baseline_solver:
        name = (args.baseline_rev if args.baseline_rev
                else os.path.basename(args.baseline_solver))
        solvers = {name: load_solver(args.baseline_solver), "current": None}
    rows = []
    for B in args.batch:
        data = make_batch(L64, B)
        fns = step_fns(net, L, data, null)
        times = {(s, k): [] for s in solvers for k in fns}
        for s, mod in solvers.items():  # warm-up
            with use_solver(mod):
                for fn in fns.values():
                    fn()
        for _ in range(args.repeats):
            for s, mod in solvers.items():  # interleaved A/B
                with use_solver(mod):
                    for k, fn in fns.items():
                        t0 = time.perf_counter()
                        fn()
                        times[(s, k)].append(time.perf_counter() - t0)
        for s in solvers:
            rows.append((B, s, *_fmt(times[(s, "train")], B),
                         *_fmt(times[(s, "forward")], B)))
    load = os.getloadavg()
    lines = [f"# bench_layers.py ({time.strftime('%Y-%m-%d %H:%M %Z')})", "",
             f"* {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} CPUs, load average {load[0]:.2f} / "
             f"{load[1]:.2f} / {load[2]:.2f} at the end, torch "
             f"{torch.__version__} ({torch.get_num_threads()} threads)",
             f"* command: python benchmarks/bench_layers.py "
             f"{' '.join(sys.argv[1:] if argv is None else argv)}",
             f"* {args.n_layers}-layer {args.model} (joint), lead field "
             f"{L.shape[0]} x {L.shape[1]} float32, T = 100; ms per batch: "
             f"median (10-90 %) of {args.repeats}", "",
             "| batch | solver | forward + backward (ms) | samples/min | "
             "forward, no grad (ms) | samples/min |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {B} | {s} | {a} | {b} | {c} | {d} |"
              for B, s, a, b, c, d in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
