"""THINGS-EEG2 raw data: download (OSF API + pooch), read into MNE, epoch.

THINGS-EEG2 (Gifford et al., 2022, NeuroImage 264:119754) has 64-channel
EEG (63 EEG channels of a 10-10 EasyCap layout plus a stimulus channel,
1000 Hz) of 10 subjects viewing rapid serial visual presentations of object
images, 4 sessions each, split into a ``training`` and a ``test`` image
partition. The paper this package implements localises the first 200 ms of
these visual evoked responses (appendix C.4).

Which data
----------
The dataset's OSF project https://osf.io/3jk45/ has two EEG components:

* **raw data**, OSF component ``crxs4`` (https://osf.io/crxs4/; the files
  sit on the component's figshare add-on, figshare article 18470912): one
  archive per subject, ``sub-XX.zip``, holding
  ``sub-XX/ses-YY/raw_eeg_{training,test}.npy`` -- the continuous
  recordings with all 63 EEG channels. This module uses these.
* **preprocessed data**, OSF component ``anp5v``: epoched (-200 to 800 ms),
  downsampled to 100 Hz and multivariate-noise-normalised (whitened across
  channels) responses of the 17 occipital and parietal channels only
  (``sub-XX/preprocessed_eeg_{training,test}.npy``; the authors' code
  selects the channels with the regular expression ``^O *|^P *``), plus
  63-channel versions (``sub-XX__63_channels.zip``) of the same whitened
  epochs. The whitening mixes the channels with a matrix that is not
  published, so these cannot be combined with a forward model: they are
  not used here.

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
    the sampling frequency (1000);
``highpass``, ``lowpass``
    the recording's filter settings (0.01 and 100 Hz), not used here.

:func:`read_things_eeg2_raw` turns such a file into an
:class:`mne.io.RawArray` with the fsaverage-fitted 10-05 positions of
:func:`mne_unfolded_sbl.datasets.make_montage` ``("things-eeg2")``.

Downloading
-----------
:func:`fetch_things_eeg2` returns the local file and downloads it only when
it is missing:

1. a file already in the data folder (``path`` argument, else
   ``$MNE_UNFOLDED_SBL_THINGS_EEG2_PATH``, else ``<MNE_DATA>/THINGS-EEG2``
   with ``MNE_DATA`` defaulting to ``~/mne_data``) as
   ``sub-01/ses-01/raw_eeg_test.npy`` (the dataset's own ``raw_data/...``
   and ``eeg_dataset/raw_data/...`` layouts are found too) is returned
   without any network access;
2. a subject archive already in ``<data folder>/archives/sub-01.zip`` (put
   there by an earlier download, or by hand) is extracted from, again
   without network access;
3. otherwise :func:`resolve_things_eeg2` looks the file up at run time in
   the OSF API (``https://api.osf.io/v2/nodes/crxs4/files/``: every
   storage provider of the component, folders walked, pages followed via
   ``links.next``), falling back to the figshare API
   (``https://api.figshare.com/v2/articles/18470912``). A listed ``.npy``
   is downloaded directly; otherwise the subject's ``sub-XX.zip`` is
   downloaded into ``<data folder>/archives/`` and the one file is
   extracted (its CRC-32 is checked). Downloads go through :mod:`pooch`
   with the hash the API publishes for the file (SHA-256 where OSF stores
   it, else MD5) as ``known_hash``; a mismatch is an error, and a file
   whose hash matches is never downloaded again.

The subject archives are large: about 11 GB each by third-party reports
(the exact size is in the API metadata, :attr:`RemoteFile.size`, and is
logged before a download starts); one ``raw_eeg_test.npy`` is of the order
of 0.7 GB. :data:`THINGS_EEG2_URLS` still takes explicit
``(url, known_hash)`` entries, which are used instead of the API.
"""

# License: BSD-3-Clause

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import zipfile
from pathlib import Path

