r"""The self-consistent ELBO of the autoencoding VAE, registered as ``self_consistent``.

Cemgil, Ghaisas, Dvijotham, Gowal & Kohli ("The Autoencoding Variational Autoencoder",
NeurIPS 2020) show that a nominally trained VAE does not consistently encode the typical samples
its own decoder generates, and add to the ELBO a term that re-encodes the decoder's output:

.. math::

    \mathcal L_{SC}(x) = \mathcal L(x) + \mathbb E_{z \sim q_\phi(z \mid x)}\Big[
        \mathbb E_{z' \sim q_\phi(z \mid x),\ \tilde z \sim q_\phi(z \mid \tilde x)}
            \log \mathcal N\big(\tilde z;\ \rho z',\ (1 - \rho^2) I\big)
        + \mathbb H\big[q_\phi(\cdot \mid \tilde x)\big]\Big],
    \qquad \tilde x = \operatorname{sg}\big[\mu_\theta(z)\big],

where :math:`\mu_\theta` is the decoder's mean (``model.mean``: the probabilities of a Bernoulli
likelihood), :math:`\operatorname{sg}` stops its gradient, and
:math:`\mathcal N(\tilde z; \rho z', (1 - \rho^2) I)` is the stationary AR(1) kernel of
:math:`\mathcal N(0, I)` (it leaves the prior invariant; ``rho`` = :math:`\rho` sets how tightly
the re-encoding must agree with the encoding). The coupling pairs :math:`\tilde z` with a draw
:math:`z'` of :math:`q(z \mid x)` taken independently of the :math:`z` that made
:math:`\tilde x`, which gives the closed form of the authors' released code for Gaussian
encoders, with :math:`(\mu, \sigma^2)` of :math:`q(z \mid x)` and
:math:`(\tilde\mu, \tilde\sigma^2)` of :math:`q(z \mid \tilde x)`:

.. math::

    \mathbb E \log \mathcal N(\tilde z; \rho z', (1 - \rho^2) I)
        = -\frac{\sum_j \tilde\sigma_j^2 + \rho^2 \sigma_j^2 + (\tilde\mu_j - \rho \mu_j)^2}{2(1 - \rho^2)}
          - \frac K2 \log\big(2\pi(1 - \rho^2)\big)

(:func:`coupling`; it holds for the diagonal of a full covariance too). The entropy of a
Gaussian is also closed-form. For other families (flows, mixtures) both are estimated with
reparameterised draws: :math:`\log \mathcal N(\tilde z; \rho z', (1 - \rho^2) I)` and
:math:`-\log q(\tilde z \mid \tilde x)` (the exact entropy where the distribution has one). The
:math:`z` that makes :math:`\tilde x` is drawn as :math:`\mu + \sigma \varepsilon` by the guide's
own ``rsample`` (the released code scales :math:`\varepsilon` by the variance; we do not).

**Pairing.** The closed form treats :math:`z'` and :math:`\tilde z` as independent, so the
kernel's centre :math:`\rho z'` does not know which draw :math:`z` made :math:`\tilde x`: it
asks :math:`\tilde\mu \approx \rho\mu` (the re-encoding near the shrunk encoding mean), not
:math:`\tilde\mu \approx \rho z`. With ``pairing="paired"`` the kernel is centred on that
:math:`z` itself, :math:`\mathbb E_{\tilde z} \log \mathcal N(\tilde z; \rho z, (1 - \rho^2)
I) = -\sum_j (\tilde\sigma_j^2 + (\tilde\mu_j - \rho z_j)^2) / (2(1 - \rho^2)) - \frac K2
\log(2\pi(1 - \rho^2))` (:func:`coupling_given`), the coupling as the issue writes it, with
:math:`z` one draw per point and step. ``pairing="independent"`` (the default) is the authors'
closed form.

The ELBO part is :class:`~pyrofail.objectives.elbo.ELBO` (stratified for mixture guides); the
term adds one draw of :math:`z` per point and step and two more passes of the encoder. The term
needs a continuous latent and a model with ``mean(z)``.
"""

from __future__ import annotations

import math

import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import prune_subsample_sites

from pyrofail import bounds
from pyrofail.bounds import Estimate
from pyrofail.errors import UsageError
from pyrofail.objectives.elbo import ELBO
from pyrofail.objectives.spread import enumerate_latent, latent_site
from pyrofail.zoo import register

__all__ = ["SelfConsistentELBO", "consistency_term", "coupling", "coupling_given", "self_consistent"]

LOG_2PI = math.log(2 * math.pi)
PAIRINGS = ("independent", "paired")
TERM_BUDGET = 2**22  # decoded numbers held at once by term_per_point


