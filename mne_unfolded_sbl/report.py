"""Add unfolded-SBL source estimates to an :class:`mne.Report`.

The main entry point is :func:`add_unfolded_sbl_to_report`, meant for
analysis scripts::

    report = mne.Report(title="My analysis")
    out = add_unfolded_sbl_to_report(report, evoked, fwd, noise_cov,
                                     model="deep-cb", compare=("sloreta",))
    report.save("report.html")

It localises the evoked response with the unfolded SBL model (falling back
to the classical convex-bounding solver, with a visible note, when no
pretrained weights for the model are available) and with the comparison
methods, and adds to the report: brain pictures side by side, a table of
peak sources, time courses at the peak sources, the learned per-channel
noise (topomap and the noisiest channels), optionally the posterior
standard deviation of every source (``posterior_std=True``), and the
per-layer convergence of the unfolded solver (Type-II cost, change of the
source variances, and for learned models the mean magnitude of the
corrections). ``source_model="multiscale"`` and ``loose`` choose the
source model of the unfolded estimates (extended patches, loose
orientation; see :func:`mne_unfolded_sbl.apply_unfolded_sbl`).

Every method is an entry of the registry :mod:`mne_unfolded_sbl.methods`,
which the benchmark uses too: a name means the same solver with the same
settings in both. Smaller helpers are public too: :func:`compute_estimate`,
:func:`peak_sources`, :func:`peak_table_html`, :func:`metrics_table`. The
per-layer results come from the public
:func:`mne_unfolded_sbl.unfolded_sbl_trajectory`.
"""

# License: BSD-3-Clause

from __future__ import annotations

import dataclasses
import html
import time as _time

import numpy as np
import mne
from mne.io.constants import FIFF
from mne.utils import _validate_type, logger, verbose

from . import unfolded_sbl_trajectory
from ._docs import fill_doc
from .core.metrics import evaluate, local_maxima, source_neighbors
from .methods import (MinimumNorm, UnfoldedModel, expand_stc, get_method,
                      unfolded_method)

__all__ = [
    "compute_estimate",
    "source_positions_mri",
    "peak_sources",
    "peak_table_html",
    "metrics_table",
    "format_metrics_table",
    "add_unfolded_sbl_to_report",
]

# ``expand_stc`` (imported above) is kept importable from here; its home is
# :mod:`mne_unfolded_sbl.methods`.


def source_positions_mri(fwd):
    """Source positions (m) in MRI (surface RAS) coordinates.

    For fsaverage these are MNI305 coordinates.
    """
    rr = np.concatenate([s["rr"][s["vertno"]] for s in fwd["src"]])
    if fwd["src"][0]["coord_frame"] == FIFF.FIFFV_COORD_HEAD:
        head_mri = mne.transforms.invert_transform(fwd["mri_head_t"])
        rr = mne.transforms.apply_trans(head_mri, rr)
    return rr


@verbose
@fill_doc
def compute_estimate(evoked, fwd, noise_cov, method, *, learn_noise=True,
                     n_layers=None, lambda2=None, source_model="point",
                     loose=0.0, posterior_std=False, verbose=None):
    """Localise ``evoked`` with one method of the registry.

    Parameters
    ----------
    %(report_evoked)s
    %(report_fwd)s
    %(report_noise_cov)s
    method : str | UnfoldedSBL | path-like | ComparisonMethod
        %(report_method)s
    %(learn_noise)s
        Unfolded models only.
    %(n_layers)s
    lambda2 : float | None
        Regularisation of the minimum-norm methods; None uses
        :data:`mne_unfolded_sbl.methods.LAMBDA2` (``1 / 9``: SNR = 3, MNE's
        usual choice for evoked data; use ``1.`` for single trials).
    %(source_model)s
        Unfolded models given by a bare name or a network only (a key such
        as ``"cb-joint-25-multiscale"`` says its own).
    %(loose)s
        As ``source_model``; ``loose > 0`` needs a free-orientation forward.
    posterior_std : bool
        Unfolded models: also compute the posterior standard deviation of
        every source (``result["std"]``).
    %(verbose)s

    Returns
    -------
    result : dict
        ``stc`` (on every source of ``fwd``), ``label``, ``name`` (method
        actually used), ``seconds``, ``note`` (fallback message or None),
        ``noise_cov`` (learned, unfolded joint models only), ``unit``
        (``"A·m"`` or ``"a.u."``), ``std`` (posterior std as a
        SourceEstimate in A·m, constant over time; None unless
        ``posterior_std`` and an unfolded model).

    Raises
    ------
    ValueError
        For an unknown method name (the message lists the valid ones).
    """
    spec = get_method(method, learn_noise=learn_noise, n_layers=n_layers,
                      source_model=source_model, loose=loose)
    if lambda2 is not None and isinstance(spec, MinimumNorm):
        spec = dataclasses.replace(spec, lambda2=float(lambda2))
    t0 = _time.perf_counter()
    if isinstance(spec, UnfoldedModel):
        res = spec.estimate(evoked, fwd, noise_cov,
                            posterior_std=bool(posterior_std))
    else:
        res = spec.estimate(evoked, fwd, noise_cov)
        res["std"] = None
    res["seconds"] = _time.perf_counter() - t0
    return res


