"""The MNE-facing API: :func:`apply_unfolded_sbl` and friends.

Channel picking, the EEG reference check, conversion to a fixed
orientation and whitening follow :func:`mne.inverse_sparse.gamma_map`
(through MNE's own ``_prepare_gain``), without depth weighting: the Type-II
source variances absorb depth.
"""

import mne
import numpy as np
import torch
from mne._fiff.proj import make_projector
# MNE's own helpers, as used by mne.inverse_sparse.gamma_map
from mne.inverse_sparse.mxne_inverse import _compute_residual, _prepare_gain
from mne.minimum_norm.inverse import _check_reference
from mne.utils import _validate_type, logger, verbose

from ._checks import (check_data_finite, check_device, check_dtype,
                      check_forward, check_noise_cov, pick_channels)
from .core._utils import DTYPES
from .core.network import MODELS, model_label
from .core.solver import NullSpace, covariance_statistic, prepare
from .core.weights import load_model, resolve_model

#: Singular values of the whitener below this fraction of the largest are
#: directions without data (reference, projectors, rank deficiency).
_NULL_RTOL = 1e-6


class UnfoldedSBLOperator:
    """Forward and noise model prepared for one EEG channel set.

    The analogue of an MNE inverse operator: the fixed-orientation forward,
    the whitened gain, the whitener (noise covariance and projectors) and
    the directions the reference removes, computed once by
    :func:`make_unfolded_sbl_operator` and passed as ``fwd`` to
    :func:`apply_unfolded_sbl` / :func:`apply_unfolded_sbl_epochs` for every
    evoked response or epochs object recorded with those channels.
    """

    def __init__(self, fwd, gain, gain_info, whitener, null_space, rank):
        self.fwd = fwd
        self.gain = gain
        self.info = gain_info
        self.whitener = whitener
        self.null_space = null_space
        self.rank = rank

    @property
    def ch_names(self):
        """The EEG channels the operator uses, in order."""
        return list(self.info["ch_names"])

    @property
    def n_sources(self):
        return self.gain.shape[1]

    def __repr__(self):
        k = 0 if self.null_space is None else self.null_space.rank
        return (f"<UnfoldedSBLOperator | {len(self.ch_names)} EEG channels, "
                f"{self.n_sources} sources, data rank {len(self.ch_names) - k}>")


@verbose
def make_unfolded_sbl_operator(info, fwd, noise_cov, *, rank=None,
                               verbose=None):
    """Prepare forward and noise covariance once for many calls.

    Parameters
    ----------
    info : mne.Info
        Measurement info of the data to localise: its good EEG channels
        (``info["bads"]`` excluded) and projectors are used, as by
        :func:`mne.minimum_norm.make_inverse_operator`.
    fwd : mne.Forward
        EEG forward solution on a surface source space (free or loose
        orientation forwards are converted to fixed orientation).
    noise_cov : mne.Covariance
        Single-trial noise covariance, used to whiten.
    rank : None | dict | 'info' | 'full'
        Rank of the noise covariance, as in MNE.
    %(verbose)s

    Returns
    -------
    operator : UnfoldedSBLOperator
        Pass it as ``fwd`` (with ``noise_cov=None``) to
        :func:`apply_unfolded_sbl` or :func:`apply_unfolded_sbl_epochs`.
    """
    _validate_type(info, mne.Info, "info")
    fwd = check_forward(fwd)
    ch_names = pick_channels(info, fwd, noise_cov)
    check_noise_cov(noise_cov, ch_names)
    info = mne.pick_info(info, [info["ch_names"].index(n) for n in ch_names])
    fwd, _, gain_info, whitener, _, _ = _prepare_gain(
        fwd, info, noise_cov, pca=False, depth=None, loose=0.0, rank=rank)
    # As MNE's inverse operators do, project before whitening: with
    # rank="full" MNE's whitener alone amplifies the reference direction
    # (by ~1e8 here) instead of removing it.
    proj, _, _ = make_projector(gain_info["projs"], gain_info["ch_names"])
    whitener = whitener @ proj
    # The whitened gain in V / (A.m) per unit noise, from MNE's
    # fixed-orientation forward (equal to MNE's whitened gain divided by its
    # global source weighting with rank=None, and clean with rank="full"),
    # so that the solver's estimates are in A.m directly.
    rows = [fwd["sol"]["row_names"].index(n) for n in gain_info["ch_names"]]
    gain = whitener @ fwd["sol"]["data"][rows]
    null = _whitener_null_space(whitener)
    return UnfoldedSBLOperator(fwd, gain, gain_info, whitener, null, rank)


