"""Run methods on simulated samples and summarise the metrics (Table 3)."""

from __future__ import annotations

import csv
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core._utils import check_positive_int
from ..core.metrics import evaluate
from ..core.simulator import EEGSimulator, derive_seed
from .methods import Batch, IncompatibleMethod, resolve_methods
from .settings import Problem, get_setting, load_problem

#: Metrics of the tables: key -> (column title, unit scale, format).
METRICS = {
    "rmse": ("rMSE", 1.0, "{:.3f}"),
    "emd": ("EMD (mm)", 1e3, "{:.2f}"),
    "f1": ("F1", 1.0, "{:.3f}"),
    "le": ("LE (mm)", 1e3, "{:.2f}"),
    "ap": ("AP", 1.0, "{:.3f}"),
}
#: Coverage of the confidence interval of the mean in the summaries.
CI_LEVEL = 0.95
#: Range of the metrics bounded on both sides (their CIs are clipped to it).
METRIC_RANGE = {"f1": (0.0, 1.0), "ap": (0.0, 1.0)}
#: Mark of the rMSE of methods whose output is not in A·m (see
#: ``Method.current_units``), explained under the tables.
NOT_CURRENT_MARK = "†"


def sample_seed(seed, index):
    """Seed of sample ``index`` of a run with ``seed``.

    Every sample has its own seed, so sample ``i`` is the same whatever the
    batch size and ``n_samples`` (a 200-sample run is the start of the
    1000-sample run with the same seed).
    """
    return derive_seed(seed, index, bits=32)


def tilted_orientations(n_sources, max_deg, rng):
    """Random unit orientations within a cone around the local normal.

    Uniform on the spherical cap of half-angle ``max_deg`` around ``(0, 0,
    1)`` (the normal of MNE's surface-oriented frame ``(t1, t2, n)``).

    Returns
    -------
    ori : ndarray, shape (n_sources, 3)
        In the local frame of every source.
    """
    cos_max = np.cos(np.deg2rad(float(max_deg)))
    cos_t = 1.0 - rng.random(n_sources) * (1.0 - cos_max)
    sin_t = np.sqrt(np.maximum(1.0 - cos_t ** 2, 0.0))
    phi = 2.0 * np.pi * rng.random(n_sources)
    return np.stack([sin_t * np.cos(phi), sin_t * np.sin(phi), cos_t], -1)


def _simulator(problem, L, config):
    """The float64 :class:`~mne_unfolded_sbl.core.simulator.EEGSimulator` of
    a problem (with the source-space mesh when the footprints need it)."""
    kinds = getattr(config, "footprint", ("gaussian",))
    kw = {}
    if any(k in ("geodesic", "diffusion") for k in kinds):
        kw["adjacency"] = problem.adjacency
    return EEGSimulator(L, problem.pos, config, dtype=torch.float64, seed=0,
                        **kw)


def _draw(problem, sim, config, seed, index):
    """One sample ``(draw dict, orientations or None)``."""
    if not problem.vector:
        return sim.sample(1, seed=sample_seed(seed, index)), None
    if problem.setting.tilt_deg is None:  # normal dipoles, scored as vectors
        return (sim.sample(1, seed=sample_seed(seed, index)),
                problem.nn[:, 2].copy())
    # the same centres, time courses and noise draws as without tilt; the
    # orientations from a stream of their own
    rng = np.random.default_rng(derive_seed(seed, index, 1, bits=32))
    local = tilted_orientations(problem.n_sources, problem.setting.tilt_deg,
                                rng)
    M, N = problem.L_sim_free.shape[0], problem.n_sources
    L_tilt = np.einsum("mno,no->mn",
                       problem.L_sim_free.reshape(M, N, 3), local)
    one = _simulator(problem, L_tilt, config)
    return (one.sample(1, seed=sample_seed(seed, index)),
            np.einsum("no,nox->nx", local, problem.nn))


