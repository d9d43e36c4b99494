"""
.. _ex-things-eeg2:

=====================================================================
Localise visual evoked responses of THINGS-EEG2 (Deep CB vs sLORETA)
=====================================================================

THINGS-EEG2 (Gifford et al., 2022, NeuroImage 264:119754) recorded 63-channel
EEG while subjects viewed object images in rapid succession (one image every
200 ms). Early visual responses should come from occipital (visual) cortex:
this is the zero-shot check of the paper's appendix C.4. For one subject and
one session we

1. download the raw EEG (test images) and read it into MNE,
2. epoch the image onsets from -100 to 200 ms and average them,
3. build a forward model for the 63-channel cap on the fsaverage template,
4. localise the average with :func:`~mne_unfolded_sbl.apply_unfolded_sbl`
   (the pretrained Deep CB network; the classical convex-bounding solver if
   no pretrained weights are available, and the labels then say so) and
   with sLORETA, side by side in an :class:`mne.Report`,
5. measure how much of the early response (50-150 ms) each method puts in
   occipital cortex, for the average and for single trials.

**What you should see.** The evoked response has the early visual
components over the occipital electrodes (O1, Oz, O2, PO7/PO8), with the
global field power peaking at about 100 ms. Both methods should place the
strongest source of the 50-150 ms response in occipital cortex: the unfolded
solver as a few focal sources, sLORETA as a broad occipito-parietal blur
(so a larger occipital share of the source power for the unfolded solver).
Single trials are much noisier: the unfolded solver may prune (nearly)
every source of many of them (it warns which), while sLORETA always has a
peak somewhere. These are the expected results, not checked by the
documentation build, which does not run this example.

.. note::
   **Download.** This example needs the raw data of subject 1. The raw
   recordings of THINGS-EEG2 are published as one archive per subject,
   ``sub-01.zip`` (all four sessions, training and test images), in the OSF
   component https://osf.io/crxs4/ (figshare article 18470912).
   :func:`~mne_unfolded_sbl.things_eeg2.fetch_things_eeg2` finds it through
   the OSF API, logs its exact size from the API metadata, downloads it once
   with pooch (checked against the hash OSF publishes) into
   ``~/mne_data/THINGS-EEG2/archives/`` and extracts the one file used here,
   ``sub-01/ses-01/raw_eeg_test.npy``. Expect **about 11 GB** for the
   archive (a third-party estimate; this package could not check it) and
   about 0.7 GB for the extracted file; the folder can be changed with
   ``MNE_UNFOLDED_SBL_THINGS_EEG2_PATH``. Later runs need no network. The
   documentation build does not execute this page (it is excluded by the
   gallery's ``filename_pattern``).

**Occipital cortex** is defined geometrically, as sources with
``y < -65 mm`` in fsaverage MRI (≈ MNI305) coordinates, i.e. behind the
parieto-occipital sulcus and the pre-occipital notch; the embedded template
has no anatomical parcellation. The baseline (-100 to 0 ms) overlaps the
response to the previous image (200 ms onset asynchrony), a limitation of
the rapid design.
"""
# License: BSD-3-Clause

# %%
import matplotlib.pyplot as plt
import mne
import numpy as np

from mne_unfolded_sbl import apply_unfolded_sbl_epochs
from mne_unfolded_sbl.datasets import make_template_forward
from mne_unfolded_sbl.methods import expand_stc
from mne_unfolded_sbl.report import (add_unfolded_sbl_to_report, peak_sources,
                                     source_positions_mri)
from mne_unfolded_sbl.things_eeg2 import (fetch_things_eeg2,
                                          make_things_eeg2_epochs,
                                          read_things_eeg2_raw)

mne.set_log_level("warning")
OCCIPITAL_Y = -0.065  # m, fsaverage MRI coordinates
SUBJECT, SESSION = 1, 1

# %%
# Download, read and epoch
# ------------------------
# :func:`~mne_unfolded_sbl.things_eeg2.fetch_things_eeg2` returns the local
# file and downloads it only if it is missing (``verbose=True`` logs the
# archive's size and URL first). When it cannot, the error says which URL
# failed and where to put the file by hand. The montage is the
# fsaverage-fitted 10-05 layout of the cap, which matches the template
# forward model.
fname = fetch_things_eeg2(subject=SUBJECT, session=SESSION, partition="test",
                          progressbar=True, verbose=True)
raw = read_things_eeg2_raw(fname)
print(raw)
epochs = make_things_eeg2_epochs(raw, tmin=-0.1, tmax=0.2, baseline=(None, 0.0),
                                 reject=dict(eeg=200e-6))
del raw
print(epochs)
evoked = epochs.average()

report = mne.Report(title=f"THINGS-EEG2 sub-{SUBJECT:02d} ses-{SESSION:02d}: "
                          "Deep CB vs sLORETA")
report.add_evokeds(evoked, titles="Visual evoked response (test images)",
                   n_time_points=5)
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
pos = source_positions_mri(fwd)
occipital = pos[:, 1] < OCCIPITAL_Y
print(f"{occipital.sum()} of {len(pos)} sources are 'occipital' (y < -65 mm)")

