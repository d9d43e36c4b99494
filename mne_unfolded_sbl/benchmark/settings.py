"""Benchmark settings (paper Table 3 and source-model settings).

Every setting simulates data with a forward model whose tissue
conductivities are *perturbed* (brain, skull, scalp = 0.33, 0.0045, 0.27
S/m) while every solver uses the forward with the default conductivities
(0.3, 0.006, 0.3 S/m), so no method commits the inverse crime (paper B.2).
Both lead fields are average-referenced (the channel mean is subtracted
from every gain column), as for training, and the sensor noise is
diagonal.

Besides the paper's three settings (5-20 focal sources), four settings
probe the source models of :func:`~mne_unfolded_sbl.apply_unfolded_sbl`:

- ``extended-patches``: 2-4 extended patches, Gaussian footprints of
  standard deviation 10-20 mm (over Euclidean distance; on the ico3
  template, whose sources stand for 0.9 cm² of white-matter surface each,
  a patch has above half its peak a median 7 sources, 5.5 cm², at 10 mm
  and 38 sources, 34 cm², at 20 mm), per-channel SNR 1-3 dB;
- ``single-dipole``: one dipole (no footprint), SNR 3-5 dB;
- ``loose-forward``: 2-4 dipoles whose orientations are tilted off the
  cortical normal, uniformly within a cone of :data:`TILT_DEG` degrees
  (simulated with the free-orientation template forward; every method is
  scored on the dipole *vectors*, see
  :func:`~mne_unfolded_sbl.benchmark.runner.run_benchmark`);
- ``meg-eeg-ico3``: the Train Cap ico3 simulation recorded by the
  synthetic 306-channel MEG array
  (:func:`~mne_unfolded_sbl.datasets.make_meg_info`) and the 64 EEG
  electrodes together. The rows of the lead fields are scaled per
  channel type (magnetometers, gradiometers, EEG) to a common RMS
  (:attr:`Problem.row_scale`) and only the EEG rows are average-referenced
  (:meth:`Problem.null_space`); MNE's solvers get the data back in
  physical units;
- ``meg-ico3``: the same with the MEG array alone (magnetometers and
  gradiometers, no EEG, no reference).

The *regime* settings of the do-no-harm check
(:data:`DO_NO_HARM_SETTINGS`, :mod:`~mne_unfolded_sbl.benchmark.do_no_harm`)
probe the regimes users meet. Unlike the settings above they draw one SNR
per sample over all sensors (``snr_mode="global"``) with sensor noise
variances that differ log-normally (``noise_heterogeneity``: the standard
deviation of the log variance across sensors, drawn in 0-0.5 per sample) —
see :data:`REGIME_NOISE`:

- ``single-focal``: one dipole, SNR 3-5 dB;
- ``multi-dipole``: 2-4 dipoles, SNR 1-3 dB;
- ``low-snr``: 1-3 smooth sources (Gaussian or diffusion footprints,
  10-20 mm), SNR -5-0 dB;
- ``miscaled-cov``: the Train Cap sources (5-20 focal, SNR 5-30 dB), but
  the noise variances handed to every solver are those of the simulation
  times a log-uniform factor in 0.3-3 per sample, and flat (ad hoc: their
  mean on every sensor) in 20 % of the samples;
- ``cap-32``, ``cap-128``, ``ico4``: the Train Cap sources and SNR on the
  32-channel 10-20 cap (``"1020-32"``), the 128-channel EGI HydroCel net
  fitted to the template scalp (``"egi-128"``), and the ico4 source space
  (5124 sources).

Their simulation fields (``snr_mode``, ``noise_heterogeneity``,
``footprint``, ``noise_cov_scale``, ``adhoc_cov_prob``) are those of
:class:`~mne_unfolded_sbl.core.simulator.SimulationConfig`; an installation
whose simulator lacks them refuses these settings with a clear error
(:meth:`Setting.missing_fields`). Diffusion footprints are drawn on the
mesh of the forward's source space (:attr:`Problem.adjacency`). Every method is told the noise variances
the simulation says the solver is told (``noise_var_given`` of the
simulator's samples, else the true ones): see
:func:`~mne_unfolded_sbl.benchmark.runner.simulate_batches`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import mne
import numpy as np

from ..core.leadfield import (DEFAULT_CONDUCTIVITY, PERTURBED_CONDUCTIVITY,
                              average_reference)
from ..core.metrics import source_neighbors
from ..core.simulator import SimulationConfig
from ..core.solver import NullSpace
from ..datasets import (fixed_eeg_forward, leadfield_from_forward, make_info,
                        make_template_forward)

#: Conductivities (S/m) the solvers assume.
INVERSE_CONDUCTIVITY = DEFAULT_CONDUCTIVITY
#: Conductivities (S/m) the data are simulated with (no inverse crime).
SIMULATION_CONDUCTIVITY = PERTURBED_CONDUCTIVITY
#: Scale (A·m) applied to the unit-free simulated sources before they are
#: handed to MNE's solvers (as :func:`~mne_unfolded_sbl.simulation.simulate_evoked`
#: does): the MNE methods see data in volts; estimates in A·m are divided
#: by it again, so every estimate is compared in the simulator's units.
SOURCE_SCALE = 10e-9
#: Half-angle (degrees) of the cone around the cortical normal within which
#: the dipoles of the ``loose-forward`` setting are oriented (uniform on the
#: spherical cap).
TILT_DEG = 45.0


@dataclass(frozen=True)
class Setting:
    """One benchmark setting.

    Parameters
    ----------
    name : str
        Key used on the command line.
    label : str
        Name in tables (as in the paper).
    montage : str
        Montage name understood by
        :func:`mne_unfolded_sbl.datasets.make_template_forward`.
    spacing : "ico3" | "ico4"
        Source space.
    n_times : int
        Samples per simulated evoked response (at 100 Hz).
    bem_ico : int
        BEM surface resolution (4: ~1 min and ~2 GB the first time, cached).
    batch_size : int
        Samples per batch of the batched (SBL) solvers and of simulation.
    config_overrides : dict
        Fields of the :class:`~mne_unfolded_sbl.core.simulator.SimulationConfig`
        that differ from its defaults (sources, spread, SNR).
    meg : bool
        Record with the template MEG array and the EEG montage together.
    eeg : bool
        With ``meg``: keep the EEG channels (False: MEG alone).
    tilt_deg : float | None
        Simulate dipoles tilted off the cortical normal, within a cone of
        this half-angle (degrees), with the free-orientation forward; the
        problem then holds the free-orientation lead fields and every
        method is scored on dipole vectors. None: normal dipoles.
    """

    name: str
    label: str
    montage: str
    spacing: str
    n_times: int
    bem_ico: int = 4
    batch_size: int = 50
    sim_conductivity: tuple = SIMULATION_CONDUCTIVITY
    inv_conductivity: tuple = INVERSE_CONDUCTIVITY
    description: str = ""
    config_overrides: dict = field(default_factory=dict)
    meg: bool = False
    eeg: bool = True
    tilt_deg: float | None = None

    def missing_fields(self):
        """The fields of :attr:`config_overrides` that this installation's
        :class:`~mne_unfolded_sbl.core.simulator.SimulationConfig` lacks
        (empty: the setting can be simulated)."""
        known = {f.name for f in fields(SimulationConfig)}
        return sorted(set(self.config_overrides) - known)

    def simulation_config(self, **overrides):
        """This setting's :class:`~mne_unfolded_sbl.core.simulator.SimulationConfig`.

        Raises
        ------
        ValueError
            If the simulator lacks a field the setting needs
            (:meth:`missing_fields`).
        """
        missing = self.missing_fields()
        if missing:
            raise ValueError(
                f"Setting {self.name!r} needs the SimulationConfig fields "
                f"{missing}, which this installation's simulator "
                "(mne_unfolded_sbl.core.simulator) does not have.")
        kw = dict(n_times=self.n_times, sfreq=100.0)
        kw.update(self.config_overrides)
        kw.update(overrides)
        return SimulationConfig(**kw)

    def replace(self, **kwargs):
        """Return a modified copy (e.g. ``bem_ico=3`` for quick runs)."""
        return replace(self, **kwargs)


#: Noise of the regime settings: one SNR per sample over all sensors, the
#: sensors' noise variances spread log-normally (standard deviation of the
#: log variance drawn in 0-0.5 per sample).
REGIME_NOISE = dict(snr_mode="global", noise_heterogeneity=(0.0, 0.5))
_GLOBAL = "global SNR (one per sample over all sensors, sensor noise " \
    "variances log-normal, std of log 0-0.5)"

SETTINGS = {
    "train-cap-ico3": Setting(
        "train-cap-ico3", "Train Cap, Ico3", "train-64", "ico3", 100,
        batch_size=50,
        description="64-channel training montage (THINGS-EEG2 cap + Fz, "
                    "fsaverage_1005 positions), ico3 (1284 sources), T=100"),
    "things-cap-ico3": Setting(
        "things-cap-ico3", "Things Cap, Ico3", "things-eeg2", "ico3", 600,
        batch_size=25,
        description="63-channel THINGS-EEG2 cap, ico3 (1284 sources), T=600"),
    "things-cap-ico4": Setting(
        "things-cap-ico4", "Things Cap, Ico4", "things-eeg2", "ico4", 600,
        batch_size=10,
        description="63-channel THINGS-EEG2 cap, ico4 (5124 sources), T=600"),
    "extended-patches": Setting(
        "extended-patches", "Extended patches, Ico3", "train-64", "ico3", 100,
        batch_size=50,
        config_overrides=dict(n_sources=(2, 4), spread=(0.01, 0.02),
                              snr_db=(1.0, 3.0)),
        description="Train Cap, ico3, T=100; 2-4 extended patches (Gaussian "
                    "footprints, sigma 10-20 mm: median 5.5-34 cm² above half "
                    "the peak), per-channel SNR 1-3 dB"),
    "single-dipole": Setting(
        "single-dipole", "Single focal dipole, Ico3", "train-64", "ico3", 100,
        batch_size=50,
        config_overrides=dict(n_sources=1, spread=0.0, snr_db=(3.0, 5.0)),
        description="Train Cap, ico3, T=100; one dipole (no footprint), "
                    "per-channel SNR 3-5 dB"),
    "loose-forward": Setting(
        "loose-forward", "Tilted dipoles (loose forward), Ico3", "train-64",
        "ico3", 100, batch_size=25,
        config_overrides=dict(n_sources=(2, 4), spread=0.0,
                              snr_db=(5.0, 15.0)),
        tilt_deg=TILT_DEG,
        description="Train Cap, ico3, T=100; 2-4 dipoles tilted off the "
                    f"cortical normal (uniform in a {TILT_DEG:g}° cone), "
                    "simulated with the free-orientation forward, "
                    "per-channel SNR 5-15 dB; scored on dipole vectors"),
    "meg-eeg-ico3": Setting(
        "meg-eeg-ico3", "MEG+EEG, Ico3", "train-64", "ico3", 100,
        batch_size=50, meg=True,
        description="306-channel template MEG array + the 64-channel Train "
                    "Cap, ico3 (1284 sources), T=100, the Train Cap "
                    "simulation (5-20 focal sources, SNR 5-30 dB)"),
    "meg-ico3": Setting(
        "meg-ico3", "MEG, Ico3", "train-64", "ico3", 100,
        batch_size=50, meg=True, eeg=False,
        description="306-channel template MEG array alone (102 "
                    "magnetometers, 204 planar gradiometers), ico3 (1284 "
                    "sources), T=100, the Train Cap simulation (5-20 focal "
                    "sources, SNR 5-30 dB)"),
    # -- regimes of the do-no-harm check (global SNR, see REGIME_NOISE) ------
    "single-focal": Setting(
        "single-focal", "Single focal dipole (global SNR), Ico3", "train-64",
        "ico3", 100, batch_size=50,
        config_overrides=dict(n_sources=1, spread=0.0, snr_db=(3.0, 5.0),
                              **REGIME_NOISE),
        description=f"Train Cap, ico3, T=100; one dipole (no footprint), "
                    f"{_GLOBAL} 3-5 dB"),
    "multi-dipole": Setting(
        "multi-dipole", "2-4 dipoles, Ico3", "train-64", "ico3", 100,
        batch_size=50,
        config_overrides=dict(n_sources=(2, 4), spread=0.0,
                              snr_db=(1.0, 3.0), **REGIME_NOISE),
        description=f"Train Cap, ico3, T=100; 2-4 dipoles (no footprint), "
                    f"{_GLOBAL} 1-3 dB"),
    "low-snr": Setting(
        "low-snr", "Low SNR, smooth sources, Ico3", "train-64", "ico3", 100,
        batch_size=50,
        config_overrides=dict(n_sources=(1, 3), spread=(0.01, 0.02),
                              footprint=("gaussian", "diffusion"),
                              snr_db=(-5.0, 0.0), **REGIME_NOISE),
        description=f"Train Cap, ico3, T=100; 1-3 smooth sources (Gaussian "
                    f"or diffusion footprints, 10-20 mm), {_GLOBAL} -5-0 dB"),
    "miscaled-cov": Setting(
        "miscaled-cov", "Miscaled noise covariance, Ico3", "train-64", "ico3",
        100, batch_size=50,
        config_overrides=dict(snr_db=(5.0, 30.0), noise_cov_scale=(0.3, 3.0),
                              adhoc_cov_prob=0.2, **REGIME_NOISE),
        description=f"Train Cap, ico3, T=100; 5-20 focal sources, {_GLOBAL} "
                    "5-30 dB; the noise variances handed to every solver "
                    "are the true ones times a log-uniform factor in 0.3-3 "
                    "per sample, flat (ad hoc) in 20 % of the samples"),
    "cap-32": Setting(
        "cap-32", "32-channel 10-20 cap, Ico3", "1020-32", "ico3", 100,
        batch_size=50,
        config_overrides=dict(snr_db=(5.0, 30.0), **REGIME_NOISE),
        description=f"32-channel 10-20 cap (fsaverage_1005 positions), ico3, "
                    f"T=100; 5-20 focal sources, {_GLOBAL} 5-30 dB"),
    "cap-128": Setting(
        "cap-128", "128-channel EGI net, Ico3", "egi-128", "ico3", 100,
        batch_size=50,
        config_overrides=dict(snr_db=(5.0, 30.0), **REGIME_NOISE),
        description=f"128-channel EGI HydroCel net (MNE's positions fitted "
                    f"to the template scalp), ico3, T=100; 5-20 focal "
                    f"sources, {_GLOBAL} 5-30 dB"),
    "ico4": Setting(
        "ico4", "Train Cap, Ico4", "train-64", "ico4", 100, batch_size=10,
        config_overrides=dict(snr_db=(5.0, 30.0), **REGIME_NOISE),
        description=f"Train Cap, ico4 (5124 sources), T=100; 5-20 focal "
                    f"sources, {_GLOBAL} 5-30 dB"),
}

#: The settings of the do-no-harm check
#: (:func:`~mne_unfolded_sbl.benchmark.do_no_harm.run_do_no_harm`), in the
#: order of its tables.
DO_NO_HARM_SETTINGS = ("single-focal", "multi-dipole", "extended-patches",
                       "low-snr", "miscaled-cov", "cap-32", "cap-128", "ico4")


def get_setting(setting):
    """Return a :class:`Setting` from its name (or pass one through).

    Raises
    ------
    ValueError
        For an unknown name, listing the valid ones.
    """
    if isinstance(setting, Setting):
        return setting
    if not isinstance(setting, str) or setting not in SETTINGS:
        raise ValueError(
            f"Unknown benchmark setting {setting!r}; valid settings are "
            f"{sorted(SETTINGS)}.")
    return SETTINGS[setting]


@dataclass
class Problem:
    """Everything a benchmark run needs for one setting.

    ``L`` is the (average-referenced) lead field the solvers use; ``L_sim``
    the one the data are simulated with. ``fwd`` and ``info`` (with an
    average-reference projector) are the MNE objects of the inverse model;
    they are None for a purely synthetic problem, which only the
    array-based (SBL) methods can run on.

    Settings with tilted dipoles also hold the free-orientation lead fields
    ``L_free`` / ``L_sim_free`` (``(M, 3 N)``, MNE's surface-oriented frame:
    two tangential columns, then the normal one, per source) and the frames
    ``nn`` (``(N, 3, 3)``, rows in head coordinates). MEG+EEG settings hold
    ``row_scale`` (the factor of every channel's row, so that each channel
    type has unit RMS gain; None: 1) and ``eeg_rows`` (the EEG rows, the only
    average-referenced ones).
    """

    setting: Setting
    L: np.ndarray
    L_sim: np.ndarray
    pos: np.ndarray
    ch_names: list
    fwd: object = None
    info: object = None
    config: SimulationConfig = None
    _neighbors: object = None
    L_free: np.ndarray = None
    L_sim_free: np.ndarray = None
    nn: np.ndarray = None
    row_scale: np.ndarray = None
    eeg_rows: np.ndarray = None
    fwd_free: object = None
    _adjacency: object = None

    @property
    def n_sensors(self):
        return self.L.shape[0]

    @property
    def n_sources(self):
        return self.L.shape[1]

    @property
    def neighbors(self):
        """Source neighbourhood of the LE metric (built once)."""
        if self._neighbors is None:
            self._neighbors = source_neighbors(self.pos)
        return self._neighbors

    @property
    def adjacency(self):
        """Mesh adjacency of the sources (scipy.sparse, from the forward's
        source space; built once), for the geodesic and diffusion
        footprints of the simulation.

        Raises
        ------
        ValueError
            For a problem without an MNE forward (synthetic).
        """
        if self._adjacency is None:
            if self.fwd is None:
                raise ValueError(
                    "Geodesic and diffusion footprints need the source-space "
                    "mesh of an MNE forward; this problem has none.")
            self._adjacency = mne.spatial_src_adjacency(self.fwd["src"],
                                                        verbose=False)
            if self._adjacency.shape != (self.n_sources, self.n_sources):
                raise ValueError(
                    f"The source-space adjacency has shape "
                    f"{self._adjacency.shape}, not the problem's "
                    f"{self.n_sources} sources.")
        return self._adjacency

    def with_config(self, config):
        """Same geometry, another simulation config (for sweeps)."""
        return replace(self, config=config)

    @property
    def vector(self):
        """Whether sources are scored as dipole vectors (tilted dipoles)."""
        return self.L_free is not None

    @property
    def normals(self):
        """Cortical normal of every source (N, 3), head coordinates."""
        if self.nn is not None:
            return self.nn[:, 2]
        if self.fwd is not None:
            return np.asarray(self.fwd["source_nn"], np.float64)
        return None

    def null_space(self, device=None):
        """The :class:`~mne_unfolded_sbl.core.solver.NullSpace` of the data.

        The average reference of the EEG rows (all rows for EEG-only
        problems, as the simulation config says; MEG+EEG problems: the EEG
        rows, None for MEG alone).
        """
        if self.eeg_rows is None:
            return self.config.null_space(self.n_sensors, device)
        q = self.eeg_rows.astype(np.float64)
        if not q.any():
            return None
        q = q / np.sqrt(q.sum())
        return NullSpace(q[:, None]) if device is None else \
            NullSpace(q[:, None]).to(device)


def load_problem(setting, *, bem_ico=None, config=None, verbose="error"):
    """Build (or load from the cache) the forward models of a setting.

    Parameters
    ----------
    setting : str | Setting
    bem_ico : int | None
        Override the setting's BEM resolution (3 is quick, for tests).
    config : SimulationConfig | None
        Override the setting's simulation config.

    Returns
    -------
    problem : Problem
    """
    setting = get_setting(setting)
    if bem_ico is not None:
        setting = setting.replace(bem_ico=int(bem_ico))
    conds = (setting.inv_conductivity, setting.sim_conductivity)
    if setting.meg:
        fwd, fwd_sim = (_template_forward(setting, cond, meg=True,
                                          verbose=verbose) for cond in conds)
        if not setting.eeg:
            with mne.utils.use_log_level("error"):
                fwd, fwd_sim = (mne.pick_types_forward(f, meg=True, eeg=False)
                                for f in (fwd, fwd_sim))
        return problem_from_meg_eeg_forward(fwd, fwd_sim, setting=setting,
                                            config=config)
    fwd, fwd_sim = (make_template_forward(setting.montage, setting.spacing, cond,
                                          bem_ico=setting.bem_ico,
                                          verbose=verbose)
                    for cond in conds)
    problem = problem_from_forward(fwd, fwd_sim,
                                   info=make_info(setting.montage),
                                   setting=setting, config=config)
    if setting.tilt_deg is not None:
        free, free_sim = (free_template_forward(
            setting.montage, setting.spacing, cond, bem_ico=setting.bem_ico,
            verbose=verbose) for cond in conds)
        problem = with_free_orientation(problem, free, free_sim)
    return problem


def _template_forward(setting, conductivity, meg=False, verbose="error"):
    """``make_template_forward`` of a setting; a clear error while the MEG
    template is not there."""
    import inspect

    if meg and "meg" not in inspect.signature(make_template_forward).parameters:
        raise ValueError(
            f"Setting {setting.name!r} needs the MEG template "
            "(mne_unfolded_sbl.datasets.make_template_forward(..., meg=True)), "
            "which this installation does not have.")
    kw = dict(meg=True) if meg else {}
    return make_template_forward(setting.montage, setting.spacing, conductivity,
                                 bem_ico=setting.bem_ico, verbose=verbose, **kw)


def free_template_forward(montage="train-64", spacing="ico3",
                          conductivity=INVERSE_CONDUCTIVITY, *, bem_ico=4,
                          meg=False, verbose="error"):
    """The free-orientation (surface-oriented) template forward.

    :func:`~mne_unfolded_sbl.datasets.make_template_forward` returns the
    fixed-orientation forward and caches the free-orientation one it was
    converted from; this reads that cached file (computing it first when
    needed) and converts it with ``surf_ori=True, use_cps=True``, as MNE
    prepares a forward for loose orientation.

    Returns
    -------
    fwd : mne.Forward
        Free orientation, surface-oriented (three columns per source: two
        tangential, then the normal).

    Raises
    ------
    RuntimeError
        If the cache is disabled or its file cannot be found.
    """
    from ..datasets import _forward as tf

    kw = dict(meg=meg) if meg else {}
    make_template_forward(montage, spacing, conductivity, bem_ico=bem_ico,
                          verbose=verbose, **kw)  # computes and caches it
    info = (tf._template_info(montage, meg) if hasattr(tf, "_template_info")
            else make_info(montage))
    kind, subjects_dir = tf.resolve_source("auto")
    key = tf._forward_key(info, spacing, tf._check_conductivity(conductivity),
                          int(bem_ico), tf._source_key(kind, subjects_dir))
    fname = tf.cache_dir() / "fwd" / f"{tf.SUBJECT}-{spacing}-{key}-fwd.fif"
    if not fname.is_file():
        raise RuntimeError(
            f"The free-orientation template forward is not in the cache "
            f"({fname}); it is read from the cache of make_template_forward, "
            "which must be enabled and writable.")
    fwd = mne.read_forward_solution(fname, verbose=verbose)
    return mne.convert_forward_solution(fwd, surf_ori=True, force_fixed=False,
                                        use_cps=True, verbose=verbose)


def _free_gain(fwd, ch_names):
    """Average-referenced free-orientation gain (M, 3N) on ``ch_names``."""
    fwd = mne.pick_channels_forward(fwd, ch_names, ordered=True,
                                    verbose="error")
    return average_reference(np.asarray(fwd["sol"]["data"], np.float64))


def with_free_orientation(problem, fwd_free, fwd_free_sim=None):
    """``problem`` with the free-orientation lead fields of tilted dipoles.

    Parameters
    ----------
    problem : Problem
        A fixed-orientation EEG problem on the same sources.
    fwd_free, fwd_free_sim : mne.Forward
        Free-orientation, surface-oriented forwards for the solvers and for
        the simulation (None: ``fwd_free``, inverse crime).
    """
    if fwd_free_sim is None:
        fwd_free_sim = fwd_free
    for f in (fwd_free, fwd_free_sim):
        if mne.forward.is_fixed_orient(f) or not f["surf_ori"]:
            raise ValueError("fwd_free must be a free-orientation, "
                             "surface-oriented forward.")
        if f["nsource"] != problem.n_sources or not np.allclose(
                f["source_rr"], problem.fwd["source_rr"]):
            raise ValueError("The free-orientation forward has other sources "
                             "than the problem.")
    L_free, L_sim_free = (_free_gain(f, problem.ch_names)
                          for f in (fwd_free, fwd_free_sim))
    nn = np.asarray(fwd_free["source_nn"], np.float64).reshape(-1, 3, 3)
    # the fixed solvers' column is the normal one of the free forward
    if not np.allclose(L_free[:, 2::3], problem.L, rtol=1e-4,
                       atol=1e-6 * np.abs(problem.L).max()):
        raise ValueError("The normal columns of the free-orientation forward "
                         "differ from the fixed-orientation lead field.")
    return replace(problem, L_free=L_free, L_sim_free=L_sim_free, nn=nn,
                   fwd_free=fwd_free)


#: Channel types scaled separately in MEG+EEG problems.
_ROW_TYPES = ("mag", "grad", "eeg")


def _info_from_forward(fwd, ch_names):
    """A complete Info of ``ch_names`` with the sensors of ``fwd["info"]``
    (a forward's info lacks fields MNE's referencing needs)."""
    finfo = fwd["info"]
    types = [mne.channel_type(finfo, finfo["ch_names"].index(c))
             for c in ch_names]
    info = mne.create_info(list(ch_names), 100.0, types)
    with info._unlock():
        for k, c in enumerate(ch_names):
            src = finfo["chs"][finfo["ch_names"].index(c)]
            for key in ("loc", "coil_type", "kind", "unit", "coord_frame",
                        "cal", "range", "unit_mul"):
                if key in src:
                    info["chs"][k][key] = src[key]
        info["dev_head_t"] = finfo["dev_head_t"]
    info._check_consistency()
    return info


def problem_from_meg_eeg_forward(fwd, fwd_sim=None, *, info=None,
                                 setting=None, config=None, n_times=100):
    """A :class:`Problem` from MEG+EEG (or MEG) forward solutions.

    Each channel type's rows are scaled to unit RMS gain
    (:attr:`Problem.row_scale`, the same factors for both forwards, from the
    solvers' one), the EEG rows are average-referenced, and the simulation
    leaves the MEG rows unreferenced (the benchmark references the EEG
    rows of the simulated data, noise included).

    Parameters
    ----------
    fwd, fwd_sim : mne.Forward
        Fixed-orientation forwards with MEG (and EEG) channels; ``fwd_sim``
        None is ``fwd`` (inverse crime).
    info : mne.Info | None
        Info with the channels; None: built from ``fwd["info"]``.
    setting, config, n_times
        As in :func:`problem_from_forward`.
    """
    if fwd_sim is None:
        fwd_sim = fwd
    with mne.utils.use_log_level("error"):
        fwd, fwd_sim = (mne.convert_forward_solution(
            mne.pick_types_forward(f, meg=True, eeg=True, ref_meg=False),
            surf_ori=True, force_fixed=True, use_cps=True, copy=True)
            for f in (fwd, fwd_sim))
    ch_names = list(fwd["sol"]["row_names"])
    if list(fwd_sim["sol"]["row_names"]) != ch_names or not np.allclose(
            fwd["source_rr"], fwd_sim["source_rr"]):
        raise ValueError("The simulation and inverse forward models have "
                         "different channels or sources.")
    if info is None:
        info = _info_from_forward(fwd, ch_names)
    missing = [c for c in ch_names if c not in info["ch_names"]]
    if missing:
        raise ValueError(f"info lacks channels of the forward: {missing[:5]}")
    info = mne.pick_info(info, [info["ch_names"].index(c) for c in ch_names])
    types = np.array(info.get_channel_types())
    if "mag" not in types and "grad" not in types:
        raise ValueError("The forward has no MEG channel; use "
                         "problem_from_forward for EEG.")
    eeg = types == "eeg"
    L_raw, L_sim_raw = (np.asarray(f["sol"]["data"], np.float64)
                        for f in (fwd, fwd_sim))
    if eeg.any():
        for L_ in (L_raw, L_sim_raw):
            L_[eeg] -= L_[eeg].mean(0, keepdims=True)
    row_scale = np.ones(len(ch_names))
    for kind in _ROW_TYPES:
        rows = types == kind
        if rows.any():
            row_scale[rows] = 1.0 / np.sqrt(np.mean(L_raw[rows] ** 2))
    L, L_sim = L_raw * row_scale[:, None], L_sim_raw * row_scale[:, None]
    pos = np.asarray(fwd["source_rr"], np.float64)
    if setting is None:
        setting = Setting("custom", "Custom forward", "custom", "custom",
                          int(n_times), meg=True,
                          description="user MEG(+EEG) forward model")
    info = _solver_info(info, with_reference=bool(eeg.any()))
    if config is None:
        config = setting.simulation_config()
    return Problem(setting=setting, L=L, L_sim=L_sim, pos=pos,
                   ch_names=ch_names, fwd=fwd, info=info, config=config,
                   row_scale=row_scale, eeg_rows=eeg)


def _solver_info(info, with_reference):
    """``info`` at 100 Hz without bads or projectors, plus (for EEG) an
    inactive average-reference projector, as on real evoked data."""
    with info._unlock():
        info["projs"], info["bads"], info["sfreq"] = [], [], 100.0
    if with_reference:
        info = mne.EvokedArray(np.zeros((len(info["ch_names"]), 1)), info,
                               verbose=False).set_eeg_reference(
            projection=True, verbose=False).info
    return info


def problem_from_forward(fwd, fwd_sim=None, *, info=None, setting=None,
                         config=None, n_times=100):
    """A :class:`Problem` from MNE forward solutions.

    Parameters
    ----------
    fwd : mne.Forward
        The forward the solvers use (converted to fixed orientation).
    fwd_sim : mne.Forward | None
        The forward the data are simulated with (same channels and
        sources); None uses ``fwd`` (inverse crime: only for tests).
    info : mne.Info | None
        Info with the channel positions; None uses ``fwd["info"]``.
    setting : Setting | None
        None makes a ``"custom"`` setting with ``n_times`` samples.
    config : SimulationConfig | None
        None uses the setting's.
    """
    with mne.utils.use_log_level("error"):
        fwd = fixed_eeg_forward(fwd)
        fwd_sim = fwd if fwd_sim is None else fixed_eeg_forward(fwd_sim)
    lf, lf_sim = (leadfield_from_forward(f) for f in (fwd, fwd_sim))
    L, pos, ch_names = lf.L, lf.pos, lf.ch_names
    L_sim, pos_sim, ch_sim = lf_sim.L, lf_sim.pos, lf_sim.ch_names
    if ch_names != ch_sim or L.shape != L_sim.shape or not np.allclose(pos, pos_sim):
        raise ValueError("The simulation and inverse forward models have "
                         "different channels or sources.")
    if setting is None:
        setting = Setting("custom", "Custom forward", "custom", "custom",
                          int(n_times), description="user forward model")
    info = fwd["info"] if info is None else info
    missing = [c for c in ch_names if c not in info["ch_names"]]
    if missing:
        raise ValueError(f"info lacks channels of the forward: {missing[:5]}")
    info = mne.pick_info(info, [info["ch_names"].index(c) for c in ch_names])
    info = _solver_info(info, with_reference=True)
    if config is None:
        config = setting.simulation_config()
    return Problem(setting=setting, L=L, L_sim=L_sim, pos=pos,
                   ch_names=ch_names, fwd=fwd, info=info, config=config)


def synthetic_problem(n_sensors=32, n_sources=200, n_times=50, *, seed=0,
                      mismatch=0.05, config=None):
    """A small random problem without MNE objects (SBL methods only).

    Sources lie on two spheres ("hemispheres", radius 3 cm); the lead field
    is Gaussian, average-referenced, and the simulation lead field adds a
    relative perturbation ``mismatch``.
    """
    rng = np.random.default_rng(seed)

    def sphere(n, center):
        i = np.arange(n) + 0.5
        phi = np.arccos(1 - 2 * i / n)
        theta = np.pi * (1 + 5 ** 0.5) * i
        xyz = np.c_[np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi),
                    np.cos(phi)]
        return 0.03 * xyz + np.asarray(center)

    half = n_sources // 2
    pos = np.concatenate([sphere(half, (-0.035, 0, 0.02)),
                          sphere(n_sources - half, (0.035, 0, 0.02))])
    L = average_reference(rng.standard_normal((n_sensors, n_sources)))
    L_sim = average_reference(
        L * (1 + mismatch * rng.standard_normal(L.shape)))
    setting = Setting("synthetic", "Synthetic", "none", "none", n_times,
                      batch_size=32, description="random Gaussian lead field")
    if config is None:
        config = setting.simulation_config(n_sources=(1, 3))
    return Problem(setting=setting, L=L, L_sim=L_sim, pos=pos,
                   ch_names=[f"EEG{i:03d}" for i in range(n_sensors)],
                   config=config)
