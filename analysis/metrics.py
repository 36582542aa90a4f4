r"""Metrics of a fitted model and guide: the quantities of Table 1 of Yacoby et al. (2020).

Every function is pure, ``(model, guide, x, ...) -> result``, and draws its Monte Carlo
samples from a private seed, so that the same call gives the same numbers.

* test :math:`-\mathrm{ELBO}`: mean over points of the per-point ELBO estimate
  (:func:`pyrofail.bounds.elbo`), with its Monte Carlo standard error;
* :math:`-\log p_\theta(x)`: exact quadrature for :math:`K \le 2`
  (:mod:`pyrofail.analysis.grid`), otherwise importance sampling from the guide;
* :math:`\operatorname{avg}_i I(x; z_i)`: see :func:`mutual_information`;
* MLEO: :math:`\mathrm{KL}(p_{GT}(x) \,\|\, p_\theta(x))` on fresh ground-truth samples.
"""

from __future__ import annotations

import math

import torch

from pyrofail import bounds
from pyrofail.analysis import grid

__all__ = ["log_px", "mleo", "mutual_information", "negative_elbo", "summarize"]


def negative_elbo(model, guide, x, num_samples: int = 100, seed: int = 0) -> dict:
    r"""Test :math:`-\mathrm{ELBO}`: ``{"mean", "stderr", "per_point"}``; ``stderr`` is the
    Monte Carlo error of the mean (the spread over data points is not an error)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        est = bounds.elbo(model, guide, x, num_samples)
    mean, err = est.mean()
    return {"mean": -float(mean), "stderr": float(err), "per_point": -est.value}


def log_px(model, x, *, guide=None, method: str = "auto", num_samples: int = 5000, seed: int = 0) -> dict:
    r""":math:`\log p_\theta(x)` per point: ``{"per_point", "stderr", "method"}``.

    ``method="grid"`` integrates exactly (:math:`K \le 2`, error below 1e-4 nats);
    ``"is"`` importance-samples from ``guide`` with ``num_samples`` draws per point (its
    delta-method error understates the truth when the guide misses posterior mass);
    ``"auto"`` picks the grid whenever it applies.
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
    return {"per_point": est.value, "stderr": est.stderr, "method": f"is{num_samples}"}


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


@torch.no_grad()
def mutual_information(
    guide, x, num_samples: int = 10, seed: int = 0, kernel_samples: int = 64, budget: int = 2**24
) -> torch.Tensor:
    r"""Encoder-side mutual information per latent dimension, :math:`I(x; z_i)` ``(K,)``.

    .. math::

        I(x; z_i) = \mathbb E_{x}\, \mathbb E_{q(z_i \mid x)}
            \big[\log q(z_i \mid x) - \log q(z_i)\big], \qquad
        q(z_i) = \frac1N \sum_{m=1}^N q(z_i \mid x_m),

    with :math:`x` the given points (the empirical data distribution) and ``num_samples``
    draws of :math:`z_i` per point; the aggregate posterior :math:`q(z_i)` is the exact
    mixture over the same points (Hoffman & Johnson 2016, "ELBO surgery"), so the estimate is
    at most :math:`\log N`. Gaussian families use their exact marginals; other families a
    Gaussian kernel estimate of each marginal from ``kernel_samples`` draws per point
    (Silverman's bandwidth). Yacoby et al. report :math:`\operatorname{avg}_i I(x; z_i)`.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        q = guide.distribution(x)
        normal = _normal_marginals(q)
        if normal is not None:
            loc, scale = normal  # (N, K)
            z = loc + scale * torch.randn(num_samples, *loc.shape, dtype=loc.dtype, device=loc.device)
            log_cond = _normal_log_prob(z, loc, scale)  # (S, N, K)
            centres, widths = loc, scale
        else:
            draws = q.sample((kernel_samples,))  # (T, N, K)
            z = draws[:num_samples]
            sd = draws.std(0).clamp_min(1e-6)
            widths = 1.06 * sd * kernel_samples ** (-0.2)  # Silverman, per point and dim
            centres = draws  # kernel centres (T, N, K)
            log_cond = _kde_log_prob(z, centres, widths)
        n = x.shape[0]
        log_agg = _aggregate_log_prob(z, centres, widths, normal is not None, budget) - math.log(n)
    return (log_cond - log_agg).mean((0, 1))


def _kde_log_prob(v, centres, widths):
    # v (S, N, K); centres (T, N, K); widths (N, K): the kernel estimate of q(v | x_n)
    lp = _normal_log_prob(v[:, None], centres[None], widths)  # (S, T, N, K)
    return torch.logsumexp(lp, 1) - math.log(centres.shape[0])


def _aggregate_log_prob(z, centres, widths, gaussian: bool, budget: int):
    """``log sum_m q(z_i | x_m)`` for every sample ``z`` ``(S, N, K)``, chunked over samples."""
    s, n, k = z.shape
    flat = z.reshape(-1, k)
    out = []
    per = n if gaussian else n * centres.shape[0]
    chunk = max(1, budget // (per * k))
    for i in range(0, flat.shape[0], chunk):
        v = flat[i : i + chunk]
        if gaussian:
            lp = _normal_log_prob(v[:, None, :], centres[None], widths[None])  # (c, N, K)
            out.append(torch.logsumexp(lp, 1))
        else:
            t = centres.shape[0]
            lp = _normal_log_prob(v[:, None, None, :], centres[None], widths[None, None])
            out.append(torch.logsumexp(lp.reshape(v.shape[0], t * n, k), 1) - math.log(t))
    return torch.cat(out).reshape(s, n, k)


def mleo(truth, model, *, guide=None, n: int = 2000, seed: int = 12345, x=None, log_px_model=None) -> dict:
    r"""Maximum-likelihood term :math:`\mathrm{KL}(p_{GT}(x) \| p_\theta(x))`.

    Estimated as the mean of :math:`\log p_{GT}(x) - \log p_\theta(x)` over ``n`` fresh draws
    from the ground truth (or over ``x`` if given), both densities by :func:`log_px`
    (``log_px_model`` may pass the model's, already computed on ``x``). Returns
    ``{"mean", "stderr"}``; the standard error is that of the mean over draws.
    """
    if x is None:
        x = truth.sample(n, seed=seed).x
    lp_true = log_px(truth, x)["per_point"]
    lp_model = log_px_model if log_px_model is not None else (log_px(model, x, guide=guide)["per_point"])
    diff = lp_true.double() - lp_model.double()
    return {
        "mean": float(diff.mean()),
        "stderr": float(diff.std() / math.sqrt(diff.numel())),
        "truth_log_px": float(lp_true.double().mean()),
    }


def summarize(
    model, guide, x, *, truth=None, elbo_samples: int = 100, is_samples: int = 5000, seed: int = 0
) -> dict:
    """The foundation metrics of one fitted model on test data ``x``, as plain floats."""
    nelbo = negative_elbo(model, guide, x, elbo_samples, seed)
    lpx = log_px(model, x, guide=guide, num_samples=is_samples, seed=seed)
    lp = lpx["per_point"].double()
    mi = mutual_information(guide, x, seed=seed)
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
    if truth is not None:
        kl = mleo(truth, model, x=x, log_px_model=lp)
        out["mleo"] = kl["mean"]
        out["truth_neg_log_px"] = -kl["truth_log_px"]
    return out
