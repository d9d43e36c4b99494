"""Input checks with errors that name the problem and the fix."""

import numpy as np
import torch
import mne
from mne.utils import _check_option, _validate_type, logger


def check_forward(fwd):
    """Validate a forward solution for fixed-orientation EEG source imaging."""
    _validate_type(fwd, mne.Forward, "fwd")
    kinds = {s["type"] for s in fwd["src"]}
    if kinds != {"surf"}:
        raise ValueError(
            f"The forward solution has source spaces of kind {sorted(kinds)}; "
            "unfolded SBL needs a cortical *surface* source space (fixed "
            "orientation normal to the cortex). Compute the forward on "
            "mne.setup_source_space(...) instead of a volume/discrete space "
            "(mne_unfolded_sbl.datasets.make_template_forward builds one)."
        )
    if len(mne.pick_types(fwd["info"], meg=False, eeg=True)) == 0:
        raise ValueError(
            "The forward solution has no EEG channels (MEG-only?). This "
            "package models EEG; compute an EEG forward (eeg=True)."
        )
    return fwd


def pick_channels(info, fwd, noise_cov):
    """Good EEG channels of ``info``; all must be in ``fwd`` and ``noise_cov``."""
    picks = mne.pick_types(info, meg=False, eeg=True, exclude="bads")
    if len(picks) == 0:
        raise ValueError(
            "The data have no good EEG channels (MEG-only data, or every EEG "
            "channel marked bad). This package models EEG."
        )
    names = [info["ch_names"][p] for p in picks]
    n_other = len(mne.pick_types(info, meg=True, exclude="bads"))
    if n_other:
        logger.info(f"Ignoring {n_other} MEG channels: only EEG is modelled.")
    for what, have in (("forward solution", fwd["sol"]["row_names"]),
                       ("noise covariance", noise_cov["names"])):
        missing = [n for n in names if n not in set(have)]
        if missing:
            raise ValueError(
                f"{len(missing)} good EEG channel(s) of the data are missing "
                f"from the {what}: {missing[:10]}"
                f"{' ...' if len(missing) > 10 else ''}. Mark them bad "
                "(inst.info['bads']) or drop them, or recompute the "
                f"{what} for this montage."
            )
    return names


def check_noise_cov(noise_cov, ch_names):
    """The covariance restricted to ``ch_names`` must be finite and PSD."""
    _validate_type(noise_cov, mne.Covariance, "noise_cov")
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
    """Refuse NaN/Inf in sensor data."""
    bad = ~np.isfinite(data)
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
