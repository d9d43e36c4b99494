"""Evaluation metrics for EEG source imaging (paper appendix B.3).

All single-sample metrics take ``x_true`` and ``x_est`` of shape
``(n_sources, n_times)`` (a 1-D array is one time sample), given as NumPy
arrays, torch tensors (any device) or :class:`mne.SourceEstimate`, and source
positions ``pos`` of shape ``(n_sources, 3)`` in metres. :func:`evaluate`
computes all of them for a batch.

Summary of the definitions (``p_n`` is the temporal RMS of source ``n``,
``p_n = sqrt(mean_t x_n(t)**2)``):

========  ==============================================================
rMSE      ``||X_est - X||_F**2 / ||X||_F**2`` (normalised *squared* error)
LE        mean over the true local maxima of ``p`` of the distance (m) to
          the nearest local maximum of the estimated ``p``
EMD       exact optimal-transport cost (m) between the normalised source
          masses ``p / sum(p)`` of truth and estimate, Euclidean ground
          distance
F1        support recovery, support = ``{n : p_n > threshold * max p}``
AP        average precision of support detection: sources ranked by the
          estimated ``p``, precision averaged over the recall steps, truth
          = the true support as for F1 (threshold-free on the estimate)
========  ==============================================================
"""

# License: BSD-3-Clause

from __future__ import annotations

import numpy as np
import ot
from scipy import sparse
from scipy.spatial import cKDTree
from scipy.spatial.distance import cdist

from ._utils import _validate_type, logger, verbose

__all__ = [
    "source_power",
    "rmse",
    "source_neighbors",
    "local_maxima",
    "localization_error",
    "emd",
    "precision_recall_f1",
    "f1_support",
    "average_precision",
    "evaluate",
    "SUPPORT_THRESHOLD",
]

_DEFAULT_N_NEIGHBORS = 6
_DEFAULT_PEAK_THRESHOLD = 0.1
#: Non-maximum suppression radius (m) for localisation-error peaks: a local
#: maximum closer than this to a stronger one is dropped, so the ripples of
#: a dense estimate do not count as separate peaks.
_DEFAULT_MIN_DISTANCE = 0.02
#: Default support threshold of F1 and AP: a source is in a map's support
#: when its temporal RMS is at least this fraction of the map's peak.
SUPPORT_THRESHOLD = 0.1


def _to_numpy(x, name, ndim=None):
    """Convert arrays, tensors and source estimates to float64 NumPy."""
    if hasattr(x, "vertices") and hasattr(x, "data"):  # a SourceEstimate
        x = x.data
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise TypeError(f"{name} must be real-valued numeric, got dtype {x.dtype}.")
    x = x.astype(np.float64, copy=False)
    if ndim is not None and x.ndim not in ndim:
        raise ValueError(f"{name} must have {' or '.join(map(str, ndim))} dimensions, "
                         f"got shape {x.shape}.")
    return x


def _sources(x, name):
    x = _to_numpy(x, name, ndim=(1, 2))
    return x[:, None] if x.ndim == 1 else x


def _pair(x_true, x_est):
    x_true = _sources(x_true, "x_true")
    x_est = _sources(x_est, "x_est")
    if x_true.shape != x_est.shape:
        raise ValueError(
            f"x_true and x_est must have the same shape, got {x_true.shape} and "
            f"{x_est.shape}."
        )
    return x_true, x_est


def _positions(pos, n_sources):
    pos = _to_numpy(pos, "pos", ndim=(2,))
    if pos.shape != (n_sources, 3):
        raise ValueError(f"pos must have shape ({n_sources}, 3), got {pos.shape}.")
    return pos


def _check_threshold(threshold, name):
    _validate_type(threshold, "numeric", name)
    threshold = float(threshold)
    if not 0 <= threshold < 1:
        raise ValueError(f"{name} must be in [0, 1), got {threshold}.")
    return threshold


def source_power(x):
    """Temporal RMS amplitude of every source.

    Parameters
    ----------
    x : array-like, shape (n_sources, n_times) | (n_sources,)
        Source time courses.

    Returns
    -------
    p : ndarray, shape (n_sources,)
        ``p_n = sqrt(mean_t x_n(t)**2)`` (units of ``x``).
    """
    x = _sources(x, "x")
    return np.sqrt(np.mean(x**2, axis=1))


