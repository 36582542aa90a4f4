"""Every option of a run, once: its default, its check, its flag, its help, and what it changes.

:data:`OPTIONS` is the one schema the command line (:mod:`pyrofail.analyze`), the presets
(:mod:`pyrofail.presets`), the job configs (:func:`expand`) and :func:`pyrofail.fit` are built
from or checked against. Each :class:`Option` has a ``kind``:

* ``"sweep"``: a list; the run has one job per combination of the sweep options' values;
* ``"fit"``: changes each job's fit (passed to :func:`pyrofail.fit` under the same name when
  ``to_fit``), so it is part of every job's config;
* ``"data"``: describes a user's data set (``--data``) and goes to ``data_options``;
* ``"later"``: used by the stages after the fits (references, downstream, regression): not in a
  job's config, so changing it on ``--resume`` reuses the fits;
* ``"run"``: how the run executes (workers, threads, output): not recorded in any result.

The σ of the ground truth is ``truth_noise`` (``--truth-noise``); the σ of the fitted models is
``noise_scale`` (``--noise-scale``): two names everywhere.

Adding an option is one entry here and the code that uses it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pyrofail.errors import UsageError, check_choice, check_positive_float, check_positive_int

__all__ = ["OPTIONS", "Option", "defaults", "flag_of", "fit_names", "job_names"]


def _positive_int(value, flag):
    check_positive_int(flag, value)


def _positive_float(value, flag):
    check_positive_float(flag, value)


def _each(check):
    def run(values, flag):
        for v in values:
            check(v, flag)

    return run


def _no_repeats(values, flag):
    if values is not None and len(set(map(str, values))) != len(values):
        raise UsageError(f"{flag} lists a value twice: {', '.join(map(str, values))}")


def _fraction(value, flag):
    if not 0.0 < float(value) <= 1.0:
        raise UsageError(f"{flag} {value} is not allowed; expected a share in (0, 1]")


@dataclass(frozen=True)
class Option:
    """One option (module docstring). ``flags``: its command-line spellings (none: presets and
    Python only); ``parse``: the argparse type of one value (lists are comma-separated when
    ``kind == "sweep"`` or ``many``); ``check(value, flag)`` raises a one-line
    :class:`~pyrofail.errors.UsageError` in the flag's spelling."""

    name: str
    default: Any
    help: str
    kind: str = "fit"
    flags: tuple[str, ...] = ()
    parse: Callable | None = None
    metavar: str | None = None
    choices: tuple | None = None
    check: Callable | None = None
    many: bool = False
    switch: bool = False  # a flag without a value (store_true)
    to_fit: bool = False

    @property
    def flag(self) -> str:
        return self.flags[0] if self.flags else self.name