import mne
import numpy as np
import pooch
from mne.utils import _check_option, _validate_type, logger, verbose, warn

from .datasets import make_montage

__all__ = [
    "THINGS_EEG2_URLS",
    "TARGET_EVENT",
    "OSF_PROJECT",
    "OSF_RAW_NODE",
    "OSF_PREPROCESSED_NODE",
    "FIGSHARE_RAW_ARTICLE",
    "PATH_ENV",
    "RemoteFile",
    "things_eeg2_fname",
    "things_eeg2_path",
    "list_osf_files",
    "list_figshare_files",
    "resolve_things_eeg2",
    "fetch_things_eeg2",
    "read_things_eeg2_raw",
    "find_things_eeg2_events",
    "make_things_eeg2_epochs",
]

#: OSF project of the dataset.
OSF_PROJECT = "https://osf.io/3jk45/"
#: OSF component with the raw recordings (63 EEG channels, one zip per subject).
OSF_RAW_NODE = "crxs4"
#: OSF component with the authors' preprocessed (whitened, epoched) data;
#: not usable for source imaging (see the module docs).
OSF_PREPROCESSED_NODE = "anp5v"
#: figshare article holding the raw-data archives (backs :data:`OSF_RAW_NODE`).
FIGSHARE_RAW_ARTICLE = 18470912
#: Root of the OSF v2 JSON:API.
OSF_API = "https://api.osf.io/v2"
#: Root of the figshare v2 API.
FIGSHARE_API = "https://api.figshare.com/v2"
#: Explicit download URLs: relative file name
#: (``"sub-01/ses-01/raw_eeg_test.npy"``) -> ``(url, known_hash)`` with
#: ``known_hash`` ``"sha256:<hex>"``, ``"md5:<hex>"`` or None. Entries are
#: used instead of the API look-up; empty by default.
THINGS_EEG2_URLS: dict = {}
#: Event value of the target trials (catch images) in the stimulus channel.
TARGET_EVENT = 99999
#: Environment variable naming the local data folder.
PATH_ENV = "MNE_UNFOLDED_SBL_THINGS_EEG2_PATH"
_REQUIRED_KEYS = ("raw_eeg_data", "ch_names", "ch_types", "sfreq")
_PARTITIONS = ("training", "test")
_SOURCES = ("auto", "osf", "figshare")
# Preferred storage providers of an OSF component, best first.
_PROVIDER_ORDER = ("osfstorage", "figshare", "googledrive")
_MAX_PAGES = 200  # guard against a runaway folder walk
_TIMEOUT = 60.0  # s, for API requests and (per read) for downloads


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    """A downloadable file found by :func:`resolve_things_eeg2`.

    Attributes
    ----------
    path : str
        Path in the remote storage (``"/"``-separated, no leading slash),
        e.g. ``"sub-01.zip"`` or ``"THINGS-EEG2 raw/sub-01.zip"``.
    url : str
        Download URL.
    size : int | None
        Size in bytes, as the API reports it.
    known_hash : str | None
        ``"sha256:<hex>"`` or ``"md5:<hex>"`` as published by the API (the
        ``known_hash`` of :func:`pooch.retrieve`), None if none is
        published.
    source : str
        Where it was listed, e.g. ``"osf:crxs4/figshare"`` or
        ``"figshare:18470912"``.
    member : str | None
        For an archive: the relative file name to extract from it
        (matched against the end of the member names), else None.
    """

    path: str
    url: str
    size: int | None = None
    known_hash: str | None = None
    source: str = ""
    member: str | None = None

    @property
    def name(self):
        """The file name (last component of :attr:`path`)."""
        return self.path.rsplit("/", 1)[-1]


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
        path = Path(mne.get_config("MNE_DATA", "~/mne_data")) / "THINGS-EEG2"
    return Path(path).expanduser()


# -- HTTP ----------------------------------------------------------------------
# The two functions below are the only places that touch the network (tests
# replace them).


