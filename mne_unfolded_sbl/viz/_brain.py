"""The headless brain renderer behind :func:`~mne_unfolded_sbl.viz.plot_source_estimate`.

Backend detection, cortical surfaces, values on the mesh and the two
renderers:

``"pyvista"``
    PyVista/VTK off-screen rendering (smooth shading, lighting). Used when
    :mod:`pyvista` is installed *and* a one-off probe in a subprocess shows
    that VTK can render without a display (EGL or OSMesa; on Debian the
    packages ``libegl1`` + ``libegl-mesa0``, or ``libosmesa6``). The probe
    runs in a subprocess because a VTK that finds no OpenGL at all can abort
    the whole process.
``"matplotlib"``
    A dependency-free orthographic renderer: the cortical triangle mesh is
    projected, depth-sorted (painter's algorithm), back-face culled and
    Lambert-shaded into a :class:`matplotlib.collections.PolyCollection`.
    Always available; about a second per figure.

The optional packages (pyvista, nilearn) are reached through
:func:`mne_unfolded_sbl.core._utils.soft_import` and
:func:`~mne_unfolded_sbl.core._utils.has_module`.
"""

# License: BSD-3-Clause

from __future__ import annotations

import gzip
import importlib.util
import os
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
from mne.utils import _check_option, _validate_type, logger

from ..core._utils import has_module, soft_import

#: Camera definitions: direction from the brain towards the viewer ("eye")
#: and the screen-up vector, in FreeSurfer surface RAS (x right, y anterior,
#: z superior).
VIEWS = {
    "lateral": None,  # hemisphere dependent, see _camera
    "medial": None,
    "posterior": (np.array([0.0, -1.0, 0.0]), np.array([0.0, 0.0, 1.0])),
    "anterior": (np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, 1.0])),
    "dorsal": (np.array([0.0, 0.0, 1.0]), np.array([0.0, 1.0, 0.0])),
    "ventral": (np.array([0.0, 0.0, -1.0]), np.array([0.0, 1.0, 0.0])),
}
#: Views that show one hemisphere per panel.
_HEMI_VIEWS = ("lateral", "medial")
_BACKENDS = ("auto", "pyvista", "matplotlib")
_ENV_BACKEND = "MNE_UNFOLDED_SBL_3D"
_CORTEX_LIGHT, _CORTEX_DARK = 0.78, 0.52  # gyri / sulci grey levels
_BACKGROUND = (1.0, 1.0, 1.0)
#: Larger surfaces are drawn on their ico5 subset (see _decimate).
_MAX_DISPLAY_VERTICES = 40962


# ----------------------------------------------------------------------------
# backend choice


_PROBE = r"""
import numpy as np
import pyvista as pv
pv.OFF_SCREEN = True
p = pv.Plotter(off_screen=True, window_size=(64, 64))
p.add_mesh(pv.Sphere(), color="red")
img = p.screenshot(return_img=True)
p.close()
print("OK" if np.asarray(img).std() > 1 else "BLANK")
"""


@lru_cache(maxsize=1)
def _probe_pyvista():
    """True if PyVista renders off-screen here (checked in a subprocess)."""
    if not has_module("pyvista"):
        return False
    try:
        res = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True,
                             text=True, timeout=120)
    except Exception as err:  # pragma: no cover - timeout etc.
        logger.info(f"PyVista off-screen probe failed ({err})")
        return False
    ok = res.returncode == 0 and "OK" in res.stdout
    if not ok:
        logger.info("PyVista cannot render off-screen here; using the "
                    "matplotlib renderer.")
    return ok


def available_3d_backend():
    """Return the renderer ``backend="auto"`` uses: "pyvista" or "matplotlib".

    Set the environment variable ``MNE_UNFOLDED_SBL_3D`` to ``"matplotlib"``
    or ``"pyvista"`` to force one.
    """
    env = os.environ.get(_ENV_BACKEND, "").strip().lower()
    if env in ("matplotlib", "mpl", "0", "off", "false"):
        return "matplotlib"
    if env == "pyvista":
        return "pyvista"
    return "pyvista" if _probe_pyvista() else "matplotlib"


