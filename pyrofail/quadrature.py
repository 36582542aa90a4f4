r"""A differentiable :math:`\log p_\theta(x)` by quadrature on a fixed grid, for training.

.. math::

    \log p_\theta(x) = \log \int p(z)\, p_\theta(x \mid z)\, dz
        \approx \log \sum_g w_g\, p(z_g)\, p_\theta(x \mid z_g),

with the nodes :math:`z_g` a regular grid of spacing :math:`h` on :math:`[-r, r]^K` and
:math:`w_g = h^K` (the midpoint rule). The decoder runs once per node for all points and all
restarts, so the exact maximum-likelihood objective costs about as much as a batch of
ELBO evaluations, and its gradient with respect to :math:`\theta` is exact for the rule. The
rule is accurate where posteriors are wider than :math:`h` (the analysis measures with the
adaptive mesh of :mod:`pyrofail.analysis.reference.grid`, which refines where the decoder moves).

The same nodes give the exact posterior weights :math:`\pi_{ng} = p(z_g \mid x_n)` and so the
aggregate posterior :math:`\bar p_g = \frac1N \sum_n \pi_{ng}` on the grid, and its divergence
from the prior's masses :math:`q_g`, :math:`\mathrm{KL}(\bar p \,\|\, q) = \sum_g \bar p_g
\log(\bar p_g / q_g)`. Over a minibatch of :math:`B` points instead of all :math:`N`, this
plug-in KL is biased upwards (an average of :math:`B` posteriors is lumpier than one of
:math:`N`), so training penalises the full-data aggregate: :func:`aggregate_masses` computes
:math:`\bar p` over all points (no gradient, in chunks), and :func:`aggregate_kl_penalty` takes
a minibatch's posteriors with those masses and returns the full-data KL with a gradient whose
expectation over minibatches is the full-data KL's gradient,

.. math::

    \nabla_\theta \mathrm{KL}(\bar p \,\|\, q) = \sum_g \log\frac{\bar p_g}{q_g}\,
        \nabla_\theta \bar p_g
    \approx \sum_g \log\frac{\bar p_g}{q_g}\, \frac1B \sum_{n \in \text{batch}}
        \nabla_\theta \pi_{ng}

(the term :math:`\sum_g \nabla \bar p_g` vanishes because the masses sum to 1; the
weights :math:`\log(\bar p_g / q_g)` are held fixed, computed from :math:`\bar p` at the
latest full pass).

Example:
    >>> import torch
    >>> from pyrofail.models import LinearGaussian
    >>> truth = LinearGaussian(latent_dim=1, data_dim=2, noise_scale=0.5, seed=0)
    >>> x = truth.sample(5, seed=1).x
    >>> z, log_w = nodes(1, spacing=0.01)
    >>> exact = truth.marginal().log_prob(x)
    >>> bool(torch.allclose(rule_log_px(truth, x, z, log_w), exact, atol=1e-4))
    True
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "aggregate_kl",
    "aggregate_kl_penalty",
    "aggregate_masses",
    "kl_from_prior",
    "log_joint_on_nodes",
    "rule_log_px",
    "nodes",
]

LOG_2PI = math.log(2 * math.pi)


def nodes(latent_dim: int, spacing: float = 0.02, radius: float = 6.0, dtype=None, device=None):
    """The grid ``(G, K)`` and the log quadrature weights ``(G,)`` (the prior not included)."""
    n = int(round(2 * radius / spacing)) + 1
    axis = torch.linspace(-radius, radius, n, dtype=dtype or torch.get_default_dtype(), device=device)
    z = torch.cartesian_prod(*([axis] * latent_dim)).reshape(-1, latent_dim)
    h = float(axis[1] - axis[0])
    return z, torch.full((z.shape[0],), latent_dim * math.log(h), dtype=z.dtype, device=device)


def log_joint_on_nodes(model, x: torch.Tensor, z: torch.Tensor, log_w: torch.Tensor) -> torch.Tensor:
    r""":math:`\log w_g + \log p(z_g) + \log p_\theta(x_n \mid z_g)`: ``(N, G)``, or
    ``(R, N, G)`` for a model batched over ``R`` restarts. A latent-Gaussian model is
    evaluated as :math:`\lVert x\rVert^2 - 2 x \cdot f + \lVert f\rVert^2` (one matrix product);
    other models through ``log_joint``."""
    prior = -0.5 * (z * z).sum(-1) - 0.5 * z.shape[-1] * LOG_2PI + log_w  # (G,)
    restarts = getattr(model, "restarts", None)
    if hasattr(model, "mean") and hasattr(model, "_log_sigma"):
        zz = z if restarts is None else z.expand(restarts, *z.shape)
        f = model.mean(zz)  # (G, D) or (R, G, D)
        log_sigma = model._log_sigma()
        if restarts is not None:
            log_sigma = log_sigma.reshape(restarts, 1, -1)  # (R, 1, 1 or D)
        inv = torch.exp(-2 * log_sigma)
        d = x.shape[-1]
        xs = x * inv  # (N, D) or (R, N, D)
        quad = (
            xs @ f.transpose(-1, -2)
            - 0.5 * (x * xs).sum(-1, keepdim=True)
            - 0.5 * (f * f * inv).sum(-1)[..., None, :]
        )
        norm = log_sigma.expand(*log_sigma.shape[:-1], d).sum(-1, keepdim=True) + 0.5 * d * LOG_2PI
        return quad - norm + prior
    zz = z[:, None, :] if restarts is None else z[:, None, None, :]
    lj = model.log_joint(zz, x)  # (G, N) or (G, R, N)
    lj = lj - (-0.5 * (zz * zz).sum(-1) - 0.5 * z.shape[-1] * LOG_2PI)  # log p(x | z)
    return lj.movedim(0, -1) + prior


def rule_log_px(model, x: torch.Tensor, z: torch.Tensor, log_w: torch.Tensor) -> torch.Tensor:
    r""":math:`\log p_\theta(x_n)` per point by the rule: ``(N,)`` or ``(R, N)``."""
    return torch.logsumexp(log_joint_on_nodes(model, x, z, log_w), -1)


def aggregate_kl(lj: torch.Tensor, z: torch.Tensor, log_w: torch.Tensor) -> torch.Tensor:
    r""":math:`\mathrm{KL}(\bar p \,\|\, p(z))` on the grid, from ``lj`` of
    :func:`log_joint_on_nodes` ``(..., N, G)``: the aggregate of the points' posterior masses
    against the prior's masses at the same nodes (``(...)``)."""
    n = lj.shape[-2]
    log_post = torch.logsumexp(torch.log_softmax(lj, -1), -2) - math.log(n)  # (..., G)
    # nodes without posterior mass: their terms are 0, and clamping keeps 0 * log 0 (and its
    # gradient) finite
    log_post = log_post.clamp_min(-80.0)
    log_prior = torch.log_softmax(-0.5 * (z * z).sum(-1) + log_w, -1)
    return (log_post.exp() * (log_post - log_prior)).sum(-1)