def simulate_batches(problem, n_samples, seed=0, batch_size=None, first=0):
    """Yield :class:`~mne_unfolded_sbl.benchmark.methods.Batch` es of simulated data.

    Samples ``first, ..., first + n_samples - 1`` (sample ``i`` is the same
    whatever ``first``, ``n_samples`` and the batch size). Data come from
    ``problem.L_sim`` (perturbed conductivities) in float64. The batch's
    ``noise_var``, what every method is told (see
    :class:`~mne_unfolded_sbl.benchmark.methods.Batch`), is the simulator's
    ``noise_var_given`` when its samples have one (settings that hand the
    solvers a wrong covariance, ``miscaled-cov``), else the true variances.
    Settings with tilted dipoles (``setting.tilt_deg``) draw, per sample,
    orientations within the cone (:func:`tilted_orientations`) and simulate
    with the free-orientation lead field ``problem.L_sim_free`` projected on
    them; the batch then holds the orientations (``Batch.ori``, head
    coordinates). MEG+EEG problems average-reference the EEG rows of the
    simulated data (noise included) and leave the MEG rows as they are.
    """
    config = problem.config
    if problem.eeg_rows is not None:
        config = config.replace(reference="none")
    sim = _simulator(problem, problem.L_sim, config)
    bs = int(batch_size or problem.setting.batch_size)
    eeg = problem.eeg_rows
    stop = int(first) + int(n_samples)
    for start in range(int(first), stop, bs):
        idx = np.arange(start, min(stop, start + bs))
        draws, oris = zip(*(_draw(problem, sim, config, seed, i) for i in idx))
        Y = torch.cat([d["Y"] for d in draws]).numpy()
        if eeg is not None and eeg.any():
            Y[:, eeg] -= Y[:, eeg].mean(1, keepdims=True)
        true = torch.cat([d["noise_var"] for d in draws]).numpy()
        given = None
        if "noise_var_given" in draws[0]:  # what the solvers are told
            given = torch.cat([d["noise_var_given"] for d in draws]).numpy()
            if np.array_equal(given, true):
                given = None
        yield Batch(
            Y=Y,
            X=torch.cat([d["X"] for d in draws]).numpy(),
            noise_var=true if given is None else given,
            index=idx,
            ori=None if oris[0] is None else np.stack(oris),
            noise_var_true=None if given is None else true,
        )


def _evaluate(problem, X_true, X_est, metric_kw):
    return evaluate(X_true, X_est, problem.pos, neighbors=problem.neighbors,
                    verbose=False, **metric_kw)


def score(problem, batch, sol, metric_kw=None):
    """The metrics of a solution on a batch (dict of arrays, per sample).

    Fixed-orientation problems compare the amplitudes. Problems with dipole
    vectors (``problem.vector``: tilted dipoles) compare, for every method,
    the vector of every source in head coordinates: the truth
    ``x ori``, a fixed-orientation estimate ``x n`` (along the cortical
    normal ``n``), a loose one its three components; rMSE is the
    normalised squared error of the vectors, the other metrics use the
    vector norms (their temporal RMS is the dipole power).
    """
    metric_kw = dict(metric_kw or {})
    if not problem.vector:
        return _evaluate(problem, batch.X, sol.X, metric_kw)
    V_true = batch.X[:, :, None, :] * batch.ori[:, :, :, None]
    V_est = sol.X_vec
    if V_est is None:
        V_est = sol.X[:, :, None, :] * problem.normals[None, :, :, None]
    res = _evaluate(problem, np.linalg.norm(V_true, axis=2),
                    np.linalg.norm(V_est, axis=2), metric_kw)
    den = np.sum(V_true ** 2, axis=(1, 2, 3))
    num = np.sum((V_est - V_true) ** 2, axis=(1, 2, 3))
    res["rmse"] = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return res


