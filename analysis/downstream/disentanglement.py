r"""Disentanglement of a representation against known ground-truth factors: MIG and DCI.

Both follow disentanglement_lib (Locatello et al. 2019, "Challenging common assumptions in the
unsupervised learning of disentangled representations", ICML; ``evaluation/metrics/mig.py``,
``dci.py`` and ``utils.py``), on arrays ``codes`` ``(N, C)`` (e.g. the posterior means of an
encoder) and ``factors`` ``(N, F)`` (the true latents), numpy or torch.

* **MIG**, the mutual information gap (Chen, Li, Grosse & Duvenaud 2018, "Isolating sources of
  disentanglement in VAEs", NeurIPS): every code and factor is discretised into ``bins``
  equal-width histogram bins (disentanglement_lib's ``_histogram_discretize``, 20 bins), the
  mutual information matrix :math:`I(c_i; v_j)` and the entropies :math:`H(v_j)` are the
  plug-in estimates of ``sklearn.metrics.mutual_info_score`` (nats), and

  .. math::

      \mathrm{MIG} = \frac1F \sum_j \frac{I(c_{(1)}; v_j) - I(c_{(2)}; v_j)}{H(v_j)},

  with :math:`c_{(1)}, c_{(2)}` the codes of largest and second-largest information about
  :math:`v_j`. disentanglement_lib's factors are discrete labels; ours are continuous, so they
  are discretised like the codes unless ``discrete_factors=True``.
* **DCI** (Eastwood & Williams 2018, "A framework for the quantitative evaluation of
  disentangled representations", ICLR): one gradient-boosted tree ensemble per factor predicts
  it from all codes; its feature importances form the importance matrix
  :math:`R \in \mathbb R^{C \times F}`. With :math:`P_{ij} = R_{ij} / \sum_k R_{ik}` and
  :math:`\tilde P_{ij} = R_{ij} / \sum_k R_{kj}`,

  .. math::

      D = \sum_i \rho_i \big(1 - H_F(P_{i\cdot})\big), \quad
      C = \sum_j \tilde\rho_j \big(1 - H_C(\tilde P_{\cdot j})\big),

  with entropies in base :math:`F` and :math:`C` and weights
  :math:`\rho_i = \sum_j R_{ij} / \sum R`, :math:`\tilde\rho_j = \sum_i R_{ij} / \sum R`
  (disentanglement_lib's ``disentanglement`` and ``completeness``). Informativeness is how
  well the trees predict the factors on held-out points.

The plug-in mutual information is biased upwards by about :math:`(B_c - 1)(B_v - 1) / 2N` nats
for :math:`B_c, B_v` occupied bins (Miller 1955; Paninski 2003, "Estimation of entropy and
mutual information", Neural Computation 15): with 20 bins and 4000 points a code independent
of a factor still scores about 0.045 nats, about 2% of the factor's entropy, so a perfect
representation's MIG is slightly below 1. Every headline score carries a bootstrap standard
error over points.
"""

from __future__ import annotations

import numpy as np
import torch

from pyrofail.errors import UsageError, check_choice, check_positive_int

__all__ = ["dci", "discretize", "mig"]

BINNINGS = ("uniform", "quantile")


