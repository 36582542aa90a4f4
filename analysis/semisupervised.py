r"""Metrics of a semi-supervised (M2) fit against a labelled ground truth, exact at :math:`K = 1`.

For a learned :class:`~pyrofail.models.m2.LabelledLatentGaussian` :math:`p_\theta` with guide
:class:`~pyrofail.guides.m2.M2Guide`, against the truth :math:`p_{GT}` (``semicircle``), on test
points :math:`(x, y)` (Yacoby, Pan & Doshi-Velez, arXiv:2007.07124, semi-supervised failure):

* :func:`class_mleo`: :math:`\mathrm{KL}(p_{GT}(x \mid y) \,\|\, p_\theta(x \mid y))` per class and
  :func:`mleo`: :math:`\mathrm{KL}(p_{GT}(x) \,\|\, p_\theta(x))`, both by quadrature
  (:mod:`pyrofail.analysis.reference.grid`, on the model at each label) averaged over the test points;
* :func:`accuracy` of :math:`q(y \mid x)`, beside :func:`bayes_accuracy`, that of the truth's own
  :math:`p_{GT}(y \mid x)` (no classifier does better on average);
* :func:`curve_separation` and :func:`collapse`: how far apart the two learned class curves are;
* :func:`counterfactual_error`: the counterfactual :math:`f_\theta(\hat z, 1 - y)` against the
  truth's.

Every function is pure and seeded where it draws; the spread over test points gives the
standard errors (the quadrature itself is exact to about 1e-4 nats).
"""

from __future__ import annotations

import copy
import math

import torch

from pyrofail import bounds, memory
from pyrofail.analysis import metrics
from pyrofail.analysis.reference import grid
from pyrofail.errors import UsageError

__all__ = [
    "accuracy",
    "bayes_accuracy",
    "class_log_likelihoods",
    "class_mleo",
    "collapse",
    "counterfactual_error",
    "curve_separation",
    "log_px",
    "mleo",
    "quadrature_log_px",
    "summarize",
]


def quadrature_log_px(model, x: torch.Tensor, budget=None, **options) -> torch.Tensor:
    r""":math:`\log p(x)` per point by :func:`pyrofail.analysis.reference.grid.grid_posterior` (float64):
    for a :class:`~pyrofail.models.m2.LabelView`, :math:`\log p(x \mid y)`; for a labelled model
    itself, the label summed out (uniform mesh on its ``log_joint``). The points go through the
    quadrature in fixed blocks within ``budget`` (:func:`pyrofail.analysis.metrics.grid_log_px`).

    Example:
        >>> from pyrofail import zoo
        >>> truth = zoo.model("semicircle")
        >>> quadrature_log_px(truth.given_label(0), truth.sample(2, seed=0).x).dtype
        torch.float64
    """
    return metrics.grid_log_px(model, x, budget, **options)


def _check_model(model, name: str = "model") -> None:
    if getattr(model, "restarts", None) is not None:
        raise UsageError(f"{name} is batched (restarts={model.restarts}); use take_restart first")
    if not hasattr(model, "given_label") or getattr(model, "latent_dim", None) != 1:
        raise UsageError(
            f"{name} must be a labelled model (given_label) with latent_dim=1 for the exact metrics"
        )


def _mean_se(v: torch.Tensor) -> dict:
    v = v.double()
    n = v.numel()
    se = float(v.std() / math.sqrt(n)) if n > 1 else float("nan")
    return {"mean": float(v.mean()) if n else float("nan"), "stderr": se, "n": n}


def _labels(y, x) -> torch.Tensor:
    y = torch.as_tensor(y).long()
    if y.shape != x.shape[:1] or bool((y < 0).any()):
        raise UsageError(f"test labels y must be ({x.shape[0]},) classes >= 0 (every test point labelled)")
    return y


@torch.no_grad()
def class_log_likelihoods(model, x: torch.Tensor, budget=None) -> torch.Tensor:
    r""":math:`\log p(x \mid y = c)` for every class and point, ``(C, N)`` (float64), by quadrature
    of the model at each label (:meth:`~pyrofail.models.m2.LabelledLatentGaussian.given_label`).

    Example:
        >>> from pyrofail import zoo
        >>> truth = zoo.model("semicircle")
        >>> class_log_likelihoods(truth, truth.sample(3, seed=0).x).shape
        torch.Size([2, 3])
    """
    _check_model(model)
    return torch.stack([quadrature_log_px(model.given_label(c), x, budget) for c in range(model.num_classes)])


