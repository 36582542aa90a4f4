"""What MIG and DCI share: array checks, the discretisation of codes and factors, when a
score is not defined, and results as JSON (:mod:`pyrofail.analysis.downstream.disentanglement`
has the maths and the references).

Example:
    >>> discretize(np.array([[0.0], [1.0]]), bins=2)[:, 0].tolist()
    [1, 2]
"""

from __future__ import annotations

import math

import numpy as np
import torch

from pyrofail.errors import UsageError, check_choice, check_positive_int
from pyrofail.estimate import Estimate

__all__ = ["BINS", "BINNINGS", "PROTOCOLS", "as_record", "discretize", "factor_labels"]

PROTOCOLS = ("disentanglement_lib", "continuous")
BINNINGS = ("uniform", "quantile")
BINS = 20  # disentanglement_lib's discretizer.num_bins


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


def discretize(values, bins: int = BINS, binning: str = "uniform") -> np.ndarray:
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


def factor_labels(
    factors, protocol: str = "disentanglement_lib", bins: int = BINS, binning: str = "uniform"
) -> tuple[np.ndarray, list[str]]:
    """Discrete labels ``(N, F)`` of the factors and how each was made: under
    ``"disentanglement_lib"`` an integer-valued factor is its own label (``"labels"``), any
    other is binned by :func:`discretize` (``"uniform20"``: 20 equal-width bins); under
    ``"continuous"`` every factor is binned.

    Example:
        >>> f = np.array([[0.0, 0.1], [1.0, 0.7], [2.0, 1.0]])
        >>> labels, how = factor_labels(f, bins=2)
        >>> labels.tolist(), how
        ([[0, 1], [1, 2], [2, 2]], ['labels', 'uniform2'])
    """
    f = _as_matrix("factors", factors)
    check_choice("protocol", protocol, PROTOCOLS)
    binned = discretize(f, bins, binning)
    out, how = binned.copy(), []
    for j in range(f.shape[1]):
        if protocol == "disentanglement_lib" and np.array_equal(f[:, j], np.round(f[:, j])):
            out[:, j] = f[:, j].astype(np.int64)  # exact: the values are integers
            how.append("labels")
        else:
            how.append(f"{binning}{bins}")
    return out, how


def _undefined(metric: str, n_codes: int, n_factors: int) -> str | None:
    if n_codes < 2:
        what = (
            "no second-best code to take the gap from"
            if metric == "mig"
            else "completeness is an entropy in base C = 1"
        )
        return f"{metric.upper()} needs at least 2 codes; got 1 ({what})"
    if metric == "dci" and n_factors < 2:
        return "DCI needs at least 2 factors; got 1 (disentanglement is an entropy in base F = 1)"
    return None


def _not_defined(reason: str, n: int) -> Estimate:
    return Estimate(math.nan, None, n, flag=f"not defined: {reason}")


def as_record(result: dict) -> dict:
    """A MIG or DCI result (or a difference dict) as JSON: Estimates become their
    ``to_dict()``, arrays lists."""

    def plain(v):
        if isinstance(v, Estimate):
            return v.to_dict()
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v.tolist() if hasattr(v, "tolist") else v

    return {k: plain(v) for k, v in result.items()}