def _as_matrix(name: str, value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().double().numpy()
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != 2:
        raise UsageError(f"{name} has shape {arr.shape}; expected a 2-D array (points, dimensions)")
    if arr.shape[0] < 2 or arr.shape[1] < 1:
        raise UsageError(f"{name} has shape {arr.shape}; expected at least 2 points and 1 dimension")
    if not np.isfinite(arr).all():
        raise UsageError(f"{name} has non-finite values; expected finite numbers")
    return arr


def _pair(codes, factors) -> tuple[np.ndarray, np.ndarray]:
    c, f = _as_matrix("codes", codes), _as_matrix("factors", factors)
    if c.shape[0] != f.shape[0]:
        raise UsageError(
            f"codes have {c.shape[0]} points and factors {f.shape[0]}; expected the same points in both"
        )
    return c, f


def discretize(values, bins: int = 20, binning: str = "uniform") -> np.ndarray:
    r"""Integer labels ``(N, M)`` of every column of ``values`` ``(N, M)``.

    ``binning="uniform"``: ``bins`` equal-width bins between each column's minimum and maximum,
    exactly disentanglement_lib's ``_histogram_discretize`` (``np.digitize`` against the
    edges of ``np.histogram``), labels 1 to ``bins``. ``"quantile"``: ``bins`` bins of equal
    mass (labels 0 to ``bins - 1``), which makes the mutual information invariant to any
    strictly increasing transform of a column.

    Example:
        >>> discretize(np.array([[0.0], [0.5], [1.0]]), bins=2)[:, 0].tolist()
        [1, 2, 2]
    """
    values = _as_matrix("values", values)
    bins = check_positive_int("bins", bins, minimum=2)
    check_choice("binning", binning, BINNINGS)
    out = np.empty(values.shape, dtype=np.int64)
    for j in range(values.shape[1]):
        col = values[:, j]
        if binning == "uniform":
            out[:, j] = np.digitize(col, np.histogram(col, bins)[1][:-1])
        else:
            edges = np.quantile(col, np.linspace(0.0, 1.0, bins + 1)[1:-1])
            out[:, j] = np.searchsorted(edges, col, side="right")
    return out


def _mutual_info(codes_d: np.ndarray, factors_d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.metrics import mutual_info_score

    m = np.array(
        [
            [mutual_info_score(factors_d[:, j], codes_d[:, i]) for j in range(factors_d.shape[1])]
            for i in range(codes_d.shape[1])
        ]
    )  # (C, F)
    h = np.array([mutual_info_score(factors_d[:, j], factors_d[:, j]) for j in range(factors_d.shape[1])])
    return m, h


def _mig_once(codes, factors, bins, binning, discrete_factors) -> dict:
    cd = discretize(codes, bins, binning)
    fd = factors.astype(np.int64) if discrete_factors else discretize(factors, bins, binning)
    m, h = _mutual_info(cd, fd)
    if (h <= 0).any():
        j = int(np.flatnonzero(h <= 0)[0])
        raise UsageError(f"factor {j} takes a single value (zero entropy); MIG needs varying factors")
    top = np.sort(m, axis=0)[::-1]
    second = top[1] if m.shape[0] > 1 else np.zeros(m.shape[1])
    gap = (top[0] - second) / h
    return {"mig": float(gap.mean()), "gap": gap, "mutual_info": m, "entropy": h}


def _bootstrap_se(values: list[float]) -> float | None:
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def mig(
    codes,
    factors,
    *,
    bins: int = 20,
    binning: str = "uniform",
    discrete_factors: bool = False,
    bootstrap: int = 100,
    seed: int = 0,
) -> dict:
    r"""The mutual information gap of ``codes`` ``(N, C)`` about ``factors`` ``(N, F)``.

    .. math::

        \mathrm{MIG} = \frac1F \sum_j \frac{I(c_{(1)}; v_j) - I(c_{(2)}; v_j)}{H(v_j)}

    (Chen et al. 2018; disentanglement_lib's ``_compute_mig``; module docstring). With a single
    code the second-largest information is taken as 0.

    :param bins: histogram bins per code and factor (disentanglement_lib: 20).
    :param binning: ``"uniform"`` (disentanglement_lib) or ``"quantile"`` (:func:`discretize`).
    :param discrete_factors: use the factors as labels as they are (integer-valued factors).
    :param bootstrap: resamples of the points for the standard error (0 for none).
    :returns: ``{"mig", "stderr", "gap" (F,), "mutual_info" (C, F), "entropy" (F,),
        "top_code" (F,), "n_points", "bins", "binning", "bootstrap"}``; ``stderr`` is the
        standard deviation of MIG over ``bootstrap`` resamples of the points with replacement
        (``numpy.random.default_rng(seed)``), ``None`` without resamples.

    Example:
        >>> z = np.random.default_rng(0).normal(size=(2000, 2))
        >>> round(mig(3.0 * z[:, ::-1], z, bootstrap=0)["mig"], 1)
        1.0
    """
    c, f = _pair(codes, factors)
    bins = check_positive_int("bins", bins, minimum=2)
    check_choice("binning", binning, BINNINGS)
    bootstrap = check_positive_int("bootstrap", bootstrap, minimum=0)
    out = _mig_once(c, f, bins, binning, discrete_factors)
    rng = np.random.default_rng(seed)
    n = c.shape[0]
    draws = []
    for _ in range(bootstrap):
        idx = rng.integers(0, n, n)
        draws.append(_mig_once(c[idx], f[idx], bins, binning, discrete_factors)["mig"])
    return {
        "mig": out["mig"],
        "stderr": _bootstrap_se(draws),
        "gap": out["gap"].tolist(),
        "mutual_info": out["mutual_info"].tolist(),
        "entropy": out["entropy"].tolist(),
        "top_code": np.argmax(out["mutual_info"], axis=0).tolist(),
        "n_points": n,
        "bins": bins,
        "binning": binning,
        "bootstrap": bootstrap,
    }


# ----------------------------------------------------------------------------------------
# DCI


def _entropy_base(p: np.ndarray, base: int, axis: int) -> np.ndarray:
    from scipy.stats import entropy

    # disentanglement_lib adds 1e-11 so that an all-zero row has a defined entropy
    return entropy(p + 1e-11, base=base, axis=axis)


def _dci_scores(importance: np.ndarray) -> dict:
    """Disentanglement and completeness of an importance matrix ``(C, F)`` (disentanglement_lib's
    ``disentanglement`` and ``completeness``; with a single factor or code the base-1 entropy is
    undefined and that score is 1 by convention)."""
    c, f = importance.shape
    per_code = 1.0 - _entropy_base(importance, f, axis=1) if f > 1 else np.ones(c)
    per_factor = 1.0 - _entropy_base(importance, c, axis=0) if c > 1 else np.ones(f)
    weights = importance if importance.sum() > 0 else np.ones_like(importance)
    code_w = weights.sum(1) / weights.sum()
    factor_w = weights.sum(0) / weights.sum()
    return {
        "disentanglement": float(np.sum(per_code * code_w)),
        "completeness": float(np.sum(per_factor * factor_w)),
        "disentanglement_per_code": per_code,
        "completeness_per_factor": per_factor,
        "code_weight": code_w,
    }


def _fit_trees(
    c_train, f_train, c_test, f_test, discrete_factors, n_estimators, max_depth, learning_rate, seed
):
    from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor

    num_codes, num_factors = c_train.shape[1], f_train.shape[1]
    importance = np.zeros((num_codes, num_factors))
    train_info, test_info = np.zeros(num_factors), np.zeros(num_factors)
    for j in range(num_factors):
        options = dict(
            n_estimators=n_estimators, max_depth=max_depth, learning_rate=learning_rate, random_state=seed
        )
        y_train, y_test = f_train[:, j], f_test[:, j]
        if discrete_factors:
            model = GradientBoostingClassifier(**options).fit(c_train, y_train.astype(np.int64))
            train_info[j] = np.mean(model.predict(c_train) == y_train)
            test_info[j] = np.mean(model.predict(c_test) == y_test)
        else:
            model = GradientBoostingRegressor(**options).fit(c_train, y_train)
            train_info[j] = model.score(c_train, y_train)  # R^2
            test_info[j] = model.score(c_test, y_test)
        importance[:, j] = np.abs(model.feature_importances_)
    return importance, train_info, test_info


def dci(
    codes,
    factors,
    *,
    train_fraction: float = 0.8,
    n_estimators: int = 50,
    max_depth: int = 3,
    learning_rate: float = 0.1,
    discrete_factors: bool = False,
    bootstrap: int = 0,
    seed: int = 0,
) -> dict:
    r"""Disentanglement, completeness and informativeness of ``codes`` ``(N, C)`` about
    ``factors`` ``(N, F)`` (Eastwood & Williams 2018; disentanglement_lib's ``_compute_dci``;
    formulas in the module docstring).

    The points are shuffled (``seed``) and split into a training part (``train_fraction``) and
    a test part. Per factor, scikit-learn's gradient-boosted trees predict it from all codes:
    ``GradientBoostingRegressor`` on continuous factors, with informativeness the coefficient
    of determination :math:`R^2` (1 is perfect prediction), or, with ``discrete_factors``,
    ``GradientBoostingClassifier`` with informativeness the accuracy, as in disentanglement_lib.
    disentanglement_lib uses scikit-learn's defaults (100 trees of depth 3); 50 trees are
    enough for the smooth, low-dimensional factors of the zoo and halve the cost. The importance
    matrix is the trees' impurity-based ``feature_importances_``.

    :param bootstrap: resamples for the standard errors, 0 (the default) for none: each
        resample draws the training and the test points with replacement and refits every
        factor's trees, so it costs as much as the call itself.
    :returns: ``{"disentanglement", "completeness", "informativeness_train",
        "informativeness_test"`` (means over factors), their ``"*_stderr"`` (bootstrap
        standard deviations, ``None`` without resamples), ``"importance"`` (C, F),
        ``"disentanglement_per_code"``, ``"code_weight"``, ``"completeness_per_factor"``,
        ``"informativeness_train_per_factor"``, ``"informativeness_test_per_factor"``,
        ``"informativeness"`` (``"r2"`` or ``"accuracy"``), ``"n_train"``, ``"n_test"``,
        ``"bootstrap"``}.

    Example:
        >>> z = np.random.default_rng(0).normal(size=(500, 2))
        >>> out = dci(z[:, ::-1], z, n_estimators=10)
        >>> out["disentanglement"] > 0.9 and out["completeness"] > 0.9
        True
    """
    c, f = _pair(codes, factors)
    if not 0.0 < float(train_fraction) < 1.0:
        raise UsageError(f"train_fraction={train_fraction!r} is not allowed; expected a number in (0, 1)")
    n_estimators = check_positive_int("n_estimators", n_estimators)
    max_depth = check_positive_int("max_depth", max_depth)
    bootstrap = check_positive_int("bootstrap", bootstrap, minimum=0)
    n = c.shape[0]
    n_train = int(round(train_fraction * n))
    if n_train < 2 or n - n_train < 1:
        raise UsageError(
            f"{n} points with train_fraction={train_fraction} leave an empty split; use more points"
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    train, test = order[:n_train], order[n_train:]
    fit = dict(
        discrete_factors=discrete_factors,
        n_estimators=n_estimators,
        max_depth=max_depth,
        learning_rate=learning_rate,
        seed=seed,
    )

    def once(tr, te):
        importance, info_tr, info_te = _fit_trees(c[tr], f[tr], c[te], f[te], **fit)
        return importance, info_tr, info_te, _dci_scores(importance)

    importance, info_tr, info_te, scores = once(train, test)
    keys = ("disentanglement", "completeness", "informativeness_train", "informativeness_test")
    samples = {k: [] for k in keys}
    for _ in range(bootstrap):
        tr = train[rng.integers(0, train.size, train.size)]
        te = test[rng.integers(0, test.size, test.size)]
        _, b_tr, b_te, b = once(tr, te)
        for k, v in zip(keys, (b["disentanglement"], b["completeness"], b_tr.mean(), b_te.mean())):
            samples[k].append(float(v))
    out = {
        "disentanglement": scores["disentanglement"],
        "completeness": scores["completeness"],
        "informativeness_train": float(info_tr.mean()),
        "informativeness_test": float(info_te.mean()),
    }
    out.update({f"{k}_stderr": _bootstrap_se(samples[k]) for k in keys})
    out.update(
        {
            "importance": importance.tolist(),
            "disentanglement_per_code": scores["disentanglement_per_code"].tolist(),
            "code_weight": scores["code_weight"].tolist(),
            "completeness_per_factor": scores["completeness_per_factor"].tolist(),
            "informativeness_train_per_factor": info_tr.tolist(),
            "informativeness_test_per_factor": info_te.tolist(),
            "informativeness": "accuracy" if discrete_factors else "r2",
            "n_train": int(train.size),
            "n_test": int(test.size),
            "bootstrap": bootstrap,
        }
    )
    return out
