"""Tests of the evaluation metrics (mne_unfolded_sbl.core.metrics)."""

import numpy as np
import pytest
import torch
from scipy import sparse

from mne_unfolded_sbl.core.metrics import (
    average_precision,
    emd,
    evaluate,
    f1_support,
    local_maxima,
    localization_error,
    precision_recall_f1,
    rmse,
    source_neighbors,
    source_power,
)


@pytest.fixture(scope="module")
def grid():
    """A 10 x 10 x 2 lattice with 5 mm spacing (positions in metres)."""
    g = np.arange(10) * 0.005
    return np.stack(np.meshgrid(g, g, [0.0, 0.005], indexing="ij"), -1).reshape(-1, 3)


def _index(pos, xyz):
    return int(np.argmin(np.linalg.norm(pos - np.asarray(xyz), axis=1)))


@pytest.fixture()
def sparse_x(grid):
    rng = np.random.default_rng(0)
    x = np.zeros((grid.shape[0], 50))
    idx = rng.choice(grid.shape[0], 6, replace=False)
    x[idx] = rng.standard_normal((6, 50))
    return x


def test_perfect_and_scaled_estimate(grid, sparse_x):
    x = sparse_x
    assert rmse(x, x) == 0.0
    assert emd(x, x, grid) == pytest.approx(0.0, abs=1e-12)
    assert f1_support(x, x) == 1.0
    assert localization_error(x, x, grid) == 0.0
    for c in (0.5, 2.0, 3.0):
        assert rmse(x, c * x) == pytest.approx((c - 1) ** 2, rel=1e-12)
        # spatial metrics are scale-invariant
        assert emd(x, c * x, grid) == pytest.approx(0.0, abs=1e-12)
        assert f1_support(x, c * x) == 1.0
        assert localization_error(x, c * x, grid) == 0.0
    # rMSE is a ratio of squared Frobenius norms (not a root)
    rng = np.random.default_rng(1)
    e = rng.standard_normal(x.shape)
    assert rmse(x, x + e) == pytest.approx(np.sum(e**2) / np.sum(x**2), rel=1e-12)
    assert np.isnan(rmse(np.zeros_like(x), x))


def test_single_source_shift(grid):
    """Truth at one source, estimate at another one d away: LE = EMD = d."""
    rng = np.random.default_rng(3)
    i = _index(grid, (0.02, 0.02, 0.0))
    for target, d in (((0.025, 0.02, 0.0), 0.005),      # lattice neighbour
                      ((0.025, 0.02, 0.005), 0.005 * np.sqrt(2)),
                      ((0.02, 0.035, 0.0), 0.015)):     # farther away
        j = _index(grid, target)
        assert np.linalg.norm(grid[i] - grid[j]) == pytest.approx(d)
        xt = np.zeros((grid.shape[0], 20))
        xe = np.zeros_like(xt)
        xt[i] = rng.standard_normal(20)
        xe[j] = 3.0 * rng.standard_normal(20)
        assert localization_error(xt, xe, grid) == pytest.approx(d, rel=1e-12)
        assert emd(xt, xe, grid) == pytest.approx(d, rel=1e-9)
        assert f1_support(xt, xe) == 0.0


def test_emd_hand_computed(grid):
    a, b, c = (_index(grid, p) for p in ((0.0, 0.0, 0.0), (0.03, 0.0, 0.0),
                                         (0.03, 0.04, 0.0)))
    d_ab, d_ac, d_bc = 0.03, 0.05, 0.04
    n = grid.shape[0]
    t = np.sin(np.linspace(0, 6, 40))
    # (1) mass split: truth all at A; estimate at B and C with L2 norms 1 : 3
    xt = np.zeros((n, 40))
    xt[a] = t
    xe = np.zeros((n, 40))
    xe[b], xe[c] = 1.0 * t, 3.0 * t
    assert emd(xt, xe, grid) == pytest.approx(0.25 * d_ab + 0.75 * d_ac, rel=1e-9)
    # (2) the optimal plan is not the naive one: truth 1/2 at A and B,
    # estimate 1/2 at A and C -> keep A in place, move B -> C: 0.5 d_BC
    xt = np.zeros((n, 40))
    xt[a], xt[b] = t, -2 * t / 2
    xe = np.zeros((n, 40))
    xe[a], xe[c] = 5 * t, 5 * t
    assert emd(xt, xe, grid) == pytest.approx(0.5 * d_bc, rel=1e-9)
    assert 0.5 * d_bc < 0.5 * (d_ab + d_ac)
    # masses are temporal L2 norms: a time shift of the estimate changes nothing
    xe_shift = np.roll(xe, 7, axis=1)
    assert emd(xt, xe_shift, grid) == pytest.approx(0.5 * d_bc, rel=1e-9)
    # relative threshold drops a small spurious source (1 % of the max norm)
    xe2 = xe.copy()
    far = _index(grid, (0.045, 0.045, 0.005))
    xe2[far] = 0.05 * t
    assert emd(xt, xe2, grid) > 0.5 * d_bc + 1e-4
    assert emd(xt, xe2, grid, threshold=0.05) == pytest.approx(0.5 * d_bc, rel=1e-9)


