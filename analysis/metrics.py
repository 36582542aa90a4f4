r"""Metrics of a fitted model and guide: the quantities of Table 1 of Yacoby et al. (2020).

Every function is pure, ``(model, guide, x, ...) -> result``, and draws its Monte Carlo
samples from a private seed, so that the same call gives the same numbers.

* test :math:`-\mathrm{ELBO}`: mean over points of the per-point ELBO estimate
  (:func:`pyrofail.bounds.elbo`), with its Monte Carlo standard error;
* :math:`-\log p_\theta(x)`: exact quadrature for :math:`K \le 2`
  (:mod:`pyrofail.analysis.reference.grid`), otherwise importance sampling from the guide;
* :math:`\operatorname{avg}_i I(x; z_i)`: see :func:`mutual_information`;
* MLEO: :math:`\mathrm{KL}(p_{GT}(x) \,\|\, p_\theta(x))` on fresh ground-truth samples.
"""

from __future__ import annotations

import math

import torch

from pyrofail import bounds, quadrature
from pyrofail.analysis.reference import grid

__all__ = [
    "aggregate_posterior_kl",
    "log_px",
    "mleo",
    "mutual_information",
    "negative_elbo",
    "summarize",
    "total_mutual_information",
]


def negative_elbo(model, guide, x, num_samples: int = 100, seed: int = 0) -> dict:
    r"""Test :math:`-\mathrm{ELBO}`: ``{"mean", "stderr", "per_point"}``; ``stderr`` is the
    Monte Carlo error of the mean (the spread over data points is not an error)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        est = bounds.elbo(model, guide, x, num_samples)
    mean, err = est.mean()
    return {"mean": -float(mean), "stderr": float(err), "per_point": -est.value}


def log_px(
    model,
    x,
    *,
    guide=None,
    method: str = "auto",
    num_samples: int = 5000,
    seed: int = 0,
    target_stderr: float | None = None,
    max_samples: int = 2**17,
) -> dict:
    r""":math:`\log p_\theta(x)` per point: ``{"per_point", "stderr", "method"}``.

    ``method="grid"`` integrates exactly (:math:`K \le 2`, error below 1e-4 nats);
    ``"is"`` importance-samples from ``guide`` with ``num_samples`` draws per point (its
    delta-method error understates the truth when the guide misses posterior mass);
    ``"auto"`` picks the grid whenever it applies. With ``target_stderr``, importance sampling
    doubles its draws until the standard error of the mean over the points is below it (or
    ``max_samples`` is reached).
    """
    if method == "auto":
        method = "grid" if model.latent_dim <= grid.MAX_K else "is"
    if method == "grid":
        lp = grid.grid_posterior(model, x).log_px.to(x.dtype)
        return {"per_point": lp, "stderr": torch.zeros_like(lp), "method": "grid"}
    if guide is None:
        raise ValueError("importance sampling of log p(x) needs a guide")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        est = bounds.iwae(model, guide, x, num_samples)
        # more draws (doubling, each time on fresh ones) until the mean's error is small enough
        while target_stderr is not None and _mean_stderr(est) > target_stderr and num_samples < max_samples:
            more = bounds.iwae(model, guide, x, num_samples)
            est = _pool(est, more)
            num_samples *= 2
    return {"per_point": est.value, "stderr": est.stderr, "method": f"is{num_samples}"}


def _mean_stderr(est) -> float:
    return float(est.stderr.double().pow(2).sum().sqrt() / est.stderr.shape[-1])


def _pool(a, b):
    """Two importance-sampling estimates of log p(x) with equal draws as one with twice as many
    (the log of the mean of the two means; the relative variance halves)."""
    value = torch.logaddexp(a.value, b.value) - math.log(2)
    rel = (
        0.5
        * (
            torch.expm1(2 * (a.value - value)).add(1) * a.stderr**2
            + torch.expm1(2 * (b.value - value)).add(1) * b.stderr**2
        )
        / 2
    )
    return type(a)(value, rel.sqrt())


def _normal_marginals(q):
    """Per-dimension ``(loc, scale)`` ``(N, K)`` of a Gaussian guide distribution, or None."""
    base = q
    while hasattr(base, "base_dist") and type(base).__name__ == "Independent":
        base = base.base_dist
    if isinstance(base, torch.distributions.Normal):
        return base.loc, base.scale
    if isinstance(base, torch.distributions.MultivariateNormal):
        return base.loc, base.covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt()
    return None


def _normal_log_prob(v, loc, scale):
    return -0.5 * ((v - loc) / scale) ** 2 - torch.log(scale) - 0.5 * math.log(2 * math.pi)


class _GaussianMarginals:
    """Exact per-coordinate marginals of a Gaussian (diagonal or full) ``q``."""

    method = "exact (Gaussian marginals)"

    def __init__(self, loc, scale):
        self.loc, self.scale = loc, scale  # (N, K)

    def sample(self, s: int) -> torch.Tensor:
        eps = torch.randn(s, *self.loc.shape, dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + self.scale * eps

    def own(self, z):  # log q(z_i | x_n) for samples z (S, N, K) of point n
        return _normal_log_prob(z, self.loc, self.scale)

    def every(self, v):  # log q(v_i | x_m) for flat samples v (B, K) against every m: (B, N, K)
        return _normal_log_prob(v[:, None, :], self.loc[None], self.scale[None])


class _MixtureMarginals(_GaussianMarginals):
    r"""Exact per-coordinate marginals of a mixture of diagonal Gaussians:
    :math:`q(z_i \mid x) = \sum_c \pi_c\, \mathcal N(z_i; \mu_{ci}, \sigma_{ci}^2)`."""

    method = "exact (mixture marginals)"

    def __init__(self, q):
        self.q = q
        self.locs, self.scales, self.log_w = q.locs, q.scales, q.log_weights  # (N,C,K), (N,C)

    def sample(self, s: int) -> torch.Tensor:
        return self.q.sample((s,))

    def own(self, z):  # (S, N, K)
        lp = _normal_log_prob(z.unsqueeze(-2), self.locs, self.scales)  # (S, N, C, K)
        return torch.logsumexp(lp + self.log_w[..., None], -2)

    def every(self, v):  # (B, K) -> (B, N, K)
        lp = _normal_log_prob(v[:, None, None, :], self.locs[None], self.scales[None])  # (B, N, C, K)
        return torch.logsumexp(lp + self.log_w[None, ..., None], -2)


class _ExactOneDimensional(_GaussianMarginals):
    """K = 1: the marginal is the distribution itself, evaluated with its own ``log_prob``."""

    method = "exact (K = 1 log_prob)"

    def __init__(self, q):
        self.q = q
        self.n = q.batch_shape[-1]

    def sample(self, s: int) -> torch.Tensor:
        return self.q.sample((s,))

    def own(self, z):
        return self.q.log_prob(z)[..., None]

    def every(self, v):
        return self.q.log_prob(v[:, None, :].expand(-1, self.n, -1))[..., None]


class _LeaveOneOutKDE(_GaussianMarginals):
    r"""Other families with :math:`K > 1`: each coordinate's marginal
    :math:`q(z_i \mid x_n)` by a Gaussian kernel estimate on ``T`` draws, evaluated at those
    draws leaving the draw itself out, with the bandwidth per point and coordinate that
    maximises the leave-one-out likelihood over a grid of multiples of a robust Silverman width
    (:math:`0.9 \min(\hat s, \mathrm{IQR}/1.34)\, T^{-1/5}`; Silverman 1986, sec. 3.4). The
    aggregate uses the same kernels (all ``T`` of every other point)."""

    method = "leave-one-out kernel estimate"
    FACTORS = (0.25, 0.5, 1.0, 2.0)

    def __init__(self, q, t: int):
        self.draws = q.sample((t,))  # (T, N, K)
        d = self.draws
        sd = d.std(0)
        iqr = d.quantile(0.75, 0) - d.quantile(0.25, 0)
        base = 0.9 * torch.minimum(sd, iqr / 1.34).clamp_min(1e-6) * t ** (-0.2)  # (N, K)
        best, best_ll = base, None
        for f in self.FACTORS:
            ll = self._loo(d, base * f).mean(0)  # (N, K)
            if best_ll is None:
                best, best_ll = base * f, ll
            else:
                better = ll > best_ll
                best, best_ll = torch.where(better, base * f, best), torch.where(better, ll, best_ll)
        self.width = best

    @staticmethod
    def _loo(d, width):
        t = d.shape[0]
        lp = _normal_log_prob(d[:, None], d[None], width)  # (T, T, N, K)
        eye = torch.eye(t, dtype=torch.bool, device=d.device)[..., None, None]
        lp = lp.masked_fill(eye, -math.inf)
        return torch.logsumexp(lp, 1) - math.log(t - 1)

    def sample(self, s: int) -> torch.Tensor:
        return self.draws[:s]

    def own(self, z):  # z are the first S draws: leave each out of its own estimate
        s = z.shape[0]
        lp = _normal_log_prob(z[:, None], self.draws[None], self.width)  # (S, T, N, K)
        eye = torch.eye(s, self.draws.shape[0], dtype=torch.bool, device=z.device)[..., None, None]
        lp = lp.masked_fill(eye, -math.inf)
        return torch.logsumexp(lp, 1) - math.log(self.draws.shape[0] - 1)

    def every(self, v):  # (B, K) -> (B, N, K), all T kernels of every point
        lp = _normal_log_prob(v[:, None, None, :], self.draws[None], self.width[None, None])  # (B, T, N, K)
        return torch.logsumexp(lp, 1) - math.log(self.draws.shape[0])


def marginals(q, kernel_samples: int = 64):
    """The per-coordinate marginals of a guide distribution ``q`` (batch ``(N,)``), exact where
    the family allows it (Gaussian, mixture of diagonal Gaussians, any family at K = 1)."""
    normal = _normal_marginals(q)
    if normal is not None:
        return _GaussianMarginals(*normal)
    if all(hasattr(q, a) for a in ("locs", "scales", "log_weights")):
        return _MixtureMarginals(q)
    if q.event_shape[-1] == 1:
        return _ExactOneDimensional(q)
    return _LeaveOneOutKDE(q, kernel_samples)


@torch.no_grad()
def mutual_information(
    guide,
    x,
    num_samples: int = 10,
    seed: int = 0,
    kernel_samples: int = 64,
    budget: int = 2**24,
    per_point: bool = False,
) -> torch.Tensor:
    r"""Encoder-side mutual information per latent dimension, :math:`I(x; z_i)` ``(K,)``.

    .. math::

        I(x; z_i) = \mathbb E_{x}\, \mathbb E_{q(z_i \mid x)}
            \big[\log q(z_i \mid x) - \log q(z_i)\big], \qquad
        q(z_i) = \frac1N \sum_{m=1}^N q(z_i \mid x_m),

    with :math:`x` the given points (the empirical data distribution) and ``num_samples``
    draws of :math:`z_i` per point; the aggregate posterior :math:`q(z_i)` is the exact
    mixture over the same points (Hoffman & Johnson 2016, "ELBO surgery"), so the estimate is
    at most :math:`\log N`. The marginals :math:`q(z_i \mid x)` are exact for Gaussian and
    mixture-of-Gaussian guides and for any guide at :math:`K = 1`; otherwise a leave-one-out
    kernel estimate from ``kernel_samples`` draws per point (:func:`marginals`). Yacoby et al.
    report :math:`\operatorname{avg}_i I(x; z_i)`.

    :param per_point: return the contribution of every point ``(N, K)`` (their mean is the
        estimate), for standard errors and paired comparisons.

    Example:
        >>> import pyro.distributions as dist, torch
        >>> class Channel:  # q(z | x) = N(x, 0.1^2): I(x; z) = 0.5 log(1 + 1 / 0.01) for x ~ N(0, 1)
        ...     def distribution(self, x):
        ...         return dist.Normal(x, 0.1).to_event(1)
        >>> x = torch.randn(2000, 1, generator=torch.Generator().manual_seed(0))
        >>> round(float(mutual_information(Channel(), x, num_samples=20)[0]), 1)
        2.3
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        q = guide.distribution(x)
        marg = marginals(q, kernel_samples)
        z = marg.sample(num_samples)  # (S, N, K)
        log_cond = marg.own(z)
        s, n, k = z.shape
        flat = z.reshape(-1, k)
        chunk = max(1, budget // (n * k * (kernel_samples if isinstance(marg, _LeaveOneOutKDE) else 4)))
        log_agg = torch.cat(
            [torch.logsumexp(marg.every(flat[i : i + chunk]), 1) for i in range(0, len(flat), chunk)]
        )
        log_agg = log_agg.reshape(s, n, k) - math.log(n)
    contributions = (log_cond - log_agg).mean(0)  # (N, K)
    return contributions if per_point else contributions.mean(0)


@torch.no_grad()
def total_mutual_information(guide, x, num_samples: int = 4, seed: int = 0, budget: int = 2**22) -> dict:
    r"""The encoder's mutual information with the whole code,
    :math:`I(x; z) = \mathbb E_x \mathbb E_{q(z \mid x)}[\log q(z \mid x) - \log q(z)]`,
    :math:`q(z) = \frac1N \sum_m q(z \mid x_m)` (the aggregate over the given points, so at
    most :math:`\log N`), with every density the guide's own ``log_prob``. Returns
    ``{"mean", "stderr"}`` (the standard error over points).

    Example:
        >>> import pyro.distributions as dist, torch
        >>> class Channel:  # q(z | x) = N(x, 0.1^2 I_2), x ~ N(0, I_2): I = log(1 + 100) = 4.62
        ...     def distribution(self, x):
        ...         return dist.Normal(x, 0.1).to_event(1)
        >>> x = torch.randn(3000, 2, generator=torch.Generator().manual_seed(0))
        >>> round(total_mutual_information(Channel(), x, num_samples=8)["mean"], 1)
        4.6
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        q = guide.distribution(x)
        z = q.sample((num_samples,))  # (S, N, K)
        own = q.log_prob(z)  # (S, N)
        s, n, k = z.shape
        flat = z.reshape(-1, k)
        chunk = max(1, budget // (n * k))
        agg = torch.cat(
            [
                torch.logsumexp(q.log_prob(flat[i : i + chunk, None, :].expand(-1, n, -1)), -1)
                for i in range(0, len(flat), chunk)
            ]
        ).reshape(s, n) - math.log(n)
    per_point = (own - agg).mean(0).double()
    return {"mean": float(per_point.mean()), "stderr": float(per_point.std() / math.sqrt(n))}


def mleo(
    truth,
    model,
    *,
    guide=None,
    n: int = 2000,
    seed: int = 12345,
    x=None,
    log_px_model=None,
    log_px_truth=None,
) -> dict:
    r"""Maximum-likelihood term :math:`\mathrm{KL}(p_{GT}(x) \| p_\theta(x))`.

    Estimated as the mean of :math:`\log p_{GT}(x) - \log p_\theta(x)` over ``n`` fresh draws
    from the ground truth (or over ``x`` if given), both densities by :func:`log_px`
    (``log_px_model`` and ``log_px_truth`` may pass them, already computed on ``x``). Returns
    ``{"mean", "stderr"}``; the standard error is that of the mean over draws.
    """
    if x is None:
        x = truth.sample(n, seed=seed).x
    lp_true = log_px_truth if log_px_truth is not None else log_px(truth, x)["per_point"]
    lp_model = log_px_model if log_px_model is not None else (log_px(model, x, guide=guide)["per_point"])
    diff = lp_true.double() - lp_model.double()
    return {
        "mean": float(diff.mean()),
        "stderr": float(diff.std() / math.sqrt(diff.numel())),
        "truth_log_px": float(lp_true.double().mean()),
    }


# grid spacing of the aggregate posterior by K: K = 2 on a coarser grid keeps (N, G) small
AGGREGATE_SPACING = {1: 0.02, 2: 0.1}


def aggregate_posterior_kl(model, x, batch: int = 256) -> float:
    r""":math:`\mathrm{KL}(\bar p \,\|\, p(z))`, :math:`\bar p(z) = \frac1N \sum_n p_\theta(z \mid
    x_n)`: how far the model's aggregate posterior on ``x`` is from its prior, by quadrature on
    a grid of nodes (K ≤ 2; the exact posteriors, not a guide's). A model whose codes respect
    the prior has 0 in the limit of many points drawn from it; LiBI's penalty drives it down
    (Yacoby, Pan & Doshi-Velez 2019).

    Example:
        >>> from pyrofail.models import LinearGaussian
        >>> m = LinearGaussian(latent_dim=1, data_dim=1, weight=[[2.0]], noise_scale=1.0)
        >>> q = m.posterior(torch.tensor([[1.0]]))  # N(0.4, 0.2): one point, one posterior
        >>> exact = 0.5 * (0.2 + 0.4**2 - 1 - math.log(0.2))
        >>> abs(aggregate_posterior_kl(m, torch.tensor([[1.0]])) - exact) < 1e-4
        True
    """
    k = model.latent_dim
    if k not in AGGREGATE_SPACING:
        raise ValueError(f"aggregate_posterior_kl needs K <= 2 (a grid); the model has K = {k}")
    # the nodes in the model's precision (an MLP decoder takes nothing else), masses in float64
    z, log_w = quadrature.nodes(k, AGGREGATE_SPACING[k], dtype=x.dtype, device=x.device)
    mass = torch.zeros(z.shape[0], dtype=torch.float64, device=x.device)
    with torch.no_grad():
        for start in range(0, x.shape[0], batch):
            lj = quadrature.log_joint_on_nodes(model, x[start : start + batch], z, log_w)
            mass += torch.softmax(lj.double(), -1).sum(0)
    post = mass / x.shape[0]
    z = z.double()
    log_prior = torch.log_softmax(-0.5 * (z * z).sum(-1) + log_w.double(), -1)
    keep = post > 0
    return float((post[keep] * (post[keep].log() - log_prior[keep])).sum())


def summarize(
    model,
    guide,
    x,
    *,
    truth=None,
    elbo_samples: int = 100,
    is_samples: int = 5000,
    seed: int = 0,
    per_point: bool = False,
    method: str = "auto",
    target_stderr: float | None = None,
):
    """The foundation metrics of one fitted model on test data ``x``, as plain floats: test
    −ELBO, test −log p(x), the PMO gap, avg_i I(x; z_i), for K ≤ 2 the aggregate posterior's
    KL from the prior (:func:`aggregate_posterior_kl`) and, with ``truth``, the MLEO.

    With ``per_point=True`` it returns ``(summary, values)``, ``values`` holding every point's
    ``neg_elbo``, ``log_px``, ``mutual_information`` (``(N, K)``) and, with ``truth``,
    ``truth_log_px``: what paired comparisons between fits on the same points need.
    """
    nelbo = negative_elbo(model, guide, x, elbo_samples, seed)
    lpx = log_px(
        model, x, guide=guide, method=method, num_samples=is_samples, seed=seed, target_stderr=target_stderr
    )
    lp = lpx["per_point"].double()
    mi_points = mutual_information(guide, x, seed=seed, per_point=True)
    mi = mi_points.mean(0)
    out = {
        "test_neg_elbo": nelbo["mean"],
        "test_neg_elbo_stderr": nelbo["stderr"],
        "test_neg_log_px": -float(lp.mean()),
        "test_neg_log_px_stderr": float(lpx["stderr"].double().pow(2).sum().sqrt() / x.shape[0]),
        "log_px_method": lpx["method"],
        "pmo_gap": float((lp + nelbo["per_point"].double()).mean()),
        "mutual_information": [float(v) for v in mi],
        "avg_mutual_information": float(mi.mean()),
    }
    values = {"neg_elbo": nelbo["per_point"], "log_px": lp, "mutual_information": mi_points}
    if lpx["method"] == "grid" and model.latent_dim in AGGREGATE_SPACING:
        out["aggregate_kl"] = aggregate_posterior_kl(model, x)
    if truth is not None:
        truth_lp = log_px(truth, x)["per_point"].double()
        kl = mleo(truth, model, x=x, log_px_model=lp, log_px_truth=truth_lp)
        out["mleo"] = kl["mean"]
        out["truth_neg_log_px"] = -kl["truth_log_px"]
        values["truth_log_px"] = truth_lp
    return (out, values) if per_point else out
