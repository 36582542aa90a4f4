r"""Normalizing-flow amortized guide: a conditional flow on an amortized location-scale base.

.. math::

    \varepsilon \sim b, \qquad
    u = T_L \circ \dots \circ T_1(\varepsilon;\, h(x)), \qquad
    z = \mu(x) + \sigma(x) \odot u,

    \log q(z \mid x) = \log b(\varepsilon)
        - \sum_{l=1}^{L} \log\Big|\det \frac{\partial T_l}{\partial u_{l-1}}\Big|
        - \sum_k \log \sigma_k(x)

(Rezende & Mohamed 2015, "Variational inference with normalizing flows"). One encoder MLP
gives the location :math:`\mu(x)`, the scale :math:`\sigma(x)` and a context vector
:math:`h(x)`; each layer :math:`T_l` is one of Pyro's conditional transforms
(:mod:`pyro.distributions.transforms`) whose parameters come from a hypernetwork of
:math:`h(x)` (and, in coupling and autoregressive layers, of the other coordinates). The
location-scale step comes last, so the layers act on standardised coordinates, where a spline's
bounding box :math:`[-B, B]` holds almost all the base mass whatever the scale of the
posterior. Every layer starts as the identity.

**The base** :math:`b` is, by default (``base="mixture"``), a mixture of ``components``
diagonal Gaussians whose locations, scales and weights come from the encoder
(:func:`pyrofail.guides.mixture.mixture_from_head`, started apart like the ``mixture`` guide).
A flow on a mixture base is itself a mixture, of the pushed-forward components, so it is
trained by the same stratified estimators (:mod:`pyrofail.objectives.stratified`; :class:`MixtureFlow`).
The other bases: ``"gaussian"``, the standard normal :math:`\mathcal N(0, I_K)`; and
``"bimodal"``: independent coordinates, each an equal pair
:math:`\tfrac12\mathcal N(-\delta_k(x), s_k(x)^2) + \tfrac12\mathcal N(\delta_k(x), s_k(x)^2)`
(:class:`SymmetricPairNormal`), the first coordinate started parted (:math:`s = 1/4`,
:math:`\delta = \sqrt{1 - s^2}`) and the others standard normal.

Which base, and why the default is a mixture. Under the ELBO, :math:`\mathrm{KL}(q \,\|\, p)`
rarely moves mass between modes once they are apart: the reparameterised gradient of how much
mass a mode carries comes only from samples that fall between the modes, where the posterior
density is tiny. So the split a guide starts with is the split it keeps, unless the split is a
weight with a gradient of its own.

* From a Gaussian base a flow tips onto one mode early, while its hypernetworks barely depend
  on :math:`x` yet; a first spline layer that starts parted drifts the same way (its steep part
  slides through the base mass at no cost), and so does a bimodal base started nearly merged.
* A parted bimodal base keeps both modes, because a bump cannot cross the gap; but the same
  barrier keeps a bump that landed on a poor local mode there, with half the mass, and it
  cannot learn unequal masses.
* The mixture base learns the weights through the stratified gradient
  (:mod:`pyrofail.objectives.stratified`).

``docs/results.md`` ("Guides on two equal modes") has the measurements behind these sentences,
with the calls that made them.

The price of the mixture base is :math:`C` model evaluations per particle in training.

The hypernetworks are :class:`pyrofail.nn.MLP` s, so a guide built with ``restarts=R`` holds
``R`` independent flows whose weights all carry the leading restart dimension.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from pyro.distributions.conditional import ConditionalTransformModule
from pyro.distributions.transforms import (
    AffineTransform,
    ConditionalAffineAutoregressive,
    ConditionalAffineCoupling,
    ConditionalSpline,
    Permute,
)
from torch import nn
from torch.distributions import Transform, constraints

from pyrofail.errors import UsageError, check_choice, check_positive_float, check_positive_int
from pyrofail.guides.base import AmortizedGuide
from pyrofail.guides.mixture import head_size, init_head, mixture_from_head
from pyrofail.nn import ACTIVATION, MLP, inv_softplus
from pyrofail.zoo import register

__all__ = ["FlowGuide", "MixtureFlow", "SymmetricPairNormal"]

TRANSFORMS = ("spline", "affine", "iaf")
ORDERS = ("linear", "quadratic")
BASES = ("bimodal", "gaussian", "mixture")
# Pyro's rational spline adds this floor to every knot derivative (spline.py); a raw
# derivative of softplus^-1(1 - floor) makes the spline the identity.
_SPLINE_MIN_DERIVATIVE = 1e-3


def _broadcast_cat(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Concatenate on the last dim after broadcasting the leading dims (particles, restarts)."""
    lead = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    return torch.cat((a.expand(*lead, a.shape[-1]), b.expand(*lead, b.shape[-1])), -1)


