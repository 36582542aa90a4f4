r"""Stratified estimators of the ELBO and the IWAE bound for mixture guides.

For a mixture guide :math:`q(z \mid x) = \sum_c \pi_c\, q_c(z \mid x)`, draw :math:`S`
reparameterised samples :math:`z_{sc} \sim q_c` from *every* component and weight them by
:math:`\pi_c` (Morningstar, Vikram, Ham, Gallagher & Dillon 2021, "Automatic differentiation
variational inference with mixtures", AISTATS):

.. math::

    \text{SELBO}(x) = \sum_c \pi_c\, \frac1S \sum_s \log w_{sc}, \qquad
    \text{SIWAE}_S(x) = \log \frac1S \sum_{s, c} \pi_c\, w_{sc}, \qquad
    w_{sc} = \frac{p(x, z_{sc})}{q(z_{sc} \mid x)},

with :math:`q` the whole mixture's density. SELBO is an unbiased estimate of the ELBO and
:math:`\mathbb E\,\text{SIWAE}_S \le \log p(x)` (it is the IWAE bound of an importance sampler
that samples each stratum in proportion), so both train the same objectives as ``Trace_ELBO``
and ``RenyiELBO(alpha=0)``. What changes is the gradient of the weights: it is
:math:`\partial_{\pi_c}` of an explicit sum, the difference between the components' own
log-weights, where a pathwise gradient moves samples between components and sees only those
that land in the region between them (heavy-tailed, near useless once components sit on
separated modes; :mod:`pyrofail.guides.mixture`). A draw costs :math:`C` model evaluations
per particle instead of one.

The model is run once, through Pyro (so masks, scales and learned parameters behave as in
any ``ELBO``), on all :math:`S C` draws at once inside a ``strata`` plate left of the model's
own plates; the guide is run once, to build the mixture.
"""

from __future__ import annotations

import math

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import prune_subsample_sites

from pyrofail import bounds
from pyrofail.bounds import Estimate

__all__ = ["StratifiedMixin", "is_stratified", "log_weights", "selbo", "siwae"]


def is_stratified(guide) -> bool:
    """Whether ``guide`` (possibly wrapped in Pyro handlers) asks for stratified estimators:
    a guide object with ``stratified = True``, such as the ``mixture`` family."""
    target = poutine.unwrap(guide)
    target = getattr(target, "__self__", target)  # a bound method's object
    return bool(getattr(target, "stratified", False))


