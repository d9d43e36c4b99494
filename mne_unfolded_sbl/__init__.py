"""Unfolded convex-bounding sparse Bayesian learning for EEG source imaging.

The public MNE-facing functions are loaded on first use, so that
``import mne_unfolded_sbl.core`` (the MNE-free solver, network, simulator
and training stack) does not import MNE.
"""

import importlib

__version__ = "0.1.0.dev0"

#: Public names of the top-level namespace -> the module that defines them.
_LAZY = {
    "UnfoldedSBLOperator": "inverse",
    "apply_unfolded_sbl": "inverse",
    "apply_unfolded_sbl_epochs": "inverse",
    "apply_unfolded_sbl_raw": "inverse",
    "make_unfolded_sbl_operator": "inverse",
    "unfolded_sbl_trajectory": "inverse",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