class ParamNet(nn.Module):
    r"""Hypernetwork :math:`(u_{1:d}, h) \mapsto` a tuple of parameter tensors.

    An MLP of the concatenation of the conditioning coordinates :math:`u_{1:d}` and the
    context :math:`h(x)`, its output split into ``param_dims``. When :math:`d = 0` (a coupling
    layer on a one-dimensional latent, where nothing is left to condition on) only the context
    is used, without broadcasting it over the particle dimension. The output layer starts at
    zero weights and the given ``bias``, so the layer it drives starts at a chosen transform
    (the identity).
    """

    def __init__(self, in_dim, hidden, param_dims, bias, activation, restarts):
        super().__init__()
        self.param_dims = list(param_dims)
        self.mlp = MLP((in_dim, *hidden, sum(self.param_dims)), activation, restarts)
        with torch.no_grad():
            self.mlp.weights[-1].zero_()
            self.mlp.biases[-1].copy_(torch.as_tensor(bias).expand_as(self.mlp.biases[-1]))

    def forward(self, inputs: torch.Tensor, context: torch.Tensor | None = None):
        if context is not None:
            inputs = context if inputs.shape[-1] == 0 else _broadcast_cat(inputs, context)
        return tuple(self.mlp(inputs).split(self.param_dims, -1))


class _SplineCouplingTransform(Transform):
    r""":math:`y_{1:d} = u_{1:d}`, :math:`y_{d+1:K} = g(u_{d+1:K};\ u_{1:d}, h)` with
    :math:`g` Pyro's element-wise rational spline, conditioned on ``(u_{1:d}, h)``."""

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, spline: ConditionalSpline, split_dim: int, context: torch.Tensor):
        super().__init__(cache_size=1)
        self.spline, self.split_dim, self.context = spline, split_dim, context
        self._log_det = None

    def _conditioned(self, u1):
        ctx = self.context if self.split_dim == 0 else _broadcast_cat(u1, self.context)
        return self.spline.condition(ctx)

    def _call(self, u):
        u1, u2 = u[..., : self.split_dim], u[..., self.split_dim :]
        g = self._conditioned(u1)
        y2 = g(u2)
        self._log_det = g._cache_log_detJ.sum(-1)
        return torch.cat((u1, y2), -1)

    def _inverse(self, y):
        y1, y2 = y[..., : self.split_dim], y[..., self.split_dim :]
        g = self._conditioned(y1)
        u2 = g._inv_call(y2)
        self._log_det = g._cache_log_detJ.sum(-1)
        return torch.cat((y1, u2), -1)

    def log_abs_det_jacobian(self, u, y):
        u_old, y_old = self._cached_x_y
        if u is not u_old or y is not y_old:
            self(u)  # recomputes the cache and the log-determinant
        return self._log_det


