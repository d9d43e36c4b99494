"""Atomic checkpoints and RNG state capture for exact resumption."""

import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

CHECKPOINT_FORMAT = 1
CHECKPOINT_NAME = "checkpoint.pt"


def rng_state():
    """Global torch / CUDA / numpy / python RNG states (weights-only safe)."""
    np_state = np.random.get_state()
    state = dict(
        torch=torch.get_rng_state(),
        numpy=[np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
               int(np_state[2]), int(np_state[3]), float(np_state[4])],
        python=random.getstate(),
    )
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss,
                         cached))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        states = state["cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


def save_checkpoint(obj, fname):
    """``torch.save`` to a temporary file in the same folder, then rename.

    A crash during the write leaves the previous checkpoint intact.
    """
    fname = Path(fname)
    fname.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=fname.name + ".", suffix=".tmp",
                               dir=fname.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, fname)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return fname


def load_checkpoint(fname, map_location="cpu"):
    """Load a checkpoint written by :func:`save_checkpoint`."""
    ckpt = torch.load(fname, map_location=map_location, weights_only=True)
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{fname}: unsupported checkpoint format "
                         f"{ckpt.get('format')!r}")
    return ckpt
