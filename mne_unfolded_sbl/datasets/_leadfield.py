"""Plain-numpy lead-field files, readable without MNE (e.g. on a GPU box)."""

from pathlib import Path

import numpy as np

LEADFIELD_FORMAT_VERSION = 1


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
    The file holds ``gain`` (n_channels, n_sources, float32, V/Am),
    ``source_rr`` and ``source_nn`` (n_sources, 3, head coordinates, metres),
    ``vertices_lh`` and ``vertices_rh`` (int64), ``ch_names`` (str),
    ``subject`` and ``format_version``. Read it with
    :func:`load_leadfield_npz` (numpy only).
    """
    import mne
    from mne.utils import _validate_type

    _validate_type(fwd, mne.Forward, "fwd")
    if not mne.forward.is_fixed_orient(fwd):
        raise ValueError(
            "fwd must have fixed orientation, use mne.convert_forward_solution("
            "fwd, surf_ori=True, force_fixed=True)"
        )
    if len(fwd["src"]) != 2 or fwd["src"].kind != "surface":
        raise ValueError("fwd must have a surface source space with 2 hemispheres")
    np.savez_compressed(
        Path(fname),
        gain=fwd["sol"]["data"].astype(np.float32),
        source_rr=fwd["source_rr"].astype(np.float32),
        source_nn=fwd["source_nn"].astype(np.float32),
        vertices_lh=np.asarray(fwd["src"][0]["vertno"], np.int64),
        vertices_rh=np.asarray(fwd["src"][1]["vertno"], np.int64),
        ch_names=np.array(fwd["sol"]["row_names"], dtype=str),
        subject=np.array(str(fwd["src"][0].get("subject_his_id") or "")),
        format_version=np.int32(LEADFIELD_FORMAT_VERSION),
    )


def load_leadfield_npz(fname):
    """Load a lead field written by :func:`save_leadfield_npz`.

    Parameters
    ----------
    fname : path-like
        The ``.npz`` file.

    Returns
    -------
    lf : dict
        Keys ``gain``, ``source_rr``, ``source_nn``, ``vertices`` (list of two
        int arrays, lh and rh), ``ch_names`` (list of str) and ``subject``.
    """
    with np.load(Path(fname), allow_pickle=False) as npz:
        version = int(npz["format_version"])
        if version > LEADFIELD_FORMAT_VERSION:
            raise ValueError(
                f"{fname} has lead-field format {version}; this version reads "
                f"up to {LEADFIELD_FORMAT_VERSION}. Upgrade mne-unfolded-sbl."
            )
        return dict(
            gain=npz["gain"],
            source_rr=npz["source_rr"],
            source_nn=npz["source_nn"],
            vertices=[npz["vertices_lh"], npz["vertices_rh"]],
            ch_names=npz["ch_names"].tolist(),
            subject=str(npz["subject"]),
        )


def average_reference_gain(gain):
    """Average-reference a gain matrix: subtract the channel mean per column.

    This is what MNE's average-reference projector does to the forward
    solution; data simulated with (or localised against) this gain are
    consistent with ``set_eeg_reference(projection=True)``.
    """
    gain = np.asarray(gain, dtype=np.float64)
    return gain - gain.mean(axis=0, keepdims=True)


def prepare_leadfield(fwd):
    """Average-referenced gain, source positions and channel names.

    Parameters
    ----------
    fwd : mne.Forward | dict
        A fixed-orientation EEG forward, or the dict returned by
        :func:`load_leadfield_npz` (so it works without MNE).

    Returns
    -------
    L : ndarray, shape (n_channels, n_sources)
        The average-referenced gain (float64, V / A.m).
    pos : ndarray, shape (n_sources, 3)
        Source positions (metres).
    ch_names : list of str
    """
    if isinstance(fwd, dict) and "gain" in fwd:
        return (average_reference_gain(fwd["gain"]),
                np.asarray(fwd["source_rr"], np.float64), list(fwd["ch_names"]))
    import mne

    if not mne.forward.is_fixed_orient(fwd):
        fwd = mne.convert_forward_solution(fwd, surf_ori=True, force_fixed=True,
                                           use_cps=True, verbose=False)
    picks = mne.pick_types(fwd["info"], meg=False, eeg=True)
    gain = fwd["sol"]["data"][picks]
    names = [fwd["sol"]["row_names"][p] for p in picks]
    pos = np.concatenate([s["rr"][s["vertno"]] for s in fwd["src"]])
    return average_reference_gain(gain), pos, names
