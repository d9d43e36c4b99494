"""The on-disk cache: location, writability checks, atomic writes, repair."""

import os
import secrets
import shutil
import tempfile
import warnings
from pathlib import Path

from mne.utils import logger, warn

CACHE_ENV = "MNE_UNFOLDED_SBL_CACHE"


def _fix_hint(path):
    return (
        f"Delete {path} (it is rebuilt automatically), or set the environment "
        f"variable {CACHE_ENV} to another, writable directory."
    )


def cache_dir():
    """Return the cache root (``$MNE_UNFOLDED_SBL_CACHE`` or the OS cache).

    Returns
    -------
    root : pathlib.Path
        The cache directory (created if needed).
    """
    root = os.environ.get(CACHE_ENV)
    if not root:
        import pooch

        root = pooch.os_cache("mne-unfolded-sbl")
    root = Path(root).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RuntimeError(
            f"Cannot create the cache directory {root} ({err}). Set the "
            f"environment variable {CACHE_ENV} to a writable directory."
        ) from None
    return root


def check_writable(directory):
    """Raise an informative error unless files can be created in ``directory``.

    The check really creates (and removes) a file: permission bits alone are
    not reliable (root ignores them; read-only file systems, full disks).
    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise RuntimeError(
            f"The cache directory {directory} is not writable ({err}), so "
            "nothing computed could be cached. Make it writable, or set the "
            f"environment variable {CACHE_ENV} to a writable directory (or "
            "pass cache=False where available)."
        ) from None


def atomic_write(fname, write, suffix=""):
    """Write ``fname`` via ``write(tmp_fname)`` then :func:`os.replace`.

    The temporary file is in the same directory, so the rename is atomic: a
    reader (or a killed writer) never sees a partially written ``fname``.
    """
    fname = Path(fname)
    tmp = fname.with_name(f".tmp-{os.getpid()}-{secrets.token_hex(4)}{suffix}")
    try:
        fname.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, fname)
    except OSError as err:
        raise RuntimeError(
            f"Could not write the cache file {fname} ({err}). " + _fix_hint(fname)
        ) from err
    finally:
        tmp.unlink(missing_ok=True)


def discard(path, what, reason, *, tree=False):
    """Warn that a cached ``path`` is corrupted and delete it (for a rebuild).

    Only a regular file is deleted, or with ``tree=True`` a directory that this
    package wrote (moved aside first, so no reader sees a half-deleted tree).
    """
    path = Path(path)
    warn(
        f"The cached {what} {path} is corrupted or incomplete ({reason}); "
        "deleting it and computing it again."
    )
    try:
        if tree:
            trash = path.with_name(f".trash-{os.getpid()}-{secrets.token_hex(4)}")
            try:
                path.rename(trash)
            except FileNotFoundError:  # another process already removed it
                return
            shutil.rmtree(trash)
        else:
            path.unlink(missing_ok=True)
    except OSError as err:
        raise RuntimeError(
            f"The cached {what} {path} is corrupted ({reason}) and could not be "
            f"deleted ({err}). " + _fix_hint(path)
        ) from None


def read_cached(fname, read, what, check=None):
    """Read a cache file, repairing (deleting) it if it is corrupted.

    Parameters
    ----------
    fname : pathlib.Path
        The cache file.
    read : callable
        ``read(fname)`` returns the object; any exception means corruption.
    what : str
        What the file holds, for messages (e.g. ``"forward solution"``).
    check : callable | None
        ``check(obj)`` returns None if ``obj`` is valid, else a reason (str).

    Returns
    -------
    obj : object | None
        The object, or None if the file did not exist or was corrupted (it is
        then deleted, with a warning that names it, so the caller recomputes
        and rewrites it).
    """
    fname = Path(fname)
    if not os.path.lexists(fname):
        return None
    if not fname.is_file():
        discard(fname, what, "not a regular file")
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            obj = read(fname)
        except Exception as err:  # MNE raises many kinds on truncated FIF files
            reason = f"{type(err).__name__}: {err}"
        else:
            reason = None if check is None else check(obj)
    if reason is None:
        for w in caught:  # not about a damaged file: pass them on
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        logger.info(f"Using cached {what} {fname}")
        return obj
    discard(fname, what, reason)
    return None
