"""Atom extents of the multi-scale source model: which radii?

``source_model="multiscale"`` smooths every vertex's activity on the cortical
mesh at a few radii (:data:`~mne_unfolded_sbl.core.multiscale.DEFAULT_EXTENTS_MM`,
0, 8, 16 and 25 mm); the radii set the diffusion orders of the atoms
(:func:`~mne_unfolded_sbl.core.multiscale.orders_for_extents`: on the ico3
template, mean source spacing 9.1 mm, 8 / 16 / 25 mm are orders 1 / 4 / 9).
This script compares sets of radii for convex bounding with joint noise
learning, 25 iterations (the registry entry ``cb-joint-25-multiscale``, whose
default set it reproduces), on the benchmark settings ``extended-patches``
and ``single-dipole``: the same simulated samples (seed, sample by sample)
for every set, the same per-sample choice between the multi-scale and the
point model (evidence, :func:`~mne_unfolded_sbl.core.multiscale.prefer_multiscale`)
and the benchmark's metrics.

Usage::

    python benchmarks/bench_atom_extents.py --n-samples 40 --threads 1

Prints, per setting, a Markdown table (mean and 95 % confidence interval of
the mean, Student t) of rMSE, EMD, F1, AP and LE, the solver time per evoked
response (s, batches of 50: both models run) and how often the multi-scale
model was kept; then the difference of every set to the default set, paired
over the samples (mean [95 % CI]; ``*`` where the interval excludes 0).
``--rst`` also prints the tables as reStructuredText ``csv-table`` rows;
``--extents 0,8 0,8,16,25`` chooses the sets, ``--spread 4 8`` overrides
the settings' footprint standard deviations (mm: mid-size patches).
The point model (``cb-joint-25``) is the first row. The registry's
``cb-joint-25-multiscale`` runs as well, as a check: its estimates must
equal those of the default set (else the script fails).
"""

import argparse
import contextlib
import math
import sys
import time

import numpy as np
import torch
from mne.utils import use_log_level

from mne_unfolded_sbl import methods as registry
from mne_unfolded_sbl.benchmark.methods import Method, Solution, resolve_methods
from mne_unfolded_sbl.benchmark.runner import (ci_halfwidth, run_benchmark,
                                               summarize)
from mne_unfolded_sbl.benchmark.settings import get_setting, load_problem
from mne_unfolded_sbl.core.multiscale import (DEFAULT_EXTENTS_MM,
                                              prefer_multiscale)
from mne_unfolded_sbl.core.solver import covariance_statistic
from mne_unfolded_sbl.core.weights import load_model
from mne_unfolded_sbl.source_models import SourceModel

#: Sets of atom radii (mm) compared; the default is among them.
EXTENT_SETS = ((0.0, 8.0), (0.0, 8.0, 16.0), tuple(DEFAULT_EXTENTS_MM),
               (0.0, 16.0, 32.0), (0.0, 5.0, 10.0, 15.0, 20.0, 25.0))
SETTINGS = ("extended-patches", "single-dipole")
#: The registry entry whose atoms the sets replace.
BASE_KEY = "cb-joint-25-multiscale"
POINT_KEY = "cb-joint-25"
#: Metrics of the tables: record key -> (title, scale, format); the
#: difference table leaves LE out.
METRICS = {"rmse": ("rMSE", 1.0, "{:.3f}"), "emd": ("EMD (mm)", 1e3, "{:.2f}"),
           "f1": ("F1", 1.0, "{:.3f}"), "ap": ("AP", 1.0, "{:.3f}"),
           "le": ("LE (mm)", 1e3, "{:.2f}")}
DIFF_METRICS = ("rmse", "emd", "f1", "ap")
BOUNDED = {"f1": (0.0, 1.0), "ap": (0.0, 1.0)}


def _fmt_extents(extents):
    return "(" + ", ".join(f"{r:g}" for r in extents) + ")"