@fill_doc
def peak_sources(stc, fwd, *, n=5, threshold=0.1):
    """Strongest local maxima of the peak-amplitude map of an estimate.

    Parameters
    ----------
    stc : mne.SourceEstimate
        Estimate (on the sources of ``fwd`` or a subset).
    %(report_fwd)s
    n : int
        Number of peaks.
    threshold : float
        Peaks below ``threshold`` times the largest are ignored.

    Returns
    -------
    peaks : list of dict
        Sorted by amplitude: ``hemi`` ("lh"/"rh"), ``hemi_idx``, ``vertex``,
        ``index`` (row in the full estimate), ``pos_mm`` (MRI/MNI305
        coordinates in mm), ``amplitude`` (peak ``|x|`` over time, the
        estimate's units), ``latency`` (s, time of that peak).
    """
    stc = expand_stc(stc, fwd)
    amp_t = np.abs(stc.data)
    amp = amp_t.max(1)
    if not np.any(amp > 0):
        return []
    pos = source_positions_mri(fwd)
    idx = local_maxima(amp, source_neighbors(pos), threshold=threshold)
    idx = np.asarray(idx)[np.argsort(amp[idx])[::-1]][:n]
    n_lh = len(stc.vertices[0])
    peaks = []
    for i in idx:
        h = int(i >= n_lh)
        peaks.append(dict(
            hemi=("lh", "rh")[h], hemi_idx=h, index=int(i),
            vertex=int(stc.vertices[h][i - h * n_lh]),
            pos_mm=pos[i] * 1e3, amplitude=float(amp[i]),
            latency=float(stc.times[int(np.argmax(amp_t[i]))])))
    return peaks


def peak_table_html(peaks, *, unit="A·m", caption=None):
    """An HTML table of :func:`peak_sources` output."""
    scale, ulabel = (1e9, "nA·m") if unit == "A·m" else (1.0, unit)
    rows = []
    for k, p in enumerate(peaks, 1):
        x, y, z = p["pos_mm"]
        rows.append(
            f"<tr><td>{k}</td><td>{p['hemi']}</td><td>{p['vertex']}</td>"
            f"<td>{x:.1f}</td><td>{y:.1f}</td><td>{z:.1f}</td>"
            f"<td>{p['amplitude'] * scale:.3g}</td>"
            f"<td>{p['latency'] * 1e3:.0f}</td></tr>")
    head = ("<tr><th>#</th><th>hemisphere</th><th>vertex</th>"
            "<th>x (mm)</th><th>y (mm)</th><th>z (mm)</th>"
            f"<th>peak |amplitude| ({ulabel})</th><th>peak latency (ms)</th></tr>")
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    body = "".join(rows) or "<tr><td colspan='8'>no active source</td></tr>"
    return (f"<table class='table table-sm table-striped mus-peaks'>{cap}"
            f"<thead>{head}</thead><tbody>{body}</tbody></table>")


