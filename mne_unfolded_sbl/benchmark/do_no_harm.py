"""Do no harm: every learned model against classical convex bounding.

``mne-unfolded-sbl benchmark --do-no-harm`` (or :func:`run_do_no_harm`)
compares, sample by sample, every registered learned model (the weights
registry of :mod:`mne_unfolded_sbl.core.weights`: Deep CB, Bias CB, Deep
Attn CB, joint and source-only) with convex bounding at the depth of the
networks (25 iterations) in the same noise mode: joint ``(γ, λ)`` models
against ``cb-joint-25``, source-only ``(γ)`` models against
``cb-source-25``. Both run on the same simulated samples (same seeds), so
the check is paired:

- per setting, model and metric (rMSE, EMD, F1, LE) the mean of the
  per-sample differences *model − CB* and its 95 % Student-t confidence
  interval (:func:`paired_difference`); **PASS** when the interval
  contains 0 or lies on the better side (lower rMSE, EMD, LE; higher F1),
  **FAIL** when it lies entirely on the worse side;
- over all settings (:func:`aggregate`), the relative change of the means
  against the paper's targets (rMSE −20 %, EMD −17 %, F1 +13 %,
  :data:`TARGETS`) and whether Deep Attn CB is at least as good as Deep CB
  (the same paired rule, Deep CB as the baseline).

A model that cannot run on a setting (Bias CB is tied to the sensors and
sources it was trained on) is reported as ``n/a (geometry)``.

Per-sample results are kept in ``do-no-harm_{setting}_samples.csv`` in the
output folder and reused by the next run with the same seed, BEM,
precision, simulation, EMD threshold, weights and code of
:mod:`mne_unfolded_sbl.core` (only the missing samples and models run), so
a 20-sample check can be extended to 500 samples. Learned models are
recognised by their weights (sha256), not their name: a weights file
checked by its path and then registered under a model key is not run again.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .methods import SBLMethod, learned_method_keys, resolve_methods
from .runner import CI_LEVEL, read_csv, run_benchmark, write_csv
from .settings import DO_NO_HARM_SETTINGS, get_setting, load_problem

__all__ = ["BASELINES", "DoNoHarmResult", "METRIC_DIRECTIONS", "TARGETS",
           "aggregate", "compare", "cost_table", "paired_difference",
           "run_do_no_harm"]

#: Metric -> (column title, display scale, better direction, format).
METRIC_DIRECTIONS = {
    "rmse": ("rMSE", 1.0, "lower", "{:+.3f}"),
    "emd": ("EMD (mm)", 1e3, "lower", "{:+.2f}"),
    "f1": ("F1", 1.0, "higher", "{:+.3f}"),
    "le": ("LE (mm)", 1e3, "lower", "{:+.2f}"),
}
#: Targets of the relative change of the means, learned vs CB (paper
#: Table 3, Deep CB (γ,λ) against convex bounding (γ,λ) on its Train Cap).
TARGETS = {"rmse": -0.20, "emd": -0.17, "f1": 0.13}
#: The baseline of a learned model, by its ``learn_noise``.
BASELINES = {True: "cb-joint-25", False: "cb-source-25"}
#: Verdict of a model that cannot run on a setting's geometry.
NA_GEOMETRY = "n/a (geometry)"
#: Output files (in ``out``).
SAMPLES_FILE = "do-no-harm_{setting}_samples.csv"
STEM = "do-no-harm"


# ----------------------------------------------------------------------------
# statistics


def paired_difference(model, baseline, better="lower", level=CI_LEVEL):
    """Mean paired difference ``model − baseline`` with its t-interval.

    Parameters
    ----------
    model, baseline : array-like, shape (n,)
        The metric of each sample for the two methods (same samples, same
        order). Pairs with a non-finite value are dropped.
    better : "lower" | "higher"
        Which side of the difference is an improvement of ``model``.
    level : float
        Coverage of the interval (Student t with ``n − 1`` degrees of
        freedom on the per-sample differences).

    Returns
    -------
    res : dict
        ``n``, ``mean`` (of the differences), ``lo`` / ``hi`` (the
        interval), ``model_mean``, ``baseline_mean``, ``rel`` (relative
        change of the means, ``(model_mean − baseline_mean) /
        |baseline_mean|``) and ``verdict``: ``"PASS"`` when the interval
        contains 0 or lies on the better side, ``"FAIL"`` when it lies
        entirely on the worse side, ``"n/a"`` with fewer than two pairs.
    """
    from scipy.stats import t

    if better not in ("lower", "higher"):
        raise ValueError(f"better must be 'lower' or 'higher', got {better!r}")
    a = np.asarray(model, float).ravel()
    b = np.asarray(baseline, float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"model and baseline have different lengths "
                         f"({a.size} and {b.size}): the comparison is paired")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    n = int(a.size)
    nan = float("nan")
    res = dict(n=n, mean=nan, lo=nan, hi=nan, model_mean=nan,
               baseline_mean=nan, rel=nan, verdict="n/a")
    if n == 0:
        return res
    d = a - b
    res.update(mean=float(d.mean()), model_mean=float(a.mean()),
               baseline_mean=float(b.mean()))
    if res["baseline_mean"] != 0:
        res["rel"] = (res["model_mean"] - res["baseline_mean"]) \
            / abs(res["baseline_mean"])
    if n < 2:
        return res
    half = float(t.ppf(0.5 + level / 2.0, n - 1) * d.std(ddof=1) / math.sqrt(n))
    lo, hi = res["mean"] - half, res["mean"] + half
    worse = lo > 0 if better == "lower" else hi < 0
    res.update(lo=lo, hi=hi, verdict="FAIL" if worse else "PASS")
    return res


def target_met(rel, metric, targets=TARGETS):
    """Whether a relative change meets the metric's target (None: no target
    or no value)."""
    target = targets.get(metric)
    if target is None or rel is None or not math.isfinite(rel):
        return None
    return bool(rel <= target) if target < 0 else bool(rel >= target)


def _paired_values(records, setting, model, baseline, metric):
    """The metric of the samples both methods have, in sample order."""
    by = {}
    for r in records:
        if r["setting"] == setting and r["method"] in (model, baseline):
            by.setdefault(r["method"], {})[int(r["sample"])] = r.get(metric,
                                                                    np.nan)
    m, b = by.get(model, {}), by.get(baseline, {})
    common = sorted(set(m) & set(b))
    return (np.array([m[i] for i in common], float),
            np.array([b[i] for i in common], float))


def _overall(verdicts, ok, bad, empty):
    """``bad`` if a metric fails, ``ok`` if the others pass, else ``empty``
    (``"n/a"`` verdicts, e.g. a single sample, are ignored)."""
    if "FAIL" in verdicts:
        return bad
    if "PASS" in verdicts:
        return ok
    return empty if empty != "ok" else "n/a"


def compare(records, models, settings, *, incompatible=None, level=CI_LEVEL):
    """Per-setting paired comparisons of each model with its baseline.

    Parameters
    ----------
    records : list of dict
        Per-sample records with ``setting``, ``method``, ``sample`` and the
        metrics (as :func:`~mne_unfolded_sbl.benchmark.run_benchmark`
        writes them, plus the ``setting``).
    models : dict
        ``{key: (label, baseline key)}`` of the compared models.
    settings : list of str
    incompatible : dict | None
        ``{setting: {key: reason}}`` of models that could not run.

    Returns
    -------
    rows : list of dict
        One per (setting, model): ``setting``, ``model``, ``label``,
        ``baseline``, ``status`` (``"ok"``, :data:`NA_GEOMETRY` or
        ``"no samples"``), ``verdict`` (``"FAIL"`` if any metric fails,
        ``"PASS"`` if all pass, else the status) and, per metric, the dict
        of :func:`paired_difference` under the metric key.
    """
    incompatible = incompatible or {}
    rows = []
    for s in settings:
        for key, (label, base) in models.items():
            row = dict(setting=s, model=key, label=label, baseline=base)
            if key in incompatible.get(s, {}):
                row.update(status=NA_GEOMETRY, verdict=NA_GEOMETRY, n=0,
                           reason=incompatible[s][key])
                rows.append(row)
                continue
            n = 0
            for metric, (_, _, better, _) in METRIC_DIRECTIONS.items():
                a, b = _paired_values(records, s, key, base, metric)
                row[metric] = paired_difference(a, b, better, level)
                n = max(n, len(a))
            row.update(n=n, status="ok" if n else "no samples")
            row["verdict"] = _overall([row[m]["verdict"]
                                       for m in METRIC_DIRECTIONS],
                                      "PASS", "FAIL", row["status"])
            rows.append(row)
    return rows


def _pooled(records, settings, model, baseline, metric):
    parts = [_paired_values(records, s, model, baseline, metric)
             for s in settings]
    if not parts:
        return np.zeros(0), np.zeros(0)
    return (np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]))


def aggregate(records, models, rows, *, targets=TARGETS, level=CI_LEVEL):
    """Aggregate over settings: relative change of the means vs CB, the
    targets, and Deep Attn CB against Deep CB.

    The samples of every setting where a model ran are pooled (with the
    same number of samples per setting, the pooled mean is the mean of the
    settings' means).

    Parameters
    ----------
    records, models
        As in :func:`compare`.
    rows : list of dict
        The output of :func:`compare` (which settings each model ran on and
        passed).

    Returns
    -------
    agg : dict
        ``models``: one dict per model with ``model``, ``label``,
        ``baseline``, ``n``, ``settings_run``, ``settings_passed``,
        ``settings_na`` and, per metric, the pooled
        :func:`paired_difference` plus ``target`` and ``met`` (see
        :data:`TARGETS`); ``attn``: per noise mode (``"joint"``,
        ``"source"``), Deep Attn CB against Deep CB: ``status`` (``"met"``,
        ``"not met"`` or why it is ``n/a``) and the pooled paired
        differences per metric.
    """
    out = []
    for key, (label, base) in models.items():
        mine = [r for r in rows if r["model"] == key]
        ran = [r["setting"] for r in mine if r["status"] == "ok"]
        entry = dict(model=key, label=label, baseline=base,
                     settings_run=len(ran),
                     settings_passed=sum(r["verdict"] == "PASS" for r in mine),
                     settings_na=sum(r["status"] == NA_GEOMETRY for r in mine))
        n = 0
        for metric, (_, _, better, _) in METRIC_DIRECTIONS.items():
            a, b = _pooled(records, ran, key, base, metric)
            res = paired_difference(a, b, better, level)
            res["target"] = targets.get(metric)
            res["met"] = target_met(res["rel"], metric, targets)
            entry[metric] = res
            n = max(n, res["n"])
        entry["n"] = n
        out.append(entry)
    attn = {}
    for mode in ("joint", "source"):
        a_key, d_key = f"deep-attn-cb-{mode}", f"deep-cb-{mode}"
        if a_key not in models or d_key not in models:
            missing = [k for k in (a_key, d_key) if k not in models]
            attn[mode] = dict(status=f"n/a ({', '.join(missing)} not "
                                     "in this run)")
            continue
        both = [s for s in {r["setting"] for r in rows}
                if all(r["status"] == "ok" for r in rows
                       if r["setting"] == s and r["model"] in (a_key, d_key))]
        res = dict()
        for metric, (_, _, better, _) in METRIC_DIRECTIONS.items():
            a, b = _pooled(records, sorted(both), a_key, d_key, metric)
            res[metric] = paired_difference(a, b, better, level)
        status = _overall([res[m]["verdict"] for m in METRIC_DIRECTIONS],
                          "met", "not met", "n/a (no samples)")
        attn[mode] = dict(status=status, **res)
    return dict(models=out, attn=attn)


# ----------------------------------------------------------------------------
# tables


def _fmt(v, fmt):
    if v is None or not math.isfinite(v):
        return "–"
    return fmt.format(v).replace("-", "−")


def _pct(v):
    return "–" if v is None or not math.isfinite(v) else \
        f"{100 * v:+.1f} %".replace("-", "−")


def _cell(res, metric):
    _, scale, _, fmt = METRIC_DIRECTIONS[metric]
    if res["n"] == 0:
        return "–"
    s = _fmt(res["mean"] * scale, fmt)
    if math.isfinite(res["lo"]):
        s += f" [{_fmt(res['lo'] * scale, fmt)}, {_fmt(res['hi'] * scale, fmt)}]"
    return f"{s} ({_pct(res['rel'])}) {res['verdict']}"


def markdown(rows, agg, *, labels=None, info=None, level=CI_LEVEL):
    """The do-no-harm tables (Markdown): per setting, then the aggregate."""
    labels = labels or {}
    info = info or {}
    pct = f"{100 * level:g} %"
    lines = ["## Do no harm: learned models against convex bounding (25 it.)",
             ""]
    if info:
        bem = info.get("bem_ico")
        bem = f"BEM ico{bem}" if isinstance(bem, (int, float)) else \
            "BEM of each setting"
        emd = info.get("emd_threshold") or 0.0
        emd = f", EMD over the sources above {emd:g} of the peak" if emd \
            else ""
        lines += [f"{info.get('n_samples')} samples per setting, seed "
                  f"{info.get('seed')}, {bem}, {info.get('dtype', 'float32')}"
                  f"{emd}.", ""]
    lines += [f"Cells: mean of the per-sample differences model − CB "
              f"[{pct} CI, Student t] (relative change of the means) and "
              "the verdict: PASS when the interval contains 0 or lies on the "
              "better side (lower rMSE, EMD, LE; higher F1), FAIL when it "
              "lies entirely on the worse side. Joint (γ,λ) models are "
              "compared with convex bounding (γ,λ), source-only (γ) ones "
              "with convex bounding (γ).", ""]
    head = ["Model", "vs", "n"] + [METRIC_DIRECTIONS[m][0]
                                   for m in METRIC_DIRECTIONS] + ["verdict"]
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    for s in settings:
        title = labels.get(s, s)
        lines += [f"### {s}: {title}" if title != s else f"### {s}", ""]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join("---" for _ in head) + "|")
        for r in (r for r in rows if r["setting"] == s):
            base = labels.get(r["baseline"], r["baseline"])
            if r["status"] != "ok":
                cells = [r["label"], base, "–"] + ["–"] * len(METRIC_DIRECTIONS)
                cells.append(r["verdict"])
            else:
                cells = [r["label"], base, str(r["n"])]
                cells += [_cell(r[m], m) for m in METRIC_DIRECTIONS]
                cells.append(r["verdict"])
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        for r in rows:
            if r["setting"] == s and r.get("reason"):
                lines.append(f"* {r['label']}: {r['reason']}")
                lines.append("")
    if info.get("not_registered"):
        lines += [f"Not registered (not compared): "
                  f"{', '.join(info['not_registered'])}.", ""]
    lines += ["### All settings", "",
              "Samples of every setting a model ran on, pooled: relative "
              "change of the means against the targets (met / not met) and "
              "the pooled paired verdict; *settings*: passed / run "
              "(n/a: geometry).", ""]
    head = ["Model", "n", "settings"] + [
        f"{METRIC_DIRECTIONS[m][0]}" + (f" (target {_pct(TARGETS[m])})"
                                        if m in TARGETS else "")
        for m in METRIC_DIRECTIONS]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join("---" for _ in head) + "|")
    for e in agg["models"]:
        cells = [e["label"], str(e["n"]),
                 f"{e['settings_passed']} / {e['settings_run']}"
                 + (f" ({e['settings_na']} n/a)" if e["settings_na"] else "")]
        for m in METRIC_DIRECTIONS:
            res = e[m]
            if res["n"] == 0:
                cells.append("–")
                continue
            c = _pct(res["rel"])
            if res.get("met") is not None:
                c += " met" if res["met"] else " not met"
            cells.append(f"{c}, {res['verdict']}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for mode, a in agg["attn"].items():
        text = f"* Deep Attn CB >= Deep CB ({'γ,λ' if mode == 'joint' else 'γ'}): " \
               f"{a['status']}"
        if "rmse" in a:
            text += " (" + ", ".join(
                f"{METRIC_DIRECTIONS[m][0]} {_pct(a[m]['rel'])} {a[m]['verdict']}"
                for m in METRIC_DIRECTIONS) + ")"
        lines.append(text)
    lines.append("")
    return "\n".join(lines)


def _long_rows(rows):
    """CSV rows: one per (setting, model, metric)."""
    out = []
    for r in rows:
        for m, (_, scale, _, _) in METRIC_DIRECTIONS.items():
            res = r.get(m) or {}
            out.append(dict(
                setting=r["setting"], model=r["model"], label=r["label"],
                baseline=r["baseline"], metric=m, unit_scale=scale,
                n=res.get("n", 0), model_mean=res.get("model_mean", np.nan),
                baseline_mean=res.get("baseline_mean", np.nan),
                diff_mean=res.get("mean", np.nan),
                ci_lo=res.get("lo", np.nan), ci_hi=res.get("hi", np.nan),
                rel_change=res.get("rel", np.nan),
                verdict=res.get("verdict", r["verdict"]),
                setting_verdict=r["verdict"]))
    return out


def _aggregate_rows(agg):
    out = []
    for e in agg["models"]:
        for m in METRIC_DIRECTIONS:
            res = e[m]
            out.append(dict(
                model=e["model"], label=e["label"], baseline=e["baseline"],
                metric=m, n=res["n"], settings_run=e["settings_run"],
                settings_passed=e["settings_passed"],
                settings_na=e["settings_na"], model_mean=res["model_mean"],
                baseline_mean=res["baseline_mean"], diff_mean=res["mean"],
                ci_lo=res["lo"], ci_hi=res["hi"], rel_change=res["rel"],
                target=res["target"] if res["target"] is not None else np.nan,
                target_met="" if res["met"] is None else int(res["met"]),
                verdict=res["verdict"]))
    for mode, a in agg["attn"].items():
        out.append(dict(model=f"deep-attn-cb-{mode}",
                        baseline=f"deep-cb-{mode}", metric="all",
                        verdict=a["status"]))
    return out


# ----------------------------------------------------------------------------
# cost


def cost_table(records, n_samples=500, n_learned=6):
    """Seconds per sample of every method and setting, and the wall time of
    a full check.

    Returns
    -------
    rows : list of dict
        Per setting: ``setting``, ``n``, per method ``{key}`` (solver
        seconds per sample), ``simulate`` (simulation seconds per sample),
        ``score`` (scoring seconds per method and sample) and
        ``estimate_seconds``: ``n_samples`` times the simulation, both CB
        baselines and ``n_learned`` learned models (each at the mean cost
        of the learned models measured, solve and score).
    """
    out = []
    settings = list(dict.fromkeys(r["setting"] for r in records))
    for s in settings:
        recs = [r for r in records if r["setting"] == s]
        row = dict(setting=s, n=len({int(r["sample"]) for r in recs}))
        methods = list(dict.fromkeys(r["method"] for r in recs))
        solve = {m: float(np.mean([r["seconds"] for r in recs
                                   if r["method"] == m])) for m in methods}
        row.update(solve)
        sim = [r.get("simulate_seconds", np.nan) for r in recs]
        score = [r.get("score_seconds", np.nan) for r in recs]
        row["simulate"] = float(np.nanmean(sim)) if np.isfinite(sim).any() \
            else np.nan
        row["score"] = float(np.nanmean(score)) if np.isfinite(score).any() \
            else np.nan
        cb = [solve[k] for k in BASELINES.values() if k in solve]
        learned = [v for k, v in solve.items() if k not in BASELINES.values()]
        cb_cost = float(np.mean(cb)) if cb else np.nan
        l_cost = float(np.mean(learned)) if learned else cb_cost
        sc = row["score"] if math.isfinite(row["score"]) else 0.0
        si = row["simulate"] if math.isfinite(row["simulate"]) else 0.0
        row["estimate_seconds"] = n_samples * (
            si + 2 * (cb_cost + sc) + n_learned * (l_cost + sc))
        out.append(row)
    return out


def cost_markdown(rows, n_samples=500, n_learned=6):
    """Markdown table of :func:`cost_table`."""
    methods = []
    for r in rows:
        for k in r:
            if k not in ("setting", "n", "simulate", "score",
                         "estimate_seconds") and k not in methods:
                methods.append(k)
    head = ["Setting", "n"] + [f"{m} s/sample" for m in methods] + [
        "simulate s/sample", "score s/(method·sample)",
        f"estimate, {n_samples} samples, CB + {n_learned} learned"]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join("---" for _ in head) + "|"]
    total = 0.0
    for r in rows:
        total += r["estimate_seconds"]
        lines.append("| " + " | ".join(
            [r["setting"], str(r["n"])]
            + [_fmt(r.get(m, np.nan), "{:.4f}") for m in methods]
            + [_fmt(r["simulate"], "{:.4f}"), _fmt(r["score"], "{:.4f}"),
               f"{r['estimate_seconds'] / 60:.1f} min"]) + " |")
    lines += ["", f"Estimated wall time of the full check ({len(rows)} "
                  f"settings): {total / 60:.0f} min (solvers, simulation and "
                  "scoring; forward models computed once and cached)."]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------
# running


def _fingerprint(method):
    """What identifies a method's results: ``"cb"`` for the classical
    solver, the weights' sha256 for a learned model (prefixed, so that CSV
    reading keeps it a string)."""
    if method.model == "cb":
        return f"cb-{method.n_layers}"
    if str(method.model).endswith(".safetensors"):
        digest = hashlib.sha256(Path(method.model).read_bytes()).hexdigest()
        return f"w-{digest[:12]}"
    from ..core.weights import registry, registry_key

    entry = registry().get(registry_key(method.model, method.learn_noise), {})
    return f"w-{str(entry.get('sha256', 'unknown'))[:12]}"


def _code_tag():
    """Identifies the code the results depend on: the sources of
    :mod:`mne_unfolded_sbl.core` (solver, network, corrections, simulator,
    metrics). Weights trained for one version of the network's features
    give other estimates with another, so results are reused only with the
    same code."""
    from .. import core

    h = hashlib.sha1()
    for f in sorted(Path(core.__file__).parent.glob("*.py")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return "k-" + h.hexdigest()[:12]


def _reusable(cached, tags, methods, fingerprints):
    """The cached per-sample records valid for ``methods``, keyed by
    ``(method key, sample)``.

    A record is valid for a method when the run's tags match and it was
    made with the same solver or weights (:func:`_fingerprint`). Learned
    models run at their full depth, so their weights identify their
    results whatever the method was called: a weights file checked by its
    path and the same file registered later under a model key share their
    records (copies under the new key and label).
    """
    learned = {}  # weights fingerprint -> the methods that run them
    for m in methods:
        if fingerprints[m.key].startswith("w-"):
            learned.setdefault(fingerprints[m.key], []).append(m)
    valid = {}
    for r in cached:
        if not _matches(r, tags):
            continue
        sample = int(r["sample"])
        if r.get("weights") == fingerprints.get(r.get("method")):
            valid[(r["method"], sample)] = r
        for m in learned.get(r.get("weights"), ()):
            valid.setdefault((m.key, sample),
                             dict(r, method=m.key, label=m.label))
    return valid


def _config_tag(setting, bem_ico):
    """Identifies a setting's simulation (config and BEM)."""
    text = f"{setting.simulation_config()!r}|{setting.montage}|" \
           f"{setting.spacing}|{bem_ico}"
    return "c-" + hashlib.sha1(text.encode()).hexdigest()[:12]


