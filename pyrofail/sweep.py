"""The jobs of a run: the product over the sweep options, each resolved to a job config.

A job config holds the sweep values of its job (and, with cross-fitting on a user's data,
its fold) (``process``, ``truth_noise``, ``latent_dim``,
``guide``, ``objective`` and, when it is not the usual joint training, ``procedure``), every
option that changes a fit (:func:`pyrofail.options.job_names`) with the per-guide,
per-objective, per-procedure and per-process tables resolved for that job, and the user's data
source with its options. Options of the later stages are not in it, so they can change on
``--resume`` without refitting.

Example:
    >>> from pyrofail.presets import PRESETS
    >>> jobs = expand({**PRESETS["tiny"], "process": ["figure8"], "latent_dim": [1, 2]})
    >>> [(j.latent_dim, j.objective) for j in jobs]
    [(1, 'elbo'), (1, 'iwae'), (2, 'elbo'), (2, 'iwae')]
"""

from __future__ import annotations

import itertools

from pyrofail.options import job_names
from pyrofail.records.config import JobConfig
from pyrofail.records.folder import truth_of
from pyrofail.runs import RUN_FORMAT

__all__ = ["ABOVE_TRUE_K", "AXES", "expand"]

AXES = ("process", "truth_noise", "latent_dim", "guide", "objective", "procedure")
# ``learn_noise`` may name the jobs that learn sigma: those with more latent dimensions than
# the ground truth. The jobs at the true K keep the truth's sigma: they are Table 1's "GT"
# model, which the paper's ELBO is said to prefer less than larger K *and smaller sigma*.
ABOVE_TRUE_K = "above_true_k"
# tables resolved per job, and the options the command line merged into them
_TABLES = (
    "guide_options",
    "objective_options",
    "procedure_options",
    "truth_options",
    "lr_by_guide",
    "num_particles",
    "matched_budget",
)


def expand(options: dict) -> list[JobConfig]:
    """The cartesian product over the sweep options, one resolved config per job
    (:class:`~pyrofail.records.config.JobConfig`)."""
    if options.get("program") is not None:
        return []  # a user's own fitted program: checked, not fitted
    options = {"truth_noise": None, "procedure": ["joint"], **options}
    if options.get("data") is not None:  # a user's data set takes the place of the processes
        options["process"], options["truth_noise"] = [None], None
    axes = [options[a] if isinstance(options[a], (list, tuple)) else [options[a]] for a in AXES]
    base = {k: options[k] for k in job_names() if k in options and k not in _TABLES}
    if options.get("data") is not None:
        base["data"], base["data_options"] = options["data"], dict(options.get("data_options", {}))
    folds = int((options.get("data_options") or {}).get("folds") or 1)
    jobs = []
    for fold, process, noise, k, guide, objective, procedure in itertools.product(range(folds), *axes):
        cfg = dict(base, process=process, latent_dim=int(k), guide=guide, objective=objective)
        if folds > 1:  # cross-fitting: one job per fold, tested on its held-out rows
            cfg["data_options"] = {**cfg["data_options"], "fold": fold}
        if noise is not None:
            cfg["truth_noise"] = float(noise)
        if procedure != "joint":
            cfg["procedure"] = procedure
            cfg["procedure_options"] = dict(options.get("procedure_options", {}).get(procedure, {}))
        truth_options = dict(options.get("truth_options", {}).get(process, {}))
        if truth_options:
            cfg["truth_options"] = truth_options
        cfg["guide_options"] = dict(options.get("guide_options", {}).get(guide, {}))
        cfg["objective_options"] = dict(options.get("objective_options", {}).get(objective, {}))
        cfg["lr"] = float(options.get("lr_by_guide", {}).get(guide, options["lr"]))
        if "libi" in axes[5]:  # the LiBI table compares the fits' aggregate posteriors
            cfg["aggregate_kl"] = True
        cfg["format"] = RUN_FORMAT
        config = JobConfig.from_dict(cfg)
        if config.learn_noise == ABOVE_TRUE_K:
            config = config.replace(learn_noise=int(k) > truth_of(config).latent_dim)
        jobs.append(config)
    return jobs
