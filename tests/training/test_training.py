"""Tests of mne_unfolded_sbl.training (CPU, small random lead fields)."""

import json
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from reference import fibonacci_sphere

from mne_unfolded_sbl.core.leadfield import read_leadfield_npz
from mne_unfolded_sbl.training import (EXIT_STOPPED, TrainConfig, Trainer,
                                       load_config)
from mne_unfolded_sbl.training.checkpoint import load_checkpoint
from mne_unfolded_sbl.training.data import SimulatedData
from mne_unfolded_sbl.training.distributed import DistInfo, cleanup

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny_cpu.toml"


_sphere = fibonacci_sphere


@pytest.fixture(scope="module")
def leadfield_files(tmp_path_factory):
    """A random 24 x 160 'training' lead field and a perturbed 'validation' one."""
    d = tmp_path_factory.mktemp("lf")
    rng = np.random.default_rng(0)
    pos = np.concatenate([_sphere(80, 0.03, (-0.035, 0, 0.02)),
                          _sphere(80, 0.03, (0.035, 0, 0.02))])
    gain = rng.standard_normal((24, pos.shape[0]))
    names = np.array([f"E{i}" for i in range(24)])
    files = []
    for kind, g in (("train", gain),
                    ("val", 0.85 * gain + 0.05 * rng.standard_normal(gain.shape))):
        fname = d / f"{kind}.npz"
        np.savez(fname, gain=g.astype(np.float32), source_rr=pos.astype(np.float32),
                 ch_names=names, format_version=np.int32(1))
        files.append(str(fname))
    return files


def _config(leadfield_files, tmp_path, **kw):
    """The tiny CPU config on the random lead fields, quiet and fast."""
    base = dict(train_leadfield=leadfield_files[0],
                val_leadfield=leadfield_files[1], out_dir=str(tmp_path / "run"),
                progress=False, n_layers=3, phase_steps=3, finetune_steps=4,
                batch_size=8, val_size=16, val_batch_size=8, val_metrics_size=4,
                log_interval=2, num_threads=1)
    base.update(kw)
    return load_config(TINY, **base)


def _records(path, event=None):
    recs = [json.loads(line) for line in Path(path).read_text().splitlines()]
    for r in recs:
        r.pop("time_s", None)
        r.pop("weights", None)
    return [r for r in recs if event is None or r["event"] == event]


def _params(net):
    return {k: v.detach().clone() for k, v in net.named_parameters()}


def _val_problem(tr, leadfield_files):
    """The training lead field (float32) and a validation batch of 4."""
    lf = read_leadfield_npz(leadfield_files[0])
    return torch.as_tensor(lf.L, dtype=torch.float32), next(tr.data.val_batches(4))


def test_config_roundtrip(leadfield_files, tmp_path):
    """TOML -> object -> TOML -> object -> checkpoint -> object."""
    cfg = _config(leadfield_files, tmp_path, simulation=dict(snr_db=[0.0, 20.0]))
    assert cfg.simulation["snr_db"] == [0.0, 20.0]
    assert cfg.simulation["n_times"] == 50  # from tiny_cpu.toml
    assert cfg.simulation["bands"]["alpha"] == [8.0, 13.0]  # default filled in
    toml = tmp_path / "cfg.toml"
    toml.write_text(cfg.to_toml())
    cfg2 = load_config(toml)
    assert cfg2 == cfg
    tr = Trainer(cfg2)
    tr.save_checkpoint()
    cfg3 = TrainConfig.from_dict(load_checkpoint(tr.out_dir / "checkpoint.pt")["config"])
    assert cfg3 == cfg
    with pytest.raises(ValueError, match="Unknown"):
        load_config(None, learning_rate=1.0)
    with pytest.raises(ValueError, match="model"):
        load_config(None, model="cb")
    for f in ROOT.glob("configs/*.toml"):  # every shipped config is valid
        load_config(f)