def resolve_models(models=None, dtype="float32"):
    """The learned models compared: ``{key: method}`` (None: every
    registered learned model).

    Raises
    ------
    ValueError
        For a classical method (the baselines are added by the check) or
        when no learned model is registered.
    """
    spec = models if models is not None else "learned"
    if spec == "learned" and not learned_method_keys():
        raise ValueError("No learned model is registered "
                         "(mne_unfolded_sbl.core.weights.registry()); pass "
                         "weights files (.safetensors) to compare.")
    out = {}
    for m in resolve_methods(spec, dtype=dtype):
        if not isinstance(m, SBLMethod) or m.model == "cb" \
                or m.tol is not None:
            raise ValueError(
                f"The do-no-harm check compares learned models with convex "
                f"bounding; {m.key!r} is not a learned model (the baselines "
                f"{sorted(BASELINES.values())} are added by the check).")
        if m.source_model != "point" or m.loose:
            raise ValueError(f"{m.key!r}: the do-no-harm check compares the "
                             "point source model only.")
        out[m.key] = m
    return out


def check_settings(settings):
    """Setting names (default :data:`DO_NO_HARM_SETTINGS`), validated: a
    ValueError for an unknown name or a setting the simulator cannot make."""
    names = list(settings or DO_NO_HARM_SETTINGS)
    for name in names:
        s = get_setting(name)
        if s.missing_fields():
            s.simulation_config()  # raises, naming the fields
    return names


