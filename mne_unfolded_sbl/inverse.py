"""The MNE-facing API: :func:`apply_unfolded_sbl` and friends.

Channel picking, the EEG reference check, conversion to a fixed
orientation and whitening follow :func:`mne.inverse_sparse.gamma_map`
(through MNE's own ``_prepare_gain``), without depth weighting: the Type-II
source variances absorb depth.
"""

import contextlib
import copy
import threading
from dataclasses import dataclass

import mne
import numpy as np
import torch
from mne._fiff.proj import make_projector
# MNE's own helpers, as used by mne.inverse_sparse.gamma_map
from mne.inverse_sparse.mxne_inverse import _compute_residual, _prepare_gain
from mne.minimum_norm.inverse import _check_reference
from mne.utils import _validate_type, logger, verbose, warn

from ._checks import (check_data_finite, check_device, check_dtype,
                      check_forward, check_n_layers, check_nave,
                      check_noise_cov, check_noise_cov_type,
                      check_tied_geometry, pick_channels)
from ._docs import fill_doc
from .core._utils import DTYPES, check_positive_int
from .core.multiscale import prefer_multiscale
from .core.network import MODELS, model_label
from .core.solver import NullSpace, covariance_statistic, prepare
from .core.weights import (check_finite_parameters, check_training_domain,
                           load_model, resolve_model, with_sensor_order)
from .source_models import (SourceModel, check_loose, check_pick_ori,
                            check_source_model)

#: Singular values of the whitener below this fraction of the largest are
#: directions without data (reference, projectors, rank deficiency).
_NULL_RTOL = 1e-6
#: Largest entry difference between the projector an operator was made with
#: and the data's (projectors read back from a FIF file are float32).
_PROJ_ATOL = 1e-6
#: A model whose sources carry less than this fraction of the whitened data
#: power has pruned every source (the map is zero).
_PRUNED_RTOL = 1e-6
#: Known noise at least this far above the data power is refused (see
#: :func:`_check_known_noise`).
_WEAK_RATIO = 0.5


class UnfoldedSBLOperator:
    """Forward, source model and noise model prepared for one channel set.

    The analogue of an MNE inverse operator: the forward (fixed or loose
    orientation), the source model (point or multi-scale, see
    :mod:`mne_unfolded_sbl.source_models`), the whitened lead field the
    solver sees, the whitener (noise covariance and projectors) and the
    directions the reference removes, computed once by
    :func:`make_unfolded_sbl_operator` and passed as ``fwd`` to
    :func:`apply_unfolded_sbl` / :func:`apply_unfolded_sbl_epochs` for every
    evoked response or epochs object recorded with those channels. Data
    with other projectors, or missing or marking bad one of its channels,
    are refused (the operator would not fit them).
    """

    def __init__(self, fwd, gain, gain_info, whitener, null_space, rank,
                 proj, source_model):
        self.fwd = fwd
        #: The whitened forward, one column per forward column (M, n_cols).
        self.fwd_gain = gain
        #: How the solver's columns map back to the source space.
        self.source_model = source_model
        #: The lead field the solver sees (orientation prior, atoms).
        self.gain = source_model.solver_gain(gain)
        self.info = gain_info
        self.whitener = whitener
        self.null_space = null_space
        self.rank = rank
        #: The projector (on :attr:`ch_names`) the operator was made with;
        #: data with another one are refused (:func:`_check_proj_match`).
        self.proj = proj
        self._cache = {}

    # What the calls derive from the operator (lead-field tensors, the
    # channel checks of an info) is cached on it (:meth:`_cached`): the
    # operator is not modified after it is made. Copies and pickles start
    # with an empty cache.
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cache"] = {}
        return state

    def __setstate__(self, state):
        state.setdefault("_cache", {})
        self.__dict__.update(state)

    def _cached(self, key, build, limit=16):
        """``build()`` once per ``key`` (a tuple; at most ``limit`` keys of
        one kind ``key[0]`` are kept, the oldest go first)."""
        cache = self.__dict__.setdefault("_cache", {})
        try:
            return cache[key]
        except KeyError:
            pass
        value = build()
        same = [k for k in list(cache) if k[0] == key[0]]
        for k in same[:max(0, len(same) - limit + 1)]:
            cache.pop(k, None)
        cache[key] = value
        return value

    @property
    def projs(self):
        """The projectors of the info the operator was made from."""
        return list(self.info["projs"])

    @property
    def ch_names(self):
        """The channels the operator uses, in order."""
        return list(self.info["ch_names"])

    @property
    def ch_types(self):
        """The channel types of the operator (MNE names, sorted)."""
        return self._cached(("ch_types",), lambda: tuple(
            sorted(set(self.info.get_channel_types()))))

    @property
    def n_sources(self):
        """Number of source-space vertices."""
        return self.source_model.n_vertices

    @property
    def loose(self):
        """The orientation constraint (0: fixed, 1: free)."""
        return self.source_model.loose

    def __repr__(self):
        k = 0 if self.null_space is None else self.null_space.rank
        types = sorted(set(self.info.get_channel_types()))
        sm = self.source_model
        ori = "fixed" if sm.n_orient == 1 else f"loose={sm.loose:g}"
        return (f"<UnfoldedSBLOperator | {len(self.ch_names)} channels "
                f"({', '.join(types)}), {self.n_sources} sources ({sm.kind}, "
                f"{ori}), data rank {len(self.ch_names) - k}>")