_O = Option  # the table below reads better short
OPTIONS: dict[str, Option] = {
    o.name: o
    for o in (
        # -- what is fitted: the sweep axes --------------------------------------------------------
        _O(
            "process",
            ["figure8"],
            "ground-truth processes (see --list)",
            "sweep",
            ("--process", "--model"),
            str,
            "NAMES",
            check=_no_repeats,
        ),
        _O(
            "truth_noise",
            None,
            "noise scales σ of the ground truth, e.g. 0.03,0.05,0.1 (default: each "
            "process's own); one job per value",
            "sweep",
            ("--truth-noise",),
            float,
            "SIGMAS",
            check=lambda v, f: (_no_repeats(v, f), _each(_positive_float)(v or [], f)),
        ),
        _O(
            "latent_dim",
            [1],
            "latent dimensions K of the learned models, e.g. 1,2,3",
            "sweep",
            ("--latent-dim",),
            int,
            "KS",
            check=lambda v, f: (_no_repeats(v, f), _each(_positive_int)(v, f)),
        ),
        _O(
            "guide",
            ["mean_field"],
            "variational families (see --list)",
            "sweep",
            ("--guide",),
            str,
            "NAMES",
            check=_no_repeats,
        ),
        _O(
            "objective",
            ["elbo", "iwae"],
            "training objectives (see --list)",
            "sweep",
            ("--objective",),
            str,
            "NAMES",
            check=_no_repeats,
        ),
        _O(
            "procedure",
            ["joint"],
            "training procedures: joint (the usual VAE training), libi "
            "(likelihood before inference), posthoc_self_consistency (see --list)",
            "sweep",
            ("--procedure",),
            str,
            "NAMES",
            check=_no_repeats,
        ),
        # -- how each job is fitted ------------------------------------------------------------------
        _O(
            "restarts",
            10,
            "restarts per job, trained as one vectorised model; the best by the validation objective is kept",
            "fit",
            ("--restarts",),
            int,
            "R",
            check=_positive_int,
            to_fit=True,
        ),
        _O(
            "steps",
            6000,
            "Adam steps per job",
            "fit",
            ("--steps",),
            int,
            "N",
            check=_positive_int,
            to_fit=True,
        ),
        _O(
            "batch_size",
            100,
            "data points per step",
            "fit",
            ("--batch-size",),
            int,
            "B",
            check=_positive_int,
            to_fit=True,
        ),
        _O(
            "lr",
            1e-3,
            "Adam learning rate (for every guide; without it, each guide's own from the preset)",
            "fit",
            ("--lr",),
            float,
            check=_positive_float,
            to_fit=True,
        ),
        _O("seed", 0, "seed of data, weights and Monte Carlo draws", "fit", ("--seed",), int, to_fit=True),
        _O("device", "cpu", "torch device: cpu or cuda[:N]", "fit", ("--device",), str),
        _O(
            "n_train",
            5000,
            "training points drawn from each process",
            "fit",
            ("--n-train",),
            int,
            "N",
            check=_positive_int,
        ),
        _O(
            "n_val",
            2000,
            "validation points (restart selection)",
            "fit",
            ("--n-val",),
            int,
            "N",
            check=_positive_int,
        ),
        _O(
            "n_test",
            2000,
            "test points (every reported metric)",
            "fit",
            ("--n-test",),
            int,
            "N",
            check=_positive_int,
        ),
        _O(
            "hidden",
            [50, 50, 50],
            "hidden-layer widths of encoder and decoder",
            "fit",
            ("--hidden",),
            int,
            "WIDTHS",
            many=True,
            check=_each(_positive_int),
            to_fit=True,
        ),
        _O(
            "init",
            "paper",
            "restart initialisation: paper (half at the ground truth, half random), random or ground_truth",
            "fit",
            ("--init",),
            str,
            choices=("paper", "random", "ground_truth"),
            to_fit=True,
        ),
        _O(
            "pretrain_steps",
            2000,
            "regression steps that pre-fit the decoder to the true f for the "
            "restarts started at the ground truth",
            "fit",
            ("--pretrain-steps",),
            int,
            "N",
            to_fit=True,
        ),
        _O(
            "learn_noise",
            False,
            "learn the fitted models' σ: all (every job), above-true-k (only jobs "
            "with more latent dimensions than the truth: Table 1's models), none",
            "fit",
            ("--learn-noise",),
            str,
            "WHICH",
        ),
        _O(
            "noise_scale",
            None,
            "σ of the fitted models, fixed unless learned (default: the ground "
            "truth's; on your data learned from 1)",
            "fit",
            ("--noise-scale",),
            float,
            "SIGMA",
            check=lambda v, f: v is None or _positive_float(v, f),
            to_fit=True,
        ),
        _O(
            "noise_per_feature",
            False,
            "learn one σ per feature (implies --learn-noise)",
            "fit",
            ("--noise-per-feature",),
            switch=True,
            to_fit=True,
        ),
        _O(
            "likelihood",
            "gaussian",
            "p(x | z) of the fitted models: gaussian or bernoulli (binary data)",
            "fit",
            ("--likelihood",),
            str,
            choices=("gaussian", "bernoulli"),
            to_fit=True,
        ),
        _O(
            "num_particles",
            None,
            "importance samples per point of the iwae objective",
            "fit",
            ("--num-particles",),
            int,
            "S",
            check=lambda v, f: v is None or _positive_int(v, f),
        ),
        _O(
            "matched_budget",
            False,
            "iwae with mixture guides: split the draws over the components, so "
            "every family gets about S model evaluations per point",
            "fit",
            ("--matched-budget",),
            switch=True,
        ),
        _O(
            "labelled_fraction",
            0.1,
            "semi-supervised processes (semicircle): the share of training points that keep their label",
            "fit",
            ("--labelled-fraction",),
            float,
            "F",
            check=_fraction,
        ),
        _O(
            "is_samples",
            5000,
            "importance draws per point for log p(x) at K > 2",
            "fit",
            ("--is-samples",),
            int,
            "S",
            check=_positive_int,
        ),
        _O("guide_options", {}, "per-guide options", "fit"),
        _O("objective_options", {}, "per-objective options", "fit"),
        _O("procedure_options", {}, "per-procedure options", "fit"),
        _O("truth_options", {}, "per-process options of the ground truth", "fit"),
        _O("lr_by_guide", {}, "the learning rate of each guide where --lr is not given", "fit"),
        # -- a user's data -----------------------------------------------------------------------
        _O(
            "data",
            None,
            "a CSV file (a header row, numeric columns), a .npy/.npz file, or a data set "
            "bundled with scikit-learn (see --list); replaces --process: the check runs without a ground "
            "truth, learning σ, all restarts random",
            "data",
            ("--data",),
            str,
            "SOURCE",
        ),
        _O(
            "program",
            None,
            "check a Pyro model and guide of yours instead of fitting: 'module:object', where object "
            "is a (model, guide) pair or has .model and .guide, importable from the current folder; "
            "--data gives the points (in the units the program was trained on)",
            "data",
            ("--program",),
            str,
            "MODULE:OBJECT",
        ),
        _O(
            "columns",
            None,
            "feature columns to use (default: all)",
            "data",
            ("--columns",),
            str,
            "NAMES",
            many=True,
        ),
        _O(
            "labels",
            None,
            "a column of labels, kept for the tasks that use them",
            "data",
            ("--labels",),
            str,
            "COLUMN",
        ),
        _O(
            "standardize",
            True,
            "standardise each feature with the training rows' mean and sd (stored "
            "in data.json); --no-standardize keeps the data's units",
            "data",
            ("--no-standardize",),
            switch=True,
        ),
        _O(
            "split",
            [0.6, 0.2, 0.2],
            "train,validation,test shares",
            "data",
            ("--split",),
            float,
            "FRACTIONS",
            many=True,
        ),
        _O(
            "binarize",
            None,
            "values above THRESHOLD become 1, the others 0 (for --likelihood bernoulli; digits: 8)",
            "data",
            ("--binarize",),
            float,
            "THRESHOLD",
        ),
        _O(
            "header",
            True,
            "the CSV's first line names the columns; --no-header: it is data (columns named x0, x1, ...)",
            "data",
            ("--no-header",),
            switch=True,
        ),
        _O(
            "delimiter",
            None,
            "the CSV's column separator (default: a comma, or what the file shows)",
            "data",
            ("--delimiter",),
            str,
            "CHAR",
        ),
        _O(
            "folds",
            None,
            "cross-fitting on your data: fit on F - 1 folds, test on the held-out one, so "
            "that every row is a test point (default: 5 for tables under 1,000 rows, else one split)",
            "data",
            ("--folds",),
            int,
            "F",
            check=lambda v, f: v is None or _positive_int(v, f),
        ),
        # -- the stages after the fits ----------------------------------------------------------------
        _O(
            "reference",
            "auto",
            "reference posterior: grid (exact, K <= 2), nuts (any K) or auto (the "
            "grid where it applies); --no-reference skips references, posterior bias and the diagnosis",
            "later",
            ("--reference",),
            str,
            "METHOD",
            choices=("auto", "grid", "nuts"),
        ),
        _O(
            "reference_points",
            300,
            "test points at which references are computed and guides compared (all test points if fewer)",
            "later",
            ("--reference-points",),
            int,
            "N",
            check=_positive_int,
        ),
        _O(
            "downstream",
            False,
            "also measure the downstream tasks: compression, disentanglement, "
            "adversarial robustness of the encoder, outlier detection",
            "later",
            ("--downstream",),
            switch=True,
        ),
        _O(
            "downstream_points",
            10_000,
            "fresh draws of the truth on which --downstream scores disentanglement (MIG's plug-in bias "
            "is about -3% at 2,000 and under 1% at 10,000)",
            "later",
            ("--downstream-points",),
            int,
            "N",
            check=_positive_int,
        ),
        _O(
            "regression",
            [],
            "regression processes for Bayesian neural networks with latent input noise: "
            "heteroscedastic, bimodal, diabetes",
            "later",
            ("--regression",),
            str,
            "NAMES",
            many=True,
        ),
        _O(
            "bnn_methods",
            ["mean_field", "noise_constrained", "nuts"],
            "inference for the regression processes",
            "later",
            ("--bnn-methods",),
            str,
            "NAMES",
            many=True,
        ),
        _O("bnn_hidden", [50], "hidden widths of the Bayesian neural networks", "later"),
        _O("bnn_options", {}, "options of each BNN inference method", "later"),
        _O("bnn_sizes", {}, "n_train / n_test of the regression processes", "later"),
        _O(
            "max_memory",
            "1GiB",
            "memory budget per worker process, e.g. 512MiB or 2GiB: evaluations "
            "stream over points in chunks that fit it; a run that cannot fit says so before it starts",
            "later",
            ("--max-memory",),
            str,
            "SIZE",
        ),
    )
}