@dataclass
class DoNoHarmResult:
    """What :func:`run_do_no_harm` returns."""

    records: list
    rows: list
    aggregate: dict
    info: dict = field(default_factory=dict)

    @property
    def failed(self):
        """Whether any model fails on any setting and metric."""
        return any(r["verdict"] == "FAIL" for r in self.rows)

    def markdown(self):
        return markdown(self.rows, self.aggregate, labels=self.info.get(
            "labels"), info=self.info)

    def cost(self, n_samples=500, n_learned=6):
        return cost_table(self.records, n_samples, n_learned)

    def write(self, out_dir):
        """Write ``do-no-harm.md``, ``do-no-harm.csv`` (one row per setting,
        model and metric) and ``do-no-harm_aggregate.csv``."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        md = out_dir / f"{STEM}.md"
        md.write_text(self.markdown() + "\n## Cost\n\n"
                      + cost_markdown(self.cost()), encoding="utf-8")
        return dict(md=md,
                    csv=write_csv(_long_rows(self.rows),
                                  out_dir / f"{STEM}.csv"),
                    aggregate=write_csv(_aggregate_rows(self.aggregate),
                                        out_dir / f"{STEM}_aggregate.csv"))


def _read_cache(path):
    if path is None or not Path(path).is_file():
        return []
    return read_csv(path)


def _matches(rec, tags):
    for k, v in tags.items():
        got = rec.get(k)
        if isinstance(v, (int, float)):
            if not isinstance(got, float) or got != float(v):
                return False
        elif got != v:
            return False
    return True


def run_do_no_harm(settings=None, models=None, *, n_samples=500, seed=0,
                   out=None, bem_ico=None, dtype="float32", batch_size=None,
                   progress=True, reuse=True, level=CI_LEVEL,
                   emd_threshold=0.0):
    """Run the do-no-harm check (see the module docstring).

    Parameters
    ----------
    settings : list of str | None
        Setting names (default :data:`DO_NO_HARM_SETTINGS`).
    models : None | str | list of str
        The learned models compared (method keys or weights files); None:
        every registered learned model. The CB baselines are added.
    n_samples, seed : int
        Samples per setting (sample ``i`` has the seed of
        :func:`~mne_unfolded_sbl.benchmark.runner.sample_seed`).
    out : path-like | None
        Folder of the per-sample results (``do-no-harm_{setting}_samples.csv``),
        read and extended; None keeps them in memory only.
    bem_ico : 3 | 4 | None
        BEM override (default: the setting's, 4).
    dtype, batch_size, progress
        As in :func:`~mne_unfolded_sbl.benchmark.run_benchmark`.
    reuse : bool
        Reuse matching per-sample results of ``out`` (False recomputes).
    level : float
        Coverage of the confidence intervals.
    emd_threshold : float
        Relative threshold of the sources entering the EMD
        (:func:`mne_unfolded_sbl.core.metrics.emd`); 0 (default) is the
        exact EMD of the other tables. The exact EMD over every non-zero
        source of a dense estimate is most of the check's time on ico4 and
        on extended sources; ``0.01`` is about 80 times faster there and
        changed the mean EMD by about 1 % (``doc/benchmarks.rst``).

    Returns
    -------
    result : DoNoHarmResult
    """
    names = check_settings(settings)
    learned = resolve_models(models, dtype)
    baselines = {k: m for k, m in zip(
        BASELINES.values(), resolve_methods(list(BASELINES.values()),
                                            dtype=dtype))}
    needed = {BASELINES[bool(m.learn_noise)] for m in learned.values()}
    methods = [baselines[k] for k in BASELINES.values() if k in needed] \
        + list(learned.values())
    pairs = {k: (m.label, BASELINES[bool(m.learn_noise)])
             for k, m in learned.items()}
    labels = {m.key: m.label for m in methods}
    fingerprints = {m.key: _fingerprint(m) for m in methods}
    all_records, incompatible, runs = [], {}, {}
    code = _code_tag()
    t_start = time.perf_counter()
    for name in names:
        setting = get_setting(name)
        labels[name] = setting.label
        b_ico = int(bem_ico if bem_ico is not None else setting.bem_ico)
        tags = dict(seed=int(seed), bem_ico=b_ico, dtype=dtype,
                    config=_config_tag(setting, b_ico),
                    emd_threshold=float(emd_threshold), code=code)
        path = None if out is None else \
            Path(out) / SAMPLES_FILE.format(setting=name)
        cached = _read_cache(path)
        valid = {}
        if reuse:
            valid = _reusable(cached, tags, methods, fingerprints)
        groups = {}
        for m in methods:
            k = 0
            while k < n_samples and (m.key, k) in valid:
                k += 1
            if k < n_samples:
                groups.setdefault(k, []).append(m)
        new = []
        problem = None
        for first, group in sorted(groups.items()):
            if problem is None:
                problem = load_problem(name, bem_ico=b_ico)
            res = run_benchmark(problem, group, n_samples=n_samples - first,
                                first=first, seed=seed, batch_size=batch_size,
                                dtype=dtype, progress=progress,
                                metric_kw=dict(emd_threshold=float(
                                    emd_threshold)),
                                extra=dict(setting=name))
            incompatible.setdefault(name, {}).update(res.info["incompatible"])
            n_run = n_samples - first
            sim = res.info["simulate_seconds"] / n_run
            score = res.info["score_seconds"] / max(len(res.records), 1)
            for r in res.records:
                r.update(tags, weights=fingerprints[r["method"]],
                         simulate_seconds=sim, score_seconds=score)
            new += res.records
            runs.setdefault(name, []).append(dict(
                first=first, methods=[m.key for m in group],
                wall_seconds=res.info["wall_seconds"]))
        fresh = {(r["method"], int(r["sample"])) for r in new}
        keep = [r for r in cached
                if not (_matches(r, tags)
                        and (r["method"], int(r["sample"])) in fresh)]
        if path is not None and new:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_csv(keep + new, path)
        used = [r for r in list(valid.values()) + new
                if int(r["sample"]) < n_samples]
        all_records += used
    rows = compare(all_records, pairs, names, incompatible=incompatible,
                   level=level)
    agg = aggregate(all_records, pairs, rows, level=level)
    info = dict(settings=names, n_samples=int(n_samples), seed=int(seed),
                bem_ico=bem_ico,
                dtype=dtype, emd_threshold=float(emd_threshold),
                labels=labels, incompatible=incompatible,
                runs=runs, wall_seconds=time.perf_counter() - t_start,
                models=list(learned), baselines=sorted(needed),
                not_registered=[f"{m}-{mode}" for m in ("deep-cb", "bias-cb",
                                                        "deep-attn-cb")
                                for mode in ("joint", "source")
                                if f"{m}-{mode}" not in learned_method_keys()])
    return DoNoHarmResult(records=all_records, rows=rows, aggregate=agg,
                          info=info)