# %%
# Trial-averaged response: the report
# -----------------------------------
# :func:`~mne_unfolded_sbl.report.add_unfolded_sbl_to_report` localises the
# first 200 ms after image onset with
# :func:`~mne_unfolded_sbl.apply_unfolded_sbl` (Deep CB, learning the noise
# of every channel) and with sLORETA (:func:`mne.minimum_norm.apply_inverse`,
# ``lambda2 = 1/9``), and adds brain pictures at the peak of the global field
# power, a table of peak sources, time courses at the peaks, the learned
# noise and the per-layer convergence to the report.
evoked_post = evoked.copy().crop(0.0, 0.2)
out = add_unfolded_sbl_to_report(report, evoked_post, fwd, noise_cov,
                                 model="deep-cb", compare=("sloreta",),
                                 section="Trial average")
if out["note"]:
    print("NOTE:", out["note"])
print(f"Brain pictures at {out['time'] * 1e3:.0f} ms (peak of the global "
      "field power)")


def occipital_fraction(stc, tmin=0.05, tmax=0.15):
    """Share of the source power between tmin and tmax in occipital cortex."""
    data = expand_stc(stc, fwd).copy().crop(tmin, tmax).data
    power = np.sum(data ** 2, axis=1)
    return power[occipital].sum() / power.sum()


rows = []
for res in out["estimates"].values():
    peak = peak_sources(res["stc"].copy().crop(0.05, 0.15), fwd, n=1)[0]
    x, y, z = peak["pos_mm"]
    share = occipital_fraction(res["stc"])
    where = "occipital" if y < OCCIPITAL_Y * 1e3 else "NOT occipital"
    rows.append(f"<tr><td>{res['label']}</td><td>{share:.0%}</td>"
                f"<td>{peak['hemi']} ({x:.0f}, {y:.0f}, {z:.0f}) mm, "
                f"{peak['latency'] * 1e3:.0f} ms ({where})</td></tr>")
    print(f"{res['label']:<40} occipital share of 50-150 ms power: "
          f"{share:5.1%}; peak source {peak['hemi']} ({x:.0f}, {y:.0f}, "
          f"{z:.0f}) mm at {peak['latency'] * 1e3:.0f} ms ({where})")
report.add_html("<table class='table'><tr><th>method</th><th>share of the "
                "50-150 ms source power with y &lt; -65 mm</th><th>peak "
                "source (MNI305)</th></tr>" + "".join(rows) + "</table>",
                title="Occipital share", section="Trial average")

# %%
# Single trials
# -------------
# A much harder, low-SNR regime. All trials go through the network in one
# batched pass (:func:`~mne_unfolded_sbl.apply_unfolded_sbl_epochs`, with
# the model the report ran); sLORETA uses ``lambda2 = 1`` (SNR 1), MNE's
# convention for single trials. For each trial we locate the strongest
# source between 50 and 150 ms. When the unfolded solver prunes (nearly)
# every source of a trial, it explains that trial as noise and says so in
# a warning that lists the trials; the position of such a tiny "peak" means
# little, so compare the histograms with that count in mind.
trials = epochs[:100].copy().crop(0.0, 0.2)
stcs_ucb = apply_unfolded_sbl_epochs(trials, fwd, noise_cov, model=out["model"])
inv = mne.minimum_norm.make_inverse_operator(evoked.info, fwd, noise_cov,
                                             loose=0.0, fixed=True, depth=None)
stcs_sl = mne.minimum_norm.apply_inverse_epochs(trials, inv, lambda2=1.0,
                                                method="sLORETA")


def peak_positions(stcs):
    """y (mm) of the strongest source between 50 and 150 ms of every trial
    (NaN for an all-zero estimate)."""
    power = np.array([np.sum(expand_stc(stc, fwd).copy().crop(0.05, 0.15).data
                             ** 2, axis=1) for stc in stcs])
    ys = pos[np.argmax(power, axis=1), 1] * 1e3
    ys[~np.any(power > 0, axis=1)] = np.nan
    return ys


fig, ax = plt.subplots(figsize=(6, 3.2), layout="constrained")
bins = np.linspace(-110, 75, 38)
label = out["estimates"]["unfolded"]["label"]
for name, stcs_trials in ((label, stcs_ucb), ("sLORETA", stcs_sl)):
    ys = peak_positions(stcs_trials)
    found = ys[~np.isnan(ys)]
    empty = len(ys) - len(found)
    share = np.mean(found < OCCIPITAL_Y * 1e3) if len(found) else 0.0
    ax.hist(found, bins=bins, alpha=0.6,
            label=f"{name}: {share:.0%} occipital")
    print(f"{name}: peak source in occipital cortex in {share:.0%} of "
          f"{len(found)} single trials ({empty} all-zero estimates)")
ax.axvline(OCCIPITAL_Y * 1e3, color="k", ls="--", lw=1)
ax.set(xlabel="y of the peak source (mm, posterior < 0)",
       ylabel="single trials", title="Single-trial peak locations (50-150 ms)")
ax.legend()
report.add_figure(fig, title="Single-trial peak locations",
                  section="Single trials")

# %%
# Save the report
# ---------------
# Open ``things_eeg2_report.html`` in a browser: the evoked response, the
# brains of both methods at the same time, the peak tables, the learned
# noise, the occipital shares and the single-trial histogram.
report.save("things_eeg2_report.html", overwrite=True, open_browser=False)
plt.show()