def check_rho(value) -> float:
    """``value`` as a float in :math:`[0, 1)`, else :class:`UsageError`."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"rho={value!r} is not a number; expected 0 <= rho < 1") from None
    if not 0.0 <= out < 1.0:
        raise UsageError(f"rho={value!r} is not allowed; expected 0 <= rho < 1")
    return out


def coupling(mu, var, mu_t, var_t, rho: float) -> torch.Tensor:
    r""":math:`\mathbb E \log \mathcal N(\tilde z; \rho z', (1 - \rho^2) I)` for independent
    :math:`z'` with mean ``mu`` and variances ``var``, and :math:`\tilde z` with ``mu_t``,
    ``var_t`` (all ``(..., K)``): the closed form of the module docstring, ``(...)``.

    Example:
        >>> z = torch.zeros(1, 2)
        >>> round(float(coupling(z, z, z, z, 0.0)), 4)  # log N(0; 0, I_2)
        -1.8379
    """
    k = mu.shape[-1]
    c = 1.0 - rho * rho
    sq = (var_t + rho * rho * var + (mu_t - rho * mu) ** 2).sum(-1)
    return -sq / (2 * c) - 0.5 * k * math.log(2 * math.pi * c)


def coupling_given(z, mu_t, var_t, rho: float) -> torch.Tensor:
    r""":math:`\mathbb E_{\tilde z} \log \mathcal N(\tilde z; \rho z, (1 - \rho^2) I)` for a
    given ``z`` and :math:`\tilde z` with mean ``mu_t`` and variances ``var_t``: the coupling
    with ``pairing="paired"``, ``(...)``.

    Example:
        >>> z = torch.zeros(1, 2)
        >>> round(float(coupling_given(z, z, z, 0.0)), 4)  # log N(0; 0, I_2)
        -1.8379
    """
    k = z.shape[-1]
    c = 1.0 - rho * rho
    sq = (var_t + (mu_t - rho * z) ** 2).sum(-1)
    return -sq / (2 * c) - 0.5 * k * math.log(2 * math.pi * c)


def check_pairing(value) -> str:
    """``value`` if it is ``"independent"`` or ``"paired"``, else :class:`UsageError`."""
    if value not in PAIRINGS:
        raise UsageError(f"pairing={value!r} is not allowed; choose one of: {', '.join(PAIRINGS)}")
    return value


def _is_gaussian(q) -> bool:
    while isinstance(q, torch.distributions.Independent):
        q = q.base_dist
    return isinstance(q, (torch.distributions.Normal, torch.distributions.MultivariateNormal))


def _check_continuous(q) -> None:
    if enumerate_latent(q) is not None or not q.has_rsample:
        raise UsageError(
            f"the self-consistency term needs a reparameterisable continuous latent; "
            f"{type(q).__name__} is not one"
        )


def _entropy(q, z_t: torch.Tensor) -> torch.Tensor:
    try:
        return q.entropy()
    except NotImplementedError:
        return -q.log_prob(z_t)


def consistency_term(
    q, q_t, rho: float, z_t: torch.Tensor | None = None, z: torch.Tensor | None = None
) -> torch.Tensor:
    r"""The term added to the ELBO, per element, given :math:`q(z \mid x)` and :math:`q(z \mid
    \tilde x)`: the closed forms for Gaussian ``q`` and ``q_t``; otherwise one draw of
    :math:`z' \sim q` and the draw ``z_t`` of ``q_t`` (drawn here when ``None``), both
    reparameterised. With ``z`` (``pairing="paired"``) the kernel is centred on that draw, the
    one that made :math:`\tilde x`, instead of an independent :math:`z'` (closed form in
    :math:`\tilde z` for a Gaussian ``q_t``, :func:`coupling_given`).

    Example:
        >>> import pyro.distributions as dist
        >>> q = dist.Normal(torch.zeros(3, 1), 1.0).to_event(1)
        >>> float(consistency_term(q, q, 0.0)[0]) == float(coupling(*[torch.zeros(1), torch.ones(1)] * 2, 0.0)
        ...     + q.entropy()[0])
        True
    """
    if z is not None and _is_gaussian(q_t):
        return coupling_given(z, q_t.mean, q_t.variance, rho) + q_t.entropy()
    if z is None and _is_gaussian(q) and _is_gaussian(q_t):
        return coupling(q.mean, q.variance, q_t.mean, q_t.variance, rho) + q_t.entropy()
    z_t = q_t.rsample() if z_t is None else z_t
    if z is None:
        # q_t may carry leading sample dimensions left of q's batch: draw z' for each of them
        extra = z_t.dim() - len(q.batch_shape) - len(q.event_shape)
        z = q.rsample(z_t.shape[:extra])
    c = 1.0 - rho * rho
    log_kernel = -0.5 * ((z_t - rho * z) ** 2).sum(-1) / c - 0.5 * z.shape[-1] * math.log(2 * math.pi * c)
    return log_kernel + _entropy(q_t, z_t)


def _model_object(model):
    target = poutine.unwrap(model)
    target = getattr(target, "__self__", target)
    if not hasattr(target, "mean"):
        raise UsageError("the self_consistent objective needs a model object with mean(z) (its decoder)")
    return target


class SelfConsistentELBO(ELBO):
    r"""The ELBO plus the self-consistency term (module docstring), as a Pyro ``ELBO``.

    :param rho: :math:`\rho \in [0, 1)` of the coupling (default 0.8).
    :param num_particles: samples per data point and step for the ELBO part.
    :param eval_samples: samples per point for :meth:`per_point` (validation and test).
    """

    def __init__(
        self, rho: float = 0.8, num_particles: int = 1, eval_samples: int = 100, pairing: str = "independent"
    ):
        self.rho = check_rho(rho)
        self.pairing = check_pairing(pairing)
        super().__init__(num_particles=num_particles, eval_samples=eval_samples)

    def _term(self, model, guide, args) -> torch.Tensor:
        """The summed term over the batch, from traces of the guide (so masks apply)."""
        x = args[0]
        decoder = _model_object(model)
        first = latent_site(prune_subsample_sites(poutine.trace(guide).get_trace(x)))
        _check_continuous(first["fn"])
        with torch.no_grad():
            x_t = decoder.mean(first["value"])
        second = latent_site(prune_subsample_sites(poutine.trace(guide).get_trace(x_t)))
        z = first["value"] if self.pairing == "paired" else None
        term = consistency_term(first["fn"], second["fn"], self.rho, second["value"], z=z)
        return scale_and_mask(term, second["scale"], second["mask"]).sum()

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return super().loss(model, guide, *args, **kwargs) - float(self._term(model, guide, args))

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        return super().differentiable_loss(model, guide, *args, **kwargs) - self._term(model, guide, args)

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        loss = super().loss_and_grads(model, guide, *args, **kwargs)
        term = self._term(model, guide, args)
        if term.requires_grad:
            (-term).backward()
        return loss - float(term.detach())

    @torch.no_grad()
    def term_per_point(self, model, guide, x, num_samples: int | None = None, *, seed=None) -> Estimate:
        r"""The self-consistency term alone per point, ``(N,)`` or ``(R, N)``, averaged over
        ``num_samples`` draws of :math:`z` (default ``eval_samples``), with its Monte Carlo error.
        With ``seed``, block by block of points (:func:`pyrofail.bounds.blockwise`: memory one
        block's, draws independent of ``N``); without, all points at once from the global
        generator (training's validation)."""
        s = num_samples or self.eval_samples
        if seed is None:
            return Estimate(*self._term_block(model, guide, x, s))
        return Estimate(*bounds.blockwise(lambda xb: self._term_block(model, guide, xb, s), x, seed))

    def _term_block(self, model, guide, x, s: int):
        q = guide.distribution(x)
        _check_continuous(q)
        values = []
        # draws in chunks of about `budget` decoded points: (S, [R,] N, D) at once
        chunk = max(1, TERM_BUDGET // max(1, x.shape[-2] * model.data_dim * (model.restarts or 1)))
        for start in range(0, s, chunk):
            z = q.rsample((min(chunk, s - start),))
            pair = z if self.pairing == "paired" else None
            values.append(consistency_term(q, guide.distribution(model.mean(z)), self.rho, z=pair))
        v = torch.cat(values)
        err = v.std(0) / math.sqrt(s) if s > 1 else torch.zeros_like(v[0])
        return v.mean(0), err

    @torch.no_grad()
    def per_point(
        self, model, guide, x, num_samples: int | None = None, *, seed=None, budget=None
    ) -> Estimate:
        """Per-point ELBO plus the term (``(N,)`` or ``(R, N)``) with the Monte Carlo error of the
        sum (independent draws for the two parts); ``seed`` and ``budget`` as for
        :func:`pyrofail.bounds.elbo` (the two parts draw from ``block_seed(seed, 0)`` and
        ``block_seed(seed, 1)``)."""
        s = num_samples or self.eval_samples
        if seed is None:
            elbo = bounds.elbo(model, guide, x, s, budget=budget)
            term = self.term_per_point(model, guide, x, s)
        else:
            elbo = bounds.elbo(model, guide, x, s, budget=budget, seed=bounds.block_seed(seed, 0))
            term = self.term_per_point(model, guide, x, s, seed=bounds.block_seed(seed, 1))
        return Estimate(elbo.value + term.value, (elbo.stderr**2 + term.stderr**2).sqrt())

    def training_bound(self, model, guide, x, replicates: int = 4, *, seed=None, budget=None) -> Estimate:
        """The trained objective per point: :meth:`per_point` (with the plain ELBO part)."""
        return self.per_point(model, guide, x, seed=seed, budget=budget)

    def trained_on(self, guide) -> str:
        paired = ", paired" if self.pairing == "paired" else ""
        return f"{super().trained_on(guide)} + self-consistency term (rho = {self.rho:g}{paired})"

    def options(self) -> dict:
        return {"rho": self.rho, "pairing": self.pairing, **super().options()}


@register(
    "objective",
    "self_consistent",
    summary="ELBO + re-encoding of the decoder's mean coupled by an AR(1) kernel (autoencoding VAE)",
    keywords=("self-consistency", "robust-representation", "avae"),
)
def self_consistent(
    rho: float = 0.8, num_particles: int = 1, eval_samples: int = 100, pairing: str = "independent"
) -> SelfConsistentELBO:
    """The self-consistent ELBO objective (:class:`SelfConsistentELBO`), options ``rho`` and
    ``pairing``."""
    return SelfConsistentELBO(
        rho=rho, num_particles=num_particles, eval_samples=eval_samples, pairing=pairing
    )