class AtomExtents(Method):
    """``cb-joint-25-multiscale`` with other atom radii, batched.

    The point and the multi-scale model run on the same statistics; each
    sample keeps the estimate of lower evidence cost, as
    :func:`~mne_unfolded_sbl.apply_unfolded_sbl` and the benchmark do.
    """

    family = "sbl"
    batched = True

    def __init__(self, extents_mm, *, dtype="float32"):
        super().__init__(registry.get_method(BASE_KEY))
        self.extents_mm = tuple(float(r) for r in extents_mm)
        default = self.extents_mm == tuple(DEFAULT_EXTENTS_MM)
        self.key = f"{BASE_KEY}@{'-'.join(f'{r:g}' for r in self.extents_mm)}"
        self.label = (f"extents {_fmt_extents(self.extents_mm)} mm"
                      + (" (default)" if default else ""))
        self.dtype = getattr(torch, dtype)
        self.basis = self.net = None

    def describe(self):
        return (f"{self.spec.describe()}; atom radii "
                f"{_fmt_extents(self.extents_mm)} mm")

    def prepare(self, problem):
        t0 = time.perf_counter()
        super().prepare(problem)
        with use_log_level("error"):
            self.basis = SourceModel(problem.fwd, 0.0, "multiscale",
                                     extents_mm=self.extents_mm).basis
        self._L_atoms = torch.as_tensor(self.basis.leadfield(problem.L),
                                        dtype=self.dtype)
        self._L_point = torch.as_tensor(problem.L, dtype=self.dtype)
        self._null = problem.null_space()
        self.net = load_model("cb", learn_noise=self.spec.learn_noise,
                              n_layers=self.spec.n_layers)
        self.net = self.net.to(dtype=self.dtype).eval()
        self.setup_seconds = time.perf_counter() - t0

    @torch.no_grad()
    def solve(self, batch):
        Y = torch.as_tensor(batch.Y, dtype=self.dtype)
        t0 = time.perf_counter()
        Cy = covariance_statistic(Y)
        multi = self.net(self._L_atoms, Cy, None, null_space=self._null)
        point = self.net(self._L_point, Cy, None, null_space=self._null)
        keep = prefer_multiscale(point, multi, Y.shape[-1])
        X_multi = self.basis.to_vertices(
            multi.posterior_mean(Y).to(torch.float64).numpy())
        X_point = point.posterior_mean(Y).to(torch.float64).numpy()
        X = np.where(keep[:, None, None], X_multi, X_point)
        B = len(batch)
        dt = (time.perf_counter() - t0) / B
        return Solution(X=X, seconds=np.full(B, dt),
                        n_iter=np.full(B, float(self.net.n_layers)),
                        failed=~np.isfinite(X).all(axis=(1, 2)),
                        multiscale=keep)


def _per_sample(records, key, metric):
    recs = sorted((r for r in records if r["method"] == key),
                  key=lambda r: r["sample"])
    return np.array([r[metric] for r in recs], float)


def check_registry(records, default_key):
    """The registry's multi-scale entry and the default set agree."""
    for metric in METRICS:
        ours = _per_sample(records, default_key, metric)
        reg = _per_sample(records, BASE_KEY, metric)
        if not np.allclose(ours, reg, rtol=1e-4, atol=1e-9, equal_nan=True):
            raise RuntimeError(
                f"The default extents do not reproduce {BASE_KEY!r} ({metric}: "
                f"max |difference| {np.nanmax(np.abs(ours - reg)):.3g}): this "
                "script's adapter no longer matches the benchmark's.")


def _mean_ci(values, name):
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    mean = float(v.mean())
    half = ci_halfwidth(float(v.std(ddof=1)), v.size)
    lo, hi = BOUNDED.get(name, (0.0, math.inf))
    return mean, max(mean - half, lo), min(mean + half, hi)


def summary_rows(records, methods):
    """One row per method: orders, atoms, mean [CI] of the metrics, s/evoked,
    multi-scale kept."""
    summary = {r["method"]: r for r in summarize(records, methods)}
    rows = []
    for m in methods:
        srow = summary[m.key]
        row = dict(label=srow["label"], key=m.key, n=srow["n"],
                   s_per_evoked=srow["seconds_per_sample"],
                   kept=srow.get("n_multiscale"))
        basis = getattr(m, "basis", None)
        row["orders"] = "–" if basis is None else _fmt_extents(basis.orders)
        row["atoms"] = m.problem.n_sources if basis is None else basis.n_atoms
        for name, (_, scale, _) in METRICS.items():
            vals = _per_sample(records, m.key, name) * scale
            row[name] = _mean_ci(vals, name)
        rows.append(row)
    return rows


def paired_rows(records, methods, default_key):
    """Per set, the paired difference to the default set: mean [CI]."""
    base = {n: _per_sample(records, default_key, n) for n in DIFF_METRICS}
    rows = []
    for m in methods:
        if m.key == default_key:
            continue
        row = dict(label=m.label)
        for name in DIFF_METRICS:
            d = (_per_sample(records, m.key, name) - base[name]) \
                * METRICS[name][1]
            d = d[np.isfinite(d)]
            mean = float(d.mean())
            half = ci_halfwidth(float(d.std(ddof=1)), d.size) if d.size > 1 \
                else math.nan
            row[name] = (mean, mean - half, mean + half)
        rows.append(row)
    return rows


def _cell(triple, fmt, signed=False):
    mean, lo, hi = triple
    f = fmt.replace("{:", "{:+") if signed else fmt
    if not math.isfinite(lo):
        return f.format(mean)
    star = " *" if signed and (lo > 0 or hi < 0) else ""
    return f"{f.format(mean)} [{f.format(lo)}, {f.format(hi)}]{star}"


def _kept(row):
    kept = row["kept"]
    if kept is None or (isinstance(kept, float) and not math.isfinite(kept)):
        return "–"
    return f"{int(kept)} / {row['n']}"


TABLE_HEAD = (["Atom radii", "orders", "atoms"] + [t for t, _, _ in METRICS.values()]
              + ["s/evoked", "multi-scale kept"])
DIFF_HEAD = ["vs the default"] + [METRICS[n][0] for n in DIFF_METRICS]


def _table_cells(row):
    return ([row["label"], row["orders"], str(row["atoms"])]
            + [_cell(row[n], fmt) for n, (_, _, fmt) in METRICS.items()]
            + [f"{row['s_per_evoked']:.3f}", _kept(row)])