def rmse(x_true, x_est):
    """Relative (normalised) squared error, the paper's "rMSE".

    Parameters
    ----------
    x_true, x_est : array-like, shape (n_sources, n_times)
        True and estimated sources.

    Returns
    -------
    rmse : float
        ``||x_est - x_true||_F**2 / ||x_true||_F**2`` (dimensionless). This is
        a normalised *squared* error, not a root: 0 for a perfect estimate, 1
        for an all-zero estimate, ``(c - 1)**2`` for ``x_est = c * x_true``.
        NaN if ``x_true`` is all zero.
    """
    x_true, x_est = _pair(x_true, x_est)
    den = np.sum(x_true**2)
    if den == 0:
        return np.nan
    return float(np.sum((x_est - x_true) ** 2) / den)


def source_neighbors(pos, *, adjacency=None, radius=None,
                     n_neighbors=_DEFAULT_N_NEIGHBORS):
    """Neighbourhood relation used to find local maxima.

    Exactly one definition is used, in this order of precedence:

    1. ``adjacency`` given: its non-zero off-diagonal entries (e.g. the mesh
       adjacency :func:`mne.spatial_src_adjacency`).
    2. ``radius`` given: all other sources within ``radius`` metres.
    3. otherwise the ``n_neighbors`` nearest sources in Euclidean distance.

    The relation is symmetrised (``j`` neighbour of ``n`` or ``n`` of ``j``)
    and excludes the source itself.

    Parameters
    ----------
    pos : array-like, shape (n_sources, 3)
        Source positions in metres.
    adjacency : array-like | scipy sparse matrix | None
        ``(n_sources, n_sources)`` adjacency.
    radius : float | None
        Neighbourhood radius in metres.
    n_neighbors : int
        Number of nearest neighbours (default 6, the typical 1-ring size of an
        icosahedral source space, so the neighbourhood follows the mesh
        resolution and ico3 and ico4 give comparable "peaks"; on the fsaverage
        ico3 source space the median distance to the 6th neighbour is about
        12 mm, to the nearest about 7 mm).

    Returns
    -------
    neighbors : scipy.sparse.csr_matrix of bool, shape (n_sources, n_sources)
        ``neighbors[n, j]`` is True when ``j`` is a neighbour of ``n``.
    """
    pos = _to_numpy(pos, "pos", ndim=(2,))
    n = pos.shape[0]
    if adjacency is not None:
        A = sparse.csr_matrix(adjacency, dtype=bool)
        if A.shape != (n, n):
            raise ValueError(f"adjacency must have shape ({n}, {n}), got {A.shape}.")
    elif radius is not None:
        _validate_type(radius, "numeric", "radius")
        if not radius > 0:
            raise ValueError(f"radius must be > 0 (metres), got {radius}.")
        tree = cKDTree(pos)
        A = tree.sparse_distance_matrix(tree, float(radius), output_type="coo_matrix")
        A = sparse.csr_matrix((np.ones(A.nnz, bool), (A.row, A.col)), shape=(n, n))
        # sparse_distance_matrix drops zero distances; coincident points are
        # rare in source spaces and do not matter for peak finding
    else:
        _validate_type(n_neighbors, "int-like", "n_neighbors")
        k = min(int(n_neighbors), n - 1)
        if k < 1:
            return sparse.csr_matrix((n, n), dtype=bool)
        _, idx = cKDTree(pos).query(pos, k=k + 1)
        rows = np.repeat(np.arange(n), k + 1)
        A = sparse.csr_matrix(
            (np.ones(rows.size, bool), (rows, idx.ravel())), shape=(n, n)
        )
    A = (A + A.T).tocsr().astype(bool)
    A.setdiag(False)
    A.eliminate_zeros()
    return A


