"""Headless figures: cortical source maps, time courses, noise and convergence.

Brain pictures
--------------
:func:`plot_source_estimate` draws a source estimate on the real cortical
surface of the subject (lateral and medial views of both hemispheres, and
posterior and ventral views, by default) and returns a
:class:`matplotlib.figure.Figure` with a title and a colour bar. It never
needs a display. Two renderers:

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

``backend="auto"`` (default) picks ``"pyvista"`` when the probe succeeds, else
``"matplotlib"``; the environment variable ``MNE_UNFOLDED_SBL_3D`` set to
``"matplotlib"`` or ``"pyvista"`` overrides the choice. (MNE's own 3-D
backend, :meth:`mne.SourceEstimate.plot`, needs Qt and a display, and its
matplotlib backend needs ``?h.curv`` and ``?h.sphere.reg`` files that the
embedded template subject does not have; hence this module.)

Surfaces: ``surface="auto"`` uses ``surf/?h.inflated`` of the subject when it
exists, else -- for the embedded fsaverage template (fsaverage5 vertex
numbering) -- nilearn's bundled fsaverage5 inflated surface when nilearn is
installed, else the white surface the source space was built on. Gyri and
sulci are shaded from ``?h.sulc``/``?h.curv`` when available (or nilearn's
fsaverage5 sulcal depth), else from the mean curvature of the white surface.

Values: the magnitude ``|x|`` at one time point (``time="peak"``: the time of
maximal source power of this estimate, a float in seconds, or ``"rms"``: the
temporal RMS amplitude per source) is spread from the source-space vertices
to the full mesh by nearest-neighbour filling along mesh edges (as MNE's
``smoothing_steps``). Colour limits default to the estimate's own values:
``fmax`` = the maximum, ``fmin`` = the larger of the 95th percentile and
10 %% of ``fmax``; vertices below ``fmin`` show the bare cortex.
"""

# License: BSD-3-Clause

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
from mne.utils import _check_option, _validate_type, logger

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

