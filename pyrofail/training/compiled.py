r"""A training step without Pyro's per-step tracing, for the Gaussian-guide VAE.

Every :meth:`pyro.infer.SVI.step` runs the model and the guide under Pyro's effect handlers,
records a trace of every site, then sums the sites' log-densities: for the small restart-batched
networks of a fit that bookkeeping costs more than the arithmetic. For a mean-field guide
(:math:`q_\phi(z \mid x) = \mathcal N(\mu_\phi(x), \operatorname{diag}\sigma_\phi(x)^2)`) and a
latent-Gaussian or latent-Bernoulli model, the objective is one plain PyTorch expression of the
networks, so this module writes it out once and reuses it at every step:

.. math::

    \log w_s = \log p_\theta(x, z_s) - \log q_\phi(z_s \mid x), \qquad
    z_s = \mu_\phi(x) + \sigma_\phi(x) \odot \varepsilon_s, \quad \varepsilon_s \sim \mathcal N(0, I),

    \log q_\phi(z_s \mid x) = -\tfrac12 \lVert \varepsilon_s \rVert^2
        - \textstyle\sum_k \log \sigma_{\phi,k}(x) - \tfrac K2 \log 2\pi,

with the ELBO's loss :math:`-\frac1S \sum_s \sum_{r,n} \log w_{s,r,n}` (Pyro's ``Trace_ELBO``
with vectorised particles) and the IWAE bound's :math:`-\sum_{r,n} \log \frac1S \sum_s w_{s,r,n}`
(``RenyiELBO(alpha=0)``, Burda et al. 2016). Writing :math:`\log q` through
:math:`\varepsilon` rather than through :math:`z` changes neither the value nor the gradient:
the pathwise derivative of :math:`(z - \mu)/\sigma` with respect to :math:`\mu` and
:math:`\sigma` is zero along :math:`z = \mu + \sigma\varepsilon`. The noise is drawn with the
global generator in the shape and order Pyro draws it, so a fit with the same seed sees the same
:math:`\varepsilon` either way and the two agree to floating-point rounding.

Restarts that were frozen (``active`` false) contribute zero, as under ``poutine.mask``. The
parameters reach Pyro's parameter store and the optimiser as they do in SVI's first step (a
parameter-only trace of the model and guide), so the optimiser's state and a checkpoint are laid
out under the same names, and a fit resumed from a checkpoint equals an uninterrupted one.

``torch.compile`` of this loss was measured and not adopted (on two shared CPU cores, torch
2.13: 36 to 75 s of compilation for a slower step), nor ``torch.jit.trace`` (deprecated in
torch 2.13, and no faster than the plain expression); see ``benchmarks/README.md``.
"""

from __future__ import annotations

import math

import torch
from pyro import poutine

from pyrofail.guides.mean_field import MeanFieldGuide
from pyrofail.models.latent_bernoulli import LatentBernoulli
from pyrofail.models.latent_gaussian import LatentGaussian
from pyrofail.objectives.elbo import ELBO
from pyrofail.objectives.iwae import IWAE
from pyrofail.objectives.stratified import is_stratified

__all__ = ["DirectStep", "direct_loss", "supports"]

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


# the methods whose stock versions the direct loss reproduces
_MODEL_METHODS = {
    LatentGaussian: ("forward", "model", "prior", "likelihood", "log_joint", "mean"),
    LatentBernoulli: ("forward", "model", "prior", "likelihood", "log_joint", "log_likelihood", "logits"),
}

_GUIDE_METHODS = ("forward", "distribution")


def _stock(obj, cls, names) -> bool:
    return all(getattr(type(obj), name) is getattr(cls, name) for name in names)


def supports(bmodel, bguide, loss) -> bool:
    """Whether :class:`DirectStep` computes exactly what SVI computes for this model, guide
    and objective: a batched mean-field guide (or a subclass that keeps its ``distribution``),
    a latent-Gaussian or latent-Bernoulli model whose Pyro program is the stock one, and the
    ``elbo`` or ``iwae`` objective itself (not a subclass, which may change the estimator).

    Example:
        >>> from pyrofail.training import build
        >>> m = build.learned_model(1, 2, 0.1, hidden=(8,), restarts=2)
        >>> g = build.guide("mean_field", 1, 2, hidden=(8,), restarts=2)
        >>> supports(m, g, build.objective("elbo")), supports(m, g, build.objective("iwae"))
        (True, True)
        >>> supports(m, build.guide("full_rank", 1, 2, hidden=(8,), restarts=2), build.objective("elbo"))
        False
    """
    if type(loss) not in (ELBO, IWAE) or is_stratified(bguide):
        return False
    if not (isinstance(bguide, MeanFieldGuide) and _stock(bguide, MeanFieldGuide, _GUIDE_METHODS)):
        return False
    if not any(isinstance(bmodel, cls) and _stock(bmodel, cls, m) for cls, m in _MODEL_METHODS.items()):
        return False
    return bmodel.restarts is not None and bmodel.restarts == bguide.restarts


