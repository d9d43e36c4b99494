"""Exporting trained weights: safetensors + model card, registry entries."""

import hashlib
import json
import os
from pathlib import Path

BENCHMARK_PLACEHOLDER = (
    "## Benchmark\n\n"
    "_Not measured yet. This section is filled in by the benchmark "
    "(`mne-unfolded-sbl benchmark`) on its own held-out test sets; no "
    "number here is an estimate._\n"
)


def save_weights(net, fname, card):
    """Write ``net`` with :func:`mne_unfolded_sbl.pretrained.save_model`.

    Where MNE is not installed (a bare GPU machine) ``pretrained`` cannot be
    imported; the same safetensors layout (``config`` and ``card`` JSON
    metadata) is then written directly.
    """
    try:
        from ..pretrained import save_model
    except ImportError:
        save_model = None
    if save_model is not None:
        return save_model(net, fname, card=card)
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous()
             for k, v in net.state_dict().items()}
    save_file(state, str(fname), metadata={"config": json.dumps(net.config),
                                           "card": json.dumps(card)})
    return Path(fname)


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


def sha256(fname):
    h = hashlib.sha256()
    with open(fname, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def register_weights(fname, key, registry_dir=None, copy=True):
    """Add weights to the bundled registry (``pretrained/registry.json``).

    Parameters
    ----------
    fname : path-like
        The ``.safetensors`` file (its ``.md`` model card beside it, if any,
        is copied too).
    key : str
        Registry key, e.g. ``"deep-cb_joint"`` (see
        :func:`mne_unfolded_sbl.pretrained.registry_key`).
    registry_dir : path-like | None
        Folder of ``registry.json``; default: the package's bundled folder.
    copy : bool
        Copy the file into ``registry_dir`` as ``<key>.safetensors``.

    Returns
    -------
    entry : dict
        ``{"file", "sha256", "url"}`` as written.
    """
    import shutil

    fname = Path(fname)
    if registry_dir is None:
        from ..pretrained import _bundled_dir

        registry_dir = _bundled_dir()
    registry_dir = Path(registry_dir)
    registry_dir.mkdir(parents=True, exist_ok=True)
    target = registry_dir / f"{key}.safetensors"
    if copy and fname.resolve() != target.resolve():
        shutil.copyfile(fname, target)
        card = fname.with_suffix(".md")
        if card.is_file():
            shutil.copyfile(card, target.with_suffix(".md"))
    elif not copy:
        target = fname
    reg_file = registry_dir / "registry.json"
    reg = json.loads(reg_file.read_text()) if reg_file.is_file() else {}
    entry = {"file": target.name if copy else os.path.relpath(target, registry_dir),
             "sha256": sha256(target), "url": None}
    reg[key] = entry
    tmp = reg_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(reg, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, reg_file)
    return entry
