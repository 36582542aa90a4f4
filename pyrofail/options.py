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

Adding an option is one entry here (or, for a user's data and the stages after the fits, in
:mod:`pyrofail.data_and_stage_options`) and the code that uses it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from pyrofail.data_and_stage_options import DATA_AND_STAGE_OPTIONS
from pyrofail.errors import check_choice
from pyrofail.option_schema import Option
from pyrofail.option_schema import each as _each
from pyrofail.option_schema import fraction as _fraction
from pyrofail.option_schema import no_repeats as _no_repeats
from pyrofail.option_schema import positive_float as _positive_float
from pyrofail.option_schema import positive_int as _positive_int

__all__ = ["OPTIONS", "Option", "defaults", "flag_of", "fit_names", "job_names"]


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
        *DATA_AND_STAGE_OPTIONS,
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
