"""Bank training: statistics-based loss, cached prefix states, do-no-harm hinge."""

import json

import numpy as np
import pytest
import torch
from reference import fibonacci_sphere

from mne_unfolded_sbl.core.network import UnfoldedSBL, classical_network
from mne_unfolded_sbl.core.simulator import EEGSimulator, SimulationConfig
from mne_unfolded_sbl.core.solver import covariance_statistic
from mne_unfolded_sbl.training.bank import (SampleBank, ShardSpec, lowrank_cross,
                                            nmse_from_stats, nmse_lowrank)
from mne_unfolded_sbl.training.config import load_config
from mne_unfolded_sbl.training.loss import nmse
from mne_unfolded_sbl.training.trainer import Trainer

from pathlib import Path

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny_cpu.toml"


_sphere = fibonacci_sphere


def _spec(name="toy", M=20, seed=0, weight=1.0):
    rng = np.random.default_rng(seed)
    pos = np.concatenate([_sphere(60, 0.03, (-0.035, 0, 0.02)),
                          _sphere(60, 0.03, (0.035, 0, 0.02))])
    L = rng.standard_normal((M, pos.shape[0]))
    L -= L.mean(0)
    sim = 0.9 * L + 0.05 * rng.standard_normal(L.shape)
    sim -= sim.mean(0)
    return ShardSpec(name, L, [L, sim], pos, None, weight)


SIM = SimulationConfig(n_sources=(1, 4), n_times=30, snr_db=(0.0, 20.0))
NET = dict(n_layers=4, learn_noise=True, noise_init=0.1)


