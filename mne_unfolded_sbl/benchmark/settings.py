"""Benchmark settings (paper Table 3): montage, source space, data length.

Every setting simulates data with a forward model whose tissue
conductivities are *perturbed* (brain, skull, scalp = 0.33, 0.0045, 0.27
S/m) while every solver uses the forward with the default conductivities
(0.3, 0.006, 0.3 S/m), so no method commits the inverse crime (paper B.2).
Both lead fields are average-referenced (the channel mean is subtracted
from every gain column), as for training, and the sensor noise is
diagonal.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import mne
import numpy as np

from ..core.leadfield import (DEFAULT_CONDUCTIVITY, PERTURBED_CONDUCTIVITY,
                              average_reference)
from ..core.metrics import source_neighbors
from ..core.simulator import SimulationConfig
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

    def simulation_config(self, **overrides):
        """This setting's :class:`~mne_unfolded_sbl.core.simulator.SimulationConfig`."""
        kw = dict(n_times=self.n_times, sfreq=100.0)
        kw.update(self.config_overrides)
        kw.update(overrides)
        return SimulationConfig(**kw)

    def replace(self, **kwargs):
        """Return a modified copy (e.g. ``bem_ico=3`` for quick runs)."""
        return replace(self, **kwargs)


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
}


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

    def with_config(self, config):
        """Same geometry, another simulation config (for sweeps)."""
        return replace(self, config=config)


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
    fwd, fwd_sim = (make_template_forward(setting.montage, setting.spacing, cond,
                                          bem_ico=setting.bem_ico,
                                          verbose=verbose)
                    for cond in (setting.inv_conductivity,
                                 setting.sim_conductivity))
    return problem_from_forward(fwd, fwd_sim, info=make_info(setting.montage),
                                setting=setting, config=config)


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
    with info._unlock():
        info["projs"], info["bads"], info["sfreq"] = [], [], 100.0
    # an (inactive) average-reference projector, as on real evoked data
    info = mne.EvokedArray(np.zeros((len(ch_names), 1)), info,
                           verbose=False).set_eeg_reference(
        projection=True, verbose=False).info
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
