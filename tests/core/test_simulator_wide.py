"""Tests of the widened array simulator: noise models, footprints, waveforms,
random epoch lengths (mne_unfolded_sbl.core.simulator)."""

import numpy as np
import pytest
import torch
from scipy import sparse

from mne_unfolded_sbl.core.simulator import EEGSimulator, SimulationConfig


def _sphere(n, radius):
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    th = np.pi * (1 + 5**0.5) * i
    xyz = np.c_[np.cos(th) * np.sin(phi), np.sin(th) * np.sin(phi), np.cos(phi)]
    return radius * xyz


def _np(x):
    return x.detach().cpu().numpy()


# ----------------------------------------------------------------------------
# regression: the existing fields must draw exactly what they drew before the
# simulator was widened (published benchmark tables depend on these streams).
# The numbers below were computed with the code as of commit ce9c331 (before
# the new options existed); they were also checked bit for bit (torch.equal on
# every returned array) against a frozen copy of that code.

def _regression_geometry():
    rng = np.random.default_rng(2024)
    return rng.standard_normal((16, 120)), _sphere(120, 0.07)


_REGRESSION_CONFIGS = {
    "default": dict(),
    "custom": dict(n_sources=(1, 4), spread=(0.0, 0.01), snr_db=(0.0, 10.0),
                   n_times=50, sfreq=200.0,
                   bands={"a": (8.0, 13.0), "g": (30.0, 45.0)}, amplitude=1.0,
                   footprint_threshold=0.01, reference="none"),
}

# (config, dtype, seed): ([sum Y^2, sum |Y|, sum X^2, sum |X|, sum noise_var,
#                          noise_var[2, 5], Y[1, 2, 3]], n_active, centers[:, 0])
_REGRESSION = {
    ('default', 'float64', 0): ([47650.83727213086, 11633.124104597475, 2660.352422999602, 2828.389572054261, 25.996519391987672, 0.18182404072075853, 0.3030762934304846], [17, 20, 10], [50, 71, 26]),  # noqa: E501
    ('default', 'float64', 12345): ([29577.39051129029, 9002.041170760971, 1951.5948556156413, 2097.27869983354, 14.42168699413529, 0.20295420025231858, -0.011127446879994674], [7, 10, 18], [11, 75, 62]),  # noqa: E501
    ('default', 'float32', 0): ([52152.6895492157, 12444.673283778131, 2917.9589448234874, 2980.5097637474973, 36.356490993872285, 0.21366333961486816, -2.0904078483581543], [17, 20, 10], [48, 98, 94]),  # noqa: E501
    ('default', 'float32', 12345): ([30879.13344431209, 9281.319302141666, 2006.463415874758, 2127.6272896822375, 18.005791613366455, 0.006982533261179924, -0.7089376449584961], [7, 10, 18], [72, 109, 68]),  # noqa: E501
    ('custom', 'float64', 0): ([6006.55507915313, 2501.503539057604, 350.680713053502, 297.8148046625697, 29.190246266038912, 0.5586487170441948, -0.4321514942640006], [1, 4, 2], [50, 71, 26]),  # noqa: E501
    ('custom', 'float64', 12345): ([7762.567077716086, 3088.5781203259685, 350.45590882024203, 293.8885600615926, 51.805010240730454, 2.017252918635284, 0.06620487315868157], [3, 2, 2], [11, 75, 62]),  # noqa: E501
    ('custom', 'float32', 0): ([7851.849723771726, 3158.702616681345, 351.7120565085167, 326.7446753317563, 41.413846116745844, 0.040642667561769485, -8.550204277038574], [1, 4, 2], [48, 98, 94]),  # noqa: E501
    ('custom', 'float32', 12345): ([7981.474098661149, 3234.136213241145, 350.27725428649967, 293.5196861059012, 50.05021796748042, 2.459629774093628, -0.6707847714424133], [3, 2, 2], [72, 109, 68]),  # noqa: E501
}