def _perturbed(net, scale=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return net


def _log_ratio_loss(bank, batch_size, **loss_kw):
    """The log-ratio objective (hinge 2) of a perturbed 4-layer Deep CB on
    one bank batch: ``(loss, net, shard, idx, output)``."""
    from mne_unfolded_sbl.training.loss import LossModule

    batch = bank.batch(0, 0, batch_size)
    shard, idx = batch["shard"], batch["idx"]
    net = _perturbed(UnfoldedSBL(4, "deep-cb", True).double())
    loss, _, _ = LossModule(net, "log-ratio", **loss_kw)(
        None, batch, 4, harm_weight=2.0)
    with torch.no_grad():
        out = net.run(shard.problem(idx))
    return loss, net, shard, idx, out


def _classical_rms(shard, n_layers=4):
    """The RMS maps of classical CB's estimates after ``n_layers`` layers on
    every sample of ``shard``, from the statistics (:func:`nmse_lowrank`)."""
    idx = torch.arange(shard.n)
    with torch.no_grad():
        o = classical_network(n_layers, True).double().run(shard.problem(idx))
        _, rms = nmse_lowrank(shard.L_n, shard.Lt, o.gamma_n, o.lam_n,
                              shard.null_space, shard.Cy[idx], shard.F[idx],
                              shard.A[idx], shard.cxx[idx], rms=True)
    return rms


def _solved(n, seed):
    """A perturbed Deep CB's output on ``n`` simulated samples, with the
    samples and the normalised ``Y_n``, ``X_n``."""
    spec = _spec()
    L = torch.as_tensor(spec.L_inv)
    sim = EEGSimulator(spec.L_sims[1], spec.pos, SIM, dtype=torch.float64, seed=1)
    s = sim.sample(n, seed=seed)
    net = _perturbed(UnfoldedSBL(4, "deep-cb", True).double())
    with torch.no_grad():
        out = net(L, covariance_statistic(s["Y"]), null_space=sim.null_space)
    yn = out.y_scale[:, None, None]
    return s, out, s["Y"] / yn, s["X"] * out.l_scale / yn


def test_nmse_from_stats_matches_posterior_mean():
    """The T-free loss equals the error of the posterior mean on Y."""
    s, out, Yn, Xn = _solved(6, 3)
    with torch.no_grad():
        direct = nmse(out.posterior_mean(s["Y"]), s["X"])
    T = s["Y"].shape[-1]
    from mne_unfolded_sbl.core.solver import posterior_kernel

    with torch.no_grad():
        K = posterior_kernel(out.L_n, out.gamma_n, out.lam_n, out.null_space)
    stats = nmse_from_stats(K, out.Cy_n, Xn @ Yn.transpose(1, 2) / T,
                            Xn.square().sum((1, 2)) / T)
    np.testing.assert_allclose(stats.numpy(), direct.numpy(), rtol=1e-9)
    # the low-rank form (what the bank stores) gives the same errors
    F, A = lowrank_cross(Xn, Yn, SIM.n_sources[1])
    np.testing.assert_allclose((F @ A).numpy(),
                               (Xn @ Yn.transpose(1, 2) / T).numpy(),
                               rtol=1e-9, atol=1e-12)
    with torch.no_grad():
        low = nmse_lowrank(out.L_n, out.L_n.T.contiguous(), out.gamma_n,
                           out.lam_n, out.null_space, out.Cy_n, F, A,
                           Xn.square().sum((1, 2)) / T)
    np.testing.assert_allclose(low.numpy(), direct.numpy(), rtol=1e-8)


def test_bank_reference_is_classical_and_advance_equals_full_run():
    """l_ref is classical CB per layer; cached prefixes equal a full run."""
    bank = SampleBank([_spec(), _spec("b", M=16, seed=1, weight=0.5)], 24, SIM,
                      0, NET, "cpu", torch.float64)
    assert [s.n for s in bank.shards] == [16, 8]
    shard = bank.shards[0]
    idx = torch.arange(shard.n)
    # the reference after layer k is classical CB run for k + 1 iterations
    cb = classical_network(4, True)
    out = cb.run(shard.problem(idx), stop=2)
    np.testing.assert_allclose(
        shard.errors(idx, out.gamma_n, out.lam_n).nmse.numpy(),
                               shard.l_ref[:, 1].numpy(), rtol=1e-10)
    # a network's cached prefix after 2 layers, then 2 more, is the full run
    net = _perturbed(UnfoldedSBL(4, "deep-cb", True).double())
    with torch.no_grad():
        full = net.run(shard.problem(idx))
        bank.move_to(net, 2)
        assert bank.position == 2
        rest = net.run(shard.problem(idx), start=2)
    np.testing.assert_allclose(rest.gamma_n.numpy(), full.gamma_n.numpy(),
                               rtol=1e-9)
    bank.move_to(net, 0)  # back to the start
    np.testing.assert_allclose(shard.problem(idx).state.gamma.numpy(),
                               shard.initial_state(idx)[0].numpy())
    # draws are seeded and follow the shard weights
    a, b = bank.draw(3, 5, 8), bank.draw(3, 5, 8)
    assert a[0] is b[0] and torch.equal(a[1], b[1])


def _bank_config(tmp_path, **kw):
    base = dict(out_dir=str(tmp_path / "run"), progress=False, n_layers=3,
                phase_steps=3, finetune_steps=2, batch_size=8, val_size=16,
                log_interval=1, num_threads=1, data_mode="bank",
                bank_size=32, harm_weight=2.0, beta_ds=0.3,
                simulation=dict(n_sources=[1, 4], n_times=30))
    base.update(kw)
    return load_config(TINY, **base)


def test_bank_training_runs_resumes_and_logs_reference(tmp_path, monkeypatch):
    """A bank run trains every phase, logs CB's reference and resumes exactly."""
    specs = [_spec(), _spec("b", M=16, seed=1)]
    lfs = _leadfields(specs[0])
    cfg = _bank_config(tmp_path)
    tr = Trainer(cfg, leadfields=lfs, bank_specs=specs)
    assert tr.run() == "finished"
    recs = [json.loads(x) for x in (tmp_path / "run" / cfg.log_file)
            .read_text().splitlines()]
    vals = [r for r in recs if r["event"] == "val"]
    first = vals[0]
    # before training the network is classical: its error is the reference
    assert first["val_loss"] == pytest.approx(first["val_ref"], rel=1e-6)
    assert set(first["val_shards"]) == {"toy", "b"}
    assert vals[-1]["val_loss_final"] is not None
    # shards given as arrays: counts recorded, channel types unknown
    dom = tr.training_domain()
    assert dom["n_sensors"] == [16, specs[0].L_inv.shape[0]]
    assert dom["ch_types"] is None
    # resume: stop after the first phase, continue, same final weights
    cfg2 = _bank_config(tmp_path, out_dir=str(tmp_path / "run2"))
    t2 = Trainer(cfg2, leadfields=lfs, bank_specs=specs)
    assert t2.run(stop_after_phase=0) == "stopped"
    t3 = Trainer(cfg2, resume=True, leadfields=lfs, bank_specs=specs)
    assert t3.run() == "finished"
    for (k, v), (k2, v2) in zip(tr.net.state_dict().items(),
                                t3.net.state_dict().items()):
        assert k == k2
        torch.testing.assert_close(v, v2, rtol=1e-5, atol=1e-7)


def _leadfields(spec):
    from mne_unfolded_sbl.core.leadfield import LeadField

    names = [f"E{i}" for i in range(spec.L_inv.shape[0])]
    return (LeadField(spec.L_inv, spec.pos, names),
            LeadField(spec.L_sims[1], spec.pos, names))


def test_bank_config_errors():
    with pytest.raises(ValueError, match="montage/spacing"):
        load_config(TINY, data_mode="bank", bank_shards=["train-64"])
    with pytest.raises(ValueError, match="harm_weight needs"):
        load_config(TINY, harm_weight=1.0)
    with pytest.raises(ValueError, match="one weight per entry"):
        load_config(TINY, data_mode="bank", bank_shards=["a/ico3", "b/ico3"],
                    bank_shard_weights=[1.0])
    with pytest.raises(ValueError, match="data_mode"):
        load_config(TINY, data_mode="cache")


def test_bank_save_load_roundtrip(tmp_path):
    specs = [_spec(), _spec("b", M=16, seed=1, weight=0.5)]
    bank = SampleBank(specs, 12, SIM, 0, NET, "cpu", torch.float64)
    bank.save(tmp_path / "bank.pt")
    back = SampleBank.load(tmp_path / "bank.pt", specs, 12, SIM, 0, NET, "cpu",
                           torch.float64)
    for a, b in zip(bank.shards, back.shards):
        assert a.n == b.n and a.name == b.name
        torch.testing.assert_close(a.l_ref, b.l_ref)
        idx = torch.arange(a.n)
        torch.testing.assert_close(a.errors(idx, a.gamma, a.lam).nmse,
                                   b.errors(idx, b.gamma, b.lam).nmse)
    with pytest.raises(ValueError, match="not a bank of this layout"):
        SampleBank.load(tmp_path / "bank.pt", specs[:1], 12, SIM, 0, NET, "cpu",
                        torch.float64)


def _rank_of_sources(shard, tol=1e-6):
    """Number of sources of every bank sample: the rank of ``X Y^T / T``."""
    A = shard.A.to(torch.float64)
    s = torch.linalg.svdvals(A)
    return (s > tol * s[:, :1]).sum(-1).tolist()


def test_bank_regime_mixture_splits_samples_and_keeps_plain_banks():
    """A mixture simulates every regime; a one-regime list is the plain bank."""
    one = SimulationConfig(n_sources=(1, 1), n_times=30, snr_db=(0.0, 20.0))
    many = SimulationConfig(n_sources=(6, 8), n_times=(60, 80),
                            snr_db=(0.0, 20.0))
    spec = _spec()
    mix = SampleBank([spec], 48, [(1.0, one), (3.0, many)], 0, NET, "cpu",
                     torch.float64)
    ranks = _rank_of_sources(mix.shards[0])
    # (band-limited time courses of several sources may be near-collinear)
    assert all(r == 1 or 3 <= r <= 8 for r in ranks)
    n_one = ranks.count(1)
    assert 2 <= n_one <= 24  # about a quarter of 48, both regimes present
    # every sample knows its regime: single sources are regime 0
    regime = mix.shards[0].regime.tolist()
    assert all((g == 0) == (r == 1) for g, r in zip(regime, ranks))
    again = SampleBank([spec], 48, [(1.0, one), (3.0, many)], 0, NET, "cpu",
                       torch.float64)
    torch.testing.assert_close(mix.shards[0].Cy, again.shards[0].Cy, rtol=0,
                               atol=0)
    # a single regime draws exactly what a plain config draws
    plain = SampleBank([spec], 20, SIM, 0, NET, "cpu", torch.float64)
    listed = SampleBank([spec], 20, [(2.0, SIM)], 0, NET, "cpu", torch.float64)
    for k in ("Cy", "F", "A", "cxx", "nv", "l_ref", "regime"):
        torch.testing.assert_close(getattr(plain.shards[0], k),
                                   getattr(listed.shards[0], k), rtol=0, atol=0)
    assert not plain.shards[0].regime.any()


def test_regime_hinge_pays_for_every_regime_made_worse_on_average():
    from mne_unfolded_sbl.training.loss import (LOG_RATIO_EPS, LossModule,
                                                regime_means)

    r = torch.tensor([1.0, -3.0, 0.5, 0.25, -1.0])
    g = torch.tensor([0, 0, 1, 1, 2])
    torch.testing.assert_close(regime_means(r, g), torch.tensor([-1.0, 0.375, -1.0]))
    one = SimulationConfig(n_sources=(1, 1), n_times=30, snr_db=(0.0, 20.0))
    bank = SampleBank([_spec()], 32, [(1.0, one), (1.0, SIM)], 0, NET, "cpu",
                      torch.float64)
    loss, net, shard, idx, out = _log_ratio_loss(bank, 16, regime_weight=5.0)
    err = shard.errors(idx, out.gamma_n, out.lam_n).nmse.detach()
    r = torch.log(err + LOG_RATIO_EPS) - torch.log(shard.l_ref[idx, 3]
                                                   + LOG_RATIO_EPS)
    reg = shard.regime[idx]
    assert set(reg.tolist()) == {0, 1}
    means = torch.stack([r[reg == k].mean() for k in (0, 1)])
    assert (means > 0).any()  # the hinge is active here
    want = r.mean() + 2.0 * torch.relu(r).mean() + 5.0 * torch.relu(means).mean()
    np.testing.assert_allclose(float(loss.detach()), float(want), rtol=1e-9)
    with pytest.raises(ValueError, match="regime_weight"):
        LossModule(net, "nmse", regime_weight=1.0)
    with pytest.raises(ValueError, match="regime_weight"):
        load_config(TINY, regime_weight=1.0)


def test_log_ratio_objective_matches_its_formula():
    """loss='log-ratio': mean log(l/l_cb) plus the hinge, zero for CB itself."""
    from mne_unfolded_sbl.training.loss import LOG_RATIO_EPS, LossModule

    bank = SampleBank([_spec()], 16, SIM, 0, NET, "cpu", torch.float64)
    batch = bank.batch(0, 0, 8)
    shard, idx = batch["shard"], batch["idx"]
    cb = LossModule(classical_network(4, True).double(), "log-ratio")
    loss, l_final, _ = cb(None, batch, 4, harm_weight=3.0)
    assert float(loss) == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(float(l_final),
                               float(shard.l_ref[idx, 3].mean()), rtol=1e-9)
    net = _perturbed(UnfoldedSBL(4, "deep-cb", True).double())
    mod = LossModule(net, "log-ratio")
    loss, _, _ = mod(None, batch, 4, harm_weight=3.0)
    with torch.no_grad():
        out = net.run(shard.problem(idx))
        err = shard.errors(idx, out.gamma_n, out.lam_n).nmse
    r = torch.log(err + LOG_RATIO_EPS) - torch.log(shard.l_ref[idx, 3]
                                                   + LOG_RATIO_EPS)
    want = r.mean() + 3.0 * torch.relu(r).mean()
    np.testing.assert_allclose(float(loss.detach()), float(want), rtol=1e-9)
    assert float(loss.detach()) != 0.0
    loss.backward()  # the objective is differentiable end to end
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for p in net.parameters())
    # the plain NMSE objective is unchanged: mean error plus its hinge
    loss_n, _, _ = LossModule(net, "nmse")(None, batch, 4, harm_weight=3.0)
    want_n = err.mean() + 3.0 * torch.relu(err - shard.l_ref[idx, 3]).mean()
    np.testing.assert_allclose(float(loss_n.detach()), float(want_n), rtol=1e-9)
    with pytest.raises(ValueError, match="objective"):
        LossModule(net, "mse")