def test_localization_error_multiple_peaks(grid):
    n = grid.shape[0]
    p1, p2 = _index(grid, (0.0, 0.0, 0.0)), _index(grid, (0.045, 0.045, 0.0))
    q1 = _index(grid, (0.005, 0.0, 0.0))
    xt = np.zeros((n, 10))
    xt[p1], xt[p2] = 1.0, 0.8
    xe = np.zeros((n, 10))
    xe[q1] = 1.0
    d2 = np.linalg.norm(grid[p2] - grid[q1])
    assert localization_error(xt, xe, grid) == pytest.approx((0.005 + d2) / 2)
    # a true peak below the relative threshold (0.1) is not a maximum
    xt[p2] = 0.05
    assert localization_error(xt, xe, grid) == pytest.approx(0.005)
    assert localization_error(xt, xe, grid, threshold=0.01) == pytest.approx(
        (0.005 + d2) / 2)
    # a broad estimate: a blob whose peak is one lattice step from the truth
    xt = np.zeros((n, 10))
    xt[p1] = 1.0
    d = np.linalg.norm(grid - grid[q1], axis=1)
    xe = np.exp(-(d**2) / (2 * 0.006**2))[:, None] * np.ones(10)
    assert localization_error(xt, xe, grid) == pytest.approx(0.005)


def test_local_maxima_and_neighbors():
    # a chain of 7 sources 1 cm apart
    pos = np.c_[np.arange(7) * 0.01, np.zeros(7), np.zeros(7)]
    power = np.array([0.0, 1.0, 0.5, 0.6, 0.2, 0.05, 0.07])
    chain = sparse.diags([np.ones(6), np.ones(6)], [-1, 1], shape=(7, 7))
    nb = source_neighbors(pos, adjacency=chain)
    assert nb.dtype == bool and nb.diagonal().sum() == 0
    assert (nb != nb.T).nnz == 0
    np.testing.assert_array_equal(local_maxima(power, nb, 0.1), [1, 3])
    np.testing.assert_array_equal(local_maxima(power, nb, 0.0), [1, 3, 6])
    # radius 1.5 cm == chain; 2 nearest neighbours include both chain sides
    nb_r = source_neighbors(pos, radius=0.015)
    assert (nb_r != nb).nnz == 0
    nb_k = source_neighbors(pos, n_neighbors=2)
    assert nb_k[3].indices.tolist() == [2, 4]
    assert nb_k[4].indices.tolist() == [3, 5, 6]  # symmetrised: 6 has 4 as 2-NN
    np.testing.assert_array_equal(local_maxima(power, nb_k, 0.0), [1, 3])
    assert local_maxima(np.zeros(7), nb, 0.1).size == 0
    # ties count as maxima
    np.testing.assert_array_equal(local_maxima(np.ones(7), nb, 0.1), np.arange(7))
    with pytest.raises(ValueError, match="non-negative"):
        local_maxima(-power, nb)
    with pytest.raises(ValueError, match="threshold"):
        local_maxima(power, nb, 1.5)


