"""THINGS-EEG2 raw data: download (pooch), read into MNE, epoch.

THINGS-EEG2 (Gifford et al., 2022, NeuroImage 264:119754) has 64-channel
EEG (63 EEG channels of a 10-10 EasyCap layout plus a stimulus channel,
1000 Hz) of 10 subjects viewing rapid serial visual presentations of object
images, 4 sessions each, split into a ``training`` and a ``test`` image
partition. The paper this package implements localises the first 200 ms of
these visual evoked responses (appendix C.4).

File format
-----------
The raw data of one subject, session and partition is one NumPy file
``sub-XX/ses-YY/raw_eeg_{training,test}.npy`` holding a pickled ``dict``
(``np.load(fname, allow_pickle=True).item()``) with keys

``raw_eeg_data``
    array ``(n_channels, n_times)``; the last channel is the stimulus
    channel ``"stim"`` whose non-zero values are image-condition numbers
    at image onsets (``99999`` marks the target trials of the
    target-detection task, which are usually dropped);
``ch_names``, ``ch_types``
    lists of channel names and MNE channel types (``"eeg"``, ``"stim"``);
``sfreq``
    the sampling frequency (1000.).

:func:`read_things_eeg2_raw` turns such a file into an
:class:`mne.io.RawArray` with the fsaverage-fitted 10-05 positions of
:func:`mne_unfolded_sbl.datasets.make_montage` ``("things-eeg2")``.

Downloading
-----------
The files live in the dataset's OSF project https://osf.io/3jk45/ (folder
``raw_data``). OSF serves each file at ``https://osf.io/download/<file id>/``
where the file id is a short code that this package does not know (and
cannot look up offline). To let :func:`fetch_things_eeg2` download, fill
:data:`THINGS_EEG2_URLS` with the relative file name ->
``(url, known_hash)``, e.g.::

    from mne_unfolded_sbl import things_eeg2
    things_eeg2.THINGS_EEG2_URLS["sub-01/ses-01/raw_eeg_test.npy"] = (
        "https://osf.io/download/<file id>/", None)  # or "sha256:<hash>"

Otherwise download the file by hand and put it under the data folder
(``path`` argument, else ``$MNE_UNFOLDED_SBL_THINGS_EEG2_PATH``, else
``<MNE_DATA>/THINGS-EEG2``, with ``MNE_DATA`` defaulting to ``~/mne_data``)
as ``sub-01/ses-01/raw_eeg_test.npy`` (the dataset's own
``raw_data/sub-01/...`` layout below that folder is found too).
"""

# License: BSD-3-Clause

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from mne.utils import _check_option, _validate_type, logger, verbose, warn

__all__ = [
    "THINGS_EEG2_URLS",
    "TARGET_EVENT",
    "things_eeg2_fname",
    "things_eeg2_path",
    "fetch_things_eeg2",
    "read_things_eeg2_raw",
    "find_things_eeg2_events",
    "make_things_eeg2_epochs",
]

#: OSF project of the dataset.
OSF_PROJECT = "https://osf.io/3jk45/"
#: Download URLs: relative file name (``"sub-01/ses-01/raw_eeg_test.npy"``)
#: -> ``(url, known_hash)``; ``known_hash`` is ``"sha256:<hex>"`` or None.
#: Empty by default (see the module docs).
THINGS_EEG2_URLS: dict = {}
#: Event value of the target trials (catch images) in the stimulus channel.
TARGET_EVENT = 99999
#: Environment variable naming the local data folder.
PATH_ENV = "MNE_UNFOLDED_SBL_THINGS_EEG2_PATH"
_REQUIRED_KEYS = ("raw_eeg_data", "ch_names", "ch_types", "sfreq")
_PARTITIONS = ("training", "test")


def things_eeg2_fname(subject=1, session=1, partition="test"):
    """Relative file name, e.g. ``"sub-01/ses-01/raw_eeg_test.npy"``."""
    _validate_type(subject, "int-like", "subject")
    _validate_type(session, "int-like", "session")
    _check_option("partition", partition, _PARTITIONS)
    if not 1 <= int(subject) <= 10:
        raise ValueError(f"subject must be in 1..10, got {subject}.")
    if not 1 <= int(session) <= 4:
        raise ValueError(f"session must be in 1..4, got {session}.")
    return f"sub-{int(subject):02d}/ses-{int(session):02d}/raw_eeg_{partition}.npy"


def things_eeg2_path(path=None):
    """The local THINGS-EEG2 folder (see the module docs)."""
    if path is None:
        path = os.environ.get(PATH_ENV)
    if path is None:
        import mne

        path = Path(mne.get_config("MNE_DATA", "~/mne_data")) / "THINGS-EEG2"
    return Path(path).expanduser()


