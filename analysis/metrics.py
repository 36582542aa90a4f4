r"""Metrics of a fitted model and guide: the quantities of Table 1 of Yacoby et al. (2020).

Every function is pure, ``(model, guide, x, ...) -> result``, and draws its Monte Carlo
samples from a private seed, so that the same call gives the same numbers.

* test :math:`-\mathrm{ELBO}`: mean over points of the per-point ELBO estimate
  (:func:`pyrofail.bounds.elbo`), with its Monte Carlo standard error;
* :math:`-\log p_\theta(x)`: exact quadrature for :math:`K \le 2`
  (:mod:`pyrofail.analysis.reference.grid`), otherwise importance sampling from the guide;
* :math:`\operatorname{avg}_i I(x; z_i)`: :func:`mutual_information`
  (:mod:`pyrofail.analysis.information`);
* MLEO: :math:`\mathrm{KL}(p_{GT}(x) \,\|\, p_\theta(x))` on fresh ground-truth samples.

**Memory.** Every function streams over the points in chunks sized from ``budget``, the
worker's memory budget (:mod:`pyrofail.memory`, default 1 GiB), so its peak does not grow with
the number of points; the random draws belong to fixed blocks of points
(:func:`pyrofail.bounds.block_seed`), and the quadrature runs on fixed blocks of
:data:`GRID_POINTS` points, so the budget never changes the numbers.
"""

from __future__ import annotations

import math

import torch

from pyrofail import bounds, memory, quadrature
from pyrofail.analysis.information import marginals, mutual_information, total_mutual_information
from pyrofail.analysis.reference import grid

__all__ = [
    "GRID_POINTS",
    "aggregate_posterior_kl",
    "grid_log_px",
    "grid_pairs",
    "log_px",
    "marginals",
    "mleo",
    "mutual_information",
    "negative_elbo",
    "summarize",
    "total_mutual_information",
]

# Points per call of the quadrature: fixed, so that a box widened for one point (the grid
# rebuilds its mesh when a posterior reaches the edge) touches the same neighbours whatever the
# budget; the mesh build this repeats costs a few per cent of the integration.
GRID_POINTS = 2048
# float64 (point, node) tensors the quadrature holds at once per pair
_GRID_TEMPORARIES = 4
# The quadrature keeps a small result per inner chunk in lists; if its (point, node) temporaries
# were heap-sized (below glibc's 32 MiB mmap threshold), those results would pin the freed
# temporaries in the heap (pyrofail.memory): measured 4.2 GB at 10,000 points (K = 2) with
# 16 MiB temporaries, against 0.5 GB with these. So each float64 temporary is kept above it.
_GRID_MIN_PAIRS = (33 * 2**20) // 8


