"""Model cards of trained weights (the weights I/O is :mod:`..core.weights`)."""

from pathlib import Path

BENCHMARK_PLACEHOLDER = (
    "## Benchmark\n\n"
    "_Not measured yet. This section is filled in by the benchmark "
    "(`mne-unfolded-sbl benchmark`) on its own held-out test sets; no "
    "number here is an estimate._\n"
)


def model_card(card):
    """Markdown model card from the training record ``card`` (a dict)."""
    cfg = card["train_config"]
    kind = "joint (gamma, lambda)" if cfg["learn_noise"] else \
        "source-only (known noise)"
    status = "complete" if card.get("complete") else (
        f"PARTIAL: exported during phase {card['phase']} at step "
        f"{card['phase_step']}")
    lines = [
        f"# {card['name']}: {cfg['model']}, {kind}, {cfg['n_layers']} layers",
        "",
        f"Unfolded convex-bounding SBL weights trained with "
        f"`mne-unfolded-sbl train` (mne-unfolded-sbl {card.get('package_version')}).",
        "",
        "## Training record",
        "",
        f"- training: {status}",
        f"- optimizer steps: {card['global_step']} "
        f"({card['n_skipped']} skipped for non-finite gradients)",
        f"- simulated training samples seen: {card['samples_seen']}",
        f"- wall time: {card['wall_time_s'] / 3600:.2f} h "
        f"({card['wall_time_s']:.0f} s)",
        f"- device: {card['device']} x {card['world_size']} process(es)",
        f"- GPU time: {card['gpu_time_s'] / 3600:.2f} GPU-hours" if
        card["gpu_time_s"] else "- GPU time: none (CPU)",
        f"- torch {card['torch_version']}, dtype {cfg['dtype']}",
        f"- lead field: {card['n_sensors']} sensors x {card['n_sources']} "
        f"sources ({card['leadfield']})",
    ]
    init = cfg.get("init_weights") or ""
    if init:
        lines.append(f"- started from the weights `{init}` (fine-tuning; the "
                     "steps, samples and time above are this run's only)")
    ref = cfg.get("simulation", {}).get("reference", "average")
    lines.append(f"- simulated data reference: {ref}")
    lines += _distribution(cfg, card.get("domain"))
    if card.get("final_validation"):
        v = card["final_validation"]
        start = (f"the initial weights `{init}`" if init
                 else "classical solver")
        lines += ["", "Loss on the training run's own fixed validation set "
                  "(normalised squared error of the final posterior mean, "
                  f"{cfg['val_size']} samples, perturbed conductivities): "
                  f"{v['val_loss_final']:.4f} ({start} at the start of "
                  f"training: {card.get('initial_val_loss', float('nan')):.4f})."]
    lines += ["", "## Training configuration", "", "```toml",
              card["train_config_toml"].rstrip(), "```", "",
              BENCHMARK_PLACEHOLDER]
    return "\n".join(lines)


def _distribution(cfg, domain):
    """The "Training distribution" lines of a card."""
    from ..core.weights import channel_type_names

    sim = cfg.get("simulation", {})
    lines = ["", "## Training distribution", ""]
    if cfg.get("data_mode") == "bank":
        shards = cfg.get("bank_shards") or [f"{cfg['montage']}/{cfg['spacing']}"]
        conds = cfg.get("sim_conductivities") or [cfg["val_conductivity"]]
        lines += [
            f"- a bank of {cfg['bank_size']} pre-simulated samples on "
            f"{', '.join(shards)} (montage/source space; weights "
            f"{cfg.get('bank_shard_weights') or 'equal'}), simulated with "
            f"conductivities {conds} and inverted with {cfg['conductivity']}",
            f"- do-no-harm hinge weight {cfg.get('harm_weight', 0.0)} against "
            "classical convex bounding at the same depth"]
    else:
        lines.append(f"- streamed samples on {cfg['montage']}/{cfg['spacing']}")
    for key in ("n_sources", "spread", "footprint", "diffusion_order",
                "snr_mode", "snr_db", "noise_heterogeneity", "noise_color",
                "noise_cov_scale", "adhoc_cov_prob", "waveform", "n_times"):
        if key in sim:
            lines.append(f"- {key}: {sim[key]}")
    if cfg.get("model") == "bias-cb":
        lines.append("- **Bias CB is tied to this geometry** (one learned offset per "
                     "source and sensor of the training lead field): on any other "
                     "montage or source space it raises an error that names Deep CB "
                     "and Deep Attn CB, which transfer")
    if domain:
        lines.append(f"- geometry: {domain['n_sensors'][0]}-{domain['n_sensors'][1]} "
                     f"sensors, {domain['n_sources'][0]}-{domain['n_sources'][1]} "
                     "sources"
                     + (f", {channel_type_names(domain['ch_types'])} channels"
                        if domain.get("ch_types") else "")
                     + "; far outside this range (or on other channel types) "
                     "the model warns (`check_training_domain`)")
    return lines


