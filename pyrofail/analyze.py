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

from pyrofail import zoo
from pyrofail.errors import (
    AllRestartsDiverged,
    UsageError,
    check_choice,
    check_positive_float,
    check_positive_int,
)
from pyrofail.presets import PAPER_TABLE1, PRESETS
from pyrofail.runs import (
    RUN_FORMAT,
    atomic_write_json,
    atomic_write_text,
    read_json,
    remove_stale_temporaries,
    versions,
)

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
    from pyrofail.sweep import DEFAULT_REFERENCE_POINTS

    options.setdefault("reference", "auto")
    options.setdefault("reference_points", DEFAULT_REFERENCE_POINTS)
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
    from pyrofail.analysis.reference import GRID_MAX_K, METHODS
    from pyrofail.sweep import DEFAULT_REFERENCE_POINTS

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
        import torch

        if not torch.cuda.is_available():
            raise UsageError(f"--device {options['device']}: CUDA is not available here; use cpu")
    elif options["device"] != "cpu":
        raise UsageError(f"--device {options['device']!r} is not allowed; use cpu or cuda[:N]")
    method = options.get("reference", "auto")
    if method is not None:
        check_choice("reference method", method, METHODS)
        check_positive_int("--reference-points", options.get("reference_points", DEFAULT_REFERENCE_POINTS))
        if method == "grid" and max(options["latent_dim"]) > GRID_MAX_K:
            raise UsageError(
                f"--reference grid needs latent dimensions <= {GRID_MAX_K}, but --latent-dim has "
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
    from pyrofail.analysis import report
    from pyrofail.sweep import expand, run_jobs, run_posterior

    run.mkdir(parents=True, exist_ok=True)
    jobs = expand(options)
    config_path = run / "config.json"
    if not config_path.exists():
        atomic_write_json(
            config_path,
            {
                "format": RUN_FORMAT,
                "options": options,
                "jobs": [j for j in jobs],
                "versions": versions(),
                "threads": _threads(),
            },
        )
    if not quiet:
        print(f"run folder: {run}  ({len(jobs)} job{'s' * (len(jobs) != 1)})", file=sys.stderr)
    outcomes = run_jobs(jobs, run, workers=workers, progress=not quiet)
    results = [r for r in outcomes if "failed" not in r]
    failed = {r["job"]: r["failed"] for r in outcomes if "failed" in r}
    summary = {
        r["job"]: {
            "metrics": r["metrics"],
            "restarts": r["restarts"],
            "selected_restart": r["selected_restart"],
        }
        for r in results
    }
    checks = report.table1_checks(results)
    posterior = run_posterior(results, run, options, progress=not quiet, workers=workers) if results else None
    metrics = {
        "jobs": summary,
        "failed": failed,
        "table1_checks": [{"claim": c, "holds": h, "numbers": n} for c, h, n in checks],
    }
    if posterior is not None:
        metrics["posterior"] = {
            "settings": posterior["settings"],
            "jobs": {job: _posterior_summary(rec) for job, rec in posterior["jobs"].items()},
        }
        metrics["diagnosis"] = posterior["diagnoses"]
    atomic_write_json(run / "metrics.json", metrics)
    text = _report_markdown(options, results, checks, failed, posterior)
    atomic_write_text(run / "report.md", text)
    print(report.results_table(results))
    t1 = report.table1(results, PAPER_TABLE1)
    if t1 and options["preset"] == "table1":
        print(t1)
    if checks:
        print(report.checks_markdown(checks))
    if posterior is not None:
        print(report.posterior_table(posterior["jobs"]))
        print(report.diagnosis_markdown(posterior["diagnoses"]))
    print(f"report: {run / 'report.md'}")
    for job, reason in failed.items():
        print(f"{PROG}: job {job} failed: {reason}", file=sys.stderr)
    return 1 if failed else 0


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _posterior_summary(record: dict) -> dict:
    """A job's posterior record without its per-point values (those stay in the job folder)."""
    if "skipped" in record:
        return {"skipped": record["skipped"]}
    out = {
        "reference_method": record["reference_method"],
        "n_points": record["n_points"],
        "model": record["model"]["mean"],
        "truth": None if record["truth"] is None else record["truth"]["mean"],
        "mleo": {k: record["mleo"][k] for k in ("mean", "stderr")},
    }
    best = record.get("best_mean_field")
    out["best_mean_field"] = None if best is None else {k: best[k] for k in ("mean", "share_hard")}
    return out


def _report_markdown(options, results, checks, failed=None, posterior=None) -> str:
    from pyrofail.analysis import report

    lines = [
        "# pyrofail run report",
        "",
        f"Preset `{options['preset']}`; models {', '.join(options['model'])}; K "
        f"{', '.join(map(str, options['latent_dim']))}; guides {', '.join(options['guide'])}; "
        f"objectives {', '.join(options['objective'])}; {options['restarts']} restarts, "
        f"{options['steps']} steps, seed {options['seed']}; "
        f"{options['n_train']}/{options['n_val']}/{options['n_test']} train/validation/test "
        "points.",
        "",
        "## Results",
        "",
        "test −ELBO: mean over test points of the per-point ELBO (± Monte Carlo error); "
        "test −bound: the training objective on test data (the ELBO, or the IWAE bound with the "
        "training particle count); test −log p(x): exact quadrature for K ≤ 2 (`grid`), else "
        "importance sampling from the guide (`isN`); PMO gap: log p(x) − ELBO = "
        "E KL(q(z|x) ‖ p(z|x)); MLEO: KL(p_GT(x) ‖ p_θ(x)) on the test points; avg I(x; z_i): "
        "encoder mutual information per latent dimension with the aggregate posterior over the "
        "test points.",
        "",
        report.results_table(results),
    ]
    for job, reason in (failed or {}).items():
        lines += [f"**{job} failed**: {reason}", ""]
    t1 = report.table1(results, PAPER_TABLE1)
    if t1:
        lines += [
            "## Table 1 of Yacoby et al. (2020): ours (paper)",
            "",
            "Our numbers come from our own data sets (the paper's are not public) and the paper "
            "does not state the constants of its likelihood, so compare orderings and gaps, "
            "not absolute values.",
            "",
            t1,
        ]
    if checks:
        lines += ["## Orderings", "", report.checks_markdown(checks)]
    compared = report.guides_compared(results)
    if compared:
        lines += ["## Guides compared", "", "Highest test log p(x) per model, K and objective.", "", compared]
    if posterior is not None:
        settings = posterior["settings"]
        lines += [
            "## Posterior bias",
            "",
            f"Each guide against the reference posterior of its own model at the first "
            f"{settings['points']} test points, or all of them if fewer (`points`; "
            f"`--reference {settings['method']}`, {settings['draws']} draws per point). ELBO and "
            "log p(x): means over the points; PMO "
            "gap: log p(x) − ELBO, the reverse KL(q‖p); KL(p‖q): the forward KL from the "
            "reference draws; best MFG KL*: the smallest reverse KL any mean-field Gaussian reaches "
            "per point (what a perfect, non-amortized mean-field encoder would pay; the PMO gap "
            "minus it is the price of amortization and training); mode-mass error: total variation "
            "between the masses q and p put on the modes of p; energy distance: 2E‖Y−Z‖ − E‖Y−Y′‖ − "
            "E‖Z−Z′‖, zero only when q = p (Gneiting & Raftery 2007); PSIS k̂: Pareto shape of the "
            "importance weights p/q (Vehtari et al. 2024), median and share of points above the "
            "threshold where importance sampling from the guide fails.",
            "",
            report.posterior_table(posterior["jobs"]),
            "Against the ground truth's posterior p_GT(z|x) at the same points (jobs at the true "
            "K): the same quantities for the guide; posterior shift: the energy distance between "
            "the learned model's posterior p_θ(z|x) and the truth's (how far the latent space "
            "moved); MLEO: mean of log p_GT(x) − log p_θ(x) (± its standard error).",
            "",
            report.truth_table(posterior["jobs"]),
            "## Diagnosis",
            "",
            "The failure conditions of Yacoby, Pan & Doshi-Velez (2020), decided from the numbers "
            "above (`pyrofail.analysis.diagnose`).",
            "",
            report.diagnosis_markdown(posterior["diagnoses"]),
        ]
    lines += ["## Figures", ""]
    for f in (posterior or {}).get("figures", []):
        lines.append(f"![{Path(f).stem}]({f})")
    for r in results:
        for f in r["figures"]:
            lines.append(f"![{r['job']} {Path(f).stem}](jobs/{r['job']}/{f})")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
