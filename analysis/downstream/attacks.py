r"""Adversarial robustness of an encoder: how far a small change of x moves :math:`q(z \mid x)`.

**The attack** (untargeted, on the encoder; Kuzina, Welling & Tomczak 2021, "Diagnosing
vulnerability of variational auto-encoders to adversarial attacks", ICLR RobustML workshop,
and 2022, "Alleviating adversarial attacks on variational autoencoders with MCMC", NeurIPS):
find a perturbation :math:`\delta` in the ball :math:`\lVert\delta\rVert \le \varepsilon` that
maximises

* ``objective="kl"``: :math:`\mathrm{KL}\big(q(z \mid x) \,\|\, q(z \mid x + \delta)\big)`
  (their ``kl_forward``), or
* ``objective="mean"``: :math:`\lVert \mu(x + \delta) - \mu(x) \rVert_2`, with :math:`\mu` the
  mean of :math:`q` (their ``means`` objective, which uses its square: the same maximiser).

Gondim-Ribeiro, Tabacof & Valle (2018, "Adversarial attacks on variational autoencoders",
arXiv:1806.04646) introduced the latent-space attack in its targeted form (pull
:math:`q(z \mid x + \delta)` towards the posterior of a chosen target); we keep its measure, a
divergence between posteriors, and its constraint on the size of :math:`\delta`, in the
untargeted form of Kuzina et al., who start from a random perturbation and project onto the
ball after every step. We optimise by projected gradient ascent (Madry, Makelov, Schmidt,
Tsipras & Vladu 2018, "Towards deep learning models resistant to adversarial attacks", ICLR):
sign steps for :math:`\ell_\infty`, normalised gradient steps for :math:`\ell_2`, each
followed by the projection; every restart starts uniformly inside the ball (the clean input
is a stationary point of both objectives, where the gradient vanishes), and the best iterate
of every restart is kept, per point. For :math:`\ell_\infty` each restart's best point then
goes through a greedy search over the cube's corners (its sign corner, then single sign flips
while one improves: ``corners``). By default :data:`RESTARTS` = 10 starts per point, run
together as one batch: a convex objective has a local maximum at many corners of the cube,
and sign ascent stops at the first whose gradient signs agree with it. On 24 linear-Gaussian
encoders in 3 to 6 dimensions (200 points each, 50 steps; ``benchmarks/downstream_checks.py``)
one start of plain ascent ends below 99% of the exact maximum on 19% of the points (70% for
the worst encoder, as low as 15% of it), ten starts on 0.1% (lowest 96%), one start with the
corner search on 1.4%, and ten starts with it on none of the 4,800.

**The radius.** ``eps`` is in units of ``scale`` (default 1: the data's own units): the
attack's radius is :math:`\varepsilon \cdot` ``scale``. :func:`data_scale` gives a process's
scale, the mean over features of the data's standard deviation, so that one :math:`\varepsilon`
means the same relative change on data that span 16 (clusters) or 0.3 (quadratic).

The KL is in closed form when torch has one for the pair (``Normal``/``Independent``,
``MultivariateNormal``: the mean-field and full-rank guides); otherwise (the mixture and flow
guides) it is the Monte Carlo average of :math:`\log q(z_s \mid x) - \log q(z_s \mid x+\delta)`
over draws :math:`z_s \sim q(z \mid x)` made once from ``seed``, so the attack ascends a fixed,
deterministic function of :math:`\delta`; the reported divergence is re-estimated on fresh
draws, so it is not biased upwards by the search. A distribution without a ``mean`` (a flow)
gets a Monte Carlo mean of reparameterised draws with fixed noise.

**The yardstick.** :func:`posterior_shift` is the same divergence for the exact posterior of
the ground truth, :math:`\mathrm{KL}(p(z \mid x) \,\|\, p(z \mid x + \delta))`, by quadrature:
how far an ideal encoder would move at the same :math:`x + \delta`.

**The defence.** :func:`attack_denoiser` attacks the VAE used as a de-noiser (Yacoby et al.
2020, arXiv:2007.07124, citing Luo & Pfister 2018 and Ghosh et al. 2018): it maximises how far
the reconstruction :math:`f(\mu(x + \delta))` lands from the clean :math:`x`.
"""

from __future__ import annotations

import torch

from pyrofail.analysis.downstream.ideal import posterior_shift
from pyrofail.analysis.downstream.pgd import (
    NORMS,
    RESTARTS,
    STEP_FRACTION,
    _check,
    _pgd,
    _step,
    _summary,
    data_scale,
)
from pyrofail.errors import UsageError, check_choice, check_positive_int
from pyrofail.estimate import Estimate

