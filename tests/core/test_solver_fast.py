"""The fast paths of the solver core: Khatri-Rao products for batches, the
inverse's backward pass, the lead-field caches (and the API's caches)."""

import gc
import pickle

import numpy as np
import pytest
import torch

from mne_unfolded_sbl.core import solver
from mne_unfolded_sbl.core.network import UnfoldedSBL
from mne_unfolded_sbl.core.solver import (KR_MIN_BATCH, NullSpace, CBState,
                                          cb_iteration, covariance_statistic,
                                          khatri_rao, model_covariance,
                                          posterior_kernel, precision,
                                          prepare, source_stats)

from reference import (average_reference, champagne_grouped_numpy,
                       champagne_numpy, focal_problem)

B = max(KR_MIN_BATCH, 8)


@pytest.fixture(scope="module")
def batch():
    """B referenced problems on one lead field (the first one's)."""
    L = None
    Ys = []
    for seed in range(B):
        Ls, _, Y, _, _ = focal_problem(np.random.default_rng(10 + seed))
        L = Ls if L is None else L
        # the same lead field for all: re-simulate data on it
        rng = np.random.default_rng(100 + seed)
        X = np.zeros((L.shape[1], Y.shape[1]))
        X[rng.choice(L.shape[1], 3, replace=False)] = rng.standard_normal(
            (3, Y.shape[1])) * 3.0
        S = L @ X
        Ys.append(S + rng.standard_normal(S.shape) * 0.3 * S.std())
    Lr, _, Q = average_reference(L, Ys[0])
    Yr = np.stack([Y - Y.mean(0) for Y in Ys])
    return Lr, Yr, Q


@pytest.fixture
def gemm_only(monkeypatch):
    """Force the products with L (the path of single samples)."""
    monkeypatch.setattr(solver, "KR_MIN_BATCH", 10 ** 9)


def _state(L, Cy, null, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    prob = prepare(L.to(dtype), Cy, null_space=null)
    gamma = (torch.rand(Cy.shape[0], L.shape[1], generator=g,
                        dtype=torch.float64) ** 4).to(dtype)
    return prob, gamma


def test_khatri_rao_table():
    L = torch.randn(5, 7, dtype=torch.float64)
    kr = khatri_rao(L, batch_size=B)
    iu = torch.triu_indices(5, 5)
    np.testing.assert_allclose(kr.LL, (L[iu[0]] * L[iu[1]]).T)
    assert khatri_rao(L, batch_size=B) is kr  # cached on the tensor
    assert khatri_rao(L, batch_size=1) is None  # single samples: GEMM
    L.mul_(2.0)  # modified in place: rebuilt
    kr2 = khatri_rao(L, batch_size=B)
    assert kr2 is not kr
    np.testing.assert_allclose(kr2.LL, 4 * kr.LL)
    assert khatri_rao(L.requires_grad_(), batch_size=B) is None


def test_khatri_rao_size_limit(monkeypatch):
    """Tables over the size limit are not built: the GEMMs with L remain."""
    L = torch.randn(5, 7, dtype=torch.float64)
    monkeypatch.setattr(solver, "KR_MAX_BYTES", 7 * 15 * 8 - 1)
    assert khatri_rao(L, batch_size=B) is None
    gamma = torch.rand(B, 7, dtype=torch.float64)
    torch.testing.assert_close(model_covariance(L, gamma),
                               (L * gamma[:, None]) @ L.T)
    monkeypatch.setattr(solver, "KR_MAX_BYTES", 7 * 15 * 8)
    assert khatri_rao(L, batch_size=B) is not None


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-12),
                                         (torch.float32, 1e-4)])
