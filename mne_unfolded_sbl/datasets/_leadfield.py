"""Lead fields from MNE forward solutions (see :mod:`..core.leadfield`)."""

import mne
import numpy as np
from mne.utils import _validate_type

from ..core.leadfield import LeadField, write_leadfield_npz


def fixed_eeg_forward(fwd):
    """The EEG rows of ``fwd`` with fixed, surface-normal orientation.

    Parameters
    ----------
    fwd : mne.Forward
        Forward solution on a surface source space with EEG channels (MEG
        channels are dropped).

    Returns
    -------
    fwd : mne.Forward
        Converted (``surf_ori=True, force_fixed=True, use_cps=True``) when
        it was not already fixed and surface-oriented.
    """
    _validate_type(fwd, mne.Forward, "fwd")
    if fwd["src"].kind != "surface":
        raise ValueError(
            "A lead field needs a forward on a surface source space, got a "
            f"{fwd['src'].kind!r} source space.")
    with mne.utils.use_log_level("warning"):  # no "N out of N channels" line
        fwd = mne.pick_types_forward(fwd, meg=False, eeg=True)
    if fwd["nchan"] == 0:
        raise ValueError("The forward solution has no EEG channel.")
    if not (mne.forward.is_fixed_orient(fwd) and fwd["surf_ori"]):
        fwd = mne.convert_forward_solution(fwd, surf_ori=True, force_fixed=True,
                                           use_cps=True, copy=True,
                                           verbose=False)
    return fwd


def save_leadfield_npz(fwd, fname):
    """Save the gain matrix and source geometry of a fixed forward to ``.npz``.

    Parameters
    ----------
    fwd : mne.Forward
        A fixed-orientation surface forward (e.g. from
        :func:`make_template_forward`).
    fname : path-like
        Output file (``.npz``).

    Notes
    -----
    See :func:`mne_unfolded_sbl.core.leadfield.write_leadfield_npz` for the
    layout. Read it with
    :func:`mne_unfolded_sbl.core.leadfield.read_leadfield_npz` (numpy only).
    """
    _validate_type(fwd, mne.Forward, "fwd")
    if not mne.forward.is_fixed_orient(fwd):
        raise ValueError(
            "fwd must have fixed orientation, use mne.convert_forward_solution("
            "fwd, surf_ori=True, force_fixed=True)"
        )
    if len(fwd["src"]) != 2 or fwd["src"].kind != "surface":
        raise ValueError("fwd must have a surface source space with 2 hemispheres")
    return write_leadfield_npz(
        fname, fwd["sol"]["data"], fwd["source_rr"], fwd["source_nn"],
        [s["vertno"] for s in fwd["src"]], fwd["sol"]["row_names"],
        fwd["src"][0].get("subject_his_id") or "")


def leadfield_from_forward(fwd):
    """The average-referenced EEG :class:`LeadField` of a forward solution.

    Parameters
    ----------
    fwd : mne.Forward
        EEG forward on a surface source space; converted to fixed
        surface-normal orientation when needed.

    Returns
    -------
    lf : LeadField
    """
    fwd = fixed_eeg_forward(fwd)
    pos = np.concatenate([s["rr"][s["vertno"]] for s in fwd["src"]])
    return LeadField.from_gain(
        fwd["sol"]["data"], pos, fwd["sol"]["row_names"],
        vertices=[s["vertno"].copy() for s in fwd["src"]],
        subject=fwd["src"][0].get("subject_his_id") or "",
        nn=np.asarray(fwd["source_nn"], np.float64))
