"""Learned log-domain correction terms of the unfolded network.

Each module maps the log-statistics of one convex-bounding half-step to an
additive correction of the new log-variance::

    log gamma_n <- 0.5 s_n - 0.5 q_n + Delta_n      (source branch)
    log lambda_m <- 0.5 u_m - 0.5 v_m + delta_m     (noise branch)

The call signature is ``correction(num_log, den_log, log_state)`` with
tensors of shape ``(B, P)`` (``P`` = sources or sensors) and the output is
``(B, P)``.  Every module's last affine layer starts at zero, so an
untrained network *is* the classical solver.

Features fed to the pointwise and attention modules (``d_in = 5``), per
source (resp. sensor), with ``p = 0.5 (s - q)`` the classical proposal of
the new log-variance:

1. ``p_n - max_n' p_n'`` (proposed level relative to the strongest),
2. ``log gamma_n^k - max_n' log gamma_n'^k`` (current relative level),
3. ``p_n - log gamma_n^k`` (the classical step of this element),
4. ``s_n - max_n' s_n'`` (relative energy),
5. ``q_n - mean_n' q_n'`` (relative sensitivity, e.g. depth),

each clipped below at :data:`FEATURE_FLOOR` (pruned elements) and
multiplied by :data:`FEATURE_SCALE` so that order-one weights suffice.
Every feature is a difference of log-quantities of one sample: it does not
change when the data, the lead field or the state are rescaled, so the
features carry no absolute SNR or source count. (The first trained weights
also saw the absolute ``s``, ``q`` and ``log gamma``; a diagnosis showed
those drove the corrections that added spurious sources on a single
dipole, :doc:`/model_cards`.)

Outputs pass through a soft clip ``c tanh(x / c)`` with ``c =``
:data:`CLIP`, and the corrected log-variance may exceed the sample's
largest classical proposal by at most :data:`LOG_OVERSHOOT`: corrections
cannot compound over layers into variances far above any the classical
solver would propose (which also exhausted float32 in the products of the
next layer).

These are the ``"relative"`` features. The first bundled weights were
trained with the ``"absolute"`` ones (``s_n``, ``q_n``, ``log gamma_n``,
``log gamma_n - max log gamma``, ``s_n - mean s``; soft clip at 5, no cap);
a network's ``features`` (its config, stored with the weights; files
without it are ``"absolute"``) says which it uses (:data:`FEATURE_SETS`).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

FEATURE_SCALE = 0.1
FEATURE_FLOOR = -40.0
CLIP = 3.0
LOG_OVERSHOOT = math.log(10.0)
N_FEATURES = 5


def absolute_features(num_log, den_log, log_state):
    """The five features of the first bundled weights (``"absolute"``)."""
    rel_state = log_state - log_state.amax(-1, keepdim=True)
    rel_num = num_log - num_log.mean(-1, keepdim=True)
    z = torch.stack([num_log, den_log, log_state, rel_state, rel_num], dim=-1)
    return FEATURE_SCALE * z


def log_features(num_log, den_log, log_state):
    """Stack the five per-element features described in the module docstring."""
    return _relative_features(num_log, den_log, log_state)[0]


def _relative_features(num_log, den_log, log_state):
    """:func:`log_features`, and the proposal ``0.5 (s - q)`` and its
    maximum per sample, which the bound of the correction needs too."""
    prop = 0.5 * (num_log - den_log)
    prop_max = prop.amax(-1, keepdim=True)
    z = torch.stack([
        prop - prop_max,
        log_state - log_state.amax(-1, keepdim=True),
        prop - log_state,
        num_log - num_log.amax(-1, keepdim=True),
        den_log - den_log.mean(-1, keepdim=True),
    ], dim=-1)
    return FEATURE_SCALE * z.clamp_min(FEATURE_FLOOR), (prop, prop_max)


#: Feature sets: name -> (feature function, soft-clip bound, cap the
#: corrected level at the largest proposal times 10).
FEATURE_SETS = {
    "relative": (log_features, CLIP, True),
    "absolute": (absolute_features, 5.0, False),
}


def check_features(features):
    """Validate a feature-set name (see :data:`FEATURE_SETS`)."""
    if features not in FEATURE_SETS:
        raise ValueError(f"features must be one of {sorted(FEATURE_SETS)}, got "
                         f"{features!r}.")
    return features


def _bound_correction(delta, num_log, den_log, features="relative",
                      proposal=None):
    """Soft-clip ``delta`` and cap the corrected level (module docstring).

    ``proposal``: ``(0.5 (s - q), its maximum)`` where already computed
    (:func:`_relative_features`).
    """
    _, clip, cap = FEATURE_SETS[features]
    delta = clip * torch.tanh(delta / clip)
    if not cap:
        return delta
    if proposal is None:
        prop = 0.5 * (num_log - den_log)
        prop_max = prop.amax(-1, keepdim=True)
    else:
        prop, prop_max = proposal
    room = prop_max + LOG_OVERSHOOT - prop
    return torch.minimum(delta, room)


def _mlp_inference(net, x):
    """``net(x)`` for the ``Linear``/``GELU`` stack of :func:`_mlp`, as
    functional calls: the same operations without the ``nn.Module`` call
    machinery (hooks: 10-20 µs a module on one CPU thread), which costs
    more than the MLP's own arithmetic for the 64 sensors of a noise
    correction. Inference only (no module hooks run)."""
    for m in net:
        if isinstance(m, nn.Linear):
            x = F.linear(x, m.weight, m.bias)
        elif isinstance(m, nn.GELU):
            x = F.gelu(x, approximate=m.approximate)
        else:
            x = m(x)
    return x


def _mlp(d_in, hidden, n_hidden):
    layers, d = [], d_in
    for _ in range(n_hidden):
        layers += [nn.Linear(d, hidden), nn.GELU()]
        d = hidden
    out = nn.Linear(d, 1)
    nn.init.zeros_(out.weight)
    nn.init.zeros_(out.bias)
    layers.append(out)
    return nn.Sequential(*layers)


@torch.no_grad()
def _scale_affine_(layer, alpha):
    """Multiply an affine layer's weight and bias by ``alpha`` in place."""
    layer.weight.mul_(alpha)
    layer.bias.mul_(alpha)


