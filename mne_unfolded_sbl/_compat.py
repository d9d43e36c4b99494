"""MNE's small utilities, with a fallback for machines without MNE.

The simulator, the metrics and the trainer must run on a GPU training box
that has PyTorch but not MNE (lead fields travel as ``.npz``). Everywhere
else MNE's own implementations are used.
"""

try:
    from mne.utils import _check_option, _validate_type, logger, verbose, warn
except ImportError:  # pragma: no cover - exercised in a subprocess test
    import functools
    import logging
    import numbers
    import os
    import warnings

    import numpy as np

    logger = logging.getLogger("mne_unfolded_sbl")

    _SHORTHANDS = {
        "numeric": (numbers.Number, np.number),
        "int-like": (numbers.Integral, np.integer),
        "path-like": (str, os.PathLike),
    }

    def verbose(function):
        """Accept and ignore a ``verbose`` argument (MNE absent)."""

        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            return function(*args, **kwargs)

        return wrapper

    def warn(message, category=RuntimeWarning):
        warnings.warn(message, category, stacklevel=2)

    def _validate_type(item, types, item_name="item", type_name=None):
        types = types if isinstance(types, tuple) else (types,)
        resolved = []
        for t in types:
            if t is None:
                resolved.append(type(None))
            elif isinstance(t, str):
                resolved.extend(_SHORTHANDS[t])
            else:
                resolved.append(t)
        if isinstance(item, bool) and bool not in resolved and any(
                t in ("numeric", "int-like") for t in types if isinstance(t, str)):
            raise TypeError(f"{item_name} must be a number, got bool")
        if not isinstance(item, tuple(resolved)):
            raise TypeError(f"{item_name} must be an instance of {types}, "
                            f"got {type(item)} instead.")

    def _check_option(parameter, value, allowed_values, extra=""):
        if value not in allowed_values:
            raise ValueError(f"Invalid value for the '{parameter}' parameter. "
                             f"Allowed values are {list(allowed_values)}, but "
                             f"got {value!r} instead.")
        return value

__all__ = ["_check_option", "_validate_type", "logger", "verbose", "warn"]
