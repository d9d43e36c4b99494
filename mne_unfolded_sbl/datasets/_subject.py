"""Locate the real fsaverage subject or materialise the embedded template."""

import hashlib
import json
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

import mne
import nibabel
import nibabel.freesurfer
import numpy as np
from mne.io.constants import FIFF
from mne.utils import _check_option, logger, verbose

from ._atlas import ATLAS_FILE, write_aparc
from ._cache import CACHE_ENV, cache_dir, check_writable, discard  # noqa: F401

SUBJECT = "fsaverage"
SOURCES = ("auto", "embedded", "real", "download")
DATA_FILE = Path(__file__).parent / "data" / "fsaverage_template.npz"
BEM_SURFACES = ("inner_skull", "outer_skull", "outer_skin")
MARKER = "EMBEDDED_TEMPLATE"  # manifest flagging a (complete) embedded subject
REQUIRED_FILES = [f"surf/{h}.{s}" for h in ("lh", "rh") for s in ("white", "sphere")]
REQUIRED_FILES += [f"bem/{name}.surf" for name in BEM_SURFACES]
#: Version of the layout of the materialised subject (bump when files change).
LAYOUT = 2
#: fsaverage's MRI (surface RAS) coordinates are MNI305 (``mni_tal``)
#: coordinates, so its talairach.xfm is the identity (as in FreeSurfer's).
TALAIRACH_XFM = """MNI Transform File
% fsaverage is in MNI305 space: identity (written by mne_unfolded_sbl)

Transform_Type = Linear;
Linear_Transform =
 1.0 0.0 0.0 0.0
 0.0 1.0 0.0 0.0
 0.0 0.0 1.0 0.0;
"""
#: vox2ras of a FreeSurfer-conformed 256^3 1 mm volume with c_ras = 0, i.e.
#: scanner RAS = surface RAS (as for fsaverage).
CONFORMED_AFFINE = np.array(
    [[-1.0, 0, 0, 128], [0, 0, 1, -128], [0, -1, 0, 128], [0, 0, 0, 1]]
)


def _sha1(fname):
    return hashlib.sha1(Path(fname).read_bytes()).hexdigest()


@lru_cache(maxsize=1)
def _data_hash():
    """Hash of the embedded geometry (keys cached BEMs and forwards)."""
    return _sha1(DATA_FILE)[:12]


@lru_cache(maxsize=1)
def _subject_hash():
    """Hash of everything written into the materialised subject dir."""
    key = f"{_sha1(DATA_FILE)}-{_sha1(ATLAS_FILE)}-{LAYOUT}"
    return hashlib.sha1(key.encode()).hexdigest()[:12]


def load_template_geometry():
    """Return the embedded geometry as a dict of arrays (see the tools script)."""
    with np.load(DATA_FILE, allow_pickle=False) as npz:
        return dict(npz)


def _is_usable(subjects_dir):
    fs_dir = Path(subjects_dir) / SUBJECT
    return all((fs_dir / name).is_file() for name in REQUIRED_FILES)


def _real_candidates():
    """Subjects dirs where a downloaded fsaverage may live (none created)."""
    candidates = [mne.get_config("SUBJECTS_DIR")]
    mne_data = mne.get_config("MNE_DATA") or "~/mne_data"
    candidates.append(Path(mne_data) / "MNE-fsaverage-data")
    return [Path(c).expanduser() for c in candidates if c]


def _find_real():
    for subjects_dir in _real_candidates():
        if _is_usable(subjects_dir) and not _is_embedded(subjects_dir):
            return subjects_dir.resolve()
    return None


def _is_embedded(subjects_dir):
    return (Path(subjects_dir) / SUBJECT / MARKER).is_file()


def _download():
    subjects_dir = _real_candidates()[0]  # same choice as fetch_fsaverage(None)
    try:
        fs_dir = mne.datasets.fetch_fsaverage(subjects_dir=Path(subjects_dir))
    except Exception as err:
        raise RuntimeError(
            f"Could not download fsaverage to {subjects_dir} ({err}). Without "
            "internet access use source='embedded' (the bundled template)."
        ) from err
    return Path(fs_dir).parent


