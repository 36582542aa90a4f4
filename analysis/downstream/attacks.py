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
of every restart is kept, per point.

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

import copy
import math

import torch

from pyrofail.analysis.reference.grid import _Integrand, build_mesh
from pyrofail.errors import UsageError, check_choice, check_positive_float, check_positive_int

__all__ = ["attack_denoiser", "attack_encoder", "encoder_shift", "posterior_shift"]

NORMS = ("linf", "l2")
OBJECTIVES = ("kl", "mean")
# The first step is a quarter of the radius and the steps shrink by a half cosine to zero at the
# last: large enough early to cross the ball and leave a poor start, small enough late to settle
# on the maximiser (a fixed step of Madry et al.'s 2.5 eps / steps stalls a few per cent short of
# the exact answer on a linear-Gaussian encoder, whatever the number of steps).
STEP_FRACTION = 0.25
# Monte Carlo draws of z per point: during the search (fixed) and for the reported value (fresh)
ATTACK_SAMPLES = 64
EVAL_SAMPLES = 1000


# ----------------------------------------------------------------------------------------
# projected gradient ascent


def _project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    length = delta.norm(dim=-1, keepdim=True)
    return delta * (eps / length.clamp_min(torch.finfo(delta.dtype).tiny)).clamp(max=1.0)


def _ascent_step(delta, grad, step: float, norm: str):
    if norm == "linf":
        return delta + step * grad.sign()
    length = grad.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(grad.dtype).tiny)
    return delta + step * grad / length


def _random_start(shape, eps: float, norm: str, gen: torch.Generator, dtype, device):
    """Uniform in the ``linf`` cube or the ``l2`` ball of radius ``eps`` (per row)."""
    if norm == "linf":
        u = torch.rand(shape, generator=gen, dtype=dtype) * 2 - 1
        return (eps * u).to(device)
    direction = torch.randn(shape, generator=gen, dtype=dtype)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    radius = torch.rand(shape[:-1] + (1,), generator=gen, dtype=dtype) ** (1.0 / shape[-1])
    return (eps * radius * direction).to(device)


def _pgd(objective, x: torch.Tensor, eps: float, norm: str, steps: int, step_size, restarts: int, seed: int):
    """Per-point maximiser of ``objective(x_adv) -> (N,)`` over the ball, and its value."""
    step = STEP_FRACTION * eps if step_size is None else check_positive_float("step_size", step_size)
    gen = torch.Generator().manual_seed(int(seed))
    best_delta = torch.zeros_like(x)
    best_value = torch.full(x.shape[:-1], -math.inf, dtype=x.dtype, device=x.device)

    def keep(delta, value):
        better = value > best_value
        best_value[better] = value[better]
        best_delta[better] = delta[better]

    for _ in range(restarts):
        delta = _random_start(x.shape, eps, norm, gen, x.dtype, x.device)
        for t in range(steps):
            size = step * 0.5 * (1.0 + math.cos(math.pi * t / steps))
            delta.requires_grad_(True)
            with torch.enable_grad():
                value = objective(x + delta)
                (grad,) = torch.autograd.grad(value.sum(), delta)
            delta = delta.detach()
            keep(delta, value.detach())
            delta = _project(_ascent_step(delta, grad, size, norm), eps, norm)
        with torch.no_grad():
            keep(delta, objective(x + delta))
    return best_delta, best_value, step


def _check(guide, x, eps, norm, steps, restarts):
    if getattr(guide, "restarts", None) is not None:
        raise UsageError("the attack needs an un-batched guide; pick one restart (take_restart) first")
    x = torch.as_tensor(x)
    if x.dim() != 2 or x.shape[-1] != guide.data_dim:
        raise UsageError(f"x has shape {tuple(x.shape)}; expected (points, {guide.data_dim})")
    return (
        x.detach(),
        check_positive_float("eps", eps),
        check_choice("norm", norm, NORMS),
        check_positive_int("steps", steps),
        check_positive_int("restarts", restarts),
    )