def test_log_ratio_config_round_trip_and_errors(tmp_path):
    from mne_unfolded_sbl.training.config import write_config

    regimes = [dict(weight=2.0, n_sources=[1, 2], spread=[0.0, 0.0]),
               dict(weight=1.0, snr_db=[-5.0, 0.0])]
    cfg = load_config(TINY, data_mode="bank", loss="log-ratio",
                      bank_regimes=regimes, harm_weight=1.0)
    back = load_config(write_config(cfg, tmp_path / "c.toml"))
    assert back == cfg
    w = [w for w, _ in back.regime_configs()]
    assert w == [2.0, 1.0]
    assert back.regime_configs()[0][1].n_sources == (1, 2)
    # the regime overrides the [simulation] table, the rest is inherited
    assert back.regime_configs()[1][1].n_sources == \
        back.simulation_config().n_sources
    with pytest.raises(ValueError, match="log-ratio' needs data_mode"):
        load_config(TINY, loss="log-ratio")
    with pytest.raises(ValueError, match="loss must be one of"):
        load_config(TINY, loss="l1")
    with pytest.raises(ValueError, match="weight > 0"):
        load_config(TINY, data_mode="bank", bank_regimes=[dict(n_sources=[1, 2])])
    with pytest.raises(ValueError, match="Unknown keys"):
        load_config(TINY, data_mode="bank",
                    bank_regimes=[dict(weight=1.0, n_source=[1, 2])])
    with pytest.raises(ValueError, match="bank_regimes needs"):
        load_config(TINY, bank_regimes=[dict(weight=1.0)])