def _diff_cells(row):
    return [row["label"]] + [_cell(row[n], METRICS[n][2], signed=True)
                             for n in DIFF_METRICS]


def markdown(head, cells):
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(c) + " |" for c in cells]
    return "\n".join(lines)


def rst(head, cells):
    q = lambda s: '"' + s.replace('"', '""') + '"'  # noqa: E731
    lines = [".. csv-table::", "   :header: " + ", ".join(q(h) for h in head),
             ""]
    lines += ["   " + ", ".join(q(c) for c in row) for row in cells]
    return "\n".join(lines)


def run_setting(setting, extent_sets, *, n_samples, seed, bem_ico,
                spread_mm=None, dtype="float32"):
    """Run the point model, the registry's default and every set.

    ``spread_mm`` (low, high) overrides the setting's footprint standard
    deviations (mm)."""
    config = None
    if spread_mm is not None:
        config = get_setting(setting).simulation_config(
            spread=tuple(r / 1e3 for r in spread_mm))
    with use_log_level("error"):
        problem = load_problem(setting, bem_ico=bem_ico, config=config)
    ours = [AtomExtents(e, dtype=dtype) for e in extent_sets]
    default = [m for m in ours if m.extents_mm == tuple(DEFAULT_EXTENTS_MM)]
    check = resolve_methods([BASE_KEY], dtype=dtype) if default else []
    methods = resolve_methods([POINT_KEY], dtype=dtype) + ours + check
    t0 = time.perf_counter()
    res = run_benchmark(problem, methods, n_samples=n_samples, seed=seed,
                        dtype=dtype, progress=False)
    wall = time.perf_counter() - t0
    if default:
        check_registry(res.records, default[0].key)
    shown = [m for m in res.methods if m.key != BASE_KEY]
    rows = summary_rows(res.records, shown)
    diffs = (paired_rows(res.records, ours, default[0].key) if default
             else [])
    return problem, rows, diffs, wall


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--settings", nargs="+", default=list(SETTINGS),
                   help="benchmark settings (default: %(default)s)")
    p.add_argument("--extents", nargs="+", default=None, metavar="R,R,...",
                   help="sets of atom radii in mm, each comma-separated "
                   "(e.g. 0,8,16,25); default: "
                   + " ".join(",".join(f"{r:g}" for r in e)
                              for e in EXTENT_SETS))
    p.add_argument("--spread", type=float, nargs=2, default=None,
                   metavar=("LOW", "HIGH"),
                   help="override the settings' footprint standard "
                   "deviation range (mm), e.g. 4 8 for mid-size patches")
    p.add_argument("--n-samples", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bem-ico", type=int, default=3, choices=(3, 4))
    p.add_argument("--threads", type=int, default=None,
                   help="torch and BLAS threads (default: torch's)")
    p.add_argument("--rst", action="store_true",
                   help="also print reStructuredText csv-table rows")
    args = p.parse_args(argv)
    if args.n_samples < 2:
        p.error("--n-samples must be at least 2 (confidence intervals)")
    try:
        extent_sets = (EXTENT_SETS if args.extents is None else tuple(
            tuple(float(r) for r in e.split(",")) for e in args.extents))
    except ValueError:
        p.error(f"--extents: comma-separated radii in mm, got {args.extents}")
    if any(min(e) < 0 for e in extent_sets):
        p.error("--extents: radii must be >= 0")
    if args.spread is not None and not 0 <= args.spread[0] <= args.spread[1]:
        p.error("--spread: 0 <= LOW <= HIGH (mm)")
    limits = contextlib.nullcontext()
    if args.threads:
        torch.set_num_threads(args.threads)
        with contextlib.suppress(ImportError):
            import threadpoolctl

            limits = threadpoolctl.threadpool_limits(args.threads)
    print(f"# Atom extents of the multi-scale model: {BASE_KEY}, "
          f"{args.n_samples} samples per setting, seed {args.seed}, ico"
          f"{args.bem_ico} BEM, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s)\n")
    with limits:
        for setting in args.settings:
            problem, rows, diffs, wall = run_setting(
                setting, extent_sets, n_samples=args.n_samples,
                seed=args.seed, bem_ico=args.bem_ico, spread_mm=args.spread)
            spread = ("" if args.spread is None else ", footprint std "
                      f"{args.spread[0]:g}-{args.spread[1]:g} mm")
            print(f"## {problem.setting.label} ({setting}{spread}): "
                  f"{problem.n_sensors} channels x {problem.n_sources} "
                  f"sources ({wall:.0f} s)\n")
            cells = [_table_cells(r) for r in rows]
            print(markdown(TABLE_HEAD, cells) + "\n")
            if diffs:
                dcells = [_diff_cells(r) for r in diffs]
                print("Paired difference to the default set "
                      "(* : 95 % CI excludes 0):\n")
                print(markdown(DIFF_HEAD, dcells) + "\n")
            if args.rst:
                print(rst(TABLE_HEAD, cells) + "\n")
                if diffs:
                    print(rst(DIFF_HEAD, dcells) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
