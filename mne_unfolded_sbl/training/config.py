"""Training configuration: one dataclass, read from TOML, stored in checkpoints.

A TOML file groups the fields in tables (``[model]``, ``[optim]``,
``[schedule]``, ``[data]``, ``[validation]``, ``[run]``) plus
``[simulation]`` (the fields of
:class:`~mne_unfolded_sbl.core.simulator.SimulationConfig`); the table a key sits
in is only for readability (any field may also be written at the top level),
but every key must be a known field. TOML has no ``null``: an empty string
means "unset" for paths and ``0`` means "off" for ``rel_threshold`` and
``max_minutes``. Relative paths are relative to the working directory.

This module does not import MNE.
"""

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..core.corrections import check_features
from ..core.leadfield import DEFAULT_CONDUCTIVITY, PERTURBED_CONDUCTIVITY
from ..core.simulator import SimulationConfig

import tomllib

#: Correction families that can be trained ("cb" has no parameters).
TRAINABLE_MODELS = ("bias-cb", "deep-cb", "deep-attn-cb")

#: Table of each field in a written TOML file.
SECTIONS = {
    "model": ("model", "learn_noise", "n_layers", "hidden", "embed_dim",
              "n_heads", "rel_threshold", "noise_init", "features",
              "centered_bias", "init_weights"),
    "optim": ("lr", "finetune_lr", "betas", "adam_eps", "grad_clip",
              "gradient_checkpointing"),
    "schedule": ("batch_size", "progressive", "phase_steps", "finetune_steps",
                 "lr_schedule", "min_lr_ratio", "beta_ds", "n_ds_layers",
                 "loss", "harm_weight", "shape_weight", "spatial_weight",
                 "regime_weight", "support_weight"),
    "data": ("train_leadfield", "val_leadfield", "montage", "spacing",
             "conductivity", "val_conductivity", "bem_ico", "data_mode",
             "bank_size", "bank_shards", "bank_shard_weights",
             "sim_conductivities", "bank_regimes"),
    "validation": ("val_size", "val_batch_size", "val_seed", "val_interval",
                   "val_metrics_size", "val_per_layer"),
    "run": ("seed", "device", "dtype", "out_dir", "checkpoint_interval",
            "max_minutes", "log_file", "log_interval", "num_threads",
            "progress", "export_name"),
}

#: Training objectives (:mod:`mne_unfolded_sbl.training.loss`).
LOSSES = ("nmse", "log-ratio")

#: Fields that may change when a run is resumed (they do not affect results).
RUNTIME_FIELDS = ("device", "out_dir", "checkpoint_interval", "max_minutes",
                  "log_interval", "num_threads", "progress", "export_name")


