"""
.. _ex-things-eeg2:

=====================================================================
Localise visual evoked responses of THINGS-EEG2 (Deep CB vs sLORETA)
=====================================================================

THINGS-EEG2 (Gifford et al., 2022) recorded 63-channel EEG while subjects
viewed object images in rapid succession (one image every 200 ms). Early
visual responses should come from occipital (visual) cortex: this is the
zero-shot check of the paper's appendix C.4. We

1. read one subject's raw EEG of one session (test images),
2. epoch the image onsets from -100 to 200 ms,
3. build a forward model for the 63-channel cap on the fsaverage template,
4. localise the trial-averaged response and single trials with the
   pretrained Deep CB network (the classical convex-bounding solver if no
   pretrained weights are available: the labels then say so) and sLORETA,
5. measure how much of the early response (50-150 ms) each method puts in
   occipital cortex, and plot the time course at the peak source.

.. note::
   This example needs one raw data file of the dataset (the test partition
   of one session of one subject, a few hundred MB), which cannot be downloaded
   when the documentation is built, so this page is not executed. See
   :mod:`mne_unfolded_sbl.things_eeg2` for where the file comes from and
   where to put it (or set ``MNE_UNFOLDED_SBL_THINGS_EEG2_PATH``).

**Occipital cortex** is defined geometrically, as sources with
``y < -65 mm`` in fsaverage MRI (≈ MNI305) coordinates, i.e. behind the
parieto-occipital sulcus and the pre-occipital notch; the embedded template
has no anatomical parcellation. The baseline (-100 to 0 ms) overlaps the
response to the previous image (200 ms onset asynchrony), a limitation of
the rapid design.
"""
# License: BSD-3-Clause

# %%
import warnings

import matplotlib.pyplot as plt
import mne
import numpy as np

from mne_unfolded_sbl import apply_unfolded_sbl, apply_unfolded_sbl_epochs
from mne_unfolded_sbl.datasets import get_subjects_dir, make_template_forward
from mne_unfolded_sbl.core.weights import resolve_model
from mne_unfolded_sbl.report import (expand_stc, peak_sources,
                                     source_positions_mri)
from mne_unfolded_sbl.things_eeg2 import (fetch_things_eeg2,
                                          make_things_eeg2_epochs,
                                          read_things_eeg2_raw)
from mne_unfolded_sbl.viz import (plot_noise_topomap, plot_source_estimate,
                                  plot_time_courses)

mne.set_log_level("warning")
OCCIPITAL_Y = -0.065  # m, fsaverage MRI coordinates

# %%
# Read and epoch
# --------------
# :func:`~mne_unfolded_sbl.things_eeg2.fetch_things_eeg2` returns the local
# file (downloading it with pooch if a URL is registered) and explains what
# to do when it cannot. The montage is the fsaverage-fitted 10-05 layout of
# the cap, which matches the template forward model.
fname = fetch_things_eeg2(subject=1, session=1, partition="test")
raw = read_things_eeg2_raw(fname)
print(raw)
epochs = make_things_eeg2_epochs(raw, tmin=-0.1, tmax=0.2, baseline=(None, 0.0),
                                 reject=dict(eeg=200e-6))
del raw
print(epochs)
evoked = epochs.average()
evoked.plot_joint(times=[0.08, 0.1, 0.15], title="Visual evoked response")

# %%
# Noise covariance and forward model
# ----------------------------------
# The noise covariance of single trials comes from the pre-stimulus
# baseline. The forward model is built offline on the fsaverage template for
# the 63 channels of the cap (``bem_ico=4`` is more accurate, about a minute
# the first time, then cached).
noise_cov = mne.compute_covariance(epochs, tmax=0.0, method="empirical")
fwd = make_template_forward("things-eeg2", "ico3", bem_ico=3)
subjects_dir = get_subjects_dir()
pos = source_positions_mri(fwd)
occipital = pos[:, 1] < OCCIPITAL_Y
print(f"{occipital.sum()} of {len(pos)} sources are 'occipital' (y < -65 mm)")

# %%
# Choose the model
# ----------------
# Deep CB transfers to the 63-channel cap because its corrections are
# shared, pointwise MLPs (paper section 4.2).
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    net, model_name, note = resolve_model("deep-cb", learn_noise=True)
label = "Deep CB" if note is None else "Convex bounding (no Deep CB weights)"
if note:
    print("NOTE:", note)

