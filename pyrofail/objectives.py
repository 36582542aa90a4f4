r"""Training objectives as Pyro ``ELBO`` objects, registered by name.

Each objective is a Pyro ``ELBO`` subclass, so ``SVI(model, guide, optim, objective)`` trains
with it, and also knows its own per-point value (:meth:`per_point`), which :func:`pyrofail.fit`
uses to select restarts on validation data and the analysis reports on test data.

Particles are vectorised (``vectorize_particles=True``) with ``max_plate_nesting=2``: the
particle dimension sits left of the ``restarts`` (``-2``) and ``data`` (``-1``) plates.
"""

from __future__ import annotations

from pyro.infer import RenyiELBO, Trace_ELBO

from pyrofail import stratified
from pyrofail.analysis import bounds
from pyrofail.errors import check_positive_int
from pyrofail.zoo import register

MAX_PLATE_NESTING = 2


class ELBO(stratified.StratifiedMixin, Trace_ELBO):
    r"""The evidence lower bound, estimated with reparameterised samples.

    .. math::

        \mathcal L(x) = \mathbb E_{q_\phi(z \mid x)}\big[\log p_\theta(x, z) - \log q_\phi(z \mid x)\big]
                      = \log p_\theta(x) - \mathrm{KL}\big(q_\phi(z \mid x) \,\|\, p_\theta(z \mid x)\big).

    Averaged over the data, :math:`-\mathcal L` is the maximum-likelihood term
    :math:`\mathrm{KL}(p(x) \| p_\theta(x))` plus the posterior-matching term
    :math:`\mathbb E_{p(x)}\mathrm{KL}(q_\phi \| p_\theta(z \mid x))` (up to the data entropy;
    Zhao, Song & Ermon 2017): the trade-off behind the failure modes of Yacoby et al. (2020).

    With a mixture guide (``stratified = True``) the estimate is stratified,
    :func:`pyrofail.stratified.selbo`: ``num_particles`` samples from each component.

    :param num_particles: samples per data point and step.
    :param eval_samples: samples per point for :meth:`per_point` (validation and test).
    """

    bound = staticmethod(stratified.selbo)

    def __init__(self, num_particles: int = 1, eval_samples: int = 100):
        self.eval_samples = check_positive_int("eval_samples", eval_samples)
        super().__init__(
            num_particles=check_positive_int("num_particles", num_particles),
            vectorize_particles=True,
            max_plate_nesting=MAX_PLATE_NESTING,
        )

    def per_point(self, model, guide, x, num_samples: int | None = None):
        """Per-point ELBO (``(N,)`` or ``(R, N)``) as a :class:`~pyrofail.analysis.bounds.Estimate`,
        with ``num_samples`` Monte Carlo samples (default ``eval_samples``)."""
        return bounds.elbo(model, guide, x, num_samples or self.eval_samples)

    def options(self) -> dict:
        return {"num_particles": self.num_particles, "eval_samples": self.eval_samples}


class IWAE(stratified.StratifiedMixin, RenyiELBO):
    r"""The importance-weighted bound of Burda, Grosse & Salakhutdinov (2016), as Pyro's
    ``RenyiELBO`` with :math:`\alpha = 0` (Li & Turner 2016).

    .. math::

        \mathcal L_S(x) = \mathbb E_{z_{1:S} \sim q_\phi}
            \Big[\log \frac1S \sum_{s=1}^S \frac{p_\theta(x, z_s)}{q_\phi(z_s \mid x)}\Big],
        \qquad \mathcal L_1 \le \mathcal L_S \le \log p_\theta(x).

    The bound is per data point only when every sample site shares the ``data`` plate (and the
    ``restarts`` plate when batched) and the plate is not subsampled: Pyro keeps plates common
    to all sites as independent dimensions and sums the others out before the log-mean-exp.
    The test suite pins it against a hand-written per-point IWAE.

    With a mixture guide (``stratified = True``) training uses the stratified bound
    :func:`pyrofail.stratified.siwae` (:math:`S` samples from each component); :meth:`per_point`
    stays the plain bound with :math:`S` samples from the mixture, comparable across guides.

    :param num_particles: :math:`S`, importance samples per data point.
    """

    bound = staticmethod(stratified.siwae)

    def __init__(self, num_particles: int = 20):
        super().__init__(
            alpha=0.0,
            num_particles=check_positive_int("num_particles", num_particles),
            vectorize_particles=True,
            max_plate_nesting=MAX_PLATE_NESTING,
        )

    def per_point(self, model, guide, x, num_samples: int | None = None):
        """Per-point :math:`\\mathcal L_S` with the training particle count ``S`` (the bound
        is defined by ``S``, so ``num_samples`` does not change it)."""
        return bounds.log_marginal(model, guide, x, self.num_particles)

    def options(self) -> dict:
        return {"num_particles": self.num_particles}


@register(
    "objective",
    "elbo",
    summary="evidence lower bound (reverse KL to the posterior: mode-seeking)",
    keywords=("reverse-kl", "vae"),
)
def elbo(num_particles: int = 1, eval_samples: int = 100) -> ELBO:
    """The ELBO objective (:class:`ELBO`)."""
    return ELBO(num_particles=num_particles, eval_samples=eval_samples)


@register(
    "objective",
    "iwae",
    summary="importance-weighted bound, RenyiELBO(alpha=0); tighter with more particles",
    keywords=("importance-weighted", "iwae", "renyi"),
)
def iwae(num_particles: int = 20) -> IWAE:
    """The IWAE objective (:class:`IWAE`)."""
    return IWAE(num_particles=num_particles)
