"""Calibrate the zoo's ``figure8`` and ``clusters`` constants against Table 1 of Yacoby et al.

A candidate is ``MODEL:SIGMA[:SCALE[:BETA]]`` (the truth's noise scale, the scale that
multiplies :math:`f`, and for ``clusters`` the sigmoids' steepness). For each candidate, each
``--latent-dim`` and each objective (ELBO and IWAE, mean-field guide) it fits one job exactly
as ``python -m pyrofail.analyze`` does (:func:`pyrofail.stages.jobs.run_job`, options of
``--preset``, overridden by the flags given) and prints one table row: the test bound of the
job's objective (the paper's "test −ELBO" column), test −log p(x) by quadrature, the MLEO,
:math:`\\operatorname{avg}_i I(x; z_i)`, and whether the bound and avg I fall within the paper's
mean ± 2 sd. Finished jobs are kept in ``--out`` and not refitted.

``--truth-only`` fits nothing: it prints each candidate truth's entropy
:math:`H = -\\mathbb E \\log p(x)` (quadrature on 2,000 draws) and its mutual information
:math:`I(x; z) = H - \\tfrac D2 \\log(2\\pi e \\sigma^2)` (since
:math:`\\mathbb E \\log p(x \\mid z) = -\\tfrac D2 \\log(2\\pi e\\sigma^2)`), in seconds;
``--hardness`` adds how hard the truth's posteriors are for a mean-field Gaussian (mean KL*
and the share of hard points, as the diagnosis measures them). Run with
one thread, e.g.::

    OMP_NUM_THREADS=1 python -m benchmarks.calibrate --truth-only figure8:0.06:0.6 clusters:1:5
    OMP_NUM_THREADS=1 python -m benchmarks.calibrate figure8:0.06:0.6 --restarts 4 --steps 3000 \\
        --out runs/calibrate
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from pyrofail import zoo
from pyrofail.analysis.hardness import best_mean_field
from pyrofail.analysis.reference import grid
from pyrofail.presets import PAPER_TABLE1, PRESETS
from pyrofail.records import JobRecord, RunFolder, TestPoints
from pyrofail.records.schema import encode
from pyrofail.stages.jobs import run_job
from pyrofail.sweep import expand

KEYS = ("noise_scale", "scale", "beta")


def parse_candidate(text: str) -> tuple[str, dict]:
    """``"clusters:1.0:5:20"`` -> ``("clusters", {"noise_scale": 1.0, "scale": 5.0, "beta": 20.0})``."""
    name, *values = text.split(":")
    if name not in ("figure8", "clusters") or not 1 <= len(values) <= (3 if name == "clusters" else 2):
        raise SystemExit(f"bad candidate {text!r}: MODEL:SIGMA[:SCALE[:BETA]], MODEL figure8 or clusters")
    return name, {k: float(v) for k, v in zip(KEYS, values)}


def tag(name: str, options: dict) -> str:
    return name + "".join(f"-{k[0]}{options[k]:g}" for k in KEYS if k in options)


def truth_row(name: str, options: dict, n: int = 2000) -> dict:
    truth = zoo.model(name, **options)
    lp = grid.grid_posterior(truth, truth.sample(n, seed=3).x).log_px.double()
    h = -float(lp.mean())
    sigma = float(truth.noise_scale)
    return {
        "H": h,
        "H_se": float(lp.std() / math.sqrt(n)),
        "I_true": h - truth.data_dim / 2 * math.log(2 * math.pi * math.e * sigma**2),
    }


def hardness_row(name: str, options: dict, n: int = 300) -> dict:
    """How hard the truth's posteriors are for a mean-field Gaussian, as the diagnosis measures
    it (:func:`pyrofail.analysis.hardness.best_mean_field` on ``n`` draws, grid reference): the
    mean KL* and the share of points with KL* above ``HARD_KL``. The diagnosis's "simpler
    posteriors" test needs the MFG-VAE's mean KL* below the truth's by more than 0.05 nats, so a
    truth whose mean KL* is near 0.05 cannot pass it."""
    truth = zoo.model(name, **options)
    best = best_mean_field(truth, truth.sample(n, seed=5).x, method="grid")
    return {"kl_mean": float(best["mean"]), "share_hard": float(best["share_hard"])}


def mleo_difference(elbo_folder: Path, iwae_folder: Path) -> dict:
    """The MLEO of the ELBO job minus the IWAE job's on the same test points (their seeded test
    set), with the standard error of the per-point differences: the mean of
    log p_iwae(x) − log p_elbo(x) from the jobs' ``test_points.json``."""
    a, b = (RunFolder.read(TestPoints, f / "test_points.json") for f in (elbo_folder, iwae_folder))
    if a.truth_log_px != b.truth_log_px:
        raise ValueError("the two jobs were not measured on the same test points")
    d = torch.tensor(b.log_px, dtype=torch.float64) - torch.tensor(a.log_px, dtype=torch.float64)
    return {"mean": float(d.mean()), "stderr": float(d.std() / math.sqrt(len(d)))}


