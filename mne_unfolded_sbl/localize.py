"""``mne-unfolded-sbl localize``: localise your own recording, write a report.

For a neuroscientist arriving with their own files::

    mne-unfolded-sbl localize sub01-ave.fif --condition auditory \\
        --fwd sub01-fwd.fif --cov sub01-cov.fif --out sub01_localize/
    mne-unfolded-sbl localize sub01-epo.fif --condition auditory \\
        --template --cov baseline --out sub01_localize/

Inputs:

- the data: an evoked file (``-ave.fif``; ``--condition`` by name or index
  when it holds several) or an epochs file (``-epo.fif``; ``--condition``
  selects an event name, MNE's ``"a/b"`` tags included; the selected
  epochs are averaged);
- the head model: a forward file (``--fwd``) or the embedded fsaverage
  template (``--template``), made for the data's EEG electrode positions
  (its digitisation, or ``--montage NAME`` to set a standard one);
- the noise covariance: a file (``--cov FILE``), ``--cov ad-hoc``
  (:func:`mne.make_ad_hoc_cov`) or ``--cov baseline`` (the pre-stimulus part
  of every epoch, :func:`mne.compute_covariance` with ``tmax=0``).

Every input is checked before anything is computed, and each problem ends
in a one-line error that names the fix (a missing file, an unknown
condition, no digitisation for ``--template``, EEG without an
average-reference projector, channels the forward or covariance lack, an
existing report without ``--overwrite``).

Outputs, in the ``--out`` folder: ``report.html`` (an :class:`mne.Report`
from :func:`mne_unfolded_sbl.report.add_unfolded_sbl_to_report`: brains at
the peak of the global field power, peak tables, time courses at the peak
sources, the learned noise per channel, the per-layer convergence),
``peaks.tsv`` (the peak sources of every estimate with MRI and MNI
coordinates), and ``stc/<method>`` source estimates (``-stc.h5`` when h5io
is installed, else ``-lh.stc``/``-rh.stc``). A short summary (peak
location, latency, amplitude and run time of every method) is printed.
"""

# License: BSD-3-Clause

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import warnings
from pathlib import Path

import mne
import numpy as np

from .cli import arg_error, float_type
from .core._utils import has_module

__all__ = ["DEFAULT_COMPARE", "LocalizeError", "run_localize",
           "add_arguments", "run", "main"]

#: Comparison methods of the report by default (``--compare``).
DEFAULT_COMPARE = ("sloreta", "dspm", "gamma-map")
#: Names the covariance option takes besides a file.
COV_CHOICES = ("ad-hoc", "baseline")
#: What the command writes into ``--out`` (the source estimates go to
#: ``STC_DIR``).
REPORT_NAME = "report.html"
PEAKS_NAME = "peaks.tsv"
STC_DIR = "stc"
#: File-name endings MNE uses for evoked and epochs files.
EVOKED_SUFFIXES = ("-ave.fif", "_ave.fif", "-ave.fif.gz", "_ave.fif.gz")
EPOCHS_SUFFIXES = ("-epo.fif", "_epo.fif", "-epo.fif.gz", "_epo.fif.gz")
#: The least EEG electrodes with positions ``--template`` accepts.
MIN_TEMPLATE_CHANNELS = 10
_MONTAGE_FIX = ("set the electrode positions: --montage NAME for a standard "
                "cap whose channel names the data use (e.g. --montage "
                "biosemi64, --montage standard_1005), or in Python "
                "raw.set_montage(...) (or epochs/evoked.set_montage) and save "
                "the file again")
_REFERENCE_FIX = ("add --set-average-reference (adds an average-reference "
                  "projector), or in Python "
                  "inst.set_eeg_reference('average', projection=True) and "
                  "save the file again")


class LocalizeError(ValueError):
    """A problem with the inputs of :func:`run_localize`; the message says
    how to fix it. The command line prints it as a usage error."""


# ----------------------------------------------------------------------------
# command-line arguments