def _log_class_probs(model) -> torch.Tensor:
    return model.log_class_probs.detach().double().cpu()


@torch.no_grad()
def log_px(model, x: torch.Tensor, per_class: torch.Tensor | None = None, budget=None) -> torch.Tensor:
    r""":math:`\log p(x) = \log \sum_y p(y)\, p(x \mid y)` per point (float64), the label summed
    out exactly over the per-class quadratures (``per_class``, if already computed).

    Example:
        >>> from pyrofail import zoo
        >>> truth = zoo.model("semicircle")
        >>> log_px(truth, truth.sample(3, seed=0).x).shape
        torch.Size([3])
    """
    lc = class_log_likelihoods(model, x, budget) if per_class is None else per_class
    return torch.logsumexp(lc.cpu() + _log_class_probs(model)[:, None], 0)


def class_mleo(
    model, truth, x: torch.Tensor, y, *, truth_per_class=None, model_per_class=None, budget=None
) -> list[dict]:
    r"""Per class :math:`c`, :math:`\mathrm{KL}(p_{GT}(x \mid c) \,\|\, p_\theta(x \mid c))`
    estimated by the mean of :math:`\log p_{GT}(x \mid c) - \log p_\theta(x \mid c)` over the test
    points of class :math:`c` (which are draws from :math:`p_{GT}(x \mid c)`), each density by
    quadrature; ``[{"class", "mean", "stderr", "n"}]`` with the standard error over points.

    Example:
        >>> from pyrofail import zoo
        >>> truth = zoo.model("semicircle")
        >>> data = truth.sample(20, seed=0)
        >>> [round(r["mean"], 6) for r in class_mleo(truth, truth, data.x, data.y)]
        [0.0, 0.0]
    """
    y = _labels(y, x)
    lt = class_log_likelihoods(truth, x, budget) if truth_per_class is None else truth_per_class
    lm = class_log_likelihoods(model, x, budget) if model_per_class is None else model_per_class
    diff = (lt - lm).cpu()
    out = []
    for c in range(truth.num_classes):
        mine = (y == c).cpu()
        out.append({"class": c, **_mean_se(diff[c, mine])})
    return out


def mleo(model, truth, x: torch.Tensor, *, truth_per_class=None, model_per_class=None, budget=None) -> dict:
    r""":math:`\mathrm{KL}(p_{GT}(x) \,\|\, p_\theta(x))`, the mean of :math:`\log p_{GT}(x) -
    \log p_\theta(x)` over test points drawn from the truth, with the label summed out of both
    (:func:`log_px`): ``{"mean", "stderr", "n"}``.

    Example:
        >>> from pyrofail import zoo
        >>> truth = zoo.model("semicircle")
        >>> round(mleo(truth, truth, truth.sample(10, seed=0).x)["mean"], 6)
        0.0
    """
    lt = log_px(truth, x, truth_per_class, budget)
    lm = log_px(model, x, model_per_class, budget)
    return _mean_se(lt - lm)


@torch.no_grad()
def accuracy(guide, x: torch.Tensor, y) -> dict:
    r"""Accuracy of the classifier :math:`\arg\max_c q(y = c \mid x)`: ``{"mean", "stderr", "n"}``,
    with the binomial standard error :math:`\sqrt{a (1 - a) / N}`.

    Example:
        >>> import torch
        >>> from pyrofail.guides.m2 import M2Guide
        >>> acc = accuracy(M2Guide(1, 2, hidden=(4,)), torch.zeros(4, 2), torch.tensor([0, 1, 0, 1]))
        >>> 0 <= acc["mean"] <= 1
        True
    """
    y = _labels(y, x)
    if getattr(guide, "restarts", None) is not None:
        raise UsageError(f"guide is batched (restarts={guide.restarts}); use take_restart first")
    hit = (guide.classify(x).argmax(-1).cpu() == y.cpu()).double()
    a, n = float(hit.mean()), hit.numel()
    return {"mean": a, "stderr": math.sqrt(a * (1 - a) / n), "n": n}


