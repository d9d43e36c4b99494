"""Logging, argument checks and optional imports of the MNE-free core.

The core (solver, network, simulator, metrics, weights, lead fields) runs
where MNE is not installed (a GPU training box with PyTorch only), so it
never imports :mod:`mne`. Its logger is ``mne.unfolded_sbl``, a child of
MNE's ``mne`` logger: where MNE is present, ``mne.set_log_level`` and the
``verbose`` arguments of the MNE-facing functions govern it too, and its
records reach MNE's handlers.

The argument checks mirror ``mne.utils._validate_type`` and
``mne.utils._check_option`` (same messages); the MNE-facing modules use
MNE's own.
"""

import contextlib
import functools
import importlib
import importlib.util
import inspect
import logging
import numbers
import os
import warnings

import numpy as np
import torch

#: Working precisions by name.
DTYPES = {"float32": torch.float32, "float64": torch.float64}

logger = logging.getLogger("mne.unfolded_sbl")

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO,
           "warning": logging.WARNING, "error": logging.ERROR,
           "critical": logging.CRITICAL}

_SHORTHANDS = {
    "numeric": (numbers.Number, np.number),
    "int-like": (numbers.Integral, np.integer),
    "path-like": (str, os.PathLike),
}


def _log_level(verbose):
    if verbose is None:
        return None
    if isinstance(verbose, bool):
        return logging.INFO if verbose else logging.WARNING
    if isinstance(verbose, str):
        try:
            return _LEVELS[verbose.lower()]
        except KeyError:
            raise ValueError(f"verbose must be one of {sorted(_LEVELS)}, a "
                             f"bool, an int or None, got {verbose!r}.") from None
    _validate_type(verbose, "int-like", "verbose")
    return int(verbose)


@contextlib.contextmanager
def use_log_level(verbose):
    """Set the level of the core logger within a ``with`` block."""
    level = _log_level(verbose)
    if level is None:
        yield
        return
    old = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(old)


def verbose(function):
    """Give ``function`` a ``verbose`` argument (MNE's semantics, core logger)."""
    sig = inspect.signature(function)
    if "verbose" not in sig.parameters:
        raise TypeError(f"{function.__name__} has no verbose parameter")

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        bound = sig.bind_partial(*args, **kwargs)
        with use_log_level(bound.arguments.get("verbose")):
            return function(*args, **kwargs)

    return wrapper


#: Packages whose frames a warning skips to reach the user's code.
_INTERNAL_NAMESPACES = ("mne_unfolded_sbl", "mne", "torch")


def _internal(frame):
    """Whether ``frame`` runs code of :data:`_INTERNAL_NAMESPACES` (or a
    wrapper that MNE's ``verbose`` decorator generated around it)."""
    if frame.f_code.co_filename.startswith("<decorator-gen"):
        return True
    module = str(frame.f_globals.get("__name__", ""))
    return module.split(".")[0] in _INTERNAL_NAMESPACES


def warn(message, category=RuntimeWarning):
    """Log and issue a warning attributed to the user's code.

    As ``mne.utils.warn``: the warning names the first frame of the call
    stack outside this package (and MNE and PyTorch, which call into it),
    so a user sees the line of their script that triggered it.
    """
    logger.debug(message)
    frame, level = inspect.currentframe().f_back, 2
    while frame is not None and frame.f_back is not None and _internal(frame):
        frame, level = frame.f_back, level + 1
    del frame
    warnings.warn(message, category, stacklevel=level)


def _validate_type(item, types, item_name="item", type_name=None):
    """Raise TypeError if ``item`` is not of ``types`` (MNE's shorthands)."""
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
        names = type_name or ", ".join(
            t if isinstance(t, str) else ("None" if t is None else t.__name__)
            for t in types)
        raise TypeError(f"{item_name} must be an instance of {names}, "
                        f"got {type(item)} instead.")


def _check_option(parameter, value, allowed_values, extra=""):
    """Raise ValueError unless ``value`` is one of ``allowed_values``."""
    if value not in allowed_values:
        raise ValueError(f"Invalid value for the '{parameter}' parameter"
                         f"{' ' + extra if extra else ''}. Allowed values are "
                         f"{list(allowed_values)}, but got {value!r} instead.")
    return value


def check_positive_int(value, name, minimum=1):
    """``value`` as an int ``>= minimum``; bools, floats and strings refused.

    ``2.9`` is not silently truncated to 2, ``True`` does not mean 1 and
    ``"5"`` is not a number.
    """
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral,
                                                         np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r} "
                        f"({type(value).__name__}).")
    if int(value) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {int(value)}.")
    return int(value)


#: Optional dependencies: import name -> (pip name, what needs it).
OPTIONAL_DEPENDENCIES = {
    "pyvista": ("pyvista", "3D brain pictures (pip install pyvista vtk)"),
    "nilearn": ("nilearn", "glass-brain pictures (pip install nilearn)"),
    "threadpoolctl": ("threadpoolctl", "BLAS thread limits"),
    "h5io": ("h5io", "saving source estimates as .h5"),
}


def soft_import(name, purpose=None, strict=True):
    """Import an optional dependency, the one way the package does it.

    Parameters
    ----------
    name : str
        Module to import.
    purpose : str | None
        What needs it, for the error message.
    strict : bool
        If True, raise an ImportError that names the package to install;
        else return None when it is missing.

    Returns
    -------
    module : module | None
    """
    try:
        return importlib.import_module(name)
    except ImportError:
        if not strict:
            return None
        pip_name, default = OPTIONAL_DEPENDENCIES.get(name, (name, None))
        raise ImportError(
            f"{purpose or default or name} needs the optional package "
            f"{pip_name!r}: pip install {pip_name}") from None


def has_module(name):
    """Whether the optional dependency ``name`` can be imported."""
    return importlib.util.find_spec(name) is not None
