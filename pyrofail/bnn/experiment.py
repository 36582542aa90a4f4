r"""One comparison of inference methods on one regression problem, as a table.

For a ``"regression"`` zoo entry (``heteroscedastic``, ``bimodal``, ``diabetes``):
draw the seeded train/test split, fit every method with the same network, seed and
hyperparameters, and :func:`~pyrofail.bnn.metrics.evaluate` each on the same test points.
Beside each method's test log-likelihood stands its paired difference from the first method
(per test point, mean and standard error), so that the "a difference inside two paired standard
errors is a tie" rule can be read off; where the process has a ground truth, a ``truth`` row gives
the ideal test log-likelihood :math:`\frac1M\sum_m \log p(y_m \mid x_m)`, the coverage of the
true central 90% interval and the RMSE of the true conditional mean.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from pyrofail import zoo
from pyrofail.bnn.inference import METHODS, infer
from pyrofail.bnn.metrics import Estimate, Evaluation, evaluate, mean_estimate
from pyrofail.bnn.posterior import BNNPosterior
from pyrofail.errors import check_choice

__all__ = ["Experiment", "compare_on_split", "experiment", "format_table"]

COLUMNS = (
    "test_ll",
    "paired_diff",
    "coverage90",
    "rmse",
    "train_ll",
    "train_ll_prior_z",
    "gap",
    "hsic",
    "r2_z",
    "z_sd",
)


@dataclass
class Experiment:
    """``rows``: one dict per method (and ``truth``): ``method``, ``seconds``, ``lam`` and every
    column of :data:`COLUMNS` as an :class:`~pyrofail.bnn.metrics.Estimate` (or ``None``);
    ``results`` and ``evaluations``: per method; ``data``: the split used."""

    process: str
    rows: list[dict]
    results: dict[str, BNNPosterior]
    evaluations: dict[str, Evaluation]
    data: object

    def table(self) -> str:
        """The rows as a Markdown table (:func:`format_table`)."""
        return format_table(self.rows)


def experiment(
    process: str = "heteroscedastic",
    methods=("mean_field", "noise_constrained", "nuts"),
    seed: int = 0,
    *,
    n_train: int | None = None,
    n_test: int | None = None,
    hidden=(50,),
    num_z: int = 50,
    options: dict | None = None,
    **network,
) -> Experiment:
    r"""Fit ``methods`` to ``process``'s seeded split and evaluate them on its test points.

    ``options`` maps a method's name to its options (e.g. ``{"nuts": {"warmup": 300}}``);
    ``network`` (``noise_scale``, ``weight_scale``, ``latent_scale``, ``activation``,
    ``standardize``) goes to every :func:`~pyrofail.bnn.inference.infer`. The paired differences
    are against the first method. ``n_train`` and ``n_test`` default to the entry's own
    (750 and 1000 for the synthetic processes, the whole split for ``diabetes``).

    Example:
        >>> ex = experiment("bimodal", ("mean_field",), n_train=30, n_test=20, hidden=(4,), num_z=5,
        ...                 options={"mean_field": {"steps": 20, "num_draws": 10}})
        >>> [row["method"] for row in ex.rows]
        ['truth', 'mean_field']
    """
    entry = zoo.entry("regression", process)
    methods = [check_choice("inference", m, METHODS) for m in methods]
    options = options or {}
    sizes = {k: v for k, v in (("n_train", n_train), ("n_test", n_test)) if v is not None}
    data = entry.factory().splits(seed=seed, **sizes)
    rows = []
    truth = entry.factory()
    if truth.log_density is not None:
        ll = truth.log_density(data.x_test, data.y_test)
        pit = truth.cdf(data.x_test, data.y_test)
        sq_err = mean_estimate((truth.mean(data.x_test) - data.y_test) ** 2)
        rows.append(
            {
                "method": "truth",
                "seconds": None,
                "lam": None,
                "test_ll": mean_estimate(ll),
                "coverage90": mean_estimate(((pit >= 0.05) & (pit <= 0.95)).double()),
                "rmse": Estimate(sq_err.mean**0.5, sq_err.stderr / (2 * sq_err.mean**0.5)),
            }
        )
    fitted, results, evaluations = compare_on_split(data, methods, seed, hidden, num_z, options, network)
    rows += fitted
    return Experiment(process, rows, results, evaluations, data)


def compare_on_split(
    data, methods, seed: int, hidden, num_z: int, options: dict, network: dict
) -> tuple[list[dict], dict[str, BNNPosterior], dict[str, Evaluation]]:
    """Fit every method of ``methods`` (checked names) to ``data``'s training points and evaluate
    it on its test points: the method rows of :func:`experiment` (``method``, ``seconds``,
    ``lam``, the estimates of :func:`~pyrofail.bnn.metrics.evaluate` and ``paired_diff`` against
    the first method), and the fits and evaluations by method. Shared by :func:`experiment` and
    :func:`pyrofail.bnn.crossval.cross_validate`."""
    rows, results, evaluations = [], {}, {}
    for method in methods:
        start = time.perf_counter()
        post = infer(
            data.x_train,
            data.y_train,
            inference=method,
            hidden=hidden,
            seed=seed,
            **network,
            **options.get(method, {}),
        )
        seconds = time.perf_counter() - start
        ev = evaluate(post, data.x_test, data.y_test, seed=seed, num_z=num_z)
        results[method], evaluations[method] = post, ev
        row = {"method": method, "seconds": seconds, "lam": post.info.get("lam"), **ev.estimates}
        base = evaluations[methods[0]].per_point["test_ll"]
        row["paired_diff"] = mean_estimate(ev.per_point["test_ll"] - base) if method != methods[0] else None
        rows.append(row)
    return rows, results, evaluations


def format_table(rows: list[dict]) -> str:
    """A Markdown table: one row per method, every estimate as ``value ± stderr``.

    Example:
        >>> row = {"method": "a", "seconds": 1.0, "lam": None, "test_ll": Estimate(-1.0, 0.1)}
        >>> table = format_table([row])
        >>> print(table.splitlines()[2][:34])
        | a | 1 |  | -1.000 ± 0.100 |  |
    """

    def cell(v) -> str:
        if v is None:
            return ""
        if isinstance(v, Estimate):
            return f"{v.mean:.4f} ± {v.stderr:.4f}" if abs(v.mean) < 0.1 else str(v)
        if isinstance(v, float):
            return f"{v:.0f}" if v >= 1 else f"{v:g}"
        return str(v)

    head = ("method", "seconds", "lam", *COLUMNS)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        lines.append("| " + " | ".join(cell(row.get(h)) for h in head) + " |")
    return "\n".join(lines)
