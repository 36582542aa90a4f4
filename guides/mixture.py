r"""Mixture-of-Gaussians amortized guide.

.. math::

    q_\phi(z \mid x) = \sum_{c=1}^{C} \pi_c(x)\,
        \mathcal N\big(z;\ \mu_c(x),\ \operatorname{diag}\sigma_c(x)^2\big).

**Why a mixture.** Under the ELBO, a family that must move mass between two separated modes by
transporting samples across the low-density gap between them (a flow on a Gaussian base) gets
almost no gradient to do so and keeps whatever split it fell into early
(:mod:`pyrofail.guides.flow` measures this). A mixture holds each mode with its own component,
and the mass of a mode is a weight :math:`\pi_c` whose exact ELBO gradient,

.. math::

    \frac{\partial\,\mathrm{ELBO}}{\partial \pi_c}
        = \mathbb E_{q_c}\big[\log p(x, z) - \log q(z \mid x)\big] - 1,

is an order-one signal wherever the components sit. On a posterior with two modes of equal
mass and one component on each, the ELBO is maximal at equal weights.

**Which gradient estimator.** :class:`MixtureOfDiagNormals` offers two.

* ``rsample``: exact draws differentiated implicitly (Graves 2016, "Stochastic
  backpropagation through mixture density distributions", arXiv:1607.05690; Figurnov, Mohamed
  & Mnih 2018, "Implicit reparameterization gradients"): the draw inverts the triangular
  distributional transform :math:`u_d = F_d(z_d \mid z_{<d})`, with conditional CDFs
  :math:`F_d = \sum_c w_{cd}(z_{<d})\, \Phi((z_d - \mu_{cd}) / \sigma_{cd})`,
  :math:`w_{cd} \propto \pi_c \prod_{j<d} \mathcal N(z_j; \mu_{cj}, \sigma_{cj}^2)`, and
  holding :math:`u` fixed gives :math:`\mathrm d z_d = -(\partial_\theta F_d\, \mathrm d\theta
  + \partial_{z_{<d}} F_d\, \mathrm d z_{<d}) / q_d(z_d \mid z_{<d})`. Unbiased for every
  parameter, usable with any Pyro ``ELBO``, and for the locations and scales as good as the
  Gaussian reparameterisation. For the **weights** it is nearly useless once the components
  sit on separated modes: it moves mass by moving samples through the gap, so only the rare
  samples there carry the signal: its per-sample standard deviation dwarfs the true value
  (``docs/results.md``, "Why stratified estimators").
* ``rsample_strata``: plain reparameterised draws from every component, for the stratified
  estimators of :mod:`pyrofail.objectives.stratified` (Morningstar et al. 2021), whose weight gradient is
  the explicit difference between the components' log-weights. pyrofail's ``elbo`` and
  ``iwae`` objectives use them for this guide (``stratified = True``), at :math:`C` model
  evaluations per particle.

**Initialisation.** The components start apart, at offsets :math:`\pm e_1, \pm e_2, \ldots`
(component :math:`c` at :math:`(-1)^c\, (1 + \lfloor c / 2K \rfloor)\, e_{\lfloor c/2 \rfloor
\bmod K}` on top of the shared encoder output), with scale 1/2 and equal weights, so that on a
two-mode posterior each falls to a different mode; components started on top of each other
would stay together, since nothing separates them.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import constraints

from pyrofail.errors import check_positive_int
from pyrofail.guides.base import AmortizedGuide
from pyrofail.nn import ACTIVATION, MLP, inv_softplus
from pyrofail.zoo import register

__all__ = ["MixtureGuide", "MixtureOfDiagNormals", "head_size", "init_head", "mixture_from_head"]

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class MixtureOfDiagNormals(dist.TorchDistribution):
    r"""A mixture of :math:`C` diagonal Gaussians on :math:`\mathbb R^K`, with implicit
    reparameterisation gradients (module docstring).

    :param locs: component means, shape ``batch + (C, K)``.
    :param scales: component standard deviations, shape ``batch + (C, K)``.
    :param logits: unnormalised log weights, shape ``batch + (C,)``.
    """

    arg_constraints = {
        "locs": constraints.real,
        "scales": constraints.positive,
        "logits": constraints.real,
    }
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, locs, scales, logits, validate_args=None):
        if locs.dim() < 2 or locs.shape != scales.shape or logits.shape[-1] != locs.shape[-2]:
            raise ValueError(
                f"locs {tuple(locs.shape)}, scales {tuple(scales.shape)} and logits "
                f"{tuple(logits.shape)} must be batch + (C, K), batch + (C, K) and batch + (C,)"
            )
        batch = torch.broadcast_shapes(locs.shape[:-2], logits.shape[:-1])
        c, k = locs.shape[-2:]
        self.locs = locs.expand(*batch, c, k)
        self.scales = scales.expand(*batch, c, k)
        self.logits = logits.expand(*batch, c)
        super().__init__(batch, torch.Size((k,)), validate_args=validate_args)

    @property
    def log_weights(self) -> torch.Tensor:
        """Normalised log weights :math:`\\log \\pi_c`, shape ``batch + (C,)``."""
        return self.logits.log_softmax(-1)

    def expand(self, batch_shape, _instance=None):
        batch = torch.Size(batch_shape)
        c, k = self.locs.shape[-2:]
        return MixtureOfDiagNormals(
            self.locs.expand(*batch, c, k),
            self.scales.expand(*batch, c, k),
            self.logits.expand(*batch, c),
            validate_args=False,
        )

    def _component_log_prob(self, value):
        """:math:`\\log \\mathcal N(z_k; \\mu_{ck}, \\sigma_{ck}^2)` per coordinate: ``(..., C, K)``."""
        eps = (value.unsqueeze(-2) - self.locs) / self.scales
        return -0.5 * eps**2 - self.scales.log() - _LOG_SQRT_2PI

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        return (self.log_weights + self._component_log_prob(value).sum(-1)).logsumexp(-1)

    def _draw(self, sample_shape):
        """Exact draws: a component from the weights, then its Gaussian."""
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            which = torch.distributions.Categorical(logits=self.logits).sample(sample_shape)
            index = which[..., None, None].expand(*which.shape, 1, shape[-1])
            loc = self.locs.expand(*shape[:-1], *self.locs.shape[-2:]).gather(-2, index).squeeze(-2)
            scale = self.scales.expand(*shape[:-1], *self.scales.shape[-2:]).gather(-2, index).squeeze(-2)
            return loc + scale * torch.randn(shape, dtype=loc.dtype, device=loc.device)

    def sample(self, sample_shape=()):
        return self._draw(torch.Size(sample_shape))

    def rsample_strata(self, sample_shape=()) -> torch.Tensor:
        r"""Reparameterised draws from every component: ``sample_shape + (C,) + batch + (K,)``,
        :math:`z_{sc} = \mu_c + \sigma_c \odot \varepsilon_{sc}` (for the stratified
        estimators of :mod:`pyrofail.objectives.stratified`)."""
        shape = torch.Size(sample_shape) + self.locs.shape
        eps = torch.randn(shape, dtype=self.locs.dtype, device=self.locs.device)
        z = self.locs + self.scales * eps  # sample + batch + (C, K)
        return z.movedim(-2, len(sample_shape))

    def rsample(self, sample_shape=()):
        r"""Draws whose gradient is the implicit one: coordinate by coordinate,
        :math:`z_d = \hat z_d - (F_d - \operatorname{sg} F_d) / \operatorname{sg} q_d`, equal
        to the exact draw :math:`\hat z_d` in value, with the derivative of the module
        docstring (``sg`` stops the gradient)."""
        z_hat = self._draw(torch.Size(sample_shape))
        log_w = self.log_weights.expand(*z_hat.shape[:-1], self.logits.shape[-1])
        tiny = torch.finfo(z_hat.dtype).tiny
        coords = []
        for d in range(z_hat.shape[-1]):
            loc, scale = self.locs[..., d], self.scales[..., d]
            t = (z_hat[..., d : d + 1] - loc) / scale  # (..., C)
            w = log_w.softmax(-1)
            cdf = (w * torch.special.ndtr(t)).sum(-1)
            log_pdf = -0.5 * t**2 - scale.log() - _LOG_SQRT_2PI
            density = (log_w.log_softmax(-1) + log_pdf).logsumexp(-1).exp().clamp_min(tiny)
            z_d = z_hat[..., d] - (cdf - cdf.detach()) / density.detach()
            coords.append(z_d)
            if d + 1 < z_hat.shape[-1]:
                # the next coordinate's weights are the responsibilities given z_{<=d}, through
                # the differentiable z_d so that dz_{d+1}/dz_d enters the chain rule
                log_w = log_w + (-0.5 * ((z_d.unsqueeze(-1) - loc) / scale) ** 2 - scale.log())
        return torch.stack(coords, -1)

    @property
    def mean(self):
        return (self.log_weights.exp().unsqueeze(-1) * self.locs).sum(-2)

    @property
    def variance(self):
        w = self.log_weights.exp().unsqueeze(-1)
        second = (w * (self.scales**2 + self.locs**2)).sum(-2)
        return second - self.mean**2


# ---- the mixture head: C K locations, C K raw scales and C logits in an encoder's output ----


def head_size(c: int, k: int) -> int:
    """Outputs of a mixture head with ``c`` components on ``k`` coordinates."""
    return 2 * c * k + c


@torch.no_grad()
def init_head(mlp: MLP, start: int, c: int, k: int, scale: float = 0.5) -> None:
    """Start the head at ``mlp``'s outputs ``start:`` with the components apart (module
    docstring), of standard deviation ``scale``, equally weighted, almost independent of the
    input (small output weights), so that they begin apart for every point."""
    w, b = mlp.weights[-1][..., start:], mlp.biases[-1][..., start:]
    w[..., : 2 * c * k].mul_(0.1)
    w[..., 2 * c * k :].mul_(0.01)
    b.zero_()
    offsets = torch.zeros(c, k)
    for i in range(c):
        offsets[i, (i // 2) % k] = (-1) ** i * (1 + i // (2 * k))
    b[..., : c * k].copy_(offsets.reshape(-1))
    b[..., c * k : 2 * c * k].fill_(inv_softplus(scale))


def mixture_from_head(out: torch.Tensor, c: int, k: int, min_scale: float) -> MixtureOfDiagNormals:
    """The mixture that a head's outputs ``out`` (``(..., head_size(c, k))``) describe."""
    locs = out[..., : c * k].unflatten(-1, (c, k))
    raw = out[..., c * k : 2 * c * k].unflatten(-1, (c, k))
    return MixtureOfDiagNormals(locs, nn.functional.softplus(raw) + min_scale, out[..., 2 * c * k :])


