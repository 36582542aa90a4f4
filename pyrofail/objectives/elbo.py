r"""The evidence lower bound as a Pyro ``ELBO``, registered as the objective ``elbo``.

Particles are vectorised (``vectorize_particles=True``) with ``max_plate_nesting=2``: the
particle dimension sits left of the ``restarts`` (``-2``) and ``data`` (``-1``) plates.
"""

from __future__ import annotations

from pyro.infer import Trace_ELBO

from pyrofail import bounds
from pyrofail.errors import check_positive_int
from pyrofail.objectives import stratified
from pyrofail.zoo import register

__all__ = ["ELBO", "MAX_PLATE_NESTING", "elbo"]

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
    :func:`pyrofail.objectives.stratified.selbo`: ``num_particles`` samples from each component.

    :param num_particles: samples per data point and step.
    :param eval_samples: samples per point for :meth:`per_point` (validation and test).
    """

    bound = staticmethod(stratified.selbo)
    plain_name, stratified_name = "ELBO", "stratified ELBO (SELBO)"

    def __init__(self, num_particles: int = 1, eval_samples: int = 100):
        self.eval_samples = check_positive_int("eval_samples", eval_samples)
        super().__init__(
            num_particles=check_positive_int("num_particles", num_particles),
            vectorize_particles=True,
            max_plate_nesting=MAX_PLATE_NESTING,
        )

    def per_point(self, model, guide, x, num_samples: int | None = None, *, seed=None, budget=None):
        """Per-point ELBO (``(N,)`` or ``(R, N)``) as a :class:`~pyrofail.bounds.Estimate`,
        with ``num_samples`` Monte Carlo samples (default ``eval_samples``); ``seed`` and
        ``budget`` as for :func:`pyrofail.bounds.elbo` (an evaluation passes a seed: its draws
        then come in fixed blocks, in memory bounded by the budget)."""
        return bounds.elbo(model, guide, x, num_samples or self.eval_samples, budget=budget, seed=seed)

    def options(self) -> dict:
        return {"num_particles": self.num_particles, "eval_samples": self.eval_samples}


@register(
    "objective",
    "elbo",
    summary="evidence lower bound (reverse KL to the posterior: mode-seeking)",
    keywords=("reverse-kl", "vae"),
)
def elbo(num_particles: int = 1, eval_samples: int = 100) -> ELBO:
    """The ELBO objective (:class:`ELBO`)."""
    return ELBO(num_particles=num_particles, eval_samples=eval_samples)
