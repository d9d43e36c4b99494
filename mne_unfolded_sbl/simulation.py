"""Simulated EEG, MEG and MEG+EEG on MNE objects: evoked responses and
simulators.

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
from mne.utils import _check_option, _validate_type, logger, verbose

from .core.simulator import EEGSimulator, SimulationConfig, derive_seed
from .datasets import fixed_eeg_forward

__all__ = ["SENSORS", "NOISE_MODELS", "simulate_evoked",
           "simulator_from_forward"]

#: Channels :func:`simulate_evoked` simulates.
SENSORS = ("eeg", "meg", "meg-eeg")
#: Sensor-noise models of :func:`simulate_evoked`.
NOISE_MODELS = ("per-channel", "per-type")
#: MEG channel fields copied from the forward's info (beyond ``loc``).
_MEG_FIELDS = ("kind", "coil_type", "unit", "unit_mul", "cal", "range",
               "coord_frame")
#: Display units of the sensor RMS in the log.
_UNITS = dict(eeg=(1e6, "µV"), mag=(1e15, "fT"), grad=(1e13, "fT/cm"))


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


def _fixed_forward(fwd, sensors):
    """The rows of ``fwd`` for ``sensors``, fixed surface-normal orientation."""
    _validate_type(fwd, mne.Forward, "fwd")
    n_meg = len(mne.pick_types(fwd["info"], meg=True, ref_meg=False,
                               exclude=()))
    n_eeg = len(mne.pick_types(fwd["info"], meg=False, eeg=True, exclude=()))
    lacks = [kind for kind, n in (("MEG", n_meg), ("EEG", n_eeg))
             if n == 0 and kind.lower() in sensors]
    if lacks:
        raise ValueError(
            f"sensors={sensors!r} needs {' and '.join(lacks)} channels, but "
            f"the forward has {n_meg} MEG and {n_eeg} EEG channels"
            + (" (the template MEG array: make_template_forward(..., "
               "meg=True))." if "MEG" in lacks else "."))
    if sensors == "eeg":
        return fixed_eeg_forward(fwd)
    with mne.utils.use_log_level("error"):
        fwd = mne.pick_types_forward(fwd, meg=True, eeg=sensors == "meg-eeg",
                                     ref_meg=False)
    if fwd["src"].kind != "surface":
        raise ValueError(
            "Simulating needs a forward on a surface source space, got a "
            f"{fwd['src'].kind!r} source space.")
    if not (mne.forward.is_fixed_orient(fwd) and fwd["surf_ori"]):
        fwd = mne.convert_forward_solution(fwd, surf_ori=True, force_fixed=True,
                                           use_cps=True, copy=True,
                                           verbose=False)
    return fwd


def _make_info(ch_names, src_info, sfreq):
    """An Info of ``ch_names`` (EEG, MEG) with the sensors of ``src_info``."""
    missing = [ch for ch in ch_names if ch not in src_info["ch_names"]]
    if missing:
        raise ValueError(f"info lacks channels of the forward: {missing}")
    types = [mne.channel_type(src_info, src_info["ch_names"].index(name))
             for name in ch_names]
    info = mne.create_info(list(ch_names), sfreq, types)
    chs = {ch["ch_name"]: ch for ch in src_info["chs"]}
    meg = [name for name, kind in zip(ch_names, types) if kind != "eeg"]
    if meg:  # sensor geometry in device coordinates and the helmet position
        if src_info.get("dev_head_t") is None:
            raise ValueError("info has MEG channels but no device->head "
                             "transform (info['dev_head_t'] is None)")
        with info._unlock():
            for ch in info["chs"]:
                if ch["ch_name"] in meg:
                    src = chs[ch["ch_name"]]
                    ch["loc"][:] = src["loc"]
                    for key in _MEG_FIELDS:
                        ch[key] = src[key]
            info["dev_head_t"] = src_info["dev_head_t"].copy()
    eeg = [name for name, kind in zip(ch_names, types) if kind == "eeg"]
    if not eeg:
        return info
    in_head = all(
        chs[name]["coord_frame"] == FIFF.FIFFV_COORD_HEAD for name in eeg
    )
    pos = {name: np.array(chs[name]["loc"][:3], float) for name in eeg}
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
        with info._unlock():
            for ch in info["chs"]:
                if ch["ch_name"] in pos:
                    ch["loc"][:] = chs[ch["ch_name"]]["loc"]
                    ch["coord_frame"] = chs[ch["ch_name"]]["coord_frame"]
    return info


def _noise_per_type(LX, types, snr_db, rng):
    """White noise of one variance per channel type at an SNR drawn
    uniformly in ``snr_db`` for each type: ``(noise, noise_var)``."""
    noise_var = np.empty(len(LX))
    for kind in dict.fromkeys(types):  # in channel order
        rows = types == kind
        snr = rng.uniform(*snr_db)
        power = np.mean(LX[rows] ** 2)
        noise_var[rows] = max(power / 10.0 ** (snr / 10.0),
                              np.finfo(np.float64).tiny)
    noise = np.sqrt(noise_var)[:, None] * rng.standard_normal(LX.shape)
    return noise, noise_var


def _snr_per_type(LX, noise_var, types):
    """SNR (dB) of each channel type: mean signal power over its channels
    divided by their mean noise variance."""
    return {str(kind): float(10 * np.log10(np.mean(LX[types == kind] ** 2)
                                      / np.mean(noise_var[types == kind])))
            for kind in dict.fromkeys(types)}


@verbose
def simulate_evoked(fwd, config=None, *, seed=None, tmin=0.0, info=None,
                    source_amplitude=10e-9, sensors="eeg", noise=None,
                    return_snr=False, verbose=None):
    """Simulate one EEG, MEG or MEG+EEG sample with an MNE forward solution.

    Parameters
    ----------
    fwd : mne.Forward
        Forward solution on a surface source space with the channels of
        ``sensors`` (other channels are dropped). It is converted to fixed
        orientation normal to the cortex (``surf_ori=True,
        force_fixed=True, use_cps=True``) if needed.
    config : SimulationConfig | None
        Simulation ranges (``None``: defaults). ``config.sfreq`` and
        ``config.n_times`` set the sampling; ``config.snr_db`` the SNR (see
        ``noise``).
    seed : int | None
        Seed; the same seed gives the same data. The sources do not depend
        on ``noise`` or ``sensors``: the same seed and forward give the same
        ``stc_true`` whatever the noise model.
    tmin : float
        Time of the first sample in seconds.
    info : mne.Info | None
        Measurement info whose channel positions (and fiducials; for MEG
        the sensor definitions and ``dev_head_t``) are used for the
        channels of the gain. ``None`` uses ``fwd["info"]``.
    source_amplitude : float
        Scale (A·m) of the source amplitudes: the centre of a source has an
        RMS of ``amplitude * source_amplitude`` with ``amplitude`` drawn from
        ``config.amplitude``. Default ``10e-9`` (10 nA·m RMS: with the default
        amplitudes the largest source moment of a sample peaks at about
        20-30 nA·m, a physiologically plausible moment for a focal ~1 cm²
        patch). With the fsaverage template forward (median gain about
        27 V/(A·m)) the default configuration gives a sensor RMS of about
        1-1.5 µV.
    sensors : "eeg" | "meg" | "meg-eeg"
        Channels simulated: the EEG channels of ``fwd`` (default), its MEG
        channels (magnetometers and gradiometers), or both (e.g. the
        forward of ``make_template_forward(..., meg=True)``).
    noise : None | "per-channel" | "per-type"
        Sensor noise, diagonal Gaussian, white over time:

        - ``"per-channel"``: heteroscedastic, an SNR drawn uniformly in
          ``config.snr_db`` for **every channel** (the noise variance of a
          channel is its signal power over the drawn SNR), as the
          :class:`~mne_unfolded_sbl.core.simulator.EEGSimulator` draws it;
        - ``"per-type"``: one SNR drawn uniformly in ``config.snr_db`` for
          **every channel type** (``"mag"``, ``"grad"``, ``"eeg"``; equal
          ends give a fixed SNR) and one noise variance per type, the
          type's mean signal power (over its channels and times) over that
          SNR: homoscedastic within a type, each type in its own units.

        ``None``: ``"per-channel"`` for ``sensors="eeg"`` (the paper's
        simulation), ``"per-type"`` with MEG. Signal powers are those of
        the noiseless data in the reference of the forward (EEG before the
        average-reference projection).
    return_snr : bool
        Also return the SNR of every channel type.
    %(verbose)s

    Returns
    -------
    evoked : mne.EvokedArray
        Simulated data (EEG in V, magnetometers in T, gradiometers in
        T/m; ``nave=1``), the channels of the gain (MEG first, as in the
        forward). With EEG channels an average-reference projector is
        added (not applied); MEG channels are not referenced.
    stc_true : mne.SourceEstimate
        Ground-truth sources in A·m on ``fwd["src"]``.
    noise_cov : mne.Covariance
        True diagonal noise covariance (per channel, in the channels'
        units squared; with ``noise="per-type"`` one variance per channel
        type) of the simulated noise, carrying the same projector as
        ``evoked``.
    snr_db : dict
        Only with ``return_snr``: channel type (``"mag"``, ``"grad"``,
        ``"eeg"``) -> SNR in dB, ``10 log10`` of the mean signal power over
        the type's channels divided by their mean noise variance (with
        ``noise="per-type"``: the SNR drawn for that type).

    Notes
    -----
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
    _validate_type(sensors, str, "sensors")
    _check_option("sensors", sensors, SENSORS)
    _validate_type(noise, (str, None), "noise")
    if noise is None:
        noise = "per-channel" if sensors == "eeg" else "per-type"
    _check_option("noise", noise, NOISE_MODELS)
    _validate_type(return_snr, bool, "return_snr")
    fwd = _fixed_forward(fwd, sensors)
    ch_names = list(fwd["sol"]["row_names"])
    info = _make_info(ch_names, fwd["info"] if info is None else info,
                      config.sfreq)
    types = np.array(info.get_channel_types())
    pos = np.concatenate([s["rr"][s["vertno"]] for s in fwd["src"]])
    sim = EEGSimulator(
        fwd["sol"]["data"], pos, config,
        device="cpu", dtype=torch.float64, seed=seed,
    )
    out = sim.sample(1)
    scale = float(source_amplitude)
    X = out["X"][0].numpy()
    LX = sim.L.numpy() @ X
    if noise == "per-channel":
        Y = out["Y"][0].numpy()
        noise_var = out["noise_var"][0].numpy()
    else:  # a stream of its own: the sources stay those of the seed
        rng = np.random.default_rng(
            None if seed is None else derive_seed(int(seed) % 2**64, 1))
        E, noise_var = _noise_per_type(LX, types, config.snr_db, rng)
        Y = LX + E
    snr_db = _snr_per_type(LX, noise_var, types)
    X, Y, noise_var = X * scale, Y * scale, noise_var * scale**2
    evoked = mne.EvokedArray(Y, info, tmin=float(tmin), nave=1, comment="simulated")
    if "eeg" in snr_db:
        evoked.set_eeg_reference(projection=True, verbose=False)
    src = fwd["src"]
    subject = getattr(src, "_subject", None) or src[0].get("subject_his_id")
    stc = mne.SourceEstimate(
        X, vertices=[s["vertno"].copy() for s in src], tmin=float(tmin),
        tstep=1.0 / config.sfreq, subject=subject,
    )
    noise_cov = mne.Covariance(
        noise_var, ch_names, bads=[], projs=deepcopy(evoked.info["projs"]),
        nfree=Y.shape[1],
    )
    rms = ", ".join(
        f"{kind} {np.sqrt(np.mean(Y[types == kind] ** 2)) * _UNITS[kind][0]:.3g}"
        f" {_UNITS[kind][1]} (SNR {snr:.1f} dB)" for kind, snr in snr_db.items())
    logger.info(
        f"Simulated evoked: {int(out['n_active'][0])} sources, {noise} noise, "
        f"sensor RMS {rms}."
    )
    if return_snr:
        return evoked, stc, noise_cov, snr_db
    return evoked, stc, noise_cov