def resolve_backend(backend):
    _check_option("backend", backend, _BACKENDS)
    if backend == "auto":
        return available_3d_backend()
    if backend == "pyvista":
        soft_import("pyvista", "backend='pyvista'")
    return backend


# ----------------------------------------------------------------------------
# surfaces


def _read_gifti_gz(fname):
    import nibabel as nib

    with gzip.open(fname, "rb") as fid:
        img = nib.GiftiImage.from_bytes(fid.read())
    return [d.data for d in img.darrays]


def _nilearn_fsaverage5():
    """nilearn's bundled fsaverage5 folder, or None."""
    if not has_module("nilearn"):
        return None
    spec = importlib.util.find_spec("nilearn")
    if not spec.submodule_search_locations:  # pragma: no cover
        return None
    path = (Path(list(spec.submodule_search_locations)[0]) / "datasets"
            / "data" / "fsaverage5")
    return path if (path / "infl_left.gii.gz").is_file() else None


_NILEARN_HEMI = {"lh": "left", "rh": "right"}


@lru_cache(maxsize=8)
def _load_hemi(subjects_dir, subject, hemi, surface):
    """Return (rr_display mm, tris, shading map in [0, 1], surface name)."""
    import mne

    surf_dir = Path(subjects_dir) / subject / "surf"
    white_rr, white_tris = mne.read_surface(surf_dir / f"{hemi}.white")
    n_vert = len(white_rr)
    nl = _nilearn_fsaverage5() if n_vert == 10242 else None
    rr, tris, used = white_rr, white_tris, "white"
    if surface == "auto":
        candidates = ["inflated", "nilearn-inflated", "white"]
    else:
        candidates = [surface]
    for cand in candidates:
        if cand == "nilearn-inflated":
            if nl is None:
                continue
            rr_, tris_ = _read_gifti_gz(nl / f"infl_{_NILEARN_HEMI[hemi]}.gii.gz")
            if len(rr_) != n_vert or not np.array_equal(tris_, white_tris):
                continue
            rr, tris, used = np.asarray(rr_, float), np.asarray(tris_, int), cand
            break
        fname = surf_dir / f"{hemi}.{cand}"
        if fname.is_file():
            rr, tris = mne.read_surface(fname)
            used = cand
            break
        if surface != "auto":
            raise FileNotFoundError(f"Surface {fname} does not exist.")
    shade = _sulcal_shading(surf_dir, hemi, nl, white_rr, white_tris)
    rr, tris = np.asarray(rr, float), np.asarray(tris, int)
    keep, disp_tris = _decimate(subjects_dir, subject, hemi, len(rr), tris)
    disp_tris = _orient_outwards(rr[keep], disp_tris)
    return dict(rr=rr[keep], tris=disp_tris, shade=shade[keep], used=used,
                keep=keep, full_tris=tris, n_full=len(rr))


def _orient_outwards(rr, tris):
    """Make the triangle normals of a closed surface point outwards."""
    fn = np.cross(rr[tris[:, 1]] - rr[tris[:, 0]], rr[tris[:, 2]] - rr[tris[:, 0]])
    if np.sum((rr[tris].mean(1) - rr.mean(0)) * fn) < 0:
        tris = tris[:, [0, 2, 1]]
    return tris