def test_training_lowers_validation_loss(leadfield_files, tmp_path):
    cfg = _config(leadfield_files, tmp_path, phase_steps=4, finetune_steps=8)
    tr = Trainer(cfg)
    assert tr.run() == "finished"
    vals = _records(tr.log_path, "val")
    assert vals[0]["initial"]
    # the untrained network is the classical solver on the same fixed set
    assert vals[-1]["val_loss_final"] < 0.97 * vals[0]["val_loss_final"]
    assert tr.samples_seen == cfg.batch_size * (2 * 4 + 8)
    trains = _records(tr.log_path, "train")
    assert all(np.isfinite(r["loss"]) for r in trains)
    assert {"rmse", "f1", "emd", "le"} <= set(vals[-1])
    assert len(vals[-1]["val_loss_layers"]) == cfg.n_layers


def test_progressive_freezing(leadfield_files, tmp_path):
    cfg = _config(leadfield_files, tmp_path)
    tr = Trainer(cfg)
    before = _params(tr.net)
    assert tr.run(stop_after_phase=0) == "stopped"
    after0 = _params(tr.net)
    changed = {k for k in before if not torch.equal(before[k], after0[k])}
    assert changed and all(k.startswith("layers.0.") for k in changed)
    # phase 1 starts with layer 1 as a copy of layer 0
    tr.setup_phase(tr.phase, fresh=True)
    for k, v in tr.net.layers[1].state_dict().items():
        assert torch.equal(v, tr.net.layers[0].state_dict()[k])
    copied = _params(tr.net)
    assert tr.run(stop_after_phase=1) == "stopped"
    after1 = _params(tr.net)
    changed = {k for k in copied if not torch.equal(copied[k], after1[k])}
    assert changed and all(k.startswith("layers.1.") for k in changed)
    assert not list(tr.net.layers[2].parameters())  # the classical last layer
    assert tr.run() == "finished"  # fine-tuning changes every trained layer
    final = _params(tr.net)
    assert all(not torch.equal(after1[k], final[k]) for k in final
               if k.endswith("net.4.weight"))


def test_resume_is_exact(leadfield_files, tmp_path, monkeypatch):
    cfg = _config(leadfield_files, tmp_path, gradient_checkpointing=True)
    ref = Trainer(cfg, out_dir=tmp_path / "ref")
    assert ref.run() == "finished"

    # 1) a time limit stops after the first step
    tr = Trainer(cfg.replace(max_minutes=1e-9), out_dir=tmp_path / "int")
    assert tr.run() == "stopped" and tr.global_step == 1
    # 2) resume in a new process-like Trainer; a "kill" mid-phase (stop flag
    #    at global step 4) and one at a phase boundary (step 6)
    stops = {4, 6}

    def fake_stop(self):
        if self.global_step in stops and self.step in (1, 0):
            stops.discard(self.global_step)
            return True
        return False

    monkeypatch.setattr(Trainer, "_should_stop", fake_stop)
    for expected in (4, 6):
        tr = Trainer(cfg, out_dir=tmp_path / "int", resume=True)
        assert tr.run() == "stopped" and tr.global_step == expected
    with open(tr.log_path, "a") as f:  # records after a checkpoint are dropped
        f.write('{"event": "train", "junk": true}\n')
    tr = Trainer(cfg, out_dir=tmp_path / "int", resume=True)
    assert tr.run() == "finished"

    ref_p, int_p = _params(ref.net), _params(tr.net)
    assert all(torch.equal(ref_p[k], int_p[k]) for k in ref_p)
    strip = [r for r in _records(tr.log_path) if r["event"] != "stopped"]
    assert strip == _records(ref.log_path)
    with pytest.raises(FileExistsError):
        Trainer(cfg, out_dir=tmp_path / "int")
    with pytest.raises(ValueError, match="lr"):
        Trainer(cfg.replace(lr=0.5), out_dir=tmp_path / "int", resume=True)


