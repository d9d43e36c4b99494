"""
.. _ex-train-small-model:

=====================================
Train a tiny unfolded model on a CPU
=====================================

This example trains a 4-layer Deep CB network (joint source and noise
learning) for a few hundred simulated samples, with the paper's schedule:
progressive layer-wise phases, then joint fine-tuning with stochastic deep
supervision. It runs on a laptop CPU in well under a minute, so the model is
far from useful: it only shows the machinery and the logs. The reference
GPU configurations (25 layers, batch 512, about 5 million simulated samples)
are in the repository's ``configs/`` folder; see :doc:`../training`.

The same run from the command line::

    mne-unfolded-sbl train --config configs/tiny_cpu.toml --out runs/tiny
"""
# License: BSD-3-Clause

# %%
import json
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt

from mne_unfolded_sbl.training import TrainConfig, Trainer

# %%
# Configuration
# -------------
# Every hyperparameter lives in one :class:`~mne_unfolded_sbl.training.TrainConfig`
# (usually read from TOML with :func:`~mne_unfolded_sbl.training.load_config`).
# Lead fields: the Train Cap (64 channels) on the fsaverage ico3 source
# space (1284 sources); the fixed validation set is simulated with perturbed
# tissue conductivities. ``bem_ico=3`` keeps the one-off BEM computation to
# seconds (the reference configurations use 4).
out_dir = Path(tempfile.mkdtemp(prefix="mne_unfolded_sbl_train_"))
config = TrainConfig(
    model="deep-cb", learn_noise=True, n_layers=4, hidden=16,
    lr=1e-2, finetune_lr=3e-3, gradient_checkpointing=False,
    batch_size=16, phase_steps=8, finetune_steps=16, beta_ds=0.3,
    montage="train-64", spacing="ico3", bem_ico=3,
    simulation=dict(n_sources=(2, 5), n_times=50),
    val_size=64, val_batch_size=32, val_metrics_size=16,
    device="cpu", num_threads=1, out_dir=str(out_dir), checkpoint_interval=0,
    log_interval=2, progress=False,
)
print(config.to_toml())

# %%
# Train
# -----
# The trainer writes a checkpoint (resumable bit for bit), a JSON-lines log
# and, at the end, the weights with a model card.
trainer = Trainer(config)
status = trainer.run()
print(status, "after", trainer.samples_seen, "simulated samples")
print(sorted(p.name for p in out_dir.iterdir()))

# %%
# Validation loss
# ---------------
# The validation loss is the normalised squared error
# ``||Xbar - X||^2 / ||X||^2`` of the posterior mean on the fixed validation
# set. Before training the network *is* the classical convex-bounding solver
# (4 iterations), which gives the reference line.
records = [json.loads(line) for line in trainer.log_path.read_text().splitlines()]
val = [r for r in records if r["event"] == "val"]
train = [r for r in records if r["event"] == "train"]

fig, axes = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
ax = axes[0]
ax.plot([r["samples"] for r in train], [r["loss_final"] for r in train], ".-",
        color="0.6", label="training loss (supervised output)")
ax.plot([r["samples"] for r in val], [r["val_loss_final"] for r in val], "o-",
        label="validation loss (final layer)")
ax.axhline(val[0]["val_loss_final"], ls="--", color="k",
           label="classical solver (untrained)")
for r in val[1:-1]:
    ax.axvline(r["samples"], color="0.9", zorder=0)
ax.set(xlabel="simulated training samples", ylabel="normalised squared error",
       title="Progressive phases, then fine-tuning")
ax.legend()

ax = axes[1]
layers = range(1, config.n_layers + 1)
ax.plot(layers, val[0]["val_loss_layers"], "o--", color="k", label="untrained")
ax.plot(layers, val[-1]["val_loss_layers"], "o-", label="trained")
ax.set(xlabel="layer (iteration)", ylabel="validation loss",
       title="Loss after every layer", xticks=list(layers))
ax.legend()
plt.show()

# %%
# The exported weights load like the pretrained ones and can be passed as
# ``model=`` to :func:`mne_unfolded_sbl.apply_unfolded_sbl`:
from mne_unfolded_sbl.core.weights import load_weights  # noqa: E402

net = load_weights(out_dir / f"{config.name}.safetensors")
print(net.model, net.n_layers, "layers")
print((out_dir / f"{config.name}.md").read_text()[:600])