def _summary(values: torch.Tensor) -> tuple[float, float]:
    v = values.detach().double()
    se = float(v.std() / math.sqrt(v.numel())) if v.numel() > 1 else float("nan")
    return float(v.mean()), se


# ----------------------------------------------------------------------------------------
# the encoder's divergence


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
    """``x_adv -> (N,)``: the objective against the clean ``q(z | x)``, fixed at construction."""

    def __init__(self, guide, x, objective: str, num_samples: int, seed: int):
        self.guide, self.objective, self.num_samples, self.seed = guide, objective, num_samples, seed
        with torch.no_grad():
            self.q0 = guide.distribution(x)
            if objective == "mean":
                self.mu0 = _mean(self.q0, num_samples, seed)
                self.method = "exact mean" if self._exact_mean() else f"monte_carlo{num_samples}"
            elif _is_gaussian(self.q0):
                self.method = "closed_form"
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    self.z0 = self.q0.sample((num_samples,))
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
    norm: str = "linf",
    objective: str = "kl",
    steps: int = 100,
    step_size: float | None = None,
    restarts: int = 1,
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

    by ``steps`` of projected gradient ascent from ``restarts`` random starts in the ball; the
    first step has length ``step_size`` (default :math:`\varepsilon / 4`; per coordinate for
    :math:`\ell_\infty`) and the steps shrink by a half cosine to zero at the last. For
    :math:`\ell_\infty` a convex objective has local maxima at several corners of the cube:
    use ``restarts`` > 1 there.
    For a linear-Gaussian encoder :math:`q = \mathcal N(Ax + b, \Sigma)` and the :math:`\ell_2`
    ball the answer is :math:`\varepsilon` times the top eigenvector of
    :math:`A^\top \Sigma^{-1} A` (``"kl"``, value :math:`\varepsilon^2 \lambda_{\max} / 2`) or of
    :math:`A^\top A` (``"mean"``, value :math:`\varepsilon \sqrt{\lambda_{\max}}`).

    :param norm: ``"linf"`` (every coordinate moves by at most ``eps``) or ``"l2"``.
    :param num_samples: Monte Carlo draws per point during the search, where the KL or the
        mean has no closed form.
    :param eval_samples: fresh draws for the reported divergence in that case.
    :returns: ``{"delta" (N, D), "x_adv" (N, D), "divergence" (N,)`` (the KL in nats, or the
        mean shift in units of z, at the found ``delta``), ``"mean"``, ``"stderr"`` (over
        points), ``"method"`` (``"closed_form"``, ``"exact mean"`` or ``"monte_carlo<S>"``),
        ``"objective", "norm", "eps", "steps", "step_size", "restarts"}``.

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
    x, eps, norm, steps, restarts = _check(guide, x, eps, norm, steps, restarts)
    check_choice("objective", objective, OBJECTIVES)
    num_samples = check_positive_int("num_samples", num_samples)
    eval_samples = check_positive_int("eval_samples", eval_samples)
    search = _Divergence(guide, x, objective, num_samples, seed)
    delta, _, step = _pgd(search, x, eps, norm, steps, step_size, restarts, seed)
    x_adv = x + delta
    if search.method.startswith("monte_carlo"):
        value = encoder_shift(guide, x, x_adv, objective=objective, num_samples=eval_samples, seed=seed + 1)
    else:
        with torch.no_grad():
            value = search(x_adv)
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
        "objective": objective,
        "norm": norm,
        "eps": eps,
        "steps": steps,
        "step_size": step,
        "restarts": restarts,
    }


def attack_denoiser(
    model,
    guide,
    x,
    eps: float,
    *,
    norm: str = "linf",
    steps: int = 100,
    step_size: float | None = None,
    restarts: int = 1,
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
        "clean_stderr"``, ``"increase", "increase_stderr"`` (the paired difference), and the
        attack's settings ``}``.

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
    x, eps, norm, steps, restarts = _check(guide, x, eps, norm, steps, restarts)
    num_samples = check_positive_int("num_samples", num_samples)

    def error(x_adv):
        mu = _mean(guide.distribution(x_adv), num_samples, seed)
        return (model.mean(mu) - x).norm(dim=-1)

    delta, _, step = _pgd(error, x, eps, norm, steps, step_size, restarts, seed)
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
        "norm": norm,
        "eps": eps,
        "steps": steps,
        "step_size": step,
        "restarts": restarts,
    }


