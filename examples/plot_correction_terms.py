"""
.. _ex-correction-terms:

=======================================================
Correction terms and convergence, layer by layer
=======================================================

Every layer of an unfolded network is one convex-bounding iteration whose
log-domain update gets a learned correction (paper eq. 8-11)::

    log gamma_n^{k+1}  = 0.5 s_n - 0.5 q_n + Delta_n^k
    log lambda_m^{k+1} = 0.5 u_m - 0.5 v_m + delta_m^k

With all corrections zero the network *is* the classical solver. This
example runs the classical solver and every learned model available in this
installation on simulated test samples, layer by layer, and shows

* the reconstruction error and support recovery after every layer (the
  paper's Figure 4): learned corrections should reach a better estimate in
  fewer layers;
* the distribution of the correction terms over sources (or sensors) and
  samples at every layer (the paper's Figure 8): in the paper they are large
  and mostly negative in the first layers and shrink towards zero, i.e.
  the learned dynamics return to the classical update;
* the Type-II cost and the change of the source variances per layer for one
  sample.

If no pretrained weights are installed, only the classical solver is shown
(its corrections are zero by construction). To look at weights of your own,
e.g. those written by :ref:`ex-train-small-model` or ``mne-unfolded-sbl
train``, set ``WEIGHTS`` below (or the environment variable
``MNE_UNFOLDED_SBL_WEIGHTS``) to the ``.safetensors`` file.
"""
# License: BSD-3-Clause

# %%
import os
import warnings

import matplotlib.pyplot as plt
import mne
import numpy as np

from mne_unfolded_sbl.datasets import make_template_forward
from mne_unfolded_sbl.core.metrics import f1_support, rmse
from mne_unfolded_sbl.core.weights import registry
from mne_unfolded_sbl import unfolded_sbl_trajectory
from mne_unfolded_sbl.core.weights import resolve_model
from mne_unfolded_sbl.core.simulator import SimulationConfig
from mne_unfolded_sbl.simulation import simulate_evoked
from mne_unfolded_sbl.viz import plot_convergence, plot_corrections

mne.set_log_level("warning")
WEIGHTS = os.environ.get("MNE_UNFOLDED_SBL_WEIGHTS")  # or a path

# %%
# Which models are there?
# -----------------------
# The classical solver always; the learned ones if their weights are
# registered (:func:`mne_unfolded_sbl.core.weights.registry`) or given.
try:
    print("Registered pretrained weights:", sorted(registry()) or "none")
except Exception as err:  # a broken installation should not stop the example
    print("Could not read the registry of pretrained weights:", err)
models = {"Convex bounding": "cb"}
for name, label in (("bias-cb", "Bias CB"), ("deep-cb", "Deep CB"),
                    ("deep-attn-cb", "Deep Attn CB")):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net, used, note = resolve_model(name, learn_noise=True)
    if note is None:
        models[label] = net
if WEIGHTS:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net, used, note = resolve_model(WEIGHTS, learn_noise=True)
    models[f"{net.model} ({os.path.basename(WEIGHTS)})"] = net
if len(models) == 1:
    print("No learned weights available: only the classical solver is shown; "
          "its corrections are zero at every layer.")
print("Models:", list(models))

# %%
# Test samples
# ------------
# Ten samples of the paper's benchmark (5-20 focal sources, per-channel SNR
# 5-30 dB), simulated with perturbed tissue conductivities. The solvers get
# an ad-hoc diagonal noise covariance and learn the noise of every channel.
fwd = make_template_forward("train-64", "ico3", bem_ico=3)
fwd_sim = make_template_forward("train-64", "ico3",
                                conductivity=(0.33, 0.0045, 0.27), bem_ico=3)
samples = [simulate_evoked(fwd_sim, SimulationConfig(), seed=100 + k)
           for k in range(10)]

# %%
# Run every model layer by layer
# ------------------------------
# :func:`~mne_unfolded_sbl.unfolded_sbl_trajectory` keeps the state
# after every layer: the posterior mean (for the metrics), the corrections
# and the Type-II cost.
results = {}
for label, model in models.items():
    per_layer_rmse, per_layer_f1, traj0 = [], [], None
    deltas = {"delta_source": None, "delta_noise": None}
    for evoked, stc_true, _ in samples:
        cov = mne.make_ad_hoc_cov(evoked.info)
        traj = unfolded_sbl_trajectory(evoked, fwd, cov, model, keep_deltas=True,
                                       return_sources=True)
        per_layer_rmse.append([rmse(stc_true.data, X) for X in traj["X"]])
        per_layer_f1.append([f1_support(stc_true.data, X) for X in traj["X"]])
        for key in deltas:
            if traj.get(key) is not None:
                if deltas[key] is None:
                    deltas[key] = [[] for _ in traj[key]]
                for k, d in enumerate(traj[key]):
                    if d is not None:
                        deltas[key][k].append(d)
        if traj0 is None:
            traj0 = traj
    for key, per_layer in deltas.items():
        if per_layer is not None:
            deltas[key] = [np.concatenate(d) if d else None for d in per_layer]
    results[label] = dict(rmse=np.array(per_layer_rmse),
                          f1=np.array(per_layer_f1), traj=traj0, **deltas)

# %%
# Performance per layer (Figure 4)
# --------------------------------
# Mean over the test samples (shaded: ± one standard error).
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
for label, res in results.items():
    for ax, key in zip(axes, ("rmse", "f1")):
        vals = res[key]
        layers = np.arange(1, vals.shape[1] + 1)
        mean = vals.mean(0)
        sem = vals.std(0) / np.sqrt(len(vals))
        ax.plot(layers, mean, marker="o", ms=3, label=label)
        ax.fill_between(layers, mean - sem, mean + sem, alpha=0.2)
axes[0].set(xlabel="layer (iteration)", ylabel="rMSE (lower is better)",
            title="Reconstruction error after each layer")
axes[1].set(xlabel="layer (iteration)", ylabel="F1 (higher is better)",
            title="Support recovery after each layer")
for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)

# %%
# Correction terms per layer (Figure 8)
# -------------------------------------
# Median and percentile bands of the corrections over all sources (left) and
# sensors (right) of all test samples. The last layer is always classical
# (no correction).
learned = {label: res for label, res in results.items()
           if res["delta_source"] is not None or res["delta_noise"] is not None}
for label, res in learned.items():
    plot_corrections({"delta_source": res["delta_source"],
                      "delta_noise": res["delta_noise"]},
                     title=f"{label}: learned log-domain corrections")
if not learned:
    print("The classical solver has no corrections (all zero): the figure "
          "appears once learned weights are available.")

# %%
# Type-II cost and convergence for one sample
# -------------------------------------------
# The cost at the input of every layer, the relative change of the source
# variances, and (learned models) the mean magnitude of the corrections.
plot_convergence({label: res["traj"] for label, res in results.items()},
                 title="Convergence per layer, test sample 1")
plt.show()
