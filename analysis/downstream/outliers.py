r"""Outlier detection with a VAE's :math:`\log p_\theta(x)`: scores, AUROC and a known contamination.

A VAE used as a density model flags a point as an outlier when its :math:`\log p_\theta(x)` is
low. How well that works depends on how close :math:`p_\theta(x)` is to the truth where the data
are *not*: a model that spreads mass between clusters (the MFG-VAE on ``clusters``, Yacoby et
al. 2020, arXiv:2007.07124) misses outliers that fall there. This module gives

* :func:`outlier_scores`: :math:`\log p_\theta(x)` per point (the score, higher = more typical);
* :func:`auroc`: the area under the ROC curve of such scores, with its standard error;
* :func:`off_manifold`: outliers of a zoo process with a documented, exact definition, so
  that the truth's own :math:`\log p(x)` is the ceiling a learned model is read against.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from pyrofail.analysis import metrics
from pyrofail.analysis.reference import grid
from pyrofail.errors import UsageError, check_choice, check_positive_float, check_positive_int
from pyrofail.estimate import Estimate

__all__ = ["auroc", "auroc_difference", "off_manifold", "outlier_scores"]

SE_METHODS = ("delong", "hanley_mcneil")
# held-out inliers that set the outlier threshold, and the largest number of candidate rounds
REFERENCE_POINTS = 2000
MAX_ROUNDS = 20


def _vector(name: str, value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().double().numpy()
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != 1 or arr.size < 2:
        raise UsageError(f"{name} has shape {arr.shape}; expected a 1-D array of at least 2 scores")
    if not np.isfinite(arr).all():
        raise UsageError(f"{name} has non-finite values; expected finite scores")
    return arr


def _delong_components(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components by the midrank algorithm of Sun & Xu (2014, IEEE Signal
    Processing Letters 21(11)): per inlier the share of outliers it beats (ties 1/2), per
    outlier the share of inliers that beat it; the AUC is the mean of either."""
    from scipy.stats import rankdata

    m, n = pos.size, neg.size
    both = rankdata(np.concatenate([pos, neg]))
    v10 = (both[:m] - rankdata(pos)) / n
    v01 = 1.0 - (both[m:] - rankdata(neg)) / m
    return v10, v01


def _delong_variance(pos: np.ndarray, neg: np.ndarray) -> float:
    """DeLong, DeLong & Clarke-Pearson (1988) variance of the AUC."""
    v10, v01 = _delong_components(pos, neg)
    return float(np.var(v10, ddof=1) / pos.size + np.var(v01, ddof=1) / neg.size)


def _hanley_mcneil_variance(a: float, m: int, n: int) -> float:
    """Hanley & McNeil (1982, Radiology 143(1), eq. 1 and 2), exponential approximation."""
    q1, q2 = a / (2.0 - a), 2.0 * a * a / (1.0 + a)
    return (a * (1 - a) + (m - 1) * (q1 - a * a) + (n - 1) * (q2 - a * a)) / (m * n)


def auroc(scores_inliers, scores_outliers, *, stderr: str = "delong") -> dict:
    r"""Area under the ROC curve of scores where **higher means more typical** (a log density):

    .. math::

        \mathrm{AUROC} = P(s_{in} > s_{out}) + \tfrac12 P(s_{in} = s_{out}),

    from ``sklearn.metrics.roc_auc_score`` with the inliers as the positive class: 1 when every
    inlier scores above every outlier, 0.5 when the scores do not tell them apart.

    :param stderr: ``"delong"`` (default; DeLong, DeLong & Clarke-Pearson 1988, "Comparing the
        areas under two or more correlated receiver operating characteristic curves: a
        nonparametric approach", Biometrics 44(3), the unbiased U-statistic variance) or
        ``"hanley_mcneil"`` (Hanley & McNeil 1982, "The meaning and use of the area under a
        receiver operating characteristic (ROC) curve", Radiology 143(1), which assumes
        exponential score distributions).
    :returns: ``{"auroc", "stderr", "stderr_method", "n_inliers", "n_outliers"}``.

    Example:
        >>> out = auroc([3.0, 4.0, 5.0], [0.0, 1.0, 2.0])
        >>> out["auroc"], out["stderr"]
        (1.0, 0.0)
    """
    from sklearn.metrics import roc_auc_score

    pos, neg = _vector("scores_inliers", scores_inliers), _vector("scores_outliers", scores_outliers)
    check_choice("stderr", stderr, SE_METHODS)
    labels = np.concatenate([np.ones(pos.size), np.zeros(neg.size)])
    a = float(roc_auc_score(labels, np.concatenate([pos, neg])))
    if stderr == "delong":
        var = _delong_variance(pos, neg)
    else:
        var = _hanley_mcneil_variance(a, pos.size, neg.size)
    return {
        "auroc": a,
        "stderr": math.sqrt(max(var, 0.0)),
        "stderr_method": stderr,
        "n_inliers": int(pos.size),
        "n_outliers": int(neg.size),
    }