def _write_subject(fs_dir, geom):
    """Write the FreeSurfer-style files of the embedded template."""
    (fs_dir / "surf").mkdir(parents=True)
    (fs_dir / "bem").mkdir()
    tris, surf, bem = geom["tris"], fs_dir / "surf", fs_dir / "bem"
    for hemi in ("lh", "rh"):
        mne.write_surface(surf / f"{hemi}.white", geom[f"white_{hemi}"], tris)
        mne.write_surface(surf / f"{hemi}.sphere", geom["sphere"], tris)
        # for brain pictures (MNE's plotting reads these): fsaverage5
        # inflated surface, sulcal depth, curvature; sphere.reg = sphere
        # (the template *is* the registration target)
        mne.write_surface(surf / f"{hemi}.inflated", geom[f"inflated_{hemi}"], tris)
        mne.write_surface(surf / f"{hemi}.sphere.reg", geom["sphere"], tris)
        for morph in ("sulc", "curv"):
            nibabel.freesurfer.write_morph_data(
                surf / f"{hemi}.{morph}", geom[f"{morph}_{hemi}"])
    for name in BEM_SURFACES:
        mne.write_surface(bem / f"{name}.surf", geom[name], tris)
    mne.write_head_bem(
        bem / f"{SUBJECT}-head.fif",
        geom["outer_skin"] / 1000.0,
        tris,
        verbose=False,
    )
    trans = mne.transforms.Transform("head", "mri", geom["head_mri_t"])
    mne.write_trans(bem / f"{SUBJECT}-trans.fif", trans)
    fid = dict(zip(geom["fiducial_idents"].tolist(), geom["fiducials"]))
    dig = mne.channels.make_dig_montage(
        lpa=fid[FIFF.FIFFV_POINT_LPA],
        nasion=fid[FIFF.FIFFV_POINT_NASION],
        rpa=fid[FIFF.FIFFV_POINT_RPA],
        coord_frame="mri",
    ).dig
    mne.io.write_fiducials(bem / f"{SUBJECT}-fiducials.fif", dig, "mri")
    # MRI -> MNI (mne.vertex_to_mni, mne.read_talxfm): the identity, read
    # with the header geometry of mri/orig.mgz (an empty conformed volume:
    # no MRI image is shipped)
    (fs_dir / "mri" / "transforms").mkdir(parents=True)
    (fs_dir / "mri" / "transforms" / "talairach.xfm").write_text(TALAIRACH_XFM)
    nibabel.save(
        nibabel.MGHImage(np.zeros((256,) * 3, np.uint8), CONFORMED_AFFINE),
        fs_dir / "mri" / "orig.mgz",
    )
    # Desikan-Killiany labels (mne.read_labels_from_annot(..., "aparc"))
    (fs_dir / "label").mkdir()
    write_aparc(fs_dir / "label")
    manifest = {  # written last: marks a complete subject, checked when used
        "description": "fsaverage template generated by mne_unfolded_sbl.datasets",
        "files": {
            path.relative_to(fs_dir).as_posix(): [path.stat().st_size, _sha1(path)]
            for path in sorted(fs_dir.rglob("*"))
            if path.is_file()
        },
    }
    (fs_dir / MARKER).write_text(json.dumps(manifest, indent=1))


_VERIFIED = {}  # subjects dir -> file stats last verified by this process