def add_arguments(parser):
    """Add the ``localize`` options to an :class:`argparse.ArgumentParser`."""
    parser.add_argument("data", help="evoked file (-ave.fif) or epochs file "
                        "(-epo.fif; the selected epochs are averaged)")
    parser.add_argument("--condition", default=None,
                        help="evoked file: the condition's name (comment) or "
                        "index, needed when the file holds several; epochs "
                        "file: an event name (MNE tags such as 'auditory' for "
                        "'auditory/left' work), default: all epochs")
    head = parser.add_mutually_exclusive_group(required=True)
    head.add_argument("--fwd", default=None, metavar="FILE",
                      help="forward solution file (-fwd.fif)")
    head.add_argument("--template", action="store_true",
                      help="use the embedded fsaverage template head model, "
                      "made for the data's EEG electrode positions (their "
                      "digitisation, or --montage); EEG only")
    parser.add_argument("--montage", default=None, metavar="NAME",
                        help="set a standard montage on the data first (e.g. "
                        "biosemi64, standard_1005, easycap-M1); the channel "
                        "names must match it")
    parser.add_argument("--cov", required=True, metavar="FILE|ad-hoc|baseline",
                        help="noise covariance: a file (-cov.fif), 'ad-hoc' "
                        "(diagonal, mne.make_ad_hoc_cov; the solver still "
                        "learns the noise per channel) or 'baseline' "
                        "(epochs only: the pre-stimulus samples of every "
                        "epoch, mne.compute_covariance(tmax=0, "
                        "method='shrunk'))")
    parser.add_argument("--out", required=True, metavar="FOLDER",
                        help=f"output folder ({REPORT_NAME}, {PEAKS_NAME}, "
                        f"{STC_DIR}/)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the outputs of an earlier run in --out")
    parser.add_argument("--model", default="deep-cb",
                        help="unfolded model: cb, bias-cb, deep-cb, "
                        "deep-attn-cb or a .safetensors weights file; learned "
                        "models fall back to cb (said so) without weights "
                        "(default: %(default)s)")
    parser.add_argument("--compare", nargs="*", default=list(DEFAULT_COMPARE),
                        metavar="METHOD",
                        help="comparison methods: sloreta, dspm, mne, "
                        "eloreta, gamma-map (slow: minutes), mxne, cb, ...; "
                        "--compare alone: none (default: "
                        f"{' '.join(DEFAULT_COMPARE)})")
    parser.add_argument("--tmin", type=float_type(), default=None,
                        help="start of the time window to localise, s "
                        "(default: the data's first sample)")
    parser.add_argument("--tmax", type=float_type(), default=None,
                        help="end of the time window, s (default: the last "
                        "sample)")
    parser.add_argument("--source-model", default=None,
                        choices=("point", "multiscale"),
                        help="source model of the unfolded solver "
                        "(default: point)")
    parser.add_argument("--loose", type=float_type(0, 1), default=None,
                        help="orientation constraint of the unfolded solver, "
                        "0 (fixed, default) to 1 (free; needs a "
                        "free-orientation forward)")
    parser.add_argument("--set-average-reference", action="store_true",
                        help="add an EEG average-reference projector to data "
                        "that have none")
    parser.add_argument("--bads", nargs="+", default=(), metavar="CH",
                        help="mark these channels bad (left out)")
    parser.add_argument("--spacing", default="ico3", choices=("ico3", "ico4"),
                        help="--template source space: 1284 or 5124 sources "
                        "(default: %(default)s)")
    parser.add_argument("--bem-ico", default="auto", choices=("auto", "3", "4"),
                        help="--template BEM: auto = ico4 if cached, else the "
                        "fast ico3 (default: %(default)s)")
    parser.add_argument("--subjects-dir", default=None, metavar="DIR",
                        help="FreeSurfer subjects folder of the forward's "
                        "subject (brain pictures, MNI coordinates); needed "
                        "for a forward that is not on fsaverage")
    parser.add_argument("--backend", default="auto",
                        choices=("auto", "pyvista", "matplotlib"),
                        help="brain renderer (default: %(default)s)")
    parser.add_argument("--open", action="store_true",
                        help="open the report in a web browser")
    parser.set_defaults(_parser=parser)
    return parser


def run(args):
    """Run ``localize`` from parsed arguments; return 0."""
    try:
        run_localize(
            args.data, args.out, condition=args.condition, fwd=args.fwd,
            template=args.template, montage=args.montage, cov=args.cov,
            model=args.model, compare=tuple(args.compare), tmin=args.tmin,
            tmax=args.tmax, source_model=args.source_model, loose=args.loose,
            set_average_reference=args.set_average_reference,
            bads=tuple(args.bads), spacing=args.spacing,
            bem_ico=args.bem_ico, subjects_dir=args.subjects_dir,
            backend=args.backend, overwrite=args.overwrite,
            open_browser=args.open)
    except LocalizeError as err:
        arg_error(args, str(err))
    return 0