@torch.no_grad()
def bayes_accuracy(truth, x: torch.Tensor, y, *, truth_per_class=None, budget=None) -> dict:
    r"""Accuracy of the Bayes classifier :math:`\arg\max_c p_{GT}(c)\, p_{GT}(x \mid c)` (exact,
    by quadrature): the ceiling for any :math:`q(y \mid x)` where the classes overlap.

    Example:
        >>> from pyrofail import zoo
        >>> truth = zoo.model("semicircle")
        >>> data = truth.sample(50, seed=0)
        >>> 0.5 < bayes_accuracy(truth, data.x, data.y)["mean"] < 1.0
        True
    """
    y = _labels(y, x)
    lc = class_log_likelihoods(truth, x, budget) if truth_per_class is None else truth_per_class
    pred = (lc.cpu() + _log_class_probs(truth)[:, None]).argmax(0)
    hit = (pred == y.cpu()).double()
    a, n = float(hit.mean()), hit.numel()
    return {"mean": a, "stderr": math.sqrt(a * (1 - a) / n), "n": n}


@torch.no_grad()
def curve_separation(model, num_nodes: int = 4000) -> float:
    r"""The mean distance between the two class curves at the same latent,

    .. math::

        \Delta = \mathbb E_{z \sim p(z)} \lVert f(z, 0) - f(z, 1) \rVert,

    by the midpoint rule in :math:`u = \Phi(z)` (deterministic). Why this distance: M2's
    counterfactuals pair the classes at the same :math:`z`, so this is the mean size of a
    counterfactual move; and it is invariant to every reparameterisation of :math:`z` that
    leaves the model unchanged (those preserve :math:`p(z) = \mathcal N(0, 1)`, e.g.
    :math:`z \mapsto -z`, and so the expectation). A distance between the curves' images
    (Hausdorff, Chamfer) would not do: on ``semicircle`` both true curves trace the same
    semicircle, so it is 0 for the truth and cannot tell it from a collapsed model.

    Example:
        >>> from pyrofail import zoo
        >>> round(curve_separation(zoo.model("semicircle")), 3)  # 2 E|cos(pi U^2)|
        1.458
    """
    _check_model(model)
    if model.num_classes != 2:
        raise UsageError(f"curve_separation needs two classes, the model has {model.num_classes}")
    work = copy.deepcopy(model).double()
    u = (torch.arange(num_nodes, dtype=torch.float64) + 0.5) / num_nodes
    z = (math.sqrt(2) * torch.erfinv(2 * u - 1)).unsqueeze(-1).to(work.log_noise.device)
    zeros = torch.zeros(num_nodes, dtype=torch.long, device=z.device)
    gap = work.curve(z, zeros) - work.curve(z, zeros + 1)
    return float(gap.norm(dim=-1).mean())


def collapse(model, truth, num_nodes: int = 4000) -> dict:
    r"""The learned model's :func:`curve_separation` against the truth's: ``{"learned",
    "truth", "ratio"}``; a ratio near 0 is a functional collapse (the two class curves on top of
    each other), near 1 the truth's separation.

    Example:
        >>> from pyrofail import zoo
        >>> truth = zoo.model("semicircle")
        >>> collapse(truth, truth)["ratio"]
        1.0
    """
    learned, true = curve_separation(model, num_nodes), curve_separation(truth, num_nodes)
    return {"learned": learned, "truth": true, "ratio": learned / true}


def _median_draw(draws: torch.Tensor, dim: int) -> torch.Tensor:
    return draws.median(dim).values


# points per block of the counterfactual draws: fixed, so that a point's draws never depend on
# how many points there are or on the budget
DRAW_POINTS = 256


def _draw_seed(seed: int, block: int) -> int:
    """The seed of a block of counterfactual draws: ``seed`` itself for the first block (a class
    of at most :data:`DRAW_POINTS` points draws as one quadrature call with ``seed`` would),
    ``block_seed(seed, b)`` for the others."""
    return seed if block == 0 else bounds.block_seed(seed, block)


def _grid_draws(model, x, num_draws: int, seed: int, budget) -> torch.Tensor:
    """``num_draws`` exact posterior draws per point ``(n, S, K)`` (quadrature, one call)."""
    return grid.grid_posterior(
        model, x, num_draws=num_draws, seed=seed, budget=metrics.grid_pairs(budget)
    ).draws