@fill_doc
def metrics_table(stc_true, results, fwd):
    """Paper metrics (appendix B.3) of several estimates against the truth.

    Parameters
    ----------
    stc_true : mne.SourceEstimate
        Ground truth.
    results : dict of str -> dict
        :func:`compute_estimate` outputs by key.
    %(report_fwd)s

    Returns
    -------
    rows : list of dict
        ``label``, ``rmse``, ``le_mm``, ``emd_mm``, ``f1``, ``ap``,
        ``seconds``, ``unit``, ``signed``. An unsigned estimate (the norm
        over orientations of loose orientation, ``result["signed"]``
        False) is compared with the true ``|amplitude|``.
    """
    pos = source_positions_mri(fwd)
    x_true = expand_stc(stc_true, fwd).data
    rows = []
    for res in results.values():
        signed = res.get("signed", True)
        m = evaluate(x_true if signed else np.abs(x_true), res["stc"].data,
                     pos, verbose=False)
        rows.append(dict(label=res["label"], rmse=float(m["rmse"][0]),
                         le_mm=float(m["le"][0]) * 1e3,
                         emd_mm=float(m["emd"][0]) * 1e3, f1=float(m["f1"][0]),
                         ap=float(m["ap"][0]), seconds=res["seconds"],
                         unit=res["unit"], signed=signed))
    return rows