def _stats(o):
    d = {k: o[k].double() for k in ("Y", "X", "noise_var")}
    return [float(d["Y"].pow(2).sum()), float(d["Y"].abs().sum()),
            float(d["X"].pow(2).sum()), float(d["X"].abs().sum()),
            float(d["noise_var"].sum()), float(d["noise_var"][2, 5]),
            float(d["Y"][1, 2, 3])]


@pytest.mark.parametrize("key", sorted(_REGRESSION))
def test_existing_streams_unchanged(key):
    name, dtype, seed = key
    L, pos = _regression_geometry()
    sim = EEGSimulator(L, pos, SimulationConfig(**_REGRESSION_CONFIGS[name]),
                       dtype=getattr(torch, dtype))
    out = sim.sample(3, seed=seed)
    stats, n_active, centers = _REGRESSION[key]
    assert out["n_active"].tolist() == n_active
    assert out["centers"][:, 0].tolist() == centers
    # same machine and library: bit for bit; the tolerance only absorbs
    # reduction-order differences of another BLAS
    np.testing.assert_allclose(_stats(out), stats, rtol=1e-12, atol=0)


def test_existing_stream_of_own_generator_unchanged():
    L, pos = _regression_geometry()
    sim = EEGSimulator(L, pos, SimulationConfig(), dtype=torch.float64, seed=7)
    sim.sample(2)
    out = sim.sample(3)
    assert out["n_active"].tolist() == [5, 5, 5]
    assert out["centers"][:, 0].tolist() == [77, 105, 15]
    np.testing.assert_allclose(
        _stats(out),
        [15230.857616501224, 6613.055989672643, 910.5759624810173,
         946.4418643513246, 7.791586457359143, 0.061179125309985836,
         2.114194370279693], rtol=1e-12, atol=0)


# ----------------------------------------------------------------------------
# geometry of the behaviour tests: a smooth lead field (neighbouring sensors
# see correlated fields, so coloured noise is visible) and a kNN mesh


@pytest.fixture(scope="module")
def head():
    pos = _sphere(400, 0.07)
    sensors = _sphere(32, 0.1)
    L = 1e-3 / np.linalg.norm(sensors[:, None] - pos[None], axis=-1)
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    nb = np.argsort(d, axis=1)[:, 1:7]
    rows = np.repeat(np.arange(len(pos)), 6)
    adj = sparse.csr_matrix((np.ones(rows.size), (rows, nb.ravel())),
                            shape=(len(pos),) * 2)
    return L, pos, ((adj + adj.T) > 0).astype(float)


# ----------------------------------------------------------------------------
# noise


def test_global_snr_is_exact(head):
    L, pos, _ = head
    config = SimulationConfig(snr_mode="global", snr_db=(-5.0, 30.0),
                              noise_heterogeneity=(0.0, 1.0), n_times=400,
                              reference="none")
    out = EEGSimulator(L, pos, config, dtype=torch.float64, seed=0).sample(16)
    snr = _np(out["snr_db"])
    assert np.all(snr == snr[:, :1])  # one SNR per sample
    assert snr.min() >= -5 and snr.max() <= 30 and np.ptp(snr[:, 0]) > 5
    clean = L @ _np(out["X"])  # independent forward model
    sig = (clean**2).mean(-1).sum(-1)
    nv = _np(out["noise_var"])
    np.testing.assert_allclose(10 * np.log10(sig / nv.sum(-1)), snr[:, 0],
                               rtol=0, atol=1e-9)
    # the realised noise has that total power (32 x 400 draws)
    noise = _np(out["Y"]) - clean
    realised = 10 * np.log10(sig / (noise**2).mean(-1).sum(-1))
    assert np.abs(realised - snr[:, 0]).max() < 0.5
    # ... whereas the per-sensor SNRs of "channel" mode do not hold globally
    out_c = EEGSimulator(L, pos, config.replace(snr_mode="channel",
                                                noise_heterogeneity=0),
                         dtype=torch.float64, seed=0).sample(16)
    clean_c = L @ _np(out_c["X"])
    ratio_c = (clean_c**2).mean(-1) / _np(out_c["noise_var"])
    np.testing.assert_allclose(10 * np.log10(ratio_c), _np(out_c["snr_db"]),
                               atol=1e-9)
    assert np.ptp(_np(out_c["snr_db"]), axis=1).min() > 5


