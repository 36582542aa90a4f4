"""``python -m pyrofail.analyze``: fit, measure and report, end to end.

Without arguments it runs the built-in default (Figure-8, MFG-VAE against IWAE at the true
K = 1, about two minutes on two CPU cores) and writes a run folder. Every option takes a
comma-separated list where a sweep makes sense; the sweep is the product of the lists, one job
per process x K x guide x objective, each job running its restarts vectorised.

Exit status: 0 on success, 2 for bad input (one line on stderr, no traceback), 1 when every
restart of a job diverged, 130 when interrupted (the run folder can be resumed).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
from pathlib import Path

import torch

from pyrofail import stages, zoo
from pyrofail.analysis import grid
from pyrofail.analysis.reference import METHODS
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
from pyrofail.stages import jobs, report
from pyrofail.stages.folder import RunFolder
from pyrofail.stages.references import DEFAULT_POINTS

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
        help="option set to start from: 'default' (Figure-8, ELBO vs IWAE, K=1, "
        "~2 min), 'table1' (Table 1 of Yacoby et al.: figure8 and clusters, "
        "K=1,2,3, ELBO vs IWAE, 10 restarts), 'tiny' (seconds; a smoke test)",
    )
    p.add_argument(
        "--model",
        type=_list(str),
        metavar="NAMES",
        help="ground-truth processes, comma-separated (see --list)",
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
    p.add_argument("--restarts", type=int, metavar="R", help="restarts per job (vectorised)")
    p.add_argument("--steps", type=int, metavar="N", help="Adam steps per job")
    p.add_argument("--batch-size", type=int, metavar="B", help="data points per step")
    p.add_argument("--lr", type=float, help="Adam learning rate")
    p.add_argument(
        "--num-particles", type=int, metavar="S", help="importance samples per point for the iwae objective"
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
    p.add_argument(
        "--noise-scale",
        type=float,
        metavar="SIGMA",
        help="noise scale of the learned models (default: the ground truth's)",
    )
    p.add_argument(
        "--learn-noise",
        action="store_true",
        help="learn the noise scale instead of fixing it (starting at --noise-scale)",
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
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--list", action="store_true", help="print the registered models, guides and objectives and exit"
    )
    return p


# options a user may give, mapped to the resolved option names
_RUN_OPTIONS = {
    "model": "model",
    "latent_dim": "latent_dim",
    "guide": "guide",
    "objective": "objective",
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
}


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
    validate(options)
    options["preset"] = args.preset
    return options


def validate(options: dict) -> None:
    """Raise :class:`UsageError` naming the first bad option."""
    for kind, key in (("model", "model"), ("guide", "guide"), ("objective", "objective")):
        for name in options[key]:
            check_choice(kind, name, zoo.names(kind))
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
    for key in ("model", "latent_dim", "guide", "objective"):
        if len(set(options[key])) != len(options[key]):
            raise UsageError(f"--{key.replace('_', '-')} lists a value twice: {options[key]}")


def _print_registry() -> None:
    for kind in ("model", "guide", "objective"):
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
        options, run = _start_run(args)
        workers = check_positive_int("--workers", getattr(args, "workers", 1))
        return _run(options, run, workers, quiet="quiet" in args)
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


def _run(options: dict, run: Path, workers: int, quiet: bool) -> int:
    run.mkdir(parents=True, exist_ok=True)
    config_path = run / "config.json"
    if not config_path.exists():
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
