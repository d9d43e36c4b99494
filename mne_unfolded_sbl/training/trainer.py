"""The training loop: progressive layer-wise phases, then joint fine-tuning.

Schedule (paper 4.4 and A.4). A network with ``K`` layers has trainable
layers ``0..K-2`` (the last layer is classical). With ``progressive``:

* phase ``k`` (``k = 0..K-2``): layer ``k`` starts as a copy of layer
  ``k-1`` (layer 0 starts at zero, i.e. classical), every other layer is
  frozen, the network runs only its first ``k+1`` layers and the loss is
  the reconstruction loss of the posterior mean after layer ``k``; a fresh
  Adam optimiser at ``lr`` runs ``phase_steps`` steps. Layers after ``k``
  stay at their zero (classical) initialisation meanwhile.
* fine-tuning: all layers unfrozen, full ``K``-layer network (including
  the classical last layer), loss ``l_K + beta_ds * mean_S l_k``, a fresh
  Adam at ``finetune_lr`` for ``finetune_steps`` steps.

Without ``progressive`` only the joint phase runs (at ``lr``).

Every step: simulate this rank's shard (seeded by ``(seed, rank, phase,
step)``), forward/backward, clip the global gradient norm, Adam step (skipped
and counted if the gradient is not finite). Checkpoints (atomic) hold the
model, optimiser, counters, RNG states, config and the log position, so an
interrupted run resumed from its checkpoint is bit-for-bit the uninterrupted
run (on the same device and software). A run stops cleanly (checkpoint,
exit status :data:`EXIT_STOPPED`) after ``max_minutes`` or on SIGTERM/SIGINT.

Nothing here imports MNE: with ``.npz`` lead fields the loop runs on a machine
without it (a test checks it).
"""

import gc
import json
import math
import platform
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tqdm.auto import tqdm

from .. import __version__
from ..core import metrics
from ..core._utils import DTYPES, logger
from ..core.network import UnfoldedSBL
from . import distributed as ddp
from .checkpoint import (CHECKPOINT_FORMAT, CHECKPOINT_NAME, load_checkpoint,
                         rng_state, save_checkpoint, set_rng_state)
from .config import RUNTIME_FIELDS, TrainConfig
from .data import SimulatedData, load_leadfields
from ..core.weights import load_model, save_model
from .export import write_model_card
from .loss import (LOG_RATIO_EPS, SPATIAL_EPS, SUPPORT_EPS, LossModule,
                   draw_ds_layers, nmse)

#: Exit status of a run that stopped early (time limit, signal): resume it.
EXIT_STOPPED = 75


@dataclass(frozen=True)
class Phase:
    """One training phase."""

    index: int
    name: str
    layer: int | None  # the trained layer, None: all layers
    n_layers: int  # layers run (the output after the last is supervised)
    steps: int
    lr: float


def make_phases(config):
    """The list of :class:`Phase` of ``config``'s schedule."""
    K = config.n_layers
    phases = []
    if config.progressive:
        for k in range(K - 1):
            phases.append(Phase(k, f"layer {k + 1}/{K - 1}", k, k + 1,
                                config.phase_steps, config.lr))
        phases.append(Phase(K - 1, "fine-tune", None, K, config.finetune_steps,
                            config.finetune_lr))
    else:
        phases.append(Phase(0, "joint", None, K, config.finetune_steps, config.lr))
    return phases


def _device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return (f"CPU ({platform.processor() or platform.machine()}, "
            f"{torch.get_num_threads()} threads)")