def test_export_and_cli(leadfield_files, tmp_path):
    from mne_unfolded_sbl.core.weights import load_weights, read_metadata
    from mne_unfolded_sbl.training.cli import main
    from mne_unfolded_sbl.core.weights import register_weights, sha256

    out = tmp_path / "cli"
    toml = tmp_path / "cfg.toml"
    toml.write_text(_config(leadfield_files, tmp_path).to_toml())
    argv = ["--config", str(toml), "--out", str(out), "--set", "finetune_steps=2",
            "--set", "model='bias-cb'"]
    assert main(argv + ["--max-minutes", "1e-9"]) == EXIT_STOPPED
    assert main(argv + ["--resume"]) == 0
    fname = out / "bias-cb_joint.safetensors"
    config, card = read_metadata(fname)
    assert card["complete"] and card["samples_seen"] == 8 * (2 * 3 + 2)
    # lead fields read from files: their channel types are not known
    assert card["domain"]["ch_types"] is None
    text = fname.with_suffix(".md").read_text()
    assert "## Benchmark" in text and "Not measured yet" in text

    cfg = load_config(toml, finetune_steps=2, model="bias-cb", out_dir=str(out))
    tr = Trainer(cfg, resume=True)  # the finished run, from its checkpoint
    net = load_weights(fname)
    L, batch = _val_problem(tr, leadfield_files)
    tr.net.eval()
    with torch.no_grad():
        ns = batch["null_space"]
        a = tr.net(L, batch["Cy"], null_space=ns).posterior_mean(batch["Y"])
        b = net(L, batch["Cy"], null_space=ns).posterior_mean(batch["Y"])
    assert torch.equal(a, b)

    entry = register_weights(fname, "bias-cb_joint", registry_dir=tmp_path / "reg")
    reg = json.loads((tmp_path / "reg" / "registry.json").read_text())
    assert reg["bias-cb_joint"] == entry
    assert entry["sha256"] == sha256(tmp_path / "reg" / "bias-cb_joint.safetensors")


def test_source_only_attention(leadfield_files, tmp_path):
    """Source-only Deep Attn CB trains (uses the true noise variances)."""
    cfg = _config(leadfield_files, tmp_path, model="deep-attn-cb",
                  learn_noise=False, phase_steps=1, finetune_steps=2,
                  val_per_layer=False, val_metrics_size=0)
    tr = Trainer(cfg)
    assert tr.run() == "finished"
    assert not tr.net.learn_noise
    assert np.isfinite(_records(tr.log_path, "val")[-1]["val_loss_final"])


def test_attention_run_starts_from_a_deep_cb(leadfield_files, tmp_path):
    """init_weights of a Deep CB in a Deep Attn CB run: the untrained
    attention network is that Deep CB exactly; training then moves the
    attention decoder. A Deep CB of another depth is refused."""
    from mne_unfolded_sbl.core.network import UnfoldedSBL
    from mne_unfolded_sbl.core.weights import save_model

    deep = UnfoldedSBL(3, "deep-cb", True, hidden=16)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in deep.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    fname = save_model(deep, tmp_path / "deep.safetensors")
    cfg = _config(leadfield_files, tmp_path, model="deep-attn-cb",
                  init_weights=str(fname), progressive=False, finetune_steps=3,
                  val_metrics_size=0, lr=1e-2)
    tr = Trainer(cfg)
    L, batch = _val_problem(tr, leadfield_files)
    tr.net.eval()
    with torch.no_grad():
        ns = batch["null_space"]
        a = tr.net(L, batch["Cy"], null_space=ns).gamma_n
        b = deep(L, batch["Cy"], null_space=ns).gamma_n
        c = UnfoldedSBL(3, "cb", True)(L, batch["Cy"], null_space=ns).gamma_n
    torch.testing.assert_close(a, b, rtol=1e-5, atol=0)
    assert not torch.allclose(a, c, rtol=1e-3)  # the Deep CB, not the classical
    assert tr.run() == "finished"
    decoders = [m.source_correction.decode[-1].weight for m in tr.net.layers[:-1]]
    assert any(w.abs().sum() > 0 for w in decoders)
    with pytest.raises(ValueError, match="another architecture"):
        Trainer(_config(leadfield_files, tmp_path, model="deep-attn-cb",
                        n_layers=4, init_weights=str(fname),
                        out_dir=str(tmp_path / "other")))


# ----------------------------------------------------------------------
# data parallel: 2 gloo processes == one process on the combined batch
def _ddp_worker(rank, world, port, cfg_dict, state_file, out_dir):
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        cfg = TrainConfig.from_dict(cfg_dict)
        tr = Trainer(cfg, out_dir=Path(out_dir) / f"rank{rank}",
                     dist_info=DistInfo(rank, world, rank))
        tr.net.load_state_dict(torch.load(state_file))
        grads = {}
        for ph in (tr.phases[1], tr.phases[-1]):  # progressive (frozen) + joint
            tr.setup_phase(ph, fresh=False)
            loss, _, _ = tr.backward_step(ph, step=0)
            grads[ph.name] = {k: p.grad.clone() for k, p in
                              tr.net.named_parameters() if p.grad is not None}
        torch.save(grads, Path(out_dir) / f"grads{rank}.pt")
        tr.close()
    finally:
        cleanup()