def log_weights(model, guide, args, kwargs, num_particles: int, split_budget: bool = False):
    r"""Stratified importance log-weights :math:`\log w_{sc}` and mixture log-weights.

    The guide must have exactly one latent sample site, whose distribution has
    ``rsample_strata(sample_shape)`` (``(S, C, *batch, K)`` draws, one set per component) and
    ``log_weights`` (``(*batch, C)``), like
    :class:`~pyrofail.guides.mixture.MixtureOfDiagNormals`.

    :param num_particles: :math:`S` draws from every component, or, with ``split_budget``,
        :math:`\max(1, \lfloor S / C \rfloor)` (about :math:`S` model evaluations in all, as
        for the plain estimator: a matched budget).
    :returns: ``(log_w, log_pi)`` of shapes ``(S, C, *batch)`` and ``(C, *batch)``; for a
        masked-out batch element both the model's and the guide's terms are zero.
    """
    guide_trace = prune_subsample_sites(poutine.trace(guide).get_trace(*args, **kwargs))
    latent = [
        site for site in guide_trace.nodes.values() if site["type"] == "sample" and not site["is_observed"]
    ]
    if len(latent) != 1 or not hasattr(latent[0]["fn"], "rsample_strata"):
        raise ValueError(
            "stratified estimators need a guide with one latent site whose distribution has "
            f"rsample_strata(); got sites {[s['name'] for s in latent]}"
        )
    site = latent[0]
    q = site["fn"]
    if split_budget:
        num_particles = max(1, num_particles // q.log_weights.shape[-1])
    z = q.rsample_strata(torch.Size((num_particles,)))
    s, c = z.shape[:2]
    flat = z.flatten(0, 1)
    conditioned = poutine.condition(model, data={site["name"]: flat})
    # the draws' leading dim sits just left of the latent site's batch (its plates)
    with pyro.plate("strata", s * c, dim=-(len(q.batch_shape) + 1)):
        model_trace = poutine.trace(conditioned).get_trace(*args, **kwargs)
    model_trace = prune_subsample_sites(model_trace)
    model_trace.compute_log_prob()
    log_p = sum(n["log_prob"] for n in model_trace.nodes.values() if n["type"] == "sample")
    log_q = scale_and_mask(q.log_prob(flat), site["scale"], site["mask"])
    log_pi = q.log_weights.movedim(-1, 0)
    return (log_p - log_q).unflatten(0, (s, c)), log_pi


def selbo(log_w: torch.Tensor, log_pi: torch.Tensor) -> torch.Tensor:
    """Per-element stratified ELBO :math:`\\sum_c \\pi_c \\bar{\\log w}_{c}`, shape ``batch``."""
    return (log_pi.exp() * log_w.mean(0)).sum(0)


def siwae(log_w: torch.Tensor, log_pi: torch.Tensor) -> torch.Tensor:
    """Per-element stratified IWAE bound :math:`\\log \\frac1S \\sum_{s,c} \\pi_c w_{sc}`."""
    return (log_w + log_pi).flatten(0, 1).logsumexp(0) - math.log(log_w.shape[0])


class StratifiedMixin:
    """Gives a Pyro ``ELBO`` subclass the stratified estimator ``bound`` (:func:`selbo` or
    :func:`siwae`) for guides that ask for it (:func:`is_stratified`); every other guide goes
    through the parent class unchanged."""

    bound = None  # set by the subclass, as a staticmethod
    split_budget = False  # S draws in all rather than from every component (a matched budget)

    def _stratified_loss(self, model, guide, args, kwargs) -> torch.Tensor:
        log_w, log_pi = log_weights(model, guide, args, kwargs, self.num_particles, self.split_budget)
        return -self.bound(log_w, log_pi).sum()

    def trained_on(self, guide) -> str:
        """What the objective trains ``guide`` with, in words (for the report)."""
        s = self.num_particles
        if not is_stratified(guide):
            return f"{self.plain_name}, {s} draw{'s' * (s != 1)} per point"
        if self.split_budget:
            return f"{self.stratified_name}, {s} draws per point split over the components"
        return f"{self.stratified_name}, {s} draw{'s' * (s != 1)} from every component"

    @torch.no_grad()
    def training_bound(self, model, guide, x, replicates: int = 4, *, seed=None, budget=None):
        """Per-point value of the estimator that trains ``guide`` (the stratified one for
        mixture guides, else :meth:`per_point` with ``seed`` and ``budget``), averaged over
        ``replicates`` independent evaluations, with their standard error: an
        :class:`~pyrofail.bounds.Estimate`. The stratified draws come block by block of
        points (:func:`pyrofail.bounds.blockwise`, from ``seed``, else from one draw of the
        global generator), so memory does not grow with the points."""
        if not is_stratified(guide):
            return self.per_point(model, guide, x, seed=seed, budget=budget)
        if seed is None:
            seed = int(torch.randint(2**62, ()))

        def block(xb):
            values = []
            for _ in range(replicates):
                log_w, log_pi = log_weights(
                    model.model, guide, (xb,), {}, self.num_particles, self.split_budget
                )
                values.append(self.bound(log_w, log_pi))
            v = torch.stack(values)
            return v.mean(0), v.std(0) / replicates**0.5

        return Estimate(*bounds.blockwise(block, x, seed))

    def loss(self, model, guide, *args, **kwargs):
        if not is_stratified(guide):
            return super().loss(model, guide, *args, **kwargs)
        with torch.no_grad():
            return self._stratified_loss(model, guide, args, kwargs).item()

    def differentiable_loss(self, model, guide, *args, **kwargs):
        if not is_stratified(guide):
            return super().differentiable_loss(model, guide, *args, **kwargs)
        return self._stratified_loss(model, guide, args, kwargs)

    def loss_and_grads(self, model, guide, *args, **kwargs):
        if not is_stratified(guide):
            return super().loss_and_grads(model, guide, *args, **kwargs)
        loss = self._stratified_loss(model, guide, args, kwargs)
        if loss.requires_grad:
            loss.backward()
        return loss.item()