# %%
# Trial-averaged response
# -----------------------
# The first 200 ms after image onset.
evoked_post = evoked.copy().crop(0.0, 0.2)
stc_ucb, noise_learned = apply_unfolded_sbl(evoked_post, fwd, noise_cov,
                                            model=net, return_noise_cov=True)
inv = mne.minimum_norm.make_inverse_operator(evoked.info, fwd, noise_cov,
                                             loose=0.0, fixed=True, depth=None)
stc_sl = mne.minimum_norm.apply_inverse(evoked_post, inv, lambda2=1.0 / 9.0,
                                        method="sLORETA")
stcs = {label: stc_ucb, "sLORETA": stc_sl}


def occipital_fraction(stc, tmin=0.05, tmax=0.15):
    """Share of the source power between tmin and tmax in occipital cortex."""
    data = expand_stc(stc, fwd).copy().crop(tmin, tmax).data
    power = np.sum(data ** 2, axis=1)
    return power[occipital].sum() / power.sum()


early = evoked_post.copy().crop(0.05, 0.15)
t_peak = early.times[np.argmax(np.std(early.data, axis=0))]
print(f"Peak of the global field power: {t_peak * 1e3:.0f} ms")
for name, stc in stcs.items():
    peak = peak_sources(stc.copy().crop(0.05, 0.15), fwd, n=1)[0]
    x, y, z = peak["pos_mm"]
    print(f"{name:<40} occipital share of 50-150 ms power: "
          f"{occipital_fraction(stc):5.1%}; peak source {peak['hemi']} "
          f"({x:.0f}, {y:.0f}, {z:.0f}) mm at {peak['latency'] * 1e3:.0f} ms "
          f"{'(occipital)' if y < OCCIPITAL_Y * 1e3 else '(NOT occipital)'}")

# %%
# Brains at the peak of the early response: the unfolded solver gives a
# focal occipital source, sLORETA a broad occipito-parietal blur.
for name, stc in stcs.items():
    plot_source_estimate(stc, subjects_dir, time=t_peak,
                         title=f"{name}, trial average")

# %%
# Time course at the peak source of the unfolded estimate, and the noise
# the unfolded solver learned for every channel (large values flag noisy
# channels).
peak = peak_sources(stc_ucb.copy().crop(0.05, 0.15), fwd, n=1)[0]
plot_time_courses(stcs, [(peak["hemi_idx"], peak["vertex"],
                          f"peak source: {peak['hemi']} vertex {peak['vertex']}")],
                  title="Time course at the peak source")
info = mne.pick_info(evoked.info, [evoked.ch_names.index(c)
                                   for c in noise_learned["names"]])
plot_noise_topomap(info, np.sqrt(noise_learned["data"]),
                   title="Learned noise std (trial average)")

# %%
# Single trials
# -------------
# A much harder, low-SNR regime. All trials go through the network in one
# batched pass; sLORETA uses ``lambda2 = 1`` (SNR 1), MNE's convention for
# single trials. For each trial we locate the strongest source between 50
# and 150 ms.
trials = epochs[:100].copy().crop(0.0, 0.2)
stcs_ucb = apply_unfolded_sbl_epochs(trials, fwd, noise_cov, model=net)
stcs_sl = mne.minimum_norm.apply_inverse_epochs(trials, inv, lambda2=1.0,
                                                method="sLORETA")


def peak_y(stc):
    data = stc.copy().crop(0.05, 0.15).data
    return pos[np.argmax(np.sum(data ** 2, axis=1)), 1] * 1e3


fig, ax = plt.subplots(figsize=(6, 3.2), layout="constrained")
bins = np.linspace(-110, 75, 38)
for name, stcs_trials in ((label, stcs_ucb), ("sLORETA", stcs_sl)):
    ys = np.array([peak_y(s) for s in stcs_trials])
    share = np.mean(ys < OCCIPITAL_Y * 1e3)
    ax.hist(ys, bins=bins, alpha=0.6, label=f"{name}: {share:.0%} occipital")
    print(f"{name}: peak source in occipital cortex in {share:.0%} of "
          f"{len(ys)} single trials")
ax.axvline(OCCIPITAL_Y * 1e3, color="k", ls="--", lw=1)
ax.set(xlabel="y of the peak source (mm, posterior < 0)",
       ylabel="single trials", title="Single-trial peak locations (50-150 ms)")
ax.legend()

# %%
# One single trial on the brain:
plot_source_estimate(stcs_ucb[0], subjects_dir, time=t_peak,
                     title=f"{label}, single trial 1")
plot_source_estimate(stcs_sl[0], subjects_dir, time=t_peak,
                     title="sLORETA, single trial 1")
plt.show()
