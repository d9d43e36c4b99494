"""The MNE-facing API: :func:`apply_unfolded_sbl` and friends.

Channel picking, the EEG reference check, conversion to a fixed
orientation and whitening follow :func:`mne.inverse_sparse.gamma_map`
(through MNE's own ``_prepare_gain``), without depth weighting: the Type-II
source variances absorb depth.
"""

import numpy as np
import torch
import mne
from mne.utils import _validate_type, logger, verbose

from ._checks import (check_data_finite, check_device, check_dtype,
                      check_forward, check_noise_cov, pick_channels)
from .pretrained import load_model

# MNE's own helpers, as used by mne.inverse_sparse.gamma_map
from mne.inverse_sparse.mxne_inverse import _compute_residual  # noqa: E402
from .solver import covariance_statistic

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _prepare(inst, fwd, noise_cov, rank):
    """Pick, check and whiten; return the pieces shared by evoked/epochs."""
    from mne.inverse_sparse.mxne_inverse import _prepare_gain
    from mne.minimum_norm.inverse import _check_reference

    fwd = check_forward(fwd)
    ch_names = pick_channels(inst.info, fwd, noise_cov)
    check_noise_cov(noise_cov, ch_names)
    _check_reference(inst, ch_names)
    info = mne.pick_info(inst.info, [inst.ch_names.index(n) for n in ch_names])
    fwd, gain, gain_info, whitener, source_weighting, _ = _prepare_gain(
        fwd, info, noise_cov, pca=False, depth=None, loose=0.0, rank=rank)
    # MNE scales the whitened gain by a global factor (no depth weighting
    # here); the estimates get it back as in gamma_map's
    # _reapply_source_weighting.  Fold it into the gain's columns instead,
    # so that the solver's estimates are in A.m directly.
    gain = gain / source_weighting[None, :]
    sel = [inst.ch_names.index(name) for name in gain_info["ch_names"]]
    return fwd, gain, gain_info, whitener, sel


def _run(model, gain, data_w, nave, learn_noise, device, dtype):
    """Run ``model`` on whitened data ``(B, M, T)``; return X, lam (numpy)."""
    dev = torch.device(device)
    tdtype = _DTYPES[dtype]
    model = model.to(device=dev, dtype=tdtype).eval()
    L = torch.as_tensor(gain, dtype=tdtype, device=dev)
    Y = torch.as_tensor(data_w, dtype=tdtype, device=dev)
    noise_var = None
    if not learn_noise:
        # whitened single-trial noise has unit variance; an average of nave
        # trials has 1 / nave
        noise_var = torch.full((L.shape[0],), 1.0 / nave, dtype=tdtype,
                               device=dev)
    with torch.no_grad():
        out = model(L, covariance_statistic(Y), noise_var)
        X = out.posterior_mean(Y)
    return (X.to(torch.float64).cpu().numpy(),
            out.lam.to(torch.float64).cpu().numpy(), out)


def _noise_covariance(lam_w, whitener, ch_names, nfree):
    """Learned whitened noise variances back to a diagonal physical covariance."""
    unwhiten = np.linalg.pinv(whitener)
    diag = np.einsum("mk,k,mk->m", unwhiten, lam_w, unwhiten)
    return mne.Covariance(diag, ch_names, bads=[], projs=[], nfree=nfree)


def _make_stc(X, fwd, tmin, tstep):
    vertices = [s["vertno"] for s in fwd["src"]]
    return mne.SourceEstimate(X, vertices, tmin=tmin, tstep=tstep,
                              subject=fwd["src"]._subject)