@dataclass
class BenchmarkResult:
    """Per-sample records of a run and their per-method summary.

    Attributes
    ----------
    records : list of dict
        One per (method, sample): ``method``, ``label``, ``sample``,
        ``rmse``, ``emd``, ``le`` (metres), ``f1``, ``precision``,
        ``recall``, ``ap``, ``empty``, ``failed``, ``seconds``,
        ``setup_seconds``, ``n_iter``.
    methods : list of Method
    info : dict
        Setting, seed, sample count, skipped methods (time budget).
    """

    records: list
    methods: list
    info: dict = field(default_factory=dict)

    def summary(self):
        """One row per method: ``n``, mean/std/median/q25/q75 and the
        half-width of the 95 % confidence interval of the mean (``ci95``)
        of each metric, mean seconds per sample, setup seconds, mean
        iterations."""
        return summarize(self.records, self.methods)

    # -- writers ---------------------------------------------------------
    def write(self, out_dir, stem):
        """Write ``{stem}.md``, ``{stem}.csv`` and ``{stem}_samples.csv``."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        rows = self.summary()
        paths = dict(
            csv=write_csv(rows, out_dir / f"{stem}.csv"),
            samples=write_csv(self.records, out_dir / f"{stem}_samples.csv"),
            md=out_dir / f"{stem}.md",
        )
        paths["md"].write_text(markdown_table(rows, title=self.info.get("title"),
                                              ci=True),
                               encoding="utf-8")
        return paths


def ci_halfwidth(std, n, level=CI_LEVEL):
    """Half-width of the Student-t confidence interval of a mean."""
    from scipy.stats import t

    if n < 2 or not np.isfinite(std):
        return np.nan
    return float(t.ppf(0.5 + level / 2.0, n - 1) * std / np.sqrt(n))


def _stats(values):
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return dict(mean=np.nan, std=np.nan, median=np.nan, q25=np.nan,
                    q75=np.nan, ci95=np.nan)
    q25, med, q75 = np.percentile(v, [25, 50, 75])
    std = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return dict(mean=float(v.mean()), std=std, median=float(med),
                q25=float(q25), q75=float(q75), ci95=ci_halfwidth(std, v.size))


def summarize(records, methods, by=()):
    """Summary rows of ``records`` per method (and per the keys in ``by``).

    ``current_units`` says whether the method's estimates are in A·m (False
    for noise-normalised statistics such as sLORETA and dSPM, whose rMSE
    is then not comparable, see :func:`markdown_table`).
    """
    groups = {}
    order = {m.key: i for i, m in enumerate(methods)}
    units = {m.key: bool(getattr(m, "current_units", True)) for m in methods}
    for r in records:
        k = tuple(r[b] for b in by) + (r["method"],)
        groups.setdefault(k, []).append(r)
    rows = []
    for k in sorted(groups, key=lambda k: (k[:-1], order.get(k[-1], 1e9))):
        recs = groups[k]
        row = {b: v for b, v in zip(by, k[:-1])}
        row.update(method=k[-1], label=recs[0]["label"], n=len(recs),
                   current_units=units.get(k[-1], True))
        for name, (_, scale, _) in METRICS.items():
            st = _stats([r.get(name, np.nan) for r in recs])
            suffix = "_mm" if scale != 1.0 else ""
            for s, v in st.items():
                row[f"{name}{suffix}_{s}"] = v * scale
        row["seconds_per_sample"] = float(np.mean([r["seconds"] for r in recs]))
        setup = [r["setup_seconds"] for r in recs]
        row["setup_seconds_per_sample"] = float(np.nanmean(setup)) \
            if np.any(np.isfinite(setup)) else np.nan
        it = [r["n_iter"] for r in recs]
        row["n_iter_mean"] = float(np.nanmean(it)) if np.any(np.isfinite(it)) \
            else np.nan
        kept = [r["multiscale"] for r in recs if "multiscale" in r]
        if kept:
            row["n_multiscale"] = int(sum(kept))
        row["n_empty"] = int(sum(bool(r["empty"]) for r in recs))
        row["n_failed"] = int(sum(bool(r["failed"]) for r in recs))
        rows.append(row)
    return rows


def _fmt(v, fmt="{:.3g}"):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return fmt.format(v)


def _fmt_metric(row, name):
    _, scale, fmt = METRICS[name]
    base = f"{name}{'_mm' if scale != 1.0 else ''}"
    mean, std = row[f"{base}_mean"], row[f"{base}_std"]
    if abs(mean) >= 1000 if math.isfinite(mean) else False:
        return f"{mean:.3g} ± {std:.2g}"
    return f"{_fmt(mean, fmt)} ± {_fmt(std, fmt)}"


def _fmt_ci(row, name):
    _, scale, fmt = METRICS[name]
    base = f"{name}{'_mm' if scale != 1.0 else ''}"
    mean, half = row[f"{base}_mean"], row.get(f"{base}_ci95", np.nan)
    if math.isfinite(mean) and abs(mean) >= 1000:
        fmt = "{:.3g}"
    if not (isinstance(half, float) and math.isfinite(half)) \
            or not math.isfinite(mean):
        return _fmt(mean, fmt)
    lo, hi = METRIC_RANGE.get(name, (0.0, math.inf))  # all metrics are >= 0
    return (f"{_fmt(mean, fmt)} [{_fmt(max(mean - half, lo), fmt)}, "
            f"{_fmt(min(mean + half, hi), fmt)}]")


def _fmt_iqr(row, name):
    _, scale, fmt = METRICS[name]
    base = f"{name}{'_mm' if scale != 1.0 else ''}"
    med, lo, hi = (row[f"{base}_{s}"] for s in ("median", "q25", "q75"))
    f = "{:.3g}" if math.isfinite(med) and abs(med) >= 1000 else fmt
    return f"{_fmt(med, f)} [{_fmt(lo, f)}, {_fmt(hi, f)}]"


def _current_units(row):
    """Whether a summary row's method outputs A·m (rows read back from a CSV
    carry 1.0 / 0.0; rows without the column count as A·m)."""
    v = row.get("current_units", True)
    if isinstance(v, float) and not math.isfinite(v):
        return True
    return bool(v)


def _has_metric(rows, name):
    _, scale, _ = METRICS[name]
    key = f"{name}{'_mm' if scale != 1.0 else ''}_mean"
    return any(isinstance(r.get(key), float) and math.isfinite(r[key])
               for r in rows)


def markdown_table(rows, title=None, extra_cols=(), ci=False):
    """Markdown tables: mean ± std, then median [q25, q75], per method.

    With ``ci``, a third table gives the mean and its 95 % confidence
    interval (Student t). The rMSE of a method whose output is not in A·m
    (a noise-normalised statistic: sLORETA, dSPM) is marked with
    :data:`NOT_CURRENT_MARK` and explained in a footnote. A metric no row
    has (AP of results recorded before it existed) is left out.
    """
    lines = []
    if title:
        lines += [f"### {title}", ""]
    metrics = [m for m in METRICS if m != "ap" or _has_metric(rows, m)]
    head = list(extra_cols) + ["Method", "n"] + [METRICS[m][0] for m in metrics] \
        + ["s/sample", "setup s/sample", "iter."]
    kinds = ["mean ± std", "median [q25, q75]"]
    if ci:
        kinds.append(f"mean [{100 * CI_LEVEL:g} % CI of the mean]")
    for kind in kinds:
        lines.append(f"{kind}:")
        lines.append("")
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join("---" for _ in head) + "|")
        for r in rows:
            cells = [str(r[c]) for c in extra_cols] + [r["label"], str(r["n"])]
            for m in metrics:
                cell = (_fmt_metric(r, m) if kind == "mean ± std"
                        else _fmt_iqr(r, m) if kind.startswith("median")
                        else _fmt_ci(r, m))
                if m == "rmse" and not _current_units(r):
                    cell += f" {NOT_CURRENT_MARK}"
                cells.append(cell)
            cells += [_fmt(r["seconds_per_sample"], "{:.4f}"),
                      _fmt(r["setup_seconds_per_sample"], "{:.3f}"),
                      _fmt(r["n_iter_mean"], "{:.0f}")]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    other_units = list(dict.fromkeys(r["label"] for r in rows
                                     if not _current_units(r)))
    if other_units:
        lines.append(
            f"{NOT_CURRENT_MARK} rMSE not in A·m: {', '.join(other_units)} "
            f"output{'s' if len(other_units) == 1 else ''} a noise-normalised "
            "statistic, not a current, so this rMSE is not comparable with "
            "the other rows' (compare EMD, F1 and LE).")
        lines.append("")
    notes = [r for r in rows if r["n_empty"] or r["n_failed"]]
    for r in notes:
        lines.append(f"* {r['label']}: {r['n_empty']} all-zero estimates, "
                     f"{r['n_failed']} solver failures.")
    for r in rows:
        kept = r.get("n_multiscale")
        if isinstance(kept, (int, float)) and math.isfinite(kept):
            lines.append(f"* {r['label']}: the multi-scale model was kept "
                         f"(evidence) for {int(kept)} of {r['n']} samples, "
                         "the point model for the others.")
    return "\n".join(lines) + "\n"


def write_csv(rows, path):
    """Write a list of dicts as CSV (union of keys, first-seen order)."""
    path = Path(path)
    keys = []
    for r in rows:
        for k in r:
            if k not in keys:
                keys.append(k)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: _csv_value(r.get(k)) for k in keys})
    return path


def _csv_value(v):
    if isinstance(v, (bool, np.bool_)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return "" if not math.isfinite(v) else repr(float(v))
    return v


def read_csv(path):
    """Read a CSV written by :func:`write_csv` (numbers as float)."""
    with Path(path).open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k, v in r.items():
            try:
                r[k] = float(v) if v != "" else np.nan
            except ValueError:
                pass
    return rows


def as_problem(setting, bem_ico=None, config=None):
    """A :class:`Problem` from a setting name, a Setting or a Problem."""
    if isinstance(setting, Problem):
        return setting if config is None else setting.with_config(config)
    return load_problem(get_setting(setting), bem_ico=bem_ico, config=config)


def run_benchmark(setting="train-cap-ico3", methods=None, *, n_samples=200,
                  seed=0, batch_size=None, dtype="float32", max_seconds=None,
                  progress=True, bem_ico=None, config=None, metric_kw=None,
                  mxne_alpha=None, extra=None, first=0):
    """Run methods on ``n_samples`` simulated samples of a setting.

    Parameters
    ----------
    setting : str | Setting | Problem
        A name of :data:`~mne_unfolded_sbl.benchmark.settings.SETTINGS`
        (``"train-cap-ico3"``, ``"extended-patches"``, ``"loose-forward"``,
        ...) or a prepared
        :class:`~mne_unfolded_sbl.benchmark.settings.Problem`. Problems
        with dipole vectors (``loose-forward``) are scored on vectors, see
        :func:`score`.
    methods : None | str | list of str | list of Method
        See :func:`~mne_unfolded_sbl.benchmark.methods.resolve_methods`.
    n_samples, seed : int
        Sample ``i`` is drawn with :func:`sample_seed` ``(seed, i)``.
    first : int
        Index of the first sample: the run covers samples ``first, ...,
        first + n_samples - 1`` (to extend an earlier run).
    batch_size : int | None
        Samples per batch (default: the setting's).
    dtype : "float32" | "float64"
        Working precision of the SBL methods.
    max_seconds : float | None
        Time budget per method (solve time): once spent, the method runs on
        no further batch (its ``n`` is then smaller).
    progress : bool
        Show a tqdm progress bar.
    bem_ico, config
        Override the setting's BEM resolution or simulation config.
    metric_kw : dict | None
        Passed to :func:`mne_unfolded_sbl.core.metrics.evaluate` (thresholds).
    extra : dict | None
        Constant columns added to every record (e.g. a sweep value).

    Returns
    -------
    result : BenchmarkResult
    """
    n_samples = check_positive_int(n_samples, "n_samples")
    first = check_positive_int(first, "first", minimum=0)
    if batch_size is not None:
        batch_size = check_positive_int(batch_size, "batch_size")
    problem = as_problem(setting, bem_ico, config)
    if methods is None or isinstance(methods, str) or (
            len(methods) and isinstance(methods[0], str)):
        kw = {} if mxne_alpha is None else dict(mxne_alpha=mxne_alpha)
        methods = resolve_methods(methods, dtype=dtype, **kw)
    ready, incompatible = [], {}
    for m in methods:
        try:
            m.prepare(problem)
        except IncompatibleMethod as err:
            warnings.warn(f"Skipping {err}", RuntimeWarning, stacklevel=2)
            incompatible[m.key] = str(err)
            continue
        ready.append(m)
    methods = ready
    metric_kw = dict(metric_kw or {})
    spent = {m.key: 0.0 for m in methods}
    skipped = {}
    records = []
    bar = tqdm(total=n_samples * len(methods), disable=not progress,
               unit="fit", desc=problem.setting.name, leave=True)
    t_start = time.perf_counter()
    t_sim = t_score = 0.0
    # nothing to simulate when every method was skipped as incompatible
    batches = iter(simulate_batches(problem, n_samples, seed, batch_size,
                                    first=first) if methods else ())
    while True:
        t0 = time.perf_counter()
        batch = next(batches, None)
        t_sim += time.perf_counter() - t0
        if batch is None:
            break
        for m in methods:
            if max_seconds is not None and spent[m.key] > max_seconds:
                skipped.setdefault(m.key, int(batch.index[0]))
                bar.update(len(batch))
                continue
            bar.set_postfix_str(m.key)
            sol = m.solve(batch)
            spent[m.key] += float(np.sum(sol.seconds))
            t0 = time.perf_counter()
            res = score(problem, batch, sol, metric_kw)
            t_score += time.perf_counter() - t0
            for j, idx in enumerate(batch.index):
                rec = dict(extra or {})
                rec.update(
                    method=m.key, label=m.label, sample=int(idx),
                    rmse=res["rmse"][j], emd=res["emd"][j], le=res["le"][j],
                    f1=res["f1"][j], precision=res["precision"][j],
                    recall=res["recall"][j], ap=res["ap"][j],
                    empty=bool(res["empty"][j]),
                    failed=bool(sol.failed[j]) if sol.failed is not None
                    else False,
                    seconds=float(sol.seconds[j]),
                    setup_seconds=float(sol.setup_seconds[j])
                    if sol.setup_seconds is not None else np.nan,
                    n_iter=float(sol.n_iter[j]) if sol.n_iter is not None
                    else np.nan)
                if sol.multiscale is not None:  # multi-scale model kept
                    rec["multiscale"] = bool(sol.multiscale[j])
                records.append(rec)
            bar.update(len(batch))
    bar.close()
    info = dict(setting=problem.setting.name, label=problem.setting.label,
                n_samples=n_samples, first_sample=int(first), seed=int(seed),
                dtype=dtype,
                n_sensors=problem.n_sensors, n_sources=problem.n_sources,
                n_times=problem.config.n_times,
                bem_ico=problem.setting.bem_ico,
                wall_seconds=time.perf_counter() - t_start,
                simulate_seconds=t_sim, score_seconds=t_score,
                skipped_after_sample=skipped, incompatible=incompatible,
                methods={m.key: m.describe() for m in methods},
                title=f"{problem.setting.label}: {n_samples} samples, seed {seed}")
    return BenchmarkResult(records=records, methods=methods, info=info)
