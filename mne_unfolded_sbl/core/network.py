"""The unfolded convex-bounding network (Bias CB, Deep CB, Deep Attn CB).

Layer ``k`` is one iteration of :func:`mne_unfolded_sbl.core.solver.cb_iteration`
with learned log-domain corrections; the last layer is purely classical.
With every correction at its zero initialisation the network reproduces the
classical solver exactly.
"""

from dataclasses import dataclass, field
from itertools import islice

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ._utils import check_positive_int
from .corrections import (AttentionCorrection, BiasCorrection, MLPCorrection,
                          check_features)
from .solver import (CBState, cb_iteration, model_covariance,
                     posterior_kernel, posterior_mean, posterior_variance,
                     precision, prepare, type2_cost)

#: Correction families by model name.
MODELS = ("cb", "bias-cb", "deep-cb", "deep-attn-cb")
#: Display names of the model families.
MODEL_LABELS = {
    "cb": "Convex bounding",
    "bias-cb": "Bias CB",
    "deep-cb": "Deep CB",
    "deep-attn-cb": "Deep Attn CB",
}


def model_label(model, learn_noise):
    """Display name of a model and setting, e.g. ``"Deep CB (γ,λ)"``."""
    name = MODEL_LABELS.get(model, str(model))
    return f"{name} ({'γ,λ' if learn_noise else 'γ'})"


@dataclass
class UnfoldedOutput:
    """What :class:`UnfoldedSBL` returns.

    ``gamma``/``lam`` are in the units of the input ``L`` and ``Cy``;
    ``*_n`` are the normalised values the layers work on, with
    ``gamma = gamma_n * y_scale^2 / l_scale^2`` and ``lam = lam_n * y_scale^2``.
    """

    gamma: torch.Tensor
    lam: torch.Tensor
    gamma_n: torch.Tensor
    lam_n: torch.Tensor
    L_n: torch.Tensor
    l_scale: torch.Tensor
    y_scale: torch.Tensor
    trajectory: list = field(default_factory=list)
    null_space: object = None
    Cy_n: torch.Tensor = None  # the normalised statistics the layers saw
    #: ``L_n Gamma_n L_n^T`` of the final state (formed by the last layer;
    #: the posterior kernel reuses it), or None
    S_n: torch.Tensor = None

    def _state(self, layer):
        if layer is None:
            return self.gamma_n, self.lam_n
        return self.trajectory[layer]["gamma"], self.trajectory[layer]["lam"]

    def posterior_mean(self, Y, layer=None):
        """Posterior mean ``(B, N, T)`` in the units of ``Y`` / ``L``.

        Parameters
        ----------
        Y : torch.Tensor, shape (B, M, T)
            The data the statistics came from.
        layer : int | None
            Use the state after this layer (needs ``return_trajectory``);
            None for the final state.
        """
        g, lm = self._state(layer)
        Yn = Y.to(self.L_n.dtype) / self.y_scale.to(self.L_n.dtype)[:, None, None]
        Xn = posterior_mean(self.L_n, g, lm, Yn, self.null_space)
        scale = (self.y_scale / self.l_scale).to(Xn.dtype)[:, None, None]
        return Xn * scale

    def posterior_kernel(self, layer=None, right=None):
        """Linear map ``K`` (B, N, M) with posterior mean ``K @ Y``.

        In the units of the input lead field: ``K @ Y`` equals
        :meth:`posterior_mean` for the data ``Y`` the statistics came from,
        at a cost that does not depend on the number of time samples.

        Parameters
        ----------
        layer : int | None
            As in :meth:`posterior_mean`.
        right : torch.Tensor, shape (M, M') | None
            Return ``K @ right`` instead (e.g. with the whitener: the
            kernel of the data as recorded), with ``right`` applied to the
            ``M x M`` inverse before the product with the lead field.
        """
        g, lm = self._state(layer)
        # the final state's L Gamma L^T is the last layer's
        S = self.S_n if layer is None else None
        K = posterior_kernel(self.L_n, g, lm, self.null_space, S, right)
        return K / self.l_scale.to(K.dtype)

    def posterior_variance(self, layer=None):
        """Posterior variance ``(B, N)`` of every lead-field column.

        ``diag(Sigma_x)`` in the squared units of the source estimate (see
        :func:`~mne_unfolded_sbl.core.solver.posterior_variance`).
        """
        g, lm = self._state(layer)
        var = posterior_variance(self.L_n, g, lm, self.null_space)
        scale = (self.y_scale / self.l_scale).square().to(var.dtype)[:, None]
        return var * scale

    def cost(self, layer=None):
        """Type-II cost ``log|Sigma_y| + tr(C_y W)`` of the state, (B,).

        In the normalised units of the layers (data scaled to unit mean
        sensor power): comparable between source models of the same data.
        """
        g, lm = self._state(layer)
        prec = precision(model_covariance(self.L_n, g), lm, self.null_space)
        return type2_cost(prec, self.Cy_n)

    def effective_dof(self, layer=None):
        """Effective number of source parameters, ``tr(L Gamma L^T W)``, (B,).

        Between 0 (every source pruned) and the data rank: how many data
        dimensions the sources explain. Unlike a count of non-zero
        variances it does not depend on how far small variances have
        shrunk after a fixed number of layers.
        """
        g, lm = self._state(layer)
        S = model_covariance(self.L_n, g)
        prec = precision(S, lm, self.null_space)
        return (S.to(torch.float64) * prec.W).sum((-1, -2))


