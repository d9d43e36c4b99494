"""Pretrained weights: registry, hash-checked loading, saving.

Weights are safetensors files whose metadata carries the network config
(``"config"``, JSON) and the training record (``"card"``, JSON).  Bundled
files live in the ``mne_unfolded_sbl.pretrained_weights`` package (the repository's
``pretrained/`` folder) and are listed with their sha256 in
``pretrained/registry.json``.  Loading goes through :mod:`pooch`: a bundled
file is hash-checked in place; a registry entry with a ``url`` and no
bundled file is downloaded into pooch's cache and checked the same way.
"""

import hashlib
import inspect
import json
import os
import shutil
from importlib import resources
from pathlib import Path

import numpy as np
import pooch
import torch
from safetensors.torch import load_file, save_file
from safetensors import safe_open

from ._utils import _validate_type, check_positive_int, logger, warn
from .network import MODEL_LABELS, MODELS, UnfoldedSBL

__all__ = ["channel_type_names", "check_finite_parameters", "check_training_domain",
           "fetch_weights", "load_model",
           "load_weights", "read_metadata", "register_weights", "registry",
           "registry_key", "resolve_model", "save_model", "sha256",
           "tied_geometry", "with_sensor_order"]

REGISTRY_FILE = "registry.json"
DEFAULT_N_LAYERS = 25


def _bundled_dir():
    return Path(str(resources.files("mne_unfolded_sbl.pretrained_weights")))


def registry():
    """Return the registry of pretrained weights (name -> entry dict)."""
    path = _bundled_dir() / REGISTRY_FILE
    if not path.is_file():
        return {}
    return json.loads(path.read_text())


def registry_key(model, learn_noise):
    """Registry name of a model family and setting, e.g. ``deep-cb_joint``."""
    return f"{model}_{'joint' if learn_noise else 'source'}"


def fetch_weights(key):
    """Return the local path of registered weights, checking their sha256.

    Raises
    ------
    ValueError
        If no such weights are registered, or the file's hash does not match.
    """
    reg = registry()
    if key not in reg:
        family, _, mode = key.rpartition("_")
        twin = {"joint": "source", "source": "joint"}.get(mode)
        hint = ""
        if twin is not None and f"{family}_{twin}" in reg:
            hint = (f" The same family is registered with learn_noise="
                    f"{twin == 'joint'} ({family}_{twin}).")
        raise ValueError(
            f"No pretrained weights named {key!r} are registered in this "
            f"version (available: {sorted(reg) or 'none'}).{hint} Use "
            "model='cb' (the classical solver), or train weights with "
            "`mne-unfolded-sbl train` and pass model='<path/to/weights>.safetensors'."
        )
    entry = reg[key]
    known = f"sha256:{entry['sha256']}"
    bundled = _bundled_dir() / entry["file"]
    if bundled.is_file():
        actual = pooch.file_hash(str(bundled), alg="sha256")
        if actual != entry["sha256"]:
            raise ValueError(
                f"The bundled weights file {bundled} is corrupted or was "
                f"modified: sha256 {actual} does not match the registry "
                f"({entry['sha256']}). Reinstall mne-unfolded-sbl."
            )
        return bundled
    if not entry.get("url"):
        raise ValueError(f"Weights {key!r} are neither bundled nor downloadable.")
    try:
        return Path(pooch.retrieve(entry["url"], known_hash=known,
                                   fname=entry["file"],
                                   path=pooch.os_cache("mne-unfolded-sbl")))
    except ValueError as err:  # pooch's hash mismatch
        raise ValueError(f"Downloaded weights {key!r} failed the sha256 "
                         f"check: {err}") from None


def save_model(net, fname, card=None):
    """Save a network's weights, config and training record (safetensors)."""
    state = {k: v.detach().to("cpu").contiguous()
             for k, v in net.state_dict().items()}
    meta = {"config": json.dumps(net.config), "card": json.dumps(card or {})}
    save_file(state, str(fname), metadata=meta)
    return Path(fname)


