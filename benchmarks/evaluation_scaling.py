"""Evaluation memory and time: one job's evaluation at N test points and latent dimension K,
and a sweep with 1, 2 and 4 workers (local pool and Dask).

**One job's evaluation** (``--sizes``, ``--ks``): in a fresh process, a clusters VAE is fitted
as the issue's job (``--preset table1 --model clusters --latent-dim K --objective iwae
--restarts 1 --steps 60``: IWAE with 20 particles, the paper's 3 x 50 networks, the noise
learned above K = 1, 2,000 pretraining steps), then evaluated on ``N`` fresh test points as a
job does: :func:`pyrofail.analysis.metrics.summarize` with the truth (test -ELBO,
:math:`\\log p(x)` by quadrature at K <= 2 and by 5,000 importance draws at K = 3, the PMO gap,
:math:`I(x; z_i)`, the aggregate KL, the MLEO) and the objective's per-point and training
bounds, all with a seed and the memory budget (``--budget``). Each row gives the evaluation's
CPU time (the process's, one thread: wall time on shared cores measures the neighbours) with
its ratio to the smallest ``N``, its wall time, and the process's peak resident memory during
it (the kernel's high-water mark, reset after the fit; ``ru_maxrss`` where that cannot be
reset) with its ratio to the smallest ``N``. The fit is the same for every ``N`` (its data do
not depend on ``N``).

**The sweep** (``--sweep``): ``python -m pyrofail.analyze --preset tiny --workers W`` for
``W`` = 1, 2, 4, with the local process pool and with ``--scheduler local`` (Dask), wall time
and the peak of the largest process.

Run: ``python -m benchmarks.evaluation_scaling [--sizes 2000,10000,50000] [--ks 1,2,3]
[--sweep] [--budget 1GiB]``. Single-threaded (``OMP_NUM_THREADS=1``); the table notes the load.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time

from benchmarks.common import Row, cores, load, peak_rss_mib, table

SIZES = (2000, 10000, 50000)
KS = (1, 2, 3)
WORKERS = (1, 2, 4)


def _status_mib(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return float(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child(k: int, n: int, budget: str, seed: int = 0, profile: bool = False) -> dict:
    """Fit the job and evaluate it on ``n`` points in this process; the numbers as a dict.
    ``profile``: the evaluation under cProfile, its top functions printed to stderr."""
    import torch

    torch.set_num_threads(1)
    from pyrofail import fit, memory, zoo
    from pyrofail.analysis import metrics
    from pyrofail.data import make_splits

    truth = zoo.model("clusters")
    splits = make_splits(truth, 5000, 2000, 1, seed=seed)
    start = time.perf_counter()
    result = fit(
        splits.train.x,
        x_val=splits.val.x,
        truth=truth,
        latent_dim=k,
        guide="mean_field",
        objective="iwae",
        restarts=1,
        steps=60,
        seed=seed,
        learn_noise=k > 1,  # table1: the noise learned above the true K
        objective_options={"num_particles": 20},
    )
    fit_s = time.perf_counter() - start
    model, guide, objective = result.model.cpu(), result.guide.cpu(), result.objective
    x = truth.sample(n, seed=seed + 1).x
    memory.release()
    resident = _status_mib("VmRSS")
    exact = _reset_peak()
    start, cpu = time.perf_counter(), time.process_time()
    prof = cProfile.Profile() if profile else None
    if prof is not None:
        prof.enable()
    summary = metrics.summarize(
        model, guide, x, truth=truth, is_samples=5000, seed=seed, per_point=True, budget=budget
    )[0]
    if prof is not None:
        prof.disable()
        pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(25)
    with torch.no_grad():
        objective.per_point(model, guide, x, seed=seed, budget=budget)
        objective.training_bound(model, guide, x, seed=seed, budget=budget)
    eval_s, eval_cpu_s = time.perf_counter() - start, time.process_time() - cpu
    peak = _status_mib("VmHWM") if exact else peak_rss_mib()
    return {
        "k": k,
        "n": n,
        "fit_s": fit_s,
        "eval_s": eval_s,
        "eval_cpu_s": eval_cpu_s,
        "peak_mib": peak,
        "resident_mib": resident,
        "peak_exact": exact,
        "log_px_method": summary["log_px_method"],
        "test_neg_log_px": summary["test_neg_log_px"],
    }


def _evaluate(k: int, n: int, budget: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.evaluation_scaling",
        "--child",
        str(k),
        str(n),
        "--budget",
        budget,
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def evaluation_rows(sizes=SIZES, ks=KS, budget: str = "1GiB", log=print) -> list[Row]:
    rows = []
    for k in ks:
        first = None
        for n in sizes:
            r = _evaluate(k, n, budget)
            log(json.dumps(r))
            first = first or r
            ratio = r["peak_mib"] / first["peak_mib"]
            note = (
                f"peak {r['peak_mib']:.0f} MiB ({ratio:.2f}x N = {first['n']:,}); wall {r['eval_s']:.0f} s; "
                f"resident before {r['resident_mib']:.0f} MiB; {r['log_px_method']}"
            )
            name = f"evaluation K = {k}, N = {n:,}"
            rows.append(
                Row(name, r["eval_cpu_s"], first["eval_cpu_s"], "CPU s", "peak <= 1.1x", ratio <= 1.1, note)
            )
    return rows


def _analyze(*args: str) -> tuple[float, float]:
    """Wall seconds and the largest process's peak (MiB) of one ``python -m pyrofail.analyze``;
    ``ru_maxrss`` of the children is the largest so far: each run is in a fresh parent."""
    code = (
        "import resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        "subprocess.run([sys.executable, '-m', 'pyrofail.analyze', '--quiet', *sys.argv[1:]], check=True,"
        " stdout=subprocess.DEVNULL)\n"
        "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code, *args], check=True, capture_output=True, text=True, env=env
    )
    wall, rss = out.stdout.split()
    return float(wall), float(rss)


def sweep_rows(workers=WORKERS, log=print) -> list[Row]:
    rows = []
    for scheduler in (None, "local"):
        first = None
        for w in workers:
            with tempfile.TemporaryDirectory() as tmp:
                args = ["--preset", "tiny", "--out", f"{tmp}/run", "--workers", str(w)]
                if scheduler:
                    args += ["--scheduler", scheduler]
                wall, rss = _analyze(*args)
            log(json.dumps({"scheduler": scheduler or "pool", "workers": w, "wall_s": wall, "peak_mib": rss}))
            first = first or wall
            name = (
                f"tiny preset, {w} worker{'s' * (w > 1)}, {'Dask (local)' if scheduler else 'process pool'}"
            )
            rows.append(Row(name, wall, first, "s", "—", None, f"peak {rss:.0f} MiB (largest process)"))
    return rows


def run(quick: bool = False, sweep: bool = True, budget: str = "1GiB") -> list[Row]:
    """The rows for ``python -m benchmarks``: small sizes with ``quick``."""
    sizes, ks = ((500, 2000), (3,)) if quick else (SIZES, KS)
    rows = evaluation_rows(sizes, ks, budget, log=lambda s: print(s, file=sys.stderr))
    if sweep:
        rows += sweep_rows((1, 2) if quick else WORKERS, log=lambda s: print(s, file=sys.stderr))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.evaluation_scaling", description=__doc__)
    p.add_argument("--sizes", default=",".join(map(str, SIZES)), help="test points N, comma-separated")
    p.add_argument("--ks", default=",".join(map(str, KS)), help="latent dimensions K, comma-separated")
    p.add_argument("--budget", default="1GiB", help="the worker's memory budget (pyrofail.memory)")
    p.add_argument("--sweep", action="store_true", help="also the tiny preset with 1, 2, 4 workers")
    p.add_argument("--no-evaluation", action="store_true", help="only the sweep")
    p.add_argument("--child", nargs=2, type=int, metavar=("K", "N"), help=argparse.SUPPRESS)
    p.add_argument(
        "--profile", nargs=2, type=int, metavar=("K", "N"), help="one evaluation under cProfile (stderr)"
    )
    args = p.parse_args(argv)
    if args.child or args.profile:
        print(json.dumps(child(*(args.child or args.profile), args.budget, profile=bool(args.profile))))
        return 0
    start_load = load()
    rows = []
    if not args.no_evaluation:
        sizes = [int(s) for s in args.sizes.split(",")]
        ks = [int(k) for k in args.ks.split(",")]
        rows += evaluation_rows(sizes, ks, args.budget, log=lambda s: print(s, file=sys.stderr))
    if args.sweep:
        rows += sweep_rows(log=lambda s: print(s, file=sys.stderr))
    print(f"{cores()} CPU cores, one thread per process; {start_load} at the start, {load()} at the end")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
