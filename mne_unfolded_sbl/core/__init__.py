"""The MNE-free core: numpy and PyTorch only.

Everything the method is made of lives here and runs where MNE is not
installed (a GPU training box that receives lead fields as ``.npz``):

- :mod:`.solver`: the convex-bounding (Champagne) updates on arrays;
- :mod:`.corrections` and :mod:`.network`: the unfolded network;
- :mod:`.multiscale`: smoothed cortical atoms for extended sources;
- :mod:`.simulator`: batched EEG simulation on a lead field;
- :mod:`.metrics`: rMSE, localisation error, EMD, F1;
- :mod:`.leadfield`: the ``.npz`` lead-field format and the reference;
- :mod:`.weights`: the weights files, registry and loading.

The MNE-facing modules of the package (``inverse``, ``simulation``,
``datasets``, ``report``, ...) stand on it. This package never imports
:mod:`mne`; a test checks it.
"""