def _decimate(subjects_dir, subject, hemi, n_vert, tris):
    """Display mesh for large surfaces: the ico5 subset (10242 vertices).

    Full-resolution FreeSurfer surfaces (e.g. the real fsaverage, 163842
    vertices per hemisphere) are drawn on their recursively subdivided
    icosahedron subset (as MNE's matplotlib backend does), found with
    :func:`mne.setup_source_space` on the subject's sphere.
    """
    if n_vert <= _MAX_DISPLAY_VERTICES:
        return np.arange(n_vert), tris
    import mne

    try:
        src = mne.setup_source_space(subject, "ico5", surface="white",
                                     subjects_dir=subjects_dir, add_dist=False,
                                     verbose=False)
    except Exception as err:  # no sphere etc.: draw everything
        logger.info(f"Could not decimate the {hemi} surface ({err})")
        return np.arange(n_vert), tris
    s = src[0 if hemi == "lh" else 1]
    keep = s["vertno"]
    remap = np.full(n_vert, -1)
    remap[keep] = np.arange(len(keep))
    use_tris = remap[s["use_tris"]]
    if (use_tris < 0).any():  # pragma: no cover - inconsistent source space
        return np.arange(n_vert), tris
    return keep, use_tris


def _sulcal_shading(surf_dir, hemi, nl, white_rr, white_tris):
    """Grey level per vertex: light gyri, darker sulci."""
    import nibabel as nib

    morph = None
    for name in ("sulc", "curv"):
        fname = surf_dir / f"{hemi}.{name}"
        if fname.is_file():
            morph = nib.freesurfer.read_morph_data(fname)
            break
    if morph is None and nl is not None:
        morph = _read_gifti_gz(nl / f"sulc_{_NILEARN_HEMI[hemi]}.gii.gz")[0]
    if morph is None or len(morph) != len(white_rr):
        morph = _mean_curvature(white_rr, white_tris)
    # FreeSurfer convention: positive = sulcus (deep)
    return np.where(np.asarray(morph) > 0, _CORTEX_DARK, _CORTEX_LIGHT)


def _adjacency(n_vert, tris):
    from scipy import sparse

    i = np.concatenate([tris[:, 0], tris[:, 1], tris[:, 2],
                        tris[:, 1], tris[:, 2], tris[:, 0]])
    j = np.concatenate([tris[:, 1], tris[:, 2], tris[:, 0],
                        tris[:, 0], tris[:, 1], tris[:, 2]])
    adj = sparse.coo_matrix((np.ones(len(i)), (i, j)), shape=(n_vert, n_vert)).tocsr()
    adj.data[:] = 1.0
    return adj


def _vertex_normals(rr, tris):
    fn = np.cross(rr[tris[:, 1]] - rr[tris[:, 0]], rr[tris[:, 2]] - rr[tris[:, 0]])
    nn = np.zeros_like(rr)
    for k in range(3):
        np.add.at(nn, tris[:, k], fn)
    nn /= np.maximum(np.linalg.norm(nn, axis=1, keepdims=True), 1e-12)
    return nn


def _mean_curvature(rr, tris, n_smooth=3):
    """Umbrella-operator mean curvature (positive in sulci), lightly smoothed."""
    from scipy import sparse

    adj = _adjacency(len(rr), tris)
    deg = np.asarray(adj.sum(1)).ravel()
    lap = (adj @ rr) / deg[:, None] - rr
    nn = _vertex_normals(rr, tris)
    if np.sum((rr - rr.mean(0)) * nn) < 0:  # make normals point outwards
        nn = -nn
    curv = np.sum(lap * nn, axis=1)
    smooth = sparse.diags(1.0 / (deg + 1)) @ (adj + sparse.eye(len(rr)))
    for _ in range(n_smooth):
        curv = smooth @ curv
    return curv


# ----------------------------------------------------------------------------
# values on the mesh


def _fill_values(n_vert, tris, vertno, values, max_steps=100):
    """Spread ``values`` at ``vertno`` to every vertex along mesh edges."""
    from scipy import sparse

    adj = _adjacency(n_vert, tris) + sparse.eye(n_vert, format="csr")
    x = np.zeros(n_vert)
    w = np.zeros(n_vert)
    x[vertno] = values
    w[vertno] = 1.0
    for _ in range(max_steps):
        if w.all():
            break
        num = adj @ (x * w)
        den = adj @ w
        known = den > 0
        x = np.where(known, num / np.where(known, den, 1.0), 0.0)
        w = known.astype(float)
    return x


