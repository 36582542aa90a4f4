r"""Disentanglement of a representation against known ground-truth factors: MIG and DCI.

Both follow disentanglement_lib (Locatello et al. 2019, "Challenging common assumptions in the
unsupervised learning of disentangled representations", ICML; ``evaluation/metrics/mig.py``,
``dci.py`` and ``utils.py`` at commit 86a644d), on arrays ``codes`` ``(N, C)`` (e.g. the
posterior means of an encoder) and ``factors`` ``(N, F)`` (the true latents), numpy or torch.
Two protocols, named in every result (``"protocol"``):

* ``"disentanglement_lib"`` (the default), theirs verbatim. Factors are discrete labels:
  integer-valued factors are used as they are; a non-integer factor (the zoo's are Gaussian)
  is binned **explicitly** by the same 20-bin equal-width histogram as the codes
  (:func:`factor_labels`; ``"factor_discretization"`` says which factor got what), never
  truncated. MIG on histogram-discretised codes (``_histogram_discretize``, 20 bins) with
  ``sklearn.metrics.mutual_info_score``; DCI with one ``GradientBoostingClassifier()`` (100
  trees of depth 3) per factor, informativeness = accuracy, train/test = the first
  :math:`\lceil 0.8 N \rceil` points and the rest (``split_train_test``).
* ``"continuous"``: factors as real numbers. MIG bins them like the codes; DCI regresses them
  with ``GradientBoostingRegressor`` (100 trees), informativeness = :math:`R^2`.

**MIG**, the mutual information gap (Chen, Li, Grosse & Duvenaud 2018, "Isolating sources of
disentanglement in VAEs", NeurIPS), with :math:`c_{(1)}, c_{(2)}` the codes of largest and
second-largest plug-in information about factor :math:`v_j` and :math:`H(v_j)` its entropy:

.. math::

    \mathrm{MIG} = \frac1F \sum_j \frac{I(c_{(1)}; v_j) - I(c_{(2)}; v_j)}{H(v_j)}.

**DCI** (Eastwood & Williams 2018, ICLR): the trees' ``feature_importances_`` form
:math:`R \in \mathbb R^{C \times F}`;
:math:`D = \sum_i \rho_i (1 - H_F(P_{i\cdot}))` and :math:`C = \sum_j \tilde\rho_j (1 -
H_C(\tilde P_{\cdot j}))`, entropies of the normalised rows / columns in base :math:`F` / :math:`C`
(plus 1e-11), :math:`\rho, \tilde\rho` the row / column shares of :math:`\sum R`.

**Not defined.** With one code, MIG has no second-best code and C is an entropy in base 1;
with one factor, D is. Such a result has ``"defined": False`` and a ``"reason"``, and no
number: a single pure-noise code would otherwise score C = 1 like a perfect one.

**Finite-sample bias.** The plug-in :math:`I(c; v)` is biased up by about
:math:`(B_c - 1)(B_v - 1) / 2N` nats for :math:`B_c, B_v` occupied bins (Miller 1955; Paninski
2003, Neural Computation 15), so the second-best code's information is too large and MIG too
small. Measured on perfect codes of two Gaussian factors (``benchmarks/downstream_checks.py``,
exact MIG 1, mean of 10 data sets): 0.838 at 300 points (the second code's plug-in
information 0.43 nats where the truth is 0), 0.971 at 2,000, 0.985 at 4,000, 0.994 at 10,000.
:data:`MIG_POINTS` = 10,000 (disentanglement_lib's ``num_train``) keeps the bias below 1%.

**Standard errors** are bootstrap standard deviations over :data:`~pyrofail.analysis.
downstream.resampling.BOOTSTRAP_DRAWS` resamples of the points, enough for the error itself to
be known to ±10% (:mod:`~pyrofail.analysis.downstream.resampling`); :func:`mig_difference` and
:func:`dci_difference` compare two codes of the same points on the same resamples (paired).
"""

from __future__ import annotations

import numpy as np