__all__ = [
    "NORMS",
    "RESTARTS",
    "STEP_FRACTION",
    "attack_denoiser",
    "attack_encoder",
    "data_scale",
    "encoder_shift",
    "posterior_shift",
]

OBJECTIVES = ("kl", "mean")
# Monte Carlo draws of z per point: during the search (fixed) and for the reported value (fresh)
ATTACK_SAMPLES = 64
EVAL_SAMPLES = 1000


def _is_gaussian(q) -> bool:
    """Whether ``q`` is a Gaussian whose KL torch computes in closed form: ``Normal`` (possibly
    inside ``Independent``) or ``MultivariateNormal``. Other families, a ``TransformedDistribution``
    among them (torch's rule for those only covers identical transforms), go by Monte Carlo."""
    while isinstance(q, torch.distributions.Independent):
        q = q.base_dist
    return isinstance(q, (torch.distributions.Normal, torch.distributions.MultivariateNormal))


def _mean(q, num_samples: int, seed: int) -> torch.Tensor:
    """The mean of ``q`` ``(N, K)``: exact where the distribution has one, else the average of
    ``num_samples`` reparameterised draws whose noise comes from ``seed`` (the same noise at
    every call, so that the result is a smooth function of the distribution's parameters)."""
    try:
        return q.mean
    except NotImplementedError:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return q.rsample((num_samples,)).mean(0)


class _Divergence:
    """``x_adv -> (copies * N,)``: the objective against the clean ``q(z | x)``, fixed at
    construction, for ``copies`` stacked copies of ``x`` (``x.repeat(copies, 1)``: one per
    restart). The Monte Carlo draws of the KL are made for ``x`` once and shared by the
    copies, so that every restart of a point ascends the same function."""

    def __init__(self, guide, x, objective: str, num_samples: int, seed: int, copies: int = 1):
        self.guide, self.objective, self.num_samples, self.seed = guide, objective, num_samples, seed
        with torch.no_grad():
            self.q0 = guide.distribution(x.repeat(copies, 1))
            if objective == "mean":
                self.mu0 = _mean(self.q0, num_samples, seed)
                self.method = "exact mean" if self._exact_mean() else f"monte_carlo{num_samples}"
            elif _is_gaussian(self.q0):
                self.method = "closed_form"
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    self.z0 = guide.distribution(x).sample((num_samples,)).repeat(1, copies, 1)
                self.log_q0 = self.q0.log_prob(self.z0)
                self.method = f"monte_carlo{num_samples}"

    def _exact_mean(self) -> bool:
        try:
            self.q0.mean  # noqa: B018 - probing for an exact mean
        except NotImplementedError:
            return False
        return True

    def __call__(self, x_adv: torch.Tensor) -> torch.Tensor:
        q1 = self.guide.distribution(x_adv)
        if self.objective == "mean":
            return (_mean(q1, self.num_samples, self.seed) - self.mu0).norm(dim=-1)
        if self.method == "closed_form":
            return torch.distributions.kl_divergence(self.q0, q1)
        return (self.log_q0 - q1.log_prob(self.z0)).mean(0)


def encoder_shift(
    guide, x, x_adv, *, objective: str = "kl", num_samples: int = EVAL_SAMPLES, seed: int = 0
) -> torch.Tensor:
    r"""How far the encoder moves from ``x`` to ``x_adv``, per point ``(N,)``:
    :math:`\mathrm{KL}(q(z \mid x) \,\|\, q(z \mid x_{adv}))` (``"kl"``; closed form where torch
    has one, else the Monte Carlo average over ``num_samples`` draws from :math:`q(z \mid x)`)
    or :math:`\lVert \mu(x_{adv}) - \mu(x) \rVert_2` (``"mean"``).

    Example:
        >>> import pyro.distributions as dist
        >>> from pyrofail.guides import AmortizedGuide
        >>> class Shift(AmortizedGuide):
        ...     latent_dim, data_dim, restarts = 1, 1, None
        ...     def distribution(self, x):
        ...         return dist.Normal(x, 1.0).to_event(1)
        >>> float(encoder_shift(Shift(), torch.zeros(1, 1), torch.ones(1, 1))[0])  # (1 - 0)^2 / 2
        0.5
    """
    check_choice("objective", objective, OBJECTIVES)
    x, x_adv = torch.as_tensor(x), torch.as_tensor(x_adv)
    if x.shape != x_adv.shape:
        raise UsageError(f"x has shape {tuple(x.shape)} and x_adv {tuple(x_adv.shape)}; expected the same")
    with torch.no_grad():
        return _Divergence(guide, x, objective, check_positive_int("num_samples", num_samples), seed)(x_adv)


