"""The check without a ground truth against the truth's, on data whose truth is known.

For each zoo process, data size N and seed, N points drawn by ``pyrofail.zoo.model(name).sample(N,
seed=seed)`` are written as a CSV (columns ``x0, x1, ...``) and handed to ``python -m
pyrofail.analyze --data`` (the *no-truth* arm: at each K the best-fitting model, the highest
test log p(x), stands in for the truth), and the same process runs with ``--process`` (the
*truth* arm). The CSV's rows are ordered so that the ``--data`` run's seeded 60/20/20 split
(:func:`pyrofail.data.split`, ``--folds 1``, ``--no-standardize``) gives exactly the process run's
training, validation and test points, and the process run fits as a ``--data`` run does (all
restarts random, σ learned from 1, ``--latent-dim`` the truth's K, the same seed and budget): the
two runs then fit the *same* models (their test log p(x) is compared to check it) and differ only
in what the diagnosis compares the MFG-VAE with — the truth, or the stand-in.

Since both arms' MLEOs are differences from one common reference per run, the paired p(x) cost
of the MFG-VAE against its comparator (MLEO_MFG − MLEO_IWAE = log p_IWAE − log p_MFG) is the
same number in both; the arms can disagree only through the share of hard posteriors (KL* of
the truth against KL* of the stand-in), the "simpler" test, the analysis points the quality gate
keeps, and the no-truth path's "the MFG-VAE is itself the best fit" rule.

``python -m benchmarks.no_truth --out runs/no_truth`` runs the grid (finished runs are re-used:
a run folder with ``report.md`` is skipped, one without it resumed) and prints the agreement
table; ``python -m benchmarks --only no_truth`` prints its summary rows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import Row

PROCESSES = ("clusters", "figure8", "quadratic", "linear_gaussian", "two_factor_steps")
SIZES = (1000, 4000)
SEEDS = (0, 1)
# the default preset's budget: realistic, and affordable on two shared cores
FIT = {"restarts": 4, "steps": 3000}
QUICK_FIT = {"restarts": 2, "steps": 200}
ARMS = ("truth", "data")
DECISIVE = ("data distribution", "latent space", "none")
FAILURES = ("data distribution", "latent space")


@dataclass(frozen=True)
class Case:
    """One process at one data size and seed."""

    process: str
    n: int
    seed: int

    @property
    def name(self) -> str:
        return f"{self.process}-n{self.n}-s{self.seed}"


def sizes(n: int) -> dict[str, int]:
    """Training, validation and test rows of an ``n``-row table under the default split."""
    from pyrofail.data import split_sizes

    return dict(zip(("train", "val", "test"), split_sizes(n)))


def write_csv(case: Case, path: Path) -> int:
    """Write the truth's ``case.n`` draws to ``path``, ordered so that the ``--data`` run's split
    with ``case.seed`` yields the process run's parts (its first ``n_train`` draws for
    training, then validation, then test, each in draw order); returns the truth's K."""
    import numpy as np
    import torch

    import pyrofail as pf
    from pyrofail.data import Dataset, split

    truth = pf.zoo.model(case.process)
    x = truth.sample(case.n, seed=case.seed).x.reshape(case.n, -1)
    rows = torch.arange(case.n, dtype=torch.float32)[:, None]  # which source row lands where
    index = split(Dataset(rows), seed=case.seed, standardize=False).index
    table, start = torch.empty_like(x), 0
    for part in ("train", "val", "test"):
        table[index[part]] = x[start : start + len(index[part])]
        start += len(index[part])
    header = ",".join(f"x{d}" for d in range(x.shape[1]))
    path.parent.mkdir(parents=True, exist_ok=True)
    # float32 draws: nine significant digits read back to the same float32
    np.savetxt(path, table.numpy(), delimiter=",", fmt="%.9g", header=header, comments="")
    return truth.latent_dim


def command(case: Case, arm: str, k: int, csv: Path, folder: Path, fit: dict) -> list[str]:
    """The ``python -m pyrofail.analyze`` command line of one arm."""
    common = ["--latent-dim", str(k), "--seed", str(case.seed)]
    common += ["--restarts", str(fit["restarts"]), "--steps", str(fit["steps"])]
    common += ["--workers", "1", "--threads", "1", "--quiet", "--out", str(folder)]
    if arm == "data":
        return ["--data", str(csv), "--no-standardize", "--folds", "1", *common]
    part = sizes(case.n)
    return [
        "--process",
        case.process,
        "--n-train",
        str(part["train"]),
        "--n-val",
        str(part["val"]),
        "--n-test",
        str(part["test"]),
        # what a --data run does: every restart random, σ learned from 1
        "--init",
        "random",
        "--learn-noise",
        "all",
        "--noise-scale",
        "1",
        *common,
    ]


