"""Command-line entry point: ``mne-unfolded-sbl <command> ...``.

Each command lives in its own module exposing ``add_arguments(parser)`` and
``run(args)``; this file only dispatches. Only the module of the command
given is imported, so ``mne-unfolded-sbl --help`` loads neither PyTorch nor
MNE.

It also holds the argparse value types the commands share
(:func:`int_type`, :func:`float_type`): a bad number ends in argparse's
one-line ``argument --NAME: ...`` error, never in a traceback.
"""

import argparse
import importlib
import math
import sys

#: command -> (module, one-line help)
COMMANDS = {
    "demo": ("mne_unfolded_sbl.demo",
             "simulate an evoked response on the template head, localise it "
             "and write an HTML report"),
    "localize": ("mne_unfolded_sbl.localize",
                 "localise your own evoked or epochs file (forward or "
                 "template head model) and write an HTML report"),
    "benchmark": ("mne_unfolded_sbl.benchmark.cli",
                  "compare solvers on simulated data (Table-3 style)"),
    "train": ("mne_unfolded_sbl.training.cli",
              "train unfolded-SBL weights from on-the-fly simulations"),
}


def int_type(minimum=None, maximum=None):
    """An argparse ``type``: an integer within ``[minimum, maximum]``."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer, got {text!r}") from None
        if (minimum is not None and value < minimum) or (
                maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(
                f"must be an integer {_bounds(minimum, maximum)}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def float_type(minimum=None, maximum=None, *, min_inclusive=True,
               max_inclusive=True):
    """An argparse ``type``: a finite float within the given bounds."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a number, got {text!r}") from None
        bad = not math.isfinite(value)
        if minimum is not None:
            bad |= value < minimum if min_inclusive else value <= minimum
        if maximum is not None:
            bad |= value > maximum if max_inclusive else value >= maximum
        if bad:
            what = "a finite number"
            if minimum is not None or maximum is not None:
                what += " " + _bounds(minimum, maximum, min_inclusive,
                                      max_inclusive)
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    parse.__name__ = "number"
    return parse


def _bounds(minimum, maximum, min_inclusive=True, max_inclusive=True):
    lo = None if minimum is None else f"{'>=' if min_inclusive else '>'} {minimum:g}"
    hi = None if maximum is None else f"{'<=' if max_inclusive else '<'} {maximum:g}"
    if lo and hi:
        return f"{lo} and {hi}"
    return lo or hi or "a number"


def arg_error(args, message):
    """End a command on a usage error found after parsing (exit status 2).

    Uses the command's parser (``args._parser``, set by its
    ``add_arguments``) for the usual ``usage: ... error: ...`` lines.
    """
    parser = getattr(args, "_parser", None)
    if parser is not None:
        parser.error(message)
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def build_parser(commands=None):
    """The ``mne-unfolded-sbl`` parser.

    Parameters
    ----------
    commands : None | list of str
        Commands whose options are added (their modules are imported); None
        means every command.
    """
    parser = argparse.ArgumentParser(
        prog="mne-unfolded-sbl",
        description="Unfolded convex-bounding SBL for EEG source imaging.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_module=module)
        if commands is None or name in commands:
            importlib.import_module(module).add_arguments(p)
    return parser


def _command(argv):
    """The command named in argv (the first non-option word), or None."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _command(argv)
    args = build_parser([command] if command else []).parse_args(argv)
    return importlib.import_module(args._module).run(args) or 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