def _get_json(url):
    """GET ``url`` and decode its JSON body."""
    import requests  # a dependency of pooch

    resp = requests.get(url, timeout=_TIMEOUT,
                        headers={"Accept": "application/json"})
    resp.raise_for_status()
    return resp.json()


def _downloader(url, progressbar=False):
    """The pooch downloader for ``url`` (HTTP(S), redirects followed)."""
    return pooch.HTTPDownloader(progressbar=progressbar, timeout=_TIMEOUT)


def _is_network_error(err):
    """A failed request (connection, timeout, HTTP status), not a local
    file-system problem."""
    import requests

    if isinstance(err, requests.exceptions.RequestException):
        return True
    local = (PermissionError, FileNotFoundError, IsADirectoryError,
             NotADirectoryError, FileExistsError)
    return isinstance(err, OSError) and not isinstance(err, local)


# -- listing ---------------------------------------------------------------------


def _published_hash(attributes):
    """``"sha256:..."`` / ``"md5:..."`` from OSF ``attributes.extra.hashes``."""
    hashes = ((attributes or {}).get("extra") or {}).get("hashes") or {}
    for alg in ("sha256", "md5"):
        value = hashes.get(alg)
        if isinstance(value, str) and re.fullmatch(r"[0-9a-fA-F]+", value):
            return f"{alg}:{value.lower()}"
    return None


def _osf_pages(url, counter):
    """Yield the ``data`` items of ``url`` and of every ``links.next`` page."""
    while url:
        counter[0] += 1
        if counter[0] > _MAX_PAGES:
            raise RuntimeError(f"OSF listing exceeded {_MAX_PAGES} pages "
                               f"(last: {url}); giving up.")
        page = _get_json(url)
        if not isinstance(page, dict) or not isinstance(page.get("data"), list):
            raise RuntimeError(f"Unexpected OSF API response from {url}: no "
                               "'data' list (not a JSON:API listing).")
        yield from page["data"]
        url = (page.get("links") or {}).get("next")


def _related_href(item):
    rel = (item.get("relationships") or {}).get("files") or {}
    return ((rel.get("links") or {}).get("related") or {}).get("href")


def list_osf_files(node=OSF_RAW_NODE, *, providers=None, descend=None):
    """List the files of an OSF node through the OSF v2 JSON:API.

    Parameters
    ----------
    node : str
        OSF node (project or component) id, e.g. ``"crxs4"``.
    providers : list of str | None
        Storage providers to walk (``"osfstorage"``, ``"figshare"``, ...);
        None walks every provider the node lists
        (``https://api.osf.io/v2/nodes/<node>/files/``).
    descend : callable | None
        ``descend(folder_path) -> bool`` decides whether a folder is
        listed (None: every folder).

    Returns
    -------
    files : list of RemoteFile
        With ``source`` ``"osf:<node>/<provider>"``.
    """
    counter = [0]
    root = f"{OSF_API}/nodes/{node}/files/"
    if providers is None:
        starts = []
        for item in _osf_pages(root, counter):
            attrs = item.get("attributes") or {}
            href = _related_href(item)
            prov = attrs.get("provider") or attrs.get("name")
            if href and prov:
                starts.append((prov, href))
    else:
        starts = [(prov, f"{root}{prov}/") for prov in providers]
    files = []
    for prov, href in starts:
        queue = [("", href)]
        while queue:
            folder, url = queue.pop(0)
            for item in _osf_pages(url, counter):
                attrs = item.get("attributes") or {}
                name = attrs.get("name", "")
                mpath = attrs.get("materialized_path")
                path = (mpath.strip("/") if mpath
                        else f"{folder}/{name}".strip("/"))
                if attrs.get("kind") == "folder":
                    sub = _related_href(item)
                    if sub and (descend is None or descend(path)):
                        queue.append((path, sub))
                elif attrs.get("kind") == "file":
                    url_dl = (item.get("links") or {}).get("download")
                    if not url_dl:
                        continue
                    files.append(RemoteFile(
                        path=path, url=url_dl, size=attrs.get("size"),
                        known_hash=_published_hash(attrs),
                        source=f"osf:{node}/{prov}"))
    return files