class BiasCorrection(nn.Module):
    """Bias CB: one learned offset per source (or sensor) and layer.

    Tied to the source space (or montage) it was trained on.

    With ``centered=True`` the offsets are applied minus their mean, so a
    layer can move variances *relative to each other* (a prior over where
    sources are, or which channels are noisy) but not the level of all of
    them at once, which is a prior on the SNR. Not the default: trained
    that way (``training_state/bias-cb_joint5``, 150 steps) the Bias CB
    (γ,λ) became *worse* than convex bounding on the validation bank's
    focal regimes (mean log-ratio +0.02 and +0.03 for 1-4 and 5-15
    sources) where uncentred runs were better on the first (−0.013): the
    common offset is what helps there.
    """

    def __init__(self, size, features="relative", centered=False):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(int(size)))
        self.features = check_features(features)
        self.centered = bool(centered)

    def forward(self, num_log, den_log, log_state):
        if num_log.shape[-1] != self.bias.shape[0]:
            raise ValueError(
                f"This Bias CB layer was trained for {self.bias.shape[0]} "
                f"elements but got {num_log.shape[-1]}; Bias CB is tied to one "
                "source space and montage. Use model='deep-cb' or "
                "'deep-attn-cb', which transfer to any montage and source space."
            )
        bias = self.bias - self.bias.mean() if self.centered else self.bias
        return _bound_correction(bias.to(num_log.dtype).expand_as(num_log),
                                 num_log, den_log, self.features)

    @torch.no_grad()
    def scale_output_(self, alpha):
        """Scale the correction before its bound by ``alpha`` in place (the
        offsets; 0: no correction)."""
        self.bias.mul_(alpha)


class MLPCorrection(nn.Module):
    """Deep CB: a pointwise MLP shared over all sources (or sensors)."""

    def __init__(self, hidden=32, n_hidden=2, features="relative"):
        super().__init__()
        self.net = _mlp(N_FEATURES, hidden, n_hidden)
        self.features = check_features(features)

    def forward(self, num_log, den_log, log_state):
        if torch.is_grad_enabled():
            z = FEATURE_SETS[self.features][0](num_log, den_log, log_state)
            raw = self.net(z.to(self.net[0].weight.dtype)).squeeze(-1)
            return _bound_correction(raw.to(num_log.dtype), num_log, den_log,
                                     self.features)
        # inference: the same values, with the proposal shared by the
        # features and the bound, and the MLP as functional calls
        # (one evoked response: these calls, not the arithmetic, dominate)
        proposal = None
        if self.features == "relative":
            z, proposal = _relative_features(num_log, den_log, log_state)
        else:
            z = FEATURE_SETS[self.features][0](num_log, den_log, log_state)
        weight = self.net[0].weight
        raw = _mlp_inference(self.net, z.to(weight.dtype)).squeeze(-1)
        return _bound_correction(raw.to(num_log.dtype), num_log, den_log,
                                 self.features, proposal)

    def scale_output_(self, alpha):
        """Scale the correction before its bound by ``alpha`` in place (the
        MLP's last affine layer; 0: no correction)."""
        _scale_affine_(self.net[-1], alpha)


