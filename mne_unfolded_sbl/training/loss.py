"""Training objective (paper eq. 12-14, appendix A.1).

``loss = l_K + beta_ds * mean_{k in S} l_k`` with

* ``l_k`` the per-sample normalised squared error of the posterior mean
  after layer ``k``, ``||Xbar_k - X||_F^2 / ||X||_F^2``, averaged over the
  mini-batch (scale-free: samples of any amplitude weigh the same; it is the
  paper's rMSE, so the validation loss reads directly as a mean rMSE);
* ``S`` a set of ``n_ds_layers`` (5) layers drawn uniformly without
  replacement, once per mini-batch, among the intermediate layers (all but
  the supervised output layer).

In a progressive phase that trains layer ``k``, the network runs layers
``0..k`` only and ``l_K`` is the loss after layer ``k``; the earlier layers
are frozen, so a deep-supervision term on them would be a constant with no
gradient and it is not computed there.

**Do no harm.** With ``harm_weight = alpha > 0`` every supervised error
``l`` (per sample) also pays ``alpha * relu(l - l_cb)``, where ``l_cb`` is
the error of classical convex bounding at the same depth on the same sample
(bank training, :mod:`.bank`). Where a correction cannot help a sample, the
cheapest way to lower the loss is to leave the classical update alone; a
correction that helps on average by hurting some samples (spurious sources
on a single focal dipole, say) is penalised on exactly those samples.

**Log-ratio objective** (``loss="log-ratio"``, bank training). The mean
error above weighs samples by their error: on a wide distribution it is
dominated by the hard samples where classical convex bounding diverges
(errors of 2-10), and a focal dipole whose classical error is 0.03 barely
counts, even when a correction triples it with weak spurious sources. The
log-ratio objective scores every sample by how much it improves on the
classical solver, ``r = log(l + eps) - log(l_cb + eps)`` (``eps`` =
:data:`LOG_RATIO_EPS`), and pays ``mean(r) + alpha * mean(relu(r))``: a
halving of the error counts the same on an easy sample as on a hard one,
and every sample made worse pays ``1 + alpha`` times its log-ratio.

**Shape term** (``shape_weight = w > 0``, with the log-ratio objective).
The plain error rewards shrinking an uncertain estimate towards zero; the
benchmark's other metrics (EMD, F1, localisation error) do not depend on
the scale of the estimate. The shape error ``1 - cos^2(Xhat, X)`` (the
error of the best-scaled estimate, :func:`~.bank.nmse_lowrank`) gets the
same log-ratio treatment against classical convex bounding's and is added
with weight ``w``: a correction may not buy a lower error with a worse
spatial pattern.

**Spatial term** (``spatial_weight = v > 0``, with the log-ratio
objective). Neither error sees *where* misplaced amplitude lies: on smooth
patches at low SNR a correction lowered both errors while moving
amplitude away from the patches (EMD up 4-6 %, F1 down 8-13 % against
classical convex bounding). The spatial error is the energy distance
(:func:`energy_distance`) between the true and estimated maps of temporal
RMS amplitude, each without the sources below :data:`SPATIAL_THRESHOLD` of
its peak and normalised to unit mass, on the source positions (the masses
and ground cost of the EMD of the do-no-harm tables): a point mass moved
by ``d`` costs ``2 d``, like twice its EMD, and it is differentiable and costs
one ``N x N`` product per sample. It gets the same log-ratio treatment
(floor :data:`SPATIAL_EPS`) and is added with weight ``v``.

**Per-regime hinge** (``regime_weight = rho > 0``, with the log-ratio
objective and a bank of several regimes). The per-sample hinge lets a
correction trade a small loss on every sample of one regime for a large
gain on another: a pointwise correction cannot tell a sample of an
extended patch from one of a focal dipole by its own features, and with
focal regimes the larger part of the mixture it sparsified both (EMD
+8 %, F1 -11 % on extended patches for the run without this term, with
93 % of the samples worse). The do-no-harm check asks for no regime to be
worse *on average*; so each log-ratio term also pays
``rho * mean_g relu(mean_{i in g} r_i)`` over the regimes ``g`` of the
batch (the bank stores each sample's regime): a regime made worse on
average costs ``rho`` times its mean log-ratio, whatever the others gain.

**Support term** (``support_weight = u > 0``, with the log-ratio
objective). The spatial term weighs misplaced amplitude by its distance,
so weak spurious sources next to the true ones cost little; the
benchmark's F1 counts each of them. At 500 samples per setting the
source-only Deep CB was about 1 % worse than classical convex bounding on
2-4 dipoles at 1-3 dB (F1) because it found more of the true sources and
more spurious ones (recall +2.3, precision -2.1 points). The support error
(:func:`support_error`) is ``1 -`` a soft F1 of the RMS maps, with the
benchmark's support threshold
(:data:`~mne_unfolded_sbl.core.metrics.SUPPORT_THRESHOLD` of the peak) and
a smooth step of half-width :data:`SUPPORT_WIDTH` around it for the
estimate's support; it gets the same log-ratio treatment (floor
:data:`SUPPORT_EPS`).
"""

