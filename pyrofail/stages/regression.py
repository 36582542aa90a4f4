"""Stage ``regression``: Bayesian neural networks with latent input noise (``--preset bnn``).

For every regression process of the run (``options.regression``: ``heteroscedastic``,
``bimodal``, ``diabetes``), :func:`pyrofail.bnn.experiment` fits each inference method (NUTS,
mean-field VI, noise-constrained VI) to the process's seeded split and measures them on its
test points: the posterior predictive's log-likelihood with the latents drawn from their prior,
RMSE, 90% coverage, the train-minus-test gap, and the dependence between the inputs and the
inferred latents, each with its standard error, the first method's paired differences beside
them (Yacoby, Pan & Doshi-Velez 2022).

Reads: ``config.json``. Writes: ``regression/<process>.json``, ``figures/bnn-<process>.png``.
"""

from __future__ import annotations

from pathlib import Path

from pyrofail.analysis.figures.bnn import predictive_bands
from pyrofail.bnn import experiment
from pyrofail.estimate import Estimate
from pyrofail.records import RunFolder
from pyrofail.records.config import RunOptions
from pyrofail.records.regression import RegressionRecord, RegressionRow
from pyrofail.stages.pool import run_tasks

__all__ = ["run", "run_process"]


def _row(row: dict) -> RegressionRow:
    """An experiment's row as a record: its estimates apart from the method's name, seconds, λ."""
    plain = {k: v for k, v in row.items() if k in ("method", "seconds", "lam")}
    estimates = {k: v for k, v in row.items() if isinstance(v, Estimate)}
    return RegressionRow(**plain, estimates=estimates)


def run_process(process: str, options: RunOptions, folder: Path, figures: Path) -> RegressionRecord:
    """One process's experiment (``regression/<process>.json``), computed once."""
    path = folder / f"{process}.json"
    key = {
        "process": process,
        "methods": options.bnn_methods,
        "seed": options.seed,
        "hidden": options.bnn_hidden,
        "options": options.bnn_options,
        "sizes": options.bnn_sizes,
    }
    record = RunFolder.read(RegressionRecord, path)
    if record is not None and record.key == key:
        return record
    ex = experiment(
        process,
        tuple(options.bnn_methods),
        int(options.seed),
        hidden=tuple(options.bnn_hidden),
        options=options.bnn_options,
        **options.bnn_sizes,
    )
    figure = None
    if ex.data.x_train.shape[1] == 1:  # bands over the input need one input
        drawn = predictive_bands(
            ex.results, ex.data.x_train, ex.data.y_train, figures / f"bnn-{process}.png", title=process
        )
        figure = f"figures/{drawn.name}"
    record = RegressionRecord(key, process, [_row(row) for row in ex.rows], figure)
    RunFolder.write(record, path)
    return record


def run(folder: RunFolder) -> None:
    processes = folder.options.regression or []
    if not processes:
        return
    tasks = [(name, folder.options, folder.root / "regression", folder.figures) for name in processes]
    label = f"regression ({', '.join(folder.options.bnn_methods)})"
    run_tasks(run_process, tasks, folder.workers, threads=folder.threads, label=label, quiet=folder.quiet)