def write_model_card(card, fname):
    """Write :func:`model_card` to ``fname``."""
    Path(fname).write_text(model_card(card))
    return Path(fname)


#: Metrics of the benchmark section: CSV key -> (title, unit scale, format).
_CARD_METRICS = {"rmse": ("rMSE", 1.0, "{:+.3f}"), "emd": ("EMD (mm)", 1e3, "{:+.2f}"),
                 "f1": ("F1", 1.0, "{:+.3f}"), "le": ("LE (mm)", 1e3, "{:+.2f}")}


def benchmark_section(rows, aggregate_rows, command):
    """The "Benchmark" section of a card from the do-no-harm check.

    Parameters
    ----------
    rows : list of dict
        This model's rows of ``do-no-harm.csv`` (one per setting and metric)
        written by ``mne-unfolded-sbl benchmark --do-no-harm``.
    aggregate_rows : list of dict
        This model's rows of ``do-no-harm_aggregate.csv``.
    command : str
        The command that produced them.

    Returns
    -------
    text : str
        Markdown: per setting the mean paired difference to classical convex
        bounding (25 iterations, same noise mode) with its 95 % CI and the
        verdict, then the pooled relative changes.
    """
    lines = ["## Benchmark", "",
             "Do-no-harm check against classical convex bounding at the same "
             "depth (25 iterations, same noise mode) on the benchmark's held-out "
             "simulations (perturbed conductivities): mean paired difference "
             "model − CB with its 95 % CI; PASS when the CI includes 0 or lies "
             "on the better side. Made with:", "", "```", command, "```", ""]
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    head = "| Setting | n | " + " | ".join(t for t, _, _ in _CARD_METRICS.values()) \
        + " | verdict |"
    lines += [head, "|" + "---|" * (len(_CARD_METRICS) + 3)]
    for st in settings:
        by = {r["metric"]: r for r in rows if r["setting"] == st}
        if not by:
            continue
        any_row = next(iter(by.values()))
        cells = []
        for key, (_, scale, fmt) in _CARD_METRICS.items():
            r = by.get(key)
            if r is None or r.get("diff_mean") in ("", None):
                cells.append("n/a")
                continue
            d, lo, hi = (float(r[k]) * scale for k in ("diff_mean", "ci_lo", "ci_hi"))
            cells.append(f"{fmt.format(d)} [{fmt.format(lo)}, {fmt.format(hi)}] "
                         f"{r['verdict']}")
        lines.append(f"| {st} | {any_row.get('n', '')} | " + " | ".join(cells)
                     + f" | {any_row.get('setting_verdict', '')} |")
    if aggregate_rows:
        lines += ["", "Pooled over the settings (relative change of the means "
                  "against CB; the paper's Table 3 margins are rMSE −20 %, "
                  "EMD −17 %, F1 +13 %):", ""]
        for r in aggregate_rows:
            if r["metric"] == "all":  # Deep Attn CB against Deep CB
                lines.append(f"- against `{r.get('baseline')}` (the paired rule "
                             f"of the check, Deep CB as the baseline): "
                             f"{r.get('verdict')}")
                continue
            rel = r.get("rel_change")
            rel = f"{100 * float(rel):+.1f} %" if rel not in ("", None) else "n/a"
            target = r.get("target")
            met = ""
            if target not in ("", None):
                met = (f" (target {100 * float(target):+.0f} %: "
                       f"{'met' if str(r.get('target_met')) in ('1', 'True') else 'not met'})")
            lines.append(f"- {_CARD_METRICS.get(r['metric'], (r['metric'],))[0]}: "
                         f"{rel}{met}; settings passed {r.get('settings_passed')}"
                         f"/{r.get('settings_run')}")
    return "\n".join(lines) + "\n"


