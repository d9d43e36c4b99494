"""Offline template head models (fsaverage) and EEG montages.

See ``doc/head_model.rst`` for how the embedded template is built.
"""

from ._forward import SPACINGS, electrode_scalp_distances, make_template_forward
from ._leadfield import (average_reference_gain, load_leadfield_npz,
                         prepare_leadfield, save_leadfield_npz)
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
    "average_reference_gain",
    "cache_dir",
    "electrode_scalp_distances",
    "get_subjects_dir",
    "load_leadfield_npz",
    "make_info",
    "make_montage",
    "make_template_forward",
    "prepare_leadfield",
    "save_leadfield_npz",
]