def format_metrics_table(rows):
    """Plain-text table of :func:`metrics_table` rows (for terminals)."""
    head = (f"{'method':<44} {'rMSE':>9} {'LE (mm)':>8} {'EMD (mm)':>9} "
            f"{'F1':>6} {'AP':>6} {'time (s)':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        rmse = _fmt_rmse(r)
        lines.append(f"{r['label'][:44]:<44} {rmse:>9} {r['le_mm']:>8.1f} "
                     f"{r['emd_mm']:>9.1f} {r['f1']:>6.2f} "
                     f"{r.get('ap', np.nan):>6.2f} {r['seconds']:>9.2f}")
    if any(r["unit"] != "A·m" for r in rows):
        lines.append("* noise-normalised values (not A·m): an rMSE against "
                     "the true amplitudes is not meaningful.")
    if not all(r.get("signed", True) for r in rows):
        lines.append("loose orientation: the estimate is the norm over the "
                     "orientations, compared with the true |amplitude|.")
    return "\n".join(lines)


def _fmt_rmse(row):
    return f"{row['rmse']:.3f}" if row["unit"] == "A·m" else "n/a*"


def _metrics_html(rows):
    head = ("<tr><th>method</th><th>rMSE</th><th>LE (mm)</th><th>EMD (mm)</th>"
            "<th>F1</th><th>AP</th><th>time (s)</th></tr>")
    body = "".join(
        f"<tr><td>{html.escape(r['label'])}</td><td>{_fmt_rmse(r)}</td>"
        f"<td>{r['le_mm']:.1f}</td><td>{r['emd_mm']:.1f}</td>"
        f"<td>{r['f1']:.2f}</td><td>{r.get('ap', np.nan):.2f}</td>"
        f"<td>{r['seconds']:.2f}</td></tr>" for r in rows)
    foot = ("<p>rMSE: ‖X̂−X‖²/‖X‖²; LE: mean distance from each true peak to "
            "the nearest estimated peak; EMD: optimal-transport distance "
            "between the normalised source-power maps; F1: support recovery "
            "at 10 % of the maximum (paper appendix B.3); AP: average "
            "precision of detecting the true support (sources above 10 % of "
            "the true maximum) when ranking sources by estimated power, "
            "independent of any threshold on the estimate.")
    if any(r["unit"] != "A·m" for r in rows):
        foot += (" * noise-normalised values (not A·m): an rMSE against the "
                 "true amplitudes is not meaningful.")
    if not all(r.get("signed", True) for r in rows):
        foot += (" Loose orientation: the estimate is the norm over the "
                 "orientations (no sign), compared with the true "
                 "|amplitude|.")
    return (f"<table class='table table-sm table-striped mus-metrics'>"
            f"<thead>{head}</thead><tbody>{body}</tbody></table>{foot}</p>")


def _plot_time(evoked, time):
    """Resolve the report's common time: "peak" = GFP peak of the evoked."""
    if isinstance(time, str) and time == "peak":
        gfp = np.std(evoked.data, axis=0)
        return float(evoked.times[int(np.argmax(gfp))])
    return time


def _run_estimates(evoked, fwd, noise_cov, model, compare, learn_noise,
                   source_model="point", loose=0.0, posterior_std=False):
    """The unfolded model (key ``"unfolded"``) and the comparison methods.

    A comparison method that names what the model already ran (``"cb"``
    after the fallback) is skipped. ``source_model`` and ``loose`` apply to
    the unfolded model and to the comparison models given by a bare name
    (``"cb"``); the posterior std is computed for the unfolded model only.
    """
    variant = dict(source_model=source_model, loose=loose)
    estimates = {"unfolded": compute_estimate(
        evoked, fwd, noise_cov, model, learn_noise=learn_noise,
        posterior_std=posterior_std, verbose=False, **variant)}
    used = estimates["unfolded"]["name"]
    for meth in compare:
        key = str(meth).lower()
        if key == used:
            continue  # e.g. "cb" after the fallback: already there
        estimates[key] = compute_estimate(evoked, fwd, noise_cov, meth,
                                          learn_noise=learn_noise,
                                          verbose=False, **variant)
    return estimates


_SOURCE_MODEL_TEXT = {
    "point": "point sources (one variance per source)",
    "multiscale": "multi-scale (point sources and extended cortical patches "
                  "of 8-25 mm radius; kept where its evidence beats the point "
                  "model)",
}


def _add_summary(report, evoked, fwd, estimates, kw, source_model="point",
                 loose=0.0):
    """Methods run, data size, the fallback note and the run times."""
    unfolded = estimates["unfolded"]
    others = ", ".join(r["label"] for k, r in estimates.items()
                       if k != "unfolded") or "none"
    ori = ("fixed, normal to the cortex" if not loose else
           f"loose = {loose:g} (tangential dipoles with prior variance "
           f"{loose:g} relative to the normal one; maps show the norm)")
    lines = [f"<p><b>Unfolded SBL model run:</b> "
             f"{html.escape(unfolded['label'])}; "
             f"comparison: {html.escape(others)}.</p>",
             f"<p>Source model of the unfolded estimates: "
             f"{_SOURCE_MODEL_TEXT[source_model]}; orientation: {ori}.</p>",
             f"<p>{len(evoked.ch_names)} channels, {evoked.data.shape[1]} "
             f"samples ({evoked.times[0] * 1e3:.0f} to "
             f"{evoked.times[-1] * 1e3:.0f} ms), nave = {evoked.nave}; "
             f"{fwd['nsource']} sources.</p>"]
    if unfolded["note"]:
        lines.insert(0, "<div class='alert alert-warning'><b>Note:</b> "
                     f"{html.escape(unfolded['note'])}</div>")
    lines.append("<p>Run times (s): " + ", ".join(
        f"{html.escape(r['label'])}: {r['seconds']:.2f}"
        for r in estimates.values()) + "</p>")
    report.add_html("".join(lines), title="Summary", **kw)


def _add_metrics(report, stc_true, estimates, fwd, kw):
    """The metrics table against the ground truth; return its rows."""
    rows = metrics_table(stc_true, estimates, fwd)
    report.add_html(_metrics_html(rows),
                    title="Metrics against the ground truth", **kw)
    return rows


def _brain_entries(estimates, stc_true):
    """``(label, stc)`` of every brain picture, the ground truth first."""
    truth = ([("Ground truth (simulated)", stc_true)] if stc_true is not None
             else [])
    return truth + [(r["label"], r["stc"]) for r in estimates.values()]


def _render_brains(entries, subjects_dir, time, backend, **plot_kw):
    """Render each estimate; return the images (same width) and backend."""
    import matplotlib.pyplot as plt

    from .viz import figure_to_array, plot_source_estimate

    images, used = [], None
    for label, stc in entries:
        fig = plot_source_estimate(stc, subjects_dir, time=time,
                                   backend=backend, title=label, **plot_kw)
        used = fig._mus_backend
        images.append(figure_to_array(fig))
        plt.close(fig)
    width = max(im.shape[1] for im in images)
    images = [np.pad(im, ((0, 0), (0, width - im.shape[1]), (0, 0)),
                     constant_values=255) for im in images]
    return images, used


def _add_brains(report, estimates, stc_true, subjects_dir, time, backend, kw):
    """One brain picture per estimate; return the renderer used."""
    entries = _brain_entries(estimates, stc_true)
    images, backend_used = _render_brains(entries, subjects_dir, time,
                                          backend)
    when = ("temporal RMS amplitude" if isinstance(time, str)
            else f"t = {time * 1e3:.0f} ms")
    for (label, _), img in zip(entries, images):
        report.add_figure(img, title=f"Brain: {label}",
                          caption=f"|source amplitude| at {when}; each map "
                          "has its own colour scale (95th percentile / 10 % "
                          "of the maximum to the maximum). Rendered with "
                          f"{backend_used}.", **kw)
    return backend_used


#: Caption of the posterior-std picture.
STD_CAPTION = (
    "Posterior standard deviation of every source (A·m), the square root of "
    "the diagonal of the posterior covariance Γ − ΓLᵀΣ_y⁻¹LΓ of {label}; it "
    "does not change over time. It is the model's uncertainty about each "
    "source amplitude given the source variances γ it learned: where the "
    "std is comparable to the estimated amplitude, the amplitude is poorly "
    "determined by the data (deep sources, or activity that neighbouring "
    "sources explain equally well). Sources the model pruned (γ ≈ 0) get a "
    "std of ~0 because the prior switches them off, not because the data "
    "show them silent: a dark region here is not evidence of no activity. "
    "Largest std: {std_max}, {ratio:.0f} % of the largest estimated "
    "amplitude ({amp_max}). Colour scale: this map's own (see the colour "
    "bar). Rendered with {backend}.")


def _nam(value):
    return f"{value * 1e9:.3g} nA·m"


def _add_posterior_std(report, estimates, subjects_dir, backend, kw):
    """The brain picture of the unfolded model's posterior std (same
    renderer as the estimates); return the backend used, None if none."""
    unfolded = estimates["unfolded"]
    std = unfolded.get("std")
    if std is None:
        return None
    images, used = _render_brains(
        [(f"Posterior std: {unfolded['label']}", std)], subjects_dir, "rms",
        backend, value_label="posterior std", time_label="constant over time")
    std_max = float(np.abs(std.data).max())
    amp_max = float(np.abs(unfolded["stc"].data).max())
    report.add_figure(images[0],
                      title=f"Posterior std: {unfolded['label']}",
                      caption=STD_CAPTION.format(
                          label=unfolded["label"], backend=used,
                          std_max=_nam(std_max), amp_max=_nam(amp_max),
                          ratio=100 * std_max / max(amp_max, 1e-300)), **kw)
    return used


def _add_peak_table(report, estimates, stc_true, fwd, n_peaks, kw):
    """Tables of the strongest peaks; return the peaks by key."""
    peaks = {k: peak_sources(r["stc"], fwd, n=n_peaks)
             for k, r in estimates.items()}
    tables = [peak_table_html(peaks[k], unit=r["unit"], caption=r["label"])
              for k, r in estimates.items()]
    if stc_true is not None:
        peaks["truth"] = peak_sources(stc_true, fwd, n=n_peaks)
        tables.insert(0, peak_table_html(peaks["truth"],
                                         caption="Ground truth"))
    report.add_html(
        "<p>Strongest local maxima of each estimate's peak-amplitude map "
        "(positions in fsaverage MRI coordinates ≈ MNI305, mm).</p>"
        + "".join(tables), title="Peak sources", **kw)
    return peaks


def _add_time_courses(report, estimates, peaks, stc_true, kw):
    """Time courses of every estimate at the three strongest reference
    peaks (the true ones in simulations, else the unfolded model's)."""
    import matplotlib.pyplot as plt

    from .viz import plot_time_courses

    if stc_true is not None:
        ref, ref_name = peaks["truth"], "true"
    else:
        ref, ref_name = peaks["unfolded"], estimates["unfolded"]["label"]
    verts = [(p["hemi_idx"], p["vertex"],
              f"{p['hemi']} vertex {p['vertex']} "
              f"({', '.join(f'{c:.0f}' for c in p['pos_mm'])} mm)")
             for p in ref[:3]]
    if not verts:
        return
    fig = plot_time_courses({r["label"]: r["stc"] for r in estimates.values()},
                            verts, stc_true=stc_true,
                            title=f"Time courses at the {ref_name} peak sources")
    report.add_figure(fig, title="Time courses at the peak sources",
                      caption="Unit-free (noise-normalised) estimates are "
                      "drawn dashed on the right axis.", **kw)
    plt.close(fig)


def _cov_std(cov, names):
    """Noise standard deviation of ``cov`` on the channels ``names``."""
    var = np.asarray(cov["data"]).ravel() if cov["diag"] else np.diag(cov["data"])
    return np.sqrt(var[[cov["names"].index(c) for c in names]])


#: Display scale and unit of a noise std per channel type (the figures
#: show ``std * 1e6``, so values are pre-scaled by ``scale / 1e6``).
_NOISE_UNITS = dict(eeg=(1e6, "µV"), mag=(1e15, "fT"), grad=(1e13, "fT/cm"))


def _add_learned_noise(report, evoked, cov, true_noise_cov, kw):
    """Topomap of the learned noise (vs the truth) and the noisiest channels;
    one pair per channel type when there are several (MEG+EEG)."""
    import matplotlib.pyplot as plt

    from .viz import plot_noise_topomap, plot_noisiest_channels

    types = {c: mne.channel_type(evoked.info, evoked.ch_names.index(c))
             for c in cov["names"]}
    kinds = list(dict.fromkeys(types.values()))
    for kind in kinds:
        names = [c for c in cov["names"] if types[c] == kind]
        scale, unit = _NOISE_UNITS.get(kind, (1e6, "µV"))
        scale /= 1e6
        suffix = "" if len(kinds) == 1 else f", {kind}"
        std = _cov_std(cov, names) * scale
        info = mne.pick_info(evoked.info,
                             [evoked.ch_names.index(c) for c in names])
        std_true = (None if true_noise_cov is None
                    else _cov_std(true_noise_cov, names) * scale)
        with np.errstate(invalid="ignore"):  # r of a constant true std
            fig = plot_noise_topomap(info, std, std_true=std_true, unit=unit)
        report.add_figure(fig, title=f"Learned noise (topomap{suffix})",
                          caption="Sensor noise standard deviation learned "
                          "jointly with the sources (diagonal λ mapped back "
                          "through the whitener).", **kw)
        plt.close(fig)
        fig = plot_noisiest_channels(names, std, unit=unit)
        report.add_figure(fig, title=f"Learned noise (noisiest channels"
                          f"{suffix})", **kw)
        plt.close(fig)


def _add_convergence(report, evoked, fwd, noise_cov, model, estimates,
                     learn_noise, kw, variant=False):
    """Per-layer convergence of the model run (and of the classical solver
    next to a learned one); return the trajectories by label."""
    import matplotlib.pyplot as plt

    from .viz import plot_convergence

    unfolded = estimates["unfolded"]
    learned = unfolded["name"] != "cb"
    trajectories = {unfolded["label"]: unfolded_sbl_trajectory(
        evoked, fwd, noise_cov, model if unfolded["note"] is None else "cb",
        learn_noise=learn_noise, verbose=False)}
    if learned:
        trajectories[unfolded_method("cb", learn_noise).label] = \
            unfolded_sbl_trajectory(evoked, fwd, noise_cov, "cb",
                                    learn_noise=learn_noise, verbose=False)
    fig = plot_convergence(trajectories)
    cap = ("Per layer (= iteration) of the unfolded solver: Type-II cost "
           "at the layer's input, relative change of the source "
           "variances γ")
    cap += (", and the mean |correction| the learned modules add in the "
            "log domain." if learned else
            ". The classical solver has no learned corrections.")
    if variant:
        cap += (" Computed with point sources and fixed orientation "
                "(unfolded_sbl_trajectory), not with the source model of "
                "the estimates above.")
    report.add_figure(fig, title="Convergence per layer", caption=cap, **kw)
    plt.close(fig)
    return trajectories


@verbose
@fill_doc
def add_unfolded_sbl_to_report(report, evoked, fwd, noise_cov, *,
                               model="deep-cb", compare=("sloreta",),
                               learn_noise=True, subjects_dir=None,
                               time="peak", n_peaks=5, stc_true=None,
                               true_noise_cov=None, section=None,
                               backend="auto", convergence=True,
                               replace=False, source_model="point", loose=0.0,
                               posterior_std=False, verbose=None):
    """Add unfolded-SBL and comparison estimates to an :class:`mne.Report`.

    Parameters
    ----------
    report : mne.Report
        The report to add to.
    %(report_evoked)s
    %(report_fwd)s
        Brain pictures are drawn on fsaverage unless ``subjects_dir``
        holds the subject.
    %(report_noise_cov)s
    model : str | UnfoldedSBL | path-like
        Unfolded model. ``"deep-cb"`` etc. fall back to the classical
        ``"cb"`` (with a note in the report) when no pretrained weights are
        available.
    compare : tuple of str
        Comparison methods, names of the registry
        :mod:`mne_unfolded_sbl.methods` (see :func:`compute_estimate`):
        ``"cb"`` (classical convex bounding), other unfolded models,
        ``"sloreta"``, ``"dspm"``, ``"mne"``, ``"eloreta"``,
        ``"gamma-map"``, ``"mxne"``. ``"cb"`` is skipped when ``model``
        itself fell back to it.
    %(learn_noise)s
    subjects_dir : path-like | None
        Subjects dir for the brain pictures (None: the package's fsaverage).
    time : "peak" | "rms" | float
        Time shown on the brains: ``"peak"`` = the peak of the evoked's
        global field power (the same time for every estimate), a time in
        s, or ``"rms"`` (temporal RMS amplitude per source).
    n_peaks : int
        Rows of the peak-source tables.
    stc_true : mne.SourceEstimate | None
        Ground truth (simulations): shown first, used in the time courses
        and a metrics table.
    true_noise_cov : mne.Covariance | None
        True noise (simulations): compared with the learned noise.
    section : str | None
        Report section; None: ``"Source imaging (<model>)"``.
    backend : "auto" | "pyvista" | "matplotlib"
        Brain renderer (:func:`mne_unfolded_sbl.viz.plot_source_estimate`).
    convergence : bool
        Add the per-layer convergence plot.
    replace : bool
        Replace report items with the same title.
    %(source_model)s
        Of the unfolded model and of the comparison models given by a
        bare name (``"cb"``).
    %(loose)s
        As ``source_model``; ``loose > 0`` needs a free-orientation
        forward (the maps then show the norm over the orientations).
    posterior_std : bool
        Add a brain picture of the posterior standard deviation of the
        unfolded model's sources (same renderer as the estimates), with a
        caption saying what it means.
    %(verbose)s

    Returns
    -------
    results : dict
        ``estimates`` (key -> :func:`compute_estimate` dict; the unfolded
        model's key is ``"unfolded"``, with its posterior std under
        ``"std"`` with ``posterior_std``), ``model`` (name actually run),
        ``note`` (fallback message or None), ``peaks`` (key -> list),
        ``metrics`` (rows, with ``stc_true``), ``trajectories``,
        ``backend`` (brain renderer used), ``time``.
    """
    from .methods import _check_variant

    _validate_type(report, mne.Report, "report")
    _validate_type(evoked, mne.Evoked, "evoked")
    _validate_type(posterior_std, bool, "posterior_std")
    source_model, loose = _check_variant(source_model, loose)
    compare = (compare,) if isinstance(compare, str) else tuple(compare or ())
    for meth in compare:  # an unknown name fails before any work is done
        get_method(meth, learn_noise=learn_noise)
    t_plot = _plot_time(evoked, time)

    estimates = _run_estimates(evoked, fwd, noise_cov, model, compare,
                               learn_noise, source_model, loose,
                               posterior_std)
    unfolded = estimates["unfolded"]
    if section is None:
        section = f"Source imaging ({unfolded['label']})"
    kw = dict(section=section, replace=replace)

    _add_summary(report, evoked, fwd, estimates, kw, source_model, loose)
    metrics = (None if stc_true is None
               else _add_metrics(report, stc_true, estimates, fwd, kw))
    backend_used = _add_brains(report, estimates, stc_true, subjects_dir,
                               t_plot, backend, kw)
    _add_posterior_std(report, estimates, subjects_dir, backend, kw)
    peaks = _add_peak_table(report, estimates, stc_true, fwd, n_peaks, kw)
    _add_time_courses(report, estimates, peaks, stc_true, kw)
    if unfolded["noise_cov"] is not None:
        _add_learned_noise(report, evoked, unfolded["noise_cov"],
                           true_noise_cov, kw)
    trajectories = {}
    if convergence:
        trajectories = _add_convergence(
            report, evoked, fwd, noise_cov, model, estimates, learn_noise, kw,
            variant=(source_model, loose) != ("point", 0.0))

    logger.info(f"Added {unfolded['name']} and {len(estimates) - 1} "
                f"comparison estimate(s) to the report (brains rendered with "
                f"{backend_used}).")
    return dict(estimates=estimates, model=unfolded["name"],
                note=unfolded["note"], peaks=peaks, metrics=metrics,
                trajectories=trajectories, backend=backend_used, time=t_plot)
