"""On-the-fly simulation of focal, band-limited EEG source activity.

This module implements the synthetic benchmark of the paper (appendix B.1,
Table 1; see also ``MATH.md``, section "Simulation"): every sample contains a
random number of focal sources with a Gaussian spatial footprint over the
Euclidean distances between source positions; each source has a white
Gaussian time course band-pass filtered into one of five canonical EEG bands;
the sensor data are ``Y = L X + E`` with diagonal, heteroscedastic Gaussian
noise whose variance is set, sensor by sensor, by an SNR drawn independently
for every sensor.

Everything is drawn with PyTorch, batched over samples, on any device, from a
seeded :class:`torch.Generator`, so that training can draw fresh samples on the
GPU at every step and evaluation sets can be regenerated from a seed.
"""

# License: BSD-3-Clause

from __future__ import annotations

import math
from copy import deepcopy
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from ._utils import _check_option, _validate_type, logger, verbose, warn
from .solver import NullSpace

__all__ = [
    "DEFAULT_BANDS",
    "SimulationConfig",
    "EEGSimulator",
    "derive_seed",
]

#: Canonical EEG bands (Hz) of the paper's Table 1, in the order used for the
#: band index returned by :meth:`EEGSimulator.sample`.
DEFAULT_BANDS = {
    "delta": (0.5, 4.0),
    "theta": (4.0, 8.0),
    "alpha": (8.0, 13.0),
    "mu": (8.0, 12.0),
    "beta": (12.0, 30.0),
}


def _as_range(value, name, kind):
    """Return ``value`` as a validated ``(low, high)`` tuple.

    A scalar means a fixed value ``(value, value)``.
    """
    types = ("int-like",) if kind == "int" else ("numeric",)
    if isinstance(value, (list, tuple, np.ndarray)):
        if len(value) != 2:
            raise ValueError(
                f"{name} must be a scalar or a (low, high) pair, got {len(value)} "
                "values."
            )
        lo, hi = value
    else:
        lo = hi = value
    for v in (lo, hi):
        _validate_type(v, types, name)
    cast = int if kind == "int" else float
    lo, hi = cast(lo), cast(hi)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name} must be finite, got ({lo}, {hi}).")
    if lo > hi:
        raise ValueError(f"{name} must satisfy low <= high, got ({lo}, {hi}).")
    return (lo, hi)