def test_noise_heterogeneity(head):
    L, pos, _ = head
    h = 0.8
    config = SimulationConfig(snr_mode="global", noise_heterogeneity=h,
                              reference="none", n_times=40)
    out = EEGSimulator(L, pos, config, dtype=torch.float64, seed=1).sample(300)
    log_nv = np.log(_np(out["noise_var"]))
    std = log_nv.std(axis=1, ddof=1)
    assert np.mean(std) == pytest.approx(h, rel=0.03)
    assert np.all(_np(out["noise_heterogeneity"]) == h)
    # homoscedastic at h = 0
    out0 = EEGSimulator(L, pos, config.replace(noise_heterogeneity=0.0),
                        dtype=torch.float64, seed=1).sample(5)
    nv0 = _np(out0["noise_var"])
    np.testing.assert_allclose(nv0, nv0[:, :1] * np.ones_like(nv0), rtol=1e-12)
    # a range: h drawn per sample, the spread of log variances follows it
    out = EEGSimulator(L, pos, config.replace(noise_heterogeneity=(0.0, 1.0)),
                       dtype=torch.float64, seed=2).sample(300)
    hs = _np(out["noise_heterogeneity"])
    assert hs.min() >= 0 and hs.max() <= 1 and np.ptp(hs) > 0.9
    std = np.log(_np(out["noise_var"])).std(axis=1, ddof=1)
    assert np.corrcoef(std, hs)[0, 1] > 0.95
    assert np.mean(std / hs) == pytest.approx(1.0, rel=0.05)


def _noise_correlation(out, L):
    E = _np(out["Y"]) - L @ _np(out["X"])
    C = np.einsum("bmt,bnt->bmn", E, E) / E.shape[-1]
    d = np.sqrt(np.einsum("bmm->bm", C))
    return (C / d[:, :, None] / d[:, None, :]).mean(0), E


def test_coloured_noise(head):
    L, pos, _ = head
    f = 0.5
    config = SimulationConfig(snr_mode="global", noise_color=f, reference="none",
                              n_times=400)
    out = EEGSimulator(L, pos, config, dtype=torch.float64, seed=3).sample(32)
    R, E = _noise_correlation(out, L)
    # expected covariance per sample: (1 - f) lambda I + a^2 L L^T, with the
    # same total power as the white noise of the SNR
    nv = _np(out["noise_var"])
    M = L.shape[0]
    total = nv.sum(-1)
    clean = L @ _np(out["X"])
    np.testing.assert_allclose(
        10 * np.log10((clean**2).mean(-1).sum(-1) / total), _np(out["snr_db"])[:, 0],
        atol=1e-9)  # the colour keeps the global SNR
    LLt = L @ L.T
    lam = (1 - f) * total / M
    a2 = f * total / np.trace(LLt)
    np.testing.assert_allclose(nv, lam[:, None] + a2[:, None] * np.diag(LLt),
                               rtol=1e-10)
    S = np.eye(M) * (1 - f) / M + f * LLt / np.trace(LLt)
    R_exp = S / np.sqrt(np.outer(np.diag(S), np.diag(S)))
    off = ~np.eye(M, dtype=bool)
    assert np.abs(R_exp[off]).max() > 0.3  # the test can see colour
    np.testing.assert_allclose(R[off], R_exp[off], atol=0.03)
    np.testing.assert_allclose(E.var(-1) / nv, 1.0, atol=0.35)
    np.testing.assert_allclose((E.var(-1) / nv).mean(), 1.0, atol=0.02)
    assert np.all(_np(out["noise_color"]) == f)
    # no colour: no correlation between sensors
    out0 = EEGSimulator(L, pos, config.replace(noise_color=0.0),
                        dtype=torch.float64, seed=3).sample(32)
    R0, _ = _noise_correlation(out0, L)
    assert np.abs(R0[off]).max() < 0.03