def stc_map(stc, time):
    """Return (per-source magnitude, label of the time)."""
    data = np.asarray(stc.data, float)
    if data.ndim == 1:
        data = data[:, None]
    if isinstance(time, str):
        _check_option("time", time, ("peak", "rms"))
        if time == "rms":
            return np.sqrt(np.mean(data ** 2, axis=1)), "temporal RMS"
        idx = int(np.argmax(np.sum(data ** 2, axis=0)))
    else:
        _validate_type(time, "numeric", "time")
        idx = int(np.argmin(np.abs(stc.times - float(time))))
    return np.abs(data[:, idx]), f"t = {stc.times[idx] * 1e3:.0f} ms"


def auto_clim(values, clim):
    """Return (fmin, fmax) for the magnitudes ``values``."""
    values = np.abs(np.asarray(values, float))
    if isinstance(clim, dict):
        lims = clim.get("lims") or clim.get("pos_lims")
        if lims is None:
            raise ValueError("clim dict needs 'lims': (fmin, fmax) or "
                             "(fmin, fmid, fmax).")
        return float(lims[0]), float(lims[-1])
    if isinstance(clim, (tuple, list)):
        return float(clim[0]), float(clim[-1])
    _check_option("clim", clim, ("auto",))
    fmax = float(values.max()) if values.size else 0.0
    if fmax <= 0:
        return 0.0, 1.0
    fmin = max(float(np.percentile(values, 95)), 0.1 * fmax)
    if fmin >= fmax:
        fmin = 0.5 * fmax
    return fmin, fmax


def get_cmap(colormap):
    import matplotlib
    from matplotlib.colors import LinearSegmentedColormap

    if colormap == "hot":  # dark red -> yellow, readable on grey cortex
        base = matplotlib.colormaps["hot"]
        return LinearSegmentedColormap.from_list(
            "mus_hot", base(np.linspace(0.25, 0.92, 256)))
    return matplotlib.colormaps[colormap]


def _vertex_colors(shade, values, fmin, fmax, cmap):
    """RGB per vertex: grey cortex blended with the colour map above fmin."""
    rgb = np.repeat(shade[:, None], 3, axis=1)
    if fmax <= fmin:
        return rgb
    t = np.clip((values - fmin) / (fmax - fmin), 0, 1)
    col = cmap(t)[:, :3]
    # short ramp of opacity just above the threshold for soft blob edges
    alpha = np.clip((values - fmin) / (0.1 * (fmax - fmin)) + 0.0, 0, 1)
    alpha[values < fmin] = 0.0
    return rgb * (1 - alpha[:, None]) + col * alpha[:, None]


# ----------------------------------------------------------------------------
# panels


def _camera(view, hemi):
    if view == "lateral":
        eye = np.array([-1.0 if hemi == "lh" else 1.0, 0.0, 0.0])
        return eye, np.array([0.0, 0.0, 1.0])
    if view == "medial":
        eye = np.array([1.0 if hemi == "lh" else -1.0, 0.0, 0.0])
        return eye, np.array([0.0, 0.0, 1.0])
    return VIEWS[view]


