r"""How well a fitted BNN+LV predicts, and how much its inferred input noise depends on the input.

:func:`evaluate` returns, each as an :class:`Estimate` (value and standard error over points):

* ``test_ll``: :math:`\frac1M\sum_m \log p(y_m \mid x_m, \mathcal D)`, latents from the prior
  (:func:`pyrofail.bnn.predictive.predictive_summary`);
* ``rmse``: :math:`\big(\frac1M \sum_m (y_m - \hat y_m)^2\big)^{1/2}` of the predictive mean, with the
  delta-method error :math:`\mathrm{se}(\overline{e^2}) / (2\,\mathrm{RMSE})`;
* ``coverage90``: the share of test outputs inside the central 90% predictive interval (PIT in
  :math:`[0.05, 0.95]`);
* ``train_ll``: the training points' reconstruction density with their *inferred* latents;
  ``train_ll_prior_z``: the training points' density with latents from the prior, as at test;
* ``gap``: ``train_ll - test_ll`` (independent sets: errors add in quadrature): how much better
  the training data are reconstructed with their inferred latents than new data are
  predicted (Yacoby et al. 2022). Since a reconstruction has only the output noise
  :math:`\sigma` left, the gap is large for any fit whose latents carry the noise at all; it is
  the comparison across methods, and ``train_ll_prior_z`` against ``test_ll`` (the ordinary
  overfitting gap), that say more;
* ``hsic``: the unbiased HSIC (:mod:`pyrofail.bnn.hsic`) between the standardised training
  inputs (kernel: the mean of Gaussians at ``INPUT_SCALES`` of the median distance) and draws
  of their latents (Gaussian, median heuristic), the Gram matrix of the latents averaged over
  ``hsic_draws`` joint draws (HSIC is linear in it), with its jackknife error. Zero in
  expectation when the latents are exact posterior draws under the true model
  (:mod:`pyrofail.bnn.noise_constrained` says why);
* ``r2_z``: :func:`dependence_r2`, how much of :math:`\mathbb E[z_n]` the input predicts;
* ``z_sd``: the mean posterior standard deviation of the latents over :math:`s_z` (1: the
  latents are at their prior; near 0: each is pinned down by its point).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from pyrofail.bnn.hsic import INPUT_SCALES, gaussian_gram, hsic_jackknife
from pyrofail.bnn.posterior import BNNPosterior
from pyrofail.errors import UsageError, check_positive_int
from pyrofail.estimate import Estimate

__all__ = ["Estimate", "Evaluation", "dependence_r2", "evaluate", "mean_estimate"]


def mean_estimate(v: torch.Tensor) -> Estimate:
    r"""The mean of per-point values and its standard error :math:`s / \sqrt n`.

    Example:
        >>> print(mean_estimate(torch.tensor([1.0, 2.0, 3.0])))  # sd 1 over sqrt(3)
        2.000 ± 0.577
    """
    v = v.detach().double()
    return Estimate(float(v.mean()), float(v.std() / math.sqrt(v.numel())) if v.numel() > 1 else float("nan"))


def dependence_r2(
    x: torch.Tensor, m: torch.Tensor, *, seed: int = 0, neighbours: int | None = None, folds: int = 5
) -> Estimate:
    r"""Out-of-fold :math:`R^2` of predicting :math:`m_n` (the latent means) from :math:`x_n`,

    .. math::

        R^2 = 1 - \frac{\sum_n (m_n - \hat m_{-n}(x_n))^2}{\sum_n (m_n - \bar m)^2},

    :math:`\hat m_{-n}` a ``neighbours``-nearest-neighbour regression (scikit-learn's
    ``KNeighborsRegressor``; by default :math:`\min(25, \max(5, N/20))` neighbours) fitted on the
    other ``folds - 1`` folds (shuffled ``KFold``, seeded).
    Near 0 (or below) when the input says nothing about the latent's mean, 1 when it determines
    it. The error is the delta method on the ratio of the two per-point means.

    Example:
        >>> x = torch.linspace(-2, 2, 200)[:, None]
        >>> dependence_r2(x, x[:, 0].sin()).mean > 0.95
        True
    """
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.neighbors import KNeighborsRegressor

    x_np, m_np = x.detach().double().numpy(), m.detach().double().numpy()
    n = len(m_np)
    folds = check_positive_int("folds", folds, minimum=2)
    if n < 2 * folds:
        raise UsageError(f"{n} points are too few for a {folds}-fold R^2; expected at least {2 * folds}")
    k = min(25, max(5, n // 20)) if neighbours is None else check_positive_int("neighbours", neighbours)
    k = min(k, n - n // folds - 1)
    cv = KFold(folds, shuffle=True, random_state=int(seed))
    pred = cross_val_predict(KNeighborsRegressor(n_neighbors=k), x_np, m_np, cv=cv)
    a = torch.as_tensor((m_np - pred) ** 2)
    b = torch.as_tensor((m_np - m_np.mean()) ** 2)
    abar, bbar = a.mean(), b.mean()
    if bbar <= 0:
        return Estimate(float("nan"), float("nan"))
    # delta method for 1 - abar / bbar
    grad = torch.stack((-1 / bbar, abar / bbar**2))
    cov = torch.cov(torch.stack((a, b))) / n
    return Estimate(float(1 - abar / bbar), float((grad @ cov @ grad).clamp_min(0).sqrt()))


@dataclass
class Evaluation:
    """``estimates``: name -> :class:`Estimate`; ``per_point``: the per-point values behind them
    (``test_ll``, ``test_pit``, ``test_sq_err``, ``train_ll``, ``train_ll_prior_z``), for paired
    comparisons on the same points."""

    estimates: dict[str, Estimate]
    per_point: dict[str, torch.Tensor] = field(repr=False)

    def __getitem__(self, name: str) -> Estimate:
        return self.estimates[name]

    def as_dict(self) -> dict[str, dict[str, float]]:
        """JSON-ready: name -> ``{"mean", "stderr"}``."""
        return {k: {"mean": e.mean, "stderr": e.stderr} for k, e in self.estimates.items()}


@torch.no_grad()
def evaluate(
    result: BNNPosterior,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    seed: int = 0,
    num_z: int = 50,
    num_draws: int = 200,
    hsic_draws: int = 20,
) -> Evaluation:
    r"""The metrics of the module docstring for a fitted BNN+LV on test data ``x_test`` ``(M, D)``,
    ``y_test`` ``(M,)`` (user's units). The predictive densities use ``num_draws`` of the
    weight draws (evenly spaced) with ``num_z`` prior latents each; the reconstruction density
    uses every joint draw; ``hsic_draws`` joint draws of the training latents enter the HSIC.

    Example:
        >>> from pyrofail.bnn.inference import infer
        >>> x = torch.linspace(-2, 2, 30)[:, None]; y = x[:, 0].sin()
        >>> post = infer(x, y, hidden=(4,), steps=20, num_draws=10)
        >>> ev = evaluate(post, x, y, num_z=5)
        >>> sorted(ev.estimates)[:4]
        ['coverage90', 'gap', 'hsic', 'r2_z']
    """
    hsic_draws = check_positive_int("hsic_draws", hsic_draws)
    thinned = result.thin(check_positive_int("num_draws", num_draws))
    test = thinned.predictive_summary(x_test, y_test, num_z=num_z, seed=seed)
    train_prior = thinned.predictive_summary(result.x_train, result.y_train, num_z=num_z, seed=seed + 1)
    train = result.train_log_likelihood()
    sq_err = (test["mean"] - y_test) ** 2
    inside = ((test["pit"] >= 0.05) & (test["pit"] <= 0.95)).double()

    est = {"test_ll": mean_estimate(test["log_lik"])}
    mse = mean_estimate(sq_err)
    rmse = math.sqrt(mse.mean)
    est["rmse"] = Estimate(rmse, mse.stderr / (2 * rmse) if rmse > 0 else float("nan"))
    est["coverage90"] = mean_estimate(inside)
    est["train_ll"] = mean_estimate(train)
    est["train_ll_prior_z"] = mean_estimate(train_prior["log_lik"])
    est["gap"] = Estimate(
        est["train_ll"].mean - est["test_ll"].mean,
        math.hypot(est["train_ll"].stderr, est["test_ll"].stderr),
    )

    x_std = result.scaling.x(result.x_train)
    k_x = gaussian_gram(x_std, scales=INPUT_SCALES)
    draws = result.z[: min(hsic_draws, result.num_draws)]
    l_mean = torch.stack([gaussian_gram(z) for z in draws]).mean(0)
    est["hsic"] = Estimate(*hsic_jackknife(k_x, l_mean))
    est["r2_z"] = dependence_r2(x_std, result.z_mean, seed=seed)
    est["z_sd"] = mean_estimate(result.z.std(0) / result.network.latent_scale)
    per_point = {
        "test_ll": test["log_lik"],
        "test_pit": test["pit"],
        "test_sq_err": sq_err,
        "train_ll": train,
        "train_ll_prior_z": train_prior["log_lik"],
    }
    return Evaluation(est, per_point)