def auroc_difference(inliers_a, outliers_a, inliers_b, outliers_b) -> Estimate:
    r"""AUROC of scorer ``a`` minus that of scorer ``b`` on the **same** inliers and outliers
    (row ``i`` of ``inliers_a`` and of ``inliers_b`` score the same point), with DeLong's
    paired standard error (DeLong, DeLong & Clarke-Pearson 1988, Biometrics 44(3), Section 3):
    with the structural components :math:`V_{10}^{r}(x_i)` (share of outliers inlier
    :math:`x_i` beats under scorer :math:`r`) and :math:`V_{01}^{r}(y_j)`,

    .. math::

        \operatorname{Var}(\hat A_a - \hat A_b) = \frac{S_{10}^{aa} + S_{10}^{bb} - 2 S_{10}^{ab}}{m}
            + \frac{S_{01}^{aa} + S_{01}^{bb} - 2 S_{01}^{ab}}{n},

    :math:`S` their sample covariances over the :math:`m` inliers and :math:`n` outliers, i.e.
    the variances of the per-point differences of the components. Two scorers of the same
    points are correlated; adding their separate errors in quadrature ignores the
    covariance and overstates the error of the difference.

    :returns: an :class:`~pyrofail.estimate.Estimate` (``n`` = inliers + outliers).

    Example:
        >>> d = auroc_difference([3.0, 4.0, 5.0], [0.0, 1.0, 4.5], [3.0, 4.0, 5.0], [0.0, 1.0, 2.0])
        >>> round(d.mean, 4), d.verdict()
        (-0.2222, 'tie')
    """
    pa, na = _vector("inliers_a", inliers_a), _vector("outliers_a", outliers_a)
    pb, nb = _vector("inliers_b", inliers_b), _vector("outliers_b", outliers_b)
    if pa.size != pb.size or na.size != nb.size:
        raise UsageError(
            f"scorer a has {pa.size} inliers and {na.size} outliers, scorer b {pb.size} and {nb.size}; "
            "expected the same points scored by both"
        )
    a10, a01 = _delong_components(pa, na)
    b10, b01 = _delong_components(pb, nb)
    d10, d01 = a10 - b10, a01 - b01
    var = float(np.var(d10, ddof=1) / pa.size + np.var(d01, ddof=1) / na.size)
    return Estimate(float(a10.mean() - b10.mean()), math.sqrt(max(var, 0.0)), int(pa.size + na.size))


def outlier_scores(
    model, x, guide=None, *, method: str = "auto", num_samples: int = 5000, seed: int = 0
) -> dict:
    r"""The score of every row of ``x``: :math:`\log p_\theta(x)` of ``model`` (higher = more
    typical), exact by quadrature for :math:`K \le 2`, otherwise by importance sampling from
    ``guide`` with ``num_samples`` draws per point (:func:`pyrofail.analysis.metrics.log_px`).

    :returns: ``{"per_point" (N,), "stderr" (N,)`` (Monte Carlo error; 0 on the grid),
        ``"method"}``.

    Example:
        >>> from pyrofail.models import LinearGaussian
        >>> truth = LinearGaussian()
        >>> x = torch.zeros(1, 3)
        >>> s = outlier_scores(truth, x)["per_point"]
        >>> bool(torch.allclose(s, truth.marginal().log_prob(x), atol=1e-4))
        True
    """
    check_choice("method", method, ("auto", "grid", "is"))
    if model.latent_dim > grid.MAX_K and method != "grid" and guide is None:
        raise UsageError(
            f"log p(x) of a model with latent_dim={model.latent_dim} > {grid.MAX_K} needs a "
            "guide for importance sampling; pass guide="
        )
    x = torch.as_tensor(x)
    if x.dim() != 2 or x.shape[-1] != model.data_dim:
        raise UsageError(f"x has shape {tuple(x.shape)}; expected (points, {model.data_dim})")
    return metrics.log_px(model, x, guide=guide, method=method, num_samples=num_samples, seed=seed)


