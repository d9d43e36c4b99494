#!/usr/bin/env python
"""Regenerate the embedded fsaverage template geometry.

Writes ``mne_unfolded_sbl/datasets/data/fsaverage_template.npz`` from files
that installed packages ship:

* ``mne/data/fsaverage/``: scalp (``fsaverage-head.fif``), inner skull
  (``fsaverage-inner_skull-bem.fif``), head<->MRI trans and fiducials;
* ``nilearn/datasets/data/fsaverage5/``: white and sphere surfaces
  (fsaverage5 = the first 10242 vertices of fsaverage, ico5 topology).

The outer skull is shipped nowhere, so it is synthesised. All three BEM
surfaces are re-meshed on the same uniform ico5 ray directions cast from the
inner-skull centroid, which makes them star-shaped, nested and isomorphic to
MNE's subdivided icosahedron (required by ``mne.make_bem_model(ico=...)``):

1. scalp radius = outermost intersection of the ray with the scalp mesh;
2. inner-skull radius = outermost intersection with the inner-skull mesh
   (this removes its small self-crossings at the skull base);
3. skull thickness = smoothed half of the skull-scalp gap, clipped to
   [THICK_MIN, THICK_MAX] mm and to at most (gap - SCALP_MIN) mm, i.e. the
   outer skull stays at least SCALP_MIN mm inside the scalp.

Usage::

    python tools/make_template_geometry.py [--out PATH]

nilearn is only needed to run this script, not at runtime.
"""

import argparse
from pathlib import Path

import mne
import nibabel as nib
import numpy as np
from mne.surface import _get_ico_surface

GRADE = 5  # ico grade of the stored BEM surfaces (10242 vertices each)
THICK_MIN, THICK_MAX = 3.0, 7.0  # mm, bounds of the synthetic skull thickness
SCALP_MIN = 2.0  # mm, minimum scalp (skin) thickness outside the outer skull
SMOOTH_ITER = 10  # neighbour-averaging iterations for the thickness map
FORMAT_VERSION = 1

OUT = (
    Path(__file__).resolve().parents[1]
    / "mne_unfolded_sbl"
    / "datasets"
    / "data"
    / "fsaverage_template.npz"
)


def ray_mesh_distances(origin, dirs, rr, tris, chunk=128):
    """Return the largest positive ray/mesh intersection distance per ray.

    Möller-Trumbore, vectorised over triangles, chunked over rays. Rays that
    miss the mesh get NaN.
    """
    v0 = rr[tris[:, 0]] - origin
    e1 = rr[tris[:, 1]] - rr[tris[:, 0]]
    e2 = rr[tris[:, 2]] - rr[tris[:, 0]]
    out = np.full(len(dirs), np.nan)
    eps = 1e-12
    for start in range(0, len(dirs), chunk):
        d = dirs[start : start + chunk, np.newaxis]  # (c, 1, 3)
        p = np.cross(d, e2)  # (c, t, 3)
        det = np.einsum("tk,ctk->ct", e1, p)
        ok = np.abs(det) > eps
        inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
        s = -v0  # origin - v0, (t, 3)
        u = np.einsum("tk,ctk->ct", s, p) * inv
        q = np.cross(s, e1)  # (t, 3)
        v = np.einsum("ctk,tk->ct", d, q) * inv
        t = np.einsum("tk,tk->t", e2, q) * inv
        hit = ok & (u >= -1e-9) & (v >= -1e-9) & (u + v <= 1 + 1e-9) & (t > 0)
        t = np.where(hit, t, -np.inf).max(axis=1)
        out[start : start + chunk] = np.where(np.isfinite(t), t, np.nan)
    return out


def smooth_on_mesh(values, tris, n_iter):
    """Average each vertex value with its mesh neighbours ``n_iter`` times."""
    adj = mne.surface.mesh_edges(tris).tocsr()  # symmetric 0/1 adjacency
    deg = np.asarray(adj.sum(axis=1)).ravel()
    for _ in range(n_iter):
        values = (values + adj @ values) / (1.0 + deg)
    return values


def read_gifti(fname):
    """Return (rr, tris) of a GIfTI surface."""
    darrays = nib.load(fname).darrays
    return darrays[0].data.astype(np.float32), darrays[1].data.astype(np.int32)


