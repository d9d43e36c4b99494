"""Headless figures: cortical source maps, time courses, noise and convergence.

Two parts:

- :mod:`mne_unfolded_sbl.viz.figures`: the figure functions
  (:func:`plot_source_estimate`, :func:`plot_time_courses`,
  :func:`plot_noise_topomap`, :func:`plot_noisiest_channels`,
  :func:`plot_convergence`, :func:`plot_corrections`) and
  :func:`figure_to_array`;
- :mod:`mne_unfolded_sbl.viz._brain`: the brain renderer behind
  :func:`plot_source_estimate` (PyVista off-screen or a matplotlib mesh
  renderer, chosen by :func:`available_3d_backend`).

Everything public is importable from :mod:`mne_unfolded_sbl.viz`.
"""

# License: BSD-3-Clause

from ._brain import available_3d_backend
from .figures import (figure_to_array, plot_convergence, plot_corrections,
                      plot_noise_topomap, plot_noisiest_channels,
                      plot_source_estimate, plot_time_courses)

__all__ = [
    "available_3d_backend",
    "plot_source_estimate",
    "figure_to_array",
    "plot_time_courses",
    "plot_noise_topomap",
    "plot_noisiest_channels",
    "plot_convergence",
    "plot_corrections",
]