def test_noise_var_given(head):
    L, pos, _ = head
    config = SimulationConfig(noise_cov_scale=(0.3, 3.0), adhoc_cov_prob=0.3,
                              n_times=40)
    out = EEGSimulator(L, pos, config, dtype=torch.float64, seed=4).sample(600)
    nv, given = _np(out["noise_var"]), _np(out["noise_var_given"])
    s, adhoc = _np(out["noise_cov_scale"]), _np(out["adhoc_cov"])
    assert s.min() >= 0.3 and s.max() <= 3.0
    # log-uniform: half of log-space lies below 1 / 0.9487 (uniform: 24 %)
    assert np.mean(s < np.sqrt(0.3 * 3.0)) == pytest.approx(0.5, abs=0.06)
    assert np.mean(np.log(s)) == pytest.approx(np.log(0.9), abs=0.06)
    assert adhoc.mean() == pytest.approx(0.3, abs=0.06)
    ratio = given[~adhoc] / nv[~adhoc]
    np.testing.assert_allclose(ratio, s[~adhoc, None] * np.ones_like(ratio),
                               rtol=1e-12)
    np.testing.assert_allclose(
        given[adhoc], (nv[adhoc].mean(-1) * s[adhoc])[:, None] * np.ones(nv.shape[1]),
        rtol=1e-12)
    assert np.ptp(nv[adhoc], axis=1).min() > 0  # the true ones are not equal
    # ad hoc always, exact scale
    out1 = EEGSimulator(L, pos, config.replace(noise_cov_scale=1.0,
                                               adhoc_cov_prob=1.0),
                        dtype=torch.float64, seed=4).sample(3)
    np.testing.assert_allclose(_np(out1["noise_var_given"]),
                               np.repeat(_np(out1["noise_var"]).mean(
                                   -1, keepdims=True), L.shape[0], 1), rtol=1e-12)


# ----------------------------------------------------------------------------
# footprints


def _grid_mesh(n):
    g = np.arange(n) * 0.004
    pos = np.stack(np.meshgrid(g, g, [0.0], indexing="ij"), -1).reshape(-1, 3)
    idx = np.arange(n * n).reshape(n, n)
    e = np.r_[np.c_[idx[:-1].ravel(), idx[1:].ravel()],
              np.c_[idx[:, :-1].ravel(), idx[:, 1:].ravel()]]
    adj = sparse.coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])),
                            shape=(n * n,) * 2).tocsr()
    return pos, adj  # upper triangle only: the simulator symmetrises


def _footprint_of(out, b, j=0):
    """Spatial profile of the single source j of sample b (peak 1)."""
    X = _np(out["X"][b])
    wave = _np(out["waveforms"][b, j])
    t = np.argmax(np.abs(wave))
    return X[:, t] / (float(out["amplitude"][b, j]) * wave[t])


def test_diffusion_footprint_on_grid():
    pos, adj = _grid_mesh(9)
    N = pos.shape[0]
    L = np.random.default_rng(0).standard_normal((6, N))
    config = SimulationConfig(n_sources=1, footprint="diffusion",
                              diffusion_order=(0, 3))
    sim = EEGSimulator(L, pos, config, dtype=torch.float64, adjacency=adj)
    out = sim.sample(40, seed=5)
    # D^-1/2 (A + I) D^-1/2 by hand, dense
    A = np.zeros((N, N))
    r, c = adj.nonzero()
    A[r, c] = A[c, r] = 1
    A += np.eye(N)
    d = A.sum(1) ** -0.5
    D = d[:, None] * A * d[None, :]
    orders = _np(out["diffusion_order"][:, 0])
    assert set(orders) == {0, 1, 2, 3}
    assert (_np(out["footprint_kind"]) == 0).all()
    for b in range(40):
        v = np.zeros(N)
        v[int(out["centers"][b, 0])] = 1.0
        v = np.linalg.matrix_power(D, int(orders[b])) @ v
        np.testing.assert_allclose(_footprint_of(out, b), v / v.max(),
                                   rtol=1e-9, atol=1e-12)
        # order k reaches exactly the sources within k grid steps
        assert np.count_nonzero(_footprint_of(out, b)) == np.count_nonzero(v)
    # the public method agrees, with padding
    w = sim.diffusion_footprints(torch.tensor([[40, -1]]), torch.tensor([[2, 5]]))
    v = np.linalg.matrix_power(D, 2)[:, 40]
    np.testing.assert_allclose(_np(w[0, 0]), v / v.max(), rtol=1e-12)
    assert (w[0, 1] == 0).all()


