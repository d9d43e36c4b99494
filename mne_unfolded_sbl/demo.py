"""``mne-unfolded-sbl demo``: simulate, localise, compare, write a report.

Simulates an EEG evoked response from a few focal cortical sources on the
fsaverage template (offline: the package's embedded template head model),
localises it with the pretrained Deep CB network (or the classical
convex-bounding solver, with a clear note, when no pretrained weights are
available), with classical convex bounding and with sLORETA, prints the
paper's metrics against the ground truth and writes an :class:`mne.Report`
(brain pictures of the truth and of each estimate, peak-source tables, time
courses, the learned per-channel noise and the per-layer convergence).

Run ``mne-unfolded-sbl demo --help`` or ``python -m mne_unfolded_sbl.demo``.
No network access is needed. The first run builds and caches the forward
model (``MNE_UNFOLDED_SBL_CACHE``, default: the OS cache dir).

Head model: ``--bem-ico auto`` (default) uses the accurate ico4 BEM when its
solution is already cached and the fast ico3 BEM (a few seconds, lead fields
within about 8 %) otherwise, so that the first run stays within about a
minute; ``--bem-ico 4`` computes and caches the ico4 BEM once (about 1-4
minutes and 2 GB), after which ``auto`` uses it.
"""

# License: BSD-3-Clause

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

__all__ = ["run_demo", "add_arguments", "run", "main"]

DEFAULT_OUT = Path("mne_unfolded_sbl_demo") / "report.html"
#: Brain, skull, scalp conductivities (S/m) of the forward that simulates
#: the data (the inversion uses the default 0.3, 0.006, 0.3): a controlled
#: forward-model mismatch, as in the paper (appendix B.2), avoids the
#: "inverse crime".
SIM_CONDUCTIVITY = (0.33, 0.0045, 0.27)