def test_log_ratio_bank_training_starts_at_zero(tmp_path):
    specs = [_spec()]
    cfg = _bank_config(tmp_path, loss="log-ratio", bank_regimes=[
        dict(weight=1.0, n_sources=[1, 1]), dict(weight=1.0)],
        spatial_weight=1.0, regime_weight=2.0)
    tr = Trainer(cfg, leadfields=_leadfields(specs[0]), bank_specs=specs)
    assert tr.run() == "finished"
    vals = [json.loads(x) for x in (tmp_path / "run" / cfg.log_file)
            .read_text().splitlines()]
    vals = [r for r in vals if r["event"] == "val"]
    assert vals[0]["val_log_ratio"] == pytest.approx(0.0, abs=1e-9)
    assert all(np.isfinite(r["val_log_ratio"]) for r in vals)
    # per regime too: the classical solver against itself, both regimes
    first = vals[0]["val_regimes"]
    assert sorted(first) == ["0", "1"]
    assert np.allclose(list(first.values()), 0.0, atol=1e-9)
    assert vals[-1]["val_regimes"] != first


def test_feature_set_config_builds_the_network_it_names():
    from mne_unfolded_sbl.core.network import UnfoldedSBL

    cfg = load_config(TINY, features="absolute")
    net = UnfoldedSBL(**cfg.network_kwargs(120, 20))
    assert net.config["features"] == "absolute"
    assert load_config(TINY).network_kwargs(120, 20)["features"] == "relative"
    with pytest.raises(ValueError, match="features must be one of"):
        load_config(TINY, features="raw")