class Trainer:
    """Train an :class:`~mne_unfolded_sbl.core.network.UnfoldedSBL` network.

    Parameters
    ----------
    config : TrainConfig
    out_dir : path-like | None
        Run folder (checkpoint, log, exported weights); default
        ``config.out_dir``.
    resume : bool
        Continue from ``out_dir/checkpoint.pt`` if it exists. Without it an
        existing checkpoint is an error (no silent overwrite).
    leadfields : (LeadField, LeadField) | None
        Training and validation lead fields; default
        :func:`~mne_unfolded_sbl.training.data.load_leadfields`.
    dist_info : DistInfo | None
        Data-parallel group; default from the ``torchrun`` environment.
    bank_specs : list of ShardSpec | None
        Lead fields of a bank-mode run (``data_mode="bank"``); default
        :func:`~mne_unfolded_sbl.training.data.bank_specs` (needs MNE).

    Attributes
    ----------
    net : UnfoldedSBL
        The network being trained.
    phases : list of Phase
    phase_index, step, global_step, samples_seen : int
        Progress counters (``step`` counts within the current phase).
    """

    def __init__(self, config, *, out_dir=None, resume=False, leadfields=None,
                 dist_info=None, bank_specs=None):
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config)}")
        self.out_dir = Path(out_dir if out_dir is not None else config.out_dir)
        ckpt_file = self.out_dir / CHECKPOINT_NAME
        ckpt = None
        if ckpt_file.is_file():
            if not resume:
                raise FileExistsError(
                    f"{ckpt_file} exists. Pass resume=True (CLI: --resume) to "
                    "continue that run, or choose another output folder.")
            ckpt = load_checkpoint(ckpt_file)
            saved = TrainConfig.from_dict(ckpt["config"])
            diff = saved.differences(config)
            if diff:
                raise ValueError(
                    f"The configuration differs from the one of the run in "
                    f"{self.out_dir} in {diff}; only {list(_runtime())} may "
                    "change when resuming.")
        self.config = config
        self.dist = dist_info if dist_info is not None else \
            ddp.init_distributed(config.device)
        self.device = ddp.resolve_device(config.device, self.dist)
        self.dtype = DTYPES[config.dtype]
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        train_lf, val_lf = leadfields if leadfields is not None else \
            load_leadfields(config)
        # whether the lead fields are the template montages' (EEG)
        self._template_leadfields = (leadfields is None
                                     and not config.train_leadfield)
        if leadfields is not None:
            self.leadfield_desc = "given as arrays"
        else:
            self.leadfield_desc = config.train_leadfield or (
                f"template fsaverage {config.spacing}, montage "
                f"{config.montage}, BEM ico{config.bem_ico}, conductivity "
                f"{config.conductivity}")
        self.data = SimulatedData(config, train_lf, val_lf, self.device,
                                  self.dtype, self.dist.rank, self.dist.world_size)
        M, N = train_lf.shape
        self.n_sensors, self.n_sources = M, N
        torch.manual_seed(config.seed)
        self.net = UnfoldedSBL(**config.network_kwargs(N, M)).to(
            device=self.device, dtype=self.dtype)
        if config.init_weights and ckpt is None:
            self._load_initial_weights(config.init_weights)
        self.net.gradient_checkpointing = bool(config.gradient_checkpointing)
        self.loss_module = LossModule(self.net, self.config.loss,
                                      self.config.shape_weight,
                                      self.config.spatial_weight,
                                      self.config.regime_weight,
                                      self.config.support_weight)
        self.phases = make_phases(config)
        self.phase_index = self.step = self.global_step = 0
        self.samples_seen = self.n_skipped = 0
        self.train_time_s = 0.0
        self.initial_val_loss = None
        self.last_val = None
        self.optimizer = None
        self._wrapped = None
        self._params = []
        self._accum = torch.zeros(3, dtype=torch.float64, device=self.device)
        self._accum_n = 0
        self._last_norm = float("nan")
        self._neighbors = None
        self._stop_signal = False
        self._run_start = None
        self.bank = self.val_bank = None  # built on first use (bank mode)
        self._bank_specs = bank_specs
        self.log_path = self.out_dir / config.log_file
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        if ckpt is not None:
            self._restore(ckpt)

    def _load_initial_weights(self, source):
        """Start from trained weights (a file or a registered name)."""
        src = load_model(source, learn_noise=self.config.learn_noise)
        # a Deep Attn CB may start from a Deep CB: its pointwise MLP takes the
        # Deep CB's source MLP, the attention decoder stays at zero
        widen = (src.config.get("model"), self.net.config["model"]) == (
            "deep-cb", "deep-attn-cb")
        free = ("model", "embed_dim", "n_heads", "n_sources",
                "n_sensors") if widen else ()
        diff = {k: (src.config.get(k), v) for k, v in self.net.config.items()
                if src.config.get(k) != v and k not in free}
        if diff:
            raise ValueError(f"init_weights={source!r} has another architecture "
                             f"than this run (weights vs run: {diff}).")
        state = src.state_dict()
        if widen:
            state = {k.replace(".source_correction.net.",
                               ".source_correction.pointwise."): v
                     for k, v in state.items()}
        missing, unexpected = self.net.load_state_dict(state, strict=False)
        if unexpected or any(".pointwise." in k or ".noise_correction." in k
                             or not widen for k in missing):
            raise ValueError(f"init_weights={source!r} does not fit this run's "
                             f"network (missing {missing}, unexpected "
                             f"{unexpected}).")
        logger.info(f"Initialised the corrections from {source}")

    # ------------------------------------------------------------------
    # phases and steps
    @property
    def phase(self):
        """The current :class:`Phase` (None when training is complete)."""
        return self.phases[self.phase_index] if self.phase_index < len(
            self.phases) else None

    @property
    def complete(self):
        return self.phase_index >= len(self.phases)

    def setup_phase(self, ph, fresh):
        """Freeze/unfreeze, copy layer ``k-1`` into ``k``, new optimiser/DDP."""
        net = self.net
        for p in net.parameters():
            p.requires_grad_(ph.layer is None)
        if ph.layer is not None:
            layer = net.layers[ph.layer]
            if fresh and ph.layer > 0:
                with torch.no_grad():
                    layer.load_state_dict(net.layers[ph.layer - 1].state_dict())
            for p in layer.parameters():
                p.requires_grad_(True)
        self._params = [p for p in net.parameters() if p.requires_grad]
        if self.config.data_mode == "bank":
            self._ensure_banks()
            self.bank.move_to(net, self._bank_start(ph))
        cfg = self.config
        self.optimizer = torch.optim.Adam(self._params, lr=ph.lr,
                                          betas=cfg.betas, eps=cfg.adam_eps)
        self._wrapped = None
        gc.collect()  # drop the previous phase's DDP reducer and its hooks
        self._wrapped = ddp.wrap(self.loss_module, self.dist, self.device)

    def _bank_start(self, ph):
        """The layer a phase starts from (its cached states stand before it)."""
        return ph.layer if ph.layer is not None else 0

    def _ensure_banks(self):
        """Build the training and validation banks (bank mode, once)."""
        if self.bank is not None:
            return
        from .bank import SampleBank
        from .data import bank_specs

        cfg = self.config
        specs = self._bank_specs if self._bank_specs is not None else \
            bank_specs(cfg)
        net_kw = dict(n_layers=cfg.n_layers, learn_noise=cfg.learn_noise,
                      noise_init=cfg.noise_init)
        sim = cfg.regime_configs() or cfg.simulation_config()
        t0 = time.monotonic()
        banks = []
        for size, seed in ((cfg.bank_size, cfg.seed), (cfg.val_size, cfg.val_seed)):
            fname = self._bank_cache(size, seed)
            bank = None
            if fname is not None and fname.is_file():
                try:
                    bank = SampleBank.load(fname, specs, size, sim, seed, net_kw,
                                           self.device, self.dtype)
                except (ValueError, OSError, RuntimeError, KeyError) as err:
                    logger.info(f"Rebuilding the bank {fname}: {err}")
            if bank is None:
                bank = SampleBank(specs, size, sim, seed, net_kw, self.device,
                                  self.dtype)
                if fname is not None:
                    fname.parent.mkdir(parents=True, exist_ok=True)
                    tmp = fname.with_suffix(".tmp")
                    bank.save(tmp)
                    tmp.replace(fname)
            banks.append(bank)
        self.bank, self.val_bank = banks
        self._log(dict(event="bank", size=self.bank.size,
                       val_size=self.val_bank.size,
                       shards={s.name: s.n for s in self.bank.shards},
                       build_s=round(time.monotonic() - t0, 2)))

    def _bank_cache(self, size, seed):
        """Cache file of a bank built from the template lead fields, or None.

        Runs that share the data, simulation, seed, depth and noise setting
        (e.g. Deep CB and Deep Attn CB) share the bank. Banks built from
        lead fields given as arrays are not cached.
        """
        if self._bank_specs is not None:
            return None
        import hashlib

        from ..datasets import cache_dir
        from .bank import BANK_FORMAT

        cfg = self.config.to_dict()
        keys = ("montage", "spacing", "conductivity", "val_conductivity",
                "bem_ico", "bank_shards", "bank_shard_weights",
                "sim_conductivities", "simulation", "n_layers", "learn_noise",
                "noise_init", "dtype")
        data = {k: cfg[k] for k in keys}
        if cfg["bank_regimes"]:  # (banks without a mixture keep their names)
            data["bank_regimes"] = cfg["bank_regimes"]
        blob = json.dumps([BANK_FORMAT, size, seed, __version__, data],
                          sort_keys=True)
        h = hashlib.sha256(blob.encode()).hexdigest()[:16]
        return Path(cache_dir()) / "banks" / f"bank-{h}.pt"

    def _lr(self, ph, step):
        if self.config.lr_schedule == "constant" or ph.steps <= 1:
            return ph.lr
        r = self.config.min_lr_ratio
        return ph.lr * (r + (1 - r) * 0.5 * (1 + math.cos(math.pi * step / ph.steps)))

    def ds_layers(self, ph, step):
        """Deep-supervision layers (trajectory indices) of a step."""
        cfg = self.config
        if ph.layer is not None or cfg.beta_ds <= 0 or cfg.n_ds_layers == 0:
            return []
        return draw_ds_layers(ph.n_layers - 1, cfg.n_ds_layers,
                              self.data.ds_generator(ph.index, step))

    def backward_step(self, ph, step, batch=None):
        """Forward and backward of one step on this rank's shard.

        Gradients are left in the parameters (averaged over the ranks by
        DDP); the optimiser is not stepped. Returns the detached
        ``(loss, l_final, l_ds)``.
        """
        if batch is None:
            batch = (self.bank.batch(ph.index, step, self.data.local_batch)
                     if self.bank is not None
                     else self.data.train_batch(ph.index, step))
        self.net.train()
        self.optimizer.zero_grad(set_to_none=True)
        module = self._wrapped if self._wrapped is not None else self.loss_module
        loss, l_final, l_ds = module(self.data.L, batch, ph.n_layers,
                                     self.ds_layers(ph, step), self.config.beta_ds,
                                     self.config.harm_weight)
        loss.backward()
        return loss.detach(), l_final, l_ds

    def train_step(self, ph):
        """One optimiser step of phase ``ph`` (after :meth:`setup_phase`);
        returns the learning rate used."""
        lr = self._lr(ph, self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss, l_final, l_ds = self.backward_step(ph, self.step)
        norm = torch.nn.utils.clip_grad_norm_(self._params, self.config.grad_clip)
        self._last_norm = float(norm)
        if math.isfinite(self._last_norm):
            self.optimizer.step()
            self._accum += torch.stack([loss, l_final, l_ds]).to(self._accum)
            self._accum_n += 1
        else:
            self.n_skipped += 1
            self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.global_step += 1
        self.samples_seen += self.config.batch_size
        return lr

    # ------------------------------------------------------------------
    def run(self, stop_after_phase=None):
        """Train until done or stopped; returns ``"finished"`` or ``"stopped"``.

        Parameters
        ----------
        stop_after_phase : int | None
            Stop (with a checkpoint) once the phase of this index is
            complete, e.g. to inspect the network between phases; call
            :meth:`run` again to continue.
        """
        cfg = self.config
        self._run_start = time.monotonic()
        self._time_base = self.train_time_s
        self._stop_signal = False
        old_handlers = self._install_signal_handlers()
        try:
            if self.global_step == 0 and self.step == 0 and self.last_val is None:
                self._validate(self.phases[0], initial=True)
            while not self.complete:
                ph = self.phase
                if self.step == 0 or self.optimizer is None:
                    self.setup_phase(ph, fresh=self.step == 0)
                elif self._wrapped is None:  # after close()
                    self._wrapped = ddp.wrap(self.loss_module, self.dist,
                                             self.device)
                bar = tqdm(total=ph.steps, initial=self.step, desc=ph.name,
                           disable=not (self.dist.is_main and cfg.progress),
                           dynamic_ncols=True, leave=False)
                try:
                    while self.step < ph.steps:
                        t0 = time.monotonic()
                        lr = self.train_step(ph)
                        self._last_step_s = time.monotonic() - t0
                        bar.update(1)
                        if (self.step % cfg.log_interval == 0
                                or self.step == ph.steps):
                            rec = self._log_train(ph, lr)
                            if rec is not None:
                                bar.set_postfix(loss=f"{rec['loss']:.4f}")
                        if cfg.val_interval and self.step % cfg.val_interval == 0 \
                                and self.step < ph.steps:
                            self._validate(ph)
                        if cfg.checkpoint_interval and \
                                self.step % cfg.checkpoint_interval == 0:
                            self.save_checkpoint()
                        if self._should_stop():
                            self.save_checkpoint()
                            self._log(dict(event="stopped", **self._where()))
                            return "stopped"
                finally:
                    bar.close()
                self._validate(ph)
                self.phase_index += 1
                self.step = 0
                self.optimizer = None
                self._wrapped = None
                self.save_checkpoint()
                if not self.complete and (self._should_stop() or (
                        stop_after_phase is not None
                        and self.phase_index > stop_after_phase)):
                    self._log(dict(event="stopped", **self._where()))
                    return "stopped"
            if self.dist.is_main:
                fname = self.export()
                self._log(dict(event="done", weights=str(fname), **self._where()))
            ddp.barrier(self.dist)
            return "finished"
        finally:
            self._restore_signal_handlers(old_handlers)

    def _should_stop(self):
        stop = self._stop_signal
        limit = self.config.max_minutes * 60
        if limit > 0:
            elapsed = time.monotonic() - self._run_start
            stop = stop or elapsed + 2 * getattr(self, "_last_step_s", 0) > limit
        return ddp.any_rank(stop, self.dist, self.device)

    def _install_signal_handlers(self):
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum, frame):
            if self._stop_signal:  # second signal: stop now
                raise KeyboardInterrupt
            self._stop_signal = True

        old = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            old[sig] = signal.signal(sig, handler)
        return old

    @staticmethod
    def _restore_signal_handlers(old):
        for sig, h in old.items():
            signal.signal(sig, h)

    def close(self):
        """Drop the DDP wrapper (before the process group is destroyed).

        Training can continue afterwards (the wrapper is rebuilt).
        """
        self._wrapped = None
        gc.collect()

    # ------------------------------------------------------------------
    # logging and validation
    def _elapsed(self):
        if self._run_start is None:
            return self.train_time_s
        return self._time_base + time.monotonic() - self._run_start

    def _where(self):
        ph = self.phase
        return dict(phase=self.phase_index, phase_name=ph.name if ph else "done",
                    step=self.step, global_step=self.global_step,
                    samples=self.samples_seen, time_s=round(self._elapsed(), 3))

    def _log(self, record):
        if self.dist.is_main:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def _log_train(self, ph, lr):
        n = self._accum_n
        means = (self._accum / max(n, 1)).tolist()
        means = ddp.mean_over_ranks(means, self.dist, self.device)
        self._accum.zero_()
        self._accum_n = 0
        if n == 0:
            return None
        rec = dict(event="train", **self._where(), loss=means[0],
                   loss_final=means[1], loss_ds=means[2], lr=lr,
                   grad_norm=self._last_norm, skipped=self.n_skipped)
        self._log(rec)
        return rec

    @torch.no_grad()
    def validate(self, ph=None):
        """Evaluate on the fixed validation set; returns a dict (main rank).

        ``val_loss`` is the loss of the output the phase trains (after layer
        ``k`` in progressive phase ``k``), ``val_loss_final`` that of the
        full network, ``val_loss_layers`` (if ``val_per_layer``) the loss
        after every layer, and ``rmse``, ``f1``, ``emd``, ``le`` the source
        metrics on the first ``val_metrics_size`` samples.
        """
        ph = self.phase if ph is None else ph
        if self.config.data_mode == "bank":
            return self._validate_bank(ph)
        cfg, net = self.config, self.net
        was_training = net.training
        net.eval()
        K = net.n_layers
        want = list(range(K)) if cfg.val_per_layer else sorted(
            {K - 1} | ({ph.n_layers - 1} if ph is not None else set()))
        sums = np.zeros(K)
        n_total = 0
        est, true = [], []
        n_metrics = cfg.val_metrics_size
        for batch in self.data.val_batches():
            nv = None if net.learn_noise else batch["noise_var"]
            out = net(self.data.L, batch["Cy"], nv,
                      return_trajectory=want != [K - 1],
                      null_space=batch.get("null_space"))
            for k in want:
                Xk = out.posterior_mean(batch["Y"], layer=None if k == K - 1 else k)
                sums[k] += float(nmse(Xk, batch["X"]).sum())
                if k == K - 1 and len(est) < n_metrics:
                    m = n_metrics - len(est)
                    est += list(Xk[:m].cpu().numpy())
                    true += list(batch["X"][:m].cpu().numpy())
            n_total += batch["Y"].shape[0]
        losses = sums / n_total
        rec = dict(event="val", **self._where(),
                   val_loss=float(losses[(ph.n_layers if ph else K) - 1]),
                   val_loss_final=float(losses[K - 1]))
        if cfg.val_per_layer:
            rec["val_loss_layers"] = [float(v) for v in losses]
        if est:
            rec.update(self._metrics(np.stack(true), np.stack(est)))
        net.train(was_training)
        return rec

    @torch.no_grad()
    def _validate_bank(self, ph):
        """Validation on the fixed validation bank (normalised errors only).

        ``val_loss`` is the mean error after the phase's last layer,
        ``val_ref`` that of classical convex bounding at the same depth on
        the same samples, ``val_log_ratio`` the mean log-ratio of the two
        (the objective of ``loss="log-ratio"`` without its hinge; < 0:
        better than classical), ``val_shape_log_ratio`` and
        ``val_spatial_log_ratio`` and ``val_support_log_ratio`` the same for
        the shape, spatial and support errors, ``val_regimes`` the
        log-ratios of the errors, of the spatial errors and of the support
        errors per regime of the mixture (index in ``bank_regimes``),
        ``val_harm`` the fraction of samples where the network is more
        than 1 % worse, and ``val_shards`` both means per lead field.
        """
        self._ensure_banks()
        net = self.net
        was_training = net.training
        net.eval()
        stop = ph.n_layers if ph is not None else net.n_layers
        self.val_bank.move_to(net, self._bank_start(ph) if ph else 0)
        res = self.val_bank.evaluate(net, stop)
        cat = {k: np.concatenate([r[k] for r in res.values()])
               for k in ("nmse", "ref", "shape", "shape_ref", "spatial",
                         "spatial_ref", "support", "support_ref", "regime")}
        err, ref = cat["nmse"], cat["ref"]
        rec = dict(event="val", **self._where(), val_loss=float(err.mean()),
                   val_ref=float(ref.mean()),
                   val_log_ratio=_mean_log_ratio(err, ref),
                   val_shape_log_ratio=_mean_log_ratio(cat["shape"],
                                                       cat["shape_ref"]),
                   val_spatial_log_ratio=_mean_log_ratio(
                       cat["spatial"], cat["spatial_ref"], SPATIAL_EPS),
                   val_support_log_ratio=_mean_log_ratio(
                       cat["support"], cat["support_ref"], SUPPORT_EPS),
                   val_harm=float((err > 1.01 * ref).mean()),
                   val_shards={k: [float(r["nmse"].mean()), float(r["ref"].mean())]
                               for k, r in res.items()})
        rec["val_regimes"] = {
            int(g): [_mean_log_ratio(err[m], ref[m]),
                     _mean_log_ratio(cat["spatial"][m], cat["spatial_ref"][m],
                                     SPATIAL_EPS),
                     _mean_log_ratio(cat["support"][m], cat["support_ref"][m],
                                     SUPPORT_EPS)]
            for g in np.unique(cat["regime"]) for m in [cat["regime"] == g]}
        rec["val_loss_final"] = rec["val_loss"] if stop == net.n_layers else None
        rec["val_ref_final"] = float(np.concatenate(
            [s.l_ref[:, -1].cpu().numpy() for s in self.val_bank.shards]).mean())
        net.train(was_training)
        return rec

    def _metrics(self, X, Xe):
        if self._neighbors is None:
            self._neighbors = metrics.source_neighbors(self.data.pos)
        res = metrics.evaluate(X, Xe, self.data.pos, neighbors=self._neighbors,
                               verbose="error")
        out = {k: float(np.nanmean(res[k])) if np.isfinite(res[k]).any()
               else float("nan") for k in ("rmse", "f1", "emd", "le")}
        out["n_metrics"] = int(len(X))
        out["n_empty"] = int(res["empty"].sum())
        return out

    def _validate(self, ph, initial=False):
        if self.dist.is_main:
            rec = self.validate(ph)
            if initial:
                rec["initial"] = True
                self.initial_val_loss = rec["val_loss_final"]
                if self.initial_val_loss is None:  # bank: classical, full depth
                    self.initial_val_loss = rec["val_ref_final"]
            self.last_val = rec
            self._log(rec)
        ddp.barrier(self.dist)

    # ------------------------------------------------------------------
    # checkpoints
    def state_dict(self):
        """Everything needed to resume exactly (see :meth:`save_checkpoint`)."""
        log_offset = self.log_path.stat().st_size if (
            self.dist.is_main and self.log_path.is_file()) else 0
        return dict(
            format=CHECKPOINT_FORMAT,
            config=self.config.to_dict(),
            net_config=json.dumps(self.net.config),
            model={k: v.detach().clone() for k, v in self.net.state_dict().items()},
            optimizer=None if self.optimizer is None else self.optimizer.state_dict(),
            phase_index=self.phase_index, step=self.step,
            global_step=self.global_step, samples_seen=self.samples_seen,
            n_skipped=self.n_skipped, train_time_s=float(self._elapsed()),
            accum=self._accum.tolist(), accum_n=self._accum_n,
            rng=rng_state(), log_offset=int(log_offset),
            initial_val_loss=self.initial_val_loss,
            last_val=json.dumps(self.last_val),
            torch_version=str(torch.__version__),
            domain=json.dumps(self.training_domain()),
        )

    def save_checkpoint(self, fname=None):
        """Atomically write the checkpoint (main rank only)."""
        fname = Path(fname) if fname else self.out_dir / CHECKPOINT_NAME
        if self.dist.is_main:
            save_checkpoint(self.state_dict(), fname)
        return fname

    def _restore(self, ckpt):
        self.net.load_state_dict(ckpt["model"])
        self.phase_index = int(ckpt["phase_index"])
        self.step = int(ckpt["step"])
        self.global_step = int(ckpt["global_step"])
        self.samples_seen = int(ckpt["samples_seen"])
        self.n_skipped = int(ckpt["n_skipped"])
        self.train_time_s = float(ckpt["train_time_s"])
        self._accum = torch.tensor(ckpt["accum"], dtype=torch.float64,
                                   device=self.device)
        self._accum_n = int(ckpt["accum_n"])
        self.initial_val_loss = ckpt["initial_val_loss"]
        self.last_val = json.loads(ckpt["last_val"])
        if "domain" in ckpt:
            self._domain = json.loads(ckpt["domain"])
        set_rng_state(ckpt["rng"])
        if self.step > 0 and not self.complete:
            self.setup_phase(self.phase, fresh=False)
            self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.dist.is_main and self.log_path.is_file():
            with open(self.log_path, "r+b") as f:  # drop records after it
                f.truncate(int(ckpt["log_offset"]))

    # ------------------------------------------------------------------
    def card(self):
        """The training record stored with exported weights (a dict)."""
        cfg = self.config
        wall = float(self._elapsed())
        ph = self.phase
        return dict(
            name=cfg.name, train_config=cfg.to_dict(),
            train_config_toml=cfg.to_toml(), complete=self.complete,
            phase=ph.name if ph else "done", phase_step=self.step,
            global_step=self.global_step, samples_seen=self.samples_seen,
            n_skipped=self.n_skipped, wall_time_s=wall,
            gpu_time_s=wall * self.dist.world_size if self.device.type == "cuda"
            else 0.0,
            device=_device_name(self.device), world_size=self.dist.world_size,
            torch_version=str(torch.__version__), package_version=__version__,
            n_sensors=self.n_sensors, n_sources=self.n_sources,
            domain=self.training_domain(),
            leadfield=self.leadfield_desc, final_validation=self.last_val,
            initial_val_loss=self.initial_val_loss,
        )

    def training_domain(self):
        """Sensor and source counts and channel types of the training lead
        fields (a dict; ``ch_types`` None when a given lead field does not say).

        Stored in the weights' card, read by
        :func:`~mne_unfolded_sbl.core.weights.check_training_domain`.
        """
        if self.bank is None and getattr(self, "_domain", None):
            return self._domain  # restored from the checkpoint
        # the template montages of the bank and of the streamed data are
        # EEG; lead fields given as files, arrays or shard specs do not say
        if self.bank is not None:
            Ms = [s.L_n.shape[0] for s in self.bank.shards]
            Ns = [s.L_n.shape[1] for s in self.bank.shards]
            shards = [s.name for s in self.bank.shards]
            templates = self._bank_specs is None
        else:
            Ms, Ns, shards = [self.n_sensors], [self.n_sources], []
            templates = self._template_leadfields
        ch_types = ["eeg"] if templates else None
        return dict(n_sensors=[min(Ms), max(Ms)], n_sources=[min(Ns), max(Ns)],
                    shards=shards, ch_types=ch_types)

    def export(self, fname=None):
        """Write the weights (:func:`~mne_unfolded_sbl.core.weights.save_model`)
        and a Markdown model card beside them; returns the weights path."""
        fname = Path(fname) if fname else self.out_dir / f"{self.config.name}.safetensors"
        fname.parent.mkdir(parents=True, exist_ok=True)
        card = self.card()
        meta = {k: v for k, v in card.items() if k != "train_config_toml"}
        save_model(self.net, fname, card=meta)
        write_model_card(card, fname.with_suffix(".md"))
        return fname


def _runtime():
    return RUNTIME_FIELDS


def train(config, *, out_dir=None, resume=False, leadfields=None):
    """Build a :class:`Trainer` and run it; returns the trainer.

    ``trainer.complete`` tells whether training finished (else it stopped
    for the time limit or a signal and can be resumed).
    """
    trainer = Trainer(config, out_dir=out_dir, resume=resume, leadfields=leadfields)
    trainer.run()
    return trainer


def _mean_log_ratio(err, ref, eps=LOG_RATIO_EPS):
    """Mean log-ratio of two error arrays, as the log-ratio objective."""
    return float(np.mean(np.log(err + eps) - np.log(ref + eps)))


__all__ = ["Trainer", "Phase", "make_phases", "train", "EXIT_STOPPED"]