def _medians(draw, x, seed: int) -> torch.Tensor:
    """The median draw per point ``(n, K)``, block by block of :data:`DRAW_POINTS` points;
    ``draw(x_block, seed, start)`` gives the block's draws ``(n_b, S, K)``."""
    out = []
    for b, (lo, hi) in enumerate(memory.steps(x.shape[0], DRAW_POINTS)):
        out.append(_median_draw(draw(x[lo:hi], _draw_seed(seed, b), lo), 1))
    return torch.cat(out)


def _true_counterfactuals(truth, truth64, xc, c, other, num_draws, seed, budget):
    """The truth's counterfactual at its median posterior draw per point ``(n, D)`` and the
    mean distance of its counterfactual draws from it ``(n,)``, block by block (the draws of
    block ``b`` from ``_draw_seed(seed, b)``, as the model's)."""
    medians, spreads = [], []
    for b, (lo, hi) in enumerate(memory.steps(xc.shape[0], DRAW_POINTS)):
        draws = _grid_draws(truth.given_label(c), xc[lo:hi], num_draws, _draw_seed(seed, b), budget)
        z = _median_draw(draws, 1)
        cf = truth64.curve(z, other[lo:hi]).cpu()
        cf_draws = truth64.curve(draws, other[lo:hi, None]).cpu()
        medians.append(cf)
        spreads.append((cf_draws - cf[:, None]).norm(dim=-1).mean(-1))
    return torch.cat(medians), torch.cat(spreads)


@torch.no_grad()
def counterfactual_error(
    model,
    guide,
    x: torch.Tensor,
    y,
    truth,
    *,
    seed: int = 0,
    method: str = "model",
    num_draws: int = 401,
    budget=None,
) -> dict:
    r"""How far the learned counterfactual of each test point is from the true one.

    For a test point :math:`(x, y)` the true counterfactual ("this patient, had they been of the
    other type") is :math:`f_{GT}(z^*, 1 - y)` with :math:`z^* \sim p_{GT}(z \mid x, y)`; the
    learned one is :math:`f_\theta(\hat z, 1 - y)` with :math:`\hat z` inferred under the learned
    model. Both are summarised by the posterior **median** of :math:`z` (``num_draws`` seeded
    draws): at :math:`K = 1` the median commutes with the monotone maps
    :math:`z \mapsto f(z, 1 - y)` along the curve and with a flip :math:`z \mapsto -z` of the
    learned latent, so the error is the distance between the medians of the two counterfactual
    distributions, and it is exactly 0 for the truth itself. The error per point is
    :math:`\lVert f_\theta(\hat z, 1 - y) - f_{GT}(\tilde z^*, 1 - y) \rVert`, with
    :math:`\tilde z^*` the median of the truth's exact posterior (quadrature).

    :param method: how :math:`\hat z` is inferred. ``"model"`` (default): the median of the
        learned model's exact posterior :math:`p_\theta(z \mid x, y)` (quadrature), so the error
        is the generative model's alone, not confounded with how well the encoder fits;
        ``"guide"``: the median of draws from :math:`q_\phi(z \mid x, y)`, what a practitioner's
        encoder gives.
    :param num_draws: posterior draws per point (same seed for truth and model, so a model
        identical to the truth gets identical draws).
    :param budget: the worker's memory budget (:mod:`pyrofail.memory`). The points of a class go
        through in fixed blocks of :data:`DRAW_POINTS`, each drawing from its own seed
        (:func:`_draw_seed`), so neither
        the number of points nor the budget changes a point's draws (as long as a block's
        (point, node) pairs fit the quadrature's chunk: the grid draws chunk by chunk).

    Returns ``{"mean", "stderr", "n", "per_class", "per_point", "counterfactuals",
    "true_counterfactuals", "truth_spread", "method"}``: the mean error over points and its
    standard error over points, the learned and the true counterfactual points ``(N, D)``;
    ``truth_spread`` is the
    mean of :math:`\lVert f_{GT}(z^*, 1 - y) - f_{GT}(\tilde z^*, 1 - y) \rVert` over the true
    posterior draws, the scale of the true counterfactual's own uncertainty (about
    :math:`\sigma` on ``semicircle``).

    Example:
        >>> from pyrofail import zoo
        >>> truth = zoo.model("semicircle")
        >>> data = truth.sample(10, seed=0)
        >>> counterfactual_error(truth, None, data.x, data.y, truth)["mean"]
        0.0
    """
    _check_model(model)
    _check_model(truth, "truth")
    if truth.num_classes != 2 or model.num_classes != 2:
        raise UsageError("counterfactual_error needs two classes (the counterfactual is the other one)")
    if method not in ("model", "guide"):
        raise UsageError(f"unknown method {method!r}; choose one of: model, guide")
    if method == "guide" and guide is None:
        raise UsageError("method='guide' needs the guide")
    y = _labels(y, x)
    truth64, model64 = copy.deepcopy(truth).double(), copy.deepcopy(model).double()
    errors = torch.zeros(x.shape[0], dtype=torch.float64)
    spread = torch.zeros(x.shape[0], dtype=torch.float64)
    learned = torch.zeros(x.shape[0], x.shape[1], dtype=torch.float64)
    true = torch.zeros(x.shape[0], x.shape[1], dtype=torch.float64)
    per_class = []
    for c in range(2):
        mine = (y == c).nonzero().flatten()
        if mine.numel() == 0:
            per_class.append({"class": c, "mean": float("nan"), "stderr": float("nan"), "n": 0})
            continue
        xc = x[mine.to(x.device)]
        other = torch.full((mine.numel(),), 1 - c, dtype=torch.long)
        cf_true, spread[mine] = _true_counterfactuals(truth, truth64, xc, c, other, num_draws, seed, budget)
        label = torch.full((mine.numel(),), c, dtype=torch.long, device=xc.device)

        def draws(xb, s, lo, c=c, label=label):
            if method == "model":
                return _grid_draws(model.given_label(c), xb, num_draws, s, budget)
            with bounds.seeded(s, xb.device):
                q = guide.distribution(xb, label[lo : lo + xb.shape[0]])
                return q.sample((num_draws,)).transpose(0, 1)  # (n, S, 1)

        z_hat = _medians(draws, xc, seed)
        device = model64.log_noise.device
        cf = model64.curve(z_hat.to(dtype=torch.float64, device=device), other.to(device)).cpu()
        errors[mine] = (cf - cf_true).norm(dim=-1)
        learned[mine], true[mine] = cf, cf_true
        per_class.append({"class": c, **_mean_se(errors[mine])})
    return {
        **_mean_se(errors),
        "per_class": per_class,
        "per_point": errors,
        "counterfactuals": learned,
        "true_counterfactuals": true,
        "truth_spread": float(spread.mean()),
        "method": method,
    }