def test_khatri_rao_products_equal_gemm(batch, dtype, rtol, monkeypatch):
    """L Gamma L^T and (a, b) of a batch are those of the products with L:
    to round-off in float64; in float32 within 1e-4 relative (per entry of
    a and b, against float64), the accuracy of the products with L."""
    L, Y, Q = batch
    null = NullSpace(Q)
    Cy = covariance_statistic(torch.as_tensor(Y))
    prob64, gamma64 = _state(torch.as_tensor(L), Cy, null, torch.float64)
    prob, gamma = _state(torch.as_tensor(L), Cy, null, dtype)
    S_ref = model_covariance(prob64.L_n, gamma64)
    prec = precision(S_ref, prob64.state.lam, null)
    ref = source_stats(prob64.L_n, prob64.Cy_n, gamma64, prec, False)
    assert khatri_rao(prob.L_n, B) is not None
    out = {}
    for path in ("kr", "gemm"):
        if path == "gemm":
            monkeypatch.setattr(solver, "KR_MIN_BATCH", 10 ** 9)
        S = model_covariance(prob.L_n, gamma)
        st = source_stats(prob.L_n, prob.Cy_n, gamma, prec, False, prob.Lt)
        out[path] = (S, st)
        np.testing.assert_allclose(S.double(), S_ref, rtol=0,
                                   atol=rtol * float(S_ref.abs().max()))
        for k in ("a", "b"):
            np.testing.assert_allclose(getattr(st, k).double(), getattr(ref, k),
                                       rtol=rtol, atol=0)
    # the Khatri-Rao S is exactly symmetric
    S = out["kr"][0]
    assert torch.equal(S, S.transpose(-1, -2))


def test_batched_network_equals_numpy_champagne(batch):
    """A batch (Khatri-Rao path) of untrained networks is Champagne, sample
    by sample (independent NumPy code, reduced coordinates)."""
    L, Y, Q = batch
    null = NullSpace(Q)
    Lt, Yt = torch.as_tensor(L), torch.as_tensor(Y)
    net = UnfoldedSBL(25, "cb", True).double()
    with torch.no_grad():
        out = net(Lt, covariance_statistic(Yt), null_space=null)
        K = out.posterior_kernel()
    prob = prepare(Lt, covariance_statistic(Yt), null_space=null)
    g0, l0 = prob.to_input_units(prob.state.gamma, prob.state.lam)
    for i in range(0, B, 3):
        g_ref, l_ref, _, post = champagne_numpy(
            L, Y[i], g0[i].numpy(), l0[i].numpy(), 25, True, Q=Q)
        np.testing.assert_allclose(out.gamma[i].numpy(), g_ref, rtol=1e-8,
                                   atol=1e-11 * g_ref.max())
        np.testing.assert_allclose(out.lam[i].numpy(), l_ref, rtol=1e-8)
        X_ref = post(g_ref, l_ref)[1]
        np.testing.assert_allclose(K[i].numpy() @ Y[i], X_ref, rtol=1e-7,
                                   atol=1e-10 * np.abs(X_ref).max())


def test_batched_grouped_sources_equal_numpy(batch):
    """Free orientation (groups of 3 columns) on the Khatri-Rao path."""
    L, Y, _ = batch
    L3 = L[:, :198]
    Lt, Yt = torch.as_tensor(L3), torch.as_tensor(Y)
    net = UnfoldedSBL(10, "cb", True).double()
    with torch.no_grad():
        out = net(Lt, covariance_statistic(Yt), n_orient=3)
    prob = prepare(Lt, covariance_statistic(Yt), n_orient=3)
    g0, l0 = prob.to_input_units(prob.state.gamma, prob.state.lam)
    for i in (0, B - 1):
        g_ref, l_ref, _ = champagne_grouped_numpy(
            L3, Y[i], g0[i].numpy(), l0[i].numpy(), 10, True, 3)
        np.testing.assert_allclose(out.gamma[i].numpy(), g_ref, rtol=1e-8,
                                   atol=1e-11 * g_ref.max())
        np.testing.assert_allclose(out.lam[i].numpy(), l_ref, rtol=1e-8)


