"""On-the-fly simulation of focal, band-limited EEG source activity.

This module implements the synthetic benchmark of the paper (appendix B.1,
Table 1; see also ``MATH.md``, section "Simulation"): every sample contains a
random number of focal sources with a Gaussian spatial footprint over the
Euclidean distances between source positions; each source has a white
Gaussian time course band-pass filtered into one of five canonical EEG bands;
the sensor data are ``Y = L X + E`` with diagonal, heteroscedastic Gaussian
noise whose variance is set, sensor by sensor, by an SNR drawn independently
for every sensor.

Beyond the paper's benchmark (all off by default, so that the default draws
are unchanged), :class:`SimulationConfig` widens the data towards real
recordings: a global SNR with heterogeneous sensor noise, spatially
coloured "brain noise", noise variances handed to the solver that are
mis-scaled or ad hoc, geodesic and graph-diffusion footprints on the
cortical mesh, ERP-like and burst time courses, and a random epoch length.

Everything is drawn with PyTorch, batched over samples, on any device, from a
seeded :class:`torch.Generator`, so that training can draw fresh samples on the
GPU at every step and evaluation sets can be regenerated from a seed.
"""

# License: BSD-3-Clause

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from scipy import sparse
from scipy.sparse.csgraph import dijkstra

from ._utils import _check_option, _validate_type, logger, verbose, warn
from .multiscale import diffusion_operator
from .solver import NullSpace