def _check_subject(fs_dir):
    """Return None if the materialised subject is intact, else (path, reason)."""
    try:
        files = json.loads((fs_dir / MARKER).read_text())["files"]
        if not isinstance(files, dict) or not files:
            raise ValueError("no file list")
    except Exception as err:
        return fs_dir / MARKER, f"unreadable manifest: {type(err).__name__}: {err}"
    stats = {}
    for name, (size, _) in files.items():
        path = fs_dir / name
        try:
            stat = path.stat()
        except OSError:
            return path, "missing"
        if stat.st_size != size:
            return path, f"{stat.st_size} bytes instead of {size}"
        stats[name] = (stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if _VERIFIED.get(fs_dir) == stats:  # hashed already, unchanged since
        return None
    for name, (_, digest) in files.items():
        if _sha1(fs_dir / name) != digest:
            return fs_dir / name, "checksum mismatch"
    _VERIFIED[fs_dir] = stats
    return None


def _embedded_subjects_dir():
    """Materialise (once) and return the embedded template's subjects dir.

    The files are checked against the manifest written with them; a damaged
    subject (e.g. a truncated surface) is deleted, with a warning naming the
    file, and written again.
    """
    subjects_dir = cache_dir() / f"subjects-{_subject_hash()}"
    fs_dir = subjects_dir / SUBJECT
    if _is_embedded(subjects_dir):
        problem = _check_subject(fs_dir)
        if problem is None:
            return subjects_dir
        path, reason = problem
        discard(
            subjects_dir,
            "fsaverage template",
            f"{path}: {reason}",
            tree=True,
        )
    elif subjects_dir.exists():  # e.g. left by a killed process
        discard(subjects_dir, "fsaverage template", "incomplete", tree=True)
    logger.info(f"Writing the embedded fsaverage template to {subjects_dir}")
    check_writable(subjects_dir.parent)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-subjects-", dir=subjects_dir.parent))
    try:
        _write_subject(tmp / SUBJECT, load_template_geometry())
        try:
            tmp.rename(subjects_dir)  # atomic; fails if another process won
        except OSError:
            if not _is_embedded(subjects_dir):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return subjects_dir


def resolve_source(source):
    """Return (kind, subjects_dir) with kind ``"embedded"`` or ``"real"``."""
    _check_option("source", source, SOURCES)
    if source == "download":
        return "real", _download()
    if source in ("auto", "real"):
        subjects_dir = _find_real()
        if subjects_dir is not None:
            return "real", subjects_dir
        if source == "real":
            raise RuntimeError(
                "No downloaded fsaverage found (looked in "
                f"{[str(c) for c in _real_candidates()]}). Use source='download' "
                "(needs internet) or source='embedded'."
            )
    return "embedded", _embedded_subjects_dir()


@verbose
def get_subjects_dir(source="auto", *, verbose=None):
    """Return a FreeSurfer subjects dir that holds a usable ``fsaverage``.

    Parameters
    ----------
    source : ``"auto"`` | ``"embedded"`` | ``"real"`` | ``"download"``
        ``"auto"`` uses a real fsaverage already downloaded by
        :func:`mne.datasets.fetch_fsaverage` if one exists, else the embedded
        template. ``"embedded"`` always uses the template shipped with this
        package (written once to the cache dir, see ``MNE_UNFOLDED_SBL_CACHE``).
        ``"real"`` requires an already downloaded fsaverage. ``"download"``
        calls :func:`mne.datasets.fetch_fsaverage` (needs internet). Nothing is
        ever downloaded unless ``source="download"``.
    %(verbose)s

    Returns
    -------
    subjects_dir : pathlib.Path
        The subjects dir (``subjects_dir / "fsaverage"`` is the subject).

    Notes
    -----
    The embedded subject has the cortical surfaces, BEM surfaces,
    head<->MRI transform and fiducials, ``mri/transforms/talairach.xfm`` (the
    identity: fsaverage is in MNI305 space) with an empty ``mri/orig.mgz``
    that only carries its header geometry (for :func:`mne.vertex_to_mni`,
    :func:`mne.head_to_mni`), and the Desikan-Killiany ``label/?h.aparc.annot``
    (for :func:`mne.read_labels_from_annot`). It has no MRI image, no
    ``aseg`` and no other parcellation: use the real fsaverage for those.
    Its files are checked against checksums each time it is used; a damaged
    file is reported in a warning and the subject is written again.
    """
    return resolve_source(source)[1]
