r"""Noise-constrained VI: mean-field VI that keeps the inferred input noise independent of the input.

**The problem** (Yacoby, Pan & Doshi-Velez, "Mitigating the effects of non-identifiability on
inference for Bayesian neural networks with latent variables", JMLR 2022, arXiv:1911.00569,
from its abstract): in :math:`y = f_W(x, z) + \varepsilon` explanatory power can be transferred
between the weights :math:`W` and the per-point input noise :math:`z_n` while the data are fit
equally well, so inference may find parameters that reconstruct the training data (with their
inferred :math:`z_n`) but generalise poorly (with :math:`z` drawn from its prior at a new
input); the paper proposes an inference procedure that mitigates this non-identifiability
during training.

**This project's reading** (the paper's own procedure is not available to us, only its
abstract; what follows is ours). Under the model, :math:`z_n \sim \mathcal N(0, s_z^2)`
independently of :math:`x_n`. A draw from the exact posterior of :math:`z_n` keeps that
property on aggregate: if :math:`(x_n, y_n)` come from the model and
:math:`\tilde z_n \sim p(z_n \mid x_n, y_n, W)`, then :math:`(x_n, y_n, \tilde z_n)` has the
law of :math:`(x_n, y_n, z_n)`, so :math:`\tilde z_n` is independent of :math:`x_n`. When
explanatory power leaks from :math:`W` into :math:`z` — the latent carries part of the
input-dependent mean — the inferred :math:`z_n` become a function of :math:`x_n`, which a
new point, whose :math:`z` comes from the prior, cannot reproduce. So the objective adds a
penalty on the dependence between :math:`x_n` and draws :math:`\tilde z_n \sim q(z_n)`,

.. math::

    \mathcal L_\lambda(q) = -\mathrm{ELBO}(q) + \lambda\, N\,
        \widehat{\mathrm{HSIC}}_b\big(\{x_n\}, \{\tilde z_n\}\big),

with the HSIC of Gretton et al. (2005) and Gaussian kernels (median heuristic; for the inputs
the mean of kernels at fractions of it, :data:`pyrofail.bnn.hsic.INPUT_SCALES`)
(:func:`pyrofail.bnn.variational.fit_variational`). The choice of HSIC, of its kernels, of
one reparameterised draw per step, and of the :math:`N` scaling are ours.

**Choosing** :math:`\lambda`: from the grid ``lams`` (default ``(10, 100, 1000)``) on held-out
data: ``val_fraction`` of the training points (seeded) are set aside, one fit per
:math:`\lambda` on the rest is scored by the mean validation log predictive density with
latents from their prior (:func:`pyrofail.bnn.predictive.predictive_summary`), and the best
:math:`\lambda` is refit on all the training points. :math:`\lambda = 0` (plain mean-field VI)
is deliberately not in the grid: ``mean_field`` is that fit, and the comparison of the two
methods says whether the penalty helps.
"""

from __future__ import annotations

import math

import torch

from pyrofail.bnn.network import BNNLV
from pyrofail.bnn.predictive import predictive_summary
from pyrofail.bnn.variational import fit_variational
from pyrofail.errors import UsageError

__all__ = ["DEFAULT_LAMS", "fit_noise_constrained"]

DEFAULT_LAMS = (10.0, 100.0, 1000.0)


def fit_noise_constrained(
    network: BNNLV,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    lam: float | None = None,
    lams=DEFAULT_LAMS,
    val_fraction: float = 0.2,
    val_num_z: int = 50,
    seed: int = 0,
    **options,
) -> dict:
    r"""Noise-constrained VI: :func:`~pyrofail.bnn.variational.fit_variational` with penalty
    :math:`\lambda`, given as ``lam`` or chosen from ``lams`` on a validation split (see the
    module). ``options`` go to ``fit_variational``. ``info`` gains ``"lam"`` and, when chosen,
    ``"validation"``: per :math:`\lambda` the validation log-likelihood (mean, stderr).

    Example:
        >>> net = BNNLV(hidden=(2,))
        >>> x, y = torch.randn(20, 1), torch.randn(20)
        >>> out = fit_noise_constrained(net, x, y, lams=(1.0, 10.0), steps=3, num_draws=4)
        >>> out["info"]["lam"] in (1.0, 10.0), sorted(out["info"]["validation"])
        (True, [1.0, 10.0])
    """
    validation = None
    if lam is None:
        lams = [float(v) for v in lams]
        if not lams or any(not (v > 0 and math.isfinite(v)) for v in lams):
            raise UsageError(f"lams={lams!r} is not allowed; expected one or more finite numbers > 0")
        if not 0 < val_fraction < 1:
            raise UsageError(f"val_fraction={val_fraction!r} is not allowed; expected a number in (0, 1)")
        n = x.shape[0]
        n_val = max(5, round(val_fraction * n))
        if n - n_val < 5:
            raise UsageError(f"{n} training points are too few to hold out {n_val} for choosing lam")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed) + 7919))
        val, fit_idx = perm[:n_val], perm[n_val:]
        validation = {}
        for value in lams:
            part = fit_variational(network, x[fit_idx], y[fit_idx], penalty=value, seed=seed, **options)
            ll = predictive_summary(network, part["w"], x[val], y[val], num_z=val_num_z, seed=seed)["log_lik"]
            validation[value] = (float(ll.mean()), float(ll.std() / math.sqrt(ll.numel())))
        lam = max(validation, key=lambda v: validation[v][0])
    out = fit_variational(network, x, y, penalty=lam, seed=seed, **options)
    out["info"]["lam"] = float(lam)
    out["info"]["validation"] = validation
    return out