def local_maxima(power, neighbors, threshold=_DEFAULT_PEAK_THRESHOLD, *,
                 pos=None, min_distance=0.0):
    """Indices of the local maxima of a non-negative source map.

    Parameters
    ----------
    power : array-like, shape (n_sources,)
        Non-negative map (e.g. :func:`source_power`).
    neighbors : scipy sparse matrix, shape (n_sources, n_sources)
        Neighbourhood from :func:`source_neighbors`.
    threshold : float
        Relative threshold: a maximum must satisfy
        ``power[n] >= threshold * max(power)`` (default 0.1).
    pos : array-like, shape (n_sources, 3) | None
        Source positions (m), needed when ``min_distance > 0``.
    min_distance : float
        Non-maximum suppression: going from the strongest maximum down, a
        maximum within ``min_distance`` metres of an already kept one is
        dropped (0 keeps all).

    Returns
    -------
    idx : ndarray of int
        Sources ``n`` with ``power[n] > 0``, ``power[n] >= power[j]`` for all
        neighbours ``j`` (ties count as maxima) and above the threshold,
        after the suppression. Empty if ``power`` is all zero.
    """
    p = _to_numpy(power, "power", ndim=(1,))
    if np.any(p < 0):
        raise ValueError("power must be non-negative.")
    threshold = _check_threshold(threshold, "threshold")
    if p.size == 0 or p.max() == 0:
        return np.zeros(0, int)
    A = sparse.csr_matrix(neighbors)
    if A.shape != (p.size, p.size):
        raise ValueError(
            f"neighbors must have shape ({p.size}, {p.size}), got {A.shape}."
        )
    # max over neighbours; implicit zeros are harmless because p >= 0
    nb_max = A.multiply(p[np.newaxis, :]).tocsr().max(axis=1).toarray().ravel()
    is_max = (p > 0) & (p >= nb_max) & (p >= threshold * p.max())
    idx = np.flatnonzero(is_max)
    if min_distance > 0 and idx.size > 1:
        if pos is None:
            raise ValueError("pos is required when min_distance > 0.")
        idx = idx[np.argsort(-p[idx], kind="stable")]
        r = _positions(pos, p.size)[idx]
        keep = []
        for i in range(idx.size):
            if not keep or np.linalg.norm(r[keep] - r[i], axis=1).min() >= min_distance:
                keep.append(i)
        idx = np.sort(idx[keep])
    return idx


def localization_error(x_true, x_est, pos, *, neighbors=None, adjacency=None,
                       radius=None, n_neighbors=_DEFAULT_N_NEIGHBORS,
                       threshold=_DEFAULT_PEAK_THRESHOLD,
                       min_distance=_DEFAULT_MIN_DISTANCE):
    """Localization error between the peaks of truth and estimate.

    Parameters
    ----------
    x_true, x_est : array-like, shape (n_sources, n_times)
        True and estimated sources.
    pos : array-like, shape (n_sources, 3)
        Source positions in metres.
    neighbors : scipy sparse matrix | None
        Precomputed :func:`source_neighbors` (faster for many samples). If
        None it is built from ``adjacency``, ``radius`` or ``n_neighbors``.
    adjacency, radius, n_neighbors
        See :func:`source_neighbors` (ignored if ``neighbors`` is given).
    threshold : float
        Relative peak threshold of :func:`local_maxima` (default 0.1),
        applied separately to truth and estimate.
    min_distance : float
        Non-maximum suppression radius of :func:`local_maxima` in metres
        (default 0.02, for truth and estimate alike). Without it, the many
        shallow ripple maxima of a dense estimate (sLORETA) sit next to every
        true peak and make its LE look as good as a sparse solver's.

    Returns
    -------
    le : float
        ``LE = (1/|P|) sum_{i in P} min_{j in Q} ||r_i - r_j||`` in metres,
        with ``P`` the local maxima of the true temporal RMS map and ``Q``
        those of the estimate. NaN if either has no local maximum (an
        all-zero estimate or truth).
    """
    x_true, x_est = _pair(x_true, x_est)
    pos = _positions(pos, x_true.shape[0])
    if neighbors is None:
        neighbors = source_neighbors(
            pos, adjacency=adjacency, radius=radius, n_neighbors=n_neighbors
        )
    P = local_maxima(source_power(x_true), neighbors, threshold, pos=pos,
                     min_distance=min_distance)
    Q = local_maxima(source_power(x_est), neighbors, threshold, pos=pos,
                     min_distance=min_distance)
    if P.size == 0 or Q.size == 0:
        return np.nan
    return float(cdist(pos[P], pos[Q]).min(axis=1).mean())


