"""Training unfolded-SBL networks on on-the-fly simulations.

See ``doc/training.rst``. Main entry points: :class:`TrainConfig` /
:func:`load_config` (TOML), :class:`Trainer` / :func:`train`, and the CLI
``mne-unfolded-sbl train``. Nothing here imports MNE at import time.
"""

from .config import TrainConfig, load_config, write_config
from .data import export_leadfields
from .loss import nmse
from .trainer import EXIT_STOPPED, Phase, Trainer, make_phases, train

__all__ = [
    "EXIT_STOPPED",
    "Phase",
    "TrainConfig",
    "Trainer",
    "export_leadfields",
    "load_config",
    "make_phases",
    "nmse",
    "train",
    "write_config",
]