from pyrofail.analysis.downstream.dci_metric import (  # noqa: F401 - _dci_scores re-exported
    DCI_SCORES,
    _dci_scores,
    dci,
    dci_difference,
)
from pyrofail.analysis.downstream.discretization import (
    BINNINGS,  # noqa: F401 - re-exported
    BINS,
    PROTOCOLS,
    _not_defined,
    _pair,
    _undefined,
    as_record,
    discretize,
    factor_labels,
)
from pyrofail.analysis.downstream.resampling import BOOTSTRAP_DRAWS, bootstrap_estimate, se_precision
from pyrofail.errors import UsageError, check_choice, check_positive_int
from pyrofail.estimate import Estimate

__all__ = [
    "DCI_SCORES",
    "MIG_POINTS",
    "PROTOCOLS",
    "as_record",
    "dci",
    "dci_difference",
    "discretize",
    "factor_labels",
    "mig",
    "mig_difference",
]

MIG_POINTS = 10_000  # module docstring: MIG's plug-in bias below 1% of a perfect score


def _contingency(labels_true: np.ndarray, labels_pred: np.ndarray) -> np.ndarray:
    """The dense contingency table of two label vectors, rows and columns in sorted label
    order as ``sklearn.metrics.cluster.contingency_matrix`` builds it (by counting, which is
    faster than its sparse construction)."""
    ut, it = np.unique(labels_true, return_inverse=True)
    up, ip = np.unique(labels_pred, return_inverse=True)
    counts = np.bincount(it * up.size + ip, minlength=ut.size * up.size)
    return counts.reshape(ut.size, up.size)


def _mig_once(c, f, protocol, bins, factor_bins, binning) -> dict:
    from sklearn.metrics import mutual_info_score

    cd = discretize(c, bins, binning)
    fd, how = factor_labels(f, protocol, factor_bins, binning)
    # disentanglement_lib's discrete_mutual_info and discrete_entropy, (C, F) and (F,):
    # mutual_info_score(ys[j], mus[i]), given its contingency table
    m = np.zeros([cd.shape[1], fd.shape[1]])
    for i in range(cd.shape[1]):
        for j in range(fd.shape[1]):
            m[i, j] = mutual_info_score(None, None, contingency=_contingency(fd[:, j], cd[:, i]))
    h = np.array(
        [
            mutual_info_score(None, None, contingency=_contingency(fd[:, j], fd[:, j]))
            for j in range(fd.shape[1])
        ]
    )
    if (h <= 0).any():
        j = int(np.flatnonzero(h <= 0)[0])
        raise UsageError(f"factor {j} takes a single value (zero entropy); MIG needs varying factors")
    sorted_m = np.sort(m, axis=0)[::-1]
    gap = np.divide(sorted_m[0, :] - sorted_m[1, :], h[:])
    return {"mig": float(np.mean(gap)), "gap": gap, "mutual_info": m, "entropy": h, "how": how}


def _mig_options(protocol, bins, factor_bins, binning, bootstrap) -> dict:
    check_choice("protocol", protocol, PROTOCOLS)
    check_choice("binning", binning, BINNINGS)
    check_positive_int("bootstrap", bootstrap, minimum=0)
    return {
        "protocol": protocol,
        "bins": check_positive_int("bins", bins, minimum=2),
        "factor_bins": check_positive_int("factor_bins", factor_bins, minimum=2),
        "binning": binning,
    }