def test_shape_error_is_the_error_of_the_best_scaled_estimate():
    """nmse_lowrank(shape=True): min_a ||a Xhat - X||^2 / ||X||^2."""
    s, out, Yn, Xn = _solved(5, 4)
    spec = _spec()
    T = s["Y"].shape[-1]
    from mne_unfolded_sbl.core.solver import posterior_kernel

    with torch.no_grad():
        K = posterior_kernel(out.L_n, out.gamma_n, out.lam_n, out.null_space)
        Xh = K @ Yn
        F, A = lowrank_cross(Xn, Yn, SIM.n_sources[1])
        err, shape, rms = nmse_lowrank(
            out.L_n, out.L_n.T.contiguous(), out.gamma_n, out.lam_n,
            out.null_space, out.Cy_n, F, A, Xn.square().sum((1, 2)) / T,
            shape=True, rms=True)
    # the RMS map of the estimate, from the same statistics
    np.testing.assert_allclose(rms, Xh.square().mean(-1).sqrt(), rtol=1e-8,
                               atol=1e-14)
    for b in range(5):
        xh, x = Xh[b].ravel().numpy(), Xn[b].ravel().numpy()
        a = xh @ x / (xh @ xh)  # the best scale
        best = np.sum((a * xh - x) ** 2) / np.sum(x ** 2)
        assert shape[b].item() == pytest.approx(best, rel=1e-7, abs=1e-12)
        assert shape[b].item() <= err[b].item() + 1e-12
    # the bank's classical shape references are those of classical CB
    bank = SampleBank([spec], 8, SIM, 0, NET, "cpu", torch.float64)
    sh = bank.shards[0]
    idx = torch.arange(sh.n)
    cb = classical_network(4, True).double()
    with torch.no_grad():
        o = cb.run(sh.problem(idx))
    np.testing.assert_allclose(sh.errors(idx, o.gamma_n, o.lam_n,
                                         shape=True).shape,
                               sh.s_ref[:, 3], rtol=1e-10)