@dataclass
class TrainConfig:
    """Every hyperparameter of a training run.

    Model
        ``model`` ("bias-cb" | "deep-cb" | "deep-attn-cb"), ``learn_noise``
        (joint gamma/lambda if True, source-only with the true noise else),
        ``n_layers`` K (the last layer is classical), ``hidden`` (MLP width),
        ``embed_dim``, ``n_heads`` (attention), ``rel_threshold`` (hard
        threshold eps_rel, 0 = off), ``noise_init``, ``features`` (the
        corrections' feature set, "relative" or "absolute": that of the
        first bundled weights), ``centered_bias`` (Bias CB: offsets minus
        their mean, no common shift of all variances); ``init_weights``
        (empty: zero-initialised corrections, i.e. the classical solver;
        else a ``.safetensors`` weights file or a bundled model name such
        as ``"deep-cb"`` (with this run's ``learn_noise``) to fine-tune
        from; same architecture).
    Optimisation
        Adam with ``lr`` in every progressive phase and ``finetune_lr`` in the
        final joint phase (``lr`` there when ``progressive`` is False),
        ``betas``, ``adam_eps``; gradient-norm clipping at ``grad_clip``;
        ``gradient_checkpointing`` (per layer, trades compute for memory).
    Schedule
        ``batch_size`` is the *global* mini-batch (split evenly over the data
        parallel ranks). With ``progressive``, phase ``k`` (k = 0..K-2) trains
        only layer ``k`` for ``phase_steps`` steps, then all layers are
        fine-tuned for ``finetune_steps`` steps. ``lr_schedule`` ("constant"
        or "cosine" down to ``min_lr_ratio * lr``) applies within each phase.
        Deep supervision: ``beta_ds`` and ``n_ds_layers``. ``loss``:
        ``"nmse"`` (the paper's mean normalised error) or ``"log-ratio"``
        (the mean log of the error over that of classical convex bounding
        at the same depth on the same sample; bank training only);
        ``harm_weight``: the do-no-harm hinge against classical convex
        bounding at the same depth (bank training only; see
        :mod:`mne_unfolded_sbl.training.loss`); ``shape_weight``: the weight
        of the same log-ratio on the shape error (the error of the
        best-scaled estimate; log-ratio objective only);
        ``spatial_weight``: the same on the spatial error (the energy
        distance of the estimated and true maps of source amplitude;
        log-ratio objective only); ``regime_weight``: the hinge on every
        regime's mean log-ratio in a batch (``bank_regimes``; log-ratio
        objective only); ``support_weight``: the log-ratio of the support
        error (one minus a soft F1 of the estimated and true maps of source
        amplitude; log-ratio objective only).
    Data
        Lead fields from ``.npz`` files (``train_leadfield``,
        ``val_leadfield``, written by
        :func:`mne_unfolded_sbl.datasets.save_leadfield_npz`) or, when empty,
        computed with :func:`mne_unfolded_sbl.datasets.make_template_forward`
        from ``montage``, ``spacing``, ``bem_ico`` and ``conductivity``
        (training) / ``val_conductivity`` (validation, no inverse crime).
        ``data_mode``: ``"stream"`` (a fresh simulated batch every step,
        :mod:`~mne_unfolded_sbl.training.data`) or ``"bank"`` (a fixed set
        of ``bank_size`` samples simulated once on the lead fields
        ``bank_shards`` (``"montage/spacing"`` strings, empty: this
        config's ``montage``/``spacing``) in proportion to
        ``bank_shard_weights``, each simulated with one of
        ``sim_conductivities`` (empty: ``val_conductivity``) and inverted
        with ``conductivity``; progressive phases then run one layer per
        step from cached states, :mod:`~mne_unfolded_sbl.training.bank`).
        ``simulation``: overrides of the
        :class:`~mne_unfolded_sbl.core.simulator.SimulationConfig` defaults; the
        resolved values are stored. ``bank_regimes`` (bank mode): a mixture
        of source/noise regimes, each a table of ``weight`` plus
        ``SimulationConfig`` fields that override ``simulation`` for its
        share of every shard's samples (empty: all samples from
        ``simulation``).
    Validation
        A fixed set of ``val_size`` samples regenerated from ``val_seed`` in
        chunks of ``val_batch_size``; evaluated before training, every
        ``val_interval`` steps (0: phase ends only) and at the end of each
        phase. Source metrics on the first ``val_metrics_size`` samples;
        ``val_per_layer`` logs the loss after every layer.
    Run
        ``seed``, ``device`` ("auto" | "cpu" | "cuda" | "cuda:1"), ``dtype``,
        ``out_dir``, ``checkpoint_interval`` (steps, 0: phase ends only),
        ``max_minutes`` (stop cleanly, with a checkpoint, after this wall
        time; 0 = no limit), ``log_file`` (JSONL, relative to ``out_dir``),
        ``log_interval`` (steps), ``num_threads`` (CPU threads, 0 = torch
        default), ``progress`` (tqdm bars), ``export_name`` (default
        ``<model>_<joint|source>``).
    """

    # model
    model: str = "deep-cb"
    learn_noise: bool = True
    n_layers: int = 25
    hidden: int = 32
    embed_dim: int = 16
    n_heads: int = 2
    rel_threshold: float = 0.0
    noise_init: float = 0.1
    features: str = "relative"
    centered_bias: bool = False
    init_weights: str = ""
    # optimisation
    lr: float = 1e-3
    finetune_lr: float = 1e-4
    betas: tuple = (0.9, 0.999)
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    gradient_checkpointing: bool = True
    # schedule
    batch_size: int = 512
    progressive: bool = True
    phase_steps: int = 391
    finetune_steps: int = 10157
    lr_schedule: str = "constant"
    min_lr_ratio: float = 0.0
    beta_ds: float = 0.3
    n_ds_layers: int = 5
    loss: str = "nmse"
    harm_weight: float = 0.0
    shape_weight: float = 0.0
    spatial_weight: float = 0.0
    regime_weight: float = 0.0
    support_weight: float = 0.0
    # data
    train_leadfield: str = ""
    val_leadfield: str = ""
    montage: str = "train-64"
    spacing: str = "ico3"
    conductivity: tuple = DEFAULT_CONDUCTIVITY
    val_conductivity: tuple = PERTURBED_CONDUCTIVITY
    bem_ico: int = 4
    data_mode: str = "stream"
    bank_size: int = 4096
    bank_shards: tuple = ()
    bank_shard_weights: tuple = ()
    sim_conductivities: tuple = ()
    bank_regimes: tuple = ()
    simulation: dict = field(default_factory=dict)
    # validation
    val_size: int = 1000
    val_batch_size: int = 250
    val_seed: int = 20240
    val_interval: int = 0
    val_metrics_size: int = 100
    val_per_layer: bool = True
    # run
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    out_dir: str = "runs/train"
    checkpoint_interval: int = 200
    max_minutes: float = 0.0
    log_file: str = "train_log.jsonl"
    log_interval: int = 10
    num_threads: int = 0
    progress: bool = True
    export_name: str = ""

    def __post_init__(self):
        self.betas = tuple(float(b) for b in self.betas)
        self.conductivity = tuple(float(c) for c in self.conductivity)
        self.val_conductivity = tuple(float(c) for c in self.val_conductivity)
        self.bank_shards = tuple(str(s) for s in self.bank_shards)
        self.bank_shard_weights = tuple(float(w) for w in self.bank_shard_weights)
        self.sim_conductivities = tuple(tuple(float(c) for c in cond)
                                        for cond in self.sim_conductivities)
        if self.data_mode not in ("stream", "bank"):
            raise ValueError("data_mode must be 'stream' or 'bank', got "
                             f"{self.data_mode!r}")
        for s in self.bank_shards:
            if s.count("/") != 1:
                raise ValueError(f"bank_shards entries are 'montage/spacing' "
                                 f"(e.g. 'train-64/ico3'), got {s!r}")
        if self.bank_shard_weights and \
                len(self.bank_shard_weights) != len(self.bank_shards):
            raise ValueError("bank_shard_weights needs one weight per entry of "
                             "bank_shards (or none: equal weights).")
        if any(w <= 0 for w in self.bank_shard_weights):
            raise ValueError("bank_shard_weights must be > 0.")
        if any(len(c) != 3 for c in self.sim_conductivities):
            raise ValueError("sim_conductivities holds (brain, skull, scalp) "
                             "triples.")
        self.bank_regimes = tuple(_resolve_regime(r) for r in self.bank_regimes)
        if self.bank_regimes and self.data_mode != "bank":
            raise ValueError("bank_regimes needs data_mode='bank'.")
        check_features(self.features)
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.loss == "log-ratio" and self.data_mode != "bank":
            raise ValueError("loss='log-ratio' needs data_mode='bank' (the "
                             "classical reference errors live in the bank).")
        for name in ("shape_weight", "spatial_weight", "regime_weight",
                     "support_weight"):
            w = getattr(self, name)
            if w < 0 or (w > 0 and self.loss != "log-ratio"):
                raise ValueError(f"{name} must be >= 0, and > 0 only with "
                                 f"loss='log-ratio'; got {w}")
        if self.harm_weight < 0:
            raise ValueError(f"harm_weight must be >= 0, got {self.harm_weight}")
        if self.harm_weight > 0 and self.data_mode != "bank":
            raise ValueError("harm_weight needs data_mode='bank' (the classical "
                             "reference errors live in the bank).")
        if self.model not in TRAINABLE_MODELS:
            raise ValueError(f"model must be one of {TRAINABLE_MODELS}, got "
                             f"{self.model!r} (the classical 'cb' has nothing "
                             "to train).")
        for name in ("n_layers", "hidden", "embed_dim", "n_heads", "batch_size",
                     "val_size", "val_batch_size", "bank_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_layers < 2:
            raise ValueError("n_layers must be >= 2 (the last layer is classical).")
        for name in ("phase_steps", "finetune_steps", "n_ds_layers", "val_interval",
                     "checkpoint_interval", "val_metrics_size", "num_threads"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.log_interval < 1:
            raise ValueError(f"log_interval must be >= 1, got {self.log_interval}")
        for name in ("lr", "finetune_lr", "grad_clip", "adam_eps"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError("lr_schedule must be 'constant' or 'cosine', got "
                             f"{self.lr_schedule!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        if self.beta_ds < 0 or self.rel_threshold < 0 or self.max_minutes < 0:
            raise ValueError("beta_ds, rel_threshold and max_minutes must be >= 0")
        if len(self.conductivity) != 3 or len(self.val_conductivity) != 3:
            raise ValueError("conductivity and val_conductivity need 3 values "
                             "(brain, skull, scalp)")
        self.simulation = _resolve_simulation(self.simulation)
        for r in self.bank_regimes:  # every regime must make a valid config
            _resolve_simulation({**self.simulation,
                                 **{k: v for k, v in r.items() if k != "weight"}})

    # ------------------------------------------------------------------
    @property
    def name(self):
        """Export / registry name, e.g. ``deep-cb_joint``."""
        if self.export_name:
            return self.export_name
        return f"{self.model}_{'joint' if self.learn_noise else 'source'}"

    def simulation_config(self):
        """The :class:`~mne_unfolded_sbl.core.simulator.SimulationConfig` to use."""
        return SimulationConfig(**self.simulation)

    def regime_configs(self):
        """``[(weight, SimulationConfig), ...]`` of :attr:`bank_regimes`
        (empty list: no mixture)."""
        return [(float(r["weight"]), SimulationConfig(**{
            **self.simulation, **{k: v for k, v in r.items() if k != "weight"}}))
            for r in self.bank_regimes]

    def network_kwargs(self, n_sources, n_sensors):
        """Keyword arguments of :class:`~mne_unfolded_sbl.core.network.UnfoldedSBL`."""
        return dict(n_layers=self.n_layers, model=self.model,
                    learn_noise=self.learn_noise, n_sources=int(n_sources),
                    n_sensors=int(n_sensors), hidden=self.hidden,
                    embed_dim=self.embed_dim, n_heads=self.n_heads,
                    rel_threshold=self.rel_threshold or None,
                    noise_init=self.noise_init, features=self.features,
                    centered_bias=self.centered_bias)

    def to_dict(self):
        """Plain dict (JSON/TOML-serialisable: lists instead of tuples)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d):
        """Inverse of :meth:`to_dict` (unknown keys raise an error)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"Unknown training config keys: {unknown}. Known: "
                             f"{sorted(known)}")
        return cls(**d)

    def replace(self, **changes):
        """Copy with some fields changed (validated again)."""
        d = self.to_dict()
        d.update(changes)
        return TrainConfig.from_dict(d)

    def differences(self, other, ignore=RUNTIME_FIELDS):
        """Names of the fields (outside ``ignore``) that differ from ``other``."""
        a, b = self.to_dict(), other.to_dict()
        return [k for k in a if k not in ignore and a[k] != b[k]]

    def to_toml(self):
        """TOML text that :func:`load_config` reads back to an equal config."""
        d = self.to_dict()
        lines = []
        for section, names in SECTIONS.items():
            lines.append(f"[{section}]")
            lines += [f"{n} = {_toml_value(d[n])}" for n in names]
            lines.append("")
        sim = d["simulation"]
        lines.append("[simulation]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in sim.items()
                  if not isinstance(v, dict)]
        for k, v in sim.items():
            if isinstance(v, dict):
                lines += ["", f"[simulation.{k}]"]
                lines += [f"{_toml_key(kk)} = {_toml_value(vv)}"
                          for kk, vv in v.items()]
        return "\n".join(lines) + "\n"


def load_config(fname=None, **overrides):
    """Read a :class:`TrainConfig` from a TOML file (None: all defaults).

    Parameters
    ----------
    fname : path-like | None
        TOML file.
    **overrides
        Fields to set after reading (e.g. ``device="cuda"``); a
        ``simulation`` dict is merged into the file's ``[simulation]``.
    """
    d = {}
    if fname is not None:
        with open(fname, "rb") as f:
            raw = tomllib.load(f)
        for key, value in raw.items():
            if key == "simulation" or not isinstance(value, dict):
                items = {key: value}.items()
            else:
                items = value.items()
            for k, v in items:
                if k in d:
                    raise ValueError(f"{fname}: key {k!r} is given twice")
                d[k] = v
    for k, v in overrides.items():
        if k == "simulation":  # merged, not replaced
            d["simulation"] = {**d.get("simulation", {}), **v}
        elif k.startswith("simulation."):
            d.setdefault("simulation", {})[k.split(".", 1)[1]] = v
        else:
            d[k] = v
    return TrainConfig.from_dict(d)


def _resolve_simulation(sim):
    """Fill in the SimulationConfig defaults and validate (plain types)."""
    if isinstance(sim, SimulationConfig):
        sim = dataclasses.asdict(sim)
    allowed = {f.name for f in fields(SimulationConfig)}
    unknown = sorted(set(sim) - allowed)
    if unknown:
        raise ValueError(f"Unknown [simulation] keys {unknown}; known: "
                         f"{sorted(allowed)}")
    resolved = dataclasses.asdict(SimulationConfig(**sim))
    return json.loads(json.dumps(resolved))


def _resolve_regime(regime):
    """One ``bank_regimes`` entry: a plain dict with a positive ``weight``."""
    if not isinstance(regime, dict):
        raise ValueError("bank_regimes entries are tables of weight plus "
                         f"SimulationConfig fields, got {regime!r}")
    regime = json.loads(json.dumps(regime))
    w = regime.get("weight")
    if not isinstance(w, (int, float)) or isinstance(w, bool) or not w > 0:
        raise ValueError(f"Every bank_regimes entry needs a weight > 0, got "
                         f"{regime!r}")
    allowed = {f.name for f in fields(SimulationConfig)}
    unknown = sorted(set(regime) - allowed - {"weight"})
    if unknown:
        raise ValueError(f"Unknown keys {unknown} in a bank_regimes entry; "
                         f"known: weight and {sorted(allowed)}")
    regime["weight"] = float(w)
    return regime


def _toml_key(k):
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)


def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError("TOML values must be finite")
        return repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):  # an inline table
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}"
                               for k, x in v.items()) + "}"
    raise TypeError(f"Cannot write {type(v).__name__} to TOML")


def write_config(config, fname):
    """Write ``config`` as TOML to ``fname``."""
    Path(fname).write_text(config.to_toml())
    return Path(fname)
