r"""DCI (Eastwood & Williams 2018) as disentanglement_lib computes it, and paired differences
of two codes' scores (:mod:`pyrofail.analysis.downstream.disentanglement` has the maths, the
protocols and the references; :func:`dci` and :func:`dci_difference` are re-exported there).

Example:
    >>> z = np.random.default_rng(0).normal(size=(500, 2))
    >>> out = dci(z[:, ::-1], z, n_estimators=10, bootstrap=0)
    >>> out["disentanglement"] > 0.9 and out["completeness"] > 0.9
    True
"""

from __future__ import annotations

import numpy as np

from pyrofail.analysis.downstream.discretization import (
    BINNINGS,
    BINS,
    PROTOCOLS,
    _not_defined,
    _pair,
    _undefined,
    factor_labels,
)
from pyrofail.analysis.downstream.resampling import BOOTSTRAP_DRAWS, bootstrap_estimate
from pyrofail.errors import UsageError, check_choice, check_positive_int

__all__ = ["DCI_SCORES", "dci", "dci_difference"]

DCI_SCORES = ("disentanglement", "completeness", "informativeness_train", "informativeness_test")


def _dci_scores(importance: np.ndarray) -> dict:
    """disentanglement_lib's ``disentanglement`` and ``completeness`` of an importance matrix
    ``(C, F)``, transcribed (C, F >= 2)."""
    from scipy.stats import entropy

    per_code = 1.0 - entropy(importance.T + 1e-11, base=importance.shape[1])
    per_factor = 1.0 - entropy(importance + 1e-11, base=importance.shape[0])
    weights = np.ones_like(importance) if importance.sum() == 0.0 else importance
    code_w = weights.sum(axis=1) / weights.sum()
    factor_w = weights.sum(axis=0) / weights.sum()
    return {
        "disentanglement": float(np.sum(per_code * code_w)),
        "completeness": float(np.sum(per_factor * factor_w)),
        "disentanglement_per_code": per_code,
        "completeness_per_factor": per_factor,
        "code_weight": code_w,
    }


def _dci_once(c, y, train, test, classify: bool, trees: dict, random_state: int) -> dict:
    """One fit of disentanglement_lib's ``compute_importance_gbt`` and the scores. The trees'
    randomness (tie-breaks between features) comes from one ``RandomState(random_state)``
    shared by the factors in order, as theirs share numpy's global one."""
    from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor

    rs = np.random.RandomState(random_state)
    model_class = GradientBoostingClassifier if classify else GradientBoostingRegressor
    importance = np.zeros(shape=[c.shape[1], y.shape[1]], dtype=np.float64)
    info_tr, info_te = [], []
    for j in range(y.shape[1]):
        model = model_class(**trees, random_state=rs).fit(c[train], y[train, j])
        importance[:, j] = np.abs(model.feature_importances_)
        if classify:
            info_tr.append(np.mean(model.predict(c[train]) == y[train, j]))
            info_te.append(np.mean(model.predict(c[test]) == y[test, j]))
        else:
            info_tr.append(model.score(c[train], y[train, j]))  # R^2
            info_te.append(model.score(c[test], y[test, j]))
    out = _dci_scores(importance)
    out.update(
        importance=importance,
        informativeness_train=float(np.mean(info_tr)),
        informativeness_test=float(np.mean(info_te)),
        informativeness_train_per_factor=np.array(info_tr),
        informativeness_test_per_factor=np.array(info_te),
    )
    return out


def _dci_setup(c, f, protocol, train_fraction, factor_bins, binning, n_estimators, max_depth, learning_rate):
    check_choice("protocol", protocol, PROTOCOLS)
    check_choice("binning", binning, BINNINGS)
    if not 0.0 < float(train_fraction) < 1.0:
        raise UsageError(f"train_fraction={train_fraction!r} is not allowed; expected a number in (0, 1)")
    trees = {
        "n_estimators": check_positive_int("n_estimators", n_estimators),
        "max_depth": check_positive_int("max_depth", max_depth),
        "learning_rate": float(learning_rate),
    }
    n = c.shape[0]
    n_train = int(np.ceil(n * train_fraction))  # disentanglement_lib's split_train_test
    if n_train < 2 or n - n_train < 1:
        raise UsageError(
            f"{n} points with train_fraction={train_fraction} leave an empty split; use more points"
        )
    classify = protocol == "disentanglement_lib"
    y, how = (
        factor_labels(f, protocol, factor_bins, binning) if classify else (f, ["continuous"] * f.shape[1])
    )
    return y, how, classify, trees, np.arange(n_train), np.arange(n_train, n)


def _dci_draws(bootstrap, train, test, seed):
    """The bootstrap's (train, test, tree seed) per draw: the two parts resampled separately."""
    rng = np.random.default_rng(seed)
    for b in range(bootstrap):
        yield (
            train[rng.integers(0, train.size, train.size)],
            test[rng.integers(0, test.size, test.size)],
            seed + 1 + b,
        )