def test_shape_term_adds_the_log_ratio_of_shape_errors():
    from mne_unfolded_sbl.training.loss import LOG_RATIO_EPS, LossModule

    bank = SampleBank([_spec()], 16, SIM, 0, NET, "cpu", torch.float64)
    loss, net, shard, idx, out = _log_ratio_loss(bank, 8, shape_weight=0.5)
    with torch.no_grad():
        err, shape, *_ = shard.errors(idx, out.gamma_n, out.lam_n, shape=True)

    def scored(e, ref):
        r = torch.log(e + LOG_RATIO_EPS) - torch.log(ref + LOG_RATIO_EPS)
        return r.mean() + 2.0 * torch.relu(r).mean()

    want = scored(err, shard.l_ref[idx, 3]) + 0.5 * scored(shape,
                                                           shard.s_ref[idx, 3])
    np.testing.assert_allclose(float(loss.detach()), float(want), rtol=1e-9)
    with pytest.raises(ValueError, match="shape_weight"):
        LossModule(net, "nmse", shape_weight=1.0)
    with pytest.raises(ValueError, match="shape_weight"):
        load_config(TINY, shape_weight=1.0)


def test_bank_of_another_format_is_refused_and_a_saved_one_reloads(tmp_path):
    specs = [_spec()]
    bank = SampleBank(specs, 10, SIM, 0, NET, "cpu", torch.float64)
    bank.save(tmp_path / "bank.pt")
    back = SampleBank.load(tmp_path / "bank.pt", specs, 10, SIM, 0, NET, "cpu",
                           torch.float64)
    for name in ("x_rms", "l_ref", "s_ref", "e_ref", "f_ref"):
        torch.testing.assert_close(getattr(back.shards[0], name),
                                   getattr(bank.shards[0], name))
    d = torch.load(tmp_path / "bank.pt", weights_only=True)
    d["format"] = 1  # a bank written before the spatial references
    torch.save(d, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="not a bank of this layout"):
        SampleBank.load(tmp_path / "old.pt", specs, 10, SIM, 0, NET, "cpu",
                        torch.float64)


