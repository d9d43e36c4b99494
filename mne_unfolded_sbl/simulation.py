"""Simulated EEG on MNE objects: evoked responses and simulators.

The simulator itself (:class:`~mne_unfolded_sbl.core.simulator.EEGSimulator`)
works on arrays and needs no MNE; this module feeds it an
:class:`mne.Forward` and returns MNE objects.
"""

import dataclasses
from copy import deepcopy

import mne
import numpy as np
import torch
from mne.io.constants import FIFF
from mne.utils import _validate_type, logger, verbose

from .core.simulator import EEGSimulator, SimulationConfig
from .datasets import fixed_eeg_forward

__all__ = ["simulate_evoked", "simulator_from_forward"]


@verbose
def simulator_from_forward(fwd, config=None, *, device="cpu",
                           dtype=torch.float32, seed=None, verbose=None):
    """Build a simulator from the EEG part of an MNE forward solution.

    Parameters
    ----------
    fwd : mne.Forward
        Forward solution on a surface source space. It is converted to
        fixed, surface-normal orientation if needed.
    config, device, dtype, seed
        See :class:`~mne_unfolded_sbl.core.simulator.EEGSimulator`.
    %(verbose)s

    Returns
    -------
    sim : EEGSimulator
        The simulator (lead field in V/(A·m), in the reference of the
        forward, positions in metres).
    """
    fwd = fixed_eeg_forward(fwd)
    pos = np.concatenate([s["rr"][s["vertno"]] for s in fwd["src"]])
    return EEGSimulator(fwd["sol"]["data"], pos, config, device=device,
                        dtype=dtype, seed=seed)


def _make_info(ch_names, src_info, sfreq):
    missing = [ch for ch in ch_names if ch not in src_info["ch_names"]]
    if missing:
        raise ValueError(f"info lacks channels of the forward: {missing}")
    info = mne.create_info(list(ch_names), sfreq, "eeg")
    chs = {ch["ch_name"]: ch for ch in src_info["chs"]}
    in_head = all(
        chs[name]["coord_frame"] == FIFF.FIFFV_COORD_HEAD for name in ch_names
    )
    pos = {name: np.array(chs[name]["loc"][:3], float) for name in ch_names}
    if in_head and all(np.isfinite(p).all() for p in pos.values()):
        fids = dict()
        for d in src_info.get("dig") or []:
            if d["kind"] == FIFF.FIFFV_POINT_CARDINAL and \
                    d["coord_frame"] == FIFF.FIFFV_COORD_HEAD:
                key = {FIFF.FIFFV_POINT_NASION: "nasion",
                       FIFF.FIFFV_POINT_LPA: "lpa",
                       FIFF.FIFFV_POINT_RPA: "rpa"}.get(d["ident"])
                if key is not None:
                    fids[key] = np.array(d["r"], float)
        montage = mne.channels.make_dig_montage(
            ch_pos=pos, coord_frame="head", **fids
        )
        info.set_montage(montage, verbose="error")
    else:
        for ch in info["chs"]:
            ch["loc"][:] = chs[ch["ch_name"]]["loc"]
            ch["coord_frame"] = chs[ch["ch_name"]]["coord_frame"]
    return info


@verbose
def simulate_evoked(fwd, config=None, *, seed=None, tmin=0.0, info=None,
                    source_amplitude=10e-9, verbose=None):
    """Simulate one EEG sample with an MNE forward solution.

    Parameters
    ----------
    fwd : mne.Forward
        Forward solution on a surface source space with EEG channels (MEG
        channels are dropped). It is converted to fixed orientation normal
        to the cortex (``surf_ori=True, force_fixed=True, use_cps=True``) if
        needed.
    config : SimulationConfig | None
        Simulation ranges (``None``: defaults). ``config.sfreq`` and
        ``config.n_times`` set the sampling.
    seed : int | None
        Seed; the same seed gives the same data.
    tmin : float
        Time of the first sample in seconds.
    info : mne.Info | None
        Measurement info whose channel positions (and fiducials) are used
        for the channels of the gain. ``None`` uses ``fwd["info"]``.
    source_amplitude : float
        Scale (A·m) of the source amplitudes: the centre of a source has an
        RMS of ``amplitude * source_amplitude`` with ``amplitude`` drawn from
        ``config.amplitude``. Default ``10e-9`` (10 nA·m RMS: with the default
        amplitudes the largest source moment of a sample peaks at about
        20-30 nA·m, a physiologically plausible moment for a focal ~1 cm²
        patch). With the fsaverage template forward (median gain about
        27 V/(A·m)) the default configuration gives a sensor RMS of about
        1-1.5 µV.
    %(verbose)s

    Returns
    -------
    evoked : mne.EvokedArray
        Simulated data in volts (``nave=1``), EEG channels of the gain, with
        an average-reference projector added (not applied).
    stc_true : mne.SourceEstimate
        Ground-truth sources in A·m on ``fwd["src"]``.
    noise_cov : mne.Covariance
        True diagonal noise covariance (V²) of the simulated noise, carrying
        the same average-reference projector as ``evoked``.

    Notes
    -----
    The per-sensor SNR (``config.snr_db``) is defined on the data in the
    reference of the forward (before the average-reference projection).
    ``config.reference`` is not used: the evoked data stay in the reference
    of the forward and carry the (inactive) average-reference projector,
    which MNE applies when it whitens, as for recorded data.
    """
    _validate_type(config, (SimulationConfig, None), "config")
    config = SimulationConfig() if config is None else config
    config = dataclasses.replace(config, reference="none")
    _validate_type(tmin, "numeric", "tmin")
    _validate_type(source_amplitude, "numeric", "source_amplitude")
    if not source_amplitude > 0:
        raise ValueError(f"source_amplitude must be > 0, got {source_amplitude}.")
    _validate_type(info, (mne.Info, None), "info")
    fwd = fixed_eeg_forward(fwd)
    ch_names = list(fwd["sol"]["row_names"])
    pos = np.concatenate([s["rr"][s["vertno"]] for s in fwd["src"]])
    sim = EEGSimulator(
        fwd["sol"]["data"], pos, config,
        device="cpu", dtype=torch.float64, seed=seed,
    )
    out = sim.sample(1)
    scale = float(source_amplitude)
    X = out["X"][0].numpy() * scale
    Y = out["Y"][0].numpy() * scale
    noise_var = out["noise_var"][0].numpy() * scale**2
    info = _make_info(ch_names, fwd["info"] if info is None else info, config.sfreq)
    evoked = mne.EvokedArray(Y, info, tmin=float(tmin), nave=1, comment="simulated")
    evoked.set_eeg_reference(projection=True, verbose=False)
    src = fwd["src"]
    subject = getattr(src, "_subject", None) or src[0].get("subject_his_id")
    stc = mne.SourceEstimate(
        X, vertices=[s["vertno"].copy() for s in src], tmin=float(tmin),
        tstep=1.0 / config.sfreq, subject=subject,
    )
    noise_cov = mne.Covariance(
        noise_var, ch_names, bads=[], projs=deepcopy(evoked.info["projs"]),
        nfree=config.n_times,
    )
    logger.info(
        f"Simulated evoked: {int(out['n_active'][0])} sources, sensor RMS "
        f"{np.sqrt(np.mean(Y**2)) * 1e6:.2f} µV."
    )
    return evoked, stc, noise_cov