class AttentionCorrection(nn.Module):
    """Deep Attn CB source branch: the Deep CB MLP augmented with
    self-attention over the active sources.

    ``Delta = MLP_p(Z) + MLP_a(H')`` with ``H = LayerNorm(Z W_e + b_e)``,
    ``H' = H + MHSA(H)``: the pointwise residual MLP of Deep CB
    (:class:`MLPCorrection`, same shape, under ``pointwise``) on every
    source, plus the attention decoder's term on the attended ones (the
    paper's "augmenting the source MLP with spatial self-attention"). Both
    last layers start at zero. A Deep Attn CB therefore contains Deep CB:
    with the decoder at zero and a Deep CB's weights in ``pointwise`` it
    *is* that Deep CB, and a run started from a Deep CB
    (``init_weights``) improves on it rather than on the classical solver.

    The attended set is the sources whose classical proposal
    ``0.5 (s - q)`` lies within ``log(1/rel_active)`` of the sample's
    maximum, at most ``max_tokens`` of them (the largest first); the other
    sources get the pointwise term only. The attention itself is
    :func:`torch.nn.functional.scaled_dot_product_attention` (fused kernels
    where the device has them) with the inactive tokens masked out as keys,
    so the cost is ``O(max_tokens^2)`` per sample whatever the source space.
    """

    def __init__(self, embed_dim=16, n_heads=2, hidden=32, rel_active=1e-3,
                 max_tokens=512, features="relative"):
        super().__init__()
        self.features = check_features(features)
        if embed_dim % n_heads:
            raise ValueError(f"embed_dim={embed_dim} must be a multiple of "
                             f"n_heads={n_heads}.")
        self.embed = nn.Linear(N_FEATURES, embed_dim)
        self.norm = nn.LayerNorm(embed_dim)
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim)
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.n_heads = int(n_heads)
        self.decode = nn.Sequential(nn.Linear(embed_dim, hidden), nn.GELU(),
                                    nn.Linear(hidden, 1))
        nn.init.zeros_(self.decode[-1].weight)
        nn.init.zeros_(self.decode[-1].bias)
        self.pointwise = _mlp(N_FEATURES, hidden, 2)
        self.log_rel_active = float(torch.log(torch.tensor(rel_active)))
        self.max_tokens = int(max_tokens)

    def _attend(self, H, mask_k):
        B, k, d = H.shape
        h = self.n_heads
        q, key, v = self.qkv(H).view(B, k, 3, h, d // h).permute(2, 0, 3, 1, 4)
        # boolean mask: True = may attend (inactive tokens are no keys)
        att = F.scaled_dot_product_attention(q, key, v,
                                             attn_mask=mask_k[:, None, None, :])
        return self.proj(att.transpose(1, 2).reshape(B, k, d))

    def forward(self, num_log, den_log, log_state):
        B, N = num_log.shape
        proposal = 0.5 * (num_log - den_log)
        active = proposal >= proposal.amax(-1, keepdim=True) + self.log_rel_active
        k = int(min(N, self.max_tokens, int(active.sum(-1).max())))
        k = max(k, 1)
        idx = torch.topk(proposal, k, dim=-1).indices  # (B, k)
        z = FEATURE_SETS[self.features][0](num_log, den_log, log_state)
        wdt = self.embed.weight.dtype
        zk = torch.gather(z, 1, idx[..., None].expand(B, k, N_FEATURES)).to(wdt)
        mask_k = torch.gather(active, 1, idx)  # True = attended
        H = self.norm(self.embed(zk))
        out = self.decode(H + self._attend(H, mask_k)).squeeze(-1)
        out = torch.where(mask_k, out, torch.zeros_like(out)).to(num_log.dtype)
        point = self.pointwise(z.to(wdt)).squeeze(-1).to(num_log.dtype)
        full = point.scatter_add(1, idx, out)
        return _bound_correction(full, num_log, den_log, self.features)

    def scale_output_(self, alpha):
        """Scale the correction before its bound by ``alpha`` in place (the
        last affine layers of the pointwise MLP and of the attention
        decoder, whose outputs add up; 0: no correction)."""
        _scale_affine_(self.pointwise[-1], alpha)
        _scale_affine_(self.decode[-1], alpha)