def main(argv=None):
    """``python -m mne_unfolded_sbl.localize``."""
    parser = argparse.ArgumentParser(
        prog="python -m mne_unfolded_sbl.localize",
        description="Localise an evoked response (or averaged epochs) with "
        "unfolded SBL and comparison methods; write an HTML report.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


# ----------------------------------------------------------------------------
# the run


def run_localize(data, out, *, cov, fwd=None, template=False, condition=None,
                 montage=None, model="deep-cb", compare=DEFAULT_COMPARE,
                 tmin=None, tmax=None, source_model=None, loose=None,
                 set_average_reference=False, bads=(), spacing="ico3",
                 bem_ico="auto", subjects_dir=None, backend="auto",
                 overwrite=False, open_browser=False, printer=print):
    """Localise ``data`` and write the report (see the module docs).

    Parameters mirror the command-line options. Every input is checked
    first: a problem raises :class:`LocalizeError` (a ValueError) before
    anything is computed or written.

    Returns
    -------
    results : dict
        ``report``, ``peaks`` and ``stc_files`` (paths), ``summary`` (one
        dict per method: ``label``, ``unit``, ``seconds`` and the strongest
        peak, None for an empty map), ``report_results`` (the output of
        :func:`~mne_unfolded_sbl.report.add_unfolded_sbl_to_report`),
        ``evoked``, ``fwd``, ``noise_cov``, ``timings`` (s).
    """
    import matplotlib

    t_start = time.perf_counter()
    timings = {}
    # --- everything that needs no file read
    if (fwd is None) == (not template):
        raise LocalizeError("give exactly one head model: --fwd FILE or "
                            "--template")
    data = _existing_file(data, "data file")
    fwd_fname = None if fwd is None else _existing_file(fwd, "--fwd")
    cov_kind = cov if cov in COV_CHOICES else "file"
    cov_fname = _existing_file(cov, "--cov") if cov_kind == "file" else None
    kind = _data_kind(data)
    if cov_kind == "baseline" and kind == "evoked":
        raise LocalizeError(
            "--cov baseline needs an epochs file (-epo.fif), whose "
            "pre-stimulus samples estimate the noise; with an evoked file "
            "use --cov FILE (e.g. computed with mne.compute_covariance) or "
            "--cov ad-hoc")
    if tmin is not None and tmax is not None and tmin >= tmax:
        raise LocalizeError(f"--tmin ({tmin:g} s) must be before --tmax "
                            f"({tmax:g} s)")
    model_spec, compare = _check_methods(model, compare, loose, source_model)
    out_dir, paths = _check_out(out, overwrite)

    # --- read and prepare the data (no inverse computation yet)
    printer(f"[1/4] Reading {data}")
    t0 = time.perf_counter()
    inst, what, selection = _read_data(data, kind, condition)
    _mark_bads(inst, bads)
    if montage is not None:
        _set_montage(inst, montage)
    if template:
        inst = _pick_template_channels(inst, printer)
    _check_reference(inst, set_average_reference, printer)
    noise_cov, cov_what = _covariance(cov_kind, cov_fname, inst)
    if kind == "epochs":  # the covariance above used every epoch
        evoked = (inst if selection is None else inst[selection]).average()
    else:
        evoked = inst
    evoked = _crop(evoked, tmin, tmax)
    if template:  # before the template forward (a minute the first time)
        _check_channels(evoked, None, noise_cov)
    fwd, head = _forward(fwd_fname, template, inst, spacing, bem_ico)
    used = _check_channels(evoked, fwd, noise_cov)
    _check_tied_model(model, model_spec, used, fwd)
    _fill_positions(evoked, fwd, printer)
    subject, brain_dir = _subjects(fwd, subjects_dir)
    if model_spec is not model:  # --loose / --source-model fit the forward?
        _variant_operator(evoked, fwd, noise_cov, model_spec)
    timings["read"] = time.perf_counter() - t0
    types = "/".join(t.upper() for t in sorted(set(
        evoked.get_channel_types(picks=used))))
    printer(f"      {what}: {len(used)} {types} channels, "
            f"nave = {evoked.nave}, "
            f"{evoked.times[0] * 1e3:.0f} to {evoked.times[-1] * 1e3:.0f} ms "
            f"({len(evoked.times)} samples)")
    printer(f"      head model: {head}; {fwd['nsource']} sources")
    printer(f"      noise covariance: {cov_what}")

    # --- localise and build the report
    names = [_model_name(model)] + list(compare)
    printer(f"[2/4] Localising with {', '.join(names)}")
    matplotlib.use("Agg", force=False)

    from .report import add_unfolded_sbl_to_report

    t0 = time.perf_counter()
    report = mne.Report(title=f"mne-unfolded-sbl localize: {data.name}",
                        verbose=False)
    section = f"Source imaging: {what}"
    with warnings.catch_warnings():  # the fallback note is printed below
        warnings.filterwarnings("ignore", message="Pretrained weights")
        res = add_unfolded_sbl_to_report(
            report, evoked, fwd, noise_cov, model=model_spec, compare=compare,
            learn_noise=True, subjects_dir=brain_dir, time="peak",
            backend=backend, section=section,
            convergence=model_spec is model, verbose=False)
        if model_spec is not model:
            _add_convergence(report, evoked, fwd, noise_cov, res,
                             model_spec, section)
    timings["localise+report"] = time.perf_counter() - t0
    report.add_html(_settings_html(what, head, cov_what, evoked, tmin, tmax,
                                   loose, source_model, model, compare),
                    title="Inputs and settings", section=section)

    # --- write
    printer(f"[3/4] Writing {out_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    if overwrite:
        _remove_old_outputs(paths)
    stc_files = _save_stcs(res["estimates"], paths["stc"])
    summary = _summary(res, subject, brain_dir)
    _write_peaks(paths["peaks"], res, subject, brain_dir)
    report.save(paths["report"], overwrite=True, open_browser=open_browser,
                verbose=False)
    timings["total"] = time.perf_counter() - t_start

    printer(f"[4/4] Done in {timings['total']:.1f} s")
    if res["note"]:
        printer("\n  NOTE: " + res["note"] + "\n")
    printer(_format_summary(summary, subject))
    printer(f"Report: {paths['report']}")
    printer(f"Peak sources: {paths['peaks']}")
    printer(f"Source estimates: {', '.join(str(f) for f in stc_files)}")
    return dict(report=paths["report"], peaks=paths["peaks"],
                stc_files=stc_files, summary=summary, report_results=res,
                evoked=evoked, fwd=fwd, noise_cov=noise_cov, timings=timings)


# ----------------------------------------------------------------------------
# checks before reading


def _existing_file(fname, what):
    path = Path(os.fspath(fname)).expanduser()
    if not path.exists():
        raise LocalizeError(f"{what}: {str(fname)!r} does not exist")
    if not path.is_file():
        raise LocalizeError(f"{what}: {str(fname)!r} is not a file")
    return path


def _data_kind(path):
    """``"evoked"``, ``"epochs"`` (by name) or None (try both)."""
    name = path.name.lower()
    if name.endswith(EVOKED_SUFFIXES):
        return "evoked"
    if name.endswith(EPOCHS_SUFFIXES):
        return "epochs"
    return None


def _model_name(model):
    return Path(model).name if str(model).endswith(".safetensors") else model


def _check_methods(model, compare, loose, source_model):
    """The model to give the report (its registry entry with the source
    model when --loose / --source-model are given, else the name) and the
    comparison names; unknown names and bad combinations fail here."""
    from .methods import UnfoldedModel, get_method

    variant = dict(source_model=source_model or "point",
                   loose=0.0 if loose is None else float(loose))
    try:
        spec = get_method(model, **variant)
    except (ValueError, OSError, TypeError) as err:
        what = ("--model" if variant == dict(source_model="point", loose=0.0)
                else "--model/--source-model/--loose")
        raise LocalizeError(f"{what}: {err}") from None
    compare = tuple(str(m).lower() for m in compare)
    for meth in compare:
        try:
            get_method(meth)
        except (ValueError, OSError, TypeError) as err:
            raise LocalizeError(f"--compare: {err}") from None
    if variant == dict(source_model="point", loose=0.0):
        return model, compare
    if not isinstance(spec, UnfoldedModel) or (
            spec.source_model, spec.loose) != tuple(variant.values()):
        raise LocalizeError(
            f"--loose/--source-model apply to a bare unfolded model name "
            f"(cb, deep-cb, ...) or a weights file, not --model {model!r}")
    return spec, compare


def _check_tied_model(model, model_spec, used, fwd):
    """A Bias CB (tied to its training cap and source space) on another
    geometry fails here, before any computation, as a usage error."""
    from ._checks import check_tied_geometry
    from .core.weights import resolve_model
    from .methods import UnfoldedModel, get_method

    spec = model_spec if isinstance(model_spec, UnfoldedModel) else \
        get_method(model_spec)
    if not isinstance(spec, UnfoldedModel) or spec.model == "cb":
        return
    try:
        with warnings.catch_warnings():  # the fallback note is printed later
            warnings.filterwarnings("ignore", message="Pretrained weights")
            net, _, _ = resolve_model(spec.model, spec.learn_noise,
                                      spec.n_layers)
        check_tied_geometry(net, used, fwd["src"])
    except (ValueError, OSError) as err:
        raise LocalizeError(f"--model {model}: {err}") from None


def _check_out(out, overwrite):
    """The output folder and the paths written there; an earlier run's
    outputs are refused without ``overwrite``."""
    out_dir = Path(os.fspath(out)).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise LocalizeError(f"--out: {str(out)!r} is a file; give a folder")
    paths = dict(report=out_dir / REPORT_NAME, peaks=out_dir / PEAKS_NAME,
                 stc=out_dir / STC_DIR)
    existing = [p for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise LocalizeError(
            f"--out: {out_dir} already holds the results of an earlier run "
            f"({', '.join(p.name for p in existing)}); pass --overwrite to "
            "replace them, or choose another --out folder")
    return out_dir, paths


# ----------------------------------------------------------------------------
# reading and preparing the data


def _read_data(path, kind, condition):
    """The Evoked, or all the Epochs and the --condition selecting some
    (None: all), and a description."""
    if kind is None:  # a name without MNE's suffix: try both readers
        errors = []
        for k in ("evoked", "epochs"):
            try:
                return _read_data(path, k, condition)
            except LocalizeError:
                raise
            except Exception as err:  # noqa: BLE001 - reported below
                errors.append(f"as {k}: {err}")
        raise LocalizeError(
            f"could not read {path} as an evoked (-ave.fif) or epochs "
            f"(-epo.fif) file ({'; '.join(errors)})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # naming
            if kind == "evoked":
                evokeds = mne.read_evokeds(path, verbose="error")
                if not evokeds:
                    raise ValueError("no evoked data in the file")
            else:
                epochs = mne.read_epochs(path, preload=True, verbose="error")
    except LocalizeError:
        raise
    except Exception as err:
        if _data_kind(path) is None:
            raise
        raise LocalizeError(f"could not read {path} as an {kind} file: "
                            f"{err}") from None
    if kind == "evoked":
        return _select_evoked(evokeds, condition, path) + (None,)
    return (epochs,) + _select_epochs(epochs, condition, path)


def _select_evoked(evokeds, condition, path):
    names = [e.comment for e in evokeds]
    listing = ", ".join(f"{i}: {n!r}" for i, n in enumerate(names))
    if condition is None:
        if len(evokeds) == 1:
            return evokeds[0], f"'{names[0]}' of {path.name}"
        raise LocalizeError(
            f"{path.name} holds {len(evokeds)} conditions; choose one with "
            f"--condition NAME or INDEX ({listing})")
    if condition in names:
        i = names.index(condition)
    elif re.fullmatch(r"-?\d+", str(condition)) and \
            -len(evokeds) <= int(condition) < len(evokeds):
        i = int(condition) % len(evokeds)
    else:
        raise LocalizeError(
            f"--condition {condition!r} is not in {path.name}; available "
            f"(index: name): {listing}")
    return evokeds[i], f"'{names[i]}' of {path.name}"


def _select_epochs(epochs, condition, path):
    """Check ``condition``; return a description and ``condition``."""
    listing = ", ".join(repr(k) for k in epochs.event_id)
    if condition is None:
        what = f"average of all {len(epochs)} epochs of {path.name}"
        if len(epochs.event_id) > 1:
            what += f" (conditions {listing}; choose one with --condition)"
        return what, None
    try:
        sel = epochs[condition]
    except KeyError:
        raise LocalizeError(
            f"--condition {condition!r} is not an event of {path.name}; "
            f"available: {listing} (MNE tags such as 'auditory' for "
            "'auditory/left' work too)") from None
    if len(sel) == 0:
        raise LocalizeError(f"--condition {condition!r}: no epochs of "
                            f"{path.name} are left for it (all dropped)")
    return (f"average of {len(sel)} '{condition}' epochs of {path.name}",
            condition)


def _mark_bads(inst, bads):
    unknown = [b for b in bads if b not in inst.ch_names]
    if unknown:
        raise LocalizeError(f"--bads: {unknown} are not channels of the data "
                            f"(channels: {inst.ch_names[:10]}...)")
    inst.info["bads"] = sorted(set(inst.info["bads"]) | set(bads),
                               key=inst.ch_names.index)


def _set_montage(inst, name):
    from .datasets import make_montage

    try:
        montage = make_montage(name)
    except ValueError as err:
        raise LocalizeError(f"--montage: {err}") from None
    try:
        inst.set_montage(montage, verbose=False)
    except ValueError as err:
        missing = [c for c in inst.copy().pick("eeg", exclude=()).ch_names
                   if c not in montage.ch_names]
        raise LocalizeError(
            f"--montage {name}: {len(missing)} EEG channel(s) of the data are "
            f"not in the montage: {missing[:10]}. Mark them bad "
            f"({_bads_hint(missing)}) or choose the montage of your cap "
            f"({str(err).splitlines()[0]})") from None


def _eeg_positions(info):
    """EEG channel names with and without a position."""
    have, lack = [], []
    for p in mne.pick_types(info, meg=False, eeg=True, exclude=()):
        loc = info["chs"][p]["loc"][:3]
        ok = np.isfinite(loc).all() and np.any(loc != 0)
        (have if ok else lack).append(info["ch_names"][p])
    return have, lack


def _pick_template_channels(inst, printer):
    """EEG channels only, every good one with a position."""
    eeg = mne.pick_types(inst.info, meg=False, eeg=True, exclude=())
    if len(eeg) == 0:
        raise LocalizeError(
            "--template is an EEG head model, but the data have no EEG "
            "channels; give the forward solution of your sensors with --fwd")
    have, lack = _eeg_positions(inst.info)
    lack = [c for c in lack if c not in inst.info["bads"]]
    if len(have) < MIN_TEMPLATE_CHANNELS:
        raise LocalizeError(
            "--template needs the EEG electrode positions, but the data have "
            f"{'none (no digitisation)' if not have else f'only {len(have)}'}"
            f": {_MONTAGE_FIX}")
    if lack:
        raise LocalizeError(
            f"--template: {len(lack)} EEG channel(s) have no position: "
            f"{lack[:10]}; mark them bad ({_bads_hint(lack)}) or "
            f"{_MONTAGE_FIX}")
    n_other = len(inst.ch_names) - len(eeg)
    if n_other:
        printer(f"      --template: using the {len(eeg)} EEG channels "
                f"(leaving out {n_other} others)")
    return inst.pick("eeg", exclude=())


def _check_reference(inst, set_average_reference, printer):
    from mne.minimum_norm.inverse import _check_reference as mne_check

    if not len(mne.pick_types(inst.info, meg=False, eeg=True)):
        return
    try:
        mne_check(inst)
        return
    except ValueError:
        pass
    if set_average_reference:
        inst.set_eeg_reference("average", projection=True, verbose=False)
        printer("      added an EEG average-reference projector "
                "(--set-average-reference)")
        return
    if inst.info["custom_ref_applied"]:
        problem = ("the EEG data carry an applied (custom) reference, but "
                   "source imaging needs the average reference as a "
                   "projector")
    else:
        problem = ("the EEG data have no average-reference projector, which "
                   "source imaging needs")
    raise LocalizeError(f"{problem}: {_REFERENCE_FIX}")


def _forward(fname, template, inst, spacing, bem_ico):
    """The forward solution and a description."""
    if template:
        from .datasets import make_template_forward

        bem = bem_ico if bem_ico == "auto" else int(bem_ico)
        fwd = make_template_forward(montage=inst.info, spacing=spacing,
                                    bem_ico=bem, verbose=False)
        return fwd, (f"fsaverage template ({spacing}, the data's "
                     f"{fwd['nchan']} electrode positions projected onto "
                     "the template scalp)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # naming
            fwd = mne.read_forward_solution(fname, verbose=False)
    except Exception as err:
        raise LocalizeError(f"--fwd: could not read {fname} as a forward "
                            f"solution: {err}") from None
    kinds = {s["type"] for s in fwd["src"]}
    if kinds != {"surf"}:
        raise LocalizeError(
            f"--fwd: {fname.name} has a {'/'.join(sorted(kinds))} source "
            "space; localize needs a cortical surface source space "
            "(mne.setup_source_space)")
    return fwd, f"{fname.name} (subject {_fwd_subject(fwd)!r})"


def _fwd_subject(fwd):
    return fwd["src"][0].get("subject_his_id") or "fsaverage"


def _covariance(kind, fname, inst):
    """The noise covariance and a description."""
    if kind == "file":
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # naming
                return mne.read_cov(fname, verbose=False), fname.name
        except Exception as err:
            raise LocalizeError(f"--cov: could not read {fname} as a noise "
                                f"covariance: {err}") from None
    if kind == "ad-hoc":
        return (mne.make_ad_hoc_cov(inst.info, verbose=False),
                "ad hoc (diagonal, mne.make_ad_hoc_cov)")
    if inst.tmin >= 0:
        raise LocalizeError(
            f"--cov baseline: the epochs start at {inst.tmin:g} s, so they "
            "have no pre-stimulus baseline; use --cov FILE or --cov ad-hoc")
    cov = mne.compute_covariance(inst, tmax=0.0, method="shrunk",
                                 verbose=False)
    return cov, (f"baseline ({inst.tmin * 1e3:.0f} to 0 ms of {len(inst)} "
                 "epochs, shrunk)")


def _crop(evoked, tmin, tmax):
    t0, t1 = evoked.times[0], evoked.times[-1]
    lo = t0 if tmin is None else tmin
    hi = t1 if tmax is None else tmax
    if lo > t1 or hi < t0 or lo > hi:
        raise LocalizeError(
            f"--tmin/--tmax ({lo:g} to {hi:g} s) is outside the data "
            f"({t0:g} to {t1:g} s)")
    evoked = evoked.copy().crop(tmin, tmax)
    if len(evoked.times) < 1:  # pragma: no cover - crop keeps >= 1 sample
        raise LocalizeError("--tmin/--tmax leave no sample")
    return evoked


def _good_data_channels(info):
    return [info["ch_names"][p]
            for p in mne.pick_types(info, meg=True, eeg=True, exclude="bads")]


def _check_channels(evoked, fwd, noise_cov):
    """Every good data channel in the forward and the covariance (a channel
    type the forward has none of, e.g. MEG with an EEG forward, is left
    out, as MNE's inverse operators do); returns the channels used.
    ``fwd=None``: the covariance only."""
    good = _good_data_channels(evoked.info)
    if not good:
        raise LocalizeError("the data have no good MEG or EEG channel left")
    cov_names = set(noise_cov["names"])
    fix = "or compute the covariance from this recording"
    if fwd is None:
        _refuse_missing([c for c in good if c not in cov_names],
                        "noise covariance (--cov)", fix)
        return good
    fwd_names = set(fwd["sol"]["row_names"])
    fwd_types = set(fwd["info"].get_channel_types())
    types = dict(zip(good, evoked.get_channel_types(picks=good)))
    missing = [c for c in good if c not in fwd_names and types[c] in fwd_types]
    _refuse_missing(missing, "forward solution (--fwd)",
                    "or compute the forward for these sensors")
    used = [c for c in good if c in fwd_names]
    if not used:
        raise LocalizeError(
            f"no good channel of the data is in the forward solution (--fwd): "
            f"the data have {'/'.join(sorted(set(types.values())))} channels, "
            f"the forward models {'/'.join(sorted(fwd_types))} ones")
    _refuse_missing([c for c in used if c not in cov_names],
                    "noise covariance (--cov)", fix)
    return used


def _refuse_missing(missing, what, fix):
    if missing:
        raise LocalizeError(
            f"{len(missing)} good channel(s) of the data are not in the "
            f"{what}: {missing[:10]}{' ...' if len(missing) > 10 else ''}. "
            f"Mark them bad ({_bads_hint(missing)}), {fix}")


def _bads_hint(names):
    return f"--bads {' '.join(names[:3])}{' ...' if len(names) > 3 else ''}"


def _fill_positions(evoked, fwd, printer):
    """EEG channels without a position take the forward's (for the noise
    topomap); a forward is computed from positions, so it has them."""
    _, lack = _eeg_positions(evoked.info)
    lack = [c for c in lack if c in fwd["info"]["ch_names"]]
    if not lack:
        return
    fwd_chs = {ch["ch_name"]: ch for ch in fwd["info"]["chs"]}
    with evoked.info._unlock():
        for ch in evoked.info["chs"]:
            if ch["ch_name"] in lack:
                ch["loc"][:] = fwd_chs[ch["ch_name"]]["loc"]
    printer(f"      {len(lack)} EEG channel(s) without a position in the "
            "data: using the forward solution's (for the topomaps)")


def _subjects(fwd, subjects_dir):
    """The forward's subject and the subjects dir of the brain pictures
    (None: the package's fsaverage)."""
    subject = _fwd_subject(fwd)
    if subjects_dir is not None:
        sd = Path(os.fspath(subjects_dir)).expanduser()
        if not (sd / subject / "surf").is_dir():
            raise LocalizeError(
                f"--subjects-dir: {sd} has no {subject}/surf folder (the "
                f"FreeSurfer surfaces of the forward's subject {subject!r})")
        return subject, sd
    if subject == "fsaverage":
        return subject, None
    sd = mne.get_config("SUBJECTS_DIR") or os.environ.get("SUBJECTS_DIR")
    if sd and (Path(sd) / subject / "surf").is_dir():
        return subject, Path(sd)
    raise LocalizeError(
        f"the forward solution is for subject {subject!r}, whose cortical "
        "surfaces the brain pictures need: pass --subjects-dir with its "
        "FreeSurfer subjects folder (or set SUBJECTS_DIR)")


# ----------------------------------------------------------------------------
# the unfolded model with another orientation or source model


def _variant_operator(evoked, fwd, noise_cov, spec):
    """The operator of ``spec``'s orientation and source model (this also
    checks that they fit the forward: no solve, cheap)."""
    from .inverse import make_unfolded_sbl_operator

    try:
        return make_unfolded_sbl_operator(
            evoked.info, fwd, noise_cov, loose=spec.loose,
            source_model=spec.source_model, verbose=False)
    except ValueError as err:
        raise LocalizeError(f"--loose/--source-model: {err}") from None


def _add_convergence(report, evoked, fwd, noise_cov, res, spec, section):
    """The report's convergence figure for a model with --loose or
    --source-model (the report's own runs the default source model)."""
    import matplotlib.pyplot as plt

    from .inverse import unfolded_sbl_trajectory
    from .viz import plot_convergence

    run = res["estimates"]["unfolded"]
    op = _variant_operator(evoked, fwd, noise_cov, spec)
    tr = unfolded_sbl_trajectory(evoked, op, None, run["name"],
                                 learn_noise=True, verbose=False)
    fig = plot_convergence({run["label"]: tr})
    report.add_figure(fig, title="Convergence per layer", section=section,
                      caption="Per layer (= iteration) of the unfolded "
                      "solver: Type-II cost at the layer's input, relative "
                      "change of the source variances γ (and, for learned "
                      "models, the mean |correction| per layer).")
    plt.close(fig)


# ----------------------------------------------------------------------------
# outputs


def _settings_html(what, head, cov_what, evoked, tmin, tmax, loose,
                   source_model, model, compare):
    import html

    window = (f"{evoked.times[0] * 1e3:.0f} to {evoked.times[-1] * 1e3:.0f} "
              "ms" + (" (--tmin/--tmax)" if tmin is not None
                      or tmax is not None else ""))
    rows = [("Data", what), ("Time window", window),
            ("Head model", head), ("Noise covariance", cov_what),
            ("Model", str(model)),
            ("Source model", f"{source_model or 'point'}, loose="
             f"{0 if loose is None else loose:g}"),
            ("Comparison", ", ".join(compare) or "none")]
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td>"
                   "</tr>" for k, v in rows)
    return f"<table class='table table-sm'><tbody>{body}</tbody></table>"


def _safe(name):
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("_") or "method"


def _stc_stem(key, result):
    return _safe(f"unfolded-{result['name']}" if key == "unfolded" else key)


def _has_h5io():
    return has_module("h5io")


def _remove_old_outputs(paths):
    for key in ("report", "peaks"):
        if paths[key].is_file():
            paths[key].unlink()
    if paths["stc"].is_dir():
        for f in paths["stc"].iterdir():
            if f.is_file() and f.name.endswith(("-lh.stc", "-rh.stc",
                                                "-stc.h5")):
                f.unlink()


def _save_stcs(estimates, folder):
    """Each estimate in ``folder``; returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    h5 = _has_h5io()
    files = []
    for key, r in estimates.items():
        base = folder / _stc_stem(key, r)
        if h5:
            r["stc"].save(base, ftype="h5", overwrite=True, verbose=False)
            files.append(base.with_name(base.name + "-stc.h5"))
        else:
            r["stc"].save(base, ftype="stc", overwrite=True, verbose=False)
            files += [base.with_name(base.name + f"-{h}.stc")
                      for h in ("lh", "rh")]
    return files


def _mni(peaks, subject, subjects_dir):
    """MNI coordinates (mm) of the peaks, or None where unknown."""
    if not peaks:
        return []
    if subject == "fsaverage":  # fsaverage MRI coordinates are MNI305
        return [p["pos_mm"] for p in peaks]
    try:
        return list(mne.vertex_to_mni([p["vertex"] for p in peaks],
                                      [p["hemi_idx"] for p in peaks], subject,
                                      subjects_dir=subjects_dir,
                                      verbose=False))
    except Exception:  # no talairach.xfm: MRI coordinates only
        return [None] * len(peaks)


def _summary(res, subject, subjects_dir):
    rows = []
    for key, r in res["estimates"].items():
        peaks = res["peaks"].get(key) or []
        mni = _mni(peaks[:1], subject, subjects_dir)
        rows.append(dict(key=key, label=r["label"], unit=r["unit"],
                         seconds=r["seconds"],
                         peak=dict(peaks[0], mni_mm=mni[0]) if peaks else None))
    return rows


def _write_peaks(path, res, subject, subjects_dir):
    cols = ["method", "rank", "hemi", "vertex", "x_mri_mm", "y_mri_mm",
            "z_mri_mm", "x_mni_mm", "y_mni_mm", "z_mni_mm", "amplitude",
            "unit", "latency_ms"]
    lines = ["\t".join(cols)]
    for key, r in res["estimates"].items():
        peaks = res["peaks"].get(key) or []
        for k, (p, mni) in enumerate(zip(peaks, _mni(peaks, subject,
                                                     subjects_dir)), 1):
            mni = ["n/a"] * 3 if mni is None else [f"{c:.1f}" for c in mni]
            lines.append("\t".join(
                [r["label"], str(k), p["hemi"], str(p["vertex"])]
                + [f"{c:.1f}" for c in p["pos_mm"]] + mni
                + [f"{p['amplitude']:.6g}", r["unit"],
                   f"{p['latency'] * 1e3:.1f}"]))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _format_summary(summary, subject):
    space = "MNI305" if subject == "fsaverage" else "MNI"
    head = (f"{'method':<40} {'hemi':>4} {space + ' x, y, z (mm)':>22} "
            f"{'latency':>9} {'amplitude':>12} {'time (s)':>8}")
    lines = ["Strongest peak of each estimate:", head, "-" * len(head)]
    for row in summary:
        p = row["peak"]
        if p is None:
            lines.append(f"{row['label'][:40]:<40} {'(empty map)':>58} "
                         f"{row['seconds']:>8.2f}")
            continue
        xyz = p["mni_mm"] if p["mni_mm"] is not None else p["pos_mm"]
        where = ", ".join(f"{c:.0f}" for c in xyz)
        if p["mni_mm"] is None:
            where += " (MRI)"
        if row["unit"] == "A·m":
            amp = f"{p['amplitude'] * 1e9:.3g} nA·m"
        else:
            amp = f"{p['amplitude']:.3g} a.u."
        lines.append(f"{row['label'][:40]:<40} {p['hemi']:>4} {where:>22} "
                     f"{p['latency'] * 1e3:>6.0f} ms {amp:>12} "
                     f"{row['seconds']:>8.2f}")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