def test_f1_known_errors():
    n = 20
    x_true = np.zeros((n, 30))
    x_true[[0, 1, 2, 3]] = 1.0
    x_est = np.zeros((n, 30))
    x_est[[2, 3, 4]] = 2.0
    x_est[5] = 0.1  # 5 % of the max RMS: below the default threshold of 0.1
    p, r, f = precision_recall_f1(x_true, x_est)
    assert (p, r) == (pytest.approx(2 / 3), pytest.approx(1 / 2))
    assert f == pytest.approx(2 * 2 / (4 + 3))
    assert f1_support(x_true, x_est) == pytest.approx(4 / 7)
    # with a lower threshold the small source is a false positive too
    p, r, f = precision_recall_f1(x_true, x_est, threshold=0.01)
    assert (p, r, f) == (pytest.approx(2 / 4), pytest.approx(1 / 2),
                         pytest.approx(2 * 2 / (4 + 4)))
    # RMS, not the sign or the mean, decides the support
    x_est2 = x_est.copy()
    x_est2[4] = np.tile([2.0, -2.0], 15)
    assert f1_support(x_true, x_est2) == pytest.approx(4 / 7)
    np.testing.assert_allclose(source_power(x_est2)[[2, 4]], [2.0, 2.0])


def test_zero_estimate(grid, sparse_x):
    x = sparse_x
    z = np.zeros_like(x)
    assert rmse(x, z) == 1.0
    assert np.isnan(localization_error(x, z, grid))
    assert np.isnan(emd(x, z, grid))
    assert f1_support(x, z) == 0.0
    assert precision_recall_f1(x, z) == (0.0, 0.0, 0.0)
    res = evaluate(np.stack([x, x]), np.stack([x, z]), grid)
    np.testing.assert_array_equal(res["empty"], [False, True])
    assert np.isnan(res["le"][1]) and np.isnan(res["emd"][1])
    assert res["f1"][1] == 0.0 and res["rmse"][1] == 1.0


def test_evaluate_matches_single_sample_functions(grid):
    rng = np.random.default_rng(5)
    B, n, T = 4, grid.shape[0], 25
    xt = np.zeros((B, n, T))
    xe = np.zeros((B, n, T))
    for b in range(B):
        xt[b, rng.choice(n, 3, replace=False)] = rng.standard_normal((3, T))
        xe[b] = xt[b] + 0.3 * rng.standard_normal((n, T)) * (rng.random((n, 1)) < 0.1)
    res = evaluate(torch.as_tensor(xt, dtype=torch.float32),
                   torch.as_tensor(xe, dtype=torch.float32),
                   torch.as_tensor(grid), n_neighbors=6)
    assert set(res) == {"rmse", "le", "emd", "f1", "precision", "recall",
                        "ap", "empty"}
    for b in range(B):
        xtb = xt[b].astype(np.float32)
        xeb = xe[b].astype(np.float32)
        assert res["rmse"][b] == pytest.approx(rmse(xtb, xeb), rel=1e-6)
        assert res["le"][b] == pytest.approx(localization_error(xtb, xeb, grid))
        assert res["emd"][b] == pytest.approx(emd(xtb, xeb, grid), rel=1e-6)
        assert res["f1"][b] == pytest.approx(f1_support(xtb, xeb))
        assert res["ap"][b] == pytest.approx(average_precision(xtb, xeb))
    assert (res["f1"] < 1).any() and (res["rmse"] > 0).all()
    # 2-D input is one sample
    res1 = evaluate(xt[0], xe[0], grid)
    assert res1["rmse"].shape == (1,)
    with pytest.raises(ValueError, match="same shape"):
        evaluate(xt, xe[:, :-1], grid)
    with pytest.raises(ValueError, match="pos"):
        evaluate(xt, xe, grid[:-1])


