"""Unfolded convex-bounding sparse Bayesian learning for EEG source imaging."""

__version__ = "0.1.0.dev0"

try:
    from .inverse import (UnfoldedSBLOperator, apply_unfolded_sbl,  # noqa: F401
                          apply_unfolded_sbl_epochs, make_unfolded_sbl_operator)
except ImportError:  # pragma: no cover - during bootstrap only
    pass
