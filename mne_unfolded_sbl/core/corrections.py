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
source (resp. sensor), all in the normalised units of
:func:`mne_unfolded_sbl.core.solver.normalize_problem`:

1. ``s_n`` (log numerator), 2. ``q_n`` (log denominator),
3. ``log gamma_n^k`` (current state),
4. ``log gamma_n^k - max_n' log gamma_n'^k`` (relative level),
5. ``s_n - mean_n' s_n'`` (relative energy),

each multiplied by :data:`FEATURE_SCALE` so that order-one weights suffice.
Outputs pass through a soft clip ``c tanh(x / c)`` with ``c =``
:data:`CLIP` (identity near zero, bounded far from it).
"""

import torch
from torch import nn

FEATURE_SCALE = 0.1
CLIP = 5.0
N_FEATURES = 5


def log_features(num_log, den_log, log_state):
    """Stack the five per-element features described in the module docstring."""
    rel_state = log_state - log_state.amax(-1, keepdim=True)
    rel_num = num_log - num_log.mean(-1, keepdim=True)
    z = torch.stack([num_log, den_log, log_state, rel_state, rel_num], dim=-1)
    return FEATURE_SCALE * z


def _soft_clip(x):
    return CLIP * torch.tanh(x / CLIP)


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


class BiasCorrection(nn.Module):
    """Bias CB: one learned offset per source (or sensor) and layer.

    Tied to the source space (or montage) it was trained on.
    """

    def __init__(self, size):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(int(size)))

    def forward(self, num_log, den_log, log_state):
        if num_log.shape[-1] != self.bias.shape[0]:
            raise ValueError(
                f"This Bias CB layer was trained for {self.bias.shape[0]} "
                f"elements but got {num_log.shape[-1]}; Bias CB is tied to one "
                "source space and montage. Use model='deep-cb' or "
                "'deep-attn-cb', which transfer to any montage and source space."
            )
        return self.bias.to(num_log.dtype).expand_as(num_log)


class MLPCorrection(nn.Module):
    """Deep CB: a pointwise MLP shared over all sources (or sensors)."""

    def __init__(self, hidden=32, n_hidden=2):
        super().__init__()
        self.net = _mlp(N_FEATURES, hidden, n_hidden)

    def forward(self, num_log, den_log, log_state):
        z = log_features(num_log, den_log, log_state)
        return _soft_clip(self.net(z.to(self.net[0].weight.dtype)).squeeze(-1)
                          ).to(num_log.dtype)


class AttentionCorrection(nn.Module):
    """Deep Attn CB source branch: self-attention over the active sources.

    ``H = LayerNorm(Z W_e + b_e)``, ``H' = H + MHSA(H)``, ``Delta = MLP(H')``
    with the last layer zero-initialised.  The attended set is the sources
    whose classical proposal ``0.5 (s - q)`` lies within ``log(1/rel_active)``
    of the sample's maximum (at most ``max_tokens`` of them, the largest
    first); all other sources get no correction.
    """

    def __init__(self, embed_dim=16, n_heads=2, hidden=32, rel_active=1e-3,
                 max_tokens=2048):
        super().__init__()
        self.embed = nn.Linear(N_FEATURES, embed_dim)
        self.norm = nn.LayerNorm(embed_dim)
        self.attn = nn.MultiheadAttention(embed_dim, n_heads, batch_first=True)
        self.decode = nn.Sequential(nn.Linear(embed_dim, hidden), nn.GELU(),
                                    nn.Linear(hidden, 1))
        nn.init.zeros_(self.decode[-1].weight)
        nn.init.zeros_(self.decode[-1].bias)
        self.log_rel_active = float(torch.log(torch.tensor(rel_active)))
        self.max_tokens = int(max_tokens)

    def forward(self, num_log, den_log, log_state):
        B, N = num_log.shape
        proposal = 0.5 * (num_log - den_log)
        active = proposal >= proposal.amax(-1, keepdim=True) + self.log_rel_active
        k = int(min(N, self.max_tokens, int(active.sum(-1).max())))
        k = max(k, 1)
        idx = torch.topk(proposal, k, dim=-1).indices  # (B, k)
        z = log_features(num_log, den_log, log_state)
        wdt = self.embed.weight.dtype
        zk = torch.gather(z, 1, idx[..., None].expand(B, k, N_FEATURES)).to(wdt)
        mask_k = torch.gather(active, 1, idx)  # True = attended
        H = self.norm(self.embed(zk))
        att, _ = self.attn(H, H, H, key_padding_mask=~mask_k, need_weights=False)
        out = _soft_clip(self.decode(H + att).squeeze(-1))
        out = torch.where(mask_k, out, torch.zeros_like(out)).to(num_log.dtype)
        return torch.zeros_like(num_log).scatter(1, idx, out)