def _log_prior_masses(z: torch.Tensor, log_w: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(-0.5 * (z * z).sum(-1) + log_w, -1)


@torch.no_grad()
def aggregate_masses(model, x: torch.Tensor, z: torch.Tensor, log_w: torch.Tensor, chunk: int = 500):
    r"""The aggregate posterior's masses :math:`\bar p_g = \frac1N \sum_n p(z_g \mid x_n)` over
    all rows of ``x``, ``(G,)`` or ``(R, G)`` for a batched model, in float64, computed in
    chunks of ``chunk`` points without a gradient."""
    total = None
    for start in range(0, x.shape[0], chunk):
        lj = log_joint_on_nodes(model, x[start : start + chunk], z, log_w)
        # the softmax in the model's precision (the costly part), the sums over chunks in float64
        part = torch.softmax(lj, -1).sum(-2).double()
        total = part if total is None else total + part
    return total / x.shape[0]


def kl_from_prior(masses: torch.Tensor, z: torch.Tensor, log_w: torch.Tensor) -> torch.Tensor:
    r""":math:`\sum_g \bar p_g \log(\bar p_g / q_g)` of aggregate masses ``(..., G)`` against the
    prior's masses on the same nodes (nodes without mass contribute 0)."""
    log_prior = _log_prior_masses(z.to(masses.dtype), log_w.to(masses.dtype))
    log_post = masses.clamp_min(1e-300).log()
    return torch.where(masses > 0, masses * (log_post - log_prior), torch.zeros_like(masses)).sum(-1)


def aggregate_kl_penalty(lj: torch.Tensor, z: torch.Tensor, log_w: torch.Tensor, masses: torch.Tensor):
    r"""The full-data :math:`\mathrm{KL}(\bar p \,\|\, q)` as a value (from ``masses``
    ``(..., G)`` of :func:`aggregate_masses`) with the minibatch gradient of the module
    docstring, from the batch's ``lj`` ``(..., B, G)`` of :func:`log_joint_on_nodes`:
    ``(...)``. With ``masses`` the aggregate of the same points as ``lj``, its gradient is
    exactly that of :func:`aggregate_kl`."""
    weights = (masses.clamp_min(1e-300).log() - _log_prior_masses(z.double(), log_w.double())).detach()
    weights = torch.where(masses > 0, weights, torch.zeros_like(weights)).to(lj.dtype)
    batch = torch.softmax(lj, -1).mean(-2)  # (..., G): the batch's aggregate, with its gradient
    surrogate = (weights * batch).sum(-1)
    return kl_from_prior(masses, z, log_w).to(lj.dtype) + surrogate - surrogate.detach()