@verbose
@fill_doc
def make_unfolded_sbl_operator(info, fwd, noise_cov, *, loose=0.0,
                               source_model="point", rank=None, verbose=None):
    """Prepare forward, source model and noise covariance once for many calls.

    Parameters
    ----------
    info : mne.Info
        Measurement info of the data to localise: its good MEG and EEG
        channels (``info["bads"]`` excluded) and projectors are used, as by
        :func:`mne.minimum_norm.make_inverse_operator`. The operator is
        refused for data with other projectors or with its channels
        missing or marked bad.
    fwd : mne.Forward
        MEG and/or EEG forward solution (surface source space; a volume
        source space needs ``loose=1``).
    noise_cov : mne.Covariance
        Single-trial noise covariance, used to whiten (read one with
        :func:`mne.read_cov`).
    %(loose)s
    %(source_model)s
    %(rank)s
    %(verbose)s

    Returns
    -------
    operator : UnfoldedSBLOperator
        Pass it as ``fwd`` (with ``noise_cov=None``) to
        :func:`apply_unfolded_sbl`, :func:`apply_unfolded_sbl_epochs` or
        :func:`unfolded_sbl_trajectory`.
    """
    _validate_type(info, mne.Info, "info")
    fwd = check_forward(fwd)
    loose = check_loose(loose, fwd["src"])
    check_source_model(source_model, loose, fwd["src"])
    check_noise_cov_type(noise_cov)
    ch_names = pick_channels(info, fwd, noise_cov)
    check_noise_cov(noise_cov, ch_names)
    info = mne.pick_info(info, [info["ch_names"].index(n) for n in ch_names])
    fwd, _, gain_info, whitener, _, _ = _prepare_gain(
        fwd, info, noise_cov, pca=False, depth=None, loose=loose, rank=rank)
    # As MNE's inverse operators do, project before whitening: with
    # rank="full" MNE's whitener alone amplifies the reference direction
    # (by ~1e8 here) instead of removing it.
    proj, _, _ = make_projector(gain_info["projs"], gain_info["ch_names"])
    whitener = whitener @ proj
    # The whitened gain in V / (A.m) per unit noise, from MNE's prepared
    # forward (fixed, or surface-oriented for loose orientation; equal to
    # MNE's whitened gain divided by its global source weighting with
    # rank=None, and clean with rank="full"), so that the solver's
    # estimates are in A.m directly. The source model adds MNE's
    # orientation prior and, for "multiscale", the atoms.
    rows = [fwd["sol"]["row_names"].index(n) for n in gain_info["ch_names"]]
    gain = whitener @ fwd["sol"]["data"][rows]
    null = _whitener_null_space(whitener)
    return UnfoldedSBLOperator(fwd, gain, gain_info, whitener, null, rank,
                               proj, SourceModel(fwd, loose, source_model))


class _InfoOnly:
    """What MNE's ``_check_reference`` reads of an instance: its info."""

    def __init__(self, info):
        self.info = info


def _operator_for(inst, fwd, noise_cov, rank, loose=None, source_model=None):
    """The operator to use for ``inst`` and the indices of its channels.

    ``loose`` and ``source_model`` (None: 0 and ``"point"``) build the
    operator from a forward; with an operator they must be None or its own.
    """
    if isinstance(fwd, UnfoldedSBLOperator) and loose is None \
            and source_model is None and noise_cov is None and rank is None:
        # The checks below depend on the info only through what
        # _info_key reads: run them once per distinct info.
        op = fwd
        sel, unused = op._cached(
            ("channels", _info_key(inst.info)),
            lambda: _check_channels(inst, op))
        _log_unused(unused)
        return op, sel
    # MNE's pick_info checks the info it is given by briefly unlocking and
    # rewriting it, which is not thread-safe: work on a private copy, so
    # that threads can share one Evoked/Epochs (the copy is only read from
    # ``inst.info``).
    info = inst.info.copy()
    if isinstance(fwd, UnfoldedSBLOperator):
        if noise_cov is not None or rank is not None:
            raise ValueError(
                "fwd is an UnfoldedSBLOperator, which already holds the noise "
                "covariance and rank: pass noise_cov=None (and rank=None), or "
                "pass the forward solution itself.")
        op = fwd
        for name, given, held in (("loose", loose, op.loose),
                                  ("source_model", source_model,
                                   op.source_model.kind)):
            if given is not None and given != held:
                raise ValueError(
                    f"fwd is an UnfoldedSBLOperator made with {name}={held!r}; "
                    f"{name}={given!r} cannot change it: pass {name}=None, or "
                    f"make an operator with make_unfolded_sbl_operator(..., "
                    f"{name}={given!r}).")
    else:
        if noise_cov is None:
            raise ValueError("noise_cov is required with a forward solution "
                             "(it is only optional with an "
                             "UnfoldedSBLOperator).")
        check_noise_cov_type(noise_cov)
        op = make_unfolded_sbl_operator(
            info, fwd, noise_cov, rank=rank, verbose=False,
            loose=0.0 if loose is None else loose,
            source_model="point" if source_model is None else source_model)
    sel, unused = _check_channels(inst, op, info)
    _log_unused(unused)
    return op, sel


def _info_key(info):
    """Everything of ``info`` that :func:`_check_channels` reads, hashable:
    channel names, types and units, bads, the reference flag and the
    projectors (description, state, channels and vectors)."""
    return (tuple(info["ch_names"]), tuple(info["bads"]),
            int(info.get("custom_ref_applied") or 0),
            tuple((ch["kind"], ch["coil_type"], ch["unit"])
                  for ch in info["chs"]),
            tuple((p["desc"], bool(p["active"]), p["kind"],
                   tuple(p["data"]["col_names"]),
                   np.asarray(p["data"]["data"], np.float64).tobytes())
                  for p in info["projs"]))


def _log_unused(unused):
    if unused:
        logger.info(f"    {len(unused)} good channel(s) of the data are "
                    f"not in the operator and are ignored: {unused[:10]}")


def _check_channels(inst, op, info=None):
    """Check that ``op`` fits the channels, reference and projectors of
    ``inst``; return the indices of its channels in ``inst`` and the good
    data channels it does not use."""
    if info is None:  # a private copy (see _operator_for)
        info = inst.info.copy()
    ch_names = list(info["ch_names"])
    missing = [n for n in op.ch_names if n not in ch_names]
    bad = [n for n in op.ch_names if n in info["bads"]]
    if missing or bad:
        raise ValueError(
            f"The operator uses channel(s) that the data "
            f"{'lack' if missing else 'mark as bad'}: {(missing or bad)[:10]}. "
            "Build the operator from this data's info "
            "(make_unfolded_sbl_operator(inst.info, fwd, noise_cov)).")
    _check_reference(_InfoOnly(info), op.ch_names)
    _check_proj_match(info, op)
    used = set(op.ch_names)
    unused = [ch_names[i] for i in mne.pick_types(info, meg=True, eeg=True,
                                                  exclude="bads")
              if ch_names[i] not in used]
    return [ch_names.index(n) for n in op.ch_names], unused


def _proj_names(projs):
    return "[" + ", ".join(f"{p['desc']}{' (active)' if p['active'] else ''}"
                           for p in projs) + "]"