class ConditionalSplineCoupling(ConditionalTransformModule):
    r"""Rational-spline coupling layer (Durkan, Bekasov, Murray & Papamakarios 2019, "Neural
    spline flows"; linear-rational splines of Dolatabadi, Erfani & Leckie 2020) conditioned on
    a context :math:`h`:

    .. math::

        y_{1:d} = u_{1:d}, \qquad
        y_{d+1:K} = g_{\theta(u_{1:d},\, h)}(u_{d+1:K}),

    with :math:`g` Pyro's monotone element-wise spline
    (:class:`~pyro.distributions.transforms.ConditionalSpline`) on :math:`[-B, B]`, the
    identity outside. With :math:`d = 0` (a one-dimensional latent) it is an element-wise
    spline whose knots depend on :math:`h` alone, still a non-Gaussian family. It starts as
    the identity (equal bins, unit slopes).
    """

    def __init__(
        self, latent_dim, split_dim, context_dim, hidden, count_bins, bound, order, activation, restarts
    ):
        super().__init__()
        width = latent_dim - split_dim
        dims = [width * count_bins, width * count_bins, width * (count_bins - 1)]
        bias = [0.0] * (2 * width * count_bins)
        bias += [inv_softplus(1.0 - _SPLINE_MIN_DERIVATIVE)] * (width * (count_bins - 1))
        if order == "linear":
            dims.append(width * count_bins)
            bias += [0.0] * (width * count_bins)
        self.split_dim = split_dim
        net = ParamNet(split_dim + context_dim, hidden, dims, bias, activation, restarts)
        self.spline = ConditionalSpline(net, width, count_bins, bound=bound, order=order)

    def condition(self, context):
        return _SplineCouplingTransform(self.spline, self.split_dim, context)


# The bimodal base starts with bumps at +-BIMODAL_LOC of spread BIMODAL_SCALE (mean 0, variance
# 1): the density between them is about exp(-m^2 / 2 s^2) = 6e-4 of the peaks', a deep gap.
BIMODAL_SCALE = 0.25
BIMODAL_LOC = math.sqrt(1.0 - BIMODAL_SCALE**2)