def mig(
    codes,
    factors,
    *,
    protocol: str = "disentanglement_lib",
    bins: int = BINS,
    factor_bins: int = BINS,
    binning: str = "uniform",
    bootstrap: int = BOOTSTRAP_DRAWS,
    seed: int = 0,
) -> dict:
    r"""The mutual information gap of ``codes`` ``(N, C)`` about ``factors`` ``(N, F)``
    (module docstring; disentanglement_lib's ``_compute_mig``).

    :param protocol: ``"disentanglement_lib"`` or ``"continuous"`` (module docstring).
    :param bins: histogram bins per code (disentanglement_lib: 20).
    :param factor_bins: bins for a factor that is not integer-valued (:func:`factor_labels`).
    :param binning: ``"uniform"`` (disentanglement_lib's histogram) or ``"quantile"``.
    :param bootstrap: resamples of the points (``numpy.random.default_rng(seed)``), each
        scored by the whole procedure, binning included; 0 for none.
    :returns: ``{"defined": True, "mig", "stderr", "estimate"`` (the
        :class:`~pyrofail.estimate.Estimate` as ``to_dict()``, so that the result is JSON;
        ``Estimate.from_dict`` reads it back), flagged when its error is known to worse than
        ±10%), ``"stderr_precision", "gap" (F,), "mutual_info" (C, F), "entropy" (F,),
        "top_code" (F,), "factor_discretization" (F,), "protocol", "n_points", "n_codes",
        "n_factors", "bins", "factor_bins", "binning", "bootstrap"}``, or with fewer than 2
        codes ``{"defined": False, "reason", "mig": None, "estimate": None, ...}``.

    Example:
        >>> z = np.random.default_rng(0).normal(size=(2000, 2))
        >>> round(mig(3.0 * z[:, ::-1], z, bootstrap=0)["mig"], 2)
        0.97
        >>> mig(z[:, :1], z)["reason"]
        'MIG needs at least 2 codes; got 1 (no second-best code to take the gap from)'
    """
    c, f = _pair(codes, factors)
    opts = _mig_options(protocol, bins, factor_bins, binning, bootstrap)
    n = c.shape[0]
    base = {**opts, "n_points": n, "n_codes": c.shape[1], "n_factors": f.shape[1], "bootstrap": bootstrap}
    reason = _undefined("mig", c.shape[1], f.shape[1])
    if reason:
        return {"defined": False, "reason": reason, "mig": None, "stderr": None, "estimate": None, **base}
    out = _mig_once(c, f, **opts)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(bootstrap):
        idx = rng.integers(0, n, n)
        draws.append(_mig_once(c[idx], f[idx], **opts)["mig"])
    est = bootstrap_estimate(out["mig"], draws, n)
    return {
        "defined": True,
        "mig": out["mig"],
        "stderr": est.stderr,
        "estimate": est.to_dict(),
        "stderr_precision": se_precision(draws),
        "gap": out["gap"].tolist(),
        "mutual_info": out["mutual_info"].tolist(),
        "entropy": out["entropy"].tolist(),
        "top_code": np.argmax(out["mutual_info"], axis=0).tolist(),
        "factor_discretization": out["how"],
        **base,
    }


def mig_difference(
    codes_a,
    codes_b,
    factors,
    *,
    protocol: str = "disentanglement_lib",
    bins: int = BINS,
    factor_bins: int = BINS,
    binning: str = "uniform",
    bootstrap: int = BOOTSTRAP_DRAWS,
    seed: int = 0,
) -> Estimate:
    r"""MIG of ``codes_a`` minus MIG of ``codes_b``, both of the same points ``factors``, with
    the paired bootstrap standard error: both codes are scored on the same resamples and the
    standard error is the standard deviation of the differences (their covariance taken into
    account, unlike two separate errors added in quadrature). Not defined (mean NaN, a flag
    saying why) when either MIG is not.

    Example:
        >>> z = np.random.default_rng(0).normal(size=(1000, 2))
        >>> noisy = z + np.random.default_rng(1).normal(size=(1000, 2))
        >>> d = mig_difference(z, noisy, z, bootstrap=50)
        >>> d.verdict()
        'greater'
    """
    a, f = _pair(codes_a, factors)
    b, _ = _pair(codes_b, factors)
    opts = _mig_options(protocol, bins, factor_bins, binning, bootstrap)
    n = f.shape[0]
    for codes in (a, b):
        reason = _undefined("mig", codes.shape[1], f.shape[1])
        if reason:
            return _not_defined(reason, n)
    point = _mig_once(a, f, **opts)["mig"] - _mig_once(b, f, **opts)["mig"]
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(bootstrap):
        idx = rng.integers(0, n, n)
        draws.append(_mig_once(a[idx], f[idx], **opts)["mig"] - _mig_once(b[idx], f[idx], **opts)["mig"])
    return bootstrap_estimate(point, draws, n)
