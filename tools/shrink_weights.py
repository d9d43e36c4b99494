"""Scale a trained network's corrections by ``alpha`` (0: classical CB).

Usage::

    python tools/shrink_weights.py IN.safetensors --alpha 0.5 --out OUT.safetensors

See :func:`mne_unfolded_sbl.training.export.shrink_weights`.
"""

import argparse

from mne_unfolded_sbl.training.export import shrink_weights


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights")
    parser.add_argument("--alpha", type=float, required=True,
                        help="scale of the corrections, in [0, 1]")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    print(shrink_weights(args.weights, args.alpha, args.out))


if __name__ == "__main__":
    main()
