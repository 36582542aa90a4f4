r"""The spread ELBO: the same Gaussian noise added to the data and to the model, registered as ``spread``.

Zhang, Hayes, Bird, Habib & Barber ("Spread divergence", ICML 2020): when the data lie on a
lower-dimensional set (a line in the plane, a pixel that is always blank), :math:`p(x)` has no
density, maximum likelihood is ill-posed, and a decoder with a learned variance drives the
variance of the empty direction to zero and the likelihood to infinity. Convolving *both*
distributions with the same noise :math:`\mathcal N(0, s^2 I)`,

.. math::

    \tilde p(y) = \int p(x)\, \mathcal N(y; x, s^2 I)\, dx, \qquad
    \tilde p_\theta(y \mid z) = \mathcal N\big(\mu_\theta(z),\ \Sigma_\theta(z) + s^2 I\big), \quad
    \Sigma_\theta(z) = \operatorname{diag}\sigma^2_\theta(z),

gives distributions with densities everywhere, and for Gaussian noise
:math:`\mathrm{KL}(\tilde p \,\|\, \tilde p_\theta) = 0` exactly when :math:`p = p_\theta` (a
valid divergence). Training on it is an ordinary ELBO on spread data:

.. math::

    \tilde{\mathcal L}(y) = \mathbb E_{q_\phi(z \mid y)}\big[\log p(z) + \log \tilde p_\theta(y \mid z)
        - \log q_\phi(z \mid y)\big], \qquad y = x + s\,\varepsilon,

with a fresh :math:`\varepsilon \sim \mathcal N(0, I)` at every step. The bound stays finite as
:math:`\sigma_\theta \to 0`: the spread variance :math:`\sigma_\theta^2 + s^2 \ge s^2`.

The model itself is not changed: its samples (``model.sample``) come from the un-spread decoder
:math:`p_\theta(x \mid z)`, and on the degenerate line they should lie on the line.

**Estimator.** A guide with a discrete latent (``Bernoulli(...).to_event(1)``, or any distribution
that enumerates its support) is summed over exactly, which is the blog VAE's enumerated
:math:`q(z \mid x)`; a continuous one is reparameterised. The model's observed site must be a
Gaussian (``Normal``, possibly inside ``Independent``) or know its own convolution (a
``spread(s)`` method, like :class:`~pyrofail.models.degenerate_line.DegenerateNormal`). With
``spread=0`` the objective is the plain ELBO computed the same way, the like-for-like baseline.
Every term comes from Pyro traces of the model and the guide, so the masks of
:func:`pyrofail.fit`'s frozen restarts and a fixed model's blocked parameters apply.
"""

from __future__ import annotations

import itertools
import math

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO as PyroELBO
from pyro.poutine.util import prune_subsample_sites

from pyrofail import bounds
from pyrofail.bounds import Estimate
from pyrofail.errors import UsageError, check_positive_int
from pyrofail.objectives.elbo import MAX_PLATE_NESTING
from pyrofail.zoo import register

__all__ = ["SpreadELBO", "enumerate_latent", "latent_site", "spread", "spread_bound", "spread_likelihood"]

MAX_STATES = 2**16
# points per block of a seeded per_point: one spread_bound call per draw and block, so blocks
# larger than the usual 64 points keep the Python calls few; memory is a block's
EVAL_POINTS = 1024


