r"""Mean-field variational inference for a BNN+LV, optionally with a dependence penalty.

The family factorises over every weight and every training latent (Blundell et al. 2015 for
the weights; per-point Gaussians for the latents, as in Depeweg et al. 2018's
:math:`\alpha`-divergence fits, here with the KL of the ELBO):

.. math::

    q(W, z) = \prod_{p=1}^P \mathcal N(W_p; m_p, v_p^2) \prod_{n=1}^N \mathcal N(z_n; \mu_n, \tau_n^2).

Pyro's ``SVI`` maximises the ELBO with :class:`~pyro.infer.TraceMeanField_ELBO` (analytic KL to the
Gaussian priors, a Monte Carlo expected log-likelihood over ``num_particles`` vectorised
draws), full batch, with :class:`~pyro.optim.ClippedAdam` whose learning rate decays
geometrically from ``lr`` to ``lr / 10``. With ``penalty`` :math:`\lambda > 0` the loss is

.. math::

    -\mathrm{ELBO}(q) + \lambda\, N\, \widehat{\mathrm{HSIC}}_b\big(\{x_n\}, \{\tilde z_n\}\big),
    \qquad \tilde z_n \sim q(z_n) \text{ (reparameterised)},

the biased HSIC (:mod:`pyrofail.bnn.hsic`) between the inputs and one joint draw of the
inferred latents, Gaussian kernels with median-heuristic bandwidths (for the inputs, the mean
of kernels at ``INPUT_SCALES`` fractions of it; for the latents, the bandwidth recomputed at
every step from the first ``BANDWIDTH_POINTS`` points, and not differentiated). The factor :math:`N` puts
:math:`\lambda` on the per-point scale of the ELBO. :mod:`pyrofail.bnn.noise_constrained`
says why and chooses :math:`\lambda`.
"""

from __future__ import annotations

import math
import time

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import SVI
from pyro.infer.trace_mean_field_elbo import TraceMeanField_ELBO
from torch.distributions import constraints

from pyrofail.bnn.hsic import INPUT_SCALES, center, gaussian_gram, hsic_biased, median_bandwidth
from pyrofail.bnn.network import BNNLV
from pyrofail.errors import UsageError, check_positive_float, check_positive_int

__all__ = ["fit_variational", "mean_field_guide"]

# the latents' median-heuristic bandwidth at every step comes from the first so many points
# (the median of all N^2 / 2 distances at every step would cost more than the rest of the step)
BANDWIDTH_POINTS = 200


def mean_field_guide(network: BNNLV, init_w: torch.Tensor, n: int, *, init_scale: float = 0.01):
    r"""The explicit mean-field guide :math:`q(W)\prod_n q(z_n)`: Pyro parameters ``w_loc``,
    ``w_scale`` ``(P,)`` and ``z_loc``, ``z_scale`` ``(N,)`` (scales positive), sites ``"w"`` and
    ``"z"`` in the ``data`` plate as in :meth:`BNNLV.model <pyrofail.bnn.network.BNNLV.model>`.
    It starts at ``w_loc = init_w``, ``z_loc = 0``, every scale ``init_scale``.

    Example:
        >>> net = BNNLV(hidden=(2,))
        >>> guide = mean_field_guide(net, torch.zeros(net.num_weights), 3)
        >>> with pyro.get_param_store().scope():
        ...     tr = poutine.trace(guide).get_trace(torch.zeros(3, 1))
        >>> tr.nodes["w"]["value"].shape, tr.nodes["z"]["value"].shape
        (torch.Size([9]), torch.Size([3]))
    """

    def guide(x, y=None):
        w_loc = pyro.param("w_loc", lambda: init_w.clone())
        w_scale = pyro.param(
            "w_scale", lambda: torch.full_like(init_w, init_scale), constraint=constraints.positive
        )
        pyro.sample("w", dist.Normal(w_loc, w_scale).to_event(1))
        z_loc = pyro.param("z_loc", lambda: x.new_zeros(n))
        z_scale = pyro.param("z_scale", lambda: x.new_full((n,), init_scale), constraint=constraints.positive)
        with pyro.plate("data", n, dim=-1):
            pyro.sample("z", dist.Normal(z_loc, z_scale))

    return guide


