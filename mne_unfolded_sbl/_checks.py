"""Input checks with errors that name the problem and the fix."""

import numbers
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import mne
from mne.utils import _check_option, _validate_type, logger

from .core._utils import check_positive_int
from .core.weights import tied_geometry


def check_forward(fwd):
    """Validate a forward solution: MEG and/or EEG, a source space."""
    _validate_type(fwd, mne.Forward, "fwd")
    if len(mne.pick_types(fwd["info"], meg=True, eeg=True)) == 0:
        raise ValueError(
            "The forward solution has no MEG or EEG channels; compute it "
            "with mne.make_forward_solution(..., meg=True, eeg=True).")
    kinds = {s["type"] for s in fwd["src"]}
    if not kinds <= {"surf", "vol"}:
        raise ValueError(
            f"The forward solution has source spaces of kind {sorted(kinds)}; "
            "use a cortical surface source space (mne.setup_source_space; "
            "mne_unfolded_sbl.datasets.make_template_forward builds one) or a "
            "volume source space (with loose=1).")
    return fwd


def pick_channels(info, fwd, noise_cov):
    """Good MEG and EEG channels of ``info``; all in ``fwd`` and ``noise_cov``."""
    picks = mne.pick_types(info, meg=True, eeg=True, exclude="bads")
    if len(picks) == 0:
        raise ValueError(
            "The data have no good MEG or EEG channels (every channel marked "
            "bad, or other channel types only).")
    names = [info["ch_names"][p] for p in picks]
    in_fwd = set(fwd["sol"]["row_names"])
    unmodelled = [n for n in names if n not in in_fwd]
    if unmodelled and len(unmodelled) < len(names):
        # a channel type the forward does not have (e.g. EEG data with an
        # MEG-only forward) is left out, as MNE's inverse operators do
        types = set(info.get_channel_types(unmodelled))
        fwd_types = set(fwd["info"].get_channel_types())
        if not types & fwd_types:
            logger.info(f"    Ignoring {len(unmodelled)} {'/'.join(sorted(types))} "
                        "channel(s) the forward solution does not model.")
            names = [n for n in names if n in in_fwd]
    for what, have in (("forward solution", fwd["sol"]["row_names"]),
                       ("noise covariance", noise_cov["names"])):
        missing = [n for n in names if n not in set(have)]
        if missing:
            raise ValueError(
                f"{len(missing)} good channel(s) of the data are missing "
                f"from the {what}: {missing[:10]}"
                f"{' ...' if len(missing) > 10 else ''}. Mark them bad "
                "(inst.info['bads']) or drop them, or recompute the "
                f"{what} for these sensors."
            )
    return names


@lru_cache(maxsize=8)
def _montage_ch_names(montage):
    from .datasets import make_montage

    return tuple(make_montage(montage).ch_names)


def _ico_vertices(spacing):
    """Vertex numbers of an ``ico<k>`` source space of fsaverage (whose
    surface is itself an icosahedron subdivision), per hemisphere."""
    k = int(spacing[3:])
    return np.arange(10 * 4 ** k + 2)