class SymmetricPairNormal(dist.TorchDistribution):
    r"""Independent coordinates, each the equal mixture
    :math:`\tfrac12\mathcal N(-\delta_k, s_k^2) + \tfrac12\mathcal N(\delta_k, s_k^2)`.

    Reparameterised: the component of each coordinate is a fair coin, independent of the
    parameters, so ``rsample`` = coin x delta + s x noise is differentiable in delta and s
    and its gradient is unbiased (the weights are fixed, so no gradient of a discrete choice
    is needed)."""

    arg_constraints = {"delta": constraints.real, "spread": constraints.positive}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, delta, spread, validate_args=False):
        self.delta, self.spread = torch.broadcast_tensors(delta, spread)
        super().__init__(self.delta.shape[:-1], self.delta.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        shape = torch.Size(batch_shape) + self.event_shape
        return SymmetricPairNormal(self.delta.expand(shape), self.spread.expand(shape))

    def rsample(self, sample_shape=()):
        shape = self._extended_shape(torch.Size(sample_shape))
        coin = torch.randint(0, 2, shape, device=self.delta.device).to(self.delta.dtype) * 2 - 1
        noise = torch.randn(shape, dtype=self.delta.dtype, device=self.delta.device)
        return coin * self.delta + self.spread * noise

    def log_prob(self, value):
        a = -0.5 * ((value - self.delta) / self.spread) ** 2
        b = -0.5 * ((value + self.delta) / self.spread) ** 2
        lp = torch.logaddexp(a, b) - math.log(2) - self.spread.log() - 0.5 * math.log(2 * math.pi)
        return lp.sum(-1)


class MixtureFlow(dist.TransformedDistribution):
    r"""A flow on a mixture base: itself a mixture, of the pushed-forward components
    :math:`T_\# q_c`, with the base's weights; so it offers the stratified estimators'
    ``rsample_strata`` (each base component's draws pushed through the flow) and
    ``log_weights``."""

    @property
    def log_weights(self) -> torch.Tensor:
        return self.base_dist.log_weights

    def rsample_strata(self, sample_shape=()) -> torch.Tensor:
        u = self.base_dist.rsample_strata(sample_shape)
        for t in self.transforms:
            u = t(u)
        return u


class AutoregressiveNet(nn.Module):
    r"""An autoregressive hypernetwork for Pyro's
    :class:`~pyro.distributions.transforms.ConditionalAffineAutoregressive`: output
    :math:`k` (a mean and a log-scale) is an MLP of :math:`(u_{1:k-1}, h)`, one small MLP per
    coordinate (no masks, so every weight carries the restart dimension like any other MLP;
    latent dimensions here are few)."""

    def __init__(self, latent_dim, context_dim, hidden, activation, restarts):
        super().__init__()
        self.nets = nn.ModuleList(
            ParamNet(k + context_dim, hidden, (1, 1), 0.0, activation, restarts) for k in range(latent_dim)
        )
        self.permutation = torch.arange(latent_dim)

    def get_permutation(self):
        return self.permutation

    def forward(self, u: torch.Tensor, context: torch.Tensor):
        outs = [net(u[..., :k], context=context) for k, net in enumerate(self.nets)]
        lead = torch.broadcast_shapes(u.shape[:-1], *(m.shape[:-1] for m, _ in outs))
        mean = torch.cat([m.expand(*lead, 1) for m, _ in outs], -1)
        log_scale = torch.cat([s.expand(*lead, 1) for _, s in outs], -1)
        return mean, log_scale


@register(
    "guide",
    "flow",
    summary="conditional normalizing flow: rational-spline coupling layers on an amortized mixture base",
    keywords=("flow", "multimodal", "non-gaussian", "normalizing-flow"),
)
class FlowGuide(AmortizedGuide):
    r"""Conditional normalizing flow :math:`q_\phi(z \mid x)` (see the module docstring for
    the density).

    Layers (``transform``):

    * ``"spline"`` (default): rational-spline coupling (Durkan et al. 2019), each coordinate
      bent by a monotone spline with ``count_bins`` bins on :math:`[-B, B]`, ``B = bound``.
      Sampling and scoring an arbitrary point both cost one pass, so reference draws are
      cheap to score. On :math:`K = 1` each layer is an element-wise spline conditioned on
      :math:`h(x)`.
    * ``"affine"``: affine coupling of RealNVP (Dinh, Sohl-Dickstein & Bengio 2017), one pass
      each way. With :math:`K = 1` an affine layer has nothing to condition on but
      :math:`h(x)`, so the family stays that of its base (an affine map of it); use
      ``"spline"`` there.
    * ``"iaf"``: inverse autoregressive flow (Kingma et al. 2016) with Pyro's
      ``ConditionalAffineAutoregressive``: sampling is one pass, but scoring a point that the
      guide did not draw (a reference posterior's draws) takes :math:`K` passes. At
      :math:`K = 1` an affine map of its base, like ``"affine"``.

    Coupling and autoregressive layers alternate the order of the coordinates (a reversal
    between layers), so every coordinate is transformed given the others.

    :param layers: number of flow layers :math:`L`.
    :param count_bins: spline bins per coordinate (``"spline"``).
    :param bound: half-width :math:`B` of the spline's box, in standardised units: base
        mass beyond :math:`B` (about :math:`2\Phi(-B)`) passes through unchanged.
    :param order: ``"linear"`` or ``"quadratic"`` rational splines (``"spline"``).
    :param context_dim: width of the context :math:`h(x)` (default: the last hidden width).
    :param hypernet_hidden: hidden widths of each layer's hypernetwork (default: one layer
        of the last hidden width).
    :param base: ``"mixture"`` (default), ``"gaussian"`` or ``"bimodal"`` (see the module
        docstring).
    :param components: mixture components of the ``"mixture"`` base.
    :param min_scale: floor on :math:`\sigma(x)`.
    """

    def __init__(
        self,
        latent_dim: int,
        data_dim: int,
        hidden=(50, 50, 50),
        activation: str = ACTIVATION,
        transform: str = "spline",
        layers: int = 2,
        count_bins: int = 8,
        bound: float = 4.0,
        order: str = "linear",
        context_dim: int | None = None,
        hypernet_hidden=None,
        base: str = "mixture",
        components: int = 2,
        min_scale: float = 1e-4,
        restarts: int | None = None,
    ):
        super().__init__(latent_dim, data_dim, min_scale, restarts)
        k = self.latent_dim
        self.transform = check_choice("flow transform", transform, TRANSFORMS)
        self.layers = check_positive_int("layers", layers)
        self.count_bins = check_positive_int("count_bins", count_bins, minimum=2)
        self.bound = check_positive_float("bound", bound)
        self.order = check_choice("spline order", order, ORDERS)
        self.base = check_choice("flow base", base, BASES)
        self.components = check_positive_int("components", components)
        # a mixture base is a mixture guide pushed through the flow: the same estimators
        self.stratified = self.base == "mixture"
        hidden = tuple(hidden)
        last = hidden[-1] if hidden else 2 * k
        self.context_dim = check_positive_int("context_dim", last if context_dim is None else context_dim)
        if hypernet_hidden is None:
            hypernet_hidden = (last,)
        try:
            hypernet_hidden = tuple(check_positive_int("hypernet_hidden", w) for w in hypernet_hidden)
        except TypeError:
            raise UsageError(
                f"hypernet_hidden={hypernet_hidden!r} is not allowed; expected a list of widths"
            ) from None
        extra = {"bimodal": 2 * k, "gaussian": 0, "mixture": head_size(self.components, k)}[self.base]
        self.encoder = MLP((data_dim, *hidden, 2 * k + self.context_dim + extra), activation, restarts)
        if self.base == "mixture":
            init_head(self.encoder, 2 * k + self.context_dim, self.components, k)
        with torch.no_grad():
            if self.base == "bimodal":
                c = 2 * k + self.context_dim
                self.encoder.weights[-1][..., c:].mul_(0.1)
                self.encoder.biases[-1][..., c : c + k].zero_()
                self.encoder.biases[-1][..., c].fill_(BIMODAL_LOC)
                self.encoder.biases[-1][..., c + k :].fill_(inv_softplus(1.0))
                self.encoder.biases[-1][..., c + k].fill_(inv_softplus(BIMODAL_SCALE))
            # start at sigma(x) ~ 1, the prior's scale: a wide guide covers every mode at first
            self.encoder.biases[-1][..., k : 2 * k].fill_(inv_softplus(1.0))
            self.encoder.weights[-1][..., k : 2 * k].mul_(0.1)
        split = k // 2
        flows = []
        for _ in range(self.layers):
            if self.transform == "spline":
                flows.append(
                    ConditionalSplineCoupling(
                        k,
                        split,
                        self.context_dim,
                        hypernet_hidden,
                        self.count_bins,
                        self.bound,
                        self.order,
                        activation,
                        restarts,
                    )
                )
            elif self.transform == "affine":
                net = ParamNet(
                    split + self.context_dim,
                    hypernet_hidden,
                    (k - split, k - split),
                    0.0,
                    activation,
                    restarts,
                )
                flows.append(ConditionalAffineCoupling(split, net))
            else:
                net = AutoregressiveNet(k, self.context_dim, hypernet_hidden, activation, restarts)
                flows.append(ConditionalAffineAutoregressive(net))
        self.flows = nn.ModuleList(flows)

    def distribution(self, x: torch.Tensor) -> dist.Distribution:
        k = self.latent_dim
        if self.base == "bimodal":
            loc, raw_scale, context, delta, raw_spread = self.encoder(x).split(
                (k, k, self.context_dim, k, k), -1
            )
            base = SymmetricPairNormal(delta, nn.functional.softplus(raw_spread) + 1e-3)
        elif self.base == "mixture":
            loc, raw_scale, context, head = self.encoder(x).split(
                (k, k, self.context_dim, head_size(self.components, k)), -1
            )
            base = mixture_from_head(head, self.components, k, 1e-3)
        else:
            loc, raw_scale, context = self.encoder(x).split((k, k, self.context_dim), -1)
            base = dist.Normal(torch.zeros_like(loc), torch.ones_like(loc)).to_event(1)
        scale = nn.functional.softplus(raw_scale) + self.min_scale
        reverse = torch.arange(k - 1, -1, -1, device=loc.device)
        transforms = []
        for i, flow in enumerate(self.flows):
            if i and k > 1:
                transforms.append(Permute(reverse))
            transforms.append(flow.condition(context))
        transforms.append(AffineTransform(loc, scale, event_dim=1))
        if self.base == "mixture":
            return MixtureFlow(base, transforms)
        return dist.TransformedDistribution(base, transforms)