@dataclass
class SimulationConfig:
    """Ranges and constants of the synthetic EEG benchmark.

    Every ``(low, high)`` range is sampled **uniformly** and independently per
    sample (or per source / per sensor, as stated). Equal ends (or a scalar)
    give a fixed value, which is how sweeps over SNR, number of sources or
    spatial spread are run with the same simulator.

    Parameters
    ----------
    n_sources : int | tuple of int
        Inclusive range of the number of active focal sources per sample,
        drawn uniformly from the integers ``low, ..., high``. Default
        ``(5, 20)`` (the paper's training range as given by secondary
        summaries; the evaluation text implies "5-20 sources seen during
        training").
    spread : float | tuple of float
        Range of the standard deviation ``sigma`` (metres) of each source's
        Gaussian spatial footprint ``exp(-d**2 / (2 sigma**2))``, drawn
        uniformly per source. Default ``(0.001, 0.003)``, i.e. 1-3 mm: the
        paper calls extents <= 0.3 cm "spatially restricted". ``sigma = 0``
        gives a single active dipole.
    snr_db : float | tuple of float
        Range of the per-sensor signal-to-noise ratio in dB, drawn uniformly
        and independently for **every sensor** of every sample (heteroscedastic
        noise). Default ``(5., 30.)``. For sensor ``m`` the SNR is defined as
        ``SNR_m = 10 log10(mean_t (L X)_m(t)**2 / lambda_m)`` with
        ``lambda_m`` the noise variance of sensor ``m``; hence
        ``lambda_m = mean_t (L X)_m(t)**2 / 10**(SNR_m / 10)`` (the noiseless
        signal power of that sensor in that sample, in the reference of the
        lead field, divided by the drawn linear SNR).
    sfreq : float
        Sampling frequency in Hz. Default ``100.``.
    n_times : int
        Number of time samples ``T``. Default ``100``.
    bands : dict
        Frequency bands ``{name: (f_low, f_high)}`` in Hz. Each source draws
        one band uniformly from this dict (so with the defaults, where alpha
        8-13 Hz and mu 8-12 Hz overlap, the 8-12 Hz range is drawn more
        often, as in the paper). Default: :data:`DEFAULT_BANDS` (delta 0.5-4,
        theta 4-8, alpha 8-13, mu 8-12, beta 12-30 Hz).
    amplitude : float | tuple of float
        Range of the source amplitude, drawn uniformly per source. Each
        source time course is first normalised to zero mean and unit mean
        square (unit variance) over the ``T`` samples and then multiplied by
        this amplitude, so ``amplitude`` is the RMS of the source at its
        centre (before superposition with other footprints). Default
        ``(0.5, 1.)``: a factor two in amplitude between sources. Units are
        those of ``X`` (arbitrary for :class:`EEGSimulator`; see
        ``source_amplitude`` in :func:`simulate_evoked` for A·m).
    footprint_threshold : float
        Truncation of the spatial footprint: weights below
        ``footprint_threshold`` times the peak weight (which is 1, at the
        centre) are set to exactly 0, so every footprint has finite support.
        Default ``1e-3`` (the footprint is cut at ``d = 3.72 sigma``).
    reference : "average" | "none"
        ``"average"`` (default) average-references the simulated sensor data
        (noise included), as EEG with MNE's average-reference projector
        reaches the solver; the solver then needs the matching
        :class:`~mne_unfolded_sbl.core.solver.NullSpace`
        (:attr:`EEGSimulator.null_space`). ``"none"`` keeps ``L X + E``
        with noise in every sensor direction.

    Notes
    -----
    **Time courses.** For each source, ``T`` samples of white Gaussian noise
    are transformed with :func:`torch.fft.rfft`, multiplied by a brick-wall
    mask that keeps the DFT bins with ``f_low <= f <= f_high`` (the DC bin is
    always removed), transformed back with :func:`torch.fft.irfft` and
    normalised to unit mean square. The result is a (circular) band-limited
    Gaussian process whose DFT has **all** of its power inside the band and
    whose temporal mean is exactly zero. With ``T`` = 100 at 100 Hz the
    frequency resolution is 1 Hz (delta keeps the bins 1-4 Hz). If a band
    contains no DFT bin (very short ``T``), the non-DC bin nearest to the
    band centre is used instead and a warning is emitted.

    **Sources.** ``X = sum_k a_k w_k s_k^T`` with distinct centres drawn
    uniformly without replacement among the ``N`` sources, footprints
    ``w_k[n] = exp(-||p_n - p_{c_k}||**2 / (2 sigma_k**2))`` (truncated as
    above) and time courses ``s_k``.
    """

    n_sources: tuple = (5, 20)
    spread: tuple = (0.001, 0.003)
    snr_db: tuple = (5.0, 30.0)
    sfreq: float = 100.0
    n_times: int = 100
    bands: dict = field(default_factory=lambda: dict(DEFAULT_BANDS))
    amplitude: tuple = (0.5, 1.0)
    footprint_threshold: float = 1e-3
    reference: str = "average"

    def null_space(self, n_sensors, device=None):
        """The :class:`~mne_unfolded_sbl.core.solver.NullSpace` of data simulated
        with this configuration on ``n_sensors`` channels (``None`` when
        ``reference == "none"``)."""
        if self.reference == "none":
            return None
        return NullSpace.average_reference(n_sensors, device)

    def __post_init__(self):
        _check_option("reference", self.reference, ("average", "none"))
        self.n_sources = _as_range(self.n_sources, "n_sources", "int")
        if self.n_sources[0] < 1:
            raise ValueError(
                f"n_sources must be >= 1, got {self.n_sources}."
            )
        self.spread = _as_range(self.spread, "spread", "float")
        if self.spread[0] < 0:
            raise ValueError(f"spread must be >= 0 (metres), got {self.spread}.")
        self.snr_db = _as_range(self.snr_db, "snr_db", "float")
        self.amplitude = _as_range(self.amplitude, "amplitude", "float")
        if self.amplitude[0] <= 0:
            raise ValueError(f"amplitude must be > 0, got {self.amplitude}.")
        _validate_type(self.sfreq, "numeric", "sfreq")
        self.sfreq = float(self.sfreq)
        if not self.sfreq > 0:
            raise ValueError(f"sfreq must be > 0, got {self.sfreq}.")
        _validate_type(self.n_times, "int-like", "n_times")
        self.n_times = int(self.n_times)
        if self.n_times < 2:
            raise ValueError(f"n_times must be >= 2, got {self.n_times}.")
        _validate_type(self.footprint_threshold, "numeric", "footprint_threshold")
        self.footprint_threshold = float(self.footprint_threshold)
        if not 0 <= self.footprint_threshold < 1:
            raise ValueError(
                "footprint_threshold must be in [0, 1), got "
                f"{self.footprint_threshold}."
            )
        _validate_type(self.bands, dict, "bands")
        if len(self.bands) == 0:
            raise ValueError("bands must contain at least one band.")
        bands = dict()
        nyq = self.sfreq / 2.0
        for name, band in self.bands.items():
            _validate_type(name, str, "band name")
            lo, hi = _as_range(band, f"bands[{name!r}]", "float")
            if lo < 0 or hi > nyq or lo == hi:
                raise ValueError(
                    f"bands[{name!r}] must satisfy 0 <= f_low < f_high <= "
                    f"sfreq / 2 = {nyq}, got ({lo}, {hi})."
                )
            bands[name] = (lo, hi)
        self.bands = bands

    def replace(self, **kwargs):
        """Return a copy with some fields replaced (see :func:`dataclasses.replace`).

        Parameters
        ----------
        **kwargs : dict
            Fields to change, e.g. ``snr_db=10.`` for a fixed SNR.

        Returns
        -------
        config : SimulationConfig
            The new configuration.
        """
        return replace(self, **kwargs)


