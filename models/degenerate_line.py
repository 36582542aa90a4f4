r"""Degenerate-line zoo entries: data on a line in the plane, which has no density there.

The process of Zhang, Hayes, Bird, Habib & Barber ("Spread divergence", ICML 2020) and of the
blog "A Failure Case of VAE" that illustrates it:

.. math::

    z \sim \operatorname{Bernoulli}(1/2), \qquad a \mid z \sim \mathcal N(2z - 1,\ 0.1^2),
    \qquad x = (a,\ 0).

The second coordinate is exactly zero: :math:`p(x)` has no density with respect to Lebesgue
measure on :math:`\mathbb R^2`. A decoder with a learned variance per feature (and per point,
:class:`~pyrofail.models.heteroscedastic_decoder.HeteroscedasticDecoder`) can drive the variance of the empty
axis to zero, and the likelihood of every data point to infinity: maximum likelihood, and the
ELBO with it, has no optimum. Adding the same Gaussian noise to the data and to the model (the
``spread`` objective, :mod:`pyrofail.objectives.spread`) gives a bounded objective again.

**How a Bernoulli latent fits the zoo.** The model contract is a latent-Gaussian :math:`z`; the
discrete process keeps the rest of it:

* :class:`DegenerateLine` has ``sample(n, seed)`` (``z`` in :math:`\{0, 1\}`, shape ``(n, 1)``),
  ``log_joint(z, x)`` for :math:`z \in \{0, 1\}` and :meth:`DegenerateLine.log_marginal`, the sum
  over :math:`z`, and a Pyro ``model`` whose site ``"z"`` is a :class:`Bits` distribution, which
  Pyro can enumerate (``TraceEnum_ELBO`` sums it out exactly).
* Its decoder ``mean(z) = (2[z > 0] - 1, 0)`` gives the blog's means on :math:`\{0, 1\}` and is
  also the same process written with a Gaussian latent, since :math:`[z > 0] \sim
  \operatorname{Bernoulli}(1/2)` for :math:`z \sim \mathcal N(0, 1)`: a Gaussian-latent learned
  model started "at the ground truth" (``pf.fit(..., truth=...)``) regresses onto this step.
* The likelihood is :class:`DegenerateNormal`: a Normal on the line times a point mass at 0
  across it, a density with respect to Lebesgue measure on the first axis times counting
  measure on the second. Its ``noise_scale`` is therefore ``(0.1, 0.0)``. The quadrature of
  ``pyrofail.analysis.reference.grid`` whitens by :math:`\sigma_d` and does not apply; the exact
  posterior is :meth:`DegenerateLine.posterior_probability` (two states) and, for the
  continuous variant, a one-dimensional integral of ``log_joint`` with the second axis left out.

Which models and guides learn it: the blog's VAE is the Bernoulli-prior
:class:`~pyrofail.models.heteroscedastic_decoder.HeteroscedasticDecoder` model (learned mean and
log-variance per feature for each :math:`z`) with the Bernoulli guide
:class:`~pyrofail.guides.bernoulli_latent.BernoulliLatentGuide`, whose two states the ``spread``
objective enumerates exactly; a Gaussian-latent model (``prior="gaussian"``) takes every
registered guide family.

:class:`DegenerateLineContinuous` is the continuous-latent variant: :math:`z \sim \mathcal N(0,
1)`, :math:`x = (g(z) + 0.1\,\varepsilon,\ 0)` with :math:`g(z) = 2\Phi(z) - 1` (the points lie on
the segment :math:`[-1, 1]` of the first axis, uniformly before the noise).
"""

from __future__ import annotations

import itertools
import math

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn
from torch.distributions import constraints

from pyrofail.data import Dataset
from pyrofail.errors import UsageError, check_positive_float, check_positive_int
from pyrofail.nn import data_plates
from pyrofail.zoo import register

__all__ = ["Bits", "DegenerateLine", "DegenerateLineContinuous", "DegenerateNormal"]

LOG_2PI = math.log(2 * math.pi)
MAX_BITS = 16  # 2^16 states is the most a Bits distribution enumerates