import torch
from torch import nn

from ..core.metrics import SUPPORT_THRESHOLD

#: Floor added to both errors of the log-ratio objective: errors below it
#: (a near-perfect estimate) are not worth chasing.
LOG_RATIO_EPS = 1e-3
#: Floor (metres) added to both spatial errors of the log-ratio objective:
#: 1 mm, well below the spacing of the source spaces.
SPATIAL_EPS = 1e-3
#: Relative threshold of the spatial term's maps: sources below 1 % of a
#: map's peak carry no mass, as in the EMD of the do-no-harm tables
#: (``--emd-threshold 0.01``). Without it the term also scored the diffuse
#: mass of many sources at 0.01-1 % of the peak, which the classical
#: solver leaves and the tables do not see: on smooth sources at low SNR
#: the source-only Deep CB then beat CB in energy distance and exact EMD
#: while losing in the tables' EMD.
SPATIAL_THRESHOLD = 0.01
#: Half-width of the smooth step that makes the estimate's support soft (in
#: units of the peak RMS): a source below 0.05 of the peak is out, above
#: 0.15 in, and only sources in between have a gradient (a sigmoid would
#: count the ~1,000 near-zero sources of a sparse estimate as several).
SUPPORT_WIDTH = 0.05
#: Floor added to both support errors of the log-ratio objective: two F1
#: points.
SUPPORT_EPS = 0.02


def energy_distance(mass_true, mass_est, dist, threshold=0.0):
    """Energy distance between two mass maps on the same sources.

    ``-(p - q)^T D (p - q)`` with ``p``, ``q`` the maps normalised to unit
    mass and ``D`` the source-to-source distances: zero only when the maps
    are proportional, ``2 d`` for two point masses ``d`` apart, and never
    negative (the Euclidean distance is conditionally negative definite).

    Parameters
    ----------
    mass_true, mass_est : torch.Tensor, shape (B, N)
        Non-negative masses (temporal RMS amplitudes); a map of zero mass
        counts as uniform.
    dist : torch.Tensor, shape (N, N)
        Distances between the sources.
    threshold : float
        Relative threshold: in each map, sources below ``threshold`` times
        its peak carry no mass (the benchmark's ``emd_threshold``;
        the training objective uses :data:`SPATIAL_THRESHOLD`).

    Returns
    -------
    e : torch.Tensor, shape (B,), float64
        In the units of ``dist``.
    """
    def unit(m):
        m = m.to(dist.dtype).clamp_min(0.0)
        if threshold > 0:
            m = torch.where(m >= threshold * m.amax(-1, keepdim=True), m,
                            torch.zeros_like(m))
        total = m.sum(-1, keepdim=True)
        flat = torch.full_like(m, 1.0 / m.shape[-1])
        return torch.where(total > 0, m / total.clamp_min(
            torch.finfo(m.dtype).tiny), flat)

    d = unit(mass_true) - unit(mass_est)
    e = -(d @ dist * d).sum(-1, dtype=torch.float64)
    return e.clamp_min(0.0)