def test_energy_distance_against_analytic_cases_and_the_exact_emd():
    import ot
    from scipy.spatial.distance import cdist

    from mne_unfolded_sbl.training.loss import energy_distance

    pos = _spec().pos
    D = torch.as_tensor(cdist(pos, pos))
    N = len(pos)
    # two point masses d apart: 2 d; proportional maps: 0
    a, b = torch.zeros(2, N, dtype=torch.float64), torch.zeros(2, N, dtype=torch.float64)
    a[0, 3], b[0, 70] = 1.0, 5.0
    a[1] = torch.rand(N, generator=torch.Generator().manual_seed(0))
    b[1] = 3.0 * a[1]
    e = energy_distance(a, b, D)
    assert e[0].item() == pytest.approx(2 * D[3, 70].item(), rel=1e-12)
    assert e[1].item() == pytest.approx(0.0, abs=1e-12)
    # a threshold drops the sources below that fraction of each map's peak
    # (the benchmark's emd_threshold): a weak far-off source counts without
    # it, not with it
    b[0, 100] = 0.04  # 0.8 % of the peak
    assert energy_distance(a, b, D)[0].item() != pytest.approx(
        2 * D[3, 70].item(), rel=1e-6)
    assert energy_distance(a, b, D, 0.01)[0].item() == pytest.approx(
        2 * D[3, 70].item(), rel=1e-12)
    b[0, 100] = 0.0
    # random sparse maps: the formula, and 0 <= E <= 2 W1 (exact EMD)
    rng = np.random.default_rng(1)
    m = rng.random((2, 6, N)) * (rng.random((2, 6, N)) < 0.1)
    e = energy_distance(torch.as_tensor(m[0]), torch.as_tensor(m[1]), D).numpy()
    for k in range(6):
        p, q = m[0, k] / m[0, k].sum(), m[1, k] / m[1, k].sum()
        assert e[k] == pytest.approx(2 * p @ D.numpy() @ q - p @ D.numpy() @ p
                                     - q @ D.numpy() @ q, rel=1e-10)
        w1 = ot.emd2(p, q, D.numpy())
        assert 0 < e[k] <= 2 * w1 + 1e-12


def test_spatial_term_adds_the_log_ratio_of_spatial_errors():
    from mne_unfolded_sbl.training.loss import (LOG_RATIO_EPS, SPATIAL_EPS,
                                                SPATIAL_THRESHOLD, LossModule,
                                                energy_distance)

    bank = SampleBank([_spec()], 16, SIM, 0, NET, "cpu", torch.float64)
    shard = bank.shards[0]
    # the bank's classical spatial references are those of classical CB
    rms = _classical_rms(shard)
    np.testing.assert_allclose(energy_distance(shard.x_rms, rms, shard.dist,
                                               SPATIAL_THRESHOLD),
                               shard.e_ref[:, 3], rtol=1e-10)
    loss, net, shard, idx, out = _log_ratio_loss(bank, 8, spatial_weight=0.7)
    with torch.no_grad():
        e = shard.errors(idx, out.gamma_n, out.lam_n, spatial=True)
        err, spatial = e.nmse, e.spatial

    def scored(e, ref, eps):
        r = torch.log(e + eps) - torch.log(ref + eps)
        return r.mean() + 2.0 * torch.relu(r).mean()

    want = (scored(err, shard.l_ref[idx, 3], LOG_RATIO_EPS)
            + 0.7 * scored(spatial, shard.e_ref[idx, 3], SPATIAL_EPS))
    np.testing.assert_allclose(float(loss.detach()), float(want), rtol=1e-9)
    assert float(loss.detach()) != pytest.approx(
        float(scored(err, shard.l_ref[idx, 3], LOG_RATIO_EPS)))
    with pytest.raises(ValueError, match="spatial_weight"):
        LossModule(net, "nmse", spatial_weight=1.0)
    with pytest.raises(ValueError, match="spatial_weight"):
        load_config(TINY, spatial_weight=1.0)