def list_figshare_files(article=FIGSHARE_RAW_ARTICLE):
    """List the files of a figshare article through the figshare v2 API.

    Returns
    -------
    files : list of RemoteFile
        ``known_hash`` is ``"md5:<computed_md5>"``; ``source``
        ``"figshare:<article>"``.
    """
    url = f"{FIGSHARE_API}/articles/{article}"
    meta = _get_json(url)
    if not isinstance(meta, dict) or not isinstance(meta.get("files"), list):
        raise RuntimeError(f"Unexpected figshare API response from {url}: no "
                           "'files' list.")
    files = []
    for f in meta["files"]:
        md5 = f.get("computed_md5") or f.get("supplied_md5")
        if not f.get("download_url") or not f.get("name"):
            continue
        files.append(RemoteFile(
            path=f["name"], url=f["download_url"], size=f.get("size"),
            known_hash=f"md5:{md5.lower()}" if md5 else None,
            source=f"figshare:{article}"))
    return files


def _folder_filter(subject, session):
    """Skip the folders of other subjects and sessions."""
    sub_re = re.compile(r"^sub-0*(\d+)$")
    ses_re = re.compile(r"^ses-0*(\d+)$")

    def descend(folder_path):
        name = folder_path.rsplit("/", 1)[-1]
        m = sub_re.match(name)
        if m and int(m.group(1)) != int(subject):
            return False
        m = ses_re.match(name)
        if m and int(m.group(1)) != int(session):
            return False
        return True

    return descend


def _pick(files, rel, archive_name):
    """The best listed file: the ``.npy`` itself, else the subject archive."""

    def rank(f):
        prov = f.source.rsplit("/", 1)[-1]
        hash_rank = (0 if (f.known_hash or "").startswith("sha256:")
                     else 1 if f.known_hash else 2)
        prov_rank = (_PROVIDER_ORDER.index(prov) if prov in _PROVIDER_ORDER
                     else len(_PROVIDER_ORDER))
        return hash_rank, prov_rank

    direct = [f for f in files if f.path == rel or f.path.endswith("/" + rel)]
    if direct:
        return min(direct, key=rank)
    archives = [f for f in files if f.name == archive_name]
    if archives:
        return dataclasses.replace(min(archives, key=rank), member=rel)
    return None


def _describe(files, n=30):
    def fmt(f):
        size = "" if f.size is None else f" ({_fmt_size(f.size)})"
        return f"{f.path}{size}"

    if not files:
        return "no files at all"
    lines = [fmt(f) for f in sorted(files, key=lambda f: f.path)[:n]]
    more = f", ... ({len(files) - n} more)" if len(files) > n else ""
    return ", ".join(lines) + more


def _fmt_size(n):
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _manual_help(rel, root):
    sub = rel.split("/", 1)[0]
    return (f"To install it by hand: download {sub}.zip from the raw-data "
            f"component https://osf.io/{OSF_RAW_NODE}/ (also figshare article "
            f"{FIGSHARE_RAW_ARTICLE}) and either put it at "
            f"{root / 'archives' / (sub + '.zip')} or extract {rel} from it "
            f"and save it as {root / rel}; or set {PATH_ENV} to a folder that "
            "holds sub-XX/ses-YY/raw_eeg_*.npy.")