def within(name: str, k: int, objective: str, metric: str, value: float) -> str:
    paper = PAPER_TABLE1.get((name, k, objective, metric))
    if paper is None:
        return "—"
    mean, sd = paper
    return "yes" if abs(value - mean) <= 2 * sd else f"no ({value - mean:+.2f})"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("candidates", nargs="+", help="MODEL:SIGMA[:SCALE[:BETA]]")
    p.add_argument("--truth-only", action="store_true", help="only the truth's H and I(x; z)")
    p.add_argument(
        "--hardness",
        action="store_true",
        help="with --truth-only: also the truth's mean KL* and share of hard points (300 points, slower)",
    )
    p.add_argument("--preset", default="default", choices=sorted(PRESETS))
    p.add_argument("--latent-dim", default="1", help="comma-separated K")
    p.add_argument("--objective", default="elbo,iwae")
    p.add_argument("--restarts", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--n-train", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--out", default="runs/calibrate")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    candidates = [parse_candidate(c) for c in args.candidates]
    if args.truth_only:
        head = "| candidate | H = −E log p(x) | I(x; z) of the truth |"
        rule = "|---|---|---|"
        if args.hardness:
            head, rule = head + " mean KL* | share hard |", rule + "---|---|"
        print(f"{head}\n{rule}")
        for name, options in candidates:
            r = truth_row(name, options)
            row = f"| {tag(name, options)} | {r['H']:.3f} ± {r['H_se']:.3f} | {r['I_true']:.3f} |"
            if args.hardness:
                b = hardness_row(name, options)
                row += f" {b['kl_mean']:.3f} | {b['share_hard']:.0%} |"
            print(row, flush=True)
        return
    options = {k: (dict(v) if isinstance(v, dict) else v) for k, v in PRESETS[args.preset].items()}
    for flag in ("restarts", "steps", "n_train", "seed"):
        if getattr(args, flag) is not None:
            options[flag] = getattr(args, flag)
    options.update(
        truth_noise=None,
        latent_dim=[int(k) for k in args.latent_dim.split(",")],
        objective=args.objective.split(","),
        guide=["mean_field"],
    )
    out = Path(args.out)
    print(
        "| candidate | K | objective | test −bound | within ±2sd | −log p(x) | MLEO | avg I | within ±2sd "
        "| truth H | s |\n|---|---|---|---|---|---|---|---|---|---|---|",
        flush=True,
    )
    paired = []
    for name, truth_options in candidates:
        h = truth_row(name, truth_options)["H"]
        folders = {}
        for cfg in expand({**options, "process": [name], "truth_options": {name: dict(truth_options)}}):
            k, obj = cfg.latent_dim, cfg.objective
            folder = out / tag(name, truth_options) / f"K{k}-{obj}"
            start = time.perf_counter()
            if run_job(cfg, folder)["failed"]:
                print(f"| {tag(name, truth_options)} | {k} | {obj} | failed |")
                continue
            seconds = time.perf_counter() - start
            folders[k, obj] = folder
            m = RunFolder.read(JobRecord, folder / "metrics.json").metrics
            bound, mi = m.test_neg_bound, m.avg_mutual_information.mean
            print(
                f"| {tag(name, truth_options)} | {k} | {obj} | {bound.mean:.3f} ± {bound.stderr:.3f} "
                f"| {within(name, k, obj, 'neg_bound', bound.mean)} | {m.test_neg_log_px.mean:.3f} "
                f"| {m.mleo.mean:.3f} | {mi:.3f} | {within(name, k, obj, 'mi', mi)} | {h:.3f} "
                f"| {seconds:.0f} |",
                flush=True,
            )
            row = {"candidate": tag(name, truth_options), "config": cfg.to_dict(), **encode(m, type(m))}
            with open(out / "rows.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
        for (k, obj), folder in folders.items():
            if obj == "elbo" and (k, "iwae") in folders:
                d = mleo_difference(folder, folders[k, "iwae"])
                paired.append(f"{tag(name, truth_options)} K={k}: {d['mean']:.3f} ± {d['stderr']:.3f}")
    if paired:
        print("\nMLEO, MFG-VAE (elbo) − IWAE, paired over the test points:", *paired, sep="\n")


if __name__ == "__main__":
    main()