def _check_proj_match(info, op):
    """Refuse data whose projectors differ from the operator's.

    As MNE's beamformers do (``_check_proj_match`` of
    :mod:`mne.beamformer`): the projector the data's projectors make on
    the operator's channels must be the one the operator was made with.
    Whether a projector is already applied (active) does not matter (the
    operator projects again, and projecting twice is projecting once).
    Another projector set changes the whitener and the data subspace the
    solver works in, so the estimate would be silently wrong.
    """
    proj, _, _ = make_projector(info["projs"], op.ch_names)
    if np.allclose(proj, op.proj, rtol=0, atol=_PROJ_ATOL):
        return

    def touches(p):  # the projectors that act on the operator's channels
        cols = set(p["data"]["col_names"])
        return any(n in cols for n in op.ch_names)

    data = [p for p in info["projs"] if touches(p)]
    made = [p for p in op.projs if touches(p)]

    def same(a, b):
        return (a["desc"] == b["desc"]
                and a["data"]["col_names"] == b["data"]["col_names"]
                and np.allclose(a["data"]["data"], b["data"]["data"],
                                rtol=0, atol=_PROJ_ATOL))

    only_data = [p for p in data if not any(same(p, q) for q in made)]
    only_op = [p for p in made if not any(same(p, q) for q in data)]
    raise ValueError(
        "The projectors of the data differ from those the operator was made "
        f"with (data: {_proj_names(data)}; operator: {_proj_names(made)}; "
        f"only in the data: {_proj_names(only_data)}; only in the operator: "
        f"{_proj_names(only_op)}). The operator's whitener and "
        "data subspace would not fit these data and the estimate would be "
        "wrong. Make the operator from this data's info: "
        "make_unfolded_sbl_operator(inst.info, fwd, noise_cov), or give the "
        "data the operator's projectors (inst.add_proj / inst.del_proj).")


def _channel_scale(whitener):
    """Per-channel factors that give every column of the whitener unit norm."""
    norms = np.linalg.norm(whitener, axis=0)
    return 1.0 / np.where(norms > 0, norms, 1.0)


def _whitener_null_space(whitener):
    """The directions the whitened data cannot reach (average reference,
    SSP projectors, a rank-deficient noise covariance), as a NullSpace."""
    # The directions are the complement of the whitener's range, which
    # scaling its columns (channels) does not change: scale each channel to
    # unit norm first, so that the relative cut does not mistake the
    # channels of a type with other units (EEG next to MEG: whitener
    # entries ~1e6 vs ~1e13) for missing directions.
    U, s, _ = np.linalg.svd(whitener * _channel_scale(whitener))
    null = s <= s.max() * _NULL_RTOL
    if not null.any():
        return None
    if null.sum() >= len(s):
        raise ValueError("The whitener is zero: the noise covariance and "
                         "projectors leave no data to localise.")
    logger.info(f"    Solving in the {int((~null).sum())}-dimensional data "
                f"subspace ({int(null.sum())} direction(s) removed by the "
                "reference/projectors)")
    return NullSpace(U[:, null])


#: Networks of the bundled model names, loaded (and hash-checked) once per
#: process by :func:`_network` (key: model, learn_noise, n_layers) and their
#: eval-mode copies per device and dtype (key + (device, dtype)). Nothing
#: ever modifies a network in these caches: calls from several threads
#: with different dtypes each get their own copy.
_NETWORKS = {}
_READY = {}
_NETWORKS_LOCK = threading.Lock()


def _network(model, learn_noise, n_layers, device, dtype):
    """The network to run for ``model``, on ``device`` in ``dtype``, in eval
    mode; neither a cached network nor the caller's is modified."""
    dev, tdtype = torch.device(device), DTYPES[dtype]
    if isinstance(model, str) and model in MODELS:
        key = (model, bool(learn_noise), n_layers)
        with _NETWORKS_LOCK:
            if key not in _NETWORKS:
                _NETWORKS[key] = load_model(model, learn_noise=learn_noise,
                                            n_layers=n_layers)
            ready_key = key + (str(dev), dtype)
            if ready_key not in _READY:
                _READY[ready_key] = _ready(_NETWORKS[key], dev, tdtype)
            return _READY[ready_key]
    net = load_model(model, learn_noise=learn_noise, n_layers=n_layers)
    if net is model:
        check_finite_parameters(net, "The network passed as model")
    return _ready(net, dev, tdtype)


def _same_device(have, want):
    return have.type == want.type and (want.index is None
                                       or have.index == want.index)


def _ready(model, device, dtype):
    """``model`` on ``device`` in ``dtype``, in eval mode.

    ``model`` itself if it already is (it is only read); otherwise a
    converted copy: ``nn.Module.to`` and ``eval`` work in place, and the
    caller's network (or a cached one shared by other threads) must stay
    as it was.
    """
    tensors = list(model.parameters()) + list(model.buffers())
    if not any(m.training for m in model.modules()) and all(
            _same_device(t.device, device) and (t.dtype == dtype
                                    or not t.is_floating_point())
            for t in tensors):
        return model
    return copy.deepcopy(model).to(device=device, dtype=dtype).eval()


def _whitened_statistic(data, whitener):
    """``C_y`` of the whitened data, ``W_h (Y Y^T / T) W_h^T``, (B, M, M).

    One ``O(M^2 T)`` pass over the recorded data (float64); the whitened
    time series itself is never needed (the estimate is a kernel). The
    products run in torch, on one thread for small batches
    (:func:`_solver_threads`): NumPy's OpenBLAS splits them over its
    threads, whose synchronisation on a loaded 2-core machine made 64
    channels x 10,000 samples take 0.3 s instead of 2-4 ms.
    """
    data = torch.as_tensor(np.asarray(data, np.float64))
    if data.ndim == 2:
        data = data[None]
    W = torch.as_tensor(np.asarray(whitener, np.float64))
    with _solver_threads("cpu", len(data)):
        C = data @ data.transpose(-1, -2) / data.shape[-1]
        return (W @ C @ W.T).numpy()


@dataclass
class _Solution:
    """What one batched pass of the network gives, in the data's terms."""

    #: Posterior kernels per forward column, whitener folded in (B, n_cols,
    #: M): the estimate of recorded data is ``K @ data``.
    K: np.ndarray
    #: Learned whitened noise variances (B, M).
    lam: np.ndarray
    #: Fraction of the whitened data power the sources carry (B,; ~0 when
    #: every source was pruned).
    share: np.ndarray
    #: Posterior variance per forward column, A·m² (B, n_cols), or None.
    var: np.ndarray = None
    #: Which samples kept the multi-scale model (B,), or None.
    multiscale: np.ndarray = None