def emd(x_true, x_est, pos, *, threshold=0.0, num_iter_max=1_000_000):
    """Earth mover's distance between the spatial mass distributions.

    Parameters
    ----------
    x_true, x_est : array-like, shape (n_sources, n_times)
        True and estimated sources.
    pos : array-like, shape (n_sources, 3)
        Source positions in metres.
    threshold : float
        Relative threshold defining the active sources of each map: source
        ``n`` is active when ``m_n > 0`` and ``m_n >= threshold * max(m)``.
        Default 0 (every non-zero source counts).
    num_iter_max : int
        Maximum number of network-simplex iterations of :func:`ot.emd2`.

    Returns
    -------
    emd : float
        ``min_{P >= 0, P 1 = a, P^T 1 = b} sum_ij P_ij ||r_i - r_j||`` in
        metres, solved exactly with :func:`ot.emd2`, where ``a`` (resp.
        ``b``) are the temporal L2 norms ``m_n = ||x_n||_2`` of the active
        true (resp. estimated) sources normalised to sum to one. Only the
        active sources enter the cost matrix. NaN if either map is all zero.
    """
    x_true, x_est = _pair(x_true, x_est)
    pos = _positions(pos, x_true.shape[0])
    threshold = _check_threshold(threshold, "threshold")
    masses = []
    for x in (x_true, x_est):
        m = np.linalg.norm(x, axis=1)
        if m.max() == 0:
            return np.nan
        idx = np.flatnonzero((m > 0) & (m >= threshold * m.max()))
        w = m[idx] / m[idx].sum()
        masses.append((idx, w))
    (it, a), (ie, b) = masses
    # renormalise after the division so both sides sum to 1 to round-off
    a = a / a.sum()
    b = b / b.sum()
    M = cdist(pos[it], pos[ie])
    return float(ot.emd2(a, b, M, numItermax=int(num_iter_max)))


def precision_recall_f1(x_true, x_est, threshold=SUPPORT_THRESHOLD):
    """Support-recovery precision, recall and F1.

    Parameters
    ----------
    x_true, x_est : array-like, shape (n_sources, n_times)
        True and estimated sources.
    threshold : float
        Relative threshold on the temporal RMS (default 0.1): the support of
        a map ``p`` is ``S = {n : p_n > 0 and p_n >= threshold * max(p)}``,
        computed separately for truth and estimate.

    Returns
    -------
    precision : float
        ``|S_est ∩ S_true| / |S_est|`` (0 if ``S_est`` is empty).
    recall : float
        ``|S_est ∩ S_true| / |S_true|`` (NaN if ``S_true`` is empty).
    f1 : float
        ``2 |S_est ∩ S_true| / (|S_est| + |S_true|)``: 1 for exact support
        recovery, 0 for an all-zero estimate (NaN if both supports are
        empty).
    """
    x_true, x_est = _pair(x_true, x_est)
    threshold = _check_threshold(threshold, "threshold")
    supports = []
    for x in (x_true, x_est):
        p = source_power(x)
        pmax = p.max() if p.size else 0.0
        supports.append((p > 0) & (p >= threshold * pmax))
    s_true, s_est = supports
    n_true, n_est = int(s_true.sum()), int(s_est.sum())
    tp = int(np.sum(s_true & s_est))
    precision = tp / n_est if n_est else 0.0
    recall = tp / n_true if n_true else np.nan
    f1 = 2.0 * tp / (n_true + n_est) if (n_true + n_est) else np.nan
    return float(precision), float(recall), float(f1)


def f1_support(x_true, x_est, threshold=SUPPORT_THRESHOLD):
    """F1 score of support recovery.

    Parameters
    ----------
    x_true, x_est : array-like, shape (n_sources, n_times)
        True and estimated sources.
    threshold : float
        Relative RMS threshold (default 0.1); see
        :func:`precision_recall_f1` for the exact definition.

    Returns
    -------
    f1 : float
        ``2 |S_est ∩ S_true| / (|S_est| + |S_true|)`` (0 for an all-zero
        estimate).
    """
    return precision_recall_f1(x_true, x_est, threshold)[2]


def average_precision(x_true, x_est, threshold=SUPPORT_THRESHOLD):
    """Average precision (AP) of support detection by the estimated power.

    Every threshold on the estimated temporal RMS ``p_est`` gives a
    detected support; AP summarises the whole precision-recall curve, so
    unlike F1 it does not depend on one relative threshold of the
    estimate (a blurred but well-ranked map scores high, a map whose
    strongest sources are false detections scores low). Sources are
    ranked by ``p_est`` (ties, e.g. every pruned source at 0, form one
    step) and ``AP = sum_k (R_k - R_{k-1}) P_k`` over the distinct
    thresholds, as :func:`sklearn.metrics.average_precision_score`.

    Parameters
    ----------
    x_true, x_est : array-like, shape (n_sources, n_times)
        True and estimated sources.
    threshold : float
        Relative RMS threshold of the *true* support (the active sources),
        as for :func:`precision_recall_f1` (default 0.1: footprint tails
        below 10 % of a sample's peak are not counted as active).

    Returns
    -------
    ap : float
        In ``[0, 1]``: 1 when every active source is ranked above every
        inactive one; about the fraction of active sources for a random
        ranking; for an all-zero estimate, that fraction (every source
        ties). NaN if the truth has no active source.
    """
    x_true, x_est = _pair(x_true, x_est)
    threshold = _check_threshold(threshold, "threshold")
    p_true = source_power(x_true)
    pmax = p_true.max() if p_true.size else 0.0
    truth = (p_true > 0) & (p_true >= threshold * pmax)
    n_true = int(truth.sum())
    if n_true == 0:
        return np.nan
    score = source_power(x_est)
    order = np.argsort(-score, kind="stable")
    score, hits = score[order], truth[order]
    tp = np.cumsum(hits)
    # the last index of every run of equal scores: one threshold each
    last = np.r_[np.flatnonzero(np.diff(score) != 0), score.size - 1]
    tp = tp[last]
    precision = tp / (last + 1.0)
    recall = tp / n_true
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


