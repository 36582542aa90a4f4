r"""The importance-weighted bound as Pyro's ``RenyiELBO(alpha=0)``, registered as ``iwae``."""

from __future__ import annotations

from pyro.infer import RenyiELBO

from pyrofail import bounds
from pyrofail.errors import check_positive_int
from pyrofail.objectives import stratified
from pyrofail.objectives.elbo import MAX_PLATE_NESTING
from pyrofail.zoo import register

__all__ = ["IWAE", "iwae"]


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
    :func:`pyrofail.objectives.stratified.siwae` (:math:`S` samples from each component); :meth:`per_point`
    stays the plain bound with :math:`S` samples from the mixture, comparable across guides.

    :param num_particles: :math:`S`, importance samples per data point.
    :param matched_budget: for mixture guides, split the :math:`S` draws over the components
        (about :math:`S` model evaluations per point, as for every other family) instead of
        :math:`S` from each.
    """

    bound = staticmethod(stratified.siwae)
    plain_name, stratified_name = "IWAE", "stratified IWAE (SIWAE)"

    def __init__(self, num_particles: int = 20, matched_budget: bool = False):
        self.split_budget = bool(matched_budget)
        super().__init__(
            alpha=0.0,
            num_particles=check_positive_int("num_particles", num_particles),
            vectorize_particles=True,
            max_plate_nesting=MAX_PLATE_NESTING,
        )

    def per_point(self, model, guide, x, num_samples: int | None = None, *, seed=None, budget=None):
        """Per-point :math:`\\mathcal L_S` with the training particle count ``S`` (the bound
        is defined by ``S``, so ``num_samples`` does not change it); ``seed`` and ``budget`` as
        for :func:`pyrofail.bounds.iwae`."""
        return bounds.iwae(model, guide, x, self.num_particles, budget=budget, seed=seed)

    def options(self) -> dict:
        return {"num_particles": self.num_particles, "matched_budget": self.split_budget}


@register(
    "objective",
    "iwae",
    summary="importance-weighted bound, RenyiELBO(alpha=0); tighter with more particles",
    keywords=("importance-weighted", "iwae", "renyi"),
)
def iwae(num_particles: int = 20, matched_budget: bool = False) -> IWAE:
    """The IWAE objective (:class:`IWAE`)."""
    return IWAE(num_particles=num_particles, matched_budget=matched_budget)
