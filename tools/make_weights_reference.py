"""Regenerate ``tests/data/deep-cb_joint_reference.npz`` for new bundled weights.

The stored problem (a random 64 x 300 lead field and 100 samples of data)
is average-referenced and run through the bundled ``deep-cb`` joint network
in float64 with the average reference's null space; the test checks that
the bundled file reproduces ``gamma`` and ``lam`` to 1e-9.

    python tools/make_weights_reference.py
"""

from pathlib import Path

import numpy as np
import torch

from mne_unfolded_sbl.core.weights import load_model, registry
from mne_unfolded_sbl.core.solver import NullSpace, covariance_statistic

FNAME = Path(__file__).parents[1] / "tests" / "data" / "deep-cb_joint_reference.npz"


def main():
    old = np.load(FNAME)
    L = old["L"] - old["L"].mean(0)
    Y = old["Y"] - old["Y"].mean(0)
    net = load_model("deep-cb", learn_noise=True).double()
    with torch.no_grad():
        out = net(torch.tensor(L), covariance_statistic(torch.tensor(Y)[None]),
                  null_space=NullSpace.average_reference(L.shape[0]))
    np.savez(FNAME, L=L, Y=Y, gamma=out.gamma[0].numpy(), lam=out.lam[0].numpy(),
             sha256=registry()["deep-cb_joint"]["sha256"])
    print(f"wrote {FNAME}")


if __name__ == "__main__":
    main()
