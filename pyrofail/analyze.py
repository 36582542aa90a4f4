"""``python -m pyrofail.analyze``: fit, measure and report, end to end.

Without arguments it runs the built-in default (Clusters, MFG-VAE against IWAE at the true
K = 1, about two minutes on two CPU cores) and writes a run folder. Every option takes a
comma-separated list where a sweep makes sense; the sweep is the product of the lists, one job
per process x K x guide x objective, each job running its restarts vectorised.

Exit status: 0 on success, 2 for bad input (one line on stderr, no traceback), 1 when every
restart of a job diverged, 130 when interrupted (the run folder can be resumed).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import inspect
import json
import sys
from functools import partial
from pathlib import Path

import torch

from pyrofail import loaders, stages, zoo
from pyrofail.analysis.reference import METHODS, grid
from pyrofail.bnn.inference import METHODS as BNN_METHODS
from pyrofail.data import check_binary, check_fractions, load_splits
from pyrofail.errors import (
    AllRestartsDiverged,
    UsageError,
    check_choice,
    check_positive_float,
    check_positive_int,
)
from pyrofail.presets import PRESETS
from pyrofail.runs import (
    RUN_FORMAT,
    atomic_write_json,
    read_json,
    remove_stale_temporaries,
    versions,
)
from pyrofail.stages import jobs, pool, report
from pyrofail.stages.folder import RunFolder
from pyrofail.stages.jobs import ABOVE_TRUE_K
from pyrofail.stages.references import DEFAULT_POINTS
from pyrofail.training import build

__all__ = ["build_parser", "main", "resolve", "validate"]

PROG = "python -m pyrofail.analyze"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit 2, instead of usage + message
        self.exit(2, f"{PROG}: error: {message} (see --help)\n")


def _list(cast):
    def parse(text: str):
        items = [t.strip() for t in str(text).split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"empty list {text!r}")
        try:
            return [cast(t) for t in items]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a comma-separated list of {cast.__name__}s"
            ) from None

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description=(
            "Fit VAEs to ground-truth processes with swappable guides and objectives, measure "
            "them against the truth, and write a run folder (config.json, metrics.json, "
            "report.md, figures/, jobs/). List-valued options sweep: one job per "
            "model x latent-dim x guide x objective."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="default",
        help="option set to start from: 'default' (Clusters, ELBO vs IWAE, K=1, "
        "~2 min), 'table1' (Table 1 of Yacoby et al.: figure8 and clusters, "
        "K=1,2,3, ELBO vs IWAE, 10 restarts, the noise learned at K=2,3), 'failure-map' (figure8 "
        "and clusters over the truth's noise scale), 'downstream' (the downstream tasks), 'bnn' "
        "(Bayesian neural networks with latent input noise), 'tiny' (seconds; a smoke test)",
    )
    p.add_argument(
        "--model",
        type=_list(str),
        metavar="NAMES",
        help="ground-truth processes, comma-separated (see --list)",
    )
    p.add_argument(
        "--truth-noise",
        type=_list(float),
        metavar="SIGMAS",
        help="noise scales of the ground truth, e.g. 0.03,0.05,0.1 (default: each process's own); "
        "one job per value, and the learned models' noise follows it unless --noise-scale is given",
    )
    p.add_argument(
        "--truth-option",
        action="append",
        metavar="[MODEL.]KEY=VALUE",
        help="an option of the ground-truth process, e.g. figure8.scale=1 or clusters.beta=5 (for "
        "every process in --model without MODEL.); repeatable; VALUE is read as JSON or else as text; "
        "the noise scale is --truth-noise",
    )
    p.add_argument(
        "--latent-dim",
        type=_list(int),
        metavar="KS",
        help="latent dimensions K of the learned models, e.g. 1,2,3",
    )
    p.add_argument(
        "--guide", type=_list(str), metavar="NAMES", help="variational families, comma-separated (see --list)"
    )
    p.add_argument(
        "--objective",
        type=_list(str),
        metavar="NAMES",
        help="training objectives, comma-separated (see --list)",
    )
    p.add_argument(
        "--procedure",
        type=_list(str),
        metavar="NAMES",
        help="training procedures, comma-separated: joint (the usual VAE training), libi "
        "(likelihood before inference), posthoc_self_consistency (train the VAE by the ELBO, then "
        "retrain its encoder on the model's own samples by the run's objective) (see --list)",
    )
    p.add_argument("--restarts", type=int, metavar="R", help="restarts per job (vectorised)")
    p.add_argument("--steps", type=int, metavar="N", help="Adam steps per job")
    p.add_argument("--batch-size", type=int, metavar="B", help="data points per step")
    p.add_argument("--lr", type=float, help="Adam learning rate")
    p.add_argument(
        "--num-particles", type=int, metavar="S", help="importance samples per point for the iwae objective"
    )
    p.add_argument(
        "--matched-budget",
        action="store_true",
        help="iwae with mixture guides (mixture, flow): split the S draws over the components, "
        "so every family gets about S model evaluations per point (default: S from each component)",
    )
    p.add_argument(
        "--guide-option",
        action="append",
        metavar="[GUIDE.]KEY=VALUE",
        help="an option of the variational family, e.g. flow.base=gaussian or components=3 (for every "
        "guide in --guide); repeatable; VALUE is read as JSON (numbers, true/false) or else as text",
    )
    p.add_argument(
        "--objective-option",
        action="append",
        metavar="[OBJECTIVE.]KEY=VALUE",
        help="an option of the objective, e.g. iwae.num_particles=50, or alpha=0.1 (every objective "
        "in --objective); repeatable; VALUE is read as JSON or else as text",
    )
    p.add_argument(
        "--procedure-option",
        action="append",
        metavar="[PROCEDURE.]KEY=VALUE",
        help="an option of the procedure, e.g. posthoc_self_consistency.samples=20000 or "
        "libi.penalty=10 (every procedure in --procedure that has it); repeatable",
    )
    p.add_argument(
        "--labelled-fraction",
        type=float,
        metavar="F",
        help="semi-supervised processes (semicircle): the share of training points that keep their "
        "label (default 0.1)",
    )
    p.add_argument("--seed", type=int, help="seed of data, weights and Monte Carlo draws")
    p.add_argument("--device", help="torch device: cpu or cuda")
    p.add_argument("--n-train", type=int, metavar="N", help="training points")
    p.add_argument("--n-val", type=int, metavar="N", help="validation points (restart selection)")
    p.add_argument("--n-test", type=int, metavar="N", help="test points (all reported metrics)")
    p.add_argument(
        "--hidden",
        type=_list(int),
        metavar="WIDTHS",
        help="hidden-layer widths of encoder and decoder, e.g. 50,50,50",
    )
    p.add_argument(
        "--init",
        choices=["paper", "random", "ground_truth"],
        help="restart initialisation: 'paper' = half at the ground truth",
    )
    data = p.add_argument_group("your own data (instead of --model)")
    data.add_argument(
        "--data",
        metavar="SOURCE",
        help="a CSV file (header row, numeric columns), a .npy/.npz file, or a data set bundled "
        "with scikit-learn: diabetes, breast_cancer, wine, digits; the check runs without a ground truth",
    )
    data.add_argument(
        "--columns", type=_list(str), metavar="NAMES", help="feature columns to use (default: all)"
    )
    data.add_argument(
        "--labels", metavar="COLUMN", help="a column of labels, kept for the tasks that use them"
    )
    data.add_argument(
        "--no-standardize",
        action="store_true",
        help="keep the data's units (default: standardise each feature with the training rows' "
        "mean and sd, stored in data.json)",
    )
    data.add_argument(
        "--split",
        type=_list(float),
        metavar="FRACTIONS",
        help="train,validation,test shares (default 0.6,0.2,0.2)",
    )
    data.add_argument(
        "--binarize",
        type=float,
        metavar="THRESHOLD",
        help="values above THRESHOLD become 1, the others 0 (--likelihood bernoulli; digits: 8 by default)",
    )
    p.add_argument(
        "--likelihood",
        choices=["gaussian", "bernoulli"],
        help="p(x | z) of the learned models: gaussian (default) or bernoulli (binary data)",
    )
    p.add_argument(
        "--noise-scale",
        type=float,
        metavar="SIGMA",
        help="noise scale of the learned models (default: the ground truth's; learned on your own data)",
    )
    p.add_argument(
        "--noise-per-feature",
        action="store_true",
        help="learn one noise scale per feature (implies --learn-noise)",
    )
    p.add_argument(
        "--learn-noise",
        nargs="?",
        const="all",
        metavar="WHICH",
        help="learn the noise scale instead of fixing it (starting at --noise-scale): in every "
        "job ('all', the default), 'above-true-k': only in jobs with more latent dimensions "
        "than the ground truth, the jobs at the true K keeping the truth's (Table 1's GT model), "
        "or 'none' (over a preset's)",
    )
    p.add_argument(
        "--reference",
        metavar="METHOD",
        help="reference posterior for the posterior-bias tables and the diagnosis, computed after "
        "the fits: 'grid' (exact quadrature, K <= 2), 'nuts' (any K) or 'auto' (the grid where it "
        "applies) (default: auto)",
    )
    p.add_argument(
        "--no-reference",
        action="store_true",
        help="skip the reference posteriors, the posterior-bias tables, the diagnosis and the "
        "posterior figures",
    )
    p.add_argument(
        "--reference-points",
        type=int,
        metavar="N",
        help="test points at which references are computed and guides compared (default: 300, "
        "or all test points if fewer); the PMO-gap map uses every test point",
    )
    p.add_argument(
        "--regression",
        type=_list(str),
        metavar="NAMES",
        help="regression processes for Bayesian neural networks with latent input noise: "
        "heteroscedastic, bimodal, diabetes (the bnn preset runs all three)",
    )
    p.add_argument(
        "--bnn-methods",
        type=_list(str),
        metavar="NAMES",
        help="inference for the regression processes: mean_field, noise_constrained, nuts",
    )
    p.add_argument(
        "--downstream",
        action="store_true",
        help="also measure the downstream tasks: compression, disentanglement, adversarial "
        "robustness of the encoder, outlier detection (zoo processes only)",
    )
    p.add_argument("--out", metavar="DIR", help="run folder (default: runs/<preset>-<time>)")
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue a run folder: finished jobs are kept, unfinished ones resume "
        "from their last checkpoint; takes no other run options",
    )
    p.add_argument(
        "--workers", type=int, metavar="N", help="jobs run in parallel in a local process pool (default 1)"
    )
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="send every stage's tasks to the Dask cluster at ADDRESS (e.g. tcp://host:8786), or to "
        "a local cluster of --workers processes started for the run ('local'); the run folder must be "
        "on a filesystem all workers share, under the same path; needs the dask extra",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--list", action="store_true", help="print the registered models, guides and objectives and exit"
    )
    return p


# options a user may give, mapped to the resolved option names
_RUN_OPTIONS = {
    "model": "model",
    "truth_noise": "truth_noise",
    "latent_dim": "latent_dim",
    "guide": "guide",
    "objective": "objective",
    "procedure": "procedure",
    "restarts": "restarts",
    "steps": "steps",
    "batch_size": "batch_size",
    "lr": "lr",
    "seed": "seed",
    "device": "device",
    "n_train": "n_train",
    "n_val": "n_val",
    "n_test": "n_test",
    "hidden": "hidden",
    "init": "init",
    "learn_noise": "learn_noise",
    "noise_scale": "noise_scale",
    "reference": "reference",
    "reference_points": "reference_points",
    "no_reference": "reference",
    "likelihood": "likelihood",
    "noise_per_feature": "noise_per_feature",
    "downstream": "downstream",
    "regression": "regression",
    "bnn_methods": "bnn_methods",
    "labelled_fraction": "labelled_fraction",
}
# the flags that describe a user's data set (options["data_options"])
_DATA_OPTIONS = {"columns": "columns", "labels": "labels", "split": "fractions", "binarize": "binarize"}


def resolve(args: argparse.Namespace) -> dict:
    """Options of the run: the preset, overridden by what was given, validated."""
    given = vars(args)
    options = {k: (dict(v) if isinstance(v, dict) else v) for k, v in PRESETS[args.preset].items()}
    options["objective_options"] = {k: dict(v) for k, v in options["objective_options"].items()}
    options.setdefault("reference", "auto")
    options.setdefault("reference_points", DEFAULT_POINTS)
    if "no_reference" in given and "reference" in given:
        raise UsageError("--reference and --no-reference exclude each other; give one of them")
    for flag, key in _RUN_OPTIONS.items():
        if flag in given:
            options[key] = None if flag == "no_reference" else given[flag]
    if "lr" in given:  # an explicit --lr applies to every guide, over the preset's table
        options["lr_by_guide"] = {}
    if "num_particles" in given:
        options["objective_options"].setdefault("iwae", {})["num_particles"] = given["num_particles"]
    if "matched_budget" in given:
        options["objective_options"].setdefault("iwae", {})["matched_budget"] = True
    if "data" in given:
        _data_options(options, given)
    elif any(flag in given for flag in (*_DATA_OPTIONS, "no_standardize")):
        raise UsageError(
            "--columns, --labels, --split, --binarize and --no-standardize describe --data; give --data"
        )
    options["guide_options"] = {k: dict(v) for k, v in options.get("guide_options", {}).items()}
    labelled = options.get("data") is None and any(
        zoo.entry("model", m).meta.get("num_classes") for m in options["model"] if m in zoo.names("model")
    )  # a semi-supervised process: its guides are M2 guides around the family
    for text in given.get("guide_option", []):
        for guide, key, value in _option(
            text, "guide", options["guide"], partial(_guide_keys, labelled=labelled)
        ):
            options["guide_options"].setdefault(guide, {})[key] = value
    for text in given.get("objective_option", []):
        for objective, key, value in _option(text, "objective", options["objective"], _objective_keys):
            options["objective_options"].setdefault(objective, {})[key] = value
    options["truth_options"] = {k: dict(v) for k, v in options.get("truth_options", {}).items()}
    for text in given.get("truth_option", []):
        if options.get("data") is not None:
            raise UsageError("--truth-option describes a ground-truth process; --data has none")
        for model, key, value in _option(text, "model", options["model"], _model_keys, flag="--truth-option"):
            options["truth_options"].setdefault(model, {})[key] = value
    options["procedure_options"] = {k: dict(v) for k, v in options.get("procedure_options", {}).items()}
    for text in given.get("procedure_option", []):
        for procedure, key, value in _option(text, "procedure", options["procedure"], _procedure_keys):
            options["procedure_options"].setdefault(procedure, {})[key] = value
    validate(options)
    options["preset"] = args.preset
    return options


def _data_options(options: dict, given: dict) -> None:
    """A user's data set in place of the processes: no ground truth, so no paper
    initialisation and no truth noise; the noise scale is learned unless given."""
    for flag in ("model", "truth_noise"):
        if flag in given:
            raise UsageError(f"--data replaces --{flag.replace('_', '-')}: give one of them")
    options["model"], options["truth_noise"] = None, None
    options["data"] = given["data"]
    data_options = {key: given[flag] for flag, key in _DATA_OPTIONS.items() if flag in given}
    if "no_standardize" in given:
        data_options["standardize"] = False
    if options.get("likelihood") == "bernoulli" and "binarize" not in data_options:
        if loaders.default_threshold(given["data"]) is not None:
            data_options["binarize"] = True  # digits: pixels above half their range
    options["data_options"] = data_options
    options["init"] = "random"
    if given.get("learn_noise") == "above-true-k":
        raise UsageError("--learn-noise above-true-k needs a ground truth's K; --data has none")
    if options.get("learn_noise") == ABOVE_TRUE_K:
        options["learn_noise"] = False  # a preset's (table1): a user's data has no true K
    if options.get("likelihood", "gaussian") == "gaussian" and options.get("noise_scale") is None:
        options["learn_noise"] = True


def _guide_keys(name: str, labelled: bool = False) -> list[str]:
    built = ("self", "latent_dim", "data_dim", "restarts", "hidden", "activation")  # set by the fit
    keys = [p for p in inspect.signature(zoo.entry("guide", name).factory).parameters if p not in built]
    if labelled:  # the M2 guide's own options: the classifier's width, whether q(z|x, y) reads y
        keys += ["classifier_hidden", "label_in_encoder"]
    return keys


def _model_keys(name: str) -> list[str]:
    params = inspect.signature(zoo.entry("model", name).factory).parameters
    return [p for p in params if p not in ("self", "noise_scale")]  # the noise is --truth-noise


def _objective_keys(name: str) -> list[str]:
    keys = list(inspect.signature(zoo.entry("objective", name).factory).parameters)
    if name in build.LABELLED_OBJECTIVES:  # the semi-supervised version's weights too
        keys += [k for k in inspect.signature(build.LABELLED_OBJECTIVES[name]).parameters if k not in keys]
    return keys


def _procedure_keys(name: str) -> list[str]:
    return list(zoo.entry("procedure", name).meta.get("options", ()))


def _option(text: str, kind: str, chosen: list[str], keys, flag: str | None = None):
    """``(name, key, value)`` for every guide, objective, procedure or model a
    ``[NAME.]KEY=VALUE`` option applies to (``kind``: ``"guide"``, ``"objective"``,
    ``"procedure"`` or ``"model"``; ``chosen``: the run's names; ``flag``: the option's name,
    ``--<kind>-option`` unless given)."""
    flag = flag or f"--{kind}-option"
    if "=" not in text:
        raise UsageError(f"{flag} {text!r} is not KEY=VALUE or {kind.upper()}.KEY=VALUE")
    name, raw = text.split("=", 1)
    target, _, key = name.rpartition(".")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    if target:
        check_choice(kind, target, zoo.names(kind))
        if target not in chosen:
            raise UsageError(f"{flag} {text!r}: {kind} {target!r} is not in --{kind} ({', '.join(chosen)})")
    for one in [target] if target else chosen:
        allowed = keys(one)
        if not allowed:
            raise UsageError(f"{flag} {text!r}: {one} takes no options")
        if key not in allowed:
            raise UsageError(
                f"{flag} {text!r}: {one} has no option {key!r}; choose one of: {', '.join(allowed)}"
            )
        yield one, key, value


def validate(options: dict) -> None:
    """Raise :class:`UsageError` naming the first bad option."""
    kinds = [("guide", "guide"), ("objective", "objective"), ("procedure", "procedure")]
    if options.get("data") is None:
        kinds.insert(0, ("model", "model"))
    else:
        if options["data_options"].get("fractions") is not None:  # named as the flag the user typed
            check_fractions(options["data_options"]["fractions"], "--split")
        splits = load_splits(options["data"], **options["data_options"], seed=options["seed"])
        if options.get("likelihood") == "bernoulli":
            check_binary(splits.train.x, f"--data {options['data']}")
    for kind, key in kinds:
        for name in options[key]:
            check_choice(kind, name, zoo.names(kind))
    for name in options.get("regression") or []:
        check_choice("regression process", name, zoo.names("regression"))
    for name in options.get("bnn_methods") or []:
        check_choice("--bnn-methods", name, BNN_METHODS)
    for k in options["latent_dim"]:
        check_positive_int("--latent-dim", k)
    for key in ("restarts", "steps", "batch_size", "n_train", "n_val", "n_test"):
        check_positive_int(f"--{key.replace('_', '-')}", options[key])
    for width in options["hidden"]:
        check_positive_int("--hidden", width)
    check_positive_float("--lr", options["lr"])
    if options.get("noise_scale") is not None:
        check_positive_float("--noise-scale", options["noise_scale"])
    for opts in options["objective_options"].values():
        if "num_particles" in opts:
            check_positive_int("--num-particles", opts["num_particles"])
    for name, given in options.get("procedure_options", {}).items():
        check = zoo.entry("procedure", name).meta.get("check")
        if check is not None:
            check(given)
    for name in options["objective"]:  # the objectives check their option values when built
        given = options["objective_options"].get(name, {})
        plain = inspect.signature(zoo.entry("objective", name).factory).parameters
        zoo.objective(name, **{k: v for k, v in given.items() if k in plain})
    if str(options["device"]).startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {options['device']}: CUDA is not available here; use cpu")
    elif options["device"] != "cpu":
        raise UsageError(f"--device {options['device']!r} is not allowed; use cpu or cuda[:N]")
    method = options.get("reference", "auto")
    if method is not None:
        check_choice("reference method", method, METHODS)
        check_positive_int("--reference-points", options.get("reference_points", DEFAULT_POINTS))
        if method == "grid" and max(options["latent_dim"]) > grid.MAX_K:
            raise UsageError(
                f"--reference grid needs latent dimensions <= {grid.MAX_K}, but --latent-dim has "
                f"{max(options['latent_dim'])}; use --reference auto or nuts"
            )
    for sigma in options.get("truth_noise") or []:
        check_positive_float("--truth-noise", sigma)
    learn = options.get("learn_noise")
    if isinstance(learn, str) and learn != ABOVE_TRUE_K:  # from the command line: all, above-true-k, none
        check_choice("--learn-noise", learn, ("all", "above-true-k", "none"))
        options["learn_noise"] = {"all": True, "none": False}.get(learn, ABOVE_TRUE_K)
    if options.get("noise_per_feature"):
        if options.get("likelihood") == "bernoulli":
            raise UsageError("--noise-per-feature needs --likelihood gaussian; a Bernoulli has no noise")
        options["learn_noise"] = True
    if options.get("likelihood") == "bernoulli" and (
        options.get("noise_scale") or options.get("learn_noise")
    ):
        raise UsageError("--likelihood bernoulli has no noise scale; drop --noise-scale and --learn-noise")
    for key in ("model", "truth_noise", "latent_dim", "guide", "objective", "procedure"):
        if options.get(key) is not None and len(set(options[key])) != len(options[key]):
            raise UsageError(f"--{key.replace('_', '-')} lists a value twice: {options[key]}")


def _print_registry() -> None:
    for kind in zoo.KINDS:
        print(f"{kind}s:")
        for name in zoo.names(kind):
            e = zoo.entry(kind, name)
            print(f"  {name:12s} {e.summary}")


def _start_run(args) -> tuple[dict, Path]:
    if "resume" in args:
        run = Path(args.resume)
        conflicting = [f"--{f.replace('_', '-')}" for f in _RUN_OPTIONS if f in vars(args)]
        if "out" in args:
            conflicting.append("--out")
        if conflicting:
            raise UsageError(f"--resume takes the options of the run; drop {', '.join(conflicting)}")
        if not run.is_dir():
            raise UsageError(f"--resume {run}: no such run folder")
        config = read_json(run / "config.json")
        if not isinstance(config, dict) or config.get("format") != RUN_FORMAT or "options" not in config:
            raise UsageError(
                f"--resume {run}: not a pyrofail run folder of format {RUN_FORMAT} "
                "(written by another version, or not a run folder)"
            )
        options = config["options"]
        validate(options)
        remove_stale_temporaries(run)
        return options, run
    options = resolve(args)
    if "out" in args:
        run = Path(args.out)
    else:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        run = Path("runs") / f"{options['preset']}-{stamp}"
    if (run / "config.json").exists():
        raise UsageError(f"--out {run} already holds a run; use --resume {run} or another --out")
    if run.exists() and not run.is_dir():
        raise UsageError(f"--out {run} is a file, not a folder")
    return options, run


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a malformed option: argparse has printed the line
        return exc.code
    run = None
    if "list" in args:
        _print_registry()
        return 0
    try:
        scheduler = getattr(args, "scheduler", None)
        if scheduler is not None:  # before the run folder is touched
            from pyrofail.stages.dask_pool import check_address

            check_address(scheduler)
        options, run = _start_run(args)
        workers = check_positive_int("--workers", getattr(args, "workers", 1))
        return _run(options, run, workers, quiet="quiet" in args, scheduler=scheduler)
    except UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except AllRestartsDiverged as e:
        print(f"{PROG}: failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        hint = f"; continue with --resume {run}" if run is not None else ""
        print(f"{PROG}: interrupted{hint}", file=sys.stderr)
        return 130


def _describe_data(options: dict) -> dict:
    """What ``data.json`` records of a user's data: source, options, split sizes and rows,
    features, and the standardisation applied (from the training rows)."""
    splits = load_splits(options["data"], **options["data_options"], seed=options["seed"])
    return {
        "source": options["data"],
        "options": options["data_options"],
        "features": list(splits.train.features or []),
        "sizes": {part: len(getattr(splits, part)) for part in ("train", "val", "test")},
        "rows": {part: idx.tolist() for part, idx in (splits.index or {}).items()},
        "standardizer": None if splits.standardizer is None else splits.standardizer.to_dict(),
    }


def _run(options: dict, run: Path, workers: int, quiet: bool, scheduler: str | None = None) -> int:
    with pool.scheduler(scheduler, workers, device=options["device"], quiet=quiet) as cluster:
        if cluster is not None:  # workers elsewhere find the folder by its absolute path
            run, workers = run.resolve(), cluster.workers
        return _run_stages(options, run, workers, quiet)


def _run_stages(options: dict, run: Path, workers: int, quiet: bool) -> int:
    run.mkdir(parents=True, exist_ok=True)
    config_path = run / "config.json"
    if not config_path.exists():
        if options.get("data") is not None:
            atomic_write_json(run / "data.json", _describe_data(options))
        config = {
            "format": RUN_FORMAT,
            "options": options,
            "jobs": jobs.expand(options),
            "versions": versions(),
            "threads": torch.get_num_threads(),
        }
        atomic_write_json(config_path, config)
    folder = RunFolder.open(run, workers=workers, quiet=quiet)
    folder.say(f"run folder: {run}  ({len(folder.jobs)} job{'s' * (len(folder.jobs) != 1)})")
    stages.run_all(folder)
    print(report.console(folder))
    failed = folder.failed_jobs()
    for job, reason in failed.items():
        print(f"{PROG}: job {job} failed: {reason}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