#: Camera definitions: direction from the brain towards the viewer ("eye")
#: and the screen-up vector, in FreeSurfer surface RAS (x right, y anterior,
#: z superior).
_VIEWS = {
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
    try:
        import importlib.util

        if importlib.util.find_spec("pyvista") is None:
            return False
    except Exception:  # pragma: no cover
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


def _resolve_backend(backend):
    _check_option("backend", backend, _BACKENDS)
    if backend == "auto":
        return available_3d_backend()
    if backend == "pyvista":
        try:
            import pyvista  # noqa: F401
        except ImportError:
            raise ImportError("backend='pyvista' needs pyvista (pip install "
                              "pyvista vtk); use backend='matplotlib'.") from None
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
    try:
        import importlib.util

        spec = importlib.util.find_spec("nilearn")
    except Exception:  # pragma: no cover
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "fsaverage5"
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


def _stc_map(stc, time):
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


def _auto_clim(values, clim):
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


def _units(values, scale, unit):
    """Scale factor and unit label for the colour bar."""
    if scale != "auto":
        return float(scale), unit or ""
    vmax = float(np.max(np.abs(values))) if np.size(values) else 0.0
    if unit is None and 0 < vmax < 1e-4:  # A·m
        return 1e9, "nA·m"
    return 1.0, unit if unit is not None else "a.u."


def _get_cmap(colormap):
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
    return _VIEWS[view]


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
    import pyvista as pv

    pv.OFF_SCREEN = True
    plotter = pv.Plotter(off_screen=True, window_size=size)
    plotter.set_background(_BACKGROUND)
    return plotter


def _render_pyvista(plotter, rr, tris, colors, eye, up):
    import pyvista as pv

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
# public


def plot_source_estimate(stc, subjects_dir=None, *, subject=None, time="peak",
                         views=("lateral", "medial", "posterior", "ventral"),
                         hemi="both",
                         surface="auto", clim="auto", colormap="hot",
                         backend="auto", title=None, scale="auto", unit=None,
                         figsize=None, dpi=100, return_image=False):
    """Plot a cortical source estimate headlessly on the real cortical surface.

    Parameters
    ----------
    stc : mne.SourceEstimate
        Surface source estimate (e.g. from
        :func:`~mne_unfolded_sbl.apply_unfolded_sbl`).
    subjects_dir : path-like | None
        FreeSurfer subjects dir. None uses
        :func:`mne_unfolded_sbl.datasets.get_subjects_dir` (the downloaded or
        embedded fsaverage).
    subject : str | None
        Subject; None uses ``stc.subject`` or ``"fsaverage"``.
    time : "peak" | "rms" | float
        ``"peak"``: the time of maximal source power of this estimate;
        a float: the time (s) nearest to it; ``"rms"``: the temporal RMS
        amplitude of each source.
    views : tuple of str
        Any of ``"lateral"``, ``"medial"`` (one panel per hemisphere),
        ``"posterior"``, ``"anterior"``, ``"dorsal"``, ``"ventral"`` (both
        hemispheres in one panel).
    hemi : "both" | "lh" | "rh"
        Hemispheres to show.
    surface : "auto" | str
        ``"auto"``: inflated if available (see module docs), else white;
        or a surface name in ``surf/`` such as ``"white"``.
    clim : "auto" | tuple | dict
        ``(fmin, fmax)`` in the data's units, ``dict(kind="value",
        lims=(fmin, fmid, fmax))`` as in MNE, or ``"auto"`` (see module
        docs).
    colormap : str
        Matplotlib colour map for ``|x|`` (``"hot"``: a red-yellow ramp).
    backend : "auto" | "pyvista" | "matplotlib"
        Renderer, see module docs.
    title : str | None
        Figure title; the time (or "temporal RMS") is appended.
    scale : "auto" | float
        Factor for the colour-bar values; ``"auto"`` shows A·m values as
        nA·m (if ``max |x| < 1e-4``) and others unchanged.
    unit : str | None
        Colour-bar unit; None: ``"nA·m"`` or ``"a.u."`` as found by scale.
    figsize : tuple | None
        Figure size in inches.
    dpi : int
        Figure resolution.
    return_image : bool
        Return an RGB ``uint8`` array of the rendered figure instead of the
        figure.

    Returns
    -------
    fig : matplotlib.figure.Figure | ndarray
        The figure (or its pixels with ``return_image=True``).
    """
    import matplotlib.pyplot as plt
    import mne
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    _validate_type(stc, mne.SourceEstimate, "stc")
    _check_option("hemi", hemi, ("both", "split", "lh", "rh"))
    views = (views,) if isinstance(views, str) else tuple(views)
    for view in views:
        _check_option("view", view, tuple(_VIEWS))
    if subjects_dir is None:
        from .datasets import get_subjects_dir

        subjects_dir = get_subjects_dir()
    subjects_dir = str(Path(subjects_dir).expanduser().resolve())
    subject = subject or stc.subject or "fsaverage"
    backend = _resolve_backend(backend)

    values, time_label = _stc_map(stc, time)
    fmin, fmax = _auto_clim(values, clim)
    factor, unit_label = _units(stc.data, scale, unit)
    cmap = _get_cmap(colormap)

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

    panels, (n_rows, n_cols) = _panels(
        views, "both" if hemi in ("both", "split") else hemi)
    if figsize is None:
        figsize = (3.4 * n_cols + 0.2, 2.45 * n_rows + 1.25)
    fig = plt.figure(figsize=figsize, dpi=dpi)
    top, bottom = 1 - 0.55 / figsize[1], 0.95 / figsize[1]
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
                lh_left = meshes["lh"][0].mean(0) @ right < meshes["rh"][0].mean(0) @ right
                for x, text in ((0.0, "L" if lh_left else "R"),
                                (1.0, "R" if lh_left else "L")):
                    ax.text(x, 0.0, text, transform=ax.transAxes, fontsize=9,
                            ha="left" if x == 0 else "right", va="bottom",
                            color="0.3", fontweight="bold")
    finally:
        if plotter is not None:
            plotter.close()
    cax = fig.add_axes([0.3, 0.55 / figsize[1], 0.4, 0.14 / figsize[1]])
    sm = ScalarMappable(norm=Normalize(fmin * factor, fmax * factor), cmap=cmap)
    cb = fig.colorbar(sm, cax=cax, orientation="horizontal")
    cb.set_label(f"|source amplitude| ({unit_label}); below "
                 f"{fmin * factor:.3g} not shown", fontsize=8)
    cb.ax.tick_params(labelsize=8)
    full_title = f"{title} — {time_label}" if title else time_label
    fig.suptitle(full_title, fontsize=11, y=1 - 0.12 / figsize[1], va="top")
    fig.patch.set_facecolor("white")
    logger.debug(f"plot_source_estimate: backend={backend}, surface={used}")
    fig._mus_backend = backend  # for reports and tests
    if return_image:
        img = figure_to_array(fig)
        plt.close(fig)
        return img
    return fig


def figure_to_array(fig):
    """Render a matplotlib figure to an RGB ``uint8`` array (no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def plot_time_courses(stcs, vertices, *, times_unit="ms", title=None,
                      scale="auto", unit=None, stc_true=None):
    """Time courses of several estimates at given sources, one panel each.

    Parameters
    ----------
    stcs : dict of str -> mne.SourceEstimate
        Estimates by name.
    vertices : list of (hemi index, vertex number, label)
        Sources to show (e.g. the peak sources of each estimate).
    times_unit : "ms" | "s"
        Time axis unit.
    title : str | None
        Figure title.
    scale, unit
        As in :func:`plot_source_estimate`; sLORETA-like (unit-free)
        estimates are drawn on a twin axis.
    stc_true : mne.SourceEstimate | None
        Ground truth drawn in black, if given.

    Returns
    -------
    fig : matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    n = max(len(vertices), 1)
    fig, axes = plt.subplots(n, 1, figsize=(7.5, 1.9 * n + 0.6), sharex=True,
                             squeeze=False, layout="constrained")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (h_idx, vert, label) in zip(axes[:, 0], vertices):
        ax2 = None
        lines = []
        if stc_true is not None:
            tr = _series(stc_true, h_idx, vert)
            if tr is not None:
                f, u = _units(stc_true.data, scale, unit)
                t = stc_true.times * (1e3 if times_unit == "ms" else 1.0)
                lines += ax.plot(t, tr * f, color="k", lw=1.6, label="truth")
        for k, (name, stc) in enumerate(stcs.items()):
            series = _series(stc, h_idx, vert)
            if series is None:
                continue
            f, u = _units(stc.data, scale, unit)
            t = stc.times * (1e3 if times_unit == "ms" else 1.0)
            target = ax
            if u != "nA·m":  # unit-free estimate: twin axis
                if ax2 is None:
                    ax2 = ax.twinx()
                    ax2.set_ylabel(f"({u})", fontsize=8)
                target = ax2
            lines += target.plot(t, series * f, color=colors[k % len(colors)],
                                 lw=1.1, ls="--" if target is ax2 else "-",
                                 label=name if target is ax else f"{name} ({u})")
        ax.set_ylabel("nA·m", fontsize=8)
        ax.set_title(label, fontsize=9)
        ax.axhline(0, color="0.7", lw=0.5)
        ax.legend(lines, [ln.get_label() for ln in lines], fontsize=7,
                  loc="upper right")
    axes[-1, 0].set_xlabel(f"time ({times_unit})")
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def _series(stc, h_idx, vert):
    verts = stc.vertices[h_idx]
    pos = np.searchsorted(verts, vert)
    if pos >= len(verts) or verts[pos] != vert:
        return None
    row = pos + (len(stc.vertices[0]) if h_idx == 1 else 0)
    return stc.data[row]


def plot_noise_topomap(info, std, *, title="Learned noise std per channel",
                       unit="µV", std_true=None, cmap="viridis"):
    """Topomap of a per-channel noise standard deviation (volts).

    Parameters
    ----------
    info : mne.Info
        Info with the channels of ``std`` and their positions.
    std : array-like, shape (n_channels,)
        Noise standard deviation per channel in volts.
    title : str
        Title.
    unit : str
        ``"µV"`` (values are multiplied by 1e6).
    std_true : array-like | None
        If given, a second topomap with the true std and a scatter plot
        learned vs true are added.
    cmap : str
        Colour map.

    Returns
    -------
    fig : matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt
    import mne

    std = np.asarray(std, float) * 1e6
    n = 1 if std_true is None else 3
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.4), layout="constrained",
                             squeeze=False)
    axes = axes[0]
    vmax = std.max() if std_true is None else max(std.max(), np.max(std_true) * 1e6)
    im, _ = mne.viz.plot_topomap(std, info, axes=axes[0], show=False, cmap=cmap,
                                 vlim=(0, vmax), contours=0)
    axes[0].set_title(title, fontsize=9)
    fig.colorbar(im, ax=axes[0], shrink=0.7, label=unit)
    if std_true is not None:
        std_true = np.asarray(std_true, float) * 1e6
        im, _ = mne.viz.plot_topomap(std_true, info, axes=axes[1], show=False,
                                     cmap=cmap, vlim=(0, vmax), contours=0)
        axes[1].set_title("True (simulated) noise std", fontsize=9)
        fig.colorbar(im, ax=axes[1], shrink=0.7, label=unit)
        ax = axes[2]
        ax.scatter(std_true, std, s=12)
        lim = [0, vmax * 1.05]
        ax.plot(lim, lim, color="0.6", lw=0.8, ls="--")
        ax.set_xlim(lim)
        ax.set_ylim(lim)
        ax.set_xlabel(f"true noise std ({unit})")
        ax.set_ylabel(f"learned noise std ({unit})")
        r = np.corrcoef(std_true, std)[0, 1] if len(std) > 2 else np.nan
        ax.set_title(f"learned vs true (r = {r:.2f})", fontsize=9)
    return fig


def plot_noisiest_channels(ch_names, std, *, n=15, unit="µV",
                           title="Noisiest channels (learned noise std)"):
    """Horizontal bar chart of the ``n`` channels with the largest noise std."""
    import matplotlib.pyplot as plt

    std = np.asarray(std, float) * 1e6
    order = np.argsort(std)[::-1][:n]
    fig, ax = plt.subplots(figsize=(5.5, 0.25 * len(order) + 1.2),
                           layout="constrained")
    ax.barh(np.arange(len(order))[::-1], std[order], color="tab:orange")
    ax.set_yticks(np.arange(len(order))[::-1])
    ax.set_yticklabels([ch_names[i] for i in order], fontsize=8)
    ax.axvline(np.median(std), color="k", lw=0.8, ls="--",
               label=f"median of all channels ({np.median(std):.2g} {unit})")
    ax.set_xlabel(f"noise std ({unit})")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def plot_convergence(trajectories, *, title="Convergence per layer"):
    """Type-II cost, relative change of gamma and mean ``|correction|`` per layer.

    Parameters
    ----------
    trajectories : dict of str -> dict
        Output of :func:`mne_unfolded_sbl.unfolded_sbl_trajectory`
        per model name.
    title : str
        Figure title.

    Returns
    -------
    fig : matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    has_corr = any(np.isfinite(tr["mean_abs_delta_source"]).any()
                   for tr in trajectories.values())
    n = 3 if has_corr else 2
    fig, axes = plt.subplots(1, n, figsize=(4.0 * n, 3.3), layout="constrained")
    for name, tr in trajectories.items():
        layers = np.arange(1, len(tr["cost"]) + 1)
        axes[0].plot(layers, tr["cost"], marker="o", ms=3, label=name)
        axes[1].semilogy(layers, np.maximum(tr["gamma_change"], 1e-16),
                         marker="o", ms=3, label=name)
        if has_corr:
            for key, ls, what in (("mean_abs_delta_source", "-", "source"),
                                  ("mean_abs_delta_noise", "--", "noise")):
                vals = tr[key]
                if np.isfinite(vals).any():
                    axes[2].plot(layers, vals, ls=ls, marker="o", ms=3,
                                 label=f"{name} ({what})")
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_xlabel("layer")
    axes[0].set_ylabel("Type-II cost (normalised units)")
    axes[0].set_title("cost at the input of each layer", fontsize=9)
    axes[1].set_xlabel("layer")
    axes[1].set_ylabel(r"$\|\gamma^{k}-\gamma^{k-1}\|/\|\gamma^{k-1}\|$")
    axes[1].set_title("relative change of the source variances", fontsize=9)
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    if has_corr:
        axes[2].set_xlabel("layer")
        axes[2].set_ylabel(r"mean $|\Delta|$ (log domain)")
        axes[2].set_title("learned correction magnitude", fontsize=9)
    fig.suptitle(title, fontsize=11)
    return fig


def plot_corrections(trajectory, *, title=None, percentiles=(5, 25, 75, 95)):
    """Distribution of the learned log-domain corrections per layer (Fig. 8).

    Parameters
    ----------
    trajectory : dict
        Output of :func:`mne_unfolded_sbl.unfolded_sbl_trajectory`
        (needs ``keep_deltas=True``).
    title : str | None
        Figure title.
    percentiles : tuple of 4 floats
        Outer and inner percentile bands drawn around the median.

    Returns
    -------
    fig : matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    branches = [("delta_source", "source branch $\\Delta_n^k$"),
                ("delta_noise", "noise branch $\\delta_m^k$")]
    branches = [b for b in branches if trajectory.get(b[0]) is not None]
    fig, axes = plt.subplots(1, max(len(branches), 1),
                             figsize=(4.6 * len(branches), 3.3) if branches
                             else (5.0, 1.6), layout="constrained", squeeze=False)
    axes = axes[0]
    if not branches:
        axes[0].text(0.5, 0.5, "no learned corrections\n(classical solver: "
                     "$\\Delta = 0$ at every layer)", ha="center", va="center",
                     transform=axes[0].transAxes)
        axes[0].set_axis_off()
    for ax, (key, label) in zip(axes, branches):
        deltas = trajectory[key]  # list per layer of 1-D arrays (or None)
        layers = np.arange(1, len(deltas) + 1)
        stats = np.full((len(deltas), 5), np.nan)
        for k, d in enumerate(deltas):
            if d is not None and np.size(d):
                stats[k] = np.percentile(d, [percentiles[0], percentiles[1], 50,
                                             percentiles[2], percentiles[3]])
        ax.fill_between(layers, stats[:, 0], stats[:, 4], alpha=0.2,
                        color="tab:blue",
                        label=f"{percentiles[0]}-{percentiles[3]} %")
        ax.fill_between(layers, stats[:, 1], stats[:, 3], alpha=0.4,
                        color="tab:blue",
                        label=f"{percentiles[1]}-{percentiles[2]} %")
        ax.plot(layers, stats[:, 2], color="tab:blue", lw=1.5, label="median")
        ax.axhline(0, color="k", lw=0.7)
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("correction (log domain)")
        ax.set_title(label, fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig
