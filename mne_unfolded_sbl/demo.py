"""``mne-unfolded-sbl demo``: simulate, localise, compare, write a report.

Simulates an EEG (or MEG, or MEG+EEG: ``--sensors``) evoked response from a
few focal cortical sources on the fsaverage template (offline: the
package's embedded template head model),
localises it with the pretrained Deep CB network (or the classical
convex-bounding solver, with a clear note, when no pretrained weights are
available), with classical convex bounding and with sLORETA, prints the
paper's metrics against the ground truth and writes an :class:`mne.Report`
(brain pictures of the truth and of each estimate, peak-source tables, time
courses, the learned per-channel noise and the per-layer convergence).

Run ``mne-unfolded-sbl demo --help`` or ``python -m mne_unfolded_sbl.demo``.
No network access is needed. The first run builds and caches the forward
model (``MNE_UNFOLDED_SBL_CACHE``, default: the OS cache dir).

Head model: ``--bem-ico auto`` (default) uses the fast ico3 BEM (a few
seconds, lead fields within about 8 % of ico4), so that the first run stays
within about a minute; ``--bem-ico 4`` uses the accurate ico4 BEM (computed
once, about 1-4 minutes and 2 GB, then cached).

``--out`` is the report file (``.html``) or a folder to write
``report.html`` into; an existing report is only replaced with
``--overwrite``.

Sensors: ``--sensors eeg`` (default) simulates the 64-channel EEG cap
with an SNR drawn for every channel; ``--sensors meg`` the synthetic
306-channel MEG array of :func:`~mne_unfolded_sbl.datasets.make_meg_info`
(magnetometers and planar gradiometers) and ``--sensors meg-eeg`` both,
with white noise of one variance per channel type at an SNR drawn for
every type (:func:`~mne_unfolded_sbl.simulation.simulate_evoked` with
``noise="per-type"``); the EEG channels are average-referenced, the MEG
ones not. The pretrained networks were trained on EEG only and warn on
MEG channels: on the benchmark's MEG settings they are about as good as
convex bounding, Deep Attn CB (γ,λ) worse on MEG alone, so ``--model cb``
is the safe choice there (doc/benchmarks.rst).

Source model: ``--source-model multiscale`` localises with extended
cortical patches as well as point sources (kept where the evidence favours
them), ``--loose 0.2`` with loose orientation (the inversion then uses the
free-orientation template forward). The report always shows the
posterior standard deviation of the unfolded model's sources.
"""

# License: BSD-3-Clause

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import matplotlib
import mne

from .cli import arg_error, float_type, int_type
from .source_models import SOURCE_MODELS
from .core.leadfield import PERTURBED_CONDUCTIVITY
from .core.simulator import SimulationConfig
from .datasets import get_subjects_dir, make_template_forward, resolve_bem_ico
from .report import add_unfolded_sbl_to_report, format_metrics_table
from .simulation import SENSORS, simulate_evoked

__all__ = ["run_demo", "add_arguments", "run", "main"]

DEFAULT_OUT = Path("mne_unfolded_sbl_demo") / "report.html"
#: Suffixes that make ``--out`` a report file rather than a folder.
HTML_SUFFIXES = (".html", ".htm")
#: Brain, skull, scalp conductivities (S/m) of the forward that simulates
#: the data (the inversion uses the default 0.3, 0.006, 0.3): a controlled
#: forward-model mismatch, as in the paper (appendix B.2), avoids the
#: "inverse crime".
SIM_CONDUCTIVITY = PERTURBED_CONDUCTIVITY


def add_arguments(parser):
    """Add the demo's options to an :class:`argparse.ArgumentParser`."""
    parser.add_argument("--out", default=str(DEFAULT_OUT), type=_out_arg,
                        help="report file (.html) or folder to write "
                        "report.html into (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing report")
    parser.add_argument("--model", default="deep-cb",
                        help="unfolded model: cb, bias-cb, deep-cb, "
                        "deep-attn-cb or a .safetensors weights file; learned "
                        "models fall back to cb without weights "
                        "(default: %(default)s)")
    parser.add_argument("--seed", type=int_type(0), default=0,
                        help="simulation seed (default: %(default)s)")
    parser.add_argument("--n-sources", type=int_type(1), default=3,
                        help="number of focal sources (default: %(default)s)")
    parser.add_argument("--snr-db", type=float_type(), nargs=2, default=(5.0, 20.0),
                        metavar=("LOW", "HIGH"),
                        help="SNR range in dB, drawn for every channel (EEG) "
                        "or, with MEG, for every channel type (default: 5 20)")
    parser.add_argument("--n-times", type=int_type(2), default=100,
                        help="time samples, at least 2 (default: %(default)s)")
    parser.add_argument("--sfreq", type=float_type(0, min_inclusive=False),
                        default=100.0,
                        help="sampling frequency in Hz (default: %(default)s)")
    parser.add_argument("--sensors", default="eeg", choices=SENSORS,
                        help="simulated channels: the EEG cap, the template "
                        "306-channel MEG array, or both; with MEG the noise "
                        "is white with one variance per channel type "
                        "(default: %(default)s)")
    parser.add_argument("--montage", default="train-64",
                        help="EEG montage of the template forward "
                        "(default: %(default)s)")
    parser.add_argument("--spacing", default="ico3", choices=("ico3", "ico4"),
                        help="source space (default: %(default)s)")
    parser.add_argument("--bem-ico", default="auto", choices=("auto", "3", "4"),
                        help="BEM resolution; auto = the fast ico3 BEM, 4 = the "
                        "accurate ico4 one, computed once (minutes) and "
                        "cached (default: %(default)s)")
    parser.add_argument("--noise-cov", default="ad-hoc",
                        choices=("ad-hoc", "true"),
                        help="noise covariance given to the solvers: an "
                        "ad-hoc diagonal one (the per-channel noise is then "
                        "unknown and learned) or the true simulated one "
                        "(default: %(default)s)")
    parser.add_argument("--no-mismatch", dest="mismatch", action="store_false",
                        help="simulate with the same forward model as the "
                        "inversion (inverse crime); by default the data are "
                        "simulated with perturbed conductivities "
                        f"{SIM_CONDUCTIVITY} S/m and an ico3 BEM")
    parser.add_argument("--compare", nargs="*", default=["cb", "sloreta"],
                        help="comparison methods (default: cb sloreta)")
    parser.add_argument("--source-model", default="point",
                        choices=SOURCE_MODELS,
                        help="source model of the unfolded estimates: point "
                        "sources, or multiscale (point sources and extended "
                        "cortical patches) (default: %(default)s)")
    parser.add_argument("--loose", type=float_type(0, 1), default=0.0,
                        help="orientation constraint in [0, 1]: 0 = fixed "
                        "normal to the cortex, 0.2 = MNE's usual loose "
                        "orientation, 1 = free; > 0 needs --source-model "
                        "point (default: %(default)s)")
    parser.add_argument("--backend", default="auto",
                        choices=("auto", "pyvista", "matplotlib"),
                        help="brain renderer (default: %(default)s)")
    parser.add_argument("--open", action="store_true",
                        help="open the report in a web browser")
    parser.set_defaults(_parser=parser)
    return parser


def _resolve_out(out):
    """The report file meant by ``out``: an .html file, or report.html in a
    folder (an existing one, a name without a suffix or a path ending in
    a slash). ValueError for anything else (e.g. ``out.png``)."""
    raw = os.fspath(out)
    path = Path(raw).expanduser()
    if path.is_dir():
        return path / "report.html"
    if path.suffix.lower() in HTML_SUFFIXES:
        return path
    if path.exists():
        raise ValueError(f"expected an .html file or a folder to write "
                         f"report.html into; {raw!r} is a file that is not "
                         ".html")
    if not path.suffix or raw.endswith(("/", os.sep)):
        return path / "report.html"
    raise ValueError(f"expected an .html file or a folder to write "
                     f"report.html into, got {raw!r} (not .html; for a new "
                     "folder with a dot in its name, end the path with '/')")