def fetch_things_eeg2(subject=1, session=1, partition="test", path=None, *,
                      url=None, known_hash=None, progressbar=False):
    """Return the local path of one THINGS-EEG2 raw file, downloading it.

    Parameters
    ----------
    subject : int
        Subject 1-10.
    session : int
        Session 1-4.
    partition : "test" | "training"
        Image partition (the test file is the smaller one: 200 images
        repeated 20 times per session).
    path : path-like | None
        Data folder (see the module docs).
    url : str | None
        Download URL of this file; None looks it up in
        :data:`THINGS_EEG2_URLS`.
    known_hash : str | None
        ``"sha256:<hex>"`` to check the download (None: not checked).
    progressbar : bool
        Show pooch's progress bar (needs tqdm).

    Returns
    -------
    fname : pathlib.Path
        The file.

    Raises
    ------
    RuntimeError
        If the file is not there and cannot be downloaded (no URL known, or
        no network), with instructions.
    """
    rel = things_eeg2_fname(subject, session, partition)
    root = things_eeg2_path(path)
    for cand in (root / rel, root / "raw_data" / rel,
                 root / "eeg_dataset" / "raw_data" / rel):
        if cand.is_file():
            logger.info(f"Using {cand}")
            return cand
    if url is None:
        url, hash_ = THINGS_EEG2_URLS.get(rel, (None, None))
        known_hash = known_hash or hash_
    if url is None:
        raise RuntimeError(
            f"THINGS-EEG2 file {rel} is not in {root} and no download URL is "
            f"known for it. Download it from the dataset's OSF project "
            f"{OSF_PROJECT} (folder raw_data) and save it as {root / rel}, "
            f"or set {PATH_ENV} to the folder holding sub-XX/ses-YY/, or "
            "register its URL: mne_unfolded_sbl.things_eeg2.THINGS_EEG2_URLS"
            f"[{rel!r}] = ('https://osf.io/download/<file id>/', None).")
    import pooch

    dest = root / Path(rel).parent
    try:
        fname = pooch.retrieve(url, known_hash=known_hash,
                               fname=Path(rel).name, path=dest,
                               progressbar=progressbar)
    except ValueError:
        raise  # hash mismatch: pooch's message says it
    except Exception as err:
        raise RuntimeError(
            f"Could not download THINGS-EEG2 file {rel} from {url} "
            f"({type(err).__name__}: {err}). Are you offline? Download it by "
            f"hand from {OSF_PROJECT} and save it as {root / rel}.") from err
    return Path(fname)


def _load_dict(fname):
    fname = Path(fname)
    if not fname.is_file():
        raise FileNotFoundError(f"No such file: {fname}")
    try:
        obj = np.load(fname, allow_pickle=True)
    except Exception as err:
        raise ValueError(f"{fname} is not a NumPy .npy file ({err}).") from None
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj.item()
    if not isinstance(obj, dict):
        raise ValueError(
            f"{fname} does not hold a THINGS-EEG2 raw-data dict (got "
            f"{type(obj).__name__}); expected keys {list(_REQUIRED_KEYS)}.")
    missing = [k for k in _REQUIRED_KEYS if k not in obj]
    if missing:
        raise ValueError(f"{fname} lacks the keys {missing} of the THINGS-EEG2 "
                         f"raw format (has {sorted(obj)}).")
    return obj