def check_tied_geometry(net, ch_names, src, n_unknowns=None):
    """Refuse a Bias CB network on another geometry than its training one.

    Bias CB holds one learned offset per sensor and per source of the lead
    field it was trained on, so it is only defined there: the same
    channels (none marked bad; in any order when the weights record their
    cap, whose channel names then say which offset is whose) and the same
    source space (fsaverage, the same ico spacing). Other networks pass.

    Parameters
    ----------
    net : UnfoldedSBL
    ch_names : list of str
        The channels the solver sees, in order.
    src : mne.SourceSpaces | None
        The source space of the forward (None: not checked).
    n_unknowns : int | None
        The variances the solver estimates (columns of its lead field per
        orientation); None: the sources of ``src``. The multi-scale model's
        atoms are other unknowns than the sources the offsets belong to.

    Returns
    -------
    order : ndarray of int | None
        For the channels of a Bias CB with sensor offsets given in another
        order than its cap's: the index of each of ``ch_names`` among the
        cap's channels (apply it with
        :func:`~mne_unfolded_sbl.core.weights.with_sensor_order`); None
        when the order is the weights' own or does not matter.

    Raises
    ------
    ValueError
        Naming what differs, the geometry the weights need and the models
        that transfer.
    """
    geom = tied_geometry(net)
    if geom is None:
        return None
    montage, spacing = geom["montage"], geom["spacing"]
    issues = []
    want = None
    if montage is not None:
        try:
            want = _montage_ch_names(montage)
        except Exception:  # a montage of another version: sizes only
            want = None
    ch_names = list(ch_names)
    order = None
    if want is not None and ch_names != list(want):
        extra = [n for n in ch_names if n not in want]
        missing = [n for n in want if n not in ch_names]
        if not extra and not missing:  # the same cap, reordered
            if geom["n_sensors"] is not None:
                index = {name: i for i, name in enumerate(want)}
                order = np.array([index[name] for name in ch_names])
        else:
            what = (f"{len(extra)} channel(s) not in it ({extra[:5]})"
                    if extra else "")
            if missing:
                what += ("; " if what else "") + (
                    f"{len(missing)} of its channel(s) missing or bad "
                    f"({missing[:5]})")
            issues.append(f"the channels differ from those of the {montage!r} "
                          f"cap ({len(want)}): {what}")
    elif geom["n_sensors"] is not None and len(ch_names) != geom["n_sensors"]:
        issues.append(f"{len(ch_names)} channels (the weights have "
                      f"{geom['n_sensors']})")
    n_src = None
    if src is not None:
        n_src = sum(len(s["vertno"]) for s in src)
        subject = src[0].get("subject_his_id")
        same = n_src == geom["n_sources"] and (
            spacing is None or not spacing.startswith("ico") or (
                subject in (None, "fsaverage") and all(
                    np.array_equal(s["vertno"], _ico_vertices(spacing))
                    for s in src)))
        if not same:
            issues.append(f"a source space of {n_src} sources"
                          + (f" of subject {subject!r}" if subject else ""))
    if n_unknowns is not None and n_unknowns not in (geom["n_sources"], n_src):
        issues.append(f"{n_unknowns} unknowns in the solver's lead field "
                      "(the multi-scale model's atoms are not its sources)")
    if issues:
        n_sens = len(want) if want is not None else geom["n_sensors"]
        sensors = f"{n_sens} channels" if n_sens else "its channels"
        where = (f"the {montage!r} cap ({sensors}) on the fsaverage {spacing} "
                 f"source space ({geom['n_sources']} sources)" if montage
                 else f"{sensors} x {geom['n_sources']} sources")
        raise ValueError(
            f"Bias CB weights are tied to the geometry they were trained on: "
            f"{where}, the same channels, none marked bad. "
            f"This problem has {' and '.join(issues)}. Use model='deep-cb' or "
            "'deep-attn-cb', which transfer to any montage and source space, "
            "or the classical model='cb'.")
    return order


def check_noise_cov_type(noise_cov):
    """``noise_cov`` must be an :class:`mne.Covariance` (not a file, array)."""
    try:
        _validate_type(noise_cov, mne.Covariance, "noise_cov", "mne.Covariance")
    except TypeError as err:
        if isinstance(noise_cov, (str, Path)):
            hint = f"Read the file with mne.read_cov({str(noise_cov)!r})."
        elif isinstance(noise_cov, np.ndarray):
            hint = ("Wrap the array (in the data's units, V² for EEG) with "
                    "mne.Covariance(data, ch_names, bads=[], projs=[], "
                    "nfree=n_samples), or read a saved covariance with "
                    "mne.read_cov(fname).")
        else:
            hint = "Read one with mne.read_cov(fname)."
        raise TypeError(f"{err} {hint} To estimate one from baseline data: "
                        "mne.compute_covariance(epochs, tmax=0).") from None
    return noise_cov