def resolve_things_eeg2(subject=1, session=1, partition="test", *,
                        source="auto", path=None):
    """Find where to download one THINGS-EEG2 raw file (needs network).

    Parameters
    ----------
    subject : int
        Subject 1-10.
    session : int
        Session 1-4.
    partition : "test" | "training"
        Image partition.
    source : "auto" | "osf" | "figshare"
        ``"osf"`` lists the OSF component :data:`OSF_RAW_NODE` (all its
        storage providers; folders of other subjects or sessions are not
        walked), ``"figshare"`` the figshare article
        :data:`FIGSHARE_RAW_ARTICLE`; ``"auto"`` tries OSF, then figshare.
    path : path-like | None
        Data folder named in the error message's instructions (see
        :func:`things_eeg2_path`).

    Returns
    -------
    remote : RemoteFile
        The ``.npy`` itself if a listing has it, else the subject archive
        ``sub-XX.zip`` with :attr:`RemoteFile.member` set. Among copies,
        one with a published SHA-256 is preferred, then MD5.

    Raises
    ------
    RuntimeError
        If no listing could be fetched (offline), or none has the file or
        its archive (the message lists what the listings hold).
    """
    _check_option("source", source, _SOURCES)
    rel = things_eeg2_fname(subject, session, partition)
    archive_name = f"sub-{int(subject):02d}.zip"
    tried = []
    errors = []
    offline = False
    providers = (
        ("osf", f"OSF node {OSF_RAW_NODE}", "OSF API",
         f"{OSF_API}/nodes/{OSF_RAW_NODE}/files/",
         lambda: list_osf_files(OSF_RAW_NODE,
                                descend=_folder_filter(subject, session))),
        ("figshare", f"figshare article {FIGSHARE_RAW_ARTICLE}",
         "figshare API", f"{FIGSHARE_API}/articles/{FIGSHARE_RAW_ARTICLE}",
         lambda: list_figshare_files(FIGSHARE_RAW_ARTICLE)),
    )
    for name, what, api, url, listing in providers:
        if source not in ("auto", name):
            continue
        try:
            files = listing()
        except Exception as err:
            if not _is_network_error(err) and not isinstance(err, RuntimeError):
                raise
            offline = offline or _is_network_error(err)
            errors.append(f"{api} {url}: {type(err).__name__}: {err}")
            continue
        remote = _pick(files, rel, archive_name)
        if remote is not None:
            return remote
        tried.append(f"{what} ({url}) lists {_describe(files)}")
    msg = (f"Cannot locate THINGS-EEG2 file {rel} (or its archive "
           f"{archive_name}) online.")
    if tried:
        msg += " " + "; ".join(tried) + "."
    if errors:
        msg += (" Could not list " + "; ".join(errors) + "."
                + (" Are you offline?" if offline else ""))
    raise RuntimeError(msg + " " + _manual_help(rel, things_eeg2_path(path)))


# -- fetching --------------------------------------------------------------------


def _extract_member(archive, rel, dest):
    """Extract the member of ``archive`` whose name ends with ``rel``."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as err:
        raise RuntimeError(f"{archive} is not a readable zip archive ({err}); "
                           "delete it to download it again.") from None
    with zf:
        names = [n for n in zf.namelist() if not n.endswith("/")]
        norm = {n: n.replace("\\", "/").lstrip("./") for n in names}
        hits = [n for n in names if norm[n] == rel or norm[n].endswith("/" + rel)]
        if not hits:
            npys = [n for n in names if n.endswith(".npy")] or names
            shown = ", ".join(npys[:20]) + (", ..." if len(npys) > 20 else "")
            raise RuntimeError(f"{archive} has no member {rel}; it holds "
                               f"{len(names)} file(s): {shown or 'none'}.")
        member = min(hits, key=len)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        logger.info(f"Extracting {member} from {archive} to {dest}")
        try:
            with zf.open(member) as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 22)  # CRC-32 checked at EOF
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            tmp.unlink(missing_ok=True)
            raise RuntimeError(f"Extracting {member} from {archive} failed "
                               f"({err}); the archive is corrupt, delete it "
                               "to download it again.") from None
        os.replace(tmp, dest)
    return dest


def _retrieve(url, known_hash, fname, folder, progressbar, rel, root):
    """pooch.retrieve with this module's error messages."""
    if known_hash is None:
        warn(f"No published hash for {url}; the download of {fname} is not "
             "verified (members of a zip archive are still CRC-checked).")
    try:
        out = pooch.retrieve(url, known_hash=known_hash, fname=fname,
                             path=folder, progressbar=progressbar,
                             downloader=_downloader(url, progressbar))
    except ValueError as err:  # pooch: hash mismatch
        raise ValueError(f"Download of {fname} from {url} failed the check "
                         f"against the published hash {known_hash}: {err}") from err
    except Exception as err:
        if not _is_network_error(err):
            raise
        raise RuntimeError(
            f"Could not download THINGS-EEG2 file {fname} from {url} "
            f"({type(err).__name__}: {err}). Are you offline? "
            + _manual_help(rel, root)) from err
    return Path(out)


