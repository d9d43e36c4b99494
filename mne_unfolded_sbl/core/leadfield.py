"""Lead fields as plain arrays: the ``.npz`` file format and the reference.

Everything here needs numpy only, so lead fields travel to a machine without
MNE (a GPU training box). Writing one from an :class:`mne.Forward` is
:func:`mne_unfolded_sbl.datasets.save_leadfield_npz`; reading it back is
:func:`read_leadfield_npz`.
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["DEFAULT_CONDUCTIVITY", "LEADFIELD_FORMAT_VERSION", "LeadField",
           "PERTURBED_CONDUCTIVITY", "average_reference", "read_leadfield_npz",
           "write_leadfield_npz"]

#: Version of the ``.npz`` lead-field layout written by
#: :func:`write_leadfield_npz`.
LEADFIELD_FORMAT_VERSION = 1

#: Brain, skull, scalp conductivities (S/m) of the 3-layer BEM every solver
#: assumes (MNE's defaults).
DEFAULT_CONDUCTIVITY = (0.3, 0.006, 0.3)
#: Perturbed conductivities (S/m) that validation and benchmark data are
#: simulated with, so that no method commits the inverse crime (paper B.2).
PERTURBED_CONDUCTIVITY = (0.33, 0.0045, 0.27)


def average_reference(gain):
    """Average-reference a gain matrix: subtract the channel mean per column.

    This is what MNE's average-reference projector does to the forward
    solution; data simulated with (or localised against) this gain are
    consistent with ``set_eeg_reference(projection=True)``.

    Parameters
    ----------
    gain : array-like, shape (n_channels, n_sources)

    Returns
    -------
    gain_ref : ndarray, shape (n_channels, n_sources), float64
    """
    gain = np.asarray(gain, dtype=np.float64)
    if gain.ndim != 2:
        raise ValueError(f"gain must be 2D (n_channels, n_sources), got shape "
                         f"{gain.shape}.")
    return gain - gain.mean(axis=0, keepdims=True)


@dataclass
class LeadField:
    """An average-referenced fixed-orientation EEG lead field.

    Attributes
    ----------
    L : ndarray, shape (M, N)
        Average-referenced gain (float64, V / A.m).
    pos : ndarray, shape (N, 3)
        Source positions (metres).
    ch_names : list of str
    vertices : list of ndarray | None
        Source-space vertex numbers per hemisphere, when known.
    subject : str
    """

    L: np.ndarray
    pos: np.ndarray
    ch_names: list
    vertices: list = None
    subject: str = ""
    nn: np.ndarray = field(default=None, repr=False)

    def __post_init__(self):
        if self.pos.shape != (self.L.shape[1], 3):
            raise ValueError(f"The lead field has {self.L.shape[1]} sources "
                             f"but the positions have shape {self.pos.shape}; "
                             "expected (n_sources, 3).")
        if len(self.ch_names) != self.L.shape[0]:
            raise ValueError(f"The lead field has {self.L.shape[0]} channels "
                             f"but {len(self.ch_names)} channel names.")

    @classmethod
    def from_gain(cls, gain, pos, ch_names, **kwargs):
        """Average-reference ``gain`` and wrap it with its geometry."""
        return cls(average_reference(gain), np.asarray(pos, np.float64),
                   list(ch_names), **kwargs)

    @property
    def shape(self):
        """``(n_channels, n_sources)``."""
        return self.L.shape


def write_leadfield_npz(fname, gain, source_rr, source_nn, vertices, ch_names,
                        subject=""):
    """Write a fixed-orientation lead field to ``.npz`` (numpy only).

    The file holds ``gain`` (n_channels, n_sources, float32, V/Am, in the
    reference of the forward), ``source_rr`` and ``source_nn`` (n_sources, 3,
    head coordinates, metres), ``vertices_lh`` and ``vertices_rh`` (int64),
    ``ch_names`` (str), ``subject`` and ``format_version``.
    """
    gain = np.asarray(gain)
    if len(vertices) != 2 or sum(len(v) for v in vertices) != gain.shape[1]:
        raise ValueError("vertices must be two arrays (lh, rh) with one entry "
                         "per gain column.")
    np.savez_compressed(
        Path(fname),
        gain=gain.astype(np.float32),
        source_rr=np.asarray(source_rr, np.float32),
        source_nn=np.asarray(source_nn, np.float32),
        vertices_lh=np.asarray(vertices[0], np.int64),
        vertices_rh=np.asarray(vertices[1], np.int64),
        ch_names=np.array(list(ch_names), dtype=str),
        subject=np.array(str(subject or "")),
        format_version=np.int32(LEADFIELD_FORMAT_VERSION),
    )
    return Path(fname)


def read_leadfield_npz(fname):
    """Read a lead field written by ``save_leadfield_npz`` (numpy only).

    Parameters
    ----------
    fname : path-like
        The ``.npz`` file.

    Returns
    -------
    lf : LeadField
        The gain average-referenced, as for the data the package sees.
    """
    fname = Path(fname)
    if not fname.is_file():
        raise FileNotFoundError(f"Lead-field file not found: {fname}")
    with np.load(fname, allow_pickle=False) as npz:
        if "gain" not in npz or "source_rr" not in npz:
            raise ValueError(f"{fname} is not a lead-field file written by "
                             "mne_unfolded_sbl.datasets.save_leadfield_npz "
                             "(needs 'gain' and 'source_rr').")
        version = int(npz["format_version"]) if "format_version" in npz else 1
        if version > LEADFIELD_FORMAT_VERSION:
            raise ValueError(
                f"{fname} has lead-field format {version}; this version reads "
                f"up to {LEADFIELD_FORMAT_VERSION}. Upgrade mne-unfolded-sbl.")
        gain = npz["gain"]
        names = (npz["ch_names"].tolist() if "ch_names" in npz
                 else [f"EEG{i:03d}" for i in range(gain.shape[0])])
        vertices = ([npz["vertices_lh"], npz["vertices_rh"]]
                    if "vertices_lh" in npz else None)
        return LeadField.from_gain(
            gain, npz["source_rr"], names, vertices=vertices,
            subject=str(npz["subject"]) if "subject" in npz else "",
            nn=np.asarray(npz["source_nn"], np.float64)
            if "source_nn" in npz else None)