@verbose
def read_things_eeg2_raw(fname, *, montage=True, units="auto", verbose=None):
    """Read a THINGS-EEG2 raw ``.npy`` file into an :class:`mne.io.RawArray`.

    Parameters
    ----------
    fname : path-like
        A ``raw_eeg_{training,test}.npy`` file (see the module docs).
    montage : bool | mne.channels.DigMontage
        True sets the fsaverage-fitted positions of the THINGS-EEG2 cap
        (:func:`mne_unfolded_sbl.datasets.make_montage` ``("things-eeg2")``),
        which match the template forward models; a montage is set as given;
        False sets none.
    units : "auto" | "V" | "uV"
        Units of the stored EEG. ``"auto"`` assumes volts unless the median
        absolute EEG value exceeds 1e-2 (then microvolts, converted to
        volts, with a log message).
    %(verbose)s

    Returns
    -------
    raw : mne.io.RawArray
        EEG channels and the stimulus channel ``"stim"``; no reference
        projector (add one with ``raw.set_eeg_reference(projection=True)``).
    """
    import mne

    _check_option("units", units, ("auto", "V", "uV"))
    d = _load_dict(fname)
    data = np.asarray(d["raw_eeg_data"], dtype=np.float64)
    ch_names = [str(c) for c in d["ch_names"]]
    ch_types = [str(t) for t in d["ch_types"]]
    sfreq = float(np.asarray(d["sfreq"]).item())
    if data.ndim != 2 or data.shape[0] != len(ch_names):
        raise ValueError(
            f"raw_eeg_data has shape {data.shape}, but there are "
            f"{len(ch_names)} channel names (expected (n_channels, n_times)).")
    if len(ch_types) != len(ch_names):
        raise ValueError(f"{len(ch_types)} channel types for {len(ch_names)} "
                         "channels.")
    if not np.all(np.isfinite(data)):
        raise ValueError(f"{fname} contains NaN or infinite samples.")
    eeg = np.array([t == "eeg" for t in ch_types])
    if units == "uV" or (units == "auto" and eeg.any()
                         and np.median(np.abs(data[eeg])) > 1e-2):
        if units == "auto":
            logger.info("THINGS-EEG2: EEG values look like microvolts; "
                        "converting to volts.")
        data[eeg] *= 1e-6
    info = mne.create_info(ch_names, sfreq, ch_types)
    raw = mne.io.RawArray(data, info, verbose=False)
    if montage is not False and montage is not None:
        if montage is True:
            from .datasets import make_montage

            montage = make_montage("things-eeg2")
        unknown = [c for c, t in zip(ch_names, ch_types)
                   if t == "eeg" and c not in montage.ch_names]
        if unknown:
            warn(f"No template positions for EEG channels {unknown}; they are "
                 "marked bad.")
            raw.info["bads"] += unknown
        raw.set_montage(montage, on_missing="ignore")
    return raw


def find_things_eeg2_events(raw, *, include_targets=False):
    """Image-onset events from the ``"stim"`` channel.

    Parameters
    ----------
    raw : mne.io.Raw
        From :func:`read_things_eeg2_raw`.
    include_targets : bool
        Keep the target trials (event value :data:`TARGET_EVENT`).

    Returns
    -------
    events : ndarray, shape (n_events, 3)
        MNE events; the third column is the image-condition number.
    """
    import mne

    stim = [c for c, t in zip(raw.ch_names, raw.get_channel_types()) if t == "stim"]
    if not stim:
        raise ValueError("The raw data have no stimulus channel.")
    events = mne.find_events(raw, stim_channel=stim[0], shortest_event=1,
                             initial_event=True, verbose=False)
    if not include_targets:
        events = events[events[:, 2] != TARGET_EVENT]
    return events


@verbose
def make_things_eeg2_epochs(raw, *, tmin=-0.1, tmax=0.2, baseline=(None, 0.0),
                            include_targets=False, l_freq=None, h_freq=None,
                            decim=1, reject=None, verbose=None):
    """Epoch THINGS-EEG2 image onsets, average-referenced, ready to localise.

    Parameters
    ----------
    raw : mne.io.Raw
        From :func:`read_things_eeg2_raw`.
    tmin, tmax : float
        Epoch window in s (default -100 to 200 ms: a 100 ms baseline and the
        first 200 ms of the visual response, as in the paper).
    baseline : tuple
        Baseline correction window.
    include_targets : bool
        Keep the target trials.
    l_freq, h_freq : float | None
        Optional band-pass of the continuous data before epoching.
    decim : int
        Decimation of the epochs (1000 Hz data: ``decim=4`` gives 250 Hz).
    reject : dict | None
        Peak-to-peak rejection, e.g. ``dict(eeg=150e-6)``.
    %(verbose)s

    Returns
    -------
    epochs : mne.Epochs
        EEG-only epochs with an average-reference projector.
    """
    import mne

    events = find_things_eeg2_events(raw, include_targets=include_targets)
    if len(events) == 0:
        raise ValueError("No image-onset events found in the stimulus channel.")
    raw = raw.copy()
    if l_freq is not None or h_freq is not None:
        raw.load_data().filter(l_freq, h_freq, picks="eeg", verbose=False)
    raw.set_eeg_reference(projection=True, verbose=False)
    epochs = mne.Epochs(raw, events, event_id=None, tmin=tmin, tmax=tmax,
                        baseline=baseline, picks="eeg", decim=decim,
                        reject=reject, preload=True, verbose=False,
                        on_missing="ignore")
    logger.info(f"{len(epochs)} THINGS-EEG2 epochs ({tmin * 1e3:.0f} to "
                f"{tmax * 1e3:.0f} ms)")
    return epochs