def dci(
    codes,
    factors,
    *,
    protocol: str = "disentanglement_lib",
    train_fraction: float = 0.8,
    factor_bins: int = BINS,
    binning: str = "uniform",
    n_estimators: int = 100,
    max_depth: int = 3,
    learning_rate: float = 0.1,
    bootstrap: int = BOOTSTRAP_DRAWS,
    seed: int = 0,
) -> dict:
    r"""Disentanglement, completeness and informativeness of ``codes`` ``(N, C)`` about
    ``factors`` ``(N, F)`` (module docstring; disentanglement_lib's ``_compute_dci``).

    The first :math:`\lceil` ``train_fraction`` :math:`\cdot N \rceil` points train the trees,
    the rest test them (the points must be in random order, as i.i.d. draws are). The trees are
    scikit-learn's defaults (``n_estimators``, ``max_depth``, ``learning_rate`` change them;
    the result records them). Each bootstrap draw resamples the training and the test points
    and refits every factor's trees: it costs as much as the call (about 1 s per factor and
    1,000 training points for 20 classes on one core), so ``bootstrap=0`` gives a quick value
    without an error.

    :returns: ``{"defined": True, "disentanglement", "completeness",
        "informativeness_train", "informativeness_test"`` (means over factors), their
        ``"*_stderr"``, ``"estimates"`` (name -> :class:`~pyrofail.estimate.Estimate` as ``to_dict()``),
        ``"importance"`` (C, F), ``"disentanglement_per_code", "code_weight",
        "completeness_per_factor", "informativeness_*_per_factor"``, ``"informativeness"``
        (``"accuracy"`` or ``"r2"``), ``"factor_discretization", "protocol", "n_train",
        "n_test", "n_estimators", "max_depth", "learning_rate", "bootstrap"}``; or
        ``{"defined": False, "reason", ...}`` with fewer than 2 codes or factors.

    Example:
        >>> z = np.random.default_rng(0).normal(size=(500, 2))
        >>> out = dci(z[:, ::-1], z, n_estimators=10, bootstrap=0)
        >>> out["disentanglement"] > 0.9 and out["completeness"] > 0.9
        True
        >>> dci(z[:, :1], z)["reason"]
        'DCI needs at least 2 codes; got 1 (completeness is an entropy in base C = 1)'
    """
    c, f = _pair(codes, factors)
    y, how, classify, trees, train, test = _dci_setup(
        c, f, protocol, train_fraction, factor_bins, binning, n_estimators, max_depth, learning_rate
    )
    bootstrap = check_positive_int("bootstrap", bootstrap, minimum=0)
    base = {
        "protocol": protocol,
        "informativeness": "accuracy" if classify else "r2",
        "factor_discretization": how,
        "n_train": int(train.size),
        "n_test": int(test.size),
        **trees,
        "bootstrap": bootstrap,
    }
    reason = _undefined("dci", c.shape[1], f.shape[1])
    if reason:
        return {
            "defined": False,
            "reason": reason,
            "estimates": None,
            **{k: None for k in DCI_SCORES},
            **base,
        }
    out = _dci_once(c, y, train, test, classify, trees, seed)
    samples = {k: [] for k in DCI_SCORES}
    for tr, te, s in _dci_draws(bootstrap, train, test, seed):
        once = _dci_once(c, y, tr, te, classify, trees, s)
        for k in DCI_SCORES:
            samples[k].append(once[k])
    estimates = {k: bootstrap_estimate(out[k], samples[k], c.shape[0]) for k in DCI_SCORES}
    result = {"defined": True, **{k: out[k] for k in DCI_SCORES}}
    result.update({f"{k}_stderr": estimates[k].stderr for k in DCI_SCORES})
    result["estimates"] = {k: e.to_dict() for k, e in estimates.items()}
    for k in ("importance", "disentanglement_per_code", "code_weight", "completeness_per_factor"):
        result[k] = out[k].tolist()
    for k in ("informativeness_train_per_factor", "informativeness_test_per_factor"):
        result[k] = out[k].tolist()
    return {**result, **base}


def dci_difference(
    codes_a,
    codes_b,
    factors,
    *,
    protocol: str = "disentanglement_lib",
    train_fraction: float = 0.8,
    factor_bins: int = BINS,
    binning: str = "uniform",
    n_estimators: int = 100,
    max_depth: int = 3,
    learning_rate: float = 0.1,
    bootstrap: int = BOOTSTRAP_DRAWS,
    seed: int = 0,
) -> dict:
    """Each DCI score of ``codes_a`` minus that of ``codes_b`` on the same points, with paired
    bootstrap standard errors (the same train/test resamples and tree seeds for both): ``{score
    name: Estimate}`` (each NaN and flagged when either DCI is not defined)."""
    a, f = _pair(codes_a, factors)
    b, _ = _pair(codes_b, factors)
    y, _, classify, trees, train, test = _dci_setup(
        a, f, protocol, train_fraction, factor_bins, binning, n_estimators, max_depth, learning_rate
    )
    bootstrap = check_positive_int("bootstrap", bootstrap, minimum=0)
    n = f.shape[0]
    for codes in (a, b):
        reason = _undefined("dci", codes.shape[1], f.shape[1])
        if reason:
            return {k: _not_defined(reason, n) for k in DCI_SCORES}

    def diff(tr, te, s):
        one, two = (_dci_once(codes, y, tr, te, classify, trees, s) for codes in (a, b))
        return {k: one[k] - two[k] for k in DCI_SCORES}

    point = diff(train, test, seed)
    draws = [diff(tr, te, s) for tr, te, s in _dci_draws(bootstrap, train, test, seed)]
    return {k: bootstrap_estimate(point[k], [d[k] for d in draws], n) for k in DCI_SCORES}
