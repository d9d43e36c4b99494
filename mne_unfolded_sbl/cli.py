"""Command-line entry point: ``mne-unfolded-sbl <command> ...``.

Each command lives in its own module exposing ``add_arguments(parser)`` and
``run(args)``; this file only dispatches.
"""

import argparse
import importlib
import sys

#: command -> (module, one-line help)
COMMANDS = {
    "demo": ("mne_unfolded_sbl.demo",
             "simulate an evoked response on the template head, localise it "
             "and write an HTML report"),
    "benchmark": ("mne_unfolded_sbl.benchmark.cli",
                  "compare solvers on simulated data (Table-3 style)"),
    "train": ("mne_unfolded_sbl.training.cli",
              "train unfolded-SBL weights from on-the-fly simulations"),
}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="mne-unfolded-sbl",
        description="Unfolded convex-bounding SBL for EEG source imaging.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return importlib.import_module(args._module).run(args) or 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