def fit_variational(
    network: BNNLV,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    penalty: float = 0.0,
    seed: int = 0,
    steps: int = 3000,
    lr: float = 0.01,
    num_particles: int = 4,
    num_draws: int = 500,
    init_scale: float = 0.01,
) -> dict:
    r"""Fit :math:`q` by SVI, then draw ``num_draws`` joint samples from it: ``{"w": (S, P),
    "z": (S, N), "z_mean": (N,), "info": {...}}`` in the units of ``x`` and ``y`` (the caller
    standardises); ``info["q"]`` holds the variational parameters ``w_loc``, ``w_scale``,
    ``z_loc``, ``z_scale``. ``penalty`` is :math:`\lambda` (0: plain mean-field VI).

    Everything is seeded by ``seed`` (the global random state is restored afterwards) and runs
    in a private Pyro parameter store, so that fits neither see nor leave parameters.

    Example:
        >>> net = BNNLV(hidden=(2,))
        >>> out = fit_variational(net, torch.randn(8, 1), torch.randn(8), steps=5, num_draws=3)
        >>> out["w"].shape, out["z"].shape, out["info"]["steps"]
        (torch.Size([3, 9]), torch.Size([3, 8]), 5)
    """
    steps = check_positive_int("steps", steps)
    num_particles = check_positive_int("num_particles", num_particles)
    num_draws = check_positive_int("num_draws", num_draws)
    lr = check_positive_float("lr", lr)
    init_scale = check_positive_float("init_scale", init_scale)
    penalty = float(penalty)
    if not (penalty >= 0 and math.isfinite(penalty)):
        raise UsageError(f"penalty={penalty!r} is not allowed; expected a finite number >= 0")
    n = x.shape[0]
    gen = torch.Generator().manual_seed(int(seed))
    guide = mean_field_guide(network, network.initial_weights(gen).to(x.dtype), n, init_scale=init_scale)
    elbo = TraceMeanField_ELBO(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)
    k_x = center(gaussian_gram(x, scales=INPUT_SCALES)) if penalty > 0 else None
    penalties = []

    def loss(model, guide, x, y):
        value = elbo.differentiable_loss(model, guide, x, y)
        if penalty > 0:
            z = poutine.trace(guide).get_trace(x, y).nodes["z"]["value"]
            hsic = hsic_biased(k_x, gaussian_gram(z, median_bandwidth(z[:BANDWIDTH_POINTS])), centered=True)
            penalties.append(float(hsic.detach()))
            value = value + penalty * n * hsic
        return value

    optim = pyro.optim.ClippedAdam({"lr": lr, "lrd": 0.1 ** (1.0 / steps)})
    losses = []
    with torch.random.fork_rng(devices=[]), pyro.get_param_store().scope():
        torch.manual_seed(int(seed))
        svi = SVI(network.model, guide, optim, loss=loss)
        start = time.perf_counter()
        for _ in range(steps):
            losses.append(svi.step(x, y))
        seconds = time.perf_counter() - start
        params = {k: pyro.param(k).detach().clone() for k in ("w_loc", "w_scale", "z_loc", "z_scale")}
    if not all(math.isfinite(v) for v in losses[-10:]):
        raise FloatingPointError(f"the variational fit diverged (last loss {losses[-1]}); lower lr={lr}")
    w = params["w_loc"] + params["w_scale"] * torch.randn(
        num_draws, network.num_weights, generator=gen, dtype=x.dtype
    )
    z = params["z_loc"] + params["z_scale"] * torch.randn(num_draws, n, generator=gen, dtype=x.dtype)
    tail = max(1, steps // 10)
    info = {
        "seconds": seconds,
        "steps": steps,
        "penalty": penalty,
        "final_loss": sum(losses[-tail:]) / tail,  # mean of the last 10% of steps
        "final_hsic_b": sum(penalties[-tail:]) / tail if penalties else None,
        "losses": losses,
        "q": params,
    }
    return {"w": w, "z": z, "z_mean": params["z_loc"], "info": info}