def read_metadata(fname):
    """Return ``(config, card)`` stored in a weights file."""
    with safe_open(str(fname), framework="pt") as f:
        meta = f.metadata() or {}
    if "config" not in meta:
        raise ValueError(f"{fname} is not a mne-unfolded-sbl weights file "
                         "(no 'config' in its metadata).")
    return json.loads(meta["config"]), json.loads(meta.get("card", "{}"))


def load_weights(fname):
    """Build an :class:`UnfoldedSBL` from a weights file.

    Raises
    ------
    ValueError
        If the file is not a weights file of this package, its tensors do
        not fit the network its config describes (another architecture or
        version), or a parameter is NaN or infinite.
    """
    fname = Path(fname)
    if not fname.is_file():
        raise FileNotFoundError(f"Weights file not found: {fname}")
    try:
        config, card = read_metadata(fname)
        state = load_file(str(fname))
    except Exception as err:  # safetensors raises its own error types
        if isinstance(err, ValueError) and "mne-unfolded-sbl" in str(err):
            raise
        raise ValueError(f"Could not read weights file {fname}: it is "
                         f"corrupted or not a safetensors file ({err}).") from None
    net = _network_from_config(config, fname)
    _load_state(net, state, fname)
    check_finite_parameters(net, f"The weights file {fname}")
    #: what the weights were trained on (see :func:`check_training_domain`)
    net.training_domain = card.get("domain") if isinstance(card, dict) else None
    #: the montage and source space a Bias CB is tied to (see
    #: :func:`tied_geometry`)
    net.training_geometry = _training_geometry(card)
    return net.to(torch.float64 if state and next(iter(state.values())).dtype
                  == torch.float64 else torch.float32)


def _network_from_config(config, fname):
    """``UnfoldedSBL(**config)`` with an error that names the file.

    Files written before the correction features were versioned use the
    ``"absolute"`` features they were trained with, and files written
    before Bias CB's offsets could be centred hold uncentred ones.
    """
    if not isinstance(config, dict):
        raise ValueError(f"The weights file {fname} has a config that is not "
                         f"a dict ({type(config).__name__}); it was not "
                         "written by mne_unfolded_sbl.core.weights.save_model.")
    config = {"features": "absolute", "centered_bias": False, **config}
    known = set(inspect.signature(UnfoldedSBL).parameters)
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(
            f"The weights file {fname} was written for another version of "
            f"mne-unfolded-sbl: its config has the unknown setting(s) "
            f"{unknown} (this version knows {sorted(known)}). Load it with "
            "the version that trained it, or retrain with this one.")
    try:
        return UnfoldedSBL(**config)
    except (TypeError, ValueError) as err:
        raise ValueError(f"The weights file {fname} has an invalid network "
                         f"config {config}: {err}") from None


def _describe_config(config):
    keys = ("model", "n_layers", "learn_noise", "hidden", "embed_dim",
            "n_heads", "n_sources", "n_sensors")
    return ", ".join(f"{k}={config[k]!r}" for k in keys if k in config)


def _load_state(net, state, fname):
    """``net.load_state_dict(state)``, explaining what does not fit."""
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(state[k].shape)}, network "
              f"{tuple(own[k].shape)}" for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        for what, items in (("missing from the file", missing),
                             ("unexpected (not in the network)", unexpected),
                             ("of another shape", shapes)):
            if items:
                more = f" ... ({len(items)} in all)" if len(items) > 5 else ""
                parts.append(f"{len(items)} tensor(s) {what}: "
                             f"{items[:5]}{more}")
        raise ValueError(
            f"The tensors of the weights file {fname} do not fit the network "
            f"its config describes ({_describe_config(net.config)}): "
            + "; ".join(parts) + ". The file holds the weights of another "
            "architecture (model family, depth or widths) or was edited "
            "after saving; use the file written by the training run "
            "(mne_unfolded_sbl.core.weights.save_model), or retrain.")
    net.load_state_dict(state)


