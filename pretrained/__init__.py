"""Bundled pretrained weights (package data) for mne-unfolded-sbl."""
