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


def write_model_card(card, fname):
    """Write :func:`model_card` to ``fname``."""
    Path(fname).write_text(model_card(card))
    return Path(fname)
