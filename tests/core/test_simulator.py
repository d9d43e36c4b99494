"""Tests of the array EEG simulator (mne_unfolded_sbl.core.simulator)."""

import numpy as np
import pytest
import torch
from scipy.signal import periodogram

from mne_unfolded_sbl.core.simulator import (
    DEFAULT_BANDS,
    EEGSimulator,
    SimulationConfig,
    derive_seed,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _fibonacci_sphere(n, radius, center):
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    theta = np.pi * (1 + 5**0.5) * i
    xyz = np.c_[np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)]
    return radius * xyz + np.asarray(center)


@pytest.fixture(scope="module")
def geometry():
    """Two 'hemispheres' of 150 sources each and a random 24-sensor lead field."""
    rng = np.random.default_rng(42)
    pos = np.concatenate([
        _fibonacci_sphere(150, 0.03, (-0.035, 0.0, 0.02)),
        _fibonacci_sphere(150, 0.03, (0.035, 0.0, 0.02)),
    ])
    L = rng.standard_normal((24, pos.shape[0]))
    return L, pos


def _np(x):
    return x.detach().cpu().numpy()


# ----------------------------------------------------------------------------
# configuration


def test_config_defaults_and_validation():
    c = SimulationConfig()
    assert c.n_sources == (5, 20)
    assert c.spread == (0.001, 0.003)
    assert c.snr_db == (5.0, 30.0)
    assert (c.sfreq, c.n_times) == (100.0, 100)
    assert c.bands == DEFAULT_BANDS
    assert list(c.bands) == ["delta", "theta", "alpha", "mu", "beta"]
    # scalars mean fixed values (for sweeps)
    c2 = c.replace(snr_db=10, n_sources=3, spread=0.0)
    assert c2.snr_db == (10.0, 10.0)
    assert c2.n_sources == (3, 3)
    assert c2.spread == (0.0, 0.0)
    assert c.snr_db == (5.0, 30.0)  # original untouched
    with pytest.raises(ValueError, match="low <= high"):
        SimulationConfig(snr_db=(30.0, 5.0))
    with pytest.raises(ValueError, match=">= 1"):
        SimulationConfig(n_sources=(0, 3))
    with pytest.raises(ValueError, match="spread"):
        SimulationConfig(spread=(-0.001, 0.002))
    with pytest.raises(ValueError, match="sfreq / 2"):
        SimulationConfig(bands={"gamma": (30.0, 80.0)})
    with pytest.raises(TypeError, match="n_sources"):
        SimulationConfig(n_sources=(1.5, 3))
    with pytest.raises(ValueError, match="pair"):
        SimulationConfig(snr_db=(1.0, 2.0, 3.0))


def test_simulator_validation(geometry):
    L, pos = geometry
    with pytest.raises(ValueError, match="pos has"):
        EEGSimulator(L, pos[:10])
    with pytest.raises(ValueError, match="exceeds"):
        EEGSimulator(L[:, :10], pos[:10])  # default n_sources up to 20 > 10
    with pytest.raises(ValueError, match="dtype"):
        EEGSimulator(L, pos, dtype=torch.float16)
    sim = EEGSimulator(L, pos, seed=0)
    with pytest.raises(ValueError, match="at most one"):
        sim.sample(2, torch.Generator(), seed=1)
    with pytest.raises(ValueError, match="batch_size"):
        sim.sample(0)
    with pytest.warns(RuntimeWarning, match="contains no DFT bin"):
        EEGSimulator(L, pos, SimulationConfig(n_times=10))  # 10 Hz resolution


# ----------------------------------------------------------------------------
# reproducibility, shapes, dtypes