def add_arguments(parser):
    """Add the demo's options to an :class:`argparse.ArgumentParser`."""
    parser.add_argument("--out", default=str(DEFAULT_OUT),
                        help="report file (.html) or folder to write "
                        "report.html into (default: %(default)s)")
    parser.add_argument("--model", default="deep-cb",
                        help="unfolded model: cb, bias-cb, deep-cb, "
                        "deep-attn-cb or a .safetensors weights file; learned "
                        "models fall back to cb without weights "
                        "(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="simulation seed (default: %(default)s)")
    parser.add_argument("--n-sources", type=int, default=3,
                        help="number of focal sources (default: %(default)s)")
    parser.add_argument("--snr-db", type=float, nargs=2, default=(5.0, 20.0),
                        metavar=("LOW", "HIGH"),
                        help="per-channel SNR range in dB, drawn for every "
                        "channel (default: 5 20)")
    parser.add_argument("--n-times", type=int, default=100,
                        help="time samples (default: %(default)s)")
    parser.add_argument("--sfreq", type=float, default=100.0,
                        help="sampling frequency in Hz (default: %(default)s)")
    parser.add_argument("--montage", default="train-64",
                        help="EEG montage of the template forward "
                        "(default: %(default)s)")
    parser.add_argument("--spacing", default="ico3", choices=("ico3", "ico4"),
                        help="source space (default: %(default)s)")
    parser.add_argument("--bem-ico", default="auto", choices=("auto", "3", "4"),
                        help="BEM resolution; auto = 4 if cached, else 3 "
                        "(default: %(default)s)")
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
    parser.add_argument("--backend", default="auto",
                        choices=("auto", "pyvista", "matplotlib"),
                        help="brain renderer (default: %(default)s)")
    parser.add_argument("--open", action="store_true",
                        help="open the report in a web browser")
    return parser


def _out_path(out):
    out = Path(out).expanduser()
    if out.suffix.lower() not in (".html", ".htm"):
        out = out / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _bem_ico(choice, montage, spacing):
    """Resolve ``--bem-ico auto``: 4 if its BEM solution is cached, else 3."""
    if choice != "auto":
        return int(choice), None
    try:  # private helpers of the datasets module: only for the cache check
        from .datasets._forward import DEFAULT_CONDUCTIVITY, _source_key
        from .datasets._subject import cache_dir, resolve_source

        kind, subjects_dir = resolve_source("auto")
        cond = "-".join(f"{c:g}" for c in DEFAULT_CONDUCTIVITY)
        fname = (cache_dir() / "bem"
                 / f"{_source_key(kind, subjects_dir)}-ico4-{cond}-bem-sol.fif")
        if fname.is_file():
            return 4, None
    except Exception:  # pragma: no cover - fall back to the fast BEM
        pass
    return 3, ("using the fast ico3 BEM (the ico4 BEM is not cached yet; "
               "run once with --bem-ico 4 to compute and cache it)")


def run_demo(out=DEFAULT_OUT, *, model="deep-cb", seed=0, n_sources=3,
             snr_db=(5.0, 20.0), n_times=100, mismatch=True, sfreq=100.0, montage="train-64",
             spacing="ico3", bem_ico="auto", noise_cov="ad-hoc",
             compare=("cb", "sloreta"), backend="auto", open_browser=False,
             printer=print):
    """Run the demo and return a dict with the results (see module docs).

    Returns
    -------
    results : dict
        ``report`` (path), the :func:`~mne_unfolded_sbl.report.add_unfolded_sbl_to_report`
        output under ``"report_results"``, ``metrics`` (rows), ``note``
        (fallback message or None), ``timings`` (s), ``evoked``,
        ``stc_true``, ``fwd``.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import mne

    from .datasets import get_subjects_dir, make_template_forward
    from .report import add_unfolded_sbl_to_report, format_metrics_table
    from .core.simulator import SimulationConfig
    from .simulation import simulate_evoked

    t_start = time.perf_counter()
    timings = {}
    out = _out_path(out)
    bem, bem_note = _bem_ico(str(bem_ico), montage, spacing)
    printer(f"[1/4] Template forward: fsaverage {spacing}, montage {montage}, "
            f"ico{bem} BEM" + (f" ({bem_note})" if bem_note else ""))
    t0 = time.perf_counter()
    fwd = make_template_forward(montage, spacing, bem_ico=bem, verbose=False)
    subjects_dir = get_subjects_dir(verbose=False)
    timings["forward"] = time.perf_counter() - t0
    printer(f"      {fwd['nchan']} channels x {fwd['nsource']} sources "
            f"({timings['forward']:.1f} s)")

    t0 = time.perf_counter()
    fwd_sim = fwd
    if mismatch:
        fwd_sim = make_template_forward(montage, spacing, SIM_CONDUCTIVITY,
                                        bem_ico=3, verbose=False)
    config = SimulationConfig(n_sources=(n_sources, n_sources),
                              snr_db=tuple(snr_db), n_times=n_times,
                              sfreq=sfreq)
    evoked, stc_true, cov_true = simulate_evoked(fwd_sim, config, seed=seed,
                                                 verbose=False)
    if noise_cov == "true":
        cov = cov_true
    else:
        cov = mne.make_ad_hoc_cov(evoked.info, verbose=False)
    timings["simulation"] = time.perf_counter() - t0
    printer(f"[2/4] Simulated {n_sources} focal sources, per-channel SNR "
            f"{snr_db[0]:g}-{snr_db[1]:g} dB, {n_times} samples at "
            f"{sfreq:g} Hz (seed {seed}), "
            + ("with perturbed conductivities " if mismatch else
               "with the inversion's own forward (inverse crime) ")
            + f"({timings['simulation']:.1f} s); noise covariance given to "
            f"the solvers: {noise_cov}")

    printer(f"[3/4] Localising with {model} and {', '.join(compare)}; "
            "rendering the report")
    t0 = time.perf_counter()
    report = mne.Report(title="mne-unfolded-sbl demo: simulated evoked "
                        "response", verbose=False)
    with warnings.catch_warnings():  # the fallback note is printed below
        warnings.filterwarnings("ignore", message="Pretrained weights")
        res = add_unfolded_sbl_to_report(
            report, evoked, fwd, cov, model=model, compare=tuple(compare),
            learn_noise=True, subjects_dir=subjects_dir, time="rms",
            stc_true=stc_true, true_noise_cov=cov_true, backend=backend,
            section="Simulated comparison", verbose=False)
    timings["localise+report"] = time.perf_counter() - t0
    if res["note"]:
        printer("\n  NOTE: " + res["note"] + "\n")
    printer(format_metrics_table(res["metrics"]))
    printer(f"      brains rendered with: {res['backend']}")

    settings = (f"<p>Seed {seed}; {n_sources} focal sources (Gaussian "
                f"footprints, 1-3 mm), per-channel SNR uniform in "
                f"{snr_db[0]:g}-{snr_db[1]:g} dB (heteroscedastic noise), "
                f"{n_times} samples at {sfreq:g} Hz; fsaverage {spacing} "
                f"source space, {montage} montage, 3-layer ico{bem} BEM "
                "for the inversion; the data were simulated "
                + (f"with conductivities {SIM_CONDUCTIVITY} S/m and an ico3 "
                   "BEM (forward-model mismatch). " if mismatch else
                   "with the same forward (inverse crime). ")
                + "Noise covariance given to the solvers: "
                f"{noise_cov}.</p><p>Reproduce with <code>mne-unfolded-sbl "
                f"demo --seed {seed} --n-sources {n_sources} --snr-db "
                f"{snr_db[0]:g} {snr_db[1]:g}</code>.</p>")
    report.add_html(settings, title="Simulation settings",
                    section="Simulated comparison")
    t0 = time.perf_counter()
    report.save(out, overwrite=True, open_browser=open_browser, verbose=False)
    timings["save"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    printer(f"[4/4] Report written to {out} (total {timings['total']:.1f} s)")
    return dict(report=out, report_results=res, metrics=res["metrics"],
                note=res["note"], timings=timings, evoked=evoked,
                stc_true=stc_true, fwd=fwd)


def run(args):
    """Run the demo from parsed command-line arguments; return 0."""
    run_demo(args.out, model=args.model, seed=args.seed,
             n_sources=args.n_sources, snr_db=tuple(args.snr_db),
             n_times=args.n_times, sfreq=args.sfreq, montage=args.montage,
             mismatch=args.mismatch,
             spacing=args.spacing, bem_ico=args.bem_ico,
             noise_cov=args.noise_cov, compare=tuple(args.compare),
             backend=args.backend, open_browser=args.open)
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