def off_manifold(
    truth,
    n: int,
    *,
    seed: int = 0,
    margin: float = 0.25,
    quantile: float = 0.01,
    reference=None,
    reference_points: int = REFERENCE_POINTS,
) -> dict:
    r"""``n`` outliers of the latent-Gaussian process ``truth``: points of the data's bounding
    box that the truth itself calls improbable.

    1. *Reference inliers*: ``reference`` ``(M, D)`` if given, else
       ``truth.sample(reference_points, seed=seed + 1)`` (held out from data drawn with
       ``seed``), and their exact :math:`\log p(x)`.
    2. *Threshold*: :math:`\tau` = the ``quantile`` (default 1%) of those log densities.
    3. *Candidates*: uniform on the reference's bounding box enlarged by ``margin`` times its
       width on every side (default a quarter), from a generator seeded with ``seed``.
    4. *Outliers*: the first ``n`` candidates with :math:`\log p(x) < \tau`, in rounds of
       candidates until there are ``n``.

    Why this definition: uniform points of the enlarged box are near the data in every
    coordinate, so they test what a model believes *between and around* the data rather than
    far away, where every model is easily right; the rejection step makes them outliers
    by the truth's own standard, so that the exact :math:`\log p(x)` separates them from the
    truth's samples with an AUROC of at least :math:`1 - q` in expectation (a fresh inlier
    falls below :math:`\tau` with probability :math:`q`). A learned model's AUROC below that
    ceiling measures where its :math:`p_\theta(x)` puts mass the truth does not.
    :math:`\log p(x)` is exact by quadrature, so ``truth`` needs :math:`K \le 2`.

    :returns: ``{"x" (n, D), "log_px" (n,), "threshold", "acceptance"`` (share of candidates
        kept), ``"box"`` (2, D) (lower and upper corners), ``"quantile", "margin", "seed"}``.

    Example:
        >>> from pyrofail.models import LinearGaussian
        >>> out = off_manifold(LinearGaussian(), 5, reference_points=200)
        >>> out["x"].shape, bool((out["log_px"] < out["threshold"]).all())
        (torch.Size([5, 3]), True)
    """
    n = check_positive_int("n", n)
    margin = float(margin)
    if not (margin >= 0 and math.isfinite(margin)):
        raise UsageError(f"margin={margin!r} is not allowed; expected a finite number >= 0")
    quantile = check_positive_float("quantile", quantile)
    if quantile >= 1:
        raise UsageError(f"quantile={quantile!r} is not allowed; expected a number in (0, 1)")
    if truth.latent_dim > grid.MAX_K:
        raise UsageError(
            f"off_manifold needs the exact log p(x) of the truth, latent_dim <= {grid.MAX_K}; "
            f"got {truth.latent_dim}"
        )
    if reference is None:
        reference = truth.sample(check_positive_int("reference_points", reference_points), seed=seed + 1).x
    reference = torch.as_tensor(reference)
    if reference.dim() != 2 or reference.shape[-1] != truth.data_dim or reference.shape[0] < 2:
        raise UsageError(
            f"reference has shape {tuple(reference.shape)}; expected (points >= 2, {truth.data_dim})"
        )
    ref_lp = metrics.log_px(truth, reference, method="grid")["per_point"].double()
    tau = float(torch.quantile(ref_lp, quantile))
    lo, hi = reference.amin(0), reference.amax(0)
    width = hi - lo
    lo, hi = lo - margin * width, hi + margin * width
    gen = torch.Generator().manual_seed(int(seed))
    kept_x, kept_lp, drawn = [], [], 0
    batch = 2 * n
    for _ in range(MAX_ROUNDS):
        u = torch.rand(batch, truth.data_dim, generator=gen, dtype=reference.dtype)
        cand = lo + u * (hi - lo)
        lp = metrics.log_px(truth, cand, method="grid")["per_point"].double()
        drawn += batch
        keep = lp < tau
        kept_x.append(cand[keep])
        kept_lp.append(lp[keep])
        have = sum(t.shape[0] for t in kept_x)
        if have >= n:
            break
        rate = max(have / drawn, 1.0 / drawn)
        batch = int(min(max(2 * (n - have) / rate, n), 50 * n))
    else:
        raise UsageError(
            f"only {have} of {n} candidates fell below the {quantile} quantile of log p(x) after "
            f"{drawn} draws; raise margin or quantile"
        )
    return {
        "x": torch.cat(kept_x)[:n],
        "log_px": torch.cat(kept_lp)[:n],
        "threshold": tau,
        "acceptance": have / drawn,
        "box": torch.stack((lo, hi)),
        "quantile": quantile,
        "margin": margin,
        "seed": seed,
    }
