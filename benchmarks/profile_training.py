"""Where the time of the training benchmark's fit goes: ``pf.fit`` with its settings (10
restarts, batch 100, Figure-8, random initialisation, the direct step) under :mod:`cProfile`,
the top entries by cumulative and by own time.

    OMP_NUM_THREADS=1 python -m benchmarks.profile_training --steps 1000
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import pyrofail as pf


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile_training", description=__doc__)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--eager", action="store_true", help="Pyro's SVI step instead of the direct one")
    args = p.parse_args(argv)
    truth = pf.zoo.model("figure8")
    data = truth.sample(7000, seed=0)
    x, x_val = data.x[:5000], data.x[5000:]

    def fit(steps):
        return pf.fit(
            x,
            x_val=x_val,
            truth=truth,
            restarts=10,
            steps=steps,
            batch_size=100,
            init="random",
            warmup_steps=0,
            eval_every=steps,
            seed=0,
            compile=False if args.eager else None,
        )

    fit(20)  # warm up
    prof = cProfile.Profile()
    start = time.perf_counter()
    prof.enable()
    fit(args.steps)
    prof.disable()
    print(f"wall {time.perf_counter() - start:.1f} s for {args.steps} steps")
    stats = pstats.Stats(prof)
    stats.sort_stats("cumulative").print_stats(args.top)
    stats.sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