def support_error(mass_true, mass_est, threshold=SUPPORT_THRESHOLD,
                  width=SUPPORT_WIDTH):
    """One minus a soft F1 of support recovery between two mass maps.

    The true support is ``{n : m_n >= threshold * max m}`` (hard, as the
    benchmark's F1); the estimate's is the smooth step ``3 u^2 - 2 u^3`` of
    ``u = clip((m_n / max m - threshold) / (2 width) + 1/2, 0, 1)``: 0 below
    ``threshold - width``, 1 above ``threshold + width``, differentiable in
    between. ``F1 = 2 |S_est ∩ S_true| / (|S_est| + |S_true|)`` with those
    (soft) counts: the benchmark's F1 when no source of the estimate lies
    within ``width`` of the threshold.

    Parameters
    ----------
    mass_true, mass_est : torch.Tensor, shape (B, N)
        Non-negative masses (temporal RMS amplitudes).
    threshold, width : float

    Returns
    -------
    err : torch.Tensor, shape (B,), float64
        In ``[0, 1]``; 1 for an estimate of zero mass.
    """
    def rel(m):
        m = m.to(torch.float64).clamp_min(0.0)
        peak = m.amax(-1, keepdim=True)
        return m / peak.clamp_min(torch.finfo(torch.float64).tiny)

    t = (rel(mass_true) >= threshold).to(torch.float64)
    u = ((rel(mass_est) - threshold) / (2.0 * width) + 0.5).clamp(0.0, 1.0)
    e = u * u * (3.0 - 2.0 * u)
    tp = (t * e).sum(-1)
    f1 = 2.0 * tp / (t.sum(-1) + e.sum(-1)).clamp_min(1e-12)
    return (1.0 - f1).clamp(0.0, 1.0)


def regime_means(r, groups):
    """Mean of ``r`` (B,) within each group, ``groups`` (B,) in ``0..G-1``
    with every group present; shape (G,)."""
    n = int(groups.max()) + 1
    sums = torch.zeros(n, dtype=r.dtype, device=r.device).index_add(0, groups, r)
    counts = torch.bincount(groups, minlength=n).to(r.dtype)
    return sums / counts


def nmse(X_est, X):
    """Per-sample ``||X_est - X||^2 / ||X||^2``, shape (B,), summed in float64."""
    d = X_est - X
    num = (d * d).sum(dim=(1, 2), dtype=torch.float64)
    den = (X * X).sum(dim=(1, 2), dtype=torch.float64)
    return num / den.clamp_min(torch.finfo(torch.float64).tiny)


def draw_ds_layers(n_candidates, n_ds, generator):
    """Sorted indices of ``min(n_ds, n_candidates)`` distinct layers."""
    n = min(int(n_ds), int(n_candidates))
    if n <= 0:
        return []
    perm = torch.randperm(int(n_candidates), generator=generator)[:n]
    return sorted(int(i) for i in perm)