class Bits(dist.TorchDistribution):
    r"""Independent Bernoulli bits as one vector: event shape ``(K,)``, support :math:`\{0, 1\}^K`,
    :math:`\log p(b) = \sum_k b_k \ell_k - \operatorname{softplus}(\ell_k)` with logits
    :math:`\ell`. Unlike ``Bernoulli(...).to_event(1)`` it can be enumerated (all :math:`2^K`
    vectors), so Pyro's ``TraceEnum_ELBO`` sums a site of it out.

    Example:
        >>> import torch
        >>> b = Bits(torch.zeros(1))
        >>> b.enumerate_support().squeeze(-1).tolist(), round(float(b.log_prob(torch.ones(1))), 4)
        ([0.0, 1.0], -0.6931)
    """

    arg_constraints = {"logits": constraints.real}
    support = constraints.independent(constraints.boolean, 1)
    has_enumerate_support = True

    def __init__(self, logits: torch.Tensor, validate_args=None):
        self.logits = torch.as_tensor(logits, dtype=torch.get_default_dtype())
        if self.logits.dim() < 1:
            raise UsageError("Bits needs logits of shape (..., K)")
        if self.logits.shape[-1] > MAX_BITS:
            raise UsageError(f"Bits has {self.logits.shape[-1]} bits; at most {MAX_BITS} are enumerable")
        super().__init__(self.logits.shape[:-1], self.logits.shape[-1:], validate_args=validate_args)

    @property
    def probs(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    @property
    def mean(self) -> torch.Tensor:
        return self.probs

    @property
    def variance(self) -> torch.Tensor:
        return self.probs * (1 - self.probs)

    def expand(self, batch_shape, _instance=None):
        shape = torch.Size(batch_shape) + self.event_shape
        return Bits(self.logits.expand(shape), validate_args=False)

    def sample(self, sample_shape=()):
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            return torch.bernoulli(self.probs.expand(shape))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        logits, value = torch.broadcast_tensors(self.logits, value)
        return (value * logits - nn.functional.softplus(logits)).sum(-1)

    def entropy(self) -> torch.Tensor:
        p = self.probs
        return (nn.functional.softplus(self.logits) - p * self.logits).sum(-1)

    def enumerate_support(self, expand: bool = True) -> torch.Tensor:
        k = self.event_shape[0]
        values = torch.tensor(list(itertools.product((0.0, 1.0), repeat=k)), dtype=self.logits.dtype)
        values = values.to(self.logits.device).reshape((-1,) + (1,) * len(self.batch_shape) + (k,))
        if expand:
            values = values.expand((-1,) + self.batch_shape + (k,))
        return values


class DegenerateNormal(dist.TorchDistribution):
    r"""Independent Normals over the last dimension in which a zero scale means a point mass.

    .. math::

        \log p(x) = \sum_{d:\, \sigma_d > 0} \log \mathcal N(x_d;\ \mu_d, \sigma_d^2)
            + \sum_{d:\, \sigma_d = 0} \log [x_d = \mu_d],

    a density with respect to Lebesgue measure on the features with :math:`\sigma_d > 0` times
    counting measure on the others (:math:`-\infty` off the point mass). :meth:`spread` is its
    convolution with :math:`\mathcal N(0, s^2 I)`, an ordinary Normal with variances
    :math:`\sigma_d^2 + s^2`.

    Example:
        >>> import torch
        >>> p = DegenerateNormal(torch.zeros(2), torch.tensor([1.0, 0.0]))
        >>> round(float(p.log_prob(torch.zeros(2))), 4), float(p.log_prob(torch.tensor([0.0, 1e-3])))
        (-0.9189, -inf)
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.greater_than_eq(0.0)}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, validate_args=None):
        self.loc, self.scale = torch.broadcast_tensors(torch.as_tensor(loc), torch.as_tensor(scale))
        super().__init__(self.loc.shape[:-1], self.loc.shape[-1:], validate_args=validate_args)

    @property
    def mean(self) -> torch.Tensor:
        return self.loc

    @property
    def variance(self) -> torch.Tensor:
        return self.scale**2

    def expand(self, batch_shape, _instance=None):
        shape = torch.Size(batch_shape) + self.event_shape
        return DegenerateNormal(self.loc.expand(shape), self.scale.expand(shape), validate_args=False)

    def rsample(self, sample_shape=()):
        shape = self._extended_shape(sample_shape)
        eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + self.scale * eps

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        point = self.scale == 0
        scale = torch.where(point, torch.ones_like(self.scale), self.scale)
        z = (value - self.loc) / scale
        normal = -0.5 * z * z - scale.log() - 0.5 * LOG_2PI
        atom = torch.where(value == self.loc, torch.zeros_like(z), torch.full_like(z, -math.inf))
        return torch.where(point, atom, normal).sum(-1)

    def spread(self, s: float) -> dist.Distribution:
        r""":math:`p * \mathcal N(0, s^2 I) = \mathcal N(\mu, \operatorname{diag}(\sigma^2 + s^2))`."""
        return dist.Normal(self.loc, torch.hypot(self.scale, self.scale.new_tensor(s))).to_event(1)


class _Line(PyroModule):
    """What both variants share: data on the first axis, exactly 0 on the second."""

    latent_dim = 1
    data_dim = 2
    restarts = None
    # no density on R^2: the reference stages (grid, NUTS, KL*) do not apply to this truth
    has_density = False

    def __init__(self, line_noise: float):
        super().__init__()
        self.register_buffer("line_noise", torch.tensor(check_positive_float("line_noise", line_noise)))

    @property
    def noise_scale(self) -> torch.Tensor:
        """Per feature: ``(line_noise, 0)``; the zero is the point mass across the line."""
        return torch.stack((self.line_noise, torch.zeros_like(self.line_noise)))

    def position(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder :math:`(g(z), 0)` for ``z`` ``(..., 1)``."""
        a = self.position(z)
        return torch.stack((a, torch.zeros_like(a)), -1)

    def likelihood(self, z: torch.Tensor) -> DegenerateNormal:
        """:math:`p(x \\mid z)`: Normal on the line, a point mass at 0 across it."""
        return DegenerateNormal(self.mean(z), self.noise_scale.to(z.dtype))

    def log_likelihood(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """:math:`\\log p(x \\mid z)` (``-inf`` off the line), broadcasting ``z`` against ``x``."""
        return self.likelihood(z).log_prob(x)

    def prior(self) -> dist.Distribution:
        raise NotImplementedError

    def model(self, x: torch.Tensor | None = None, n: int | None = None):
        """The Pyro model: ``z ~ p(z)`` and ``x ~ p(x | z)`` in the ``data`` plate."""
        return self(x, n)

    def forward(self, x: torch.Tensor | None = None, n: int | None = None):
        if x is None and n is None:
            raise UsageError("model() needs observed x or a number of points n")
        n = x.shape[-2] if x is not None else n
        prior = self.prior()
        # a discrete z is enumerated by TraceEnum_ELBO when no guide samples it
        infer = {"enumerate": "parallel"} if prior.has_enumerate_support else {}
        with data_plates(n):
            z = pyro.sample("z", prior, infer=infer)
            pyro.sample("x", self.likelihood(z), obs=x)
        return z

    def log_joint(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """:math:`\\log p(z) + \\log p(x \\mid z)`, broadcasting like the zoo's other processes."""
        return self.prior().log_prob(z) + self.log_likelihood(z, x)

    def _draw_z(self, n: int, g: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0) -> Dataset:
        """``n`` points ``(x, z)`` drawn with a private generator (same seed, same data)."""
        n = check_positive_int("n", n)
        g = torch.Generator().manual_seed(int(seed))
        z = self._draw_z(n, g)
        eps = torch.randn(n, generator=g, dtype=z.dtype)
        a = self.position(z) + self.line_noise.to(z.dtype) * eps
        return Dataset(x=torch.stack((a, torch.zeros_like(a)), -1), z=z)


@register(
    "model",
    "degenerate_line",
    summary="two clusters on a line in 2-D, z ~ Bernoulli(1/2): zero variance across the line",
    failure="no density: a decoder with learned variance drives the variance of the empty axis to 0 "
    "and the likelihood to infinity; the spread objective fixes it (Zhang et al. 2020)",
    keywords=("degenerate", "manifold", "learned-variance", "discrete-latent", "spread"),
    latent_dim=1,
    data_dim=2,
    noise_scale=(0.1, 0.0),
    latent="bernoulli",
)
class DegenerateLine(_Line):
    r"""The blog's process: :math:`z \sim \operatorname{Bernoulli}(1/2)`,
    :math:`a \sim \mathcal N(2z - 1, 0.1^2)`, :math:`x = (a, 0)` (module docstring);
    :math:`K = 1`, :math:`D = 2`.

    ``mean(z)`` is :math:`(2[z > 0] - 1, 0)`: :math:`(2z - 1, 0)` on :math:`\{0, 1\}`, and the
    same process for a Gaussian :math:`z`. ``log_joint(z, x)`` is
    :math:`\log\tfrac12 + \log p(x \mid z)` for :math:`z \in \{0, 1\}`.

    :param line_noise: the standard deviation along the line (0.1).

    Example:
        >>> from pyrofail import zoo
        >>> truth = zoo.model("degenerate_line")
        >>> d = truth.sample(4, seed=0)
        >>> d.x[:, 1].tolist(), sorted(set(d.z.flatten().tolist())) <= [0.0, 1.0]
        ([0.0, 0.0, 0.0, 0.0], True)
    """

    def __init__(self, line_noise: float = 0.1):
        super().__init__(line_noise)

    def position(self, z: torch.Tensor) -> torch.Tensor:
        return 2.0 * (z[..., 0] > 0).to(z.dtype) - 1.0

    def prior(self) -> Bits:
        """:math:`p(z) = \\operatorname{Bernoulli}(1/2)` as an enumerable :class:`Bits`."""
        return Bits(self.line_noise.new_zeros(1))

    def _draw_z(self, n: int, g: torch.Generator) -> torch.Tensor:
        return torch.bernoulli(torch.full((n, 1), 0.5, dtype=self.line_noise.dtype), generator=g)

    def log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\log p(x) = \log \sum_{z \in \{0,1\}} p(z)\, p(x \mid z)` per row (with respect to
        Lebesgue measure on the line; ``-inf`` off it)."""
        z = self.prior().enumerate_support(expand=False).to(x.dtype)  # (2, 1)
        return torch.logsumexp(self.log_joint(z.unsqueeze(-2), x), 0)

    def posterior_probability(self, x: torch.Tensor) -> torch.Tensor:
        r"""The exact :math:`p(z = 1 \mid x)` per row: a logistic function of :math:`x_1`,
        :math:`\operatorname{sigmoid}(2 x_1 / 0.1^2)` for the default noise."""
        z = self.prior().enumerate_support(expand=False).to(x.dtype)
        return torch.softmax(self.log_joint(z.unsqueeze(-2), x), 0)[1]


@register(
    "model",
    "degenerate_line_continuous",
    summary="a segment on a line in 2-D, z ~ N(0, 1), x = (2 Phi(z) - 1 + noise, 0): zero variance across it",
    failure="no density: a decoder with learned variance drives the variance of the empty axis to 0 "
    "and the likelihood to infinity; the spread objective fixes it (Zhang et al. 2020)",
    keywords=("degenerate", "manifold", "learned-variance", "spread"),
    latent_dim=1,
    data_dim=2,
    noise_scale=(0.1, 0.0),
)
class DegenerateLineContinuous(_Line):
    r"""The continuous-latent variant: :math:`z \sim \mathcal N(0, 1)`,
    :math:`x = (g(z) + 0.1\,\varepsilon,\ 0)` with :math:`g(z) = 2\Phi(z) - 1`, so the points before
    the noise are uniform on :math:`[-1, 1] \times \{0\}`; :math:`K = 1`, :math:`D = 2`.

    :param line_noise: the standard deviation along the line (0.1).

    Example:
        >>> truth = DegenerateLineContinuous()
        >>> d = truth.sample(3, seed=0)
        >>> lj = truth.log_joint(d.z, d.x)
        >>> bool(torch.isfinite(lj).all()), float(truth.log_joint(d.z, d.x + 1e-3).max())  # off the line
        (True, -inf)
    """

    def __init__(self, line_noise: float = 0.1):
        super().__init__(line_noise)

    def position(self, z: torch.Tensor) -> torch.Tensor:
        return 2.0 * torch.special.ndtr(z[..., 0]) - 1.0

    def prior(self) -> dist.Distribution:
        """:math:`p(z) = \\mathcal N(0, 1)` with event shape ``(1,)``."""
        return dist.Normal(self.line_noise.new_zeros(1), 1.0).to_event(1)

    def _draw_z(self, n: int, g: torch.Generator) -> torch.Tensor:
        return torch.randn(n, 1, generator=g, dtype=self.line_noise.dtype)