def summarize(
    model, guide, x: torch.Tensor, y, truth, *, seed: int = 0, num_draws: int = 401, budget=None
) -> dict:
    """Every metric of this module on test points ``(x, y)`` as plain floats (the quadratures
    shared): collapse, counterfactual error (model and guide), per-class MLEO, MLEO of
    :math:`p(x)`, accuracy and the Bayes accuracy; ``budget``: the worker's memory budget
    (:mod:`pyrofail.memory`), for every part.

    Example:
        >>> from pyrofail import zoo
        >>> from pyrofail.guides.m2 import M2Guide
        >>> truth = zoo.model("semicircle")
        >>> data = truth.sample(10, seed=0)
        >>> summarize(truth, M2Guide(1, 2, hidden=(4,)), data.x, data.y, truth)["mleo"]
        0.0
    """
    lt = class_log_likelihoods(truth, x, budget)
    lm = class_log_likelihoods(model, x, budget)
    kl = mleo(model, truth, x, truth_per_class=lt, model_per_class=lm)
    out = {"mleo": kl["mean"], "mleo_stderr": kl["stderr"]}
    for r in class_mleo(model, truth, x, y, truth_per_class=lt, model_per_class=lm):
        out[f"mleo_class{r['class']}"] = r["mean"]
        out[f"mleo_class{r['class']}_stderr"] = r["stderr"]
    acc, bayes = accuracy(guide, x, y), bayes_accuracy(truth, x, y, truth_per_class=lt)
    out.update(accuracy=acc["mean"], accuracy_stderr=acc["stderr"], bayes_accuracy=bayes["mean"])
    col = collapse(model, truth)
    out.update(separation=col["learned"], separation_truth=col["truth"], separation_ratio=col["ratio"])
    for method in ("model", "guide"):
        cf = counterfactual_error(
            model, guide, x, y, truth, seed=seed, method=method, num_draws=num_draws, budget=budget
        )
        out[f"counterfactual_error_{method}"] = cf["mean"]
        out[f"counterfactual_error_{method}_stderr"] = cf["stderr"]
        out["counterfactual_truth_spread"] = cf["truth_spread"]
    return out
