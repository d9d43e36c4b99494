"""The core and the training stack run where MNE is not installed."""

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def test_core_and_training_step_load_no_mne(tmp_path):
    """Importing every core module and taking a training step loads no mne."""
    rng = np.random.default_rng(0)
    gain = rng.standard_normal((16, 60))
    pos = rng.uniform(-0.05, 0.05, (60, 3))
    files = []
    for kind, g in (("train", gain), ("val", 0.9 * gain)):
        fname = tmp_path / f"{kind}.npz"
        np.savez(fname, gain=g.astype(np.float32),
                 source_rr=pos.astype(np.float32),
                 ch_names=np.array([f"E{i}" for i in range(16)]),
                 format_version=np.int32(1))
        files.append(str(fname))
    code = textwrap.dedent(f"""
        import sys
        import mne_unfolded_sbl.core
        from mne_unfolded_sbl.core import (corrections, leadfield, metrics,
                                           network, simulator, solver, weights)
        from mne_unfolded_sbl.training import TrainConfig, Trainer
        cfg = TrainConfig(model="deep-cb", n_layers=2, hidden=8,
                          train_leadfield={files[0]!r},
                          val_leadfield={files[1]!r}, out_dir={str(tmp_path / "run")!r},
                          progress=False, phase_steps=1, finetune_steps=1,
                          batch_size=4, val_size=4, val_batch_size=4,
                          val_metrics_size=2, num_threads=1)
        trainer = Trainer(cfg)
        rc = trainer.run()
        loaded = sorted(m for m in sys.modules if m == "mne" or m.startswith("mne."))
        print("RC", rc, "MNE", loaded)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert "RC finished MNE []" in res.stdout, res.stdout + res.stderr


def test_core_logger_follows_mne_verbosity(caplog):
    """The core logs under ``mne.unfolded_sbl``: MNE's level governs it."""
    import mne

    from mne_unfolded_sbl.core._utils import logger

    assert logger.name == "mne.unfolded_sbl"
    with mne.utils.use_log_level("warning"):
        assert not logger.isEnabledFor(20)
    with mne.utils.use_log_level("info"):
        assert logger.isEnabledFor(20)