def test_support_error_against_analytic_cases_and_the_benchmark_f1():
    from mne_unfolded_sbl.core.metrics import precision_recall_f1
    from mne_unfolded_sbl.training.loss import support_error

    N = 50
    t = torch.zeros(4, N, dtype=torch.float64)
    t[:, [3, 10]] = torch.tensor([1.0, 0.5], dtype=torch.float64)
    e = torch.zeros(4, N, dtype=torch.float64)
    e[0, [3, 10]] = torch.tensor([2.0, 1.0], dtype=torch.float64)  # exact
    e[1, [3, 10, 20]] = torch.tensor([2.0, 1.0, 1.0], dtype=torch.float64)
    e[2, 3] = 1.0  # one of two found, a weak source well below 10 %
    e[2, 30] = 0.01
    # e[3] = 0: nothing found
    err = support_error(t, e).numpy()
    # F1 = 2 tp / (|S_true| + |S_est|): the step is 0 / 1 away from 10 %
    np.testing.assert_allclose(err, [0.0, 1 - 4 / 5, 1 - 2 / 3, 1.0],
                               atol=1e-12)
    # within the step: a source at the threshold counts half
    e[3, 3], e[3, 40] = 1.0, 0.1
    assert support_error(t[3:], e[3:]).item() == pytest.approx(
        1 - 2 * 1 / (2 + 1.5), abs=1e-12)
    # random maps with no value near the threshold: 1 - the benchmark's F1
    rng = np.random.default_rng(0)
    for _ in range(5):
        x = rng.random((2, N)) * (rng.random((2, N)) < 0.3)
        for m in x:  # no ratio within the step around 0.1
            r = m / m.max()
            m[np.abs(r - 0.1) < 0.06] = 0.0
        f1 = precision_recall_f1(x[0][:, None], x[1][:, None])[2]
        got = support_error(torch.as_tensor(x[:1]), torch.as_tensor(x[1:]))
        assert got.item() == pytest.approx(1 - f1, abs=1e-12)
    # differentiable: a gradient for the sources within the step (and the
    # peak), none for the others
    e1 = e[3:4].clone().requires_grad_(True)
    support_error(t[:1], e1).sum().backward()
    assert e1.grad[0, 40] > 0 and e1.grad[0, 3] != 0
    assert torch.isfinite(e1.grad).all()
    assert (e1.grad[0, [n for n in range(N) if n not in (3, 40)]] == 0).all()


def test_support_term_adds_the_log_ratio_of_support_errors():
    from mne_unfolded_sbl.training.loss import (LOG_RATIO_EPS, SUPPORT_EPS,
                                                LossModule, support_error)

    bank = SampleBank([_spec()], 16, SIM, 0, NET, "cpu", torch.float64)
    shard = bank.shards[0]
    # the bank's classical support references are those of classical CB
    rms = _classical_rms(shard)
    np.testing.assert_allclose(support_error(shard.x_rms, rms),
                               shard.f_ref[:, 3], rtol=1e-10)
    assert (shard.f_ref[:, 3] > 0).any()
    loss, net, shard, idx, out = _log_ratio_loss(bank, 8, support_weight=0.4)
    with torch.no_grad():
        e = shard.errors(idx, out.gamma_n, out.lam_n, support=True)
    assert e.shape is None and e.spatial is None

    def scored(x, ref, eps):
        r = torch.log(x + eps) - torch.log(ref + eps)
        return r.mean() + 2.0 * torch.relu(r).mean()

    want = (scored(e.nmse, shard.l_ref[idx, 3], LOG_RATIO_EPS)
            + 0.4 * scored(e.support, shard.f_ref[idx, 3], SUPPORT_EPS))
    np.testing.assert_allclose(float(loss.detach()), float(want), rtol=1e-9)
    assert float(loss.detach()) != pytest.approx(
        float(scored(e.nmse, shard.l_ref[idx, 3], LOG_RATIO_EPS)))
    with pytest.raises(ValueError, match="support_weight"):
        LossModule(net, "nmse", support_weight=1.0)
    with pytest.raises(ValueError, match="support_weight"):
        load_config(TINY, support_weight=1.0)