def run_case(case: Case, out: Path, fit: dict, log=sys.stderr) -> dict[str, float]:
    """Run (or resume, or skip) both arms of ``case`` under ``out/<case>/``; returns the wall
    seconds of each arm, summed over the sessions that ran it (``<arm>.time.json``)."""
    root = out / case.name
    csv = root / "points.csv"
    k = write_csv(case, csv) if not csv.exists() else _k(case)
    times = {}
    for arm in ARMS:
        folder, stamp = root / arm, root / f"{arm}.time.json"
        spent = json.loads(stamp.read_text()) if stamp.exists() else {"wall_s": 0.0, "sessions": 0}
        if not (folder / "report.md").exists():
            if (folder / "config.json").exists():
                argv = ["--resume", str(folder), "--workers", "1", "--threads", "1", "--quiet"]
            else:
                argv = command(case, arm, k, csv, folder, fit)
            print(f"{case.name} {arm}: python -m pyrofail.analyze {' '.join(argv)}", file=log, flush=True)
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            start = time.perf_counter()
            with open(root / f"{arm}.log", "a") as sink:  # the CLI's summary and progress
                subprocess.run(
                    [sys.executable, "-m", "pyrofail.analyze", *argv],
                    check=True,
                    env=env,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                )
            spent = {
                "wall_s": spent["wall_s"] + time.perf_counter() - start,
                "sessions": spent["sessions"] + 1,
            }
            stamp.write_text(json.dumps({**spent, "argv": command(case, arm, k, csv, folder, fit)}))
        times[arm] = spent["wall_s"]
    return times


def _k(case: Case) -> int:
    import pyrofail as pf

    return pf.zoo.model(case.process).latent_dim


def _verdict(folder: Path, case: Case):
    """The arm's verdict at the truth's K (the process's, or the data run's ``<name> K=<k>``)."""
    from pyrofail.records import RunFolder
    from pyrofail.records.verdict import Verdicts

    verdicts = RunFolder.read(Verdicts, folder / "verdicts.json").verdicts
    if case.process in verdicts:
        return verdicts[case.process]
    (verdict,) = [v for v in verdicts.values() if v.k == _k(case)]
    return verdict


def _fits(folder: Path) -> dict[str, dict]:
    """Each job's test −log p(x) and (with a truth) MLEO and learned σ, keyed by objective."""
    out = {}
    for job in sorted((folder / "jobs").iterdir()):
        metrics = json.loads((job / "metrics.json").read_text())["metrics"]
        out[job.name.rsplit("-", 1)[-1]] = {
            "neg_log_px": metrics["test_neg_log_px"]["mean"],
            "mleo": metrics.get("mleo"),
            "sigma": metrics.get("noise_scale"),
        }
    return out


def agreement(truth: str, data: str) -> str:
    """How the no-truth verdict relates to the truth's: ``agree``; ``contradicted`` (the no-truth
    path states a failure the truth's decisive verdict denies); ``missed`` (the truth is
    decisive, the no-truth path is not, or says "none" where the truth finds a failure);
    ``extra`` (the truth is undecided, the no-truth path decides)."""
    if truth == data:
        return "agree"
    if truth in DECISIVE:
        return "contradicted" if data in FAILURES else "missed"
    return "extra"


def summary(case: Case, out: Path) -> dict:
    """The numbers of one finished case: per arm the verdict, its reason, the stand-in, the
    share of hard points against the share Cx1 asks for, the simpler and p(x)-cost
    differences, the analysis and test points, and whether the two arms fitted the same models."""
    root = out / case.name
    row = {"process": case.process, "k": _k(case), "n": case.n, "seed": case.seed}
    row["n_test"] = sizes(case.n)["test"]
    for arm in ARMS:
        v = _verdict(root / arm, case)
        ev = v.evidence
        row[arm] = {
            "failure": v.failure,
            "reason": v.reason,
            "reference": v.reference,
            "flags": sorted({f.kind for f in v.flags}),
            "share_hard": None if ev is None else _est(ev.truth_share_hard),
            "cx1_share": None if ev is None else ev.cx1_share,
            "kl_star": None if ev is None else _est(ev.truth_kl),
            "simpler": None if ev is None else _est(ev.simpler),
            "px_cost": None if ev is None else _est(ev.px_cost),
            "rows_needed": None if ev is None else ev.rows_needed,
            "n_points": None if ev is None else ev.n_points,
            "excluded_points": v.excluded_points,
        }
        stamp = root / f"{arm}.time.json"
        row[arm]["wall_s"] = json.loads(stamp.read_text())["wall_s"] if stamp.exists() else None
    fits = [_fits(root / arm) for arm in ARMS]
    row["same_fits"] = fits[0].keys() == fits[1].keys() and all(
        abs(fits[0][j]["neg_log_px"] - fits[1][j]["neg_log_px"]) < 1e-6 for j in fits[0]
    )
    row["fits"] = fits[0]  # the truth arm's: with each fit's MLEO against the truth
    row["agreement"] = agreement(row["truth"]["failure"], row["data"]["failure"])
    return row


