"""The NUTS reference at the posterior stage's size, and how it grows with the number of points.

``stage``: the reference of fitted K = 3 models as ``pyrofail/stages/references.py`` computes it
(the first ``--points`` test points of the job's data, 500 draws per point, the job's seed, eight
draws of the trained guide as extra optimisation starts, every mode-finding step on): per
model the seconds, the gradient evaluations, the seconds of each step, and with ``--profile``
a cProfile of it (the top functions by cumulative time).

``scaling``: the same reference of one job at ``--sizes`` points (100, 300, 1,000), each in a
fresh subprocess so that its peak resident memory (``resource.getrusage``) is its own; every row
with its ratio to the smallest size.

Fitted K = 3 decoders for it, cheaply (minutes; the 3 x 50 LeakyReLU MLP of ``table1``)::

    OMP_NUM_THREADS=1 python -m pyrofail.analyze --model figure8,clusters --latent-dim 3 \\
        --learn-noise all --restarts 2 --steps 3000 --n-test 2000 --no-reference --out runs/k3
    python benchmarks/reference_scaling.py prepare runs/k3    # each job's decoder, guide, points
    OMP_NUM_THREADS=1 python benchmarks/reference_scaling.py stage runs/k3
    OMP_NUM_THREADS=1 python benchmarks/reference_scaling.py scaling runs/k3/jobs/figure8-K3-mean_field-elbo

``--src DIR`` runs another checkout's code (a copy of an older commit, for before-and-after rows).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import resource
import subprocess
import sys
import time
from pathlib import Path

DRAWS = 500  # pyrofail.stages.references.DRAWS
GUIDE_CANDIDATES = 8  # pyrofail.stages.references.GUIDE_CANDIDATES
ROOT = Path(__file__).resolve().parents[1]


def _load() -> str:
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


INPUTS = "reference_inputs.pt"  # a job's decoder, guide and test points, as ``prepare`` saves them


def _load_job(job: Path):
    """``(model, guide, x_test, seed)`` of a finished job: from its ``reference_inputs.pt`` when
    ``prepare`` wrote one, else through the stages' loader of the checkout in use."""
    import torch

    saved = job / INPUTS
    if saved.exists():
        d = torch.load(saved, weights_only=False)  # our own file: whole modules
        return d["model"], d["guide"], d["x"], d["seed"]
    from pyrofail.stages.jobs import job_data, load_job  # the stages as of this benchmark's writing

    config, _, model, guide = load_job(job)
    _, splits = job_data(config)
    return model, guide, splits.test.x.double(), int(config.get("seed", 0))


def prepare(args) -> None:
    """Save every job's inputs (``reference_inputs.pt``), so that later checkouts, whatever their
    stages' loaders, measure the same decoders at the same points."""
    import torch

    for job in _jobs(Path(args.folder)):
        model, guide, x, seed = _load_job(job)
        torch.save({"model": model, "guide": guide, "x": x, "seed": seed}, job / INPUTS)
        print(f"{job / INPUTS}: {tuple(x.shape)} test points, seed {seed}")


def _jobs(folder: Path) -> list[Path]:
    if not (folder / "jobs").exists():
        return [folder]
    return sorted(p for p in (folder / "jobs").iterdir() if (p / "model.pt").exists())


def stage_reference(job: Path, points: int, profile: Path | None = None, **options) -> dict:
    """One job's reference as the posterior stage makes it: its statistics and seconds."""
    import torch

    from pyrofail.analysis.reference import reference_posterior

    torch.set_num_threads(1)
    model, guide, x, seed = _load_job(job)
    x = x.double()[:points]
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        extra = guide.double().distribution(x).sample((GUIDE_CANDIDATES,))
    call = lambda: reference_posterior(  # noqa: E731
        model.double(), x, "nuts", num_draws=DRAWS, seed=seed, extra_candidates=extra, **options
    )
    start, cpu, load = time.perf_counter(), time.process_time(), _load()
    if profile is None:
        ref = call()
    else:
        prof = cProfile.Profile()
        ref = prof.runcall(call)
        prof.dump_stats(profile)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    from pyrofail.analysis.reference import quality

    q = quality.gate(ref, ess_min=quality.ESS_MIN * DRAWS / 2000)  # the stage's gate (bias.GATE)
    return {
        "job": job.name,
        "points": int(x.shape[0]),
        "seconds": seconds,
        "cpu_seconds": cpu,
        "load_at_start": load,
        "load_at_end": _load(),
        "sampler": json.loads(ref.posterior.attrs["sampler"]),
        "failing_gate": float((~q.ok).double().mean()),
        "gate": q.summary(),
        "modes_max": int(ref.diagnostics.num_modes.max()),
        "multimodal": int((ref.diagnostics.num_modes > 1).sum()),
        "log_px_mean": float(ref.marginal.log_px.mean()),
    }


