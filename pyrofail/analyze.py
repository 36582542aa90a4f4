"""``python -m pyrofail.analyze``: fit, measure and report, end to end.

Without arguments it runs the built-in default (Clusters, MFG-VAE against IWAE at the true
K = 1, under a minute on two CPU cores) and writes a run folder ``runs/<what>-<time>``. The
options are those of :mod:`pyrofail.options`; list-valued ones sweep, one job per process x
K x guide x objective x procedure, each job running its restarts vectorised.

Exit status: 0 on success, 2 for bad input (one line on stderr naming the value and what is
allowed, no traceback, nothing written), 1 when every restart of a job diverged, 130 when
interrupted (the run folder can be resumed).
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

from pyrofail import loaders, options, stages, user_data, zoo
from pyrofail.bnn.inference import METHODS as BNN_METHODS
from pyrofail.errors import AllRestartsDiverged, UsageError, check_choice, check_positive_int
from pyrofail.presets import PRESETS
from pyrofail.records import RunFolder
from pyrofail.records.data import DataRecord
from pyrofail.runs import RUN_FORMAT, atomic_write_json, read_json, remove_stale_temporaries, versions
from pyrofail.stages import pool, report
from pyrofail.sweep import ABOVE_TRUE_K, expand
from pyrofail.training import build

__all__ = ["build_parser", "main", "resolve", "validate"]

PROG = "python -m pyrofail.analyze"
MAX_K_GRID = 2  # the largest K of the exact grid (pyrofail.analysis.reference.grid.MAX_K)


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
            "Fit VAEs to ground-truth processes (or to your own data) with swappable guides, "
            "objectives and procedures, measure them against the true posterior, and write a run "
            "folder (report.md first). A --data run fits the mean-field VAE (ELBO) and IWAE at each "
            "--latent-dim, learns σ, starts every restart at random, and lets the best-fitting model "
            "stand in for the missing ground truth. The defaults shown are the default preset's."
        ),
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="default",
        help="option set to start from; options given here override it (see --list) (default: default)",
    )
    options.add_arguments(p, PRESETS["default"], _list)
    for flag, help_text in (
        ("--guide-option", "an option of the variational family, e.g. flow.base=gaussian or components=3"),
        ("--objective-option", "an option of the objective, e.g. iwae.num_particles=50 or alpha=0.1"),
        ("--procedure-option", "an option of the procedure, e.g. libi.penalty=10"),
        ("--truth-option", "an option of the ground-truth process, e.g. figure8.scale=1"),
    ):
        kind = flag[2:].split("-")[0].upper()
        p.add_argument(
            flag,
            action="append",
            metavar=f"[{kind}.]KEY=VALUE",
            help=f"{help_text} (for every {kind.lower()} of the run without {kind}.); repeatable; VALUE "
            "is read as JSON, else as text",
        )
    p.add_argument(
        "--no-reference", action="store_true", help="skip references, posterior bias and diagnosis"
    )
    run = p.add_argument_group("how the run executes")
    run.add_argument("--out", metavar="DIR", help="run folder (default: runs/<what it fits>-<time>)")
    run.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue a run folder: finished jobs are kept, unfinished ones resume from their last "
        "checkpoint; takes no other run options",
    )
    run.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help=f"tasks run side by side in worker processes (default: the cores available, here "
        f"{pool.available_cores()})",
    )
    run.add_argument(
        "--threads",
        type=int,
        metavar="T",
        help="torch threads per task (default: 1; the project's small networks gain nothing from more, "
        "and threads that compete for busy cores slow a run down many times)",
    )
    run.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="send every stage's tasks to the Dask cluster at ADDRESS (e.g. tcp://host:8786), or to a "
        "local cluster of --workers processes ('local'); the run folder must be on a filesystem all "
        "workers share; needs the dask extra",
    )
    run.add_argument("--quiet", action="store_true", help="no progress on stderr")
    run.add_argument(
        "--list",
        action="store_true",
        help="list the processes, guides, objectives, procedures, presets and bundled data sets, and exit",
    )
    return p


def resolve(args: argparse.Namespace) -> dict:
    """Options of the run: the preset, overridden by what was given, validated."""
    given = vars(args)
    out = {k: options._copy(v) for k, v in PRESETS[args.preset].items()}
    if "no_reference" in given and "reference" in given:
        raise UsageError("--reference and --no-reference exclude each other; give one of them")
    data_names = {n for n, o in options.OPTIONS.items() if o.kind == "data" and n not in ("data", "program")}
    for name, value in given.items():
        if name in options.OPTIONS and name not in data_names:
            out[name] = value
    if "no_reference" in given:
        out["reference"] = None
    if "lr" in given:  # an explicit --lr applies to every guide, over the preset's table
        out["lr_by_guide"] = {}
    if "num_particles" in given:
        out["objective_options"].setdefault("iwae", {})["num_particles"] = given["num_particles"]
    if given.get("matched_budget"):
        out["objective_options"].setdefault("iwae", {})["matched_budget"] = True
    if "program" in given and "data" not in given:
        raise UsageError("--program needs --data: the points to check the program at")
    if "data" in given:
        user_data.data_options(out, given)
    elif data_names & set(given):
        flags = ", ".join(options.flag_of(n) for n in sorted(data_names & set(given)))
        raise UsageError(f"{flags} describe{'s' * (',' not in flags)} --data; give --data")
    _keyed_options(out, given)
    validate(out)
    out["preset"] = args.preset
    return out


def _keyed_options(out: dict, given: dict) -> None:
    """``--guide-option``, ``--objective-option``, ``--truth-option``, ``--procedure-option``."""
    labelled = out.get("data") is None and any(
        zoo.entry("model", m).meta.get("num_classes") for m in out["process"] if m in zoo.names("model")
    )  # a semi-supervised process: its guides are M2 guides around the family
    specs = (
        ("guide_option", "guide", "guide", "guide_options", partial(_guide_keys, labelled=labelled)),
        ("objective_option", "objective", "objective", "objective_options", _objective_keys),
        ("truth_option", "model", "process", "truth_options", _model_keys),
        ("procedure_option", "procedure", "procedure", "procedure_options", _procedure_keys),
    )
    for flag, kind, key, table, keys in specs:
        for text in given.get(flag, []):
            if key == "process" and out.get("data") is not None:
                raise UsageError("--truth-option describes a ground-truth process; --data has none")
            flag_text = f"--{flag.replace('_', '-')}"
            for name, k, value in _option(text, kind, out[key], keys, flag_text, f"--{key}"):
                out[table].setdefault(name, {})[k] = value


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


def _option(text: str, kind: str, chosen: list[str], keys, flag: str, list_flag: str):
    """``(name, key, value)`` for every entry of ``kind`` (a registry kind) in ``chosen`` that
    a ``[NAME.]KEY=VALUE`` option applies to."""
    if "=" not in text:
        raise UsageError(f"{flag} {text!r} is not KEY=VALUE or NAME.KEY=VALUE")
    name, raw = text.split("=", 1)
    target, _, key = name.rpartition(".")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    if target:
        check_choice(list_flag, target, zoo.names(kind))
        if target not in chosen:
            raise UsageError(f"{flag} {text!r}: {target!r} is not in {list_flag} ({', '.join(chosen)})")
    for one in [target] if target else chosen:
        allowed = keys(one)
        if not allowed:
            raise UsageError(f"{flag} {text!r}: {one} takes no options")
        if key not in allowed:
            raise UsageError(
                f"{flag} {text!r}: {one} has no option {key!r}; choose one of: {', '.join(allowed)}"
            )
        yield one, key, value


def validate(out: dict) -> None:
    """Raise :class:`UsageError` naming the first bad option, in the spelling of its flag."""
    options.check(out)
    kinds = [("guide", "guide"), ("objective", "objective"), ("procedure", "procedure")]
    if out.get("data") is None:
        kinds.insert(0, ("model", "process"))
    else:
        user_data.check_data(out)
    if out.get("program") is not None:
        from pyrofail.stages.program import load_program

        load_program(out["program"])  # importable, and a model and a guide
    for kind, key in kinds:
        for name in out[key]:
            check_choice(options.flag_of(key), name, zoo.names(kind))
    for name in out.get("regression") or []:
        check_choice("--regression", name, zoo.names("regression"))
    for name in out.get("bnn_methods") or []:
        check_choice("--bnn-methods", name, BNN_METHODS)
    for opts in out["objective_options"].values():
        if "num_particles" in opts:
            check_positive_int("--num-particles", opts["num_particles"])
    for name, given in out.get("procedure_options", {}).items():
        check = zoo.entry("procedure", name).meta.get("check")
        if check is not None:
            check(given)
    grid_only = sorted(
        set(out.get("procedure_options", {}).get("libi", {})) & {"penalty", "spacing", "refresh"}
    )
    if grid_only and "libi" in out["procedure"] and max(out["latent_dim"]) > MAX_K_GRID:
        raise UsageError(
            f"--procedure-option libi.{grid_only[0]} works only at --latent-dim <= {MAX_K_GRID} (the "
            f"quadrature grid); this run has K = {max(out['latent_dim'])}: run the larger K without it"
        )
    for name in out["objective"]:  # the objectives check their option values when built
        given = out["objective_options"].get(name, {})
        plain = inspect.signature(zoo.entry("objective", name).factory).parameters
        zoo.objective(name, **{k: v for k, v in given.items() if k in plain})
    device = str(out["device"])
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: CUDA is not available here; use cpu")
    elif device != "cpu":
        raise UsageError(f"--device {device!r} is not allowed; use cpu or cuda[:N]")
    if out.get("reference") == "grid" and max(out["latent_dim"]) > MAX_K_GRID:
        raise UsageError(
            f"--reference grid needs latent dimensions <= {MAX_K_GRID}, but --latent-dim has "
            f"{max(out['latent_dim'])}; use --reference auto or nuts"
        )
    learn = out.get("learn_noise")
    if isinstance(learn, str) and learn != ABOVE_TRUE_K:  # from the command line: all, above-true-k, none
        check_choice("--learn-noise", learn, ("all", "above-true-k", "none"))
        out["learn_noise"] = {"all": True, "none": False}.get(learn, ABOVE_TRUE_K)
    if out.get("noise_per_feature"):
        if out.get("likelihood") == "bernoulli":
            raise UsageError("--noise-per-feature needs --likelihood gaussian; a Bernoulli has no noise")
        out["learn_noise"] = True
    if out.get("likelihood") == "bernoulli" and (out.get("noise_scale") or out.get("learn_noise")):
        raise UsageError("--likelihood bernoulli has no noise scale; drop --noise-scale and --learn-noise")
    from pyrofail.memory import check_run

    check_run(out)


def _print_registry() -> None:
    from pyrofail.presets import SUMMARIES

    sections = [
        (f"{kind}s", [(n, zoo.entry(kind, n).summary) for n in zoo.names(kind)]) for kind in zoo.KINDS
    ]
    sections.append(("presets (--preset)", [(n, SUMMARIES.get(n, "")) for n in sorted(PRESETS)]))
    sections.append(
        ("bundled data sets (--data)", [(n, loaders.BUNDLED[n].summary) for n in loaders.names()])
    )
    width = max(len(n) for _, rows in sections for n, _ in rows) + 2
    for title, rows in sections:
        print(f"{title}:")
        for name, summary in rows:
            print(f"  {name:<{width}}{summary}")


def run_name(out: dict) -> str:
    """A run folder's name from what it fits: ``clusters``, ``figure8-clusters``, ``diabetes``,
    prefixed with the preset when it is not the default (``table1-figure8-clusters``)."""
    if out.get("data") is not None:
        from pyrofail.records.folder import data_name

        what = data_name(out["data"])
    else:
        names = list(out.get("process") or []) or list(out.get("regression") or [])
        what = "-".join(names[:3]) + ("-etc" if len(names) > 3 else "")
    preset = out.get("preset", "default")
    return what if preset == "default" else f"{preset}-{what}" if what else preset


def _start_run(args) -> tuple[dict, Path]:
    if "resume" in args:
        run = Path(args.resume)
        conflicting = [options.flag_of(n) for n in vars(args) if n in options.OPTIONS]
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
        out = config["options"]
        validate(out)
        remove_stale_temporaries(run)
        return out, run
    out = resolve(args)
    if "out" in args:
        run = Path(args.out)
    else:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        run = Path("runs") / f"{run_name(out)}-{stamp}"
    if (run / "config.json").exists():
        raise UsageError(f"--out {run} already holds a run; use --resume {run} or another --out")
    if run.exists() and not run.is_dir():
        raise UsageError(f"--out {run} is a file, not a folder")
    return out, run


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
        workers = check_positive_int("--workers", getattr(args, "workers", pool.available_cores()))
        threads = check_positive_int("--threads", getattr(args, "threads", 1))
        out, run = _start_run(args)
        torch.set_num_threads(threads)
        return _run(out, run, workers, threads, quiet="quiet" in args, scheduler=scheduler)
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


def _run(out: dict, run: Path, workers: int, threads: int, quiet: bool, scheduler: str | None = None) -> int:
    with pool.scheduler(scheduler, workers, device=out["device"], quiet=quiet, threads=threads) as cluster:
        if cluster is not None:  # workers elsewhere find the folder by its absolute path
            run, workers = run.resolve(), cluster.workers
        with pool.local(workers):
            return _run_stages(out, run, workers, threads, quiet)


def _run_stages(out: dict, run: Path, workers: int, threads: int, quiet: bool) -> int:
    run.mkdir(parents=True, exist_ok=True)
    config_path = run / "config.json"
    if not config_path.exists():
        jobs = [job.to_dict() for job in expand(out)]
        config = {"format": RUN_FORMAT, "options": out, "jobs": jobs, "versions": versions()}
        atomic_write_json(config_path, config)
    folder = RunFolder.open(run, workers=workers, threads=threads, quiet=quiet)
    if folder.options.on_data and folder.read(DataRecord, run / "data.json") is None:
        folder.write(user_data.describe_data(folder.options.to_dict()), run / "data.json")
    jobs = len(folder.jobs)
    folder.say(f"run folder: {run} ({jobs} job{'s' * (jobs != 1)}, {workers} worker{'s' * (workers != 1)})")
    stages.run_all(folder)
    print(report.console(folder))
    failed = folder.failed_jobs()
    for job, reason in failed.items():
        print(f"{PROG}: job {job} failed: {reason}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