def grid_pairs(budget=None) -> int:
    """(point, node) pairs per inner chunk of the quadrature within ``budget``, but never so few
    that its temporaries drop below glibc's mmap threshold (``_GRID_MIN_PAIRS``)."""
    return max(_GRID_MIN_PAIRS, memory.chunk_bytes(budget) // (8 * _GRID_TEMPORARIES))


def negative_elbo(model, guide, x, num_samples: int = 100, seed: int = 0, budget=None) -> dict:
    r"""Test :math:`-\mathrm{ELBO}`: ``{"mean", "stderr", "per_point"}``; ``stderr`` is the
    Monte Carlo error of the mean (the spread over data points is not an error)."""
    est = bounds.elbo(model, guide, x, num_samples, budget=budget, seed=seed)
    mean, err = est.mean()
    return {"mean": -float(mean), "stderr": float(err), "per_point": -est.value}


def grid_log_px(model, x, budget=None, **options) -> torch.Tensor:
    r""":math:`\log p(x)` per point by quadrature (:func:`pyrofail.analysis.reference.grid.grid_posterior`,
    float64), :data:`GRID_POINTS` points a call, the (point, node) pairs of each call bounded
    by ``budget`` (:func:`grid_pairs`); ``options`` go to ``grid_posterior``.

    Example:
        >>> from pyrofail.models import LinearGaussian
        >>> m = LinearGaussian(latent_dim=1, data_dim=1, weight=[[2.0]], noise_scale=1.0)
        >>> x = torch.tensor([[0.0], [1.0]])
        >>> exact = torch.distributions.Normal(0.0, 5**0.5).log_prob(x[:, 0])
        >>> bool(torch.allclose(grid_log_px(m, x).float(), exact, atol=1e-4))
        True
    """
    pairs = grid_pairs(budget)
    out = torch.empty(x.shape[0], dtype=torch.float64)
    for lo, hi in memory.steps(x.shape[0], GRID_POINTS):
        out[lo:hi] = grid.grid_posterior(model, x[lo:hi], budget=pairs, **options).log_px.cpu()
    return out.to(x.device)


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
    budget=None,
) -> dict:
    r""":math:`\log p_\theta(x)` per point: ``{"per_point", "stderr", "method"}``.

    ``method="grid"`` integrates exactly (:math:`K \le 2`, error below 1e-4 nats;
    :func:`grid_log_px`); ``"is"`` importance-samples from ``guide`` with ``num_samples``
    draws per point (:func:`pyrofail.bounds.iwae`; its delta-method error understates the
    truth when the guide misses posterior mass); ``"auto"`` picks the grid whenever it
    applies. With ``target_stderr``, importance sampling doubles its draws until the standard
    error of the mean over the points is below it (or ``max_samples`` is reached); round
    :math:`r` draws from ``block_seed(seed, r)``.
    """
    if method == "auto":
        method = "grid" if model.latent_dim <= grid.MAX_K else "is"
    if method == "grid":
        lp = grid_log_px(model, x, budget).to(x.dtype)
        return {"per_point": lp, "stderr": torch.zeros_like(lp), "method": "grid"}
    if guide is None:
        raise ValueError("importance sampling of log p(x) needs a guide")
    est = bounds.iwae(model, guide, x, num_samples, budget=budget, seed=bounds.block_seed(seed, 0))
    rounds = 1
    # more draws (doubling, each time on fresh ones) until the mean's error is small enough
    while target_stderr is not None and _mean_stderr(est) > target_stderr and num_samples < max_samples:
        more = bounds.iwae(model, guide, x, num_samples, budget=budget, seed=bounds.block_seed(seed, rounds))
        est = _pool(est, more)
        num_samples *= 2
        rounds += 1
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
    budget=None,
) -> dict:
    r"""Maximum-likelihood term :math:`\mathrm{KL}(p_{GT}(x) \| p_\theta(x))`.

    Estimated as the mean of :math:`\log p_{GT}(x) - \log p_\theta(x)` over ``n`` fresh draws
    from the ground truth (or over ``x`` if given), both densities by :func:`log_px`
    (``log_px_model`` and ``log_px_truth`` may pass them, already computed on ``x``). Returns
    ``{"mean", "stderr"}``; the standard error is that of the mean over draws.
    """
    if x is None:
        x = truth.sample(n, seed=seed).x
    lp_true = log_px_truth if log_px_truth is not None else log_px(truth, x, budget=budget)["per_point"]
    if log_px_model is None:
        log_px_model = log_px(model, x, guide=guide, budget=budget)["per_point"]
    lp_model = log_px_model
    diff = lp_true.double() - lp_model.double()
    return {
        "mean": float(diff.mean()),
        "stderr": float(diff.std() / math.sqrt(diff.numel())),
        "truth_log_px": float(lp_true.double().mean()),
    }


# grid spacing of the aggregate posterior by K: K = 2 on a coarser grid keeps (N, G) small
AGGREGATE_SPACING = {1: 0.02, 2: 0.1}


def aggregate_posterior_kl(model, x, budget=None) -> float:
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
    # per (point, node): the log joint's terms, its float64 copy and the softmax (a decoder
    # that is not latent-Gaussian runs once per pair; a latent-Gaussian one once per node)
    latent_gaussian = hasattr(model, "mean") and hasattr(model, "_log_sigma")
    per_pair = 4 * x.element_size() + 16 + (0 if latent_gaussian else memory.model_row_bytes(model))
    batch = memory.rows(budget, z.shape[0] * per_pair)
    with torch.no_grad():
        for start, stop in memory.steps(x.shape[0], batch):
            lj = quadrature.log_joint_on_nodes(model, x[start:stop], z, log_w)
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
    budget=None,
):
    """The foundation metrics of one fitted model on test data ``x``, as plain floats: test
    −ELBO, test −log p(x), the PMO gap, avg_i I(x; z_i), for K ≤ 2 the aggregate posterior's
    KL from the prior (:func:`aggregate_posterior_kl`) and, with ``truth``, the MLEO.

    With ``per_point=True`` it returns ``(summary, values)``, ``values`` holding every point's
    ``neg_elbo``, ``log_px``, ``mutual_information`` (``(N, K)``) and, with ``truth``,
    ``truth_log_px``: what paired comparisons between fits on the same points need.

    ``budget``: the worker's memory budget (:mod:`pyrofail.memory`), for every part.
    """
    nelbo = negative_elbo(model, guide, x, elbo_samples, seed, budget=budget)
    lpx = log_px(
        model,
        x,
        guide=guide,
        method=method,
        num_samples=is_samples,
        seed=seed,
        target_stderr=target_stderr,
        budget=budget,
    )
    lp = lpx["per_point"].double()
    mi_points = mutual_information(guide, x, seed=seed, per_point=True, budget=budget)
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
        out["aggregate_kl"] = aggregate_posterior_kl(model, x, budget)
    if truth is not None:
        truth_lp = log_px(truth, x, budget=budget)["per_point"].double()
        kl = mleo(truth, model, x=x, log_px_model=lp, log_px_truth=truth_lp)
        out["mleo"] = kl["mean"]
        out["truth_neg_log_px"] = -kl["truth_log_px"]
        values["truth_log_px"] = truth_lp
    return (out, values) if per_point else out