# ----------------------------------------------------------------------------------------
# the ideal encoder


@torch.no_grad()
def posterior_shift(
    truth,
    x,
    x_adv,
    *,
    tol: float = 0.5,
    radius: float = 6.0,
    boundary_tol: float = 1e-4,
    budget: int = 2**24,
) -> dict:
    r""":math:`\mathrm{KL}\big(p(z \mid x) \,\|\, p(z \mid x_{adv})\big)` of ``truth``'s exact
    posterior for every row, by quadrature (:math:`K \le 2`): the shift an ideal encoder
    suffers at the same perturbed points.

    One mesh (:func:`pyrofail.analysis.reference.grid.build_mesh`) serves both points; with the
    integrand :math:`\ell_g(x) = \log p(x, z_g) + \log w_g` and its normalisation
    :math:`\pi_g(x) = \operatorname{softmax}_g \ell_g(x)`, the node weights cancel:

    .. math::

        \mathrm{KL} \approx \sum_g \pi_g(x)\, \big[\log \pi_g(x) - \log \pi_g(x_{adv})\big].

    When either posterior puts more than ``boundary_tol`` of its mass on the outermost ring of
    the mesh, the box is widened (as in :func:`pyrofail.analysis.reference.grid.grid_posterior`).

    :returns: ``{"per_point" (N,) float64, "mean", "stderr", "boundary_mass" (N,), "mesh_info"}``.

    Example:
        >>> from pyrofail.models import LinearGaussian
        >>> truth = LinearGaussian()
        >>> x = truth.sample(2, seed=0).x
        >>> float(posterior_shift(truth, x, x)["mean"])
        0.0
    """
    k = truth.latent_dim
    if k > 2:
        raise UsageError(f"posterior_shift needs latent_dim <= 2 (exact quadrature), got {k}")
    x, x_adv = torch.as_tensor(x), torch.as_tensor(x_adv)
    if x.shape != x_adv.shape or x.dim() != 2 or x.shape[-1] != truth.data_dim:
        raise UsageError(
            f"x {tuple(x.shape)} and x_adv {tuple(x_adv.shape)} must both be (points, {truth.data_dim})"
        )
    work = copy.deepcopy(truth).double()
    device = work.log_noise.device if hasattr(work, "log_noise") else x.device
    x, x_adv = x.to(device, torch.float64), x_adv.to(device, torch.float64)
    while True:
        mesh = build_mesh(
            work,
            radius=radius,
            refine_radius=min(5.0, radius - 0.5),
            tol=tol,
            dtype=torch.float64,
            device=device,
        )
        integrand = _Integrand(work, mesh)
        edge = (mesh.nodes.abs().amax(-1) >= mesh.radius - mesh.info["base_width"]).double()
        chunk = max(1, budget // mesh.nodes.shape[0])
        kl, boundary = [], []
        for start in range(0, x.shape[0], chunk):
            la = integrand(x[start : start + chunk]).log_softmax(-1)
            lb = integrand(x_adv[start : start + chunk]).log_softmax(-1)
            pa = la.exp()
            kl.append((pa * (la - lb)).sum(-1).clamp_min(0.0))
            boundary.append(torch.maximum(pa @ edge, lb.exp() @ edge))
        boundary = torch.cat(boundary)
        if float(boundary.max()) <= boundary_tol or radius >= 12:
            break
        radius += 3.0
    per_point = torch.cat(kl)
    mean, se = _summary(per_point)
    return {
        "per_point": per_point,
        "mean": mean,
        "stderr": se,
        "boundary_mass": boundary,
        "mesh_info": mesh.info,
    }