@register(
    "guide",
    "mixture",
    summary="mixture of C diagonal Gaussians from an MLP, trained with stratified ELBO/IWAE estimators",
    keywords=("mixture", "multimodal", "non-gaussian", "mode-covering"),
)
class MixtureGuide(AmortizedGuide):
    r"""Mixture of diagonal Gaussians
    :math:`q_\phi(z \mid x) = \sum_c \pi_c(x)\, \mathcal N(\mu_c(x), \operatorname{diag}
    \sigma_c(x)^2)` (see the module docstring for the gradient and the initialisation).

    One encoder MLP from ``data_dim`` gives :math:`C K` locations, :math:`C K` scales
    (:math:`\operatorname{softplus}(\cdot) + s_{\min}`) and :math:`C` logits.

    :param components: number of components :math:`C` (default 2, for the two-mode
        posteriors of the zoo; 1 is the mean-field family).
    :param min_scale: floor on every component's standard deviation.
    """

    # pyrofail's objectives train it with the stratified estimators (pyrofail.objectives.stratified)
    stratified = True

    def __init__(
        self,
        latent_dim: int,
        data_dim: int,
        hidden=(50, 50, 50),
        activation: str = ACTIVATION,
        components: int = 2,
        min_scale: float = 1e-4,
        restarts: int | None = None,
    ):
        super().__init__(latent_dim, data_dim, min_scale, restarts)
        k = self.latent_dim
        self.components = c = check_positive_int("components", components)
        self.encoder = MLP((data_dim, *hidden, head_size(c, k)), activation, restarts)
        init_head(self.encoder, 0, c, k)

    def distribution(self, x: torch.Tensor) -> dist.Distribution:
        return mixture_from_head(self.encoder(x), self.components, self.latent_dim, self.min_scale)