def _layers_and_loss(prob, null, gamma0, lam0, n=3):
    """A few layers and a loss on kernel, noise and cost (float64)."""
    state = CBState(gamma0, lam0, model_covariance(prob.L_n, gamma0))
    costs = []
    for _ in range(n):
        state, sinfo, _ = cb_iteration(prob.L_n, prob.Cy_n, state, True,
                                       null_space=null, Lt=prob.Lt)
        costs.append(sinfo["cost"])
    K = posterior_kernel(prob.L_n, state.gamma, state.lam, null)
    return (K.square().sum() + state.lam.log().sum()
            + torch.stack(costs).sum())


def test_gradients_equal_on_both_paths(batch, monkeypatch):
    """Backward through the Khatri-Rao products and the inverse's own
    backward equal the backward through the products with L and through
    the factorisation (float64, to round-off)."""
    L, Y, Q = batch
    null = NullSpace(Q)
    Cy = covariance_statistic(torch.as_tensor(Y))
    prob, gamma = _state(torch.as_tensor(L), Cy, null, torch.float64)
    grads = []
    for path in ("fast", "reference"):
        if path == "reference":
            monkeypatch.setattr(solver, "KR_MIN_BATCH", 10 ** 9)
            monkeypatch.setattr(solver._InverseFromCholesky, "apply",
                                lambda sigma, chol: torch.cholesky_inverse(
                                    torch.linalg.cholesky(sigma)))
        g = gamma.clone().requires_grad_()
        lam = prob.state.lam.clone().requires_grad_()
        _layers_and_loss(prob, null, g, lam).backward()
        grads.append((g.grad, lam.grad))
    for fast, ref in zip(*grads):
        np.testing.assert_allclose(fast, ref, rtol=1e-9,
                                   atol=1e-12 * float(ref.abs().max()))


def test_inverse_backward_gradcheck():
    A = torch.randn(2, 5, 5, dtype=torch.float64)
    sigma = (A @ A.transpose(-1, -2) + 5 * torch.eye(5, dtype=torch.float64))

    def f(S):
        S = 0.5 * (S + S.transpose(-1, -2))  # the solver's inputs are symmetric
        return precision(S, torch.ones(2, 5, dtype=torch.float64)).W

    assert torch.autograd.gradcheck(f, (sigma.requires_grad_(),))


def test_training_step_float32_matches_gemm_path(batch, monkeypatch):
    """A float32 training step (batch, Khatri-Rao) gives the gradients of
    the products with L within float32 accuracy."""
    L, Y, Q = batch
    null = NullSpace(Q)
    Lt = torch.as_tensor(L, dtype=torch.float32)
    Cy = covariance_statistic(torch.as_tensor(Y))
    Yt = torch.as_tensor(Y, dtype=torch.float32)
    torch.manual_seed(0)
    net = UnfoldedSBL(6, "deep-cb", True)
    with torch.no_grad():  # non-zero corrections
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    grads = []
    for path in ("kr", "gemm"):
        if path == "gemm":
            monkeypatch.setattr(solver, "KR_MIN_BATCH", 10 ** 9)
        net.zero_grad()
        out = net(Lt, Cy, null_space=null)
        out.posterior_mean(Yt).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    rel = torch.linalg.norm(grads[0] - grads[1]) / torch.linalg.norm(grads[1])
    assert rel < 1e-3