def derive_seed(*ints, bits=63):
    """A seed derived from a tuple of non-negative integers (SeedSequence).

    The one seed deriver of the package: training streams
    ``(seed, tag, rank, phase, step)`` and benchmark samples
    ``(seed, index)`` draw from it, so any sample can be regenerated alone.

    Parameters
    ----------
    *ints : int
        The entropy (non-negative integers).
    bits : 63 | 32
        Size of the seed. The benchmark keeps 32-bit seeds, so that the
        samples behind its published tables stay the same.

    Returns
    -------
    seed : int
    """
    _check_option("bits", bits, (32, 63))
    state = np.random.SeedSequence([int(i) for i in ints]).generate_state(
        2, np.uint32)
    if bits == 32:
        return int(state[0])
    return int((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1)


def _make_generator(seed, device):
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        _validate_type(seed, "int-like", "seed")
        gen.manual_seed(int(seed))
    return gen


def _uniform(lo, hi, shape, gen, device, dtype):
    u = torch.rand(shape, generator=gen, device=device, dtype=dtype)
    return lo + (hi - lo) * u


class EEGSimulator:
    """Batched, seeded simulator of focal band-limited EEG sources.

    Parameters
    ----------
    L : array-like, shape (n_sensors, n_sources)
        Fixed-orientation lead field (NumPy array or torch tensor; any units).
    pos : array-like, shape (n_sources, 3)
        Source positions in metres (used for the Gaussian footprints).
    config : SimulationConfig | None
        Simulation ranges. ``None`` uses the defaults.
    device : str | torch.device
        Device on which everything is drawn and returned. Default ``"cpu"``.
    dtype : torch.dtype
        Floating dtype, ``torch.float32`` (default) or ``torch.float64``.
    seed : int | None
        Seed of the simulator's own generator, used by :meth:`sample` when no
        generator or seed is passed to it. ``None`` seeds it randomly.

    Attributes
    ----------
    L : torch.Tensor, shape (n_sensors, n_sources)
        The lead field on ``device`` in ``dtype``.
    pos : torch.Tensor, shape (n_sources, 3)
        The source positions on ``device`` in ``dtype``.
    band_names : list of str
        Band names; ``sample(...)["bands"]`` indexes this list.
    band_masks : torch.Tensor, shape (n_bands, n_times // 2 + 1)
        The brick-wall frequency masks applied to the rFFT of white noise.
    freqs : torch.Tensor, shape (n_times // 2 + 1,)
        Frequencies (Hz) of the rFFT bins.

    Notes
    -----
    Footprints are computed from exact coordinate differences for the drawn
    centres only (``B x N`` distances per source slot), so no ``N x N``
    distance matrix is stored and any source-space size works. The same
    seed gives the same batch on the same device and dtype; streams differ
    between CPU and CUDA generators.
    """

    def __init__(self, L, pos, config=None, *, device="cpu", dtype=torch.float32,
                 seed=None):
        _validate_type(config, (SimulationConfig, None), "config")
        self.config = SimulationConfig() if config is None else config
        self.device = torch.device(device)
        _check_option("dtype", dtype, (torch.float32, torch.float64))
        self.dtype = dtype
        self.L = self._to_tensor(L, "L")
        self.pos = self._to_tensor(pos, "pos")
        if self.L.ndim != 2:
            raise ValueError(
                f"L must be 2D (n_sensors, n_sources), got {self.L.shape}."
            )
        if self.pos.ndim != 2 or self.pos.shape[1] != 3:
            raise ValueError(
                f"pos must have shape (n_sources, 3), got {self.pos.shape}."
            )
        if self.pos.shape[0] != self.L.shape[1]:
            raise ValueError(
                f"L has {self.L.shape[1]} sources (columns) but pos has "
                f"{self.pos.shape[0]} rows."
            )
        if self.config.n_sources[1] > self.n_sources:
            raise ValueError(
                f"config.n_sources upper bound ({self.config.n_sources[1]}) exceeds "
                f"the number of sources in the lead field ({self.n_sources})."
            )
        self.band_names = list(self.config.bands)
        self.freqs, self.band_masks = self._make_band_masks()
        self.generator = _make_generator(seed, self.device)

    @property
    def n_sensors(self):
        """Number of sensors ``M``."""
        return self.L.shape[0]

    @property
    def null_space(self):
        """The :class:`~mne_unfolded_sbl.core.solver.NullSpace` of the simulated
        data (``None`` when ``config.reference == "none"``)."""
        return self.config.null_space(self.n_sensors, self.device)

    @property
    def n_sources(self):
        """Number of sources ``N``."""
        return self.L.shape[1]

    def __repr__(self):
        c = self.config
        return (
            f"<EEGSimulator | {self.n_sensors} sensors, {self.n_sources} sources, "
            f"{c.n_times} samples at {c.sfreq:g} Hz, n_sources={c.n_sources}, "
            f"spread={c.spread} m, snr_db={c.snr_db}, {self.dtype}, {self.device}>"
        )

    # ------------------------------------------------------------------
    def _to_tensor(self, x, name):
        if isinstance(x, torch.Tensor):
            x = x.detach()
        else:
            x = np.asarray(x)
            if not np.issubdtype(x.dtype, np.number):
                raise TypeError(f"{name} must be numeric, got dtype {x.dtype}.")
            x = torch.as_tensor(np.asarray(x, dtype=np.float64))
        x = x.to(device=self.device, dtype=self.dtype)
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} contains non-finite values.")
        return x

    def _make_band_masks(self):
        c = self.config
        n_freqs = c.n_times // 2 + 1
        freqs = torch.arange(n_freqs, dtype=torch.float64) * (c.sfreq / c.n_times)
        masks = torch.zeros(len(c.bands), n_freqs, dtype=torch.float64)
        for bi, (name, (lo, hi)) in enumerate(c.bands.items()):
            tol = 1e-9 * c.sfreq
            keep = (freqs >= lo - tol) & (freqs <= hi + tol)
            keep[0] = False  # never keep DC: zero-mean time courses
            if not keep.any():
                centre = 0.5 * (lo + hi)
                dist = (freqs - centre).abs()
                dist[0] = np.inf
                keep[int(dist.argmin())] = True
                warn(
                    f"Band {name!r} ({lo}-{hi} Hz) contains no DFT bin at "
                    f"n_times={c.n_times}, sfreq={c.sfreq} (resolution "
                    f"{c.sfreq / c.n_times:g} Hz); using the bin at "
                    f"{float(freqs[keep][0]):g} Hz instead."
                )
            masks[bi] = keep.to(torch.float64)
        return (freqs.to(self.device, self.dtype), masks.to(self.device, self.dtype))

    def _resolve_generator(self, generator, seed):
        if generator is not None and seed is not None:
            raise ValueError("Pass at most one of generator and seed.")
        if seed is not None:
            return _make_generator(seed, self.device)
        if generator is None:
            return self.generator
        _validate_type(generator, torch.Generator, "generator")
        if torch.device(generator.device).type != self.device.type:
            raise ValueError(
                f"generator is on {generator.device} but the simulator draws on "
                f"{self.device}; create it with torch.Generator(device=...)."
            )
        return generator

    # ------------------------------------------------------------------
    def footprints(self, centers, spread):
        """Gaussian spatial footprints of given centres.

        Parameters
        ----------
        centers : torch.Tensor of int, shape (..., )
            Source indices of the centres (negative entries give all-zero
            footprints, used for padding).
        spread : torch.Tensor, shape like ``centers``
            Standard deviations ``sigma`` in metres.

        Returns
        -------
        w : torch.Tensor, shape ``(*centers.shape, n_sources)``
            ``w[..., n] = exp(-||pos[n] - pos[c]||**2 / (2 sigma**2))``, set to
            0 below ``config.footprint_threshold`` (peak weight 1).
        """
        shape = centers.shape
        c = centers.reshape(-1)
        s = spread.reshape(-1).to(self.dtype)
        valid = c >= 0
        pc = self.pos[c.clamp_min(0)]  # (P, 3)
        # exact squared distances from coordinate differences, in chunks of
        # rows so that the (chunk, N, 3) intermediate stays ~100 MB at most
        chunk = max(1, (1 << 23) // self.n_sources)
        d2 = [
            ((pc[i:i + chunk, None, :] - self.pos[None, :, :]) ** 2).sum(-1)
            for i in range(0, pc.shape[0], chunk)
        ]
        d2 = torch.cat(d2) if d2 else pc.new_zeros((0, self.n_sources))
        two_var = (2.0 * s * s).clamp_min(torch.finfo(self.dtype).tiny)
        w = torch.exp(-d2 / two_var[:, None])
        w = torch.where(w < self.config.footprint_threshold, torch.zeros_like(w), w)
        w = torch.where(valid[:, None], w, torch.zeros_like(w))  # padding (any s)
        return w.reshape(*shape, self.n_sources)

    @verbose
    def sample(self, batch_size, generator=None, *, seed=None, verbose=None):
        """Draw a batch of simulated samples.

        Parameters
        ----------
        batch_size : int
            Number of samples ``B``.
        generator : torch.Generator | None
            Generator on the simulator's device. ``None`` uses ``seed`` if
            given, else the simulator's own generator (whose state advances).
        seed : int | None
            Draw from a fresh generator seeded with ``seed``: the same seed
            gives the same batch (same device and dtype).
        %(verbose)s

        Returns
        -------
        sample : dict of torch.Tensor
            With ``K = config.n_sources[1]`` source slots (padded):

            ``"Y"`` : (B, M, T)
                Sensor data ``L X + E``, average-referenced when
                ``config.reference == "average"``.
            ``"X"`` : (B, N, T)
                True source time courses.
            ``"noise_var"`` : (B, M)
                True noise variances ``lambda_m`` (the noise ``E`` is drawn
                as ``sqrt(lambda_m)`` times standard normal).
            ``"snr_db"`` : (B, M)
                Drawn per-sensor SNRs in dB.
            ``"n_active"`` : (B,) int64
                Number of active focal sources.
            ``"active"`` : (B, K) bool
                ``active[b, k] = k < n_active[b]``.
            ``"centers"`` : (B, K) int64
                Centre source indices (distinct within a sample), -1 padded.
            ``"bands"`` : (B, K) int64
                Band index into :attr:`band_names`, -1 padded.
            ``"spread"`` : (B, K)
                Footprint standard deviations (m), NaN padded.
            ``"amplitude"`` : (B, K)
                Source amplitudes, 0 padded.
            ``"waveforms"`` : (B, K, T)
                Unit-mean-square band-limited time courses (0 padded), so
                ``X = sum_k amplitude_k footprint_k waveform_k``.
        """
        _validate_type(batch_size, "int-like", "batch_size")
        B = int(batch_size)
        if B < 1:
            raise ValueError(f"batch_size must be >= 1, got {B}.")
        gen = self._resolve_generator(generator, seed)
        c = self.config
        dev, dt = self.device, self.dtype
        N, M, T = self.n_sources, self.n_sensors, c.n_times
        K = c.n_sources[1]

        # --- discrete draws
        n_active = torch.randint(
            c.n_sources[0], c.n_sources[1] + 1, (B,), generator=gen, device=dev
        )
        active = torch.arange(K, device=dev)[None, :] < n_active[:, None]
        # distinct centres: first K of a uniformly random ranking of the sources
        ranks = torch.rand((B, N), generator=gen, device=dev, dtype=dt)
        centers = ranks.topk(K, dim=1).indices
        bands = torch.randint(
            0, len(self.band_names), (B, K), generator=gen, device=dev
        )
        spread = _uniform(*c.spread, (B, K), gen, dev, dt)
        amplitude = _uniform(*c.amplitude, (B, K), gen, dev, dt)

        # --- band-limited time courses (brick-wall mask in the rFFT domain)
        white = torch.randn((B, K, T), generator=gen, device=dev, dtype=dt)
        spec = torch.fft.rfft(white, dim=-1) * self.band_masks[bands]
        wave = torch.fft.irfft(spec, n=T, dim=-1)
        wave = wave / wave.pow(2).mean(-1, keepdim=True).sqrt()

        # --- noise draws
        snr_db = _uniform(*c.snr_db, (B, M), gen, dev, dt)
        noise = torch.randn((B, M, T), generator=gen, device=dev, dtype=dt)

        # --- assemble (padding: inactive slots get zero amplitude)
        act_f = active.to(dt)
        amplitude = amplitude * act_f
        wave = wave * act_f[..., None]
        centers = torch.where(active, centers, torch.full_like(centers, -1))
        bands = torch.where(active, bands, torch.full_like(bands, -1))
        spread = torch.where(active, spread, torch.full_like(spread, float("nan")))
        W = self.footprints(centers, spread)  # (B, K, N), zero for padded slots
        X = torch.bmm(W.transpose(1, 2), amplitude[..., None] * wave)  # (B, N, T)

        LX = torch.matmul(self.L, X)  # (B, M, T)
        sig_pow = LX.pow(2).mean(-1)  # (B, M)
        noise_var = sig_pow / torch.pow(10.0, snr_db / 10.0)
        noise_var = noise_var.clamp_min(torch.finfo(dt).tiny)
        Y = LX + noise_var.sqrt()[..., None] * noise
        if c.reference == "average":
            Y = Y - Y.mean(-2, keepdim=True)
        logger.debug(
            f"Simulated {B} samples: {int(n_active.min())}-{int(n_active.max())} "
            f"active sources, SNR {float(snr_db.min()):.1f}-"
            f"{float(snr_db.max()):.1f} dB."
        )
        return dict(
            Y=Y,
            X=X,
            noise_var=noise_var,
            snr_db=snr_db,
            n_active=n_active,
            active=active,
            centers=centers,
            bands=bands,
            spread=spread,
            amplitude=amplitude,
            waveforms=wave,
        )