def direct_loss(bmodel, bguide, x: torch.Tensor, eps: torch.Tensor, active: torch.Tensor, iwae: bool):
    """The training loss of SVI for a mean-field guide, from the noise ``eps``: ``(R, N, K)``
    for one particle, ``(S, R, N, K)`` for ``S``; ``active`` is the ``(R,)`` mask of restarts
    still training. Returns the scalar loss (to be differentiated).

    Example:
        >>> import torch
        >>> from pyrofail.training import build
        >>> m = build.learned_model(1, 2, 0.1, hidden=(8,), restarts=2)
        >>> g = build.guide("mean_field", 1, 2, hidden=(8,), restarts=2)
        >>> x, eps = torch.randn(5, 2), torch.randn(3, 2, 5, 1)
        >>> direct_loss(m, g, x, eps, torch.tensor([True, False]), iwae=True).shape
        torch.Size([])
    """
    q = bguide.distribution(x).base_dist
    loc, scale = q.loc, q.scale
    z = loc + scale * eps
    log_q = -0.5 * (eps * eps).sum(-1) - scale.log().sum(-1) - loc.shape[-1] * HALF_LOG_2PI
    log_w = bmodel.log_joint(z, x) - log_q  # (R, N), or (S, R, N)
    if eps.dim() == 4:
        per_point = log_w.logsumexp(0) - math.log(eps.shape[0]) if iwae else log_w.mean(0)
    else:
        per_point = log_w
    per_restart = per_point.sum(-1)
    zero = torch.zeros((), dtype=per_restart.dtype, device=per_restart.device)
    return -torch.where(active, per_restart, zero).sum()


class DirectStep:
    """``step(x_batch) -> loss`` with the semantics of ``svi.step`` (a float; gradients
    applied by ``optim``; gradients cleared), through :func:`direct_loss`.

    :param svi: the run's :class:`pyro.infer.SVI` (its model and guide wrapped in the masks).
    :param active: the ``(R,)`` mask of restarts still training, read at every step.
    :param learn_model: whether the model's parameters are trained.
    """

    def __init__(self, svi, bmodel, bguide, loss, optim, active: torch.Tensor, learn_model: bool = True):
        self.svi, self.bmodel, self.bguide, self.optim = svi, bmodel, bguide, optim
        self.active = active
        self.iwae = isinstance(loss, IWAE)
        self.particles = int(loss.num_particles)
        self.learn_model = learn_model
        self.params: list[torch.Tensor] | None = None

    def __call__(self, x: torch.Tensor) -> float:
        if self.params is None:
            self.params = self._register(x)
        q_shape = (*self.bguide.batch_shape, x.shape[-2], self.bguide.latent_dim)
        shape = q_shape if self.particles == 1 else (self.particles, *q_shape)
        dtype = self.params[0].dtype if self.params else x.dtype
        eps = torch.randn(shape, dtype=dtype, device=x.device)
        loss = direct_loss(self.bmodel, self.bguide, x, eps, self.active, self.iwae)
        loss.backward()
        for p in self.params:  # as SVI: every trained tensor takes an Adam step, gradient or not
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        self.optim.optimizer.step()
        for p in self.params:
            p.grad = None
        return loss.item()

    def _register(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Hand the trained tensors to the optimiser as SVI's first step does: found by
        running the (masked, blocked) model and guide under a parameter-only trace, with the
        random state put back afterwards, so that the optimiser lays out its state under the
        same parameter names (a checkpoint moves between the two steps) and the draws of the
        first step are those of an eager run."""
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            with torch.no_grad(), poutine.trace(param_only=True) as capture:
                self.svi.guide(x)
                self.svi.model(x)
        params = {site["value"].unconstrained() for site in capture.trace.nodes.values()}
        # the optimiser takes the tensors and steps none of them; gradients left on them (the
        # decoder's pre-training leaves its last one) are kept for the first step, which adds
        # to them as SVI's first step does
        grads = {p: p.grad for p in params}
        for p in params:
            p.grad = None
        self.optim(params)
        for p, g in grads.items():
            p.grad = g
        opt = getattr(self.optim, "optimizer", None)
        if opt is None:
            raise TypeError("DirectStep needs a pyrofail.optim.FusedAdam")
        trained = [p for group in opt.param_groups for p in group["params"]]
        mine = {id(p) for p in self.bguide.parameters()}
        if self.learn_model:
            mine |= {id(p) for p in self.bmodel.parameters()}
        if any(id(p) not in mine for p in trained):
            raise TypeError("the optimiser trains tensors outside the model and guide")
        return trained