def build(out=OUT):
    """Build and save the template geometry; return the saved dict."""
    import nilearn

    mne_dir = Path(mne.__file__).parent / "data" / "fsaverage"
    nl_dir = Path(nilearn.__file__).parent / "datasets" / "data" / "fsaverage5"
    scalp = mne.read_bem_surfaces(mne_dir / "fsaverage-head.fif", verbose=False)[0]
    inner = mne.read_bem_surfaces(
        mne_dir / "fsaverage-inner_skull-bem.fif", verbose=False
    )[0]
    for surf in (scalp, inner):
        assert surf["coord_frame"] == mne.io.constants.FIFF.FIFFV_COORD_MRI
    trans = mne.read_trans(mne_dir / "fsaverage-trans.fif")
    fids, fid_frame = mne.io.read_fiducials(mne_dir / "fsaverage-fiducials.fif")
    assert fid_frame == mne.io.constants.FIFF.FIFFV_COORD_MRI

    ico = _get_ico_surface(GRADE)
    dirs = ico["rr"] / np.linalg.norm(ico["rr"], axis=1, keepdims=True)
    tris = ico["tris"].astype(np.int32)
    center = inner["rr"].mean(axis=0)  # metres, MRI (surface RAS)

    r_scalp = ray_mesh_distances(center, dirs, scalp["rr"], scalp["tris"]) * 1e3
    r_inner = ray_mesh_distances(center, dirs, inner["rr"], inner["tris"]) * 1e3
    if np.isnan(r_scalp).any() or np.isnan(r_inner).any():
        raise RuntimeError("Some rays missed a surface: meshes not closed?")
    gap = r_scalp - r_inner
    if gap.min() < THICK_MIN + SCALP_MIN:
        raise RuntimeError(f"Skull-scalp gap too small: {gap.min():.1f} mm")
    thick = np.clip(smooth_on_mesh(0.5 * gap, tris, SMOOTH_ITER), THICK_MIN, THICK_MAX)
    thick = np.minimum(thick, gap - SCALP_MIN)
    r_outer = r_inner + thick

    center_mm = center * 1e3
    surfs = {
        name: (center_mm + dirs * r[:, np.newaxis]).astype(np.float32)
        for name, r in (
            ("inner_skull", r_inner),
            ("outer_skull", r_outer),
            ("outer_skin", r_scalp),
        )
    }
    white_lh, white_tris = read_gifti(nl_dir / "white_left.gii.gz")
    white_rh, tris_rh = read_gifti(nl_dir / "white_right.gii.gz")
    sphere, sphere_tris = read_gifti(nl_dir / "sphere_left.gii.gz")
    sphere_rh, _ = read_gifti(nl_dir / "sphere_right.gii.gz")
    # fsaverage5 shares the ico5 topology (and vertex order) with MNE's ico
    for other in (tris_rh, sphere_tris):
        assert np.array_equal(white_tris, other)
    assert np.array_equal(white_tris, tris)
    assert np.array_equal(sphere, sphere_rh)
    # for brain pictures: inflated surfaces, sulcal depth and curvature
    pictures = {}
    for hemi, side in (("lh", "left"), ("rh", "right")):
        infl, infl_tris = read_gifti(nl_dir / f"infl_{side}.gii.gz")
        assert np.array_equal(infl_tris, tris)
        pictures[f"inflated_{hemi}"] = infl.astype(np.float32)
        for morph in ("sulc", "curv"):
            img = nib.load(nl_dir / f"{morph}_{side}.gii.gz")
            pictures[f"{morph}_{hemi}"] = np.asarray(
                img.darrays[0].data, np.float32)

    data = dict(
        format_version=np.int32(FORMAT_VERSION),
        tris=tris,
        center=center_mm.astype(np.float32),  # ray origin (mm, MRI)
        inner_skull=surfs["inner_skull"],
        outer_skull=surfs["outer_skull"],
        outer_skin=surfs["outer_skin"],
        white_lh=white_lh,
        white_rh=white_rh,
        sphere=sphere,
        **pictures,
        head_mri_t=trans["trans"].astype(np.float64),
        fiducials=np.array([f["r"] for f in fids], np.float64),  # metres, MRI
        fiducial_idents=np.array([f["ident"] for f in fids], np.int32),
        thickness_bounds=np.array([THICK_MIN, THICK_MAX, SCALP_MIN], np.float32),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **data)
    print(f"Wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")
    print(
        f"  skull thickness  {thick.min():.1f}-{thick.max():.1f} mm "
        f"(median {np.median(thick):.1f})\n"
        f"  scalp thickness  {(r_scalp - r_outer).min():.1f}-"
        f"{(r_scalp - r_outer).max():.1f} mm "
        f"(median {np.median(r_scalp - r_outer):.1f})\n"
        f"  inner radius     {r_inner.min():.1f}-{r_inner.max():.1f} mm"
    )
    return data


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    build(parser.parse_args().out)


if __name__ == "__main__":
    main()
