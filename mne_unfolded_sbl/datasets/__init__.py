"""Offline template head models (fsaverage), EEG montages and a MEG array.

See ``doc/head_model.rst`` for how the embedded template is built.
"""

from ._forward import (SPACINGS, electrode_scalp_distances,
                       make_template_forward, resolve_bem_ico)
from ._leadfield import (fixed_eeg_forward, leadfield_from_forward,
                         save_leadfield_npz)
from ._meg import TEMPLATE_DEV_HEAD_T, make_meg_info, meg_sensor_positions  # noqa: F401
from ._montage import (
    THINGS_EEG2_CH_NAMES,
    TRAIN_CH_NAMES,
    TRAIN_MONTAGE,
    make_info,
    make_montage,
)
from ._subject import CACHE_ENV, cache_dir, get_subjects_dir

__all__ = [
    "SPACINGS",
    "THINGS_EEG2_CH_NAMES",
    "TRAIN_CH_NAMES",
    "TRAIN_MONTAGE",
    "cache_dir",
    "electrode_scalp_distances",
    "fixed_eeg_forward",
    "get_subjects_dir",
    "make_info",
    "make_meg_info",
    "make_montage",
    "make_template_forward",
    "meg_sensor_positions",
    "resolve_bem_ico",
    "leadfield_from_forward",
    "save_leadfield_npz",
]