def test_normalized_lead_field_cache():
    L = torch.randn(6, 20, dtype=torch.float64)
    Cy = covariance_statistic(torch.randn(1, 6, 30, dtype=torch.float64))
    p1, p2 = prepare(L, Cy), prepare(L, Cy)
    assert p1.L_n is p2.L_n and p1.Lt is p2.Lt  # shared while L lives
    torch.testing.assert_close(p1.L_n, L / torch.sqrt((L ** 2).sum() / 6))
    torch.testing.assert_close(p1.Lt, p1.L_n.T)
    L.mul_(3.0)  # in place: recomputed
    p3 = prepare(L, Cy)
    assert p3.L_n is not p1.L_n
    torch.testing.assert_close(p3.l_scale, 3 * p1.l_scale)
    p3.L_n.add_(1.0)  # a cached tensor modified in place: recomputed
    p4 = prepare(L, Cy)
    assert p4.L_n is not p3.L_n
    torch.testing.assert_close(p4.L_n, p1.L_n)
    # entries go with their tensor
    n = len(solver._LEAD_FIELD_CACHE._entries)
    del L, p1, p2, p3, p4
    gc.collect()
    assert len(solver._LEAD_FIELD_CACHE._entries) < n
    # a lead field that needs a gradient is never cached
    Lg = torch.randn(6, 20, dtype=torch.float64, requires_grad=True)
    assert prepare(Lg, Cy).L_n is not prepare(Lg, Cy).L_n


# --------------------------------------------------------------------------
# the MNE-facing caches