@verbose
def fetch_things_eeg2(subject=1, session=1, partition="test", path=None, *,
                      source="auto", url=None, known_hash=None,
                      keep_archive=True, progressbar=False, verbose=None):
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
    source : "auto" | "osf" | "figshare"
        Where to look the file up (:func:`resolve_things_eeg2`).
    url : str | None
        Download URL of this ``.npy`` file, bypassing the look-up; None
        uses :data:`THINGS_EEG2_URLS` if it has the file, else the API.
    known_hash : str | None
        ``"sha256:<hex>"`` or ``"md5:<hex>"`` for ``url`` (None: not
        checked). Ignored for looked-up files, whose published hash is
        used.
    keep_archive : bool
        Keep a downloaded subject archive in ``<path>/archives/`` (the
        other sessions and partitions of the subject are then extracted
        from it without downloading again). False deletes it after the
        extraction.
    progressbar : bool
        Show pooch's progress bar (needs tqdm).
    %(verbose)s

    Returns
    -------
    fname : pathlib.Path
        The file.

    Raises
    ------
    RuntimeError
        If the file is not there and cannot be downloaded (offline, or not
        listed), with instructions: the URL tried, where to put the file
        by hand, and the environment variable.
    ValueError
        If a download does not match its published hash.
    """
    rel = things_eeg2_fname(subject, session, partition)
    root = things_eeg2_path(path)
    for cand in (root / rel, root / "raw_data" / rel,
                 root / "eeg_dataset" / "raw_data" / rel):
        if cand.is_file():
            logger.info(f"Using {cand}")
            return cand
    dest = root / rel
    # a subject archive already here: extract, no network
    archive_name = f"sub-{int(subject):02d}.zip"
    for archive in (root / "archives" / archive_name, root / archive_name):
        if archive.is_file() and url is None and rel not in THINGS_EEG2_URLS:
            return _extract_member(archive, rel, dest)
    if url is None and rel in THINGS_EEG2_URLS:
        url, hash_ = THINGS_EEG2_URLS[rel]
        known_hash = known_hash or hash_
    if url is not None:
        return _retrieve(url, known_hash, dest.name, dest.parent, progressbar,
                         rel, root)
    remote = resolve_things_eeg2(subject, session, partition, source=source,
                                 path=root)
    size = "unknown size" if remote.size is None else _fmt_size(remote.size)
    logger.info(f"THINGS-EEG2: downloading {remote.name} ({size}) from "
                f"{remote.url} [{remote.source}, hash "
                f"{remote.known_hash or 'none published'}]")
    if remote.member is None:
        return _retrieve(remote.url, remote.known_hash, dest.name, dest.parent,
                         progressbar, rel, root)
    archive = _retrieve(remote.url, remote.known_hash, remote.name,
                        root / "archives", progressbar, rel, root)
    out = _extract_member(archive, rel, dest)
    if not keep_archive:
        archive.unlink(missing_ok=True)
    return out


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
