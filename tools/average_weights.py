"""Average two weights files of one network: ``(1 - alpha) a + alpha b``.

Usage::

    python tools/average_weights.py A.safetensors B.safetensors --alpha 0.5 \
        --out OUT.safetensors

See :func:`mne_unfolded_sbl.training.export.average_weights`.
"""

import argparse

from mne_unfolded_sbl.training.export import average_weights


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--alpha", type=float, default=0.5,
                        help="weight of B (default 0.5)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    print(average_weights(args.a, args.b, args.alpha, args.out))


if __name__ == "__main__":
    main()