def _out_arg(text):
    """argparse type of ``--out``: checked, kept as given."""
    try:
        _resolve_out(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _out_path(out, overwrite=False, *, flag="overwrite=True"):
    """The report file of ``out`` (see :func:`_resolve_out`), its folder
    created; FileExistsError if it exists and not ``overwrite``."""
    out = _resolve_out(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass {flag} to "
                              "replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _bem_ico(choice):
    """Resolve ``--bem-ico``: ``auto`` is ico4 when cached, else ico3."""
    if choice != "auto":
        return int(choice), None
    bem = resolve_bem_ico("auto")
    if bem == 4:
        return 4, "the accurate ico4 BEM, cached"
    return 3, ("the fast ico3 BEM; --bem-ico 4 computes the accurate ico4 BEM "
               "once, which auto then uses")


#: What the template forward holds, per ``--sensors``.
_SENSOR_TEXT = {
    "eeg": "montage {montage}",
    "meg": "306-channel template MEG array",
    "meg-eeg": "306-channel template MEG array + montage {montage}",
}


def _pick_sensors(fwd, sensors):
    """The channels of ``sensors`` of a template forward."""
    if sensors == "meg":
        with mne.utils.use_log_level("error"):
            return mne.pick_types_forward(fwd, meg=True, eeg=False)
    return fwd


def _snr_range(snr_db):
    low, high = snr_db
    return f"{low:g} dB" if low == high else f"{low:g}-{high:g} dB"


def _snr_text(sensors, snr_db, snr_true):
    """The simulated SNR, for the terminal."""
    if sensors == "eeg":
        return f"per-channel SNR {_snr_range(snr_db)}"
    return (f"SNR per channel type in {_snr_range(snr_db)} ("
            + ", ".join(f"{k} {v:.1f} dB" for k, v in snr_true.items()) + ")")


def _snr_html(sensors, snr_db, snr_true):
    """The simulated SNR, for the report."""
    if sensors == "eeg":
        return (f"per-channel SNR uniform in {_snr_range(snr_db)} "
                "(heteroscedastic noise)")
    return ("white noise of one variance per channel type, at an SNR "
            f"(mean signal power over the type's channels / noise variance) "
            f"drawn uniformly in {_snr_range(snr_db)} for every type: "
            + ", ".join(f"{k} {v:.1f} dB" for k, v in snr_true.items())
            + ("; EEG average-referenced, MEG not" if "eeg" in snr_true
               else ""))


def run_demo(out=DEFAULT_OUT, *, model="deep-cb", seed=0, n_sources=3,
             snr_db=(5.0, 20.0), n_times=100, mismatch=True, sfreq=100.0, montage="train-64",
             spacing="ico3", bem_ico="auto", noise_cov="ad-hoc",
             compare=("cb", "sloreta"), backend="auto", open_browser=False,
             overwrite=False, source_model="point", loose=0.0,
             posterior_std=True, sensors="eeg", printer=print):
    """Run the demo and return a dict with the results (see module docs).

    ``out`` is the report file (``.html``) or a folder to write
    ``report.html`` into; an existing report is replaced only with
    ``overwrite=True`` (FileExistsError otherwise, before any computation).
    ``source_model`` and ``loose`` are those of the unfolded estimates
    (and of ``"cb"`` in ``compare``); ``loose > 0`` inverts with the
    free-orientation template forward. ``posterior_std`` adds the
    posterior standard deviation to the report. ``sensors`` is ``"eeg"``,
    ``"meg"`` or ``"meg-eeg"`` (the template MEG array of
    :func:`~mne_unfolded_sbl.datasets.make_meg_info` with the ``montage``
    EEG cap; with MEG, ``snr_db`` is the range of one SNR per channel type,
    see :func:`~mne_unfolded_sbl.simulation.simulate_evoked`).

    Returns
    -------
    results : dict
        ``report`` (path), the :func:`~mne_unfolded_sbl.report.add_unfolded_sbl_to_report`
        output under ``"report_results"``, ``metrics`` (rows), ``note``
        (fallback message or None), ``timings`` (s), ``evoked``,
        ``stc_true``, ``fwd`` (of the inversion, the channels of
        ``sensors``), ``snr_db`` (channel type -> SNR in dB of the
        simulated data).
    """
    from .methods import _check_variant

    source_model, loose = _check_variant(source_model, loose)
    if sensors not in SENSORS:
        raise ValueError(f"sensors must be one of {list(SENSORS)}, got "
                         f"{sensors!r}")
    meg = sensors != "eeg"
    out = _out_path(out, overwrite)
    matplotlib.use("Agg", force=False)
    t_start = time.perf_counter()
    timings = {}
    bem, bem_note = _bem_ico(str(bem_ico))
    printer(f"[1/4] Template forward: fsaverage {spacing}, "
            + _SENSOR_TEXT[sensors].format(montage=montage)
            + f", ico{bem} BEM" + (f" ({bem_note})" if bem_note else ""))
    t0 = time.perf_counter()
    fwd = _pick_sensors(make_template_forward(montage, spacing, bem_ico=bem,
                                              meg=meg, verbose=False), sensors)
    fwd_inv = fwd
    if loose:  # three orientations per source: the free-orientation forward
        from .benchmark.settings import free_template_forward

        fwd_inv = _pick_sensors(free_template_forward(
            montage, spacing, bem_ico=bem, meg=meg, verbose=False), sensors)
    subjects_dir = get_subjects_dir(verbose=False)
    timings["forward"] = time.perf_counter() - t0
    printer(f"      {fwd['nchan']} channels x {fwd['nsource']} sources "
            f"({timings['forward']:.1f} s)"
            + (f"; free orientation for loose={loose:g}" if loose else ""))

    t0 = time.perf_counter()
    fwd_sim = fwd
    if mismatch:
        fwd_sim = make_template_forward(montage, spacing, SIM_CONDUCTIVITY,
                                        bem_ico=3, meg=meg, verbose=False)
    config = SimulationConfig(n_sources=(n_sources, n_sources),
                              snr_db=tuple(snr_db), n_times=n_times,
                              sfreq=sfreq)
    evoked, stc_true, cov_true, snr_true = simulate_evoked(
        fwd_sim, config, seed=seed, sensors=sensors, return_snr=True,
        verbose=False)
    if noise_cov == "true":
        cov = cov_true
    else:
        cov = mne.make_ad_hoc_cov(evoked.info, verbose=False)
    timings["simulation"] = time.perf_counter() - t0
    printer(f"[2/4] Simulated {n_sources} focal sources, "
            f"{_snr_text(sensors, snr_db, snr_true)}, {n_times} samples at "
            f"{sfreq:g} Hz (seed {seed}), "
            + ("with perturbed conductivities " if mismatch else
               "with the inversion's own forward (inverse crime) ")
            + f"({timings['simulation']:.1f} s); noise covariance given to "
            f"the solvers: {noise_cov}")

    variant = ("" if (source_model, loose) == ("point", 0.0) else
               f" ({source_model}" + (f", loose={loose:g}" if loose else "")
               + ")")
    printer(f"[3/4] Localising with {model}{variant} and "
            f"{', '.join(compare)}; rendering the report")
    t0 = time.perf_counter()
    report = mne.Report(title="mne-unfolded-sbl demo: simulated evoked "
                        "response", verbose=False)
    with warnings.catch_warnings():  # the fallback note is printed below
        warnings.filterwarnings("ignore", message="Pretrained weights")
        res = add_unfolded_sbl_to_report(
            report, evoked, fwd_inv, cov, model=model, compare=tuple(compare),
            learn_noise=True, subjects_dir=subjects_dir, time="rms",
            stc_true=stc_true, true_noise_cov=cov_true, backend=backend,
            section="Simulated comparison", source_model=source_model,
            loose=loose, posterior_std=bool(posterior_std), verbose=False)
    timings["localise+report"] = time.perf_counter() - t0
    if res["note"]:
        printer("\n  NOTE: " + res["note"] + "\n")
    printer(format_metrics_table(res["metrics"]))
    if meg and res["model"] != "cb":
        printer(f"      ({res['model']} is a network trained on EEG; with MEG "
                "it is not known to help and may hurt, --model cb is the "
                "safe choice: see the MEG benchmarks in doc/benchmarks.rst)")
    printer(f"      brains rendered with: {res['backend']}")

    settings = (f"<p>Seed {seed}; {n_sources} focal sources (Gaussian "
                f"footprints, 1-3 mm), {_snr_html(sensors, snr_db, snr_true)}, "
                f"{n_times} samples at {sfreq:g} Hz; fsaverage {spacing} "
                f"source space, "
                + _SENSOR_TEXT[sensors].format(montage=montage)
                + f" ({len(evoked.ch_names)} channels), 3-layer ico{bem} BEM "
                "for the inversion; the data were simulated "
                + (f"with conductivities {SIM_CONDUCTIVITY} S/m and an ico3 "
                   "BEM (forward-model mismatch). " if mismatch else
                   "with the same forward (inverse crime). ")
                + "Noise covariance given to the solvers: "
                f"{noise_cov}; source model of the unfolded estimates: "
                f"{source_model}, loose = {loose:g}.</p><p>Reproduce with "
                f"<code>mne-unfolded-sbl demo --seed {seed} --n-sources "
                f"{n_sources} --snr-db {snr_db[0]:g} {snr_db[1]:g}"
                + (f" --sensors {sensors}" if meg else "")
                + (f" --source-model {source_model}"
                   if source_model != "point" else "")
                + (f" --loose {loose:g}" if loose else "")
                + "</code>.</p>")
    report.add_html(settings, title="Simulation settings",
                    section="Simulated comparison")
    t0 = time.perf_counter()
    report.save(out, overwrite=True, open_browser=open_browser, verbose=False)
    timings["save"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    printer(f"[4/4] Report written to {out} (total {timings['total']:.1f} s)")
    return dict(report=out, report_results=res, metrics=res["metrics"],
                note=res["note"], timings=timings, evoked=evoked,
                stc_true=stc_true, fwd=fwd, snr_db=snr_true)


def _tied_geometry_error(model, montage, spacing, sensors):
    """Why a Bias CB ``model`` cannot run on the demo's template geometry
    (None if it can, or if it is another model): said before the template
    forward is computed."""
    from .core.weights import resolve_model, tied_geometry

    if str(model).lower() == "cb":
        return None
    try:
        with warnings.catch_warnings():  # a fallback is reported later
            warnings.filterwarnings("ignore", message="Pretrained weights")
            net, _, _ = resolve_model(model, True)
    except (ValueError, OSError):  # reported where the model is loaded
        return None
    geom = tied_geometry(net)
    if geom is None or geom["montage"] is None:
        return None  # not tied, or tied by sizes only (checked later)
    asked = (montage, spacing, sensors)
    if asked == (geom["montage"], geom["spacing"], "eeg"):
        return None
    return (f"Bias CB weights are tied to the geometry they were trained on: "
            f"the {geom['montage']!r} cap on the fsaverage {geom['spacing']} "
            f"source space, EEG only; this run asks for --montage {montage} "
            f"--spacing {spacing} --sensors {sensors}. Use --model deep-cb or "
            "deep-attn-cb, which transfer to any montage and source space, "
            "or --model cb")


def run(args):
    """Run the demo from parsed command-line arguments; return 0."""
    low, high = args.snr_db
    if low > high:
        arg_error(args, f"argument --snr-db: LOW must not exceed HIGH, got "
                  f"{low:g} {high:g}")
    if args.source_model == "multiscale" and args.loose:
        arg_error(args, f"argument --loose: the multiscale source model "
                  f"models patches of dipoles normal to the cortex and needs "
                  f"--loose 0, got --loose {args.loose:g}; use --source-model "
                  "point with loose orientation")
    try:  # before anything is computed
        out = _out_path(args.out, args.overwrite, flag="--overwrite")
    except (ValueError, OSError) as err:
        arg_error(args, f"argument --out: {err}")
    tied = _tied_geometry_error(args.model, args.montage, args.spacing,
                                args.sensors)
    if tied:
        arg_error(args, f"argument --model: {tied}")
    run_demo(out, model=args.model, seed=args.seed,
             n_sources=args.n_sources, snr_db=(low, high),
             n_times=args.n_times, sfreq=args.sfreq, montage=args.montage,
             mismatch=args.mismatch,
             spacing=args.spacing, bem_ico=args.bem_ico,
             noise_cov=args.noise_cov, compare=tuple(args.compare),
             backend=args.backend, open_browser=args.open,
             overwrite=args.overwrite, source_model=args.source_model,
             loose=args.loose, sensors=args.sensors)
    return 0


def main(argv=None):
    """``python -m mne_unfolded_sbl.demo``."""
    parser = argparse.ArgumentParser(
        prog="python -m mne_unfolded_sbl.demo",
        description="Simulate an evoked response on the fsaverage template, "
        "localise it (Deep CB / convex bounding / sLORETA) and write an HTML "
        "report.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