def defaults() -> dict:
    """Every option at its default (the paper's protocol): the base of every preset. The options
    that describe a user's data are not among them: they exist only with ``--data``."""
    return {
        name: _copy(o.default)
        for name, o in OPTIONS.items()
        if o.kind != "data" or name in ("data", "program")
    }


def _copy(value):
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return list(value)
    return value


def flag_of(name: str) -> str:
    """The command-line spelling of option ``name`` (``--latent-dim`` for ``latent_dim``)."""
    option = OPTIONS.get(name)
    return option.flag if option is not None and option.flags else f"--{name.replace('_', '-')}"


def fit_names() -> tuple[str, ...]:
    """Options passed to :func:`pyrofail.fit` under their own name."""
    return tuple(name for name, o in OPTIONS.items() if o.to_fit)


def job_names() -> tuple[str, ...]:
    """Options that are part of every job's config (they change the fit)."""
    return tuple(name for name, o in OPTIONS.items() if o.kind == "fit")


def add_arguments(parser: argparse.ArgumentParser, shown: dict, list_type: Callable) -> None:
    """Add every option with a flag to ``parser``, grouped by kind; ``shown``: the defaults to
    print in the help (those of the default preset); ``list_type(cast)`` parses a
    comma-separated list."""
    titles = {
        "sweep": "what to fit (comma-separated lists sweep: one job per combination)",
        "fit": "how each job is fitted",
        "data": "your own data, or your own Pyro program (instead of --process)",
        "later": "what is measured after the fits",
    }
    groups = {kind: parser.add_argument_group(title) for kind, title in titles.items()}
    for o in OPTIONS.values():
        if not o.flags:
            continue
        default = shown.get(o.name, o.default)
        # argparse formats help with %-interpolation, so a literal percent sign is doubled
        text = (o.help + _default_text(o, default)).replace("%", "%%")
        kwargs = {"help": text, "dest": o.name}
        if o.switch:
            kwargs["action"] = "store_true"
        else:
            kwargs["metavar"] = o.metavar or o.name.upper()
            kwargs["type"] = list_type(o.parse) if (o.kind == "sweep" or o.many) else o.parse
            if o.choices:
                kwargs["choices"] = o.choices
                kwargs.pop("metavar")
        if o.name == "learn_noise":
            kwargs.update(nargs="?", const="all")
        groups[o.kind].add_argument(*o.flags, **kwargs)


def _default_text(o: Option, default) -> str:
    if o.switch or default in (None, {}, []):
        return ""
    if isinstance(default, list):
        default = ",".join(map(str, default))
    return f" (default: {default})"


def check(options: dict) -> None:
    """Each option's own check, in the spelling of its flag."""
    for name, o in OPTIONS.items():
        if o.check is not None and name in options:
            o.check(options[name], o.flag)
        if o.choices is not None and options.get(name) is not None:
            check_choice(o.flag, options[name], o.choices)