def _panels(views, hemi):
    """Grid of panels: list of (row, col, view, hemis-in-panel, label), shape.

    Left column: left-hemisphere views, right column: right-hemisphere views,
    middle column(s): views that show both hemispheres.
    """
    hemis = ("lh", "rh") if hemi in ("both", "split") else (hemi,)
    names = {"lh": "left", "rh": "right"}
    hemi_views = [v for v in views if v in _HEMI_VIEWS]
    both_views = [v for v in views if v not in _HEMI_VIEWS]
    n_rows = max(len(hemi_views), 1) if hemi_views else 1
    n_mid = int(np.ceil(len(both_views) / n_rows)) if both_views else 0
    if not hemi_views:  # only whole-brain views: one row
        n_rows, n_mid = 1, len(both_views)
    panels = []
    first = 0
    if hemi_views:
        for r, v in enumerate(hemi_views):
            panels.append((r, 0, v, (hemis[0],), f"{names[hemis[0]]} {v}"))
        first = 1
    for k, v in enumerate(both_views):
        panels.append((k % n_rows, first + k // n_rows, v, hemis, v))
    n_cols = first + n_mid
    if hemi_views and len(hemis) == 2:
        for r, v in enumerate(hemi_views):
            panels.append((r, n_cols, v, (hemis[1],), f"{names[hemis[1]]} {v}"))
        n_cols += 1
    return panels, (n_rows, n_cols)


def _panel_mesh(meshes, hemis, surface_used):
    """Concatenate hemispheres; inflated ones are moved apart."""
    rrs, trises, cols, off = [], [], [], 0
    for h in hemis:
        rr, tris, col = meshes[h]
        rr = rr.copy()
        if len(hemis) == 2 and "inflated" in surface_used[h]:
            # inflated hemispheres are centred on x = 0: separate them
            shift = -rr[:, 0].max() - 4.0 if h == "lh" else -rr[:, 0].min() + 4.0
            rr[:, 0] += shift
        rrs.append(rr)
        trises.append(tris + off)
        cols.append(col)
        off += len(rr)
    return np.concatenate(rrs), np.concatenate(trises), np.concatenate(cols)


def _project(rr, eye, up):
    right = np.cross(-eye, up)
    return np.stack([rr @ right, rr @ up], axis=1), rr @ eye


def _draw_mpl(ax, rr, tris, colors, eye, up):
    """Orthographic, depth-sorted, Lambert-shaded mesh into a 2-D axes."""
    from matplotlib.collections import PolyCollection

    xy, depth = _project(rr, eye, up)
    fn = np.cross(rr[tris[:, 1]] - rr[tris[:, 0]], rr[tris[:, 2]] - rr[tris[:, 0]])
    fn /= np.maximum(np.linalg.norm(fn, axis=1, keepdims=True), 1e-12)
    facing = fn @ eye
    keep = facing > 0
    order = np.argsort(depth[tris[keep]].mean(1))  # far -> near
    idx = np.flatnonzero(keep)[order]
    shade = 0.35 + 0.65 * np.clip(facing[idx], 0, 1)
    fc = colors[tris[idx]].mean(1) * shade[:, None]
    fc = np.clip(fc, 0, 1)
    pc = PolyCollection(xy[tris[idx]], facecolors=fc, edgecolors=fc,
                        linewidths=0.25, antialiaseds=False)
    ax.add_collection(pc)
    ax.set_xlim(xy[:, 0].min() - 2, xy[:, 0].max() + 2)
    ax.set_ylim(xy[:, 1].min() - 2, xy[:, 1].max() + 2)
    ax.set_aspect("equal")
    ax.set_axis_off()


def _make_plotter(size):
    pv = soft_import("pyvista")

    pv.OFF_SCREEN = True
    plotter = pv.Plotter(off_screen=True, window_size=size)
    plotter.set_background(_BACKGROUND)
    return plotter


def _render_pyvista(plotter, rr, tris, colors, eye, up):
    pv = soft_import("pyvista")

    faces = np.hstack([np.full((len(tris), 1), 3), tris]).ravel()
    mesh = pv.PolyData(np.ascontiguousarray(rr), faces)
    mesh.point_data["rgb"] = (np.clip(colors, 0, 1) * 255).astype(np.uint8)
    actor = plotter.add_mesh(mesh, scalars="rgb", rgb=True, smooth_shading=True,
                             ambient=0.3, diffuse=0.7, specular=0.1)
    try:
        center = rr.mean(0)
        dist = 4 * np.ptp(rr, axis=0).max()
        plotter.camera.position = tuple(center + dist * eye)
        plotter.camera.focal_point = tuple(center)
        plotter.camera.up = tuple(up)
        plotter.enable_parallel_projection()
        plotter.reset_camera()
        plotter.camera.zoom(1.35)
        img = np.asarray(plotter.screenshot(return_img=True))
    finally:
        plotter.remove_actor(actor)
    return _crop(img)


def _crop(img, pad=4):
    bg = (np.asarray(_BACKGROUND) * 255).astype(img.dtype)
    mask = np.any(np.abs(img[..., :3].astype(int) - bg.astype(int)) > 8, axis=-1)
    if not mask.any():
        return img
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    r0, r1 = max(rows[0] - pad, 0), min(rows[-1] + pad + 1, img.shape[0])
    c0, c1 = max(cols[0] - pad, 0), min(cols[-1] + pad + 1, img.shape[1])
    return img[r0:r1, c0:c1]


# ----------------------------------------------------------------------------
# a whole brain figure


def hemisphere_meshes(stc, values, subjects_dir, subject, hemi, surface,
                      fmin, fmax, cmap):
    """Coloured display meshes of the hemispheres to draw.

    Returns ``(meshes, used)``: hemisphere -> ``(rr, tris, rgb)`` and
    hemisphere -> name of the surface drawn.
    """
    meshes, used = {}, {}
    offset = 0
    for h_idx, h in enumerate(("lh", "rh")):
        n_src = len(stc.vertices[h_idx])
        vals = values[offset:offset + n_src]
        offset += n_src
        if hemi not in ("both", "split", h):
            continue
        surf = _load_hemi(subjects_dir, subject, h, surface)
        used[h] = surf["used"]
        full = _fill_values(surf["n_full"], surf["full_tris"],
                            stc.vertices[h_idx], vals)[surf["keep"]]
        meshes[h] = (surf["rr"], surf["tris"],
                     _vertex_colors(surf["shade"], full, fmin, fmax, cmap))
    return meshes, used


def draw_brain_panels(fig, meshes, used, views, hemi, backend, *, top, bottom):
    """Draw one panel per view (and hemisphere) into ``fig``.

    Panels fill the band between the figure fractions ``bottom`` and
    ``top``; whole-brain panels are marked L/R.
    """
    panels, (n_rows, n_cols) = _panels(
        views, "both" if hemi in ("both", "split") else hemi)
    cell_w, cell_h = 0.98 / n_cols, (top - bottom) / n_rows
    plotter = _make_plotter((520, 400)) if backend == "pyvista" else None
    try:
        for row, col, view, hemis, label in panels:
            ax = fig.add_axes([0.01 + col * cell_w,
                               top - (row + 1) * cell_h,
                               cell_w * 0.98, cell_h * 0.86])
            rr, tris, cols = _panel_mesh(meshes, hemis, used)
            eye, up = _camera(view, hemis[0])
            if plotter is not None:
                ax.imshow(_render_pyvista(plotter, rr, tris, cols, eye, up))
                ax.set_axis_off()
            else:
                _draw_mpl(ax, rr, tris, cols, eye, up)
            ax.set_title(label, fontsize=9, pad=1)
            if len(hemis) == 2:  # mark the hemispheres in whole-brain views
                right = np.cross(-eye, up)
                lh_left = (meshes["lh"][0].mean(0) @ right
                           < meshes["rh"][0].mean(0) @ right)
                for x, text in ((0.0, "L" if lh_left else "R"),
                                (1.0, "R" if lh_left else "L")):
                    ax.text(x, 0.0, text, transform=ax.transAxes, fontsize=9,
                            ha="left" if x == 0 else "right", va="bottom",
                            color="0.3", fontweight="bold")
    finally:
        if plotter is not None:
            plotter.close()


def panel_grid(views, hemi):
    """``(n_rows, n_cols)`` of the panels of ``views``."""
    return _panels(views, "both" if hemi in ("both", "split") else hemi)[1]