def test_seed_reproducibility(geometry):
    L, pos = geometry
    sim = EEGSimulator(L, pos, seed=0)
    a, b, c = sim.sample(4, seed=123), sim.sample(4, seed=123), sim.sample(4, seed=124)
    for key in a:
        assert torch.equal(torch.nan_to_num(a[key]), torch.nan_to_num(b[key])), key
    assert not torch.equal(a["Y"], c["Y"])
    assert not torch.equal(a["X"], c["X"])
    # the simulator's own generator: seeded at construction, then advances
    s1 = EEGSimulator(L, pos, seed=7).sample(3)
    s2 = EEGSimulator(L, pos, seed=7).sample(3)
    assert torch.equal(s1["Y"], s2["Y"])
    sim7 = EEGSimulator(L, pos, seed=7)
    sim7.sample(3)
    assert not torch.equal(sim7.sample(3)["Y"], s1["Y"])
    # an explicit generator
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(sim.sample(2, g1)["X"], sim.sample(2, g2)["X"])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_dtypes_ranges(geometry, dtype, device):
    L, pos = geometry
    config = SimulationConfig(n_sources=(2, 6), n_times=64)
    sim = EEGSimulator(
        torch.as_tensor(L), pos, config, dtype=dtype, device=device, seed=0
    )
    B, (M, N), K, T = 16, L.shape, 6, 64
    out = sim.sample(B)
    shapes = dict(
        Y=(B, M, T), X=(B, N, T), noise_var=(B, M), snr_db=(B, M), n_active=(B,),
        active=(B, K), centers=(B, K), bands=(B, K), spread=(B, K),
        amplitude=(B, K), waveforms=(B, K, T), noise_var_given=(B, M),
        footprint_kind=(B, K), diffusion_order=(B, K), waveform_kind=(B, K),
        noise_heterogeneity=(B,), noise_color=(B,), noise_cov_scale=(B,),
        adhoc_cov=(B,),
    )
    assert set(out) == set(shapes)
    for key, shape in shapes.items():
        assert out[key].shape == shape, key
        assert out[key].device.type == device, key
    for key in ("Y", "X", "noise_var", "snr_db", "spread", "amplitude", "waveforms",
                "noise_var_given", "noise_heterogeneity", "noise_color",
                "noise_cov_scale"):
        assert out[key].dtype == dtype, key
    for key in ("n_active", "centers", "bands", "footprint_kind",
                "diffusion_order", "waveform_kind"):
        assert out[key].dtype == torch.int64, key
    assert out["adhoc_cov"].dtype == torch.bool
    # defaults: the options are off
    assert torch.equal(out["noise_var_given"], out["noise_var"])
    assert (out["footprint_kind"] == torch.where(out["active"], 0, -1)).all()
    assert (out["waveform_kind"] == torch.where(out["active"], 0, -1)).all()
    assert (out["diffusion_order"] == -1).all()
    assert not out["adhoc_cov"].any()
    assert (out["noise_cov_scale"] == 1).all() and (out["noise_color"] == 0).all()
    assert torch.isfinite(out["Y"]).all() and torch.isfinite(out["X"]).all()
    n_active = _np(out["n_active"])
    assert n_active.min() >= 2 and n_active.max() <= 6
    assert len(np.unique(n_active)) > 1  # really random
    centers, bands, spread = _np(out["centers"]), _np(out["bands"]), _np(out["spread"])
    amp = _np(out["amplitude"])
    for b in range(B):
        k = n_active[b]
        assert np.array_equal(_np(out["active"][b]), np.arange(K) < k)
        assert len(np.unique(centers[b, :k])) == k  # distinct centres
        assert (centers[b, :k] >= 0).all() and (centers[b, :k] < N).all()
        assert (centers[b, k:] == -1).all() and (bands[b, k:] == -1).all()
        assert np.isnan(spread[b, k:]).all() and (amp[b, k:] == 0).all()
        assert (bands[b, :k] >= 0).all() and (bands[b, :k] < 5).all()
        assert ((spread[b, :k] >= 0.001) & (spread[b, :k] <= 0.003)).all()
        assert ((amp[b, :k] >= 0.5) & (amp[b, :k] <= 1.0)).all()
        # active sources of X: only near the drawn centres
        assert np.any(_np(out["X"][b]), axis=1)[centers[b, :k]].all()
    snr = _np(out["snr_db"])
    assert snr.min() >= 5.0 and snr.max() <= 30.0


# ----------------------------------------------------------------------------
# model consistency


def _footprint_np(pos, center, sigma, thresh):
    d2 = np.sum((pos - pos[center]) ** 2, axis=1)
    w = np.exp(-d2 / (2 * sigma**2)) if sigma > 0 else (d2 == 0).astype(float)
    w[w < thresh] = 0.0
    return w