def attack_encoder(
    guide,
    x,
    eps: float,
    *,
    scale: float = 1.0,
    norm: str = "linf",
    objective: str = "kl",
    steps: int = 100,
    step_size: float | None = None,
    restarts: int = RESTARTS,
    corners: bool = True,
    seed: int = 0,
    num_samples: int = ATTACK_SAMPLES,
    eval_samples: int = EVAL_SAMPLES,
) -> dict:
    r"""The worst perturbation of every row of ``x`` for the encoder ``guide`` (module docstring).

    .. math::

        \delta^*(x) = \arg\max_{\lVert\delta\rVert \le \varepsilon}
            \mathrm{KL}\big(q(z \mid x) \,\|\, q(z \mid x + \delta)\big)
        \quad\text{or}\quad \arg\max_{\lVert\delta\rVert \le \varepsilon}
            \lVert \mu(x + \delta) - \mu(x) \rVert_2,

    by ``steps`` of projected gradient ascent from ``restarts`` random starts in the ball (the
    best kept per point); the radius is ``eps`` :math:`\cdot` ``scale`` (:func:`data_scale`
    gives a process's scale); the first step has length ``step_size`` (in the units of
    ``eps``; default a quarter of it; per coordinate for :math:`\ell_\infty`) and the steps
    shrink by a half cosine to zero at the last. For :math:`\ell_\infty` a convex objective
    has local maxima at several corners of the cube: hence several starts (module docstring).
    For a linear-Gaussian encoder :math:`q = \mathcal N(Ax + b, \Sigma)` and the :math:`\ell_2`
    ball the answer is :math:`\varepsilon` times the top eigenvector of
    :math:`A^\top \Sigma^{-1} A` (``"kl"``, value :math:`\varepsilon^2 \lambda_{\max} / 2`) or of
    :math:`A^\top A` (``"mean"``, value :math:`\varepsilon \sqrt{\lambda_{\max}}`).

    :param scale: the unit of ``eps`` and ``step_size`` (1: the data's own units).
    :param corners: for ``linf``, improve every restart's best point by a greedy search over
        the cube's corners (single sign flips; module docstring).
    :param norm: ``"linf"`` (every coordinate moves by at most the radius) or ``"l2"``.
    :param num_samples: Monte Carlo draws per point during the search, where the KL or the
        mean has no closed form.
    :param eval_samples: fresh draws for the reported divergence in that case.
    :returns: ``{"delta" (N, D), "x_adv" (N, D), "divergence" (N,)`` (the KL in nats, or the
        mean shift in units of z, at the found ``delta``), ``"mean"``, ``"stderr"`` (over
        points), ``"estimate"`` (the same as an :class:`~pyrofail.estimate.Estimate`),
        ``"found_by" (N,)`` (restarts within 0.1% of the best: 1 says more starts may find
        more), ``"method"`` (``"closed_form"``, ``"exact mean"`` or ``"monte_carlo<S>"``),
        ``"objective", "norm", "eps", "scale", "radius", "steps", "step_size"`` (absolute),
        ``"restarts"}``.

    Example:
        >>> import pyro.distributions as dist
        >>> from pyrofail.guides import AmortizedGuide
        >>> class Linear(AmortizedGuide):  # q(z | x) = N(2 x, 1)
        ...     latent_dim, data_dim, restarts = 1, 1, None
        ...     def distribution(self, x):
        ...         return dist.Normal(2 * x, 1.0).to_event(1)
        >>> out = attack_encoder(Linear(), torch.zeros(3, 1), 0.1, steps=20)
        >>> round(out["mean"], 4)  # (2 * 0.1)^2 / 2
        0.02
    """
    x, radius, norm, steps, restarts = _check(guide, x, eps, scale, norm, steps, restarts)
    step = _step(step_size, scale, radius)
    check_choice("objective", objective, OBJECTIVES)
    num_samples = check_positive_int("num_samples", num_samples)
    eval_samples = check_positive_int("eval_samples", eval_samples)
    search = _Divergence(guide, x, objective, num_samples, seed, copies=restarts)
    delta, _, found_by = _pgd(search, x, radius, norm, steps, step, restarts, seed, corners)
    x_adv = x + delta
    if search.method.startswith("monte_carlo"):
        value = encoder_shift(guide, x, x_adv, objective=objective, num_samples=eval_samples, seed=seed + 1)
    else:
        with torch.no_grad():
            value = _Divergence(guide, x, objective, num_samples, seed)(x_adv)
    mean, se = _summary(value)
    return {
        "delta": delta,
        "x_adv": x_adv,
        "divergence": value.detach(),
        "mean": mean,
        "stderr": se,
        "method": search.method
        if not search.method.startswith("monte_carlo")
        else f"monte_carlo{eval_samples}",
        "estimate": Estimate.of(value.detach()),
        "found_by": found_by,
        "objective": objective,
        "norm": norm,
        "eps": float(eps),
        "scale": float(scale),
        "radius": radius,
        "steps": steps,
        "step_size": step,
        "restarts": restarts,
        "corners": corners and norm == "linf",
    }