@verbose
def apply_unfolded_sbl(evoked, fwd, noise_cov, model="deep-cb", *,
                       learn_noise=True, n_layers=None, return_residual=False,
                       return_noise_cov=False, rank=None, device="cpu",
                       dtype="float32", verbose=None):
    """Localise an evoked response with unfolded convex-bounding SBL.

    Parameters
    ----------
    evoked : instance of mne.Evoked
        EEG data with an average-reference projector
        (``evoked.set_eeg_reference(projection=True)``).
    fwd : instance of mne.Forward
        EEG forward solution on a surface source space; free or loose
        orientation forwards are converted to fixed orientation normal to
        the cortex.
    noise_cov : instance of mne.Covariance
        Noise covariance of single trials (as for
        :func:`mne.minimum_norm.make_inverse_operator`), used to whiten;
        with ``learn_noise=False`` it is the known noise, scaled by
        ``1 / evoked.nave``.
    model : str | instance of UnfoldedSBL | path-like
        ``"cb"`` (classical convex bounding), ``"bias-cb"``,
        ``"deep-cb"`` or ``"deep-attn-cb"`` (bundled pretrained weights),
        a network, or the path of a weights file written by the training
        CLI.
    learn_noise : bool
        If True (default), learn the sensor-wise noise variances jointly
        with the source variances; else keep the whitened noise fixed.
    n_layers : int | None
        Number of unfolded layers (iterations). None uses the model's
        depth (25). Only the classical ``"cb"`` accepts another depth.
    return_residual : bool
        Also return the residual (data minus fit) as an Evoked.
    return_noise_cov : bool
        Also return the learned sensor noise as a diagonal
        :class:`mne.Covariance` in the data's units (only with
        ``learn_noise=True``). Large values flag noisy channels.
    rank : None | dict | 'info' | 'full'
        Rank of the noise covariance, as in MNE.
    device : str
        Torch device, e.g. ``"cpu"`` or ``"cuda"``.
    dtype : "float32" | "float64"
        Working precision of the large products (the small ``M x M``
        factorisations always run in float64).
    %(verbose)s

    Returns
    -------
    stc : instance of mne.SourceEstimate
        Source time courses (A·m) on every source of ``fwd``; sources the
        model prunes are (near) zero.
    residual : instance of mne.Evoked
        Only if ``return_residual``.
    noise_cov_learned : instance of mne.Covariance
        Only if ``return_noise_cov``.
    """
    _validate_type(evoked, mne.Evoked, "evoked")
    _validate_type(learn_noise, bool, "learn_noise")
    check_device(device)
    check_dtype(dtype)
    if return_noise_cov and not learn_noise:
        raise ValueError("return_noise_cov=True needs learn_noise=True: with "
                         "known noise nothing is learned about the sensors.")
    check_data_finite(evoked.data, "evoked")
    net = load_model(model, learn_noise=learn_noise, n_layers=n_layers)
    fwd_fixed, gain, gain_info, whitener, sel = _prepare(
        evoked, fwd, noise_cov, rank)
    data_w = (whitener @ evoked.data[sel])[None]
    logger.info(f"Running {net.model} ({net.n_layers} layers, "
                f"{'joint gamma/lambda' if learn_noise else 'known noise'}) "
                f"on {len(sel)} channels x {gain.shape[1]} sources")
    X, lam, _ = _run(net, gain, data_w, evoked.nave, learn_noise, device,
                     dtype)
    stc = _make_stc(X[0], fwd_fixed, evoked.times[0], 1.0 / evoked.info["sfreq"])
    out = [stc]
    if return_residual:
        out.append(_compute_residual(fwd_fixed, evoked, X[0],
                                     np.arange(X.shape[1]), gain_info))
    if return_noise_cov:
        out.append(_noise_covariance(lam[0], whitener, gain_info["ch_names"],
                                     evoked.nave))
    return out[0] if len(out) == 1 else tuple(out)


@verbose
def apply_unfolded_sbl_epochs(epochs, fwd, noise_cov, model="deep-cb", *,
                              learn_noise=True, n_layers=None,
                              return_noise_cov=False, rank=None, device="cpu",
                              dtype="float32", batch_size=256, verbose=None):
    """Localise every epoch (single trials) in batched passes.

    All epochs go through the network together (in chunks of
    ``batch_size``), without a Python loop over epochs. Parameters are as
    in :func:`apply_unfolded_sbl`; with ``learn_noise=False`` the whitened
    single-trial noise variance is 1.

    Returns
    -------
    stcs : list of mne.SourceEstimate
        One per epoch.
    noise_covs : list of mne.Covariance
        Only if ``return_noise_cov``: the learned noise of each epoch.
    """
    _validate_type(epochs, mne.BaseEpochs, "epochs")
    _validate_type(learn_noise, bool, "learn_noise")
    check_device(device)
    check_dtype(dtype)
    if return_noise_cov and not learn_noise:
        raise ValueError("return_noise_cov=True needs learn_noise=True.")
    net = load_model(model, learn_noise=learn_noise, n_layers=n_layers)
    fwd_fixed, gain, gain_info, whitener, sel = _prepare(
        epochs, fwd, noise_cov, rank)
    data = epochs.get_data(picks=[epochs.ch_names[i] for i in sel])
    check_data_finite(data, "epochs")
    data_w = np.einsum("mk,bkt->bmt", whitener, data)
    logger.info(f"Running {net.model} on {len(data_w)} epochs")
    Xs, lams = [], []
    for start in range(0, len(data_w), int(batch_size)):
        X, lam, _ = _run(net, gain, data_w[start:start + batch_size], 1,
                         learn_noise, device, dtype)
        Xs.append(X)
        lams.append(lam)
    X, lam = np.concatenate(Xs), np.concatenate(lams)
    tstep = 1.0 / epochs.info["sfreq"]
    stcs = [_make_stc(x, fwd_fixed, epochs.times[0], tstep) for x in X]
    if return_noise_cov:
        covs = [_noise_covariance(lm, whitener, gain_info["ch_names"], 1)
                for lm in lam]
        return stcs, covs
    return stcs