def _run(model, op, Cy, nave, learn_noise, device, dtype, n_times,
         posterior_var=False):
    """Run the ready network ``model`` on the whitened statistics ``Cy``.

    The solver works on the operator's lead field (orientation prior and
    atoms folded in, :mod:`mne_unfolded_sbl.source_models`); its kernels
    and variances come back per column of the forward. With the
    multi-scale model the point model runs too, and each sample keeps the
    model the evidence prefers
    (:func:`~mne_unfolded_sbl.core.multiscale.prefer_multiscale`).
    """
    sm = op.source_model
    sol, out = _solve(model, "gain", sm.basis, op, Cy, nave, learn_noise,
                      device, dtype, posterior_var)
    if sm.basis is not None:
        point, out_point = _solve(model, "point", None, op, Cy, nave,
                                  learn_noise, device, dtype, posterior_var)
        use_point = ~prefer_multiscale(out_point, out, n_times)
        logger.info(f"    Multi-scale model kept for {int((~use_point).sum())} "
                    f"of {len(use_point)} sample(s) (evidence), the point "
                    "model for the others")
        pick = use_point[:, None]
        sol = _Solution(
            K=np.where(pick[:, :, None], point.K, sol.K),
            lam=np.where(pick, point.lam, sol.lam),
            share=np.where(use_point, point.share, sol.share),
            var=None if sol.var is None else np.where(pick, point.var,
                                                      sol.var),
            multiscale=~use_point)
    return sol


@dataclass
class _LeadField:
    """A lead field of an operator as the solver takes it (cached)."""

    L: np.ndarray  # (M, n_cols) float64
    tensor: torch.Tensor  # L on the device, in the solver's dtype
    col_power: np.ndarray  # (n_cols,) squared column norms of L


def _solver_lead_field(op, which, device, dtype):
    """``op.gain`` (``which="gain"``) or the point-source lead field
    (``"point"``, the point model beside the multi-scale one) as a
    :class:`_LeadField`, made once per operator, device and dtype: the
    solver then sees the same tensor in every call and reuses what it
    derives from it (normalisation, products)."""
    def array():
        if which == "gain":
            return np.asarray(op.gain, np.float64)
        return op._cached(("point-gain",), lambda: np.asarray(
            op.source_model.point_gain(op.fwd_gain), np.float64))

    def build():
        L = array()
        return _LeadField(L, torch.as_tensor(L, dtype=dtype, device=device),
                          (L ** 2).sum(0))

    return op._cached(("lead-field", which, str(device), dtype), build)


def _operator_tensor(op, name, array):
    """A float64 CPU tensor of the operator's ``array`` (made once)."""
    return op._cached(("tensor", name), lambda: torch.as_tensor(
        np.asarray(array, np.float64)))


#: Batches below this size run the solver on one CPU thread
#: (:func:`_solver_threads`).
_SERIAL_BATCH = 8
_THREADS_LOCK = threading.Lock()
_THREADS_STATE = {"users": 0, "saved": None}


@contextlib.contextmanager
def _solver_threads(device, batch_size):
    """One torch (and MKL) intra-op thread on the CPU for small batches.

    A batch of one or a few evoked responses is hundreds of small
    operations (``M x M`` factorisations, ``M x N`` products): split over
    threads they gain ~10 % on an idle machine, and on a machine whose
    cores are busy with other work, the threads' synchronisation makes
    single products 10-100 times slower (a 64 x 1284 product: 0.3 ms
    serial, 40 ms at the 90th percentile with two threads on a loaded
    2-core machine). Larger batches keep the caller's setting. The
    setting is process-wide while any call holds it (other torch work in
    the process meanwhile runs on one thread too) and is restored when
    the last one leaves.
    """
    if (torch.device(device).type != "cpu" or batch_size >= _SERIAL_BATCH
            or torch.get_num_threads() == 1 and not _THREADS_STATE["users"]):
        yield
        return
    with _THREADS_LOCK:
        if _THREADS_STATE["users"] == 0:
            _THREADS_STATE["saved"] = torch.get_num_threads()
            torch.set_num_threads(1)
        _THREADS_STATE["users"] += 1
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _THREADS_STATE["users"] -= 1
            if _THREADS_STATE["users"] == 0:
                torch.set_num_threads(_THREADS_STATE["saved"])


