r"""K-fold cross-validation of inference methods on a data set (``diabetes``), pooled over folds.

One seeded train/test split of 442 points leaves 88 test points, too few to separate methods
whose test log-likelihoods differ by a few hundredths of a nat. :func:`cross_validate` cuts the
seeded order of the points into ``folds`` blocks (``splits(fold=k, folds=K)`` of the zoo entry,
:func:`pyrofail.models.regression.load_diabetes`), fits and evaluates every method on each fold
exactly as :func:`~pyrofail.bnn.experiment.experiment` does
(:func:`~pyrofail.bnn.experiment.compare_on_split`), and pools the per-point test values, so that
every point is a test point once and the methods are paired on all of them.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field

import torch

from pyrofail import zoo
from pyrofail.bnn.experiment import compare_on_split, format_table
from pyrofail.bnn.inference import METHODS
from pyrofail.bnn.metrics import Estimate, mean_estimate
from pyrofail.errors import UsageError, check_choice, check_positive_int

__all__ = ["CrossValidation", "cross_validate", "format_folds"]

#: Columns of a fit's training side: per fold, averaged over the folds in the pooled rows.
FOLD_AVERAGED = ("train_ll", "train_ll_prior_z", "gap", "hsic", "r2_z", "z_sd")


@dataclass
class CrossValidation:
    """``rows``: one dict per method like :attr:`Experiment.rows <pyrofail.bnn.experiment.Experiment>`
    (pooled over the folds, see :func:`cross_validate`) plus ``fold_paired_diff`` (the paired
    difference from the first method in each fold, ``None`` for the first method) and
    ``fold_heterogeneity`` (Cochran's ``q``, ``df`` and ``p`` of those); ``fold_rows``: each
    fold's method rows as :func:`~pyrofail.bnn.experiment.experiment` gives them;
    ``per_point``: method -> name -> the per-point values of
    :attr:`Evaluation.per_point <pyrofail.bnn.metrics.Evaluation>` concatenated over the folds
    (``test_*``: every point once, in the order of ``test_index``; ``train_*``: each point once
    per fold it trains in); ``test_index``: the row of the original data of each pooled test
    point; ``fold_of``: its fold; ``fold_sizes``: ``(n_train, n_test)`` per fold."""

    process: str
    folds: int
    rows: list[dict]
    fold_rows: list[list[dict]]
    per_point: dict[str, dict[str, torch.Tensor]] = field(repr=False)
    test_index: torch.Tensor = field(repr=False)
    fold_of: torch.Tensor = field(repr=False)
    fold_sizes: list[tuple[int, int]] = field(default_factory=list)

    def table(self) -> str:
        """The pooled rows as a Markdown table (:func:`~pyrofail.bnn.experiment.format_table`)."""
        return format_table(self.rows)

    def fold_table(self) -> str:
        """Each fold's test log-likelihoods and paired differences (:func:`format_folds`)."""
        return format_folds(self)


def cross_validate(
    process: str,
    methods=("mean_field", "noise_constrained"),
    seed: int = 0,
    *,
    folds: int = 5,
    hidden=(50,),
    num_z: int = 50,
    options: dict | None = None,
    **network,
) -> CrossValidation:
    r"""Fit ``methods`` on each of ``folds`` cross-validation splits of ``process`` and pool the
    test points, so that every point of the data set is a test point once.

    ``seed`` fixes the order of the points (hence the folds) and, as in
    :func:`~pyrofail.bnn.experiment.experiment`, every fit and evaluation; ``options``, ``hidden``,
    ``num_z`` and ``network`` are :func:`~pyrofail.bnn.experiment.experiment`'s. Only a process
    whose ``splits`` takes ``fold`` (``diabetes``) can be cross-validated; for the synthetic ones
    (:class:`~pyrofail.errors.UsageError`) draw fresh test points instead.

    In the pooled rows, ``test_ll``, ``coverage90`` and ``rmse`` are over all the pooled test
    points, and ``paired_diff`` is the mean and standard error of the per-point difference from
    the first method over all of them (:func:`~pyrofail.bnn.metrics.mean_estimate`);
    ``fold_paired_diff`` gives it per fold, and ``fold_heterogeneity`` Cochran's
    :math:`Q = \sum_k (d_k - \bar d)^2 / s_k^2` (:math:`\bar d` the inverse-variance weighted
    mean, :math:`K - 1` degrees of freedom) with its :math:`\chi^2` tail probability, a rough
    check of whether the folds agree (the folds' fits share training points, so they are not
    independent). ``seconds`` is the sum over folds, ``lam`` the list of each fold's
    :math:`\lambda` (``noise_constrained`` chooses one per fold). The training-side columns
    (:data:`FOLD_AVERAGED`) are the average over folds of each fold's estimate, with the average
    of their standard errors (an upper bound for the average's error however the folds correlate).

    **Scales.** :math:`y` is standardised per fold with that fold's training mean and standard
    deviation :math:`s_k`, and the log-likelihoods are in those units: a point's
    :math:`\log p` in the original units is the reported one minus :math:`\log s_k`. The paired
    difference between two methods is unaffected (both are evaluated on the same point in the
    same fold, so the Jacobian :math:`-\log s_k` cancels), but the pooled absolute ``test_ll``
    (and ``rmse``) mixes scales: for ``diabetes`` the folds' training :math:`s_k` differ by up to
    3% (seed 0, 5 folds: 76.2 to 78.4 against 77.1 for all 442 points; seed 1: 75.9 to 78.0),
    i.e. up to about 0.03 nats per point between folds, comparable to the differences between
    methods, so compare methods by ``paired_diff``, not by differences of pooled ``test_ll``
    across separate runs.

    Example:
        >>> cv = cross_validate("diabetes", ("mean_field",), folds=2, hidden=(2,), num_z=2,
        ...                     options={"mean_field": {"steps": 5, "num_draws": 4}})
        >>> [row["method"] for row in cv.rows], cv.per_point["mean_field"]["test_ll"].shape
        (['mean_field'], torch.Size([442]))
    """
    entry = zoo.entry("regression", process)
    methods = [check_choice("inference", m, METHODS) for m in methods]
    if not methods:
        raise UsageError("methods=() is not allowed; expected at least one inference method")
    dataset = entry.factory()
    if "fold" not in inspect.signature(dataset.splits).parameters:
        raise UsageError(
            f"process {process!r} has no cross-validation folds (a synthetic process: draw more "
            f"test points with experiment(n_test=...) instead); cross_validate needs a data set "
            f"such as 'diabetes'"
        )
    folds = check_positive_int("folds", folds, minimum=2)
    options = options or {}

    fold_rows, per_fold, indices, fold_of, sizes = [], [], [], [], []
    for k in range(folds):
        data = dataset.splits(seed=seed, fold=k, folds=folds)
        rows, _, evaluations = compare_on_split(data, methods, seed, hidden, num_z, options, network)
        fold_rows.append(rows)
        per_fold.append({m: evaluations[m].per_point for m in methods})
        indices.append(data.test_index)
        fold_of.append(torch.full((len(data.y_test),), k, dtype=torch.long))
        sizes.append((len(data.y_train), len(data.y_test)))

    per_point = {
        m: {name: torch.cat([pf[m][name] for pf in per_fold]) for name in per_fold[0][m]} for m in methods
    }
    base = per_point[methods[0]]["test_ll"]
    pooled = []
    for i, method in enumerate(methods):
        pp = per_point[method]
        runs = [rows[i] for rows in fold_rows]
        mse = mean_estimate(pp["test_sq_err"])
        rmse = math.sqrt(mse.mean)
        lams = [r["lam"] for r in runs]
        row = {
            "method": method,
            "seconds": sum(r["seconds"] for r in runs),
            "lam": None if all(v is None for v in lams) else lams,
            "test_ll": mean_estimate(pp["test_ll"]),
            "paired_diff": None if i == 0 else mean_estimate(pp["test_ll"] - base),
            "coverage90": mean_estimate(((pp["test_pit"] >= 0.05) & (pp["test_pit"] <= 0.95)).double()),
            "rmse": Estimate(rmse, mse.stderr / (2 * rmse) if rmse > 0 else float("nan")),
        }
        for name in FOLD_AVERAGED:
            values = [r[name] for r in runs]
            row[name] = Estimate(sum(v.mean for v in values) / folds, sum(v.stderr for v in values) / folds)
        row["fold_paired_diff"] = None if i == 0 else [r["paired_diff"] for r in runs]
        row["fold_heterogeneity"] = None if i == 0 else _cochran(row["fold_paired_diff"])
        pooled.append(row)
    return CrossValidation(
        process,
        folds,
        pooled,
        fold_rows,
        per_point,
        torch.cat(indices),
        torch.cat(fold_of),
        sizes,
    )


def _cochran(estimates: list[Estimate]) -> dict[str, float] | None:
    """Cochran's Q of per-fold estimates around their inverse-variance weighted mean."""
    from scipy.stats import chi2

    if any(not (e.stderr > 0) for e in estimates):
        return None
    w = [1 / e.stderr**2 for e in estimates]
    mean = sum(wi * e.mean for wi, e in zip(w, estimates)) / sum(w)
    q = sum(wi * (e.mean - mean) ** 2 for wi, e in zip(w, estimates))
    df = len(estimates) - 1
    return {"q": q, "df": df, "p": float(chi2.sf(q, df))}


def format_folds(cv: CrossValidation) -> str:
    """A Markdown table, one row per fold: its sizes, each method's test log-likelihood, the
    paired difference of every other method from the first, and each method's :math:`\\lambda`
    where it has one; a last row ``pooled`` repeats the pooled values.

    Example:
        >>> e = Estimate
        >>> cv = CrossValidation("d", 2, [{"method": "a", "test_ll": e(-1.0, 0.1), "lam": None},
        ...     {"method": "b", "test_ll": e(-0.9, 0.1), "paired_diff": e(0.1, 0.05), "lam": None}],
        ...     [[{"method": "a", "test_ll": e(-1.0, 0.1), "lam": None},
        ...       {"method": "b", "test_ll": e(-0.9, 0.1), "paired_diff": e(0.1, 0.05), "lam": None}]] * 2,
        ...     {}, torch.arange(4), torch.tensor([0, 0, 1, 1]), [(2, 2), (2, 2)])
        >>> print(format_folds(cv).splitlines()[2])
        | 0 | 2 | 2 | -1.000 ± 0.100 | -0.900 ± 0.100 | 0.100 ± 0.050 |
    """

    def cell(v) -> str:
        if v is None:
            return ""
        if isinstance(v, Estimate):
            return f"{v.mean:.4f} ± {v.stderr:.4f}" if abs(v.mean) < 0.1 else str(v)
        return f"{v:g}" if isinstance(v, float) else str(v)

    methods = [r["method"] for r in cv.rows]
    first = methods[0]
    with_lam = [m for i, m in enumerate(methods) if any(rows[i]["lam"] is not None for rows in cv.fold_rows)]
    head = (
        ["fold", "n_train", "n_test"]
        + [f"test_ll {m}" for m in methods]
        + [f"{m} − {first}" for m in methods[1:]]
        + [f"lam {m}" for m in with_lam]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k, rows in enumerate(cv.fold_rows):
        cells = [str(k), *map(str, cv.fold_sizes[k])]
        cells += [cell(r["test_ll"]) for r in rows]
        cells += [cell(r["paired_diff"]) for r in rows[1:]]
        cells += [cell(rows[methods.index(m)]["lam"]) for m in with_lam]
        lines.append("| " + " | ".join(cells) + " |")
    n_test = sum(n for _, n in cv.fold_sizes)
    cells = ["pooled", "", str(n_test)]
    cells += [cell(r["test_ll"]) for r in cv.rows]
    cells += [cell(r["paired_diff"]) for r in cv.rows[1:]]
    cells += ["" for _ in with_lam]
    lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