@verbose
def evaluate(x_true, x_est, pos, *, neighbors=None, adjacency=None, radius=None,
             n_neighbors=_DEFAULT_N_NEIGHBORS, peak_threshold=_DEFAULT_PEAK_THRESHOLD,
             support_threshold=SUPPORT_THRESHOLD, emd_threshold=0.0,
             verbose=None):
    """Compute all metrics for a batch of samples.

    Parameters
    ----------
    x_true, x_est : array-like, shape (n_samples, n_sources, n_times)
        True and estimated sources (NumPy or torch; a 2-D input is one
        sample).
    pos : array-like, shape (n_sources, 3)
        Source positions in metres.
    neighbors, adjacency, radius, n_neighbors
        Neighbourhood for local maxima, see :func:`source_neighbors`; built
        once for the batch.
    peak_threshold : float
        Relative threshold of the local maxima in :func:`localization_error`.
    support_threshold : float
        Relative threshold of :func:`precision_recall_f1` and of the true
        support of :func:`average_precision`.
    emd_threshold : float
        Relative threshold of :func:`emd`.
    %(verbose)s

    Returns
    -------
    results : dict of ndarray, each of shape (n_samples,)
        ``"rmse"``, ``"le"`` (m), ``"emd"`` (m), ``"f1"``, ``"precision"``,
        ``"recall"``, ``"ap"`` as defined in the single-sample functions, and
        ``"empty"`` (bool): the estimate is all zero (then ``le`` and ``emd``
        are NaN, ``f1`` is 0, ``rmse`` is 1 and ``ap`` the fraction of
        active sources). Use :func:`numpy.nanmean`
        for summaries and report ``empty.sum()``.
    """
    x_true = _to_numpy(x_true, "x_true", ndim=(2, 3))
    x_est = _to_numpy(x_est, "x_est", ndim=(2, 3))
    if x_true.ndim == 2:
        x_true = x_true[None]
    if x_est.ndim == 2:
        x_est = x_est[None]
    if x_true.shape != x_est.shape:
        raise ValueError(
            f"x_true and x_est must have the same shape, got {x_true.shape} and "
            f"{x_est.shape}."
        )
    n_samples, n_sources = x_true.shape[:2]
    pos = _positions(pos, n_sources)
    if neighbors is None:
        neighbors = source_neighbors(
            pos, adjacency=adjacency, radius=radius, n_neighbors=n_neighbors
        )
    keys = ("rmse", "le", "emd", "f1", "precision", "recall", "ap")
    out = {k: np.full(n_samples, np.nan) for k in keys}
    out["empty"] = np.zeros(n_samples, bool)
    for i in range(n_samples):
        xt, xe = x_true[i], x_est[i]
        out["empty"][i] = not np.any(xe)
        out["rmse"][i] = rmse(xt, xe)
        out["le"][i] = localization_error(
            xt, xe, pos, neighbors=neighbors, threshold=peak_threshold
        )
        out["emd"][i] = emd(xt, xe, pos, threshold=emd_threshold)
        out["precision"][i], out["recall"][i], out["f1"][i] = precision_recall_f1(
            xt, xe, support_threshold
        )
        out["ap"][i] = average_precision(xt, xe, support_threshold)
    n_empty = int(out["empty"].sum())
    if n_empty:
        logger.info(f"{n_empty} of {n_samples} estimates are all zero "
                    "(LE and EMD are NaN for them).")
    logger.info(
        "Mean over %d samples: rMSE %.4f, LE %.4f m, EMD %.4f m, F1 %.4f"
        % (n_samples, _nanmean(out["rmse"]), _nanmean(out["le"]),
           _nanmean(out["emd"]), _nanmean(out["f1"]))
    )
    return out


def _nanmean(x):
    return float(np.nanmean(x)) if np.any(np.isfinite(x)) else np.nan