class LossModule(nn.Module):
    """Wraps the network so that one ``forward`` returns the training loss.

    This is the module given to
    :class:`~torch.nn.parallel.DistributedDataParallel`: its forward runs the
    network and the posterior means, so DDP sees the whole graph.
    """

    def __init__(self, net, objective="nmse", shape_weight=0.0,
                 spatial_weight=0.0, regime_weight=0.0, support_weight=0.0):
        super().__init__()
        if objective not in ("nmse", "log-ratio"):
            raise ValueError("objective must be 'nmse' or 'log-ratio', got "
                             f"{objective!r}")
        for name, w in (("shape_weight", shape_weight),
                        ("spatial_weight", spatial_weight),
                        ("regime_weight", regime_weight),
                        ("support_weight", support_weight)):
            if w < 0 or (w > 0 and objective != "log-ratio"):
                raise ValueError(f"{name} must be >= 0, and > 0 only with "
                                 f"the log-ratio objective; got {w}")
        self.net = net
        self.objective = objective
        self.shape_weight = float(shape_weight)
        self.spatial_weight = float(spatial_weight)
        self.regime_weight = float(regime_weight)
        self.support_weight = float(support_weight)

    def forward(self, L, batch, n_layers, ds_layers=(), beta_ds=0.0,
                harm_weight=0.0):
        """Return ``(loss, l_final, l_ds)`` (the last two detached).

        Parameters
        ----------
        L : torch.Tensor, shape (M, N)
        batch : dict
            ``Y``, ``X``, ``Cy``, ``noise_var`` (used by source-only nets)
            and optionally ``null_space`` (average-referenced data).
        n_layers : int
            Run the first ``n_layers`` layers; the output after the last of
            them is supervised.
        ds_layers : sequence of int
            Trajectory indices (< ``n_layers - 1``) of the deep supervision.
        beta_ds : float
        harm_weight : float
            Weight of the do-no-harm hinge (bank batches only).
        """
        if batch.get("bank"):
            return self._bank_loss(batch, n_layers, ds_layers, beta_ds,
                                   harm_weight)
        if self.objective != "nmse":
            raise ValueError(f"The {self.objective!r} objective needs bank "
                             "batches (the classical reference errors).")
        net = self.net
        noise_var = None if net.learn_noise else batch["noise_var"]
        ds_layers = list(ds_layers) if beta_ds > 0 else []
        out = net(L, batch["Cy"], noise_var, n_layers=n_layers,
                  return_trajectory=bool(ds_layers),
                  null_space=batch.get("null_space"))
        l_final = nmse(out.posterior_mean(batch["Y"]), batch["X"]).mean()
        loss = l_final
        l_ds = torch.zeros((), dtype=torch.float64, device=l_final.device)
        if ds_layers:
            l_ds = torch.stack([
                nmse(out.posterior_mean(batch["Y"], layer=k), batch["X"]).mean()
                for k in ds_layers]).mean()
            loss = loss + beta_ds * l_ds
        return loss, l_final.detach(), l_ds.detach()

    def _bank_loss(self, batch, n_layers, ds_layers, beta_ds, harm_weight):
        shard, idx, start = batch["shard"], batch["idx"], batch["start"]
        ds_layers = [k for k in ds_layers if k >= start] if beta_ds > 0 else []
        out = self.net.run(batch["problem"], start=start, stop=n_layers,
                           return_trajectory=bool(ds_layers))

        log_ratio = self.objective == "log-ratio"
        w_shape, w_spatial = self.shape_weight, self.spatial_weight
        w_support = self.support_weight

        groups = None
        if self.regime_weight > 0:
            groups = torch.unique(shard.regime[idx], return_inverse=True)[1]

        def scored(err, ref, eps=LOG_RATIO_EPS):
            r = torch.log(err + eps) - torch.log(ref + eps)
            obj = r.mean() + harm_weight * torch.relu(r).mean()
            if groups is not None:
                obj = obj + self.regime_weight * torch.relu(
                    regime_means(r, groups)).mean()
            return obj

        def term(gamma, lam, layer):
            """(objective, mean error) of one supervised layer."""
            errs = shard.errors(idx, gamma, lam, shape=w_shape > 0,
                                spatial=w_spatial > 0, support=w_support > 0)
            err = errs.nmse
            ref = shard.l_ref[idx, layer]
            if log_ratio:
                obj = scored(err, ref)
                if w_shape > 0:
                    obj = obj + w_shape * scored(errs.shape,
                                                 shard.s_ref[idx, layer])
                if w_spatial > 0:
                    obj = obj + w_spatial * scored(
                        errs.spatial, shard.e_ref[idx, layer], SPATIAL_EPS)
                if w_support > 0:
                    obj = obj + w_support * scored(
                        errs.support, shard.f_ref[idx, layer], SUPPORT_EPS)
            else:
                obj = err.mean() + harm_weight * torch.relu(err - ref).mean()
            return obj, err.mean()

        o_final, l_final = term(out.gamma_n, out.lam_n, n_layers - 1)
        loss = o_final
        l_ds = torch.zeros((), dtype=torch.float64, device=l_final.device)
        if ds_layers:
            terms = [term(out.trajectory[k - start]["gamma"],
                          out.trajectory[k - start]["lam"], k)
                     for k in ds_layers]
            l_ds = torch.stack([t[1] for t in terms]).mean()
            loss = loss + beta_ds * torch.stack([t[0] for t in terms]).mean()
        return loss, l_final.detach(), l_ds.detach()