def check_spread(value) -> float:
    """``value`` as a finite float :math:`s \\ge 0`, else :class:`UsageError`."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"spread={value!r} is not a number; expected a finite number >= 0") from None
    if not (math.isfinite(out) and out >= 0):
        raise UsageError(f"spread={value!r} is not allowed; expected a finite number >= 0")
    return out


def spread_likelihood(p: dist.Distribution, s: float) -> dist.Distribution:
    r"""The convolution of the likelihood ``p`` with :math:`\mathcal N(0, s^2 I)`:
    :math:`\mathcal N(\mu, \sigma^2) * \mathcal N(0, s^2) = \mathcal N(\mu, \sigma^2 + s^2)`, for a
    ``Normal`` (possibly inside ``Independent``) or a distribution with a ``spread(s)`` method;
    ``p`` itself for :math:`s = 0`.

    Example:
        >>> import pyro.distributions as dist
        >>> p = spread_likelihood(dist.Normal(torch.zeros(2), 0.3).to_event(1), 0.4)
        >>> p.base_dist.scale.tolist(), p.event_shape  # sqrt(0.3^2 + 0.4^2)
        ([0.5, 0.5], torch.Size([2]))
    """
    if s == 0:
        return p
    if hasattr(p, "spread"):
        return p.spread(s)
    base, ndims = p, 0
    while isinstance(base, torch.distributions.Independent):
        ndims += base.reinterpreted_batch_ndims
        base = base.base_dist
    if isinstance(base, torch.distributions.Normal):
        scale = torch.hypot(base.scale, base.scale.new_tensor(s)).expand(base.batch_shape)
        out = dist.Normal(base.loc, scale)
        return out.to_event(ndims) if ndims else out
    raise UsageError(
        f"the spread objective needs a Gaussian likelihood (a Normal 'x' site); got {type(base).__name__} "
        "(a Bernoulli likelihood has no spread version: use likelihood='gaussian')"
    )


def enumerate_latent(q: dist.Distribution) -> torch.Tensor | None:
    r"""Every value of a discrete ``q`` with event shape ``(K,)``, as ``(V, *batch, K)``: its
    own ``enumerate_support`` when it has one, or the :math:`V = L^K` vectors of an
    ``Independent`` over a base with :math:`L` states (``Bernoulli(...).to_event(1)``: all of
    :math:`\{0, 1\}^K`); ``None`` for a continuous ``q``.

    Example:
        >>> import pyro.distributions as dist
        >>> enumerate_latent(dist.Bernoulli(torch.full((3, 2), 0.5)).to_event(1)).shape
        torch.Size([4, 3, 2])
    """
    if q.has_enumerate_support:
        return q.enumerate_support(expand=True)
    if not isinstance(q, torch.distributions.Independent) or q.reinterpreted_batch_ndims != 1:
        return None
    base = q.base_dist
    if not base.has_enumerate_support:
        return None
    levels = base.enumerate_support(expand=False).reshape(-1)
    k = q.event_shape[0]
    if len(levels) ** k > MAX_STATES:
        raise UsageError(f"a discrete latent with {len(levels)}^{k} states is too many to enumerate")
    values = torch.tensor(list(itertools.product(levels.tolist(), repeat=k)), dtype=levels.dtype)
    values = values.to(levels.device).reshape((-1,) + (1,) * len(q.batch_shape) + (k,))
    return values.expand((-1,) + q.batch_shape + (k,))


def latent_site(trace) -> dict:
    """The one latent sample site of a guide's trace (:class:`UsageError` if not exactly one)."""
    latent = [s for s in trace.nodes.values() if s["type"] == "sample" and not s["is_observed"]]
    if len(latent) != 1:
        raise UsageError(
            f"this objective needs a guide with one latent site; got {[s['name'] for s in latent]}"
        )
    return latent[0]


def spread_bound(model, guide, x: torch.Tensor, s: float) -> torch.Tensor:
    r"""One estimate of the spread ELBO per element (``(N,)`` or ``(R, N)``), differentiable:
    one draw of :math:`\varepsilon` (the global torch generator), then the expectation over
    :math:`q(z \mid y)` summed exactly (discrete) or with one reparameterised draw (continuous).

    ``model`` and ``guide`` are Pyro callables taking ``x`` (possibly wrapped in handlers).

    Example:
        >>> import pyro.distributions as dist
        >>> from pyrofail.guides import MeanFieldGuide
        >>> from pyrofail.models import LinearGaussian
        >>> truth, guide = LinearGaussian(), MeanFieldGuide(2, 3, hidden=(4,))
        >>> spread_bound(truth.model, guide, torch.zeros(5, 3), 0.1).shape
        torch.Size([5])
    """
    y = x + s * torch.randn_like(x) if s else x
    guide_trace = prune_subsample_sites(poutine.trace(guide).get_trace(y))
    site = latent_site(guide_trace)
    q = site["fn"]
    states = enumerate_latent(q)
    if states is None:
        if not q.has_rsample:
            raise UsageError(
                f"the spread objective needs a reparameterisable or discrete guide; "
                f"{type(q).__name__} is neither"
            )
        z = site["value"]
        conditioned = poutine.condition(model, data={site["name"]: z})
        model_trace = prune_subsample_sites(poutine.trace(conditioned).get_trace(y))
    else:
        z = states
        conditioned = poutine.condition(model, data={site["name"]: z})
        with pyro.plate("latent_states", z.shape[0], dim=-(len(q.batch_shape) + 1)):
            model_trace = prune_subsample_sites(poutine.trace(conditioned).get_trace(y))
    log_q = q.log_prob(z)
    log_w = -scale_and_mask(log_q, site["scale"], site["mask"])
    for node in model_trace.nodes.values():
        if node["type"] != "sample":
            continue
        if node["name"] == site["name"] and states is None and node["fn"].has_enumerate_support:
            raise UsageError(
                f"the model's {site['name']!r} is discrete but the guide's is continuous; "
                "use a discrete guide (e.g. BernoulliLatentGuide)"
            )
        # the latent site is observed here too (conditioned on z): only the data are spread
        observed = node["is_observed"] and node["name"] != site["name"]
        fn = spread_likelihood(node["fn"], s) if observed else node["fn"]
        log_w = log_w + scale_and_mask(fn.log_prob(node["value"]), node["scale"], node["mask"])
    if states is None:
        return log_w
    return (log_q.exp() * log_w).sum(0)