def _top(profile: Path, n: int = 30) -> str:
    out = io.StringIO()
    pstats.Stats(str(profile), stream=out).sort_stats("cumulative").print_stats(n)
    return out.getvalue()


def stage(args) -> list[dict]:
    folder = Path(args.folder)
    jobs = (
        sorted(p for p in (folder / "jobs").iterdir() if (p / "model.pt").exists())
        if (folder / "jobs").exists()
        else [folder]
    )
    rows = []
    for job in jobs:
        if args.only and args.only not in job.name:
            continue
        prof = Path(args.out) / f"{job.name}.pstats" if args.profile else None
        r = stage_reference(job, args.points, prof, **json.loads(args.options))
        rows.append(r)
        s = r["sampler"]
        print(
            f"| {r['job']} | {r['points']} | {r['seconds']:.0f} ({r['cpu_seconds']:.0f} CPU) "
            f"| {s.get('num_grads')} | {s.get('chains')} | {s.get('importance_points', 0)} "
            f"| {100 * r['failing_gate']:.1f}% | {r['multimodal']} | {r['load_at_start']} |",
            flush=True,
        )
        print(json.dumps(r), flush=True)
        if prof is not None:
            print(_top(prof, args.top), flush=True)
    return rows


def _child(args) -> None:
    """One size, in its own process: the result and its peak memory as one JSON line."""
    r = stage_reference(Path(args.job), args.points, **json.loads(args.options))
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r["peak_mib"] = kib / 1024
    print("RESULT " + json.dumps(r), flush=True)


def scaling(args) -> list[dict]:
    rows = []
    for n in [int(v) for v in args.sizes.split(",")]:
        cmd = [sys.executable, __file__, "_child", args.job, "--points", str(n), "--options", args.options]
        if args.src:
            cmd += ["--src", args.src]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        line = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
        if not line:
            print(done.stdout[-3000:], done.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"the reference at {n} points failed")
        r = json.loads(line[-1][len("RESULT ") :])
        rows.append(r)
        base = rows[0]
        print(
            f"| {n} | {r['seconds']:.0f} ({r['seconds'] / base['seconds']:.2f}x) "
            f"| {r['peak_mib']:.0f} ({r['peak_mib'] / base['peak_mib']:.2f}x) "
            f"| {r['sampler'].get('num_grads')} | {100 * r['failing_gate']:.1f}% | {r['load_at_start']} |",
            flush=True,
        )
        print(json.dumps(r), flush=True)
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("stage", help="the stage-sized reference of every job of a run folder")
    s.add_argument("folder")
    s.add_argument("--points", type=int, default=300)
    s.add_argument("--only", default=None, help="jobs whose name contains this text")
    s.add_argument("--profile", action="store_true", help="cProfile each reference")
    s.add_argument("--top", type=int, default=40)
    s.add_argument("--out", default=".", help="folder for the .pstats files")
    s.add_argument("--options", default="{}", help="JSON: further reference options")
    s.add_argument("--src", default=None, help="import pyrofail from this checkout instead")
    c = sub.add_parser("scaling", help="one job's reference at several sizes, each in a subprocess")
    c.add_argument("job")
    c.add_argument("--sizes", default="100,300,1000")
    c.add_argument("--options", default="{}")
    c.add_argument("--src", default=None)
    r = sub.add_parser("prepare", help="save each job's decoder, guide and test points")
    r.add_argument("folder")
    r.add_argument("--src", default=None)
    h = sub.add_parser("_child")
    h.add_argument("job")
    h.add_argument("--points", type=int, required=True)
    h.add_argument("--options", default="{}")
    h.add_argument("--src", default=None)
    args = p.parse_args(argv)
    sys.path.insert(0, str(Path(args.src).resolve() if args.src else ROOT))
    {"stage": stage, "scaling": scaling, "prepare": prepare, "_child": _child}[args.command](args)


if __name__ == "__main__":
    main()