def test_accepts_torch_and_stc(grid, sparse_x):
    import mne

    x = sparse_x
    n = grid.shape[0]
    stc = mne.SourceEstimate(x, [np.arange(n // 2), np.arange(n - n // 2)], 0, 0.01)
    xt = torch.as_tensor(x)
    assert rmse(stc, xt * 2) == pytest.approx(1.0)
    assert localization_error(xt, stc, torch.as_tensor(grid)) == 0.0


def test_localization_error_suppresses_ripples_of_dense_estimates(grid):
    """A dense estimate with ripples everywhere must not get LE ~ 0."""
    n = grid.shape[0]
    p1 = _index(grid, (0.0, 0.0, 0.0))
    xt = np.zeros((n, 10))
    xt[p1] = 1.0
    # a broad blob 3 cm away whose ripples make many maxima on its flank
    centre = _index(grid, (0.03, 0.0, 0.0))
    d = np.linalg.norm(grid - grid[centre], axis=1)
    ripple = 1 + 0.3 * np.cos(d * 2 * np.pi / 0.01)
    xe = (np.exp(-(d ** 2) / (2 * 0.01 ** 2)) * ripple)[:, None] * np.ones(10)
    # without suppression a flank maximum is much closer to the true source
    assert localization_error(xt, xe, grid, min_distance=0.0) < 0.022
    le = localization_error(xt, xe, grid)  # default: 2 cm suppression
    assert le == pytest.approx(0.03, abs=0.006)
    # two true sources 3 cm apart are both kept (> min_distance)
    xt[centre] = 0.9
    assert localization_error(xt, xt, grid) == 0.0
    P = local_maxima(np.sqrt((xt ** 2).mean(1)), source_neighbors(grid),
                     pos=grid, min_distance=0.02)
    assert set(P) == {p1, centre}
    with pytest.raises(ValueError, match="pos is required"):
        local_maxima(np.ones(n), source_neighbors(grid), min_distance=0.02)


def _ap_reference(truth, score):
    """AP by brute force: precision at every distinct threshold, weighted by
    the recall gained there (sklearn's definition)."""
    ap, prev_recall = 0.0, 0.0
    for t in np.unique(score)[::-1]:
        detected = score >= t
        tp = np.sum(detected & truth)
        recall = tp / truth.sum()
        ap += (recall - prev_recall) * tp / detected.sum()
        prev_recall = recall
    return ap


def test_average_precision_ranking():
    """AP is 1 for a perfect ranking, low for a reversed one, the fraction
    of active sources for an all-zero (all-tied) estimate, and ignores the
    scale and the threshold of the estimate."""
    rng = np.random.default_rng(0)
    n, T = 60, 20
    x = np.zeros((n, T))
    active = rng.choice(n, 6, replace=False)
    x[active] = rng.standard_normal((6, T)) + 3.0
    # perfect ranking, however blurred: active sources strongest
    blurred = np.full((n, T), 0.5) + np.abs(x)
    assert average_precision(x, blurred) == pytest.approx(1.0)
    assert average_precision(x, 7.0 * blurred) == pytest.approx(1.0)
    # reversed ranking: the active sources are the weakest
    reversed_ = np.ones((n, T))
    reversed_[active] = 0.01
    ap_rev = average_precision(x, reversed_)
    assert ap_rev < 0.15
    is_active = np.isin(np.arange(n), active)
    assert ap_rev == pytest.approx(
        _ap_reference(is_active, np.where(is_active, 0.01, 1.0)))
    # all-zero estimate: one tie, precision = the active fraction
    assert average_precision(x, np.zeros_like(x)) == pytest.approx(6 / n)
    # no active source in the truth
    assert np.isnan(average_precision(np.zeros_like(x), blurred))


def test_average_precision_matches_brute_force():
    """Random scores with ties against the brute-force definition; one
    false source ranked first halves the precision of the first hit."""
    rng = np.random.default_rng(3)
    for _ in range(20):
        n = 40
        truth = np.zeros(n, bool)
        truth[rng.choice(n, rng.integers(1, 10), replace=False)] = True
        score = np.round(rng.random(n), 1) * (rng.random(n) < 0.7)  # ties
        x_true = truth[:, None] * np.ones((1, 3))
        x_est = score[:, None] * np.ones((1, 3))
        assert average_precision(x_true, x_est, threshold=0.0) == \
            pytest.approx(_ap_reference(truth, score))
    truth = np.zeros(10, bool)
    truth[0] = True
    score = np.zeros(10)
    score[[0, 1]] = [0.5, 1.0]  # a false source ranked above the true one
    assert average_precision(truth[:, None] * 1.0, score[:, None]) == \
        pytest.approx(0.5)


def test_average_precision_true_support_threshold():
    """The true support is the sources above ``threshold`` x the peak:
    footprint tails below it are not counted as missed."""
    x = np.zeros((5, 4))
    x[0], x[1] = 1.0, 0.05  # source 1 is a 5 % tail
    est = np.zeros((5, 4))
    est[0] = 1.0  # finds the peak, not the tail
    assert average_precision(x, est) == pytest.approx(1.0)
    assert average_precision(x, est, threshold=0.0) < 1.0
    with pytest.raises(ValueError, match="threshold"):
        average_precision(x, est, threshold=1.5)