def _hairpin():
    """A curved chain: 20 mm out, a half turn of radius 1.5 mm, 20 mm back,
    3 mm from the first arm (Euclidean neighbours, far apart on the mesh)."""
    arm = np.arange(21) * 0.001
    ang = -np.pi / 2 + np.pi * np.arange(1, 6) / 6
    turn = np.c_[0.02 + 0.0015 * np.cos(ang), 0.0015 + 0.0015 * np.sin(ang)]
    path = np.r_[np.c_[arm, 0 * arm], turn, np.c_[arm[::-1], 0 * arm + 0.003]]
    pos = np.c_[path, np.zeros(len(path))]
    n = len(pos)
    adj = sparse.diags([np.ones(n - 1), np.ones(n - 1)], [-1, 1]).tocsr()
    arc = np.r_[0, np.cumsum(np.linalg.norm(np.diff(pos, axis=0), axis=1))]
    return pos, adj, arc


def test_geodesic_footprint_on_folded_strip():
    pos, adj, arc = _hairpin()
    N = pos.shape[0]
    L = np.random.default_rng(1).standard_normal((5, N))
    sigma = 0.005
    config = SimulationConfig(n_sources=1, spread=sigma, footprint="geodesic")
    sim = EEGSimulator(L, pos, config, dtype=torch.float64, adjacency=adj)
    # path lengths along the chain (``arc``): the start of the second arm is
    # 20 mm + six chords of 30 degrees, 2 r sin(15 deg), from the first point
    assert arc[26] == pytest.approx(0.02 + 6 * 2 * 0.0015 * np.sin(np.pi / 12))
    sig = torch.tensor([sigma], dtype=torch.float64)
    w = _np(sim.geodesic_footprints(torch.tensor([0]), sig)[0])
    exact = np.exp(-arc**2 / (2 * sigma**2))
    np.testing.assert_allclose(w, np.where(exact < 1e-3, 0.0, exact), rtol=1e-12)
    # the point 3 mm across the fold: near in space, far along the mesh
    far = N - 1
    assert np.linalg.norm(pos[far] - pos[0]) == pytest.approx(0.003)
    assert w[far] == 0.0
    g = _np(sim.footprints(torch.tensor([0]), sig)[0])
    assert g[far] == pytest.approx(np.exp(-9 / 50))
    # the drawn samples: centres anywhere on the chain
    out = sim.sample(20, seed=0)
    for b in range(20):
        c = int(out["centers"][b, 0])
        d = np.abs(arc - arc[c])
        exact = np.exp(-d**2 / (2 * sigma**2))
        np.testing.assert_allclose(_footprint_of(out, b),
                                   np.where(exact < 1e-3, 0.0, exact),
                                   rtol=1e-9, atol=1e-12)


def test_mixed_footprints(head):
    L, pos, adj = head
    config = SimulationConfig(footprint=("gaussian", "geodesic", "diffusion"),
                              spread=(0.003, 0.01), n_sources=(3, 8))
    sim = EEGSimulator(L, pos, config, dtype=torch.float64, adjacency=adj)
    out = sim.sample(12, seed=6)
    kind, order = out["footprint_kind"], out["diffusion_order"]
    act = out["active"]
    assert set(_np(kind[act])) == {0, 1, 2}
    assert (kind[~act] == -1).all()
    assert ((order >= 0) == (kind == 2)).all()
    # X is the superposition of each slot's footprint of its own kind
    c, s = out["centers"], out["spread"]
    W = torch.where((kind == 0)[..., None], sim.footprints(c, s), 0.0)
    W += torch.where((kind == 1)[..., None], sim.geodesic_footprints(c, s), 0.0)
    W += torch.where((kind == 2)[..., None],
                     sim.diffusion_footprints(c, order.clamp_min(0)), 0.0)
    X = torch.einsum("bkn,bkt->bnt", W, out["amplitude"][..., None]
                     * out["waveforms"])
    torch.testing.assert_close(out["X"], X, rtol=1e-10, atol=1e-12)
    # on a curved surface the geodesic footprint is narrower than the
    # Euclidean one of the same sigma (paths are longer than chords)
    g, e = sim.geodesic_footprints(c, s), sim.footprints(c, s)
    assert (g <= e + 1e-12)[act].all()
    assert float(g[act].sum()) < 0.99 * float(e[act].sum())