#: "spawn" re-imports torch and MNE in each worker (slow, always safe); "fork"
#: is fast but unsafe once the parent has used a multi-threaded OpenMP pool.
START_METHOD = "spawn"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_gradients_match_single_process(leadfield_files, tmp_path):
    import torch.multiprocessing as mp

    cfg = _config(leadfield_files, tmp_path, dtype="float64", batch_size=8,
                  gradient_checkpointing=True)
    tr = Trainer(cfg, out_dir=tmp_path / "single")
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # move away from the zero (classical) start
        for p in tr.net.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    state_file = tmp_path / "state.pt"
    torch.save(tr.net.state_dict(), state_file)
    # one process on the combined batch: rank 0's shard then rank 1's
    lf = read_leadfield_npz(leadfield_files[0])
    shards = SimulatedData(cfg, lf, lf, "cpu", torch.float64, rank=0, world_size=2)
    phases = (tr.phases[1], tr.phases[-1])  # progressive (frozen layers), joint
    ref = {}
    for ph in phases:
        parts = [shards.train_batch(ph.index, 0, rank=r) for r in (0, 1)]
        assert not torch.equal(parts[0]["Y"], parts[1]["Y"])  # own shards
        batch = {k: torch.cat([p[k] for p in parts]) if torch.is_tensor(v) else v
                 for k, v in parts[0].items()}
        tr.setup_phase(ph, fresh=False)
        tr.backward_step(ph, step=0, batch=batch)
        ref[ph.name] = {k: p.grad.clone() for k, p in tr.net.named_parameters()
                        if p.grad is not None}
    ctx = mp.start_processes(_ddp_worker, args=(2, _free_port(), cfg.to_dict(),
                                                str(state_file), str(tmp_path)),
                             nprocs=2, join=False, start_method=START_METHOD)
    deadline = time.monotonic() + 180
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the DDP workers did not finish within 180 s")
    g0 = torch.load(tmp_path / "grads0.pt")
    g1 = torch.load(tmp_path / "grads1.pt")
    for ph in phases:
        r = ref[ph.name]
        assert set(r) == set(g0[ph.name]) == set(g1[ph.name])
        if ph.layer is not None:
            assert all(k.startswith(f"layers.{ph.layer}.") for k in r)
        for k in r:
            assert torch.equal(g0[ph.name][k], g1[ph.name][k])
            torch.testing.assert_close(g0[ph.name][k], r[k], rtol=1e-5, atol=1e-12)
        assert any(float(v.abs().max()) > 0 for v in r.values())


# ----------------------------------------------------------------------
def test_trainer_path_without_mne(leadfield_files, tmp_path):
    """With MNE unimportable, the trainer imports and trains from .npz files."""
    code = textwrap.dedent(f"""
        import sys, traceback
        sys.modules["mne"] = None  # any `import mne...` raises ImportError
        import mne_unfolded_sbl.training.trainer
        from mne_unfolded_sbl.training.cli import main
        print("IMPORTED", flush=True)
        try:
            rc = main(["--config", {str(TINY)!r}, "--out", {str(tmp_path / "nomne")!r},
                       "--no-progress",
                       "--set", "train_leadfield={leadfield_files[0]!r}",
                       "--set", "val_leadfield={leadfield_files[1]!r}",
                       "--set", "n_layers=2", "--set", "phase_steps=1",
                       "--set", "finetune_steps=1", "--set", "val_size=4"])
        except ImportError:
            tb = traceback.extract_tb(sys.exc_info()[2])
            files = [f.filename for f in tb if "mne_unfolded_sbl" in f.filename]
            print("BLOCKED", files[-1], flush=True)
            raise SystemExit(0)
        print("RC", rc)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    assert "IMPORTED" in res.stdout, res.stderr
    assert "BLOCKED" not in res.stdout, "imports MNE: " + res.stdout
    assert "RC 0" in res.stdout, res.stdout + res.stderr