def _operator_for(inst, fwd, noise_cov, rank):
    """The operator to use for ``inst`` and the indices of its channels."""
    if isinstance(fwd, UnfoldedSBLOperator):
        if noise_cov is not None or rank is not None:
            raise ValueError(
                "fwd is an UnfoldedSBLOperator, which already holds the noise "
                "covariance and rank: pass noise_cov=None (and rank=None), or "
                "pass the forward solution itself.")
        op = fwd
    else:
        if noise_cov is None:
            raise ValueError("noise_cov is required with a forward solution "
                             "(it is only optional with an "
                             "UnfoldedSBLOperator).")
        op = make_unfolded_sbl_operator(inst.info, fwd, noise_cov, rank=rank,
                                        verbose=False)
    missing = [n for n in op.ch_names if n not in inst.ch_names]
    bad = [n for n in op.ch_names if n in inst.info["bads"]]
    if missing or bad:
        raise ValueError(
            f"The operator uses channel(s) that the data "
            f"{'lack' if missing else 'mark as bad'}: {(missing or bad)[:10]}. "
            "Build the operator from this data's info "
            "(make_unfolded_sbl_operator(inst.info, fwd, noise_cov)).")
    _check_reference(inst, op.ch_names)
    unused = [n for n in mne.pick_info(inst.info, mne.pick_types(
        inst.info, meg=False, eeg=True, exclude="bads"))["ch_names"]
        if n not in set(op.ch_names)]
    if unused:
        logger.info(f"    {len(unused)} good EEG channel(s) of the data are "
                    f"not in the operator and are ignored: {unused[:10]}")
    return op, [inst.ch_names.index(n) for n in op.ch_names]


def _prepare(inst, fwd, noise_cov, rank):
    """Pick, check and whiten; return the pieces shared by evoked/epochs."""
    op, sel = _operator_for(inst, fwd, noise_cov, rank)
    return op.fwd, op.gain, op.info, op.whitener, sel, op.null_space


def _whitener_null_space(whitener):
    """The directions the whitened data cannot reach (average reference,
    SSP projectors, a rank-deficient noise covariance), as a NullSpace."""
    U, s, _ = np.linalg.svd(whitener)
    null = s <= s.max() * _NULL_RTOL
    if not null.any():
        return None
    if null.sum() >= len(s):
        raise ValueError("The whitener is zero: the noise covariance and "
                         "projectors leave no data to localise.")
    logger.info(f"    Solving in the {int((~null).sum())}-dimensional data "
                f"subspace ({int(null.sum())} direction(s) removed by the "
                "reference/projectors)")
    return NullSpace(U[:, null])


#: Networks of the bundled model names, loaded (and hash-checked) once per
#: process by :func:`_network`; only this module uses them.
_NETWORKS = {}


def _network(model, learn_noise, n_layers):
    """``load_model`` with a per-process cache for the bundled model names."""
    if not (isinstance(model, str) and model in MODELS):
        return load_model(model, learn_noise=learn_noise, n_layers=n_layers)
    key = (model, bool(learn_noise), n_layers)
    if key not in _NETWORKS:
        _NETWORKS[key] = load_model(model, learn_noise=learn_noise,
                                    n_layers=n_layers)
    return _NETWORKS[key]


def _ready(model, device, dtype):
    """``model`` on ``device`` in ``dtype``, in eval mode (no-op if it is)."""
    p = next(model.parameters(), None)
    if p is not None and (p.dtype != dtype or p.device != device):
        model = model.to(device=device, dtype=dtype)
    if model.training:
        model.eval()
    return model