# ----------------------------------------------------------------------------
# time courses


def test_erp_and_burst_waveforms(head):
    L, pos, _ = head
    bands = {"alpha": (8.0, 13.0), "beta": (13.0, 30.0)}
    config = SimulationConfig(waveform=("band", "erp", "burst"), n_times=1000,
                              sfreq=250.0, bands=bands, spread=0.0,
                              n_sources=(4, 8))
    out = EEGSimulator(L, pos, config, dtype=torch.float64, seed=7).sample(30)
    act = _np(out["active"])
    kind, band = _np(out["waveform_kind"]), _np(out["bands"])
    wave = _np(out["waveforms"])[act]
    kind, band = kind[act], band[act]
    assert set(kind) == {0, 1, 2}
    assert (_np(out["waveform_kind"])[~act] == -1).all()
    np.testing.assert_allclose(wave.mean(-1), 0, atol=1e-12)
    np.testing.assert_allclose((wave**2).mean(-1), 1, rtol=1e-12)
    f = np.fft.rfftfreq(1000, 1 / 250.0)
    p = np.abs(np.fft.rfft(wave, axis=-1)) ** 2
    lims = np.array(list(bands.values()))[band]
    inside = (f >= lims[:, :1]) & (f <= lims[:, 1:])
    # band: all power in the band; burst: peak within the band (+- one bin)
    band_frac = (p * inside).sum(-1) / p.sum(-1)
    np.testing.assert_allclose(band_frac[kind == 0], 1.0, atol=1e-12)
    peak = f[np.argmax(p, axis=-1)]
    df = f[1]
    b = kind == 2
    assert np.all((peak[b] >= lims[b, 0] - df) & (peak[b] <= lims[b, 1] + df))
    # ... and windowed, not band-limited, courses: short windows spill out
    assert band_frac[b].min() < 0.9
    # erp: a few smooth deflections of 20-80 ms: slow, broadband spectrum
    e = kind == 1
    slow = p[e][:, f <= 25].sum(-1) / p[e].sum(-1)
    assert np.all(slow > 0.99)
    # a sum of <= 3 Gaussian bumps has at most 5 local extrema (slopes
    # below rounding level in the flat tails ignored)
    for w in wave[e]:
        d = np.diff(w)
        d = d[np.abs(d) > 1e-9 * np.abs(d).max()]
        assert np.count_nonzero(np.diff(np.sign(d))) <= 5
    # the centre rows of X carry amplitude * waveform (spread 0)
    X = _np(out["X"])
    for bb in range(3):
        for j in range(int(out["n_active"][bb])):
            np.testing.assert_allclose(
                X[bb, int(out["centers"][bb, j])],
                float(out["amplitude"][bb, j]) * _np(out["waveforms"][bb, j]),
                rtol=1e-12)