def test_solver_threads_restored():
    from mne_unfolded_sbl.inverse import _solver_threads

    n = torch.get_num_threads()
    with _solver_threads("cpu", 1):
        assert torch.get_num_threads() == 1
        with _solver_threads("cpu", 1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == n
    with _solver_threads("cpu", 64):  # large batches keep the setting
        assert torch.get_num_threads() == n
    with pytest.raises(RuntimeError):
        with _solver_threads("cpu", 1):
            raise RuntimeError
    assert torch.get_num_threads() == n


def test_operator_caches(train_fwd):
    import mne

    from mne_unfolded_sbl import apply_unfolded_sbl, make_unfolded_sbl_operator
    from mne_unfolded_sbl.core.simulator import SimulationConfig
    from mne_unfolded_sbl.simulation import simulate_evoked

    fwd = train_fwd
    evoked, _, cov = simulate_evoked(
        fwd, SimulationConfig(n_sources=(2, 2), spread=0.0,
                              snr_db=(25.0, 25.0), n_times=100),
        seed=3, verbose=False)
    op = make_unfolded_sbl_operator(evoked.info, fwd, cov, verbose=False)
    a = apply_unfolded_sbl(evoked, op, None, "cb", verbose=False)
    b = apply_unfolded_sbl(evoked, op, None, "cb", verbose=False)
    np.testing.assert_array_equal(a.data, b.data)
    assert any(k[0] == "channels" for k in op._cache)
    # another info is checked again: a bad channel of the operator, and
    # data without the reference projector, are refused after a cached call
    ev = evoked.copy()
    ev.info["bads"] = [op.ch_names[0]]
    with pytest.raises(ValueError, match="mark as bad"):
        apply_unfolded_sbl(ev, op, None, "cb", verbose=False)
    ev = evoked.copy().del_proj()
    with pytest.raises(ValueError, match="average reference"):
        apply_unfolded_sbl(ev, op, None, "cb", verbose=False)
    # many distinct infos evict only older channel checks
    for i in range(20):
        op._cached(("channels", i), lambda: i)
    assert sum(k[0] == "channels" for k in op._cache) == 16
    assert any(k[0] == "lead-field" for k in op._cache)
    # copies and pickles start with an empty cache
    op2 = pickle.loads(pickle.dumps(op))
    assert op2._cache == {}
    c = apply_unfolded_sbl(evoked, op2, None, "cb", verbose=False)
    np.testing.assert_array_equal(a.data, c.data)
    assert isinstance(c, mne.SourceEstimate)


def test_inference_mode_is_supported():
    """Under torch.inference_mode the caches are bypassed, results equal."""
    from mne_unfolded_sbl.core.network import UnfoldedSBL
    from mne_unfolded_sbl.core.solver import covariance_statistic

    gen = torch.Generator().manual_seed(0)
    L = torch.randn(16, 60, generator=gen)
    Y = torch.randn(10, 16, 30, generator=gen)  # batch >= KR_MIN_BATCH
    net = UnfoldedSBL(4, "cb", True)
    with torch.inference_mode():
        a = net(L, covariance_statistic(Y)).gamma
        b = net(L, covariance_statistic(Y)).gamma
    with torch.no_grad():
        c = net(L, covariance_statistic(Y)).gamma
    torch.testing.assert_close(a, c)
    torch.testing.assert_close(a, b)


# --------------------------------------------------------------------------
# the inference path (no gradient to record): one evoked response


def _perturbed(model, learn_noise, features, seed=0):
    torch.manual_seed(seed)
    net = UnfoldedSBL(5, model, learn_noise, features=features).double()
    with torch.no_grad():  # non-zero corrections
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


@pytest.mark.parametrize("model, features", [("cb", "relative"),
                                             ("deep-cb", "relative"),
                                             ("deep-cb", "absolute")])
@pytest.mark.parametrize("learn_noise", [True, False])
def test_inference_path_equals_autograd_path(batch, model, features,
                                             learn_noise):
    """One referenced sample: the inference path (in-place statistics,
    [W; P] times L, both log-statistics in one pass, the MLPs as
    functional calls with a shared proposal) gives the values of the
    path autograd records through (float64, to round-off)."""
    L, Y, Q = batch
    null = NullSpace(Q)
    Lt = torch.as_tensor(L)
    Cy = covariance_statistic(torch.as_tensor(Y[:1]))
    noise = None if learn_noise else torch.full((L.shape[0],), 0.05 * float(
        Cy.diagonal(dim1=-2, dim2=-1).mean()), dtype=torch.float64)
    net = _perturbed(model, learn_noise, features)
    with torch.no_grad():
        fast = net(Lt, Cy, noise, null_space=null, return_trajectory=True)
        K_fast = fast.posterior_kernel()
    # autograd records: the out-of-place expressions run
    Cg = Cy.clone().requires_grad_()  # every statistic depends on it
    ref = net(Lt, Cg, noise, null_space=null, return_trajectory=True)
    K_ref = ref.posterior_kernel()
    assert K_ref.requires_grad
    K_ref, ref_gamma, ref_lam = (t.detach() for t in (K_ref, ref.gamma,
                                                       ref.lam))
    for a, b in ((fast.gamma, ref_gamma), (fast.lam, ref_lam),
                 (K_fast, K_ref)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-9,
                                   atol=1e-12 * float(b.abs().max()))
    for a, b in zip(fast.trajectory, ref.trajectory):
        for k in ("delta_source", "delta_noise"):
            if a[k] is not None:
                np.testing.assert_allclose(a[k].numpy(), b[k].detach().numpy(),
                                           rtol=1e-9, atol=1e-12)


def test_single_sample_inference_equals_numpy_champagne(batch):
    """The untrained network on one sample (the inference path of the API)
    is Champagne (independent NumPy code, reduced coordinates)."""
    L, Y, Q = batch
    null = NullSpace(Q)
    Lt = torch.as_tensor(L)
    Cy = covariance_statistic(torch.as_tensor(Y[1:2]))
    net = UnfoldedSBL(25, "cb", True).double()
    with torch.no_grad():
        out = net(Lt, Cy, null_space=null)
        K = out.posterior_kernel()
    prob = prepare(Lt, Cy, null_space=null)
    g0, l0 = prob.to_input_units(prob.state.gamma, prob.state.lam)
    g_ref, l_ref, _, post = champagne_numpy(
        L, Y[1], g0[0].numpy(), l0[0].numpy(), 25, True, Q=Q)
    np.testing.assert_allclose(out.gamma[0].numpy(), g_ref, rtol=1e-8,
                               atol=1e-11 * g_ref.max())
    np.testing.assert_allclose(out.lam[0].numpy(), l_ref, rtol=1e-8)
    X_ref = post(g_ref, l_ref)[1]
    np.testing.assert_allclose(K[0].numpy() @ Y[1], X_ref, rtol=1e-7,
                               atol=1e-10 * np.abs(X_ref).max())


def test_single_sample_float32_inference_equals_batch_path(batch):
    """float32, the API's working precision: a sample alone (inference
    path) and the same sample inside a batch (Khatri-Rao path) give the
    same network output within float32 accuracy."""
    L, Y, Q = batch
    null = NullSpace(Q)
    Lt = torch.as_tensor(L, dtype=torch.float32)
    Cy = covariance_statistic(torch.as_tensor(Y))
    net = _perturbed("deep-cb", True, "relative").float()
    with torch.no_grad():
        many = net(Lt, Cy, null_space=null)
        K_many = many.posterior_kernel()
        for i in (0, B - 1):
            one = net(Lt, Cy[i:i + 1], null_space=null)
            K_one = one.posterior_kernel()[0]
            rel = torch.linalg.norm(K_one - K_many[i]) / torch.linalg.norm(
                K_many[i])
            assert rel < 1e-4
            np.testing.assert_allclose(one.lam[0], many.lam[i], rtol=1e-4)


def test_null_space_complete_in_place():
    gen = torch.Generator().manual_seed(1)
    Q = torch.linalg.qr(torch.randn(7, 2, generator=gen,
                                    dtype=torch.float64))[0]
    null = NullSpace(Q)
    A = torch.randn(3, 7, 7, generator=gen, dtype=torch.float64)
    C = A @ A.transpose(-1, -2)
    ref = null.complete(C)
    out = C.clone()
    assert null.complete_(out) is out
    torch.testing.assert_close(out, ref, rtol=1e-13, atol=1e-13)


def test_inference_precision_jitters_only_failing_samples():
    """A singular sample beside a regular one: under no_grad (one call to
    the factorisation, which raises) the jitter reaches the failing sample
    only, as on the path with flags."""
    gen = torch.Generator().manual_seed(2)
    A = torch.randn(2, 6, 4, generator=gen, dtype=torch.float64)
    S = A @ A.transpose(-1, -2)  # rank 4 of 6
    lam = torch.zeros(2, 6, dtype=torch.float64)
    lam[0] = 0.5  # sample 0 regular, sample 1 singular
    with torch.no_grad():
        fast = precision(S, lam)
    ref = precision(S.clone().requires_grad_(), lam)
    torch.testing.assert_close(fast.chol, ref.chol.detach())
    torch.testing.assert_close(fast.W, ref.W.detach())
    exact = torch.linalg.cholesky(S[0] + torch.diag(lam[0]))
    torch.testing.assert_close(fast.chol[0], exact)


def _referenced_state(batch, dtype=torch.float64, seed=3):
    """A referenced problem (first sample) and a random state on it."""
    L, Y, Q = batch
    null = NullSpace(Q)
    Lt = torch.as_tensor(L, dtype=dtype)
    Cy = covariance_statistic(torch.as_tensor(Y[:2]))
    prob, gamma = _state(Lt, Cy, null, dtype, seed)
    g = torch.Generator().manual_seed(seed)
    lam = (0.05 + torch.rand(2, L.shape[0], generator=g,
                             dtype=torch.float64)).to(dtype)
    return prob, gamma, lam


@pytest.mark.parametrize("with_null", [True, False])
def test_shared_noise_precision_equals_precision(batch, with_null):
    """The inference layer's factorisations (noise part formed once per
    layer, P Lambda P + Q Q^T added to S) equal :func:`precision`, which
    completes P (S + Lambda) P + Q Q^T, for S = L Gamma L^T of a
    referenced lead field (L = P L)."""
    prob, gamma, lam = _referenced_state(batch)
    null = prob.null_space if with_null else None
    S = model_covariance(prob.L_n, gamma)
    ref = precision(S, lam, null)
    with torch.no_grad():
        noise = solver._shared_noise(lam, null)
        fast = solver._precision_with_noise(S, noise)
    scale = float(ref.W.abs().max())
    torch.testing.assert_close(fast.W, ref.W, rtol=1e-10, atol=1e-12 * scale)
    torch.testing.assert_close(fast.chol, ref.chol, rtol=1e-10, atol=1e-12)
    if with_null:
        # the noise matrix alone: P diag(lam) P + Q Q^T
        P = torch.eye(null.Q.shape[0], dtype=torch.float64) - null.QQt
        torch.testing.assert_close(
            noise, P @ torch.diag_embed(lam) @ P + null.QQt, rtol=1e-13,
            atol=1e-14)


@pytest.mark.parametrize("learn_noise", [True, False])
def test_inference_layer_equals_out_of_place_layer(batch, learn_noise):
    """One corrected layer: the inference path (shared noise part, in-place
    statistics) equals the out-of-place path autograd records, float64."""
    prob, gamma, lam = _referenced_state(batch)
    net = _perturbed("deep-cb", learn_noise, "relative")
    state = CBState(gamma, lam, model_covariance(prob.L_n, gamma))
    layer = net.layers[0]
    with torch.no_grad():
        fast, _, _ = layer(prob.L_n, prob.Cy_n, state, learn_noise, None,
                           prob.null_space, True, prob.Lt)
    ref, _, _ = layer(prob.L_n, prob.Cy_n, state, learn_noise, None,
                      prob.null_space, True, prob.Lt)
    assert ref.gamma.requires_grad
    for a, b in ((fast.gamma, ref.gamma), (fast.lam, ref.lam),
                 (fast.S, ref.S)):
        b = b.detach()
        torch.testing.assert_close(a, b, rtol=1e-9,
                                   atol=1e-12 * float(b.abs().max()))


def test_float32_inference_close_to_float64(batch):
    """float32 (the API's working precision) on the inference path: the
    network output and kernel within 1e-4 (relative Frobenius) of the
    same network in float64."""
    L, Y, Q = batch
    null = NullSpace(Q)
    Cy = covariance_statistic(torch.as_tensor(Y[:1]))
    net = _perturbed("deep-cb", True, "relative")
    outs = {}
    for dtype in (torch.float64, torch.float32):
        with torch.no_grad():
            out = net.to(dtype)(torch.as_tensor(L, dtype=dtype), Cy,
                                null_space=null)
            outs[dtype] = (out.gamma.double(), out.lam.double(),
                           out.posterior_kernel().double())
    for a, b in zip(outs[torch.float32], outs[torch.float64]):
        assert float(torch.linalg.norm(a - b) / torch.linalg.norm(b)) < 1e-4


def test_posterior_kernel_reuses_final_state_and_right_factor(batch):
    """The kernel of the final state from its L Gamma L^T (held by the
    output) equals the one formed afresh; ``right`` gives ``K @ right``."""
    L, Y, Q = batch
    null = NullSpace(Q)
    Lt = torch.as_tensor(L)
    Cy = covariance_statistic(torch.as_tensor(Y[:2]))
    net = _perturbed("deep-cb", True, "relative")
    with torch.no_grad():
        out = net(Lt, Cy, null_space=null, return_trajectory=True)
        assert out.S_n is not None
        K = out.posterior_kernel()
        K_last = out.posterior_kernel(layer=len(net.layers) - 1)  # afresh
        right = torch.randn(L.shape[0], L.shape[0] + 3, dtype=torch.float64,
                            generator=torch.Generator().manual_seed(0))
        K_right = out.posterior_kernel(right=right)
    torch.testing.assert_close(K, K_last, rtol=1e-12, atol=0.0)
    torch.testing.assert_close(posterior_kernel(out.L_n, out.gamma_n,
                                                out.lam_n, null)
                               / out.l_scale, K, rtol=1e-12, atol=0.0)
    scale = float((K @ right).abs().max())
    torch.testing.assert_close(K_right, K @ right, rtol=1e-9,
                               atol=1e-12 * scale)