class SpreadELBO(PyroELBO):
    r"""The spread ELBO :math:`\tilde{\mathcal L}` (module docstring) as a Pyro ``ELBO``.

    :param spread: :math:`s \ge 0`, in the data's units (0: the plain ELBO, same estimator).
    :param num_particles: draws of :math:`(\varepsilon, z)` per point and step.
    :param eval_samples: draws per point for :meth:`per_point` (validation and test).
    """

    def __init__(self, spread: float = 0.1, num_particles: int = 1, eval_samples: int = 100):
        self.spread = check_spread(spread)
        self.eval_samples = check_positive_int("eval_samples", eval_samples)
        super().__init__(
            num_particles=check_positive_int("num_particles", num_particles),
            max_plate_nesting=MAX_PLATE_NESTING,
        )

    def _get_trace(self, model, guide, args, kwargs):
        # Pyro's abstract hook for its own estimators; this one builds its traces itself
        raise NotImplementedError("SpreadELBO computes its terms in spread_bound")

    def _total(self, model, guide, args) -> torch.Tensor:
        total = 0.0
        for _ in range(self.num_particles):
            total = total + spread_bound(model, guide, args[0], self.spread).sum()
        return total / self.num_particles

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return -float(self._total(model, guide, args))

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        return -self._total(model, guide, args)

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        loss = -self._total(model, guide, args)
        if loss.requires_grad:
            loss.backward()
        return float(loss.detach())

    @torch.no_grad()
    def per_point(self, model, guide, x, num_samples: int | None = None, *, seed=None) -> Estimate:
        """The spread ELBO per point (``(N,)`` or ``(R, N)``) averaged over ``num_samples`` draws
        of :math:`(\\varepsilon, z)` (default ``eval_samples``), with its Monte Carlo error. With
        ``seed``, block by block of :data:`EVAL_POINTS` points (:func:`pyrofail.bounds.blockwise`:
        memory one block's, draws independent of ``N``); without, all points at once from the
        global generator (training's validation)."""
        s = num_samples or self.eval_samples

        def block(xb):
            values = torch.stack([spread_bound(model.model, guide, xb, self.spread) for _ in range(s)])
            err = values.std(0) / math.sqrt(s) if s > 1 else torch.zeros_like(values[0])
            return values.mean(0), err

        if seed is None:
            return Estimate(*block(x))
        return Estimate(*bounds.blockwise(block, x, seed, size=EVAL_POINTS))

    def training_bound(self, model, guide, x, replicates: int = 4, *, seed=None) -> Estimate:
        """The estimator that trains the guide is :meth:`per_point` itself."""
        return self.per_point(model, guide, x, seed=seed)

    def trained_on(self, guide) -> str:
        """What the objective trains with, in words (for the report)."""
        return f"spread ELBO, s = {self.spread:g}, {self.num_particles} draw(s) of the noise per point"

    def options(self) -> dict:
        return {"spread": self.spread, "num_particles": self.num_particles, "eval_samples": self.eval_samples}


@register(
    "objective",
    "spread",
    summary="spread ELBO: the same Gaussian noise N(0, s^2) on data and model; bounded on degenerate data",
    keywords=("spread-divergence", "degenerate-data", "learned-variance"),
)
def spread(spread: float = 0.1, num_particles: int = 1, eval_samples: int = 100) -> SpreadELBO:
    """The spread ELBO objective (:class:`SpreadELBO`), option ``spread`` = :math:`s`."""
    return SpreadELBO(spread=spread, num_particles=num_particles, eval_samples=eval_samples)
