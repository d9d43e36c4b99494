"""Lead fields and on-the-fly simulated batches for training.

No stored data set: every training batch is simulated on the training device
from a seed derived from ``(seed, rank, phase, step)``, so a resumed run
draws exactly the batches an uninterrupted run draws, whatever the RNG
history, and every data-parallel rank draws its own shard. The validation
set is fixed: ``val_size`` samples regenerated chunk by chunk from
``val_seed`` on the validation lead field (perturbed conductivities).

The ``.npz`` path (:func:`read_leadfield_npz`) needs only numpy, so training
can run where MNE is not installed; computing lead fields from the template
forward (:func:`leadfields_from_forward`) needs MNE.
"""

from pathlib import Path

import numpy as np
import torch

from ..core.leadfield import read_leadfield_npz
from ..core.simulator import EEGSimulator, derive_seed
from ..core.solver import covariance_statistic

_TRAIN, _VAL, _DS = 1, 2, 3  # stream tags of derive_seed


def _forward(config, conductivity):
    # the template forward needs MNE: imported only on this path, so that
    # training from .npz lead fields runs where MNE is not installed
    from ..datasets import make_template_forward

    return make_template_forward(config.montage, config.spacing, conductivity,
                                 bem_ico=config.bem_ico, verbose=False)


def leadfields_from_forward(config):
    """Training and validation lead fields computed from the template (MNE)."""
    from ..datasets import leadfield_from_forward

    return (leadfield_from_forward(_forward(config, config.conductivity)),
            leadfield_from_forward(_forward(config, config.val_conductivity)))


def load_leadfields(config):
    """``(train, val)`` lead fields: from the ``.npz`` files when given."""
    if bool(config.train_leadfield) != bool(config.val_leadfield):
        raise ValueError("Give both train_leadfield and val_leadfield, or "
                         "neither (to compute them from the template forward).")
    if config.train_leadfield:
        train = read_leadfield_npz(config.train_leadfield)
        val = read_leadfield_npz(config.val_leadfield)
    else:
        train, val = leadfields_from_forward(config)
    if train.shape != val.shape or train.ch_names != val.ch_names:
        raise ValueError(f"The training {train.shape} and validation "
                         f"{val.shape} lead fields must have the same "
                         "channels and sources.")
    return train, val


def export_leadfields(config, out_dir):
    """Write the training and validation lead fields of ``config`` to .npz.

    For carrying to a machine without MNE: point ``train_leadfield`` and
    ``val_leadfield`` of the config there to the returned files. Needs MNE.

    Returns
    -------
    train_fname, val_fname : Path
    """
    from ..datasets import save_leadfield_npz  # needs MNE, as above

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = f"{config.montage}-{config.spacing}-bem{config.bem_ico}"
    paths = []
    for kind, cond in (("train", config.conductivity),
                       ("val", config.val_conductivity)):
        fname = out_dir / f"{tag}-{kind}.npz"
        save_leadfield_npz(_forward(config, cond), fname)
        paths.append(fname)
    return tuple(paths)


class SimulatedData:
    """Seeded on-the-fly batches for one data-parallel rank.

    Parameters
    ----------
    config : TrainConfig
    train_lf, val_lf : LeadField
    device, dtype : torch device and dtype of the training.
    rank, world_size : int
        Data-parallel rank and number of ranks; each rank draws
        ``config.batch_size // world_size`` samples per step.
    """

    def __init__(self, config, train_lf, val_lf, device, dtype, rank=0,
                 world_size=1):
        if config.batch_size % world_size:
            raise ValueError(f"batch_size={config.batch_size} must be divisible "
                             f"by the number of ranks ({world_size}).")
        self.config = config
        self.rank, self.world_size = int(rank), int(world_size)
        self.local_batch = config.batch_size // world_size
        self.device, self.dtype = torch.device(device), dtype
        self._lfs = (train_lf, val_lf)
        self._sims = None
        # the network always inverts with the training lead field (the
        # validation data come from the perturbed one: no inverse crime)
        self.L = torch.as_tensor(np.asarray(train_lf.L, np.float64)).to(
            device=self.device, dtype=dtype)
        self.pos = np.asarray(train_lf.pos)
        #: sensor directions without data (average reference), or None
        self.null_space = config.simulation_config().null_space(
            self.L.shape[0], self.device)

    def _simulators(self):
        # built on first use: a bank-mode run never streams
        if self._sims is None:
            sim_cfg = self.config.simulation_config()
            self._sims = tuple(
                EEGSimulator(lf.L, lf.pos, sim_cfg, device=self.device,
                             dtype=self.dtype, seed=0) for lf in self._lfs)
        return self._sims

    @property
    def train_sim(self):
        """Simulator on the training lead field."""
        return self._simulators()[0]

    @property
    def val_sim(self):
        """Simulator on the validation (perturbed) lead field."""
        return self._simulators()[1]

    def train_batch(self, phase, step, rank=None):
        """The batch of ``rank`` (default: this rank) at ``(phase, step)``."""
        rank = self.rank if rank is None else int(rank)
        seed = derive_seed(self.config.seed, _TRAIN, rank, phase, step)
        return _finish(self.train_sim.sample(self.local_batch, seed=seed),
                       self.null_space)

    def ds_generator(self, phase, step):
        """CPU generator for the deep-supervision draw (same on every rank)."""
        return torch.Generator().manual_seed(
            derive_seed(self.config.seed, _DS, phase, step))

    def val_batches(self, n=None):
        """Yield the fixed validation set in chunks (the same at every call)."""
        n = self.config.val_size if n is None else min(int(n), self.config.val_size)
        bs = self.config.val_batch_size
        for i, start in enumerate(range(0, self.config.val_size, bs)):
            if start >= n:
                return
            b = min(bs, self.config.val_size - start)
            batch = _finish(self.val_sim.sample(
                b, seed=derive_seed(self.config.val_seed, _VAL, i)),
                self.null_space)
            if start + b > n:
                batch = {k: v[: n - start] if torch.is_tensor(v) else v
                         for k, v in batch.items()}
            yield batch


def _finish(sample, null_space=None):
    Y = sample["Y"]
    return dict(Y=Y, X=sample["X"], noise_var=sample["noise_var"],
                Cy=covariance_statistic(Y), null_space=null_space)


def bank_specs(config):
    """The :class:`~.bank.ShardSpec` list of a bank config (needs MNE).

    Every ``"montage/spacing"`` of ``config.bank_shards`` (default: the
    config's own) gets the template forward at ``config.conductivity``
    (inverse) and at each of ``config.sim_conductivities`` (simulation), the
    mesh adjacency of its source space, and its weight.
    """
    import mne

    from ..datasets import leadfield_from_forward, make_template_forward
    from .bank import ShardSpec

    shards = config.bank_shards or (f"{config.montage}/{config.spacing}",)
    weights = config.bank_shard_weights or (1.0,) * len(shards)
    conds = config.sim_conductivities or (config.val_conductivity,)
    specs = []
    for name, w in zip(shards, weights):
        montage, spacing = name.split("/")

        def fwd(cond):
            return make_template_forward(montage, spacing, cond,
                                         bem_ico=config.bem_ico, verbose=False)

        f_inv = fwd(config.conductivity)
        lf = leadfield_from_forward(f_inv)
        sims = [leadfield_from_forward(fwd(c)).L for c in conds]
        adjacency = mne.spatial_src_adjacency(f_inv["src"], verbose=False)
        specs.append(ShardSpec(name, lf.L, sims, lf.pos, adjacency.tocsr(), w))
    return specs