def _est(e) -> dict:
    return {"mean": e.mean, "stderr": e.stderr}


def _pm(e: dict | None, digits: int = 3) -> str:
    if e is None:
        return "—"
    se = "" if e["stderr"] is None else f" ± {e['stderr']:.{digits}f}"
    return f"{e['mean']:.{digits}f}{se}"


def _side(s: dict) -> list[str]:
    verdict = s["failure"] + (f" ({s['reason']})" if s["reason"] else "")
    share = "—" if s["share_hard"] is None else f"{_pm(s['share_hard'], 2)} (Cx1 {s['cx1_share']:.2f})"
    return [verdict, share, _pm(s["simpler"]), _pm(s["px_cost"])]


def markdown(rows: list[dict]) -> str:
    """The agreement table: per case both arms' verdicts and the numbers they rest on."""
    head = (
        "| process (K) | N (test rows) | seed | truth: verdict | share hard (Cx1 needs) | simpler "
        "| p(x) cost | no truth: stand-in | verdict | share hard (Cx1 needs) | simpler | p(x) cost "
        "| agree |"
    )
    lines = [head, "|" + "---|" * 13]
    for r in rows:
        stand_in = r["data"]["reference"].rsplit("-", 1)[-1] if r["data"]["reference"] else "—"
        same = "" if r["same_fits"] else " (fits differ)"
        lines.append(
            f"| {r['process']} ({r['k']}) | {r['n']} ({r['n_test']}) | {r['seed']} | "
            + " | ".join(_side(r["truth"]))
            + f" | {stand_in} | "
            + " | ".join(_side(r["data"]))
            + f" | {r['agreement']}{same} |"
        )
    return "\n".join(lines)


def grid(processes, ns, seeds) -> list[Case]:
    return [Case(p, n, s) for s in seeds for n in ns for p in processes]


def run(quick: bool = False, out: str | None = None) -> list[Row]:
    """The benchmark harness's rows: contradictions (target 0) and agreement where the truth is
    decisive (target all); the agreement table is printed above them. ``quick``: one small
    case with a short fit (checks the harness)."""
    cases = grid(["quadratic"], [200], [0]) if quick else grid(PROCESSES, SIZES, SEEDS)
    folder = Path(out or ("runs/no_truth-quick" if quick else "runs/no_truth"))
    for case in cases:
        run_case(case, folder, QUICK_FIT if quick else FIT)
    rows = [summary(c, folder) for c in cases]
    print(markdown(rows))
    return result_rows(rows)


def result_rows(rows: list[dict]) -> list[Row]:
    decisive = [r for r in rows if r["truth"]["failure"] in DECISIVE]
    agree = sum(r["agreement"] == "agree" for r in decisive)
    wrong = sum(r["agreement"] == "contradicted" for r in rows)
    return [
        Row(
            f"no-truth verdicts contradicted by the truth ({len(rows)} cases)", wrong, 0, "", "0", wrong == 0
        ),
        Row(
            f"agreement where the truth is decisive ({len(decisive)} cases)",
            agree,
            len(decisive),
            "cases",
            "all",
            agree == len(decisive),
        ),
    ]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.no_truth", description=__doc__.split("\n\n")[0])
    p.add_argument("--processes", default=",".join(PROCESSES), help="comma-separated zoo processes")
    p.add_argument("--sizes", default=",".join(map(str, SIZES)), help="comma-separated data sizes N")
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="comma-separated seeds")
    p.add_argument("--restarts", type=int, default=FIT["restarts"])
    p.add_argument("--steps", type=int, default=FIT["steps"])
    p.add_argument("--out", default="runs/no_truth", help="folder of the cases' runs (re-used)")
    p.add_argument("--table-only", action="store_true", help="only tabulate the finished cases")
    p.add_argument("--json", metavar="FILE", help="also write the table's numbers as JSON")
    args = p.parse_args(argv)
    cases = grid(
        [s.strip() for s in args.processes.split(",") if s.strip()],
        [int(s) for s in args.sizes.split(",")],
        [int(s) for s in args.seeds.split(",")],
    )
    out = Path(args.out)
    fit = {"restarts": args.restarts, "steps": args.steps}
    if not args.table_only:
        for case in cases:
            times = run_case(case, out, fit)
            print(f"{case.name}: " + ", ".join(f"{a} {t:.0f} s" for a, t in times.items()), file=sys.stderr)
    done = [c for c in cases if all((out / c.name / a / "report.md").exists() for a in ARMS)]
    rows = [summary(c, out) for c in done]
    print(markdown(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
