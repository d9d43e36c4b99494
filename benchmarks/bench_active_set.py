"""How much an active set could save: the sparsity of convex bounding by layer.

An active-set solver (MNE's ``gamma_map`` drops sources below a threshold)
runs each layer on the sources still above ``threshold * max(gamma)`` only,
so its products cost ``M^2 N_active`` instead of ``M^2 N``. This script runs
the classical 25-layer solver (``cb``, joint) on samples of the do-no-harm
settings and prints, per setting and relative threshold, the fraction of
sources below the threshold after layers 3, 6, 11, 16, 21 and 25, and the
share of the three ``M^2 N`` products an active set would skip over the 25
layers (sources pruned for good once below the threshold, which is what
makes it skip work: the mean over layers of the fraction pruned before
that layer)::

    python benchmarks/bench_active_set.py --n-samples 32 --out active_set.md

No timing: the numbers are counts and do not depend on the load.
"""

import argparse

import numpy as np
import torch

from mne_unfolded_sbl.benchmark.runner import simulate_batches
from mne_unfolded_sbl.benchmark.settings import (DO_NO_HARM_SETTINGS,
                                                 load_problem)
from mne_unfolded_sbl.core.network import classical_network
from mne_unfolded_sbl.core.solver import covariance_statistic

LAYERS = (3, 6, 11, 16, 21, 25)


def pruned_fractions(gammas, threshold):
    """Per layer, the fraction of sources pruned for good by then.

    ``gammas``: list over layers of (B, N) variances. A source is pruned
    after the first layer where it falls below ``threshold`` times that
    layer's largest variance, and stays pruned.
    """
    gone = torch.zeros_like(gammas[0], dtype=torch.bool)
    out = []
    for g in gammas:
        gone |= g < threshold * g.amax(-1, keepdim=True)
        out.append(float(gone.float().mean()))
    return np.array(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-samples", type=int, default=32)
    p.add_argument("--thresholds", type=float, nargs="+",
                   default=[1e-8, 1e-6, 1e-5, 1e-4, 1e-3])
    p.add_argument("--settings", nargs="+", default=list(DO_NO_HARM_SETTINGS))
    p.add_argument("--out", help="also write the table to this Markdown file")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    net = classical_network(25, True).float().eval()
    lines = ["| setting | threshold | "
             + " | ".join(f"pruned after {k}" for k in LAYERS)
             + " | products skipped (25 layers) |",
             "|---|---|" + "---|" * (len(LAYERS) + 1)]
    for name in args.settings:
        problem = load_problem(name)
        L = torch.as_tensor(problem.L, dtype=torch.float32)
        batch = next(simulate_batches(problem, args.n_samples, seed=0,
                                      batch_size=args.n_samples))
        Y = torch.as_tensor(batch.Y, dtype=torch.float32)
        with torch.inference_mode():
            out = net(L, covariance_statistic(Y), return_trajectory=True,
                      null_space=problem.null_space())
        gammas = [st["gamma"] for st in out.trajectory]
        for thr in args.thresholds:
            frac = pruned_fractions(gammas, thr)
            # layer k runs on the sources left after layer k - 1
            skipped = float(np.mean(np.r_[0.0, frac[:-1]]))
            lines.append(f"| {name} | {thr:g} | "
                         + " | ".join(f"{frac[k - 1]:.2f}" for k in LAYERS)
                         + f" | {skipped:.0%} |")
        print("\n".join(lines[-len(args.thresholds):]), flush=True)
    text = "\n".join(lines)
    print()
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