def set_benchmark_section(fname, section):
    """Replace the "## Benchmark" section (to the end) of a card file."""
    text = Path(fname).read_text()
    head = text.split("## Benchmark", 1)[0].rstrip()
    Path(fname).write_text(head + "\n\n" + section)
    return Path(fname)


def _check_fraction(alpha):
    """``alpha`` as a float in [0, 1] (a weight-mixing ratio)."""
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
    return alpha


def average_weights(fname_a, fname_b, alpha, fname_out):
    """Write the weight average ``(1 - alpha) a + alpha b`` of two networks.

    Both files must hold the same network (same config, e.g. a fine-tuning
    run and the weights it started from): averaging the parameters of
    two points of one training trajectory gives a model between them
    ("model soup", Wortsman et al. 2022), here to trade the two runs'
    metrics against each other without a new training run.

    Parameters
    ----------
    fname_a, fname_b : path-like
        The two weights files (``alpha = 0`` gives ``a``, ``1`` gives ``b``).
    alpha : float
        Weight of ``b``, in [0, 1].
    fname_out : path-like
        Output weights file. Its training record is ``b``'s, with
        ``"weight_average"`` naming both inputs, their sha256 and ``alpha``.

    Returns
    -------
    fname_out : Path
    """
    import torch

    from ..core.weights import (load_weights, read_metadata, save_model,
                                sha256)

    alpha = _check_fraction(alpha)
    _, card = read_metadata(fname_b)
    net_a, net_b = load_weights(fname_a), load_weights(fname_b)
    # the networks' configs, with the defaults of settings older files lack
    if net_a.config != net_b.config:
        raise ValueError(
            f"{fname_a} and {fname_b} hold different networks ({net_a.config} "
            f"vs {net_b.config}); only weights of one architecture can be "
            "averaged.")
    state_b = net_b.state_dict()
    with torch.no_grad():
        avg = {k: torch.lerp(v, state_b[k].to(v.dtype), alpha)
               if v.is_floating_point() else v
               for k, v in net_a.state_dict().items()}
    net_a.load_state_dict(avg)
    card = dict(card, weight_average={
        "a": str(fname_a), "b": str(fname_b), "alpha": alpha,
        "sha256_a": sha256(fname_a), "sha256_b": sha256(fname_b)})
    return save_model(net_a, fname_out, card)


def shrink_weights(fname, alpha, fname_out):
    """Write a network whose corrections are ``alpha`` times those of another.

    Every correction module's last affine layer (the one that starts at
    zero, :mod:`mne_unfolded_sbl.core.corrections`) is multiplied by
    ``alpha``, so each layer's raw correction, for the same input
    statistics, is ``alpha`` times the trained one: ``alpha = 0`` gives the
    classical convex-bounding solver, ``1`` the trained network, values in
    between pull the network towards the classical solver (shrinkage).
    For Bias CB the whole correction is that layer, so the offsets are
    exactly ``alpha`` times the trained ones.

    Parameters
    ----------
    fname : path-like
        The trained weights file.
    alpha : float
        Scale of the corrections, in [0, 1].
    fname_out : path-like
        Output weights file. Its training record is ``fname``'s, with
        ``"shrinkage"`` naming the input, its sha256 and ``alpha``.

    Returns
    -------
    fname_out : Path
    """
    from ..core.weights import load_weights, read_metadata, save_model, sha256

    alpha = _check_fraction(alpha)
    _, card = read_metadata(fname)
    net = load_weights(fname)
    for module in net.modules():
        if hasattr(module, "scale_output_"):
            module.scale_output_(alpha)
    card = dict(card, shrinkage={"input": str(fname), "alpha": alpha,
                                 "sha256": sha256(fname)})
    return save_model(net, fname_out, card)