def test_single_erp_deflection_shape(head):
    """One-deflection ERPs are Gaussian bumps of width (std) 20-80 ms."""
    L, pos, _ = head
    config = SimulationConfig(waveform="erp", n_times=600, sfreq=500.0,
                              n_sources=20)
    out = EEGSimulator(L, pos, config, dtype=torch.float64, seed=8).sample(10)
    t = np.arange(600) / 500.0
    widths = []
    for w in _np(out["waveforms"]).reshape(-1, 600):
        d = np.diff(w)
        d = d[np.abs(d) > 1e-9 * np.abs(d).max()]
        if np.count_nonzero(np.diff(np.sign(d))) != 1:
            continue  # several deflections
        x = w if w.max() > -w.min() else -w
        x = (x - x.min()) / (x.max() - x.min())
        peak = t[np.argmax(x)]
        if not 0.35 < peak < 0.85:
            continue  # tails cut by the epoch
        half = t[x >= 0.5]
        sigma = (half[-1] - half[0] + 1 / 500.0) / (2 * np.sqrt(2 * np.log(2)))
        fit = np.exp(-(t - peak) ** 2 / (2 * sigma**2))
        if np.abs(x - fit).max() < 0.02:  # not two merged bumps
            widths.append(sigma)
    assert len(widths) > 10
    assert 0.018 < min(widths) and max(widths) < 0.083
    assert np.ptp(widths) > 0.03


# ----------------------------------------------------------------------------
# epoch length


def test_n_times_range(head):
    L, pos, _ = head
    config = SimulationConfig(n_times=(30, 60), n_sources=(2, 4))
    sim = EEGSimulator(L, pos, config, dtype=torch.float64, seed=9)
    assert sim.band_masks is None and config.n_times_range == (30, 60)
    Ts = [sim.sample(2)["Y"].shape[-1] for _ in range(60)]
    assert min(Ts) >= 30 and max(Ts) <= 60 and len(set(Ts)) > 15
    # the same seed, the same construction seed: the same lengths and data
    sim2 = EEGSimulator(L, pos, config, dtype=torch.float64, seed=9)
    assert [sim2.sample(2)["Y"].shape[-1] for _ in range(60)] == Ts
    a, b = sim.sample(3, seed=11), sim.sample(3, seed=11)
    T = a["Y"].shape[-1]
    for key in a:
        assert torch.equal(torch.nan_to_num(a[key]), torch.nan_to_num(b[key]))
    assert a["X"].shape[-1] == a["waveforms"].shape[-1] == T
    seeds_T = {sim.sample(1, seed=s)["Y"].shape[-1] for s in range(40)}
    assert len(seeds_T) > 10
    # T comes from a separate generator: with n_times fixed at the drawn T
    # the same seed gives exactly the same batch
    fixed = EEGSimulator(L, pos, config.replace(n_times=T), dtype=torch.float64)
    c = fixed.sample(3, seed=11)
    for key in a:
        assert torch.equal(torch.nan_to_num(a[key]), torch.nan_to_num(c[key])), key
    # band masks built for the drawn T: each course stays in its band
    spec = np.abs(np.fft.rfft(_np(a["waveforms"]), axis=-1)) ** 2
    f = np.fft.rfftfreq(T, 1 / 100.0)
    for bb in range(3):
        for j in range(int(a["n_active"][bb])):
            lo, hi = list(config.bands.values())[int(a["bands"][bb, j])]
            out = (f < lo - 1e-9) | (f > hi + 1e-9)
            if (~out[1:]).any():  # the band has a bin at this T
                assert spec[bb, j, out].sum() < 1e-20 * spec[bb, j].sum()
    # an explicit generator: its state sets T, and it is advanced as usual
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(sim.sample(2, g1)["Y"], sim.sample(2, g2)["Y"])
    assert torch.equal(g1.get_state(), g2.get_state())


# ----------------------------------------------------------------------------
# everything at once, validation


def test_all_options(head):
    L, pos, adj = head
    config = SimulationConfig(
        footprint=("gaussian", "geodesic", "diffusion"),
        waveform=("band", "erp", "burst"), snr_mode="global",
        snr_db=(-5.0, 30.0), noise_heterogeneity=(0.0, 1.0),
        noise_color=(0.0, 0.5), noise_cov_scale=(0.3, 3.0), adhoc_cov_prob=0.2,
        n_times=(40, 120))
    for dtype in (torch.float32, torch.float64):
        sim = EEGSimulator(torch.as_tensor(L), torch.as_tensor(pos), config,
                           dtype=dtype, adjacency=adj)
        a, b = sim.sample(16, seed=1), sim.sample(16, seed=1)
        B, M, K = 16, L.shape[0], 20
        T = a["Y"].shape[-1]
        assert 40 <= T <= 120
        for key in a:
            assert torch.equal(torch.nan_to_num(a[key]), torch.nan_to_num(b[key]))
            assert a[key].shape[0] == B
            if a[key].is_floating_point() and key != "spread":
                assert torch.isfinite(a[key]).all(), key
        assert a["noise_var_given"].shape == (B, M)
        assert (a["noise_var"] > 0).all() and (a["noise_var_given"] > 0).all()
        assert a["footprint_kind"].shape == a["waveform_kind"].shape == (B, K)
        # average reference of the output data
        assert float(a["Y"].mean(-2).abs().max()) < 1e-4 * float(a["Y"].abs().max())