__all__ = [
    "DEFAULT_BANDS",
    "FOOTPRINT_KINDS",
    "SNR_MODES",
    "WAVEFORM_KINDS",
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

#: Spatial footprint kinds (:attr:`SimulationConfig.footprint`).
FOOTPRINT_KINDS = ("gaussian", "geodesic", "diffusion")
#: Time-course kinds (:attr:`SimulationConfig.waveform`).
WAVEFORM_KINDS = ("band", "erp", "burst")
#: Definitions of the SNR (:attr:`SimulationConfig.snr_mode`).
SNR_MODES = ("channel", "global")

# fixed shapes of the "erp" and "burst" time courses (seconds)
_ERP_MAX_DEFLECTIONS = 3
_ERP_WIDTH_S = (0.02, 0.08)
_BURST_STD_S = (0.05, 0.2)
# entropy tag of the epoch-length generator (see EEGSimulator._draw_n_times)
_N_TIMES_TAG = 0x6E74696D


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


def _as_kinds(value, name, allowed):
    """Return ``value`` (a name or a sequence of names) as a tuple of kinds."""
    if isinstance(value, str):
        value = (value,)
    _validate_type(value, (tuple, list), name, "str or tuple of str")
    kinds = tuple(value)
    if len(kinds) == 0:
        raise ValueError(
            f"{name} must name at least one kind among {list(allowed)}, got ()."
        )
    for kind in kinds:
        _validate_type(kind, str, f"{name} entries")
        _check_option(name, kind, allowed)
    if len(set(kinds)) != len(kinds):
        raise ValueError(
            f"{name} must list each kind once (they are drawn with equal "
            f"probability), got {kinds}."
        )
    return kinds


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
    n_times : int | tuple of int
        Number of time samples ``T``. Default ``100``. A pair ``(low, high)``
        draws, at every call of :meth:`EEGSimulator.sample`, one ``T`` for the
        whole batch (samples of a batch share ``T``) uniformly from the
        integers ``low, ..., high``; equal ends mean a fixed ``T`` (stored as
        an int). ``T`` is drawn from a separate CPU generator seeded from the
        state of the sampling generator (which it does not advance), so the
        same seed gives the same ``T`` and the draws that do not depend on
        ``T`` (numbers of sources, centres, bands, spreads, amplitudes) are
        those of a fixed ``T`` with the same seed. Code that needs an int
        ``T`` should read the returned arrays' last axis (or
        :attr:`n_times_range`).
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
    snr_mode : "channel" | "global"
        Definition of ``snr_db``. ``"channel"`` (default, the paper's): one
        SNR per sensor, as described under ``snr_db``. ``"global"``: one SNR
        per sample, drawn uniformly from ``snr_db``, defined as the total
        noiseless signal power over all sensors divided by the total noise
        power, ``SNR = 10 log10(sum_m mean_t (L X)_m(t)**2 / sum_m
        lambda_m)`` (before the average reference, on the expected noise
        variances, so it holds exactly); the sensor noise variances are
        then ``log lambda_m = c + h z_m`` with ``z_m`` standard normal per
        sensor, ``h`` drawn from ``noise_heterogeneity`` and ``c`` set by the
        SNR. Real recordings have a few noisy channels whatever the signal,
        which the per-sensor SNR (noise proportional to the signal of each
        sensor) cannot produce. ``sample(...)["snr_db"]`` then repeats the
        sample's SNR over the sensors.
    noise_heterogeneity : float | tuple of float
        Range of ``h``, the standard deviation across sensors of the natural
        logarithm of the noise variances, drawn uniformly per sample
        (``snr_mode="global"`` only; the per-sensor SNRs of ``"channel"``
        already make the noise heteroscedastic). ``0`` gives equal noise
        variances, ``1`` strongly unequal ones (a factor ``e**2 ~ 7.4``
        between sensors two standard deviations apart). Default
        ``(0., 0.)``.
    noise_color : float | tuple of float
        Range of the fraction ``f`` (0 to 1) of the total noise power that
        is spatially coloured "brain noise", drawn uniformly per sample.
        The coloured part is the field ``L g`` of i.i.d. white Gaussian time
        courses ``g`` on all sources (drawn as ``(L L^T)^{1/2} g'`` with
        ``g'`` white on the sensors, which has the same distribution,
        covariance ``L L^T``, at ``M / N`` of the cost), scaled so that its
        expected total power (over sensors) is ``f`` times the total noise
        power set by the SNR; the white part keeps its sensor profile and is
        scaled to the rest, ``(1 - f) lambda_m``. The true noise covariance
        is then ``diag((1 - f) lambda) + a**2 L L^T`` with ``a**2 = f
        sum_m lambda_m / ||L||_F**2``: **not** diagonal, as for real EEG.
        Its total power, and hence the global SNR, is that of the white
        noise it replaces; in ``"channel"`` mode the drawn per-sensor SNRs
        describe the noise before it is partly coloured.
        ``sample(...)["noise_var"]`` stays the diagonal of the noise
        covariance (white plus coloured, expected values). Default
        ``(0., 0.)``.
    noise_cov_scale : float | tuple of float
        Range of the factor ``s`` between the noise variances handed to the
        solver and the true ones, ``noise_var_given = s * noise_var``
        (``sample(...)["noise_var_given"]``), drawn **log-uniformly** per
        sample (e.g. ``(0.3, 3.)``: a noise covariance mis-estimated by up
        to a factor ~3 either way). Default ``(1., 1.)`` (exact).
    adhoc_cov_prob : float
        Probability, per sample, that the noise variances handed to the
        solver are "ad hoc" (as ``mne.make_ad_hoc_cov``): the same value for
        every sensor, the mean of ``noise_var`` over sensors (times the
        factor ``s`` above). Default ``0.``.
    footprint : str | tuple of str
        Spatial footprint kinds, one drawn uniformly per source among those
        listed (each at most once): ``"gaussian"`` (the paper's: Gaussian of
        the Euclidean distance, ``sigma`` from ``spread``), ``"geodesic"``
        (Gaussian of the geodesic distance along the cortical mesh, ``sigma``
        from ``spread``; distances are shortest paths on the mesh edges
        weighted by their Euclidean lengths, an upper bound of the true
        geodesic distance that follows the folds) and ``"diffusion"`` (graph
        diffusion of a delta at the centre: column ``c`` of ``G**k``, with
        ``G`` the operator of
        :func:`~mne_unfolded_sbl.core.multiscale.diffusion_operator` and
        ``k`` drawn from ``diffusion_order``, scaled to peak 1; ``spread`` is
        drawn but unused). Gaussian and geodesic footprints are truncated at
        ``footprint_threshold``; diffusion footprints have the finite
        support of ``k`` mesh steps. ``"geodesic"`` and ``"diffusion"`` need
        the ``adjacency`` of :class:`EEGSimulator`. Default
        ``("gaussian",)``.
    diffusion_order : int | tuple of int
        Inclusive range of the number of diffusion steps ``k`` of
        ``"diffusion"`` footprints, drawn uniformly per source from the
        integers ``low, ..., high`` (``0`` is a single dipole; a step moves
        about one mesh edge). Default ``(0, 3)``.
    waveform : str | tuple of str
        Time-course kinds, one drawn uniformly per source among those listed
        (each at most once): ``"band"`` (the paper's band-limited Gaussian
        process, see Notes), ``"erp"`` (a sum of 1-3 Gaussian deflections
        ``+-exp(-(t - t_j)**2 / (2 w_j**2))`` with random signs, latencies
        ``t_j`` uniform within the epoch and widths (standard deviations)
        ``w_j`` uniform in 20-80 ms) and ``"burst"`` (a sinusoid at a
        frequency drawn uniformly within the source's band, with random
        phase, under a Gaussian window of standard deviation uniform in
        50-200 ms centred uniformly within the epoch). Every time course is
        then made zero-mean and unit mean square over the epoch, so
        ``amplitude`` keeps its meaning. ``"erp"`` sources still draw a band
        (``sample(...)["bands"]``), which they do not use. Default
        ``("band",)``.

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

    **Reproducibility.** With the fields from ``snr_mode`` on at their
    defaults (and an int ``n_times``), the draws are exactly those of the
    original simulator. The options draw their random quantities only when
    they are active, after all the original draws, in a fixed order
    (footprint kinds, diffusion orders, waveform kinds, ERP and burst
    parameters, noise heterogeneity, coloured noise, covariance scale, ad
    hoc choice); ``snr_mode="global"`` draws one SNR per sample in place of
    one per sensor, and a range of ``n_times`` does not draw from the
    sampling generator.
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
    snr_mode: str = "channel"
    noise_heterogeneity: tuple = (0.0, 0.0)
    noise_color: tuple = (0.0, 0.0)
    noise_cov_scale: tuple = (1.0, 1.0)
    adhoc_cov_prob: float = 0.0
    footprint: tuple = ("gaussian",)
    diffusion_order: tuple = (0, 3)
    waveform: tuple = ("band",)

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
        if isinstance(self.n_times, (list, tuple, np.ndarray)):
            lo, hi = _as_range(self.n_times, "n_times", "int")
            if lo < 2:
                raise ValueError(f"n_times must be >= 2, got ({lo}, {hi}).")
            self.n_times = lo if lo == hi else (lo, hi)
        else:
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
        self._check_wide_fields()

    def _check_wide_fields(self):
        _validate_type(self.snr_mode, str, "snr_mode")
        _check_option("snr_mode", self.snr_mode, SNR_MODES)
        self.noise_heterogeneity = _as_range(
            self.noise_heterogeneity, "noise_heterogeneity", "float")
        if self.noise_heterogeneity[0] < 0:
            raise ValueError(
                "noise_heterogeneity (std of the log noise variances) must be "
                f">= 0, got {self.noise_heterogeneity}."
            )
        if self.snr_mode == "channel" and self.noise_heterogeneity[1] > 0:
            raise ValueError(
                "noise_heterogeneity applies with snr_mode='global' only (the "
                "per-sensor SNRs of 'channel' already set unequal noise "
                "variances); set snr_mode='global', or noise_heterogeneity=0."
            )
        self.noise_color = _as_range(self.noise_color, "noise_color", "float")
        if self.noise_color[0] < 0 or self.noise_color[1] > 1:
            raise ValueError(
                "noise_color is a fraction of the noise power and must lie in "
                f"[0, 1], got {self.noise_color}."
            )
        self.noise_cov_scale = _as_range(
            self.noise_cov_scale, "noise_cov_scale", "float")
        if self.noise_cov_scale[0] <= 0:
            raise ValueError(
                "noise_cov_scale is a factor drawn log-uniformly and must be "
                f"> 0, got {self.noise_cov_scale}; use 1. for exact variances."
            )
        _validate_type(self.adhoc_cov_prob, "numeric", "adhoc_cov_prob")
        self.adhoc_cov_prob = float(self.adhoc_cov_prob)
        if not 0 <= self.adhoc_cov_prob <= 1:
            raise ValueError(
                "adhoc_cov_prob is a probability and must lie in [0, 1], got "
                f"{self.adhoc_cov_prob}."
            )
        self.footprint = _as_kinds(self.footprint, "footprint", FOOTPRINT_KINDS)
        self.diffusion_order = _as_range(
            self.diffusion_order, "diffusion_order", "int")
        if self.diffusion_order[0] < 0:
            raise ValueError(
                "diffusion_order (number of diffusion steps) must be >= 0, got "
                f"{self.diffusion_order}."
            )
        self.waveform = _as_kinds(self.waveform, "waveform", WAVEFORM_KINDS)

    @property
    def n_times_range(self):
        """The ``(low, high)`` range of ``n_times`` (equal ends if fixed)."""
        if isinstance(self.n_times, tuple):
            return self.n_times
        return (self.n_times, self.n_times)

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
    adjacency : scipy.sparse matrix, shape (n_sources, n_sources) | None
        Adjacency of the source-space mesh (e.g. from
        ``mne.spatial_src_adjacency``). Only its pattern is used
        (symmetrised, diagonal ignored; weights are not read): the edge
        lengths of the geodesic distances are the Euclidean distances
        between the ``pos`` of their ends. Needed by the ``"geodesic"`` and
        ``"diffusion"`` footprints of ``config.footprint``; ``None``
        (default) otherwise.

    Attributes
    ----------
    L : torch.Tensor, shape (n_sensors, n_sources)
        The lead field on ``device`` in ``dtype``.
    pos : torch.Tensor, shape (n_sources, 3)
        The source positions on ``device`` in ``dtype``.
    band_names : list of str
        Band names; ``sample(...)["bands"]`` indexes this list.
    band_masks : torch.Tensor, shape (n_bands, n_times // 2 + 1) | None
        The brick-wall frequency masks applied to the rFFT of white noise
        (``None`` when ``config.n_times`` is a range: the masks are then
        built, and cached, for each drawn ``T``).
    freqs : torch.Tensor, shape (n_times // 2 + 1,) | None
        Frequencies (Hz) of the rFFT bins (``None`` when ``config.n_times``
        is a range).
    adjacency : scipy.sparse.csr_matrix | None
        The symmetrised 0/1 mesh adjacency (no diagonal), or ``None``.

    Notes
    -----
    Footprints are computed from exact coordinate differences for the drawn
    centres only (``B x N`` distances per source slot), so no ``N x N``
    distance matrix is stored and any source-space size works. Geodesic
    footprints run Dijkstra's algorithm (SciPy, on the CPU) from the drawn
    centres only, stopped at the distance where the footprint falls below
    ``config.footprint_threshold``; diffusion footprints apply the sparse
    diffusion operator ``k`` times to the drawn centres' deltas on
    ``device``. The same seed gives the same batch on the same device and
    dtype; streams differ between CPU and CUDA generators.
    """

    def __init__(self, L, pos, config=None, *, device="cpu", dtype=torch.float32,
                 seed=None, adjacency=None):
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
        self._mask_cache = dict()
        lo, hi = self.config.n_times_range
        if lo == hi:
            self.freqs, self.band_masks = self._make_band_masks(lo)
            self._mask_cache[lo] = (self.freqs, self.band_masks)
        else:
            # the coarsest resolution of the range: warn here, once, about
            # bands without a DFT bin (the other lengths fall back silently)
            self._mask_cache[lo] = self._make_band_masks(
                lo, note=" (the shortest n_times of the range)")
            self.freqs = self.band_masks = None
        if isinstance(pos, torch.Tensor):
            self._pos64 = pos.detach().cpu().to(torch.float64).numpy()
        else:
            self._pos64 = np.asarray(pos, dtype=np.float64)
        self.adjacency = self._check_adjacency(adjacency)
        need = [k for k in self.config.footprint if k in ("geodesic", "diffusion")]
        if need and self.adjacency is None:
            raise ValueError(
                f"config.footprint contains {need}, which need the source-space "
                "mesh: pass adjacency=... (a scipy.sparse (n_sources, n_sources) "
                "adjacency, e.g. mne.spatial_src_adjacency(src)) to EEGSimulator, "
                "or use footprint=('gaussian',)."
            )
        self._edge_graph = None  # Euclidean edge lengths (scipy, CPU)
        self._diffusion = None  # diffusion operator (torch sparse, device)
        self._colour = None  # (L L^T)^{1/2}, diag(L L^T), ||L||_F^2
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

    def _check_adjacency(self, adjacency):
        if adjacency is None:
            return None
        N = self.n_sources
        if sparse.issparse(adjacency):
            A = sparse.csr_matrix(adjacency)
        else:
            if isinstance(adjacency, torch.Tensor):
                adjacency = adjacency.detach().cpu().numpy()
            arr = np.asarray(adjacency)
            if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
                raise TypeError(
                    "adjacency must be a scipy.sparse (n_sources, n_sources) "
                    f"matrix, got {type(adjacency).__name__} of shape "
                    f"{arr.shape} and dtype {arr.dtype}."
                )
            A = sparse.csr_matrix(arr)
        if A.shape != (N, N):
            raise ValueError(
                f"adjacency must have shape (n_sources, n_sources) = ({N}, {N}) "
                f"(the mesh of the sources in L's columns), got {A.shape}."
            )
        if not np.all(np.isfinite(A.data)):
            raise ValueError("adjacency contains non-finite values.")
        A = (A != 0).astype(np.float64)
        A = ((A + A.T) != 0).astype(np.float64).tocsr()
        A = (A - sparse.diags(A.diagonal())).tocsr()
        A.eliminate_zeros()
        return A

    def _band_masks_for(self, n_times):
        """``(freqs, masks)`` for ``n_times`` samples (cached per length)."""
        if n_times not in self._mask_cache:
            self._mask_cache[n_times] = self._make_band_masks(
                n_times, warn_empty=False)
        return self._mask_cache[n_times]

    def _make_band_masks(self, n_times, warn_empty=True, note=""):
        c = self.config
        n_freqs = n_times // 2 + 1
        freqs = torch.arange(n_freqs, dtype=torch.float64) * (c.sfreq / n_times)
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
                msg = (
                    f"Band {name!r} ({lo}-{hi} Hz) contains no DFT bin at "
                    f"n_times={n_times}{note}, sfreq={c.sfreq} (resolution "
                    f"{c.sfreq / n_times:g} Hz); using the bin at "
                    f"{float(freqs[keep][0]):g} Hz instead."
                )
                if warn_empty:
                    warn(msg)
                else:
                    logger.debug(msg)
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

    def _draw_n_times(self, gen):
        """One ``T`` from ``config.n_times = (low, high)``, without touching
        ``gen``: from a CPU generator seeded with a hash of ``gen``'s state."""
        state = gen.get_state().cpu().numpy().tobytes()
        digest = hashlib.blake2b(
            _N_TIMES_TAG.to_bytes(4, "little") + state, digest_size=8
        ).digest()
        t_gen = torch.Generator().manual_seed(
            int.from_bytes(digest, "little") & (2**63 - 1))
        lo, hi = self.config.n_times
        return int(torch.randint(lo, hi + 1, (1,), generator=t_gen))

    def _edge_lengths(self):
        if self._edge_graph is None:
            A = self.adjacency.tocoo()
            d = np.linalg.norm(self._pos64[A.row] - self._pos64[A.col], axis=1)
            # coincident positions: keep the edge (an explicit 0 is no edge)
            d = np.maximum(d, 1e-12)
            self._edge_graph = sparse.csr_matrix(
                (d, (A.row, A.col)), shape=A.shape)
        return self._edge_graph

    def _diffusion_matrix(self):
        if self._diffusion is None:
            G = diffusion_operator(self.adjacency).tocoo()
            idx = torch.as_tensor(np.vstack([G.row, G.col]).astype(np.int64))
            val = torch.as_tensor(G.data, dtype=torch.float64)
            self._diffusion = torch.sparse_coo_tensor(
                idx, val, G.shape, check_invariants=False
            ).coalesce().to(device=self.device, dtype=self.dtype)
        return self._diffusion

    def _colour_factors(self):
        if self._colour is None:
            L64 = self.L.to(torch.float64)
            evals, evecs = torch.linalg.eigh(L64 @ L64.T)
            root = (evecs * evals.clamp_min(0).sqrt()) @ evecs.T
            diag = L64.pow(2).sum(1)
            fro2 = diag.sum().clamp_min(torch.finfo(torch.float64).tiny)
            self._colour = (root.to(self.dtype), diag.to(self.dtype),
                            fro2.to(self.dtype))
        return self._colour

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

    def geodesic_footprints(self, centers, spread):
        """Gaussian footprints of the geodesic distance along the mesh.

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
            ``w[..., n] = exp(-g(n, c)**2 / (2 sigma**2))`` with ``g`` the
            shortest-path distance on the mesh edges (Euclidean edge
            lengths; ``inf``, hence weight 0, between disconnected parts),
            set to 0 below ``config.footprint_threshold`` (peak weight 1).
        """
        if self.adjacency is None:
            raise ValueError(
                "Geodesic footprints need the source-space mesh: pass "
                "adjacency=... to EEGSimulator."
            )
        N, dev, dt = self.n_sources, self.device, self.dtype
        shape = centers.shape
        c = centers.reshape(-1)
        s = spread.reshape(-1).to(dt)
        out = torch.zeros((c.numel(), N), device=dev, dtype=dt)
        idx = (c >= 0).nonzero().squeeze(1)
        thr = self.config.footprint_threshold
        # Dijkstra stops where the footprint falls below the threshold
        cut = math.sqrt(2.0 * math.log(1.0 / thr)) if thr > 0 else math.inf
        two_var = (2.0 * s * s).clamp_min(torch.finfo(dt).tiny)
        graph = self._edge_lengths()
        c_np = c[idx].cpu().numpy()
        s_np = s[idx].to(torch.float64).cpu().numpy()
        chunk = max(1, (1 << 22) // N)
        for i in range(0, idx.numel(), chunk):
            cc, ss = c_np[i:i + chunk], s_np[i:i + chunk]
            uniq, inv = np.unique(cc, return_inverse=True)
            limit = float(ss.max()) * cut * (1.0 + 1e-9) if thr > 0 else np.inf
            dist = dijkstra(graph, directed=True, indices=uniq, limit=limit)
            d = torch.as_tensor(dist[inv.ravel()], device=dev).to(dt)
            rows = idx[i:i + chunk]
            out[rows] = torch.exp(-d * d / two_var[rows][:, None])
        out = torch.where(out < thr, torch.zeros_like(out), out)
        return out.reshape(*shape, N)

    def diffusion_footprints(self, centers, order):
        """Graph-diffusion footprints: column ``c`` of ``G**k``, peak 1.

        Parameters
        ----------
        centers : torch.Tensor of int, shape (..., )
            Source indices of the centres (negative entries give all-zero
            footprints, used for padding).
        order : torch.Tensor of int, shape like ``centers``
            Numbers of diffusion steps ``k >= 0``.

        Returns
        -------
        w : torch.Tensor, shape ``(*centers.shape, n_sources)``
            ``w[..., :] = G**k e_c / max(G**k e_c)`` with ``G`` the operator
            of :func:`~mne_unfolded_sbl.core.multiscale.diffusion_operator`
            (symmetric, so columns and rows agree).
        """
        if self.adjacency is None:
            raise ValueError(
                "Diffusion footprints need the source-space mesh: pass "
                "adjacency=... to EEGSimulator."
            )
        N, dev, dt = self.n_sources, self.device, self.dtype
        shape = centers.shape
        c = centers.reshape(-1)
        k = order.reshape(-1).to(device=dev, dtype=torch.long)
        out = torch.zeros((c.numel(), N), device=dev, dtype=dt)
        idx = (c >= 0).nonzero().squeeze(1)
        if idx.numel() and int(k[idx].min()) < 0:
            raise ValueError("diffusion orders must be >= 0.")
        G = self._diffusion_matrix()
        chunk = max(1, (1 << 22) // N)
        for i in range(0, idx.numel(), chunk):
            rows = idx[i:i + chunk]
            kk = k[rows]
            V = torch.zeros((N, rows.numel()), device=dev, dtype=dt)
            V[c[rows], torch.arange(rows.numel(), device=dev)] = 1.0
            res = V
            for step in range(1, int(kk.max()) + 1):
                V = torch.sparse.mm(G, V)
                res = torch.where((kk >= step)[None, :], V, res)
            w = res.T
            out[rows] = w / w.amax(1, keepdim=True)
        return out.reshape(*shape, N)

    def _mixed_footprints(self, centers, spread, kind, order):
        """Footprints of slots of several kinds (``kind`` indexes
        ``config.footprint``; -1 for padding)."""
        B, K = centers.shape
        W = torch.zeros((B, K, self.n_sources), device=self.device,
                        dtype=self.dtype)
        for ki, name in enumerate(self.config.footprint):
            sel = kind == ki
            if not bool(sel.any()):
                continue
            if name == "gaussian":
                W[sel] = self.footprints(centers[sel], spread[sel])
            elif name == "geodesic":
                W[sel] = self.geodesic_footprints(centers[sel], spread[sel])
            else:
                W[sel] = self.diffusion_footprints(centers[sel], order[sel])
        return W

    def _draw_options(self, B, K, M, T, bands, gen):
        """Random quantities of the widening options, each drawn only when its
        option is active, in this fixed order, after the original draws."""
        c = self.config
        dev, dt = self.device, self.dtype
        d = dict()
        # 1. footprint kinds, 2. diffusion orders
        nf = len(c.footprint)
        d["footprint_kind"] = (
            torch.randint(0, nf, (B, K), generator=gen, device=dev) if nf > 1
            else torch.zeros((B, K), dtype=torch.long, device=dev))
        lo, hi = c.diffusion_order
        d["diffusion_order"] = (
            torch.randint(lo, hi + 1, (B, K), generator=gen, device=dev)
            if "diffusion" in c.footprint and lo < hi
            else torch.full((B, K), lo, dtype=torch.long, device=dev))
        # 3. waveform kinds, 4. ERP deflections, 5. bursts
        nw = len(c.waveform)
        d["waveform_kind"] = (
            torch.randint(0, nw, (B, K), generator=gen, device=dev) if nw > 1
            else torch.zeros((B, K), dtype=torch.long, device=dev))
        duration = T / c.sfreq
        J = _ERP_MAX_DEFLECTIONS
        if "erp" in c.waveform:
            d["erp_n"] = torch.randint(1, J + 1, (B, K), generator=gen, device=dev)
            d["erp_latency"] = _uniform(0.0, duration, (B, K, J), gen, dev, dt)
            d["erp_width"] = _uniform(*_ERP_WIDTH_S, (B, K, J), gen, dev, dt)
            d["erp_sign"] = (
                torch.randint(0, 2, (B, K, J), generator=gen, device=dev) * 2 - 1
            ).to(dt)
        if "burst" in c.waveform:
            band_lo = torch.tensor([b[0] for b in c.bands.values()], device=dev,
                                   dtype=dt)
            band_hi = torch.tensor([b[1] for b in c.bands.values()], device=dev,
                                   dtype=dt)
            u = torch.rand((B, K), generator=gen, device=dev, dtype=dt)
            d["burst_freq"] = band_lo[bands] + (band_hi - band_lo)[bands] * u
            d["burst_center"] = _uniform(0.0, duration, (B, K), gen, dev, dt)
            d["burst_std"] = _uniform(*_BURST_STD_S, (B, K), gen, dev, dt)
            d["burst_phase"] = _uniform(0.0, 2 * math.pi, (B, K), gen, dev, dt)
        # 6. noise heterogeneity (global SNR only)
        lo, hi = c.noise_heterogeneity
        d["noise_heterogeneity"] = (
            _uniform(lo, hi, (B,), gen, dev, dt) if lo < hi
            else torch.full((B,), lo, device=dev, dtype=dt))
        if hi > 0:
            d["log_noise_z"] = torch.randn((B, M), generator=gen, device=dev,
                                           dtype=dt)
        # 7. coloured noise
        lo, hi = c.noise_color
        d["noise_color"] = (
            _uniform(lo, hi, (B,), gen, dev, dt) if lo < hi
            else torch.full((B,), lo, device=dev, dtype=dt))
        if hi > 0:
            d["colour_white"] = torch.randn((B, M, T), generator=gen, device=dev,
                                            dtype=dt)
        # 8. scale of the noise variances given to the solver (log-uniform)
        lo, hi = c.noise_cov_scale
        d["noise_cov_scale"] = (
            torch.exp(_uniform(math.log(lo), math.log(hi), (B,), gen, dev, dt))
            if lo < hi else torch.full((B,), lo, device=dev, dtype=dt))
        # 9. ad hoc noise covariances
        p = c.adhoc_cov_prob
        if 0 < p < 1:
            d["adhoc_cov"] = torch.rand((B,), generator=gen, device=dev,
                                        dtype=dt) < p
        else:
            d["adhoc_cov"] = torch.full((B,), p == 1, device=dev, dtype=torch.bool)
        return d

    def _other_waveforms(self, wave, opts, T):
        """Replace the band-limited courses of "erp" / "burst" slots."""
        c = self.config
        dev, dt = self.device, self.dtype
        t = torch.arange(T, device=dev, dtype=dt) / c.sfreq
        kind = opts["waveform_kind"]
        tiny = torch.finfo(dt).tiny

        def unit(x):
            x = x - x.mean(-1, keepdim=True)
            return x / x.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(tiny)

        for ki, name in enumerate(c.waveform):
            if name == "band":
                continue
            if name == "erp":
                lat, width = opts["erp_latency"], opts["erp_width"]
                on = (torch.arange(_ERP_MAX_DEFLECTIONS, device=dev)
                      < opts["erp_n"][..., None]).to(dt)
                g = torch.exp(-(t - lat[..., None]) ** 2
                              / (2.0 * width[..., None] ** 2))
                new = ((opts["erp_sign"] * on)[..., None] * g).sum(-2)
            else:
                f, t0 = opts["burst_freq"][..., None], opts["burst_center"][..., None]
                sd, ph = opts["burst_std"][..., None], opts["burst_phase"][..., None]
                new = (torch.sin(2 * math.pi * f * t + ph)
                       * torch.exp(-(t - t0) ** 2 / (2.0 * sd**2)))
            wave = torch.where((kind == ki)[..., None], unit(new), wave)
        return wave

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
            With ``K = config.n_sources[1]`` source slots (padded) and ``T``
            the number of time samples (drawn once per batch when
            ``config.n_times`` is a range):

            ``"Y"`` : (B, M, T)
                Sensor data ``L X + E``, average-referenced when
                ``config.reference == "average"``.
            ``"X"`` : (B, N, T)
                True source time courses.
            ``"noise_var"`` : (B, M)
                True noise variances ``lambda_m`` (the noise ``E`` is drawn
                as ``sqrt(lambda_m)`` times standard normal); with
                ``config.noise_color`` the diagonal of the (then
                non-diagonal) noise covariance.
            ``"noise_var_given"`` : (B, M)
                The noise variances to hand to a solver: ``noise_var`` times
                ``noise_cov_scale``, or, for ad hoc samples, the mean of
                ``noise_var`` over sensors times ``noise_cov_scale`` (equal
                to ``noise_var`` with the default configuration).
            ``"snr_db"`` : (B, M)
                Drawn per-sensor SNRs in dB (``config.snr_mode ==
                "global"``: the sample's SNR, repeated over sensors).
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
                Unit-mean-square, zero-mean time courses (0 padded), so
                ``X = sum_k amplitude_k footprint_k waveform_k``.
            ``"footprint_kind"`` : (B, K) int64
                Index into ``config.footprint``, -1 padded.
            ``"diffusion_order"`` : (B, K) int64
                Diffusion steps of ``"diffusion"`` footprints, -1 for other
                kinds and padding.
            ``"waveform_kind"`` : (B, K) int64
                Index into ``config.waveform``, -1 padded.
            ``"noise_heterogeneity"`` : (B,)
                Drawn ``h`` (std of the log noise variances; 0 in
                ``"channel"`` mode).
            ``"noise_color"`` : (B,)
                Drawn fraction of coloured noise power.
            ``"noise_cov_scale"`` : (B,)
                Drawn factor ``s`` of ``noise_var_given``.
            ``"adhoc_cov"`` : (B,) bool
                Whether ``noise_var_given`` is ad hoc (equal over sensors).
        """
        _validate_type(batch_size, "int-like", "batch_size")
        B = int(batch_size)
        if B < 1:
            raise ValueError(f"batch_size must be >= 1, got {B}.")
        gen = self._resolve_generator(generator, seed)
        c = self.config
        dev, dt = self.device, self.dtype
        if isinstance(c.n_times, tuple):
            T = self._draw_n_times(gen)  # does not advance gen
            band_masks = self._band_masks_for(T)[1]
        else:
            T = c.n_times
            band_masks = self.band_masks
        N, M = self.n_sources, self.n_sensors
        K = c.n_sources[1]
        global_snr = c.snr_mode == "global"

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
        spec = torch.fft.rfft(white, dim=-1) * band_masks[bands]
        wave = torch.fft.irfft(spec, n=T, dim=-1)
        wave = wave / wave.pow(2).mean(-1, keepdim=True).sqrt()

        # --- noise draws
        snr_db = _uniform(*c.snr_db, (B, 1) if global_snr else (B, M), gen, dev,
                          dt)
        noise = torch.randn((B, M, T), generator=gen, device=dev, dtype=dt)

        # --- draws of the widening options (none with the paper's settings)
        opts = self._draw_options(B, K, M, T, bands, gen)
        if c.waveform != ("band",):
            wave = self._other_waveforms(wave, opts, T)

        # --- assemble (padding: inactive slots get zero amplitude)
        act_f = active.to(dt)
        amplitude = amplitude * act_f
        wave = wave * act_f[..., None]
        centers = torch.where(active, centers, torch.full_like(centers, -1))
        bands = torch.where(active, bands, torch.full_like(bands, -1))
        spread = torch.where(active, spread, torch.full_like(spread, float("nan")))
        minus1 = torch.full_like(centers, -1)
        fkind = torch.where(active, opts["footprint_kind"], minus1)
        wkind = torch.where(active, opts["waveform_kind"], minus1)
        is_diff = fkind == (c.footprint.index("diffusion")
                            if "diffusion" in c.footprint else -2)
        order = torch.where(is_diff, opts["diffusion_order"], minus1)
        if c.footprint == ("gaussian",):
            W = self.footprints(centers, spread)  # (B, K, N), zero when padded
        else:
            W = self._mixed_footprints(centers, spread, fkind, order)
        X = torch.bmm(W.transpose(1, 2), amplitude[..., None] * wave)  # (B, N, T)

        LX = torch.matmul(self.L, X)  # (B, M, T)
        sig_pow = LX.pow(2).mean(-1)  # (B, M)
        tiny = torch.finfo(dt).tiny
        if global_snr:
            total = sig_pow.sum(-1, keepdim=True) / torch.pow(10.0, snr_db / 10.0)
            if "log_noise_z" in opts:
                # log lambda_m = c + h z_m, c such that sum_m lambda_m = total
                h = opts["noise_heterogeneity"][:, None]
                share = torch.softmax(h * opts["log_noise_z"], dim=-1)
            else:
                share = torch.full((B, M), 1.0 / M, device=dev, dtype=dt)
            noise_var = total * share
            snr_db = snr_db.expand(B, M).contiguous()
        else:
            noise_var = sig_pow / torch.pow(10.0, snr_db / 10.0)
        noise_var = noise_var.clamp_min(tiny)
        if "colour_white" in opts:
            root, diag, fro2 = self._colour_factors()
            f = opts["noise_color"][:, None]
            alpha2 = f * noise_var.sum(-1, keepdim=True) / fro2  # (B, 1)
            white_var = (1.0 - f) * noise_var
            Y = (LX + white_var.sqrt()[..., None] * noise
                 + alpha2.sqrt()[..., None] * torch.matmul(root, opts["colour_white"]))
            noise_var = (white_var + alpha2 * diag).clamp_min(tiny)
        else:
            Y = LX + noise_var.sqrt()[..., None] * noise
        if c.reference == "average":
            Y = Y - Y.mean(-2, keepdim=True)
        adhoc = opts["adhoc_cov"]
        scale = opts["noise_cov_scale"]
        given = torch.where(adhoc[:, None], noise_var.mean(-1, keepdim=True),
                            noise_var) * scale[:, None]
        logger.debug(
            f"Simulated {B} samples: {int(n_active.min())}-{int(n_active.max())} "
            f"active sources, SNR {float(snr_db.min()):.1f}-"
            f"{float(snr_db.max()):.1f} dB, T = {T}."
        )
        return dict(
            Y=Y,
            X=X,
            noise_var=noise_var,
            noise_var_given=given,
            snr_db=snr_db,
            n_active=n_active,
            active=active,
            centers=centers,
            bands=bands,
            spread=spread,
            amplitude=amplitude,
            waveforms=wave,
            footprint_kind=fkind,
            diffusion_order=order,
            waveform_kind=wkind,
            noise_heterogeneity=opts["noise_heterogeneity"],
            noise_color=opts["noise_color"],
            noise_cov_scale=scale,
            adhoc_cov=adhoc,
        )