def check_finite_parameters(net, what="The network"):
    """Raise if any parameter or buffer of ``net`` is NaN or infinite.

    Parameters
    ----------
    net : torch.nn.Module
        The network.
    what : str
        How to name it in the error, e.g. ``"The weights file <path>"``.
    """
    bad = [k for k, v in net.state_dict().items()
           if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        more = f" ... ({len(bad)} in all)" if len(bad) > 5 else ""
        raise ValueError(
            f"{what} has non-finite (NaN/Inf) parameters: {bad[:5]}{more}. "
            "These weights come from a diverged training run (or were "
            "damaged); they would make every estimate NaN. Use the weights "
            "of an earlier checkpoint, retrain, or use a bundled model "
            "(model='deep-cb').")


def load_model(model="deep-cb", learn_noise=True, n_layers=None):
    """Return a ready network for a model name, a network or a weights path.

    Parameters
    ----------
    model : str | UnfoldedSBL | path-like
        ``"cb"``, ``"bias-cb"``, ``"deep-cb"``, ``"deep-attn-cb"``, an
        :class:`~mne_unfolded_sbl.core.network.UnfoldedSBL` or a weights file.
    learn_noise : bool
        Joint (gamma, lambda) or source-only model.
    n_layers : int | None
        Depth, an integer >= 1 (None: the model's own, 25 for ``"cb"``);
        only the classical ``"cb"`` accepts a value other than the trained
        depth.

    Notes
    -----
    A network passed as ``model`` is returned as it is (not copied, not
    converted); the MNE-facing functions never modify it.
    """
    if isinstance(model, dict):
        raise TypeError(
            "model is a dict (a state dict?); pass a network or a weights "
            "file: net = UnfoldedSBL(**config); net.load_state_dict(state), "
            "or save_model(net, 'weights.safetensors') and pass the path.")
    _validate_type(model, (str, Path, UnfoldedSBL), "model")
    if n_layers is not None:
        n_layers = check_positive_int(n_layers, "n_layers")
    if isinstance(model, str) and model in MODELS:
        if model == "cb":
            return UnfoldedSBL(DEFAULT_N_LAYERS if n_layers is None else
                               n_layers, "cb", learn_noise)
        net = load_weights(fetch_weights(registry_key(model, learn_noise)))
    elif isinstance(model, UnfoldedSBL):
        net = model
    elif isinstance(model, Path) or Path(model).suffix == ".safetensors":
        net = load_weights(model)
    else:
        raise ValueError(
            f"Unknown model {model!r}: use one of {MODELS}, an UnfoldedSBL "
            "network or the path of a .safetensors weights file."
        )
    if net.learn_noise != learn_noise:
        raise ValueError(
            f"The {net.model} network was trained with learn_noise="
            f"{net.learn_noise}, but learn_noise={learn_noise} was requested. "
            f"Pass learn_noise={net.learn_noise} or the other model variant."
        )
    if n_layers is not None and n_layers != net.n_layers:
        raise ValueError(
            f"The {net.model} network has {net.n_layers} trained layers; "
            f"n_layers={n_layers} is only possible with model='cb'."
        )
    logger.debug(f"Loaded model {net.model} ({net.n_layers} layers)")
    return net



def resolve_model(model="deep-cb", learn_noise=True, n_layers=None):
    """Load a model, falling back to classical convex bounding if needed.

    Only a bundled model name whose weights are not available here (not
    registered, not downloadable, or failing the hash check) falls back to
    ``"cb"``, with a warning and a ``note``. Every other problem (a wrong
    ``n_layers`` or ``learn_noise``, a network or weights file that cannot
    be used) is an error: a model the user chose is never silently
    replaced.

    Parameters
    ----------
    model : str | UnfoldedSBL | path-like
        As in :func:`mne_unfolded_sbl.apply_unfolded_sbl`.
    learn_noise : bool
        Joint (γ, λ) or source-only model.
    n_layers : int | None
        Depth, an integer >= 1 (only the classical ``"cb"`` accepts any
        value).

    Returns
    -------
    net : UnfoldedSBL
        The network to run.
    name : str
        ``model`` if it was loaded, ``"cb"`` after a fallback.
    note : str | None
        Why the fallback happened (None if there was none).
    """
    if n_layers is not None:  # a wrong depth is an error, not a fallback
        n_layers = check_positive_int(n_layers, "n_layers")
    if isinstance(model, str) and model in MODELS and model != "cb":
        try:
            fetch_weights(registry_key(model, learn_noise))
        except (ValueError, OSError, ImportError) as err:
            note = (f"Pretrained weights for {model!r} "
                    f"(learn_noise={learn_noise}) are not available ({err}). "
                    "Falling back to the classical convex-bounding solver "
                    "(model='cb', 25 iterations): the estimate shown as "
                    f"'{MODEL_LABELS.get(str(model), model)}' is NOT a "
                    "learned model.")
            warn(note)
            return (load_model("cb", learn_noise=learn_noise, n_layers=None),
                    "cb", note)
    net = load_model(model, learn_noise=learn_noise, n_layers=n_layers)
    return net, (model if isinstance(model, str) and model in MODEL_LABELS
                 else net.model), None


#: Channel types (MNE's names) as users read them.
_CH_TYPE_NAMES = {"eeg": "EEG", "mag": "magnetometer", "grad": "gradiometer"}


def channel_type_names(types):
    """Channel types as users read them, joined by ``"/"``.

    The warning of :func:`check_training_domain` and the model cards spell
    the training channel types so.

    Parameters
    ----------
    types : iterable of str
        MNE's names (``"eeg"``, ``"mag"``, ``"grad"``; others are kept).

    Returns
    -------
    names : str
        E.g. ``"gradiometer/magnetometer"`` for ``["grad", "mag"]``.
    """
    return "/".join(_CH_TYPE_NAMES.get(k, k) for k in types)


#: How far outside its training range a problem may be before a learned
#: model warns: sensors and sources within these factors of the range.
DOMAIN_SLACK = (0.75, 1.5)


def check_training_domain(net, n_sensors, n_sources, ch_types=None):
    """Warn when a learned network meets a geometry far outside its training.

    A learned correction is only known to be safe on data like those it
    was trained on. The weights' model card records the numbers of sensors
    and sources of its training lead fields and their channel types
    (``domain``); a problem with fewer than 0.75 times the smallest or more
    than 1.5 times the largest count, or with channel types the network
    never saw (MEG for the EEG-trained networks), triggers a warning that
    names the classical solver as the safe choice there.

    Parameters
    ----------
    net : UnfoldedSBL
    n_sensors : int
        Sensors of the problem about to be solved.
    n_sources : int | None
        Its sources (variances, i.e. after grouping orientations); None
        skips the count (e.g. atoms of the multi-scale model).
    ch_types : iterable of str | None
        Its channel types as MNE names them (``"eeg"``, ``"mag"``,
        ``"grad"``); None skips the check. Weights whose domain records
        no types count as trained on ``"eeg"``: every recipe of this
        package simulated EEG before the types were recorded.

    Returns
    -------
    message : str | None
        The warning, or None when the problem is inside the domain (or the
        network is classical or records no domain).
    """
    domain = getattr(net, "training_domain", None)
    if net.model == "cb" or not domain:
        return None
    lo, hi = DOMAIN_SLACK
    out = []
    for what, n in (("sensors", n_sensors), ("sources", n_sources)):
        a, b = domain.get(f"n_{what}", (None, None))
        if n is not None and a is not None and not lo * a <= int(n) <= hi * b:
            out.append(f"{int(n)} {what} (trained on {a}-{b})")
    trained = domain.get("ch_types", ["eeg"])
    if ch_types is not None and trained is not None:
        new = sorted(set(ch_types) - set(trained))
        if new:
            out.append(f"{channel_type_names(new)} channels (trained on "
                       f"{channel_type_names(sorted(trained))} only)")
    if not out:
        return None
    msg = (f"The {MODEL_LABELS.get(net.model, net.model)} weights were trained "
           f"on other data than this problem: {', '.join(out)}. A learned "
           "correction is not known to help there and may hurt; the classical "
           "solver (model='cb') is safe on any geometry.")
    warn(msg)
    return msg


def _training_geometry(card):
    """``(montage, spacing)`` of the one lead field a run trained on (from its
    card's training config), or None (several, or no record)."""
    cfg = card.get("train_config") if isinstance(card, dict) else None
    if not isinstance(cfg, dict):
        return None
    shards = cfg.get("bank_shards") if cfg.get("data_mode") == "bank" else None
    if not shards:
        shards = [f"{cfg.get('montage')}/{cfg.get('spacing')}"]
    if len(shards) != 1 or str(shards[0]).count("/") != 1:
        return None
    montage, spacing = str(shards[0]).split("/")
    return montage, spacing


def tied_geometry(net):
    """The geometry a Bias CB network is tied to, or None for other models.

    Bias CB learns one offset per source and per sensor of its training
    lead field: its weights mean something only on that montage (the same
    channels, whose names say which offset is whose:
    :func:`with_sensor_order`) and that source space. Deep CB and Deep Attn
    CB act pointwise on features and transfer to any geometry.

    Parameters
    ----------
    net : UnfoldedSBL

    Returns
    -------
    geometry : dict | None
        ``montage`` and ``spacing`` (names as in the training config; None
        when the weights do not record them), ``n_sensors`` (None for a
        source-only model, which has no sensor offsets) and ``n_sources``.
    """
    if net.model != "bias-cb":
        return None
    montage, spacing = getattr(net, "training_geometry", None) or (None, None)
    cfg = net.config
    return dict(montage=montage, spacing=spacing,
                n_sensors=cfg.get("n_sensors") if net.learn_noise else None,
                n_sources=cfg.get("n_sources"))


def with_sensor_order(net, order):
    """A copy of a Bias CB network whose sensor offsets follow ``order``.

    Parameters
    ----------
    net : UnfoldedSBL
        A joint Bias CB network (one offset per sensor and layer).
    order : array-like of int
        For each sensor of the data, the index of its offset in ``net``
        (``check_tied_geometry`` of the MNE-facing layer gives it from
        the channel names).

    Returns
    -------
    net : UnfoldedSBL
        A new network; ``net`` is not modified.
    """
    import copy

    if net.model != "bias-cb" or not net.learn_noise:
        raise ValueError("Only a joint Bias CB network has sensor offsets to "
                         f"reorder, got model={net.model!r}, learn_noise="
                         f"{net.learn_noise}.")
    n_sensors = net.config["n_sensors"]
    order = torch.as_tensor(np.asarray(order), dtype=torch.long)
    if sorted(order.tolist()) != list(range(n_sensors)):
        raise ValueError(f"order must be a permutation of the network's "
                         f"{n_sensors} sensors, got {len(order)} indices")
    out = copy.deepcopy(net)
    with torch.no_grad():
        for layer in out.layers:
            if layer.noise_correction is not None:
                layer.noise_correction.bias.copy_(
                    layer.noise_correction.bias[order])
    return out


def sha256(fname):
    """The sha256 hex digest of a file."""
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
        :func:`registry_key`).
    registry_dir : path-like | None
        Folder of ``registry.json``; default: the package's bundled folder.
    copy : bool
        Copy the file into ``registry_dir`` as ``<key>.safetensors``.

    Returns
    -------
    entry : dict
        ``{"file", "sha256", "url"}`` as written.
    """
    fname = Path(fname)
    registry_dir = Path(_bundled_dir() if registry_dir is None else registry_dir)
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
