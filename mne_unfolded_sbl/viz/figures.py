"""Headless figures: cortical source maps, time courses, noise and convergence.

Brain pictures
--------------
:func:`plot_source_estimate` draws a source estimate on the real cortical
surface of the subject (lateral and medial views of both hemispheres, and
posterior and ventral views, by default) and returns a
:class:`matplotlib.figure.Figure` with a title and a colour bar. It never
needs a display. The renderer (:mod:`mne_unfolded_sbl.viz._brain`) is
``"pyvista"`` (PyVista/VTK off-screen rendering, when a probe in a
subprocess shows that VTK can render without a display) or
``"matplotlib"`` (a dependency-free orthographic renderer, always
available).

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
10 % of ``fmax``; vertices below ``fmin`` show the bare cortex.

Other figures
-------------
:func:`plot_time_courses` (estimates at given sources),
:func:`plot_noise_topomap` and :func:`plot_noisiest_channels` (learned
sensor noise), :func:`plot_convergence` and :func:`plot_corrections`
(per-layer behaviour of the unfolded solver, from
:func:`mne_unfolded_sbl.unfolded_sbl_trajectory`).
"""

# License: BSD-3-Clause

from __future__ import annotations

from pathlib import Path

import numpy as np
from mne.utils import _check_option, _validate_type, logger

from . import _brain

__all__ = [
    "plot_source_estimate",
    "figure_to_array",
    "plot_time_courses",
    "plot_noise_topomap",
    "plot_noisiest_channels",
    "plot_convergence",
    "plot_corrections",
]


def plot_source_estimate(stc, subjects_dir=None, *, subject=None, time="peak",
                         views=("lateral", "medial", "posterior", "ventral"),
                         hemi="both",
                         surface="auto", clim="auto", colormap="hot",
                         backend="auto", title=None, scale="auto", unit=None,
                         figsize=None, dpi=100, return_image=False,
                         value_label="|source amplitude|", time_label=None):
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
    value_label : str
        What the colours show, in the colour-bar label (e.g. ``"posterior
        std"`` for :func:`~mne_unfolded_sbl.apply_unfolded_sbl`'s
        ``return_posterior_std``).
    time_label : str | None
        Replaces the time in the title (e.g. ``"constant over time"``);
        None: the time shown (or "temporal RMS").

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
        _check_option("view", view, tuple(_brain.VIEWS))
    if subjects_dir is None:
        from ..datasets import get_subjects_dir

        subjects_dir = get_subjects_dir()
    subjects_dir = str(Path(subjects_dir).expanduser().resolve())
    subject = subject or stc.subject or "fsaverage"
    backend = _brain.resolve_backend(backend)

    values, shown_time = _brain.stc_map(stc, time)
    _validate_type(value_label, str, "value_label")
    _validate_type(time_label, (str, None), "time_label")
    time_label = shown_time if time_label is None else time_label
    fmin, fmax = _brain.auto_clim(values, clim)
    factor, unit_label = _units(stc.data, scale, unit)
    cmap = _brain.get_cmap(colormap)

    meshes, used = _brain.hemisphere_meshes(stc, values, subjects_dir, subject,
                                            hemi, surface, fmin, fmax, cmap)
    n_rows, n_cols = _brain.panel_grid(views, hemi)
    if figsize is None:
        figsize = (3.4 * n_cols + 0.2, 2.45 * n_rows + 1.25)
    fig = plt.figure(figsize=figsize, dpi=dpi)
    _brain.draw_brain_panels(fig, meshes, used, views, hemi, backend,
                             top=1 - 0.55 / figsize[1],
                             bottom=0.95 / figsize[1])
    cax = fig.add_axes([0.3, 0.55 / figsize[1], 0.4, 0.14 / figsize[1]])
    sm = ScalarMappable(norm=Normalize(fmin * factor, fmax * factor), cmap=cmap)
    cb = fig.colorbar(sm, cax=cax, orientation="horizontal")
    cb.set_label(f"{value_label} ({unit_label}); below "
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
        ax.set_title(_agreement_title(std_true, std), fontsize=9)
    return fig


def _agreement_title(std_true, std):
    """Title of the learned-vs-true scatter: the correlation, or, when the
    true noise is the same on every channel (a correlation is undefined
    then), the median ratio learned / true."""
    mean = max(float(np.mean(std_true)), np.finfo(float).tiny)
    if len(std) < 3 or np.ptp(std_true) <= 1e-3 * mean:
        ratio = float(np.median(np.asarray(std) / mean))
        return (f"learned vs true (true noise equal on all channels; "
                f"median learned / true = {ratio:.2f})")
    return f"learned vs true (r = {np.corrcoef(std_true, std)[0, 1]:.2f})"


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


def _units(values, scale, unit):
    """Scale factor and unit label for the colour bar."""
    if scale != "auto":
        return float(scale), unit or ""
    vmax = float(np.max(np.abs(values))) if np.size(values) else 0.0
    if unit is None and 0 < vmax < 1e-4:  # A·m
        return 1e9, "nA·m"
    return 1.0, unit if unit is not None else "a.u."