def _whitened_statistic(data, whitener):
    """``C_y`` of the whitened data, ``W_h (Y Y^T / T) W_h^T``, (B, M, M).

    One ``O(M^2 T)`` pass over the recorded data (float64); the whitened
    time series itself is never needed (the estimate is a kernel).
    """
    data = np.asarray(data, np.float64)
    if data.ndim == 2:
        data = data[None]
    C = data @ data.transpose(0, 2, 1) / data.shape[-1]
    return whitener @ C @ whitener.T


def _run(model, gain, Cy, nave, learn_noise, device, dtype, null_space,
         whitener):
    """Run ``model`` on the whitened statistics ``Cy`` (B, M, M).

    Returns the posterior kernels ``K W_h`` (B, N, M) of the data as
    recorded (whitener ``W_h`` folded in: posterior mean ``K W_h @ data``),
    the learned whitened noise variances (B, M), both float64 numpy, and
    the network output.
    """
    dev = torch.device(device)
    tdtype = DTYPES[dtype]
    model = _ready(model, dev, tdtype)
    L = torch.as_tensor(gain, dtype=tdtype, device=dev)
    noise_var = None
    if not learn_noise:
        # whitened single-trial noise has unit variance; an average of nave
        # trials has 1 / nave
        noise_var = torch.full((L.shape[0],), 1.0 / nave, dtype=tdtype,
                               device=dev)
    with torch.no_grad():
        out = model(L, torch.as_tensor(Cy, device=dev), noise_var,
                    null_space=null_space)
        K = out.posterior_kernel() @ torch.as_tensor(whitener, dtype=tdtype,
                                                     device=dev)
    return (K.to(torch.float64).cpu().numpy(),
            out.lam.to(torch.float64).cpu().numpy(), out)


def _noise_covariance(lam_w, whitener, ch_names, nfree):
    """Learned whitened noise variances back to a diagonal physical covariance."""
    # the same cut as the null space: directions removed by the reference
    # have no learned noise to map back
    unwhiten = np.linalg.pinv(whitener, rcond=_NULL_RTOL)
    diag = np.einsum("mk,k,mk->m", unwhiten, lam_w, unwhiten)
    return mne.Covariance(diag, ch_names, bads=[], projs=[], nfree=nfree)


def _make_stc(kernel, sens_data, fwd, tmin, tstep):
    """A SourceEstimate in MNE's low-rank form ``(kernel, sens_data)``.

    ``stc.data`` is ``kernel @ sens_data``, computed by MNE on first access:
    the solver's cost does not grow with the number of time samples.
    """
    vertices = [s["vertno"] for s in fwd["src"]]
    return mne.SourceEstimate((kernel, sens_data), vertices, tmin=tmin,
                              tstep=tstep, subject=fwd["src"]._subject)


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
        (``evoked.set_eeg_reference(projection=True)``). The reference
        and any other projector remove sensor directions from the data; the
        solver works in the remaining subspace (without that, learning the
        noise jointly would be ill-posed: the noise variance along the
        reference direction would shrink towards zero).
    fwd : instance of mne.Forward | UnfoldedSBLOperator
        EEG forward solution on a surface source space; free or loose
        orientation forwards are converted to fixed orientation normal to
        the cortex. Or an operator from :func:`make_unfolded_sbl_operator`
        (then ``noise_cov=None``), which skips the preparation (picking,
        orientation, whitening) on repeated calls.
    noise_cov : instance of mne.Covariance | None
        Noise covariance of single trials (as for
        :func:`mne.minimum_norm.make_inverse_operator`), used to whiten;
        with ``learn_noise=False`` it is the known noise, scaled by
        ``1 / evoked.nave``. None only with an operator.
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
        model prunes are (near) zero. Held, like MNE's own inverse
        solutions can be, as the low-rank pair ``(kernel, sensor data)``:
        ``stc.data`` is computed on first access, so the cost of the solver
        does not grow with the number of time samples.
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
    net = _network(model, learn_noise, n_layers)
    fwd_fixed, gain, gain_info, whitener, sel, null = _prepare(
        evoked, fwd, noise_cov, rank)
    sens_data = evoked.data[sel]
    logger.info(f"Running {net.model} ({net.n_layers} layers, "
                f"{'joint gamma/lambda' if learn_noise else 'known noise'}) "
                f"on {len(sel)} channels x {gain.shape[1]} sources")
    K, lam, _ = _run(net, gain, _whitened_statistic(sens_data, whitener),
                     evoked.nave, learn_noise, device, dtype, null, whitener)
    # the kernel of the data as recorded: whitening folded in, as in MNE
    stc = _make_stc(K[0], sens_data, fwd_fixed, evoked.times[0],
                    1.0 / evoked.info["sfreq"])
    out = [stc]
    if return_residual:
        out.append(_compute_residual(fwd_fixed, evoked, stc.data,
                                     np.arange(stc.shape[0]), gain_info))
    if return_noise_cov:
        out.append(_noise_covariance(lam[0], whitener, gain_info["ch_names"],
                                     evoked.nave))
    return out[0] if len(out) == 1 else tuple(out)


@verbose
def apply_unfolded_sbl_epochs(epochs, fwd, noise_cov, model="deep-cb", *,
                              learn_noise=True, n_layers=None,
                              return_noise_cov=False, rank=None, device="cpu",
                              dtype="float32", batch_size=None, verbose=None):
    """Localise every epoch (single trials) in batched passes.

    All epochs go through the network together (in chunks of
    ``batch_size``), without a Python loop over epochs. Parameters are as
    in :func:`apply_unfolded_sbl`; with ``learn_noise=False`` the whitened
    single-trial noise variance is 1.

    Parameters
    ----------
    batch_size : int | None
        Epochs per pass. None: 32 on the CPU (larger batches leave the
        caches and run slower per epoch, see the speed benchmark) and 1024
        on a GPU.

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
    net = _network(model, learn_noise, n_layers)
    fwd_fixed, gain, gain_info, whitener, sel, null = _prepare(
        epochs, fwd, noise_cov, rank)
    if batch_size is None:
        batch_size = 32 if torch.device(device).type == "cpu" else 1024
    _validate_type(batch_size, "int-like", "batch_size")
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    data = epochs.get_data(picks=[epochs.ch_names[i] for i in sel])
    check_data_finite(data, "epochs")
    Cy = _whitened_statistic(data, whitener)
    logger.info(f"Running {net.model} on {len(data)} epochs")
    Ks, lams = [], []
    for start in range(0, len(data), batch_size):
        K, lam, _ = _run(net, gain, Cy[start:start + batch_size], 1,
                         learn_noise, device, dtype, null, whitener)
        Ks.append(K)
        lams.append(lam)
    K, lam = np.concatenate(Ks), np.concatenate(lams)
    tstep = 1.0 / epochs.info["sfreq"]
    stcs = [_make_stc(k, d, fwd_fixed, epochs.times[0], tstep)
            for k, d in zip(K, data)]
    if return_noise_cov:
        covs = [_noise_covariance(lm, whitener, gain_info["ch_names"], 1)
                for lm in lam]
        return stcs, covs
    return stcs


@verbose
def unfolded_sbl_trajectory(evoked, fwd, noise_cov, model="deep-cb", *,
                            learn_noise=True, n_layers=None, rank=None,
                            keep_deltas=False, return_sources=False,
                            verbose=None):
    """Run an unfolded model layer by layer and summarise each layer.

    The public entry point to the per-layer behaviour of a model (what the
    report's convergence figure shows), with the same channel picking and
    whitening as :func:`apply_unfolded_sbl`. It runs in float64 on the CPU;
    a network passed as ``model`` is not modified.

    Parameters
    ----------
    evoked : instance of mne.Evoked
        As in :func:`apply_unfolded_sbl`.
    fwd : instance of mne.Forward | UnfoldedSBLOperator
        As in :func:`apply_unfolded_sbl`.
    noise_cov : instance of mne.Covariance | None
        As in :func:`apply_unfolded_sbl`.
    model : str | UnfoldedSBL | path-like
        Model (falls back to ``"cb"`` without weights, see ``note``).
    learn_noise : bool
        Joint noise learning.
    n_layers : int | None
        Depth (``"cb"`` only).
    rank : None | dict | str
        Noise-covariance rank, as in MNE.
    keep_deltas : bool
        Keep the per-layer correction vectors (``delta_source``,
        ``delta_noise``: lists of 1-D arrays, None where a layer has none).
    return_sources : bool
        Also return the posterior mean after every layer (``"X"``: list of
        ``(n_sources, n_times)`` arrays in A·m, every source of ``fwd``).
    %(verbose)s

    Returns
    -------
    trajectory : dict
        ``model`` (name actually run), ``note`` (fallback message or None),
        ``cost`` (Type-II cost at the input of each layer, normalised
        units), ``gamma_change`` (``||γ^k - γ^{k-1}|| / ||γ^{k-1}||``),
        ``lam_change``, ``mean_abs_delta_source`` and
        ``mean_abs_delta_noise`` (NaN for layers without corrections);
        arrays of length ``n_layers``.
    """
    _validate_type(evoked, mne.Evoked, "evoked")
    _validate_type(learn_noise, bool, "learn_noise")
    net, name, note = resolve_model(model, learn_noise, n_layers)
    net = _ready(net, torch.device("cpu"), torch.float64)
    op, sel = _operator_for(evoked, fwd, noise_cov, rank)
    null = op.null_space
    L = torch.as_tensor(op.gain, dtype=torch.float64)
    Y = torch.as_tensor((op.whitener @ evoked.data[sel])[None],
                        dtype=torch.float64)
    Cy = covariance_statistic(Y)
    noise_var = None
    if not learn_noise:
        noise_var = torch.full((L.shape[0],), 1.0 / evoked.nave,
                               dtype=torch.float64)
    with torch.no_grad():
        out = net(L, Cy, noise_var, return_trajectory=True, null_space=null)
        g_prev = prepare(L, Cy, noise_var, net.noise_init, null).state
        gamma_prev, lam_prev = g_prev.gamma[0], g_prev.lam[0]
        res = {k: [] for k in ("cost", "gamma_change", "lam_change",
                               "mean_abs_delta_source", "mean_abs_delta_noise")}
        d_src, d_noise, Xs = [], [], []
        for k, step in enumerate(out.trajectory):
            g, lm = step["gamma"][0], step["lam"][0]
            res["cost"].append(float(step["cost"][0]))
            res["gamma_change"].append(float(
                torch.linalg.norm(g - gamma_prev)
                / torch.linalg.norm(gamma_prev).clamp_min(1e-300)))
            res["lam_change"].append(float(
                torch.linalg.norm(lm - lam_prev)
                / torch.linalg.norm(lam_prev).clamp_min(1e-300)))
            for key, dkey, store in (("mean_abs_delta_source", "delta_source", d_src),
                                     ("mean_abs_delta_noise", "delta_noise", d_noise)):
                d = step[dkey]
                if d is None:
                    res[key].append(np.nan)
                    store.append(None)
                else:
                    d = d[0].detach().to(torch.float64).cpu().numpy()
                    res[key].append(float(np.mean(np.abs(d))))
                    store.append(d)
            if return_sources:
                Xs.append(out.posterior_mean(Y, layer=k)[0].cpu().numpy())
            gamma_prev, lam_prev = g, lm
    traj = {k: np.asarray(v, float) for k, v in res.items()}
    traj.update(model=name, note=note, learn_noise=learn_noise,
                label=model_label(name, learn_noise))
    if keep_deltas:
        traj["delta_source"] = d_src if any(d is not None for d in d_src) else None
        traj["delta_noise"] = d_noise if any(d is not None for d in d_noise) else None
    if return_sources:
        traj["X"] = Xs
    return traj
