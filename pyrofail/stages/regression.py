"""Stage ``regression``: Bayesian neural networks with latent input noise (``--preset bnn``).

For every regression process of the run (``options["regression"]``: ``heteroscedastic``,
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
from pyrofail.runs import atomic_write_json, read_json
from pyrofail.stages.folder import RunFolder
from pyrofail.stages.pool import run_tasks

__all__ = ["run", "run_process"]


def _plain(value):
    """An experiment row's value as JSON: an estimate as ``{"value", "stderr"}``."""
    if hasattr(value, "stderr") and hasattr(value, "value"):
        return {"value": float(value.value), "stderr": float(value.stderr)}
    return value


def run_process(process: str, options: dict, folder: Path, figures: Path) -> dict:
    """One process's experiment (``regression/<process>.json``), computed once."""
    path = folder / f"{process}.json"
    key = {
        "process": process,
        "methods": options["bnn_methods"],
        "seed": options["seed"],
        "hidden": options["bnn_hidden"],
        "options": options.get("bnn_options", {}),
        "sizes": options.get("bnn_sizes", {}),
    }
    if path.exists():
        record = read_json(path)
        if record.get("key") == key:
            return record
    ex = experiment(
        process,
        tuple(options["bnn_methods"]),
        int(options["seed"]),
        hidden=tuple(options["bnn_hidden"]),
        options=options.get("bnn_options", {}),
        **options.get("bnn_sizes", {}),
    )
    figure = None
    if ex.data.x_train.shape[1] == 1:  # bands over the input need one input
        drawn = predictive_bands(
            ex.results, ex.data.x_train, ex.data.y_train, figures / f"bnn-{process}.png", title=process
        )
        figure = f"figures/{drawn.name}"
    record = {
        "key": key,
        "process": process,
        "rows": [{k: _plain(v) for k, v in row.items()} for row in ex.rows],
        "figure": figure,
    }
    atomic_write_json(path, record)
    return record


def run(folder: RunFolder) -> None:
    processes = folder.options.get("regression") or []
    if not processes:
        return
    tasks = [(name, folder.options, folder.root / "regression", folder.figures) for name in processes]
    folder.say(f"regression: {', '.join(processes)} ({', '.join(folder.options['bnn_methods'])})")
    run_tasks(run_process, tasks, folder.workers)
