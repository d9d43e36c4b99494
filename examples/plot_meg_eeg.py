"""
.. _ex-meg-eeg:

=====================================================================
MEG, EEG and both together, with loose orientation and error bars
=====================================================================

We simulate one evoked response seen by a 306-channel MEG array
(magnetometers and planar gradiometers) and a 64-channel EEG cap on the
fsaverage template, from two cortical sources whose dipoles are tilted off
the cortical normal, and localise it from the MEG channels, the EEG
channels and both together with classical convex bounding (Champagne with
joint learning of every channel's noise):

* ``loose=0.2`` estimates three orientations per vertex that share one
  variance (tangential prior variance 0.2 of the normal one, as MNE's
  usual value);
* MEG and EEG are whitened together with the noise covariance, as MNE
  does: each channel type in its own units, the noise learned per channel;
* ``return_posterior_std=True`` gives the posterior standard deviation of
  every source.

What to look for: MEG is blind to radial currents and strong on
superficial tangential ones; EEG sees both but blurred by the skull. Both
together localise better than either (the errors are printed below). The
posterior std gives error bars on the amplitudes of the sources the model
keeps (see below for what it does and does not mean).

The sensor array is synthetic (:func:`mne_unfolded_sbl.datasets.make_meg_info`:
MNE's 306-channel helmet placed around the template head); with real data
use the recording's ``info``, its head-to-device transform and a forward
computed for it.
"""
# License: BSD-3-Clause

# %%
import matplotlib.pyplot as plt
import mne
import numpy as np

from mne_unfolded_sbl import apply_unfolded_sbl
from mne_unfolded_sbl.datasets import get_subjects_dir, make_template_forward
from mne_unfolded_sbl.viz import plot_source_estimate

mne.set_log_level("warning")
rng = np.random.default_rng(7)

# %%
# Forward model: MEG and EEG on the template
# ------------------------------------------
# The template's 3-layer BEM (``bem_ico=3``: seconds) serves both: MEG uses
# its inner skull, EEG all three layers.
fwd = make_template_forward("train-64", "ico3", bem_ico=3, meg=True)
fwd_free = mne.convert_forward_solution(fwd, surf_ori=True, force_fixed=False,
                                        use_cps=True)
info = fwd["info"]
print(fwd)

# %%
# Simulate two tilted dipoles
# ---------------------------
# Sources in the left and right hemisphere, 40 % tangential; a 10 Hz burst
# and a slower wave; white sensor noise at about 5 dB per channel type.
n_src = fwd["nsource"]
sfreq, n_times = 200.0, 120
t = np.arange(n_times) / sfreq
active = [200, n_src // 2 + 400]
X = np.zeros((3 * n_src, n_times))
waves = [np.sin(2 * np.pi * 10 * t) * np.exp(-((t - 0.3) / 0.1) ** 2),
         np.sin(2 * np.pi * 3 * t)]
for v, w in zip(active, waves):
    X[3 * v:3 * v + 3] = np.outer([0.4, 0.0, 1.0], w) * 20e-9
G = fwd_free["sol"]["data"]
clean = G @ X
types = np.array(info.get_channel_types())
noise = np.empty(len(G))
for kind in set(types):
    noise[types == kind] = np.mean(clean[types == kind] ** 2) / 10 ** 0.5
data = clean + rng.standard_normal(clean.shape) * np.sqrt(noise)[:, None]
evoked = mne.EvokedArray(data, mne.create_info(info["ch_names"], sfreq,
                                               list(types)), nave=1)
with evoked.info._unlock():
    evoked.info["chs"] = info["chs"]
    evoked.info["dev_head_t"] = info["dev_head_t"]
evoked.set_eeg_reference(projection=True)
noise_cov = mne.make_ad_hoc_cov(evoked.info)  # not the true noise: learned

# %%
# Localise from MEG, from EEG and from both
# -----------------------------------------
pos = fwd["source_rr"]
results = {}
for name, picks in (("MEG", "meg"), ("EEG", "eeg"), ("MEG+EEG", "data")):
    ev = evoked.copy().pick(picks)
    if name == "MEG":
        ev.del_proj()  # no EEG channels: no average reference
    stc, std = apply_unfolded_sbl(ev, fwd_free, noise_cov, model="cb",
                                  loose=0.2, n_layers=100,
                                  return_posterior_std=True)
    power = np.linalg.norm(stc.data, axis=1)
    # localisation error: each true source to the nearest of the two peaks
    peaks = np.argsort(power)[-2:]
    err = [1e3 * np.min(np.linalg.norm(pos[peaks] - pos[v], axis=1))
           for v in active]
    results[name] = (stc, std, power, err)
    print(f"{name:8s} localisation error: "
          f"{', '.join(f'{e:.1f} mm' for e in err)}")

# %%
# Error bars at the true sources
# ------------------------------
# The posterior std is the error bar of a source's amplitude *given the
# learned variances*: at an active source it says how well the data pin
# the amplitude down; where the model pruned a source (variance 0) it is 0,
# because the model is then certain the source is silent. It is not a
# measure of how sure the model is that a source is active. Below: the
# estimated amplitude at each true source (at its peak time, norm over
# orientations) with +/- 2 posterior std, next to the true amplitude.
# The error bars do not include model misfit: where a source is found one
# vertex off, or its tangential part is shrunk by the ``loose`` prior, the
# amplitude at the true vertex falls short of the truth by more than its
# error bar (the left source from MEG or EEG alone here).
fig, ax = plt.subplots(figsize=(6, 3.2), layout="constrained")
for k, (name, (stc, std, _, _)) in enumerate(results.items()):
    for j, v in enumerate(active):
        t_peak = np.argmax(np.abs(waves[j]))
        ax.errorbar(j + 0.2 * (k - 1), 1e9 * stc.data[v, t_peak],
                    yerr=2e9 * std.data[v, 0], fmt="o", capsize=4,
                    color=f"C{k}", label=name if j == 0 else None)
true_amp = [20 * np.hypot(0.4, 1.0) * np.abs(w).max() for w in waves]
ax.plot([0, 1], true_amp, "k_", ms=30, mew=2, label="true")
ax.set(xticks=[0, 1], xticklabels=["left source", "right source"],
       ylabel="amplitude (nA·m)", xlim=(-0.5, 1.5))
ax.legend(fontsize=8)
plt.show()

# %%
# The MEG+EEG estimate and its posterior std on the brain
# -------------------------------------------------------
# At the time of the largest activity. The std is constant over time (the
# posterior covariance does not depend on the data's time course) and
# nonzero only where the model keeps sources.
stc, std, _, _ = results["MEG+EEG"]
subjects_dir = get_subjects_dir()
plot_source_estimate(stc, subjects_dir, views=("lateral", "dorsal"),
                     title="MEG+EEG estimate (norm over orientations)")
plot_source_estimate(std, subjects_dir, views=("lateral", "dorsal"),
                     colormap="viridis", value_label="posterior std",
                     title="MEG+EEG posterior standard deviation")
plt.show()