def test_wide_validation(head):
    L, pos, adj = head
    bad = [
        (dict(snr_mode="sensor"), ValueError, "snr_mode"),
        (dict(snr_mode="global", noise_heterogeneity=(-0.1, 1)), ValueError,
         "noise_heterogeneity"),
        (dict(noise_heterogeneity=0.5), ValueError, "snr_mode='global'"),
        (dict(noise_color=(0.2, 1.5)), ValueError, r"\[0, 1\]"),
        (dict(noise_color=(0.5, 0.2)), ValueError, "low <= high"),
        (dict(noise_cov_scale=(0.0, 2.0)), ValueError, "> 0"),
        (dict(noise_cov_scale="big"), TypeError, "noise_cov_scale"),
        (dict(adhoc_cov_prob=1.5), ValueError, "probability"),
        (dict(adhoc_cov_prob="often"), TypeError, "adhoc_cov_prob"),
        (dict(footprint="cubic"), ValueError, "footprint"),
        (dict(footprint=()), ValueError, "at least one"),
        (dict(footprint=("gaussian", "gaussian")), ValueError, "once"),
        (dict(footprint=("gaussian", 3)), TypeError, "footprint"),
        (dict(diffusion_order=(-1, 2)), ValueError, "diffusion_order"),
        (dict(diffusion_order=(0.5, 2)), TypeError, "diffusion_order"),
        (dict(waveform=("band", "spike")), ValueError, "waveform"),
        (dict(n_times=(1, 10)), ValueError, ">= 2"),
        (dict(n_times=(50, 10)), ValueError, "low <= high"),
        (dict(n_times=(10.5, 20)), TypeError, "n_times"),
        (dict(n_times=(10, 20, 30)), ValueError, "pair"),
    ]
    for kwargs, err, match in bad:
        with pytest.raises(err, match=match):
            SimulationConfig(**kwargs)
    # scalars and single names are normalised
    c = SimulationConfig(footprint="geodesic", waveform=["erp", "band"],
                         diffusion_order=2, noise_color=0.3, n_times=(64, 64))
    assert c.footprint == ("geodesic",) and c.waveform == ("erp", "band")
    assert c.diffusion_order == (2, 2) and c.noise_color == (0.3, 0.3)
    assert c.n_times == 64
    # the mesh
    for kind in ("geodesic", "diffusion"):
        with pytest.raises(ValueError, match="adjacency="):
            EEGSimulator(L, pos, SimulationConfig(footprint=("gaussian", kind)))
    with pytest.raises(ValueError, match="adjacency must have shape"):
        EEGSimulator(L, pos, adjacency=adj[:10, :10])
    with pytest.raises(TypeError, match="adjacency"):
        EEGSimulator(L, pos, adjacency="mesh")
    sim = EEGSimulator(L, pos)  # accepted without the mesh for Gaussians
    with pytest.raises(ValueError, match="adjacency="):
        sim.geodesic_footprints(torch.tensor([0]), torch.tensor([0.01]))
    # a dense adjacency is accepted; asymmetric ones are symmetrised
    upper = sparse.triu(adj).toarray()
    sim = EEGSimulator(L, pos, SimulationConfig(footprint="diffusion"),
                       adjacency=upper)
    assert (sim.adjacency != sim.adjacency.T).nnz == 0
    assert (sim.adjacency != adj).nnz == 0