def _solve(model, which, basis, op, Cy, nave, learn_noise, device, dtype,
           posterior_var):
    """One source model: the network on the operator's lead field ``which``
    (see :func:`_solver_lead_field`) -> ``(_Solution, out)``."""
    dev = torch.device(device)
    tdtype = DTYPES[dtype]
    sm = op.source_model
    lf = _solver_lead_field(op, which, dev, tdtype)
    L_solver, L = lf.L, lf.tensor
    n_orient = 1 if basis is not None else sm.n_orient
    order = check_tied_geometry(model, op.ch_names, sm.src,
                                L.shape[1] // n_orient)
    if order is not None and learn_noise:  # a Bias CB's cap, reordered
        model = with_sensor_order(model, order)
    # sources are vertices in the point model only (atoms otherwise)
    check_training_domain(model, L.shape[0],
                          L.shape[1] // n_orient if basis is None else None,
                          ch_types=op.ch_types)
    noise_var = None
    if not learn_noise:
        # whitened single-trial noise has unit variance; an average of nave
        # trials has 1 / nave
        noise_var = torch.full((L.shape[0],), 1.0 / nave, dtype=tdtype,
                               device=dev)
    with torch.no_grad(), _solver_threads(dev, len(Cy)):
        out = model(L, torch.as_tensor(Cy, device=dev), noise_var,
                    null_space=op.null_space, n_orient=n_orient)
        var = out.posterior_variance() if posterior_var else None
        if basis is None:
            # the kernel of the data as recorded (col_std and whitener
            # folded in): the whitener multiplies the M x M inverse before
            # the product with the lead field (one N M^2 product, not two)
            K_t = out.posterior_kernel(right=_operator_tensor(
                op, "whitener", op.whitener)).to(torch.float64).cpu()
            K = (K_t * _operator_tensor(op, "col_std", sm.col_std)[:, None]
                 ).numpy()
            K_solver = None
        else:
            K_solver = out.posterior_kernel().to(torch.float64).cpu().numpy()
    gamma = out.gamma.to(torch.float64).cpu().numpy()
    if var is not None:
        var = var.to(torch.float64).cpu().numpy()
        if basis is not None:
            var = np.stack([basis.vertex_variance(g, k, L_solver)
                            for g, k in zip(gamma, K_solver)])
        var = var * sm.col_std ** 2
    if basis is not None:
        K = (basis.to_vertices(K_solver) * sm.col_std[:, None]) @ op.whitener
    # trace(L diag(gamma) L^T) / trace(C_y): the share of the data power
    # the source model holds (O(M N), without forming L Gamma L^T)
    col_gamma = np.repeat(gamma, n_orient, axis=-1)
    source_power = col_gamma @ lf.col_power
    data_power = np.trace(Cy, axis1=-2, axis2=-1)
    share = source_power / np.maximum(data_power, np.finfo(float).tiny)
    return _Solution(K, out.lam.to(torch.float64).cpu().numpy(), share,
                     var), out


def _noise_levels(Cy, n_dims, nave):
    """Whitened data power per data dimension over the known whitened noise
    variance ``1 / nave`` (B,)."""
    return np.trace(Cy, axis1=-2, axis2=-1) / n_dims * nave


def _weak_threshold(dof):
    """Below this ratio of data power to known noise, the noise level is
    wrong: white noise of that level gives less power than this with
    probability < 1e-6 (chi-square with ``dof`` degrees of freedom), capped
    at :data:`_WEAK_RATIO` for noise correlated in time (fewer effective
    degrees of freedom)."""
    from scipy.stats import chi2

    return min(_WEAK_RATIO, float(chi2.ppf(1e-6, dof)) / dof)


def _known_noise_advice(nave, epochs):
    what = ("single-trial noise (variance 1 after whitening)" if epochs
            else f"noise of an average of nave={nave:g} trials (variance "
            f"1/nave = {1 / nave:.3g} after whitening)")
    causes = [] if epochs else [
        "a wrong evoked.nave: mne.EvokedArray defaults to nave=1; set "
        "evoked.nave to the number of averaged trials (the single-trial "
        "covariance is scaled by 1/nave)"]
    causes.append(
        "a noise covariance in other units than the data: EEG data in V "
        "need a covariance in V² (one in µV² is 1e12 times too large); "
        "estimate it from the same data with mne.compute_covariance")
    listed = "; ".join(f"({k}) {c}" for k, c in enumerate(causes, 1))
    return (f"The known noise is the {what}. Usual causes: {listed}. Or use "
            "learn_noise=True, which learns the noise level from the data.")


def _check_known_noise(ratio, dof, nave, epochs):
    """Refuse known noise far above the data power (``learn_noise=False``).

    Raise rather than warn: data weaker than the noise model's own noise
    cannot come from that model (see :func:`_weak_threshold`), the estimate
    would be an all-zero map in valid-looking A·m units, and the cause is
    always the call (nave, covariance units), fixed by the caller in one
    line. Data *at* the noise level (a baseline window, a condition without
    a response) are possible: those only warn, after the run
    (:func:`_warn_empty`). For epochs, the call is refused only when the
    typical (median) epoch is that weak; single weak epochs are named in
    the warning.
    """
    level = float(np.median(ratio))
    if level < _weak_threshold(dof):
        which = "the median epoch's" if epochs else "the"
        raise ValueError(
            f"learn_noise=False: {which} whitened data power is "
            f"{level:.3g} times the known noise variance, which "
            "cannot be: the known noise alone would carry more power than "
            "the data, the solver would explain everything as noise and "
            "return a map of ~0 A·m. " + _known_noise_advice(nave, epochs))


def _warn_empty(ratio, share, dof, nave, learn_noise, epochs):
    """Warn when the known noise explains the data or every source was
    pruned (the map is, or is nearly, zero)."""
    near = np.logical_and(not learn_noise,
                          ratio <= 1 + 3 * np.sqrt(2.0 / dof))
    empty = share < _PRUNED_RTOL
    if not (near.any() or empty.any()):
        return
    if epochs:
        idx = np.flatnonzero(near | empty)
        warn(f"{len(idx)} of {len(ratio)} epochs have (nearly) empty source "
             f"maps (epoch indices {idx[:10].tolist()}"
             f"{' ...' if len(idx) > 10 else ''}): "
             + ("their data power is at or below the known noise level."
                if not learn_noise else "every source was pruned, the "
                "model explains their data as noise.")
             + (" " + _known_noise_advice(nave, epochs)
                if not learn_noise else ""))
        return
    if not learn_noise and near[0]:
        warn(f"learn_noise=False: the whitened data power is only "
             f"{ratio[0]:.3g} times the known noise variance (nave="
             f"{nave:g}): the data are indistinguishable from noise at this "
             "noise level, and the source map is (nearly) empty"
             f"{' (every source pruned)' if empty[0] else ''}. If the data "
             "hold a response, the noise level is wrong. "
             + _known_noise_advice(nave, epochs))
    else:
        warn("Every source was pruned: the model explains the data as noise "
             "and the source map is (nearly) zero. Check that the data hold "
             "a response in this time window, and the noise covariance.")


def _noise_covariance(lam_w, whitener, ch_names, nfree):
    """Learned whitened noise variances back to a diagonal physical covariance."""
    # the same cut as the null space (on channels scaled to unit norm, so
    # that MEG and EEG units do not matter): directions removed by the
    # reference have no learned noise to map back
    scale = _channel_scale(whitener)
    unwhiten = scale[:, None] * np.linalg.pinv(whitener * scale,
                                               rcond=_NULL_RTOL)
    diag = np.einsum("mk,k,mk->m", unwhiten, lam_w, unwhiten)
    return mne.Covariance(diag, ch_names, bads=[], projs=[], nfree=nfree)


def _data_dims(gain, null):
    return gain.shape[0] - (0 if null is None else null.rank)


@verbose
@fill_doc
def apply_unfolded_sbl(evoked, fwd, noise_cov, model="deep-cb", *,
                       learn_noise=True, n_layers=None, loose=None,
                       source_model=None, pick_ori=None,
                       return_residual=False, return_noise_cov=False,
                       return_posterior_std=False, rank=None, device="cpu",
                       dtype="float32", verbose=None):
    """Localise an evoked response with unfolded convex-bounding SBL.

    Parameters
    ----------
    evoked : instance of mne.Evoked
        MEG and/or EEG data; EEG with an average-reference projector
        (``evoked.set_eeg_reference(projection=True)``). The reference
        and any other projector remove sensor directions from the data; the
        solver works in the remaining subspace (without that, learning the
        noise jointly would be ill-posed: the noise variance along the
        reference direction would shrink towards zero). ``evoked.nave``
        (the number of averaged trials, > 0) scales the known noise of
        ``learn_noise=False``.
    %(fwd_or_operator)s
    %(noise_cov)s
    %(model)s
    %(learn_noise)s
    %(n_layers)s
    %(loose_apply)s
    %(source_model_apply)s
    %(pick_ori)s
    return_residual : bool
        Also return the residual (data minus fit) as an Evoked.
    return_noise_cov : bool
        Also return the learned sensor noise as a diagonal
        :class:`mne.Covariance` in the data's units (only with
        ``learn_noise=True``). Large values flag noisy channels.
    return_posterior_std : bool
        Also return the posterior standard deviation of every source
        (A·m), from the diagonal of the posterior covariance
        ``Gamma - Gamma L^T W L Gamma`` (the same factorisation as the
        estimate). It does not depend on time: the estimate has the data's
        times and the same value at each.
    %(rank)s
    %(device)s
    %(dtype)s
    %(verbose)s

    Returns
    -------
    stc : instance of mne.SourceEstimate | mne.VectorSourceEstimate
        Source time courses (A·m) on every source of ``fwd``; sources the
        model prunes are (near) zero. For fixed orientation and
        ``pick_ori="normal"`` held, like MNE's own inverse solutions can
        be, as the low-rank pair ``(kernel, sensor data)``: ``stc.data`` is
        computed on first access, so the cost of the solver does not grow
        with the number of time samples. (Volume source spaces give MNE's
        volume estimates.)
    residual : instance of mne.Evoked
        Only if ``return_residual``.
    noise_cov_learned : instance of mne.Covariance
        Only if ``return_noise_cov``.
    posterior_std : instance of mne.SourceEstimate
        Only if ``return_posterior_std``.

    Warns
    -----
    RuntimeWarning
        If the map is (nearly) empty: every source pruned, or, with
        ``learn_noise=False``, data at the known noise level.

    Notes
    -----
    With ``learn_noise=False``, data whose power is far below the known
    noise (``1 / nave`` per whitened channel) are refused with a
    ValueError: the usual causes are a wrong ``evoked.nave`` or a noise
    covariance in other units than the data.

    On the CPU the solver runs on one torch thread for the duration of the
    call (the process-wide setting is restored afterwards): one evoked
    response is hundreds of small operations, which more threads do not
    speed up and which a busy machine slows down many times when they are
    split over threads.
    """
    _validate_type(evoked, mne.Evoked, "evoked")
    _validate_type(learn_noise, bool, "learn_noise")
    n_layers = check_n_layers(n_layers)
    check_nave(evoked.nave)
    check_device(device)
    check_dtype(dtype)
    if return_noise_cov and not learn_noise:
        raise ValueError("return_noise_cov=True needs learn_noise=True: with "
                         "known noise nothing is learned about the sensors.")
    _validate_type(return_posterior_std, bool, "return_posterior_std")
    check_data_finite(evoked.data, "evoked")
    op, sel = _operator_for(evoked, fwd, noise_cov, rank, loose, source_model)
    check_pick_ori(pick_ori, op.source_model)
    gain, gain_info, whitener, null = op.gain, op.info, op.whitener, \
        op.null_space
    sens_data = evoked.data[sel]
    Cy = _whitened_statistic(sens_data, whitener)
    dof = _data_dims(gain, null) * sens_data.shape[1]
    ratio = _noise_levels(Cy, _data_dims(gain, null), evoked.nave)
    if not learn_noise:
        _check_known_noise(ratio, dof, evoked.nave, epochs=False)
    net = _network(model, learn_noise, n_layers, device, dtype)
    logger.info(f"Running {net.model} ({net.n_layers} layers, "
                f"{'joint gamma/lambda' if learn_noise else 'known noise'}) "
                f"on {len(sel)} channels x {gain.shape[1]} solver columns "
                f"({op.source_model!r})")
    sol = _run(net, op, Cy, evoked.nave, learn_noise, device, dtype,
               sens_data.shape[1], posterior_var=return_posterior_std)
    _warn_empty(ratio, sol.share, dof, evoked.nave, learn_noise, epochs=False)
    # the kernel of the data as recorded: whitening folded in, as in MNE
    stc = op.source_model.make_stc(sol.K[0], sens_data, evoked.times[0],
                                   1.0 / evoked.info["sfreq"], pick_ori)
    out = [stc]
    if return_residual:
        out.append(_compute_residual(op.fwd, evoked, sol.K[0] @ sens_data,
                                     np.arange(sol.K.shape[1]), gain_info))
    if return_noise_cov:
        out.append(_noise_covariance(sol.lam[0], whitener,
                                     gain_info["ch_names"], evoked.nave))
    if return_posterior_std:
        out.append(op.source_model.make_std_stc(sol.var[0], evoked.times,
                                                pick_ori))
    return out[0] if len(out) == 1 else tuple(out)


@verbose
@fill_doc
def apply_unfolded_sbl_epochs(epochs, fwd, noise_cov, model="deep-cb", *,
                              learn_noise=True, n_layers=None, loose=None,
                              source_model=None, pick_ori=None,
                              return_noise_cov=False, rank=None, device="cpu",
                              dtype="float32", batch_size=None, verbose=None):
    """Localise every epoch (single trials) in batched passes.

    All epochs go through the network together (in chunks of
    ``batch_size``), without a Python loop over epochs. With
    ``learn_noise=False`` the whitened single-trial noise variance is 1.

    Parameters
    ----------
    epochs : instance of mne.BaseEpochs
        MEG and/or EEG epochs (EEG with an average-reference projector),
        free of NaN/Inf (the error names the epochs to drop).
    %(fwd_or_operator)s
    %(noise_cov)s
    %(model)s
    %(learn_noise)s
    %(n_layers)s
    %(loose_apply)s
    %(source_model_apply)s
    %(pick_ori)s
    return_noise_cov : bool
        Also return the learned noise of every epoch (only with
        ``learn_noise=True``).
    %(rank)s
    %(device)s
    %(dtype)s
    batch_size : int | None
        Epochs per pass. None: 32 on the CPU (larger batches leave the
        caches and run slower per epoch, see the speed benchmark) and 1024
        on a GPU.
    %(verbose)s

    Returns
    -------
    stcs : list of mne.SourceEstimate | list of mne.VectorSourceEstimate
        One per epoch.
    noise_covs : list of mne.Covariance
        Only if ``return_noise_cov``: the learned noise of each epoch.

    Warns
    -----
    RuntimeWarning
        Naming the epochs whose maps are (nearly) empty.
    """
    _validate_type(epochs, mne.BaseEpochs, "epochs")
    _validate_type(learn_noise, bool, "learn_noise")
    n_layers = check_n_layers(n_layers)
    check_device(device)
    check_dtype(dtype)
    if return_noise_cov and not learn_noise:
        raise ValueError("return_noise_cov=True needs learn_noise=True.")
    if batch_size is None:
        batch_size = 32 if torch.device(device).type == "cpu" else 1024
    _validate_type(batch_size, "int-like", "batch_size")
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    op, sel = _operator_for(epochs, fwd, noise_cov, rank, loose, source_model)
    check_pick_ori(pick_ori, op.source_model)
    gain, gain_info, whitener, null = op.gain, op.info, op.whitener, \
        op.null_space
    data = epochs.get_data(picks=[epochs.ch_names[i] for i in sel])
    check_data_finite(data, "epochs")
    Cy = _whitened_statistic(data, whitener)
    dof = _data_dims(gain, null) * data.shape[-1]
    ratio = _noise_levels(Cy, _data_dims(gain, null), 1)
    if not learn_noise:
        _check_known_noise(ratio, dof, 1, epochs=True)
    net = _network(model, learn_noise, n_layers, device, dtype)
    logger.info(f"Running {net.model} on {len(data)} epochs")
    sols = [_run(net, op, Cy[start:start + batch_size], 1, learn_noise,
                 device, dtype, data.shape[-1])
            for start in range(0, len(data), batch_size)]
    K = np.concatenate([s.K for s in sols])
    lam = np.concatenate([s.lam for s in sols])
    _warn_empty(ratio, np.concatenate([s.share for s in sols]), dof, 1,
                learn_noise, epochs=True)
    tstep = 1.0 / epochs.info["sfreq"]
    stcs = [op.source_model.make_stc(k, d, epochs.times[0], tstep, pick_ori)
            for k, d in zip(K, data)]
    if return_noise_cov:
        covs = [_noise_covariance(lm, whitener, gain_info["ch_names"], 1)
                for lm in lam]
        return stcs, covs
    return stcs


def _window_starts(n_times, width, step):
    """Window starts covering ``n_times`` samples; the last ends at the end."""
    starts = list(range(0, n_times - width + 1, step))
    if starts[-1] + width < n_times:
        starts.append(n_times - width)
    return np.asarray(starts)


def _taper(width):
    """Cross-fade weights of a window: ``sin^2``, positive everywhere."""
    return np.sin(np.pi * (np.arange(width) + 0.5) / width) ** 2


@verbose
@fill_doc
def apply_unfolded_sbl_raw(raw, fwd, noise_cov, model="deep-cb", *,
                           window=1.0, overlap=0.5, start=None, stop=None,
                           learn_noise=True, n_layers=None, loose=None,
                           source_model=None, pick_ori=None, rank=None,
                           device="cpu", dtype="float32", batch_size=None,
                           verbose=None):
    """Localise continuous data in sliding windows, in one batched pass.

    The data are cut into windows of ``window`` seconds that overlap by
    ``overlap`` of their length; each window gets its own source (and
    noise) variances, as a separate evoked response would, and all windows
    go through the network as one batch. Where windows overlap, their
    estimates are cross-faded with ``sin^2`` weights (normalised to sum to
    one at every sample), so the time courses have no steps at window
    edges. Like :func:`mne.minimum_norm.apply_inverse_raw`, but the map
    adapts to the activity of each window.

    Parameters
    ----------
    raw : instance of mne.io.BaseRaw
        MEG and/or EEG recording (EEG with an average-reference projector).
    %(fwd_or_operator)s
    %(noise_cov)s
    %(model)s
    window : float
        Window length in seconds (at least 10 samples; shorter windows
        follow faster changes, longer ones estimate the variances better).
    overlap : float
        Overlap of consecutive windows as a fraction of the window, in
        ``[0, 1)``.
    start, stop : int | None
        First and last (exclusive) sample of ``raw`` to localise, as in
        :meth:`mne.io.Raw.get_data`.
    %(learn_noise)s
        With ``learn_noise=False`` the whitened noise variance is 1
        (single-trial data).
    %(n_layers)s
    %(loose_apply)s
    %(source_model_apply)s
    %(pick_ori)s
    %(rank)s
    %(device)s
    %(dtype)s
    batch_size : int | None
        Windows per pass (None: 32 on the CPU, 1024 on a GPU).
    %(verbose)s

    Returns
    -------
    stc : instance of mne.SourceEstimate | mne.VectorSourceEstimate
        The estimate over the whole span (A·m), with ``tmin`` the time of
        sample ``start`` (first sample of the recording as time 0, as
        ``raw.times``).
    """
    _validate_type(raw, mne.io.BaseRaw, "raw")
    _validate_type(learn_noise, bool, "learn_noise")
    _validate_type(window, "numeric", "window")
    _validate_type(overlap, "numeric", "overlap")
    n_layers = check_n_layers(n_layers)
    check_device(device)
    check_dtype(dtype)
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1) (a fraction of the "
                         f"window), got {overlap}.")
    sfreq = raw.info["sfreq"]
    width = int(round(float(window) * sfreq))
    if width < 10:
        raise ValueError(f"window={window} s is {width} samples at "
                         f"{sfreq:g} Hz; use at least 10 samples "
                         f"(window >= {10 / sfreq:.3g} s).")
    if batch_size is None:
        batch_size = 32 if torch.device(device).type == "cpu" else 1024
    batch_size = check_positive_int(batch_size, "batch_size")
    op, sel = _operator_for(raw, fwd, noise_cov, rank, loose, source_model)
    check_pick_ori(pick_ori, op.source_model)
    data, times = raw.get_data(picks=[raw.ch_names[i] for i in sel],
                               start=0 if start is None else start,
                               stop=stop, return_times=True)
    n_times = data.shape[1]
    if n_times < width:
        raise ValueError(f"The span has {n_times} samples, fewer than one "
                         f"window ({width}): shorten window or widen "
                         "start/stop.")
    check_data_finite(data, "raw")
    step = max(1, width - int(round(float(overlap) * width)))
    starts = _window_starts(n_times, width, step)
    segments = np.stack([data[:, s:s + width] for s in starts])
    Cy = _whitened_statistic(segments, op.whitener)
    net = _network(model, learn_noise, n_layers, device, dtype)
    logger.info(f"Running {net.model} on {len(starts)} windows of {width} "
                f"samples (step {step})")
    K = np.concatenate([
        _run(net, op, Cy[b:b + batch_size], 1, learn_noise, device, dtype,
             width).K for b in range(0, len(starts), batch_size)])
    taper = _taper(width) if step < width else np.ones(width)
    X = np.zeros((K.shape[1], n_times))
    total = np.zeros(n_times)
    for k, s in zip(K, starts):
        X[:, s:s + width] += (k @ data[:, s:s + width]) * taper
        total[s:s + width] += taper
    X /= total
    return op.source_model.stc_from_columns(X, times[0], 1.0 / sfreq,
                                            pick_ori)