class UnfoldedLayer(nn.Module):
    """One unfolded iteration with optional source and noise corrections."""

    def __init__(self, source_correction=None, noise_correction=None):
        super().__init__()
        self.source_correction = source_correction
        self.noise_correction = noise_correction

    def forward(self, L, Cy, state, learn_noise, rel_threshold=None,
                null_space=None, with_cost=True, Lt=None):
        return cb_iteration(L, Cy, state, learn_noise, self.source_correction,
                            self.noise_correction if learn_noise else None,
                            rel_threshold, null_space, with_cost, Lt)


class UnfoldedSBL(nn.Module):
    """Convex-bounding Champagne unfolded into ``n_layers`` trainable layers.

    Parameters
    ----------
    n_layers : int
        Number of layers ``K`` (iterations); the last one is classical.
    model : "cb" | "bias-cb" | "deep-cb" | "deep-attn-cb"
        Correction family. ``"cb"`` has none (the classical solver).
    learn_noise : bool
        Joint (gamma, lambda) learning if True, source-only (known noise)
        if False.
    n_sources, n_sensors : int | None
        Required by ``"bias-cb"`` (its biases are per source and sensor).
    hidden : int
        Hidden width of the MLPs.
    embed_dim, n_heads : int
        Attention embedding size and heads (``"deep-attn-cb"``).
    rel_threshold : float | None
        Optional relative hard threshold after each source update.
    noise_init : float
        Initial noise variance as a fraction of the mean sensor power
        (joint learning without an initial ``noise_var``).
    features : "relative" | "absolute"
        Input features and output bounds of the corrections
        (:data:`~mne_unfolded_sbl.core.corrections.FEATURE_SETS`):
        ``"absolute"`` is the set of the first bundled weights.
    centered_bias : bool
        ``"bias-cb"`` only: apply each layer's offsets minus their mean
        (:class:`~mne_unfolded_sbl.core.corrections.BiasCorrection`), so
        they cannot shift the level of all variances at once. Weights files
        without this setting were trained uncentred.
    """

    def __init__(self, n_layers=25, model="cb", learn_noise=True, *,
                 n_sources=None, n_sensors=None, hidden=32, embed_dim=16,
                 n_heads=2, rel_threshold=None, noise_init=0.1,
                 features="relative", centered_bias=False):
        super().__init__()
        if model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {model!r}")
        # 0 must not mean "default", 2.9 must not mean 2, True must not mean 1
        n_layers = check_positive_int(n_layers, "n_layers")
        if model == "bias-cb" and (n_sources is None or
                                   (learn_noise and n_sensors is None)):
            raise ValueError("model='bias-cb' needs n_sources (and n_sensors "
                             "when learn_noise=True).")
        self.config = dict(n_layers=int(n_layers), model=model,
                           learn_noise=bool(learn_noise), n_sources=n_sources,
                           n_sensors=n_sensors, hidden=hidden,
                           embed_dim=embed_dim, n_heads=n_heads,
                           rel_threshold=rel_threshold, noise_init=noise_init,
                           features=check_features(features),
                           centered_bias=bool(centered_bias))
        self.model = model
        self.learn_noise = bool(learn_noise)
        self.rel_threshold = rel_threshold
        self.noise_init = float(noise_init)
        layers = [UnfoldedLayer(*self._make_corrections())
                  for _ in range(int(n_layers) - 1)]
        layers.append(UnfoldedLayer())  # last layer: purely classical
        self.layers = nn.ModuleList(layers)
        self.gradient_checkpointing = False

    def _make_corrections(self):
        c = self.config
        if self.model == "cb":
            return None, None
        f = c["features"]
        if self.model == "bias-cb":
            centered = c["centered_bias"]
            return (BiasCorrection(c["n_sources"], f, centered),
                    BiasCorrection(c["n_sensors"], f, centered)
                    if self.learn_noise else None)
        noise = MLPCorrection(c["hidden"], features=f) if self.learn_noise \
            else None
        if self.model == "deep-cb":
            return MLPCorrection(c["hidden"], features=f), noise
        return AttentionCorrection(c["embed_dim"], c["n_heads"], c["hidden"],
                                   features=f), noise

    @property
    def n_layers(self):
        return len(self.layers)

    def forward(self, L, Cy, noise_var=None, *, n_layers=None,
                return_trajectory=False, null_space=None, n_orient=1):
        """Run the unfolded solver.

        Parameters
        ----------
        L : torch.Tensor, shape (M, N)
            Lead field (whitened), in the network's dtype and device.
        Cy : torch.Tensor, shape (B, M, M)
            Data statistics (:func:`~mne_unfolded_sbl.core.solver.covariance_statistic`).
        noise_var : torch.Tensor, shape (B, M) | (M,) | None
            Known noise variances (source-only) or initial ones (joint), in
            the units of ``Cy``. Required when ``learn_noise`` is False.
        n_layers : int | None
            Run only the first ``n_layers`` layers (the classical last layer
            is skipped then); None runs all.
        return_trajectory : bool
            Keep per-layer normalised ``gamma``, ``lam``, corrections and cost.
        null_space : NullSpace | None
            Sensor directions without data, e.g.
            ``NullSpace.average_reference(M)`` for average-referenced data
            (see :mod:`mne_unfolded_sbl.core.solver`).
        n_orient : int
            Consecutive columns of ``L`` that share one source variance (1:
            fixed orientation; 3: free or loose orientation). The
            corrections then act per source, on the statistics summed over
            its orientations.

        Returns
        -------
        out : UnfoldedOutput
        """
        if not self.learn_noise and noise_var is None:
            raise ValueError("This source-only network needs the known "
                             "noise_var (learn_noise=False).")
        prob = prepare(L, Cy, noise_var, self.noise_init, null_space,
                       n_orient)
        K = (self.n_layers if n_layers is None
             else check_positive_int(n_layers, "n_layers"))
        return self.run(prob, stop=K, return_trajectory=return_trajectory)

    def run(self, prob, *, start=0, stop=None, return_trajectory=False):
        """Run layers ``start .. stop - 1`` from the state held by ``prob``.

        The building block of :meth:`forward` (which runs every layer from
        the starting state of :func:`~mne_unfolded_sbl.core.solver.prepare`).
        Training uses it to continue from a cached state: a progressive
        phase that trains layer ``k`` needs only layer ``k``, not the frozen
        prefix before it.

        Parameters
        ----------
        prob : NormalizedProblem
            The normalised problem; ``prob.state`` is the state *before*
            layer ``start``.
        start, stop : int
            First layer and one past the last layer to run (``stop=None``:
            all layers).
        return_trajectory : bool
            Keep per-layer normalised ``gamma``, ``lam``, corrections and
            cost (indexed from ``start``).

        Returns
        -------
        out : UnfoldedOutput
        """
        stop = self.n_layers if stop is None else int(stop)
        if not 0 <= int(start) <= stop <= self.n_layers:
            raise ValueError(f"Need 0 <= start <= stop <= {self.n_layers}, got "
                             f"start={start}, stop={stop}.")
        L_n, Cy_n, state, null = prob.L_n, prob.Cy_n, prob.state, prob.null_space
        trajectory = []
        # islice, not self.layers[start:stop]: slicing builds a new
        # ModuleList (0.6 ms, a few % of one evoked response's solve)
        for layer in islice(self.layers, int(start), stop):
            if self.gradient_checkpointing and self.training:
                state, sinfo, ninfo = self._checkpointed(
                    layer, L_n, Cy_n, state, null, return_trajectory, prob.Lt)
            else:
                state, sinfo, ninfo = layer(L_n, Cy_n, state, self.learn_noise,
                                            self.rel_threshold, null,
                                            return_trajectory, prob.Lt)
            if return_trajectory:
                trajectory.append(dict(
                    gamma=state.gamma, lam=state.lam, cost=sinfo["cost"],
                    delta_source=sinfo["delta"],
                    delta_noise=None if ninfo is None else ninfo["delta"]))
        gamma, lam = prob.to_input_units(state.gamma, state.lam)
        return UnfoldedOutput(
            gamma=gamma, lam=lam, gamma_n=state.gamma, lam_n=state.lam,
            L_n=L_n, l_scale=prob.l_scale, y_scale=prob.y_scale,
            trajectory=trajectory, null_space=null, Cy_n=Cy_n, S_n=state.S)

    def _checkpointed(self, layer, L_n, Cy_n, state, null, with_cost, Lt):
        def run(gamma, lam, S):
            new, sinfo, ninfo = layer(L_n, Cy_n, CBState(gamma, lam, S),
                                      self.learn_noise, self.rel_threshold,
                                      null, with_cost, Lt)
            return new.gamma, new.lam, new.S, sinfo["cost"]

        g, lm, S, cost = checkpoint(run, state.gamma, state.lam, state.S,
                                    use_reentrant=False)
        return CBState(g, lm, S), dict(cost=cost, delta=None), None


def classical_network(n_layers=25, learn_noise=True, **kwargs):
    """The untrained (classical) unfolded solver, ``model="cb"``."""
    return UnfoldedSBL(n_layers, "cb", learn_noise, **kwargs)


__all__ = ["MODELS", "MODEL_LABELS", "UnfoldedOutput", "UnfoldedSBL",
           "classical_network", "model_label"]