def attack_denoiser(
    model,
    guide,
    x,
    eps: float,
    *,
    scale: float = 1.0,
    norm: str = "linf",
    steps: int = 100,
    step_size: float | None = None,
    restarts: int = RESTARTS,
    corners: bool = True,
    seed: int = 0,
    num_samples: int = ATTACK_SAMPLES,
) -> dict:
    r"""The worst perturbation for the VAE used as a de-noiser: maximise over the ball

    .. math::

        e(x, \delta) = \big\lVert f_\theta\big(\mu_\phi(x + \delta)\big) - x \big\rVert_2,

    the distance from the clean point to the reconstruction of the perturbed one
    (:math:`f_\theta` = ``model.mean``, :math:`\mu_\phi` the mean of ``guide.distribution``, a
    Monte Carlo mean with fixed noise where it has none), by the projected gradient ascent of
    :func:`attack_encoder`. A good de-noiser maps the whole ball back near :math:`x`.

    :returns: ``{"delta", "x_adv", "error" (N,)`` (under attack), ``"clean_error" (N,)``
        (:math:`e(x, 0)`), ``"mean", "stderr"`` (of ``error``), ``"clean_mean",
        "clean_stderr"``, ``"increase", "increase_stderr"`` (the paired difference, also as
        the :class:`~pyrofail.estimate.Estimate` ``"increase_estimate"``), ``"found_by"``, and
        the attack's settings (``"eps", "scale", "radius"``, ...) ``}``.

    Example:
        >>> import pyro.distributions as dist
        >>> from pyrofail.guides import AmortizedGuide
        >>> from pyrofail.models import LinearGaussian
        >>> truth = LinearGaussian(latent_dim=1, data_dim=1, weight=[[1.0]], noise_scale=1.0)
        >>> class Half(AmortizedGuide):  # the exact posterior N(x / 2, 1 / 2)
        ...     latent_dim, data_dim, restarts = 1, 1, None
        ...     def distribution(self, x):
        ...         return dist.Normal(x / 2, 0.5**0.5).to_event(1)
        >>> out = attack_denoiser(truth, Half(), torch.zeros(2, 1), 0.2, steps=10)
        >>> round(out["mean"], 4)  # |f(mu(x + d)) - x| = |d| / 2
        0.1
    """
    x, radius, norm, steps, restarts = _check(guide, x, eps, scale, norm, steps, restarts)
    step = _step(step_size, scale, radius)
    num_samples = check_positive_int("num_samples", num_samples)

    def error_against(clean_x):
        def error(x_adv):
            mu = _mean(guide.distribution(x_adv), num_samples, seed)
            return (model.mean(mu) - clean_x).norm(dim=-1)

        return error

    delta, _, found_by = _pgd(
        error_against(x.repeat(restarts, 1)), x, radius, norm, steps, step, restarts, seed, corners
    )
    error = error_against(x)
    with torch.no_grad():
        err, clean = error(x + delta), error(x)
    mean, se = _summary(err)
    clean_mean, clean_se = _summary(clean)
    inc, inc_se = _summary(err - clean)
    return {
        "delta": delta,
        "x_adv": x + delta,
        "error": err,
        "clean_error": clean,
        "mean": mean,
        "stderr": se,
        "clean_mean": clean_mean,
        "clean_stderr": clean_se,
        "increase": inc,
        "increase_stderr": inc_se,
        "increase_estimate": Estimate.paired(err, clean),
        "found_by": found_by,
        "norm": norm,
        "eps": float(eps),
        "scale": float(scale),
        "radius": radius,
        "steps": steps,
        "step_size": step,
        "restarts": restarts,
        "corners": corners and norm == "linf",
    }