@verbose
@fill_doc
def unfolded_sbl_trajectory(evoked, fwd, noise_cov, model="deep-cb", *,
                            learn_noise=True, n_layers=None, rank=None,
                            keep_deltas=False, return_sources=False,
                            verbose=None):
    """Run an unfolded model layer by layer and summarise each layer.

    The public entry point to the per-layer behaviour of a model (what the
    report's convergence figure shows), with the same channel picking and
    whitening as :func:`apply_unfolded_sbl`. It runs in float64 on the CPU;
    a network passed as ``model`` is not modified.

    Parameters
    ----------
    evoked : instance of mne.Evoked
        As in :func:`apply_unfolded_sbl`.
    %(fwd_or_operator)s
    %(noise_cov)s
    %(model)s
        A bundled model name without weights falls back to ``"cb"``, with
        a warning and ``note``.
    %(learn_noise)s
    %(n_layers)s
    %(rank)s
    keep_deltas : bool
        Keep the per-layer correction vectors (``delta_source``,
        ``delta_noise``: lists of 1-D arrays, None where a layer has none).
    return_sources : bool
        Also return the posterior mean after every layer (``"X"``: list of
        ``(n_sources, n_times)`` arrays in A·m, every source of ``fwd``).
    %(verbose)s

    Returns
    -------
    trajectory : dict
        ``model`` (name actually run), ``note`` (fallback message or None),
        ``cost`` (Type-II cost at the input of each layer, normalised
        units), ``gamma_change`` (``||γ^k - γ^{k-1}|| / ||γ^{k-1}||``),
        ``lam_change``, ``mean_abs_delta_source`` and
        ``mean_abs_delta_noise`` (NaN for layers without corrections);
        arrays of length ``n_layers``.
    """
    _validate_type(evoked, mne.Evoked, "evoked")
    _validate_type(learn_noise, bool, "learn_noise")
    n_layers = check_n_layers(n_layers)
    check_nave(evoked.nave)
    check_data_finite(evoked.data, "evoked")
    op, sel = _operator_for(evoked, fwd, noise_cov, rank)
    net, name, note = resolve_model(model, learn_noise, n_layers)
    if net is model:
        check_finite_parameters(net, "The network passed as model")
    net = _ready(net, torch.device("cpu"), torch.float64)
    null = op.null_space
    L = torch.as_tensor(op.gain, dtype=torch.float64)
    Y = torch.as_tensor((op.whitener @ evoked.data[sel])[None],
                        dtype=torch.float64)
    Cy = covariance_statistic(Y)
    noise_var = None
    if not learn_noise:
        n_dims = _data_dims(op.gain, null)
        _check_known_noise(_noise_levels(Cy.numpy(), n_dims, evoked.nave),
                           n_dims * Y.shape[-1], evoked.nave, epochs=False)
        noise_var = torch.full((L.shape[0],), 1.0 / evoked.nave,
                               dtype=torch.float64)
    sm = op.source_model
    n_orient = 1 if sm.basis is not None else sm.n_orient
    with torch.no_grad():
        out = net(L, Cy, noise_var, return_trajectory=True, null_space=null,
                  n_orient=n_orient)
        g_prev = prepare(L, Cy, noise_var, net.noise_init, null,
                         n_orient).state
        gamma_prev, lam_prev = g_prev.gamma[0], g_prev.lam[0]
        res = {k: [] for k in ("cost", "gamma_change", "lam_change",
                               "mean_abs_delta_source", "mean_abs_delta_noise")}
        d_src, d_noise, Xs = [], [], []
        for k, step in enumerate(out.trajectory):
            g, lm = step["gamma"][0], step["lam"][0]
            res["cost"].append(float(step["cost"][0]))
            res["gamma_change"].append(float(
                torch.linalg.norm(g - gamma_prev)
                / torch.linalg.norm(gamma_prev).clamp_min(1e-300)))
            res["lam_change"].append(float(
                torch.linalg.norm(lm - lam_prev)
                / torch.linalg.norm(lam_prev).clamp_min(1e-300)))
            for key, dkey, store in (("mean_abs_delta_source", "delta_source", d_src),
                                     ("mean_abs_delta_noise", "delta_noise", d_noise)):
                d = step[dkey]
                if d is None:
                    res[key].append(np.nan)
                    store.append(None)
                else:
                    d = d[0].detach().to(torch.float64).cpu().numpy()
                    res[key].append(float(np.mean(np.abs(d))))
                    store.append(d)
            if return_sources:  # per forward column, A.m
                Kk = sm.column_kernel(out.posterior_kernel(layer=k)[0].numpy())
                Xs.append(Kk @ Y[0].numpy())
            gamma_prev, lam_prev = g, lm
    traj = {k: np.asarray(v, float) for k, v in res.items()}
    traj.update(model=name, note=note, learn_noise=learn_noise,
                label=model_label(name, learn_noise))
    if keep_deltas:
        traj["delta_source"] = d_src if any(d is not None for d in d_src) else None
        traj["delta_noise"] = d_noise if any(d is not None for d in d_noise) else None
    if return_sources:
        traj["X"] = Xs
    return traj
