"""Training unfolded-SBL networks on simulated data.

See ``doc/training.rst``. Main entry points: :class:`TrainConfig` /
:func:`load_config` (TOML), :class:`Trainer` / :func:`train`, the bank of
pre-simulated samples (:class:`SampleBank`) and the CLI
``mne-unfolded-sbl train``. Nothing here imports MNE at import time.
"""

from .bank import SampleBank, ShardSpec, nmse_lowrank
from .config import TrainConfig, load_config, write_config
from .data import export_leadfields
from .loss import nmse
from .trainer import EXIT_STOPPED, Phase, Trainer, make_phases, train

__all__ = [
    "EXIT_STOPPED",
    "Phase",
    "SampleBank",
    "ShardSpec",
    "TrainConfig",
    "Trainer",
    "export_leadfields",
    "load_config",
    "make_phases",
    "nmse",
    "nmse_lowrank",
    "train",
    "write_config",
]