def test_X_is_superposition_of_footprints(geometry):
    """X must equal sum_k a_k w_k s_k^T recomputed independently in NumPy."""
    L, pos = geometry
    config = SimulationConfig(spread=(0.003, 0.012))
    sim = EEGSimulator(L, pos, config, dtype=torch.float64, seed=1)
    out = sim.sample(5)
    for b in range(5):
        k = int(out["n_active"][b])
        X = np.zeros((pos.shape[0], config.n_times))
        for j in range(k):
            w = _footprint_np(pos, int(out["centers"][b, j]),
                              float(out["spread"][b, j]), 1e-3)
            amp = float(out["amplitude"][b, j])
            X += np.outer(w, amp * _np(out["waveforms"][b, j]))
        np.testing.assert_allclose(_np(out["X"][b]), X, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_realised_snr_and_noise_var(geometry, dtype):
    L, pos = geometry
    config = SimulationConfig(n_times=2000, reference="none")
    sim = EEGSimulator(L, pos, config, dtype=dtype, seed=3)
    assert sim.null_space is None
    out = sim.sample(4)
    X, Y = out["X"].double(), out["Y"].double()
    clean = torch.as_tensor(L) @ X
    noise = Y - clean
    sig_pow = clean.pow(2).mean(-1)
    # noise_var is defined from the clean power and the drawn SNR ...
    expected = sig_pow / 10 ** (out["snr_db"].double() / 10)
    rtol = 1e-4 if dtype == torch.float32 else 1e-10
    np.testing.assert_allclose(_np(out["noise_var"]).astype(float), _np(expected),
                               rtol=rtol)
    # ... and the actual noise realisation has that variance (chi2 with 2000 dof:
    # std of 10 log10 ratio ~ 0.14 dB; 96 sensors -> max well below 0.75 dB)
    realised = 10 * torch.log10(sig_pow / noise.pow(2).mean(-1))
    err = _np(realised - out["snr_db"].double())
    assert np.abs(err).max() < 0.75
    assert abs(err.mean()) < 0.1
    emp_var = _np(noise.var(-1))
    np.testing.assert_allclose(emp_var / _np(out["noise_var"].double()), 1.0, atol=0.2)
    # heteroscedastic: SNRs differ across sensors of one sample
    assert _np(out["snr_db"][0]).std() > 3.0


def test_fixed_snr_and_sources(geometry):
    L, pos = geometry
    config = SimulationConfig(snr_db=12.5, n_sources=4, spread=0.002, amplitude=0.7)
    out = EEGSimulator(L, pos, config, seed=0).sample(8)
    assert (out["snr_db"] == 12.5).all()
    assert (out["n_active"] == 4).all()
    assert torch.allclose(out["spread"], torch.tensor(0.002))
    assert torch.allclose(out["amplitude"], torch.tensor(0.7))


def test_band_limited_time_courses(geometry):
    """>= 95 % of each source's power lies in its band (periodogram check)."""
    L, pos = geometry
    config = SimulationConfig(n_times=500, spread=0.0, n_sources=(3, 5))
    sim = EEGSimulator(L, pos, config, dtype=torch.float64, seed=11)
    out = sim.sample(20)
    names = sim.band_names
    assert names == list(DEFAULT_BANDS)
    seen = set()
    for b in range(20):
        for j in range(int(out["n_active"][b])):
            c, band = int(out["centers"][b, j]), int(out["bands"][b, j])
            seen.add(band)
            # spread 0: the centre row of X is amplitude * waveform
            x = _np(out["X"][b, c])
            wave = _np(out["waveforms"][b, j])
            np.testing.assert_allclose(x, float(out["amplitude"][b, j]) * wave,
                                       rtol=1e-10)
            assert abs(wave.mean()) < 1e-10
            assert np.mean(wave**2) == pytest.approx(1.0, rel=1e-10)
            f, pxx = periodogram(x, fs=config.sfreq)
            lo, hi = DEFAULT_BANDS[names[band]]
            inside = (f >= lo) & (f <= hi)
            assert pxx[inside].sum() / pxx.sum() >= 0.95, names[band]
        # spread 0: exactly n_active non-zero rows (single dipoles)
        n_rows = np.count_nonzero(np.any(_np(out["X"][b]), axis=1))
        assert n_rows == int(out["n_active"][b])
    assert seen == set(range(5))  # every band is drawn
    # the default T = 100 at 100 Hz: delta courses keep only 1-4 Hz
    sim = EEGSimulator(L, pos, SimulationConfig(spread=0.0), dtype=torch.float64,
                       seed=0)
    out = sim.sample(30)
    wave, bands = _np(out["waveforms"]), _np(out["bands"])
    spec = np.abs(np.fft.rfft(wave, axis=-1)) ** 2
    delta = spec[bands == 0]
    assert delta.shape[0] > 0
    assert np.allclose(delta[:, 5:], 0, atol=1e-20)
    beta = spec[bands == 4]
    assert np.allclose(beta[:, :12], 0, atol=1e-20)
    assert (beta[:, 12:31].sum(-1) > 0).all()


def test_footprint_gaussian_decay():
    """The centre carries the largest weight and weights follow exp(-d^2/2s^2)."""
    g = np.arange(-8, 9) * 0.001  # 1 mm lattice, 17 x 17 x 3
    pos = np.stack(np.meshgrid(g, g, np.array([-1, 0, 1]) * 0.001), -1).reshape(-1, 3)
    rng = np.random.default_rng(0)
    L = rng.standard_normal((8, pos.shape[0]))
    sigma = 0.0025
    config = SimulationConfig(n_sources=1, spread=sigma, footprint_threshold=1e-3)
    sim = EEGSimulator(L, pos, config, dtype=torch.float64, seed=0)
    out = sim.sample(6)
    for b in range(6):
        c = int(out["centers"][b, 0])
        norms = np.linalg.norm(_np(out["X"][b]), axis=1)
        assert np.argmax(norms) == c
        w = norms / norms[c]
        d = np.linalg.norm(pos - pos[c], axis=1)
        order = np.argsort(d, kind="stable")
        assert np.all(np.diff(w[order]) <= 1e-12)  # non-increasing with distance
        # fit sigma from log w = -d^2 / (2 sigma^2) on the support
        sup = (w > 0) & (d > 0)
        assert sup.sum() > 20
        inv2s2 = -np.sum(np.log(w[sup]) * d[sup] ** 2) / np.sum(d[sup] ** 4)
        assert np.sqrt(1 / (2 * inv2s2)) == pytest.approx(sigma, rel=1e-8)
        # truncation below 1e-3 of the peak
        exact = np.exp(-(d**2) / (2 * sigma**2))
        assert np.all(w[exact < 1e-3] == 0)
        assert np.all(w[exact >= 1e-3] > 0)


def test_average_reference_of_the_data(geometry):
    """The default output is the unreferenced sample with the channel mean
    removed (as MNE's average-reference projector does), same draws."""
    L, pos = geometry
    ref = EEGSimulator(L, pos, SimulationConfig(), dtype=torch.float64)
    raw = EEGSimulator(L, pos, SimulationConfig(reference="none"),
                       dtype=torch.float64)
    a, b = ref.sample(3, seed=11), raw.sample(3, seed=11)
    Yb = b["Y"] - b["Y"].mean(-2, keepdim=True)
    torch.testing.assert_close(a["Y"], Yb, rtol=0, atol=1e-12)
    torch.testing.assert_close(a["noise_var"], b["noise_var"])
    assert float(a["Y"].mean(-2).abs().max()) < 1e-12
    Q = ref.null_space.Q
    assert Q.shape == (L.shape[0], 1)
    np.testing.assert_allclose(_np(Q), 1 / np.sqrt(L.shape[0]))
    with pytest.raises(ValueError, match="reference"):
        SimulationConfig(reference="car")


def test_derive_seed():
    """One deriver: 63-bit streams for training, the benchmark's 32-bit seeds."""
    a, b = derive_seed(3, 1, 0, 2, 7), derive_seed(3, 1, 0, 2, 8)
    assert a != b and 0 <= a < 2**63 and a >= 2**32  # uses the 63 bits
    assert derive_seed(3, 1, 0, 2, 7) == a
    assert derive_seed(0, 5, bits=32) == int(
        np.random.SeedSequence([0, 5]).generate_state(1)[0])
    with pytest.raises(ValueError, match="bits"):
        derive_seed(1, bits=64)