def check_nave(nave):
    """``evoked.nave``: the number of averaged trials, a number > 0."""
    if isinstance(nave, bool) or not isinstance(nave, (numbers.Real,
                                                       np.number)):
        raise TypeError(f"evoked.nave must be a number (the number of "
                        f"averaged trials), got {nave!r}.")
    if not np.isfinite(nave) or nave <= 0:
        raise ValueError(
            f"evoked.nave must be > 0 (the number of averaged trials, which "
            f"scales the single-trial noise covariance by 1/nave), got "
            f"{nave!r}. Set evoked.nave to the number of trials averaged "
            "(1 for a single trial).")
    return nave


def check_n_layers(n_layers):
    """``n_layers``: None (the model's depth) or an integer >= 1."""
    if n_layers is None:
        return None
    return check_positive_int(n_layers, "n_layers")


def check_noise_cov(noise_cov, ch_names):
    """The covariance restricted to ``ch_names`` must be finite and PSD."""
    check_noise_cov_type(noise_cov)
    idx = [noise_cov["names"].index(n) for n in ch_names]
    data = noise_cov["data"]
    if noise_cov["diag"]:
        d = data[idx]
        if not np.all(np.isfinite(d)) or np.any(d <= 0):
            raise ValueError(
                "The diagonal noise covariance has non-positive or non-finite "
                "variances; estimate it from baseline data with "
                "mne.compute_covariance."
            )
        return
    C = data[np.ix_(idx, idx)]
    if not np.all(np.isfinite(C)):
        raise ValueError("The noise covariance contains NaN or Inf values.")
    if not np.allclose(C, C.T, rtol=1e-6, atol=1e-6 * np.abs(C).max()):
        raise ValueError("The noise covariance is not symmetric.")
    eig = np.linalg.eigvalsh(C)
    if eig[-1] <= 0 or eig[0] < -1e-6 * eig[-1]:
        raise ValueError(
            "The noise covariance is not positive semi-definite (smallest "
            f"eigenvalue {eig[0]:.3g}, largest {eig[-1]:.3g}). Re-estimate it "
            "with mne.compute_covariance(..., method='shrunk') or regularise "
            "it with mne.cov.regularize."
        )


def check_data_finite(data, name):
    """Refuse NaN/Inf in sensor data; for epochs (3-D), name the epochs."""
    bad = ~np.isfinite(data)
    if bad.any() and bad.ndim == 3:
        idx = np.flatnonzero(bad.any(axis=(1, 2))).tolist()
        shown = idx if len(idx) <= 10 else idx[:10]
        drop = (f"epochs.drop({idx})" if len(idx) <= 10 else
                "epochs.drop(np.flatnonzero(~np.isfinite(epochs.get_data())"
                ".all(axis=(1, 2))))")
        raise ValueError(
            f"{len(idx)} of {len(data)} {name} contain NaN/Inf values "
            f"({int(bad.sum())} values), at epoch indices {shown}"
            f"{' ...' if len(idx) > 10 else ''}. Drop them with {drop} "
            "(or interpolate or mark bad the affected channels) before "
            "source imaging.")
    if bad.any():
        raise ValueError(
            f"The {name} data contain {int(bad.sum())} NaN/Inf values; "
            "interpolate or mark the affected channels bad, or drop the "
            "affected epochs, before source imaging."
        )


def check_device(device):
    """Return a usable ``torch.device`` or explain why it is not there."""
    _validate_type(device, (str, torch.device), "device")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={str(device)!r} was requested but no CUDA GPU is "
            "available to PyTorch (torch.cuda.is_available() is False). Use "
            "device='cpu', or install a CUDA build of PyTorch on a GPU machine."
        )
    if dev.type == "cuda" and dev.index is not None and (
            dev.index >= torch.cuda.device_count()):
        raise ValueError(
            f"device={str(device)!r}: only {torch.cuda.device_count()} CUDA "
            "device(s) exist. Use device='cuda:0'."
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device='mps' was requested but MPS is not available; "
                         "use device='cpu'.")
    return dev


def check_dtype(dtype):
    """Validate the working precision name."""
    _check_option("dtype", dtype, ("float32", "float64"))
    return dtype
