"""Unfolded convex-bounding sparse Bayesian learning for EEG source imaging."""

__version__ = "0.1.0.dev0"

try:
    from .inverse import apply_unfolded_sbl, apply_unfolded_sbl_epochs  # noqa: F401
except ImportError:  # pragma: no cover - during bootstrap only
    pass
