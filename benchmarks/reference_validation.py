"""The NUTS reference against exact answers, on posteriors built to make it fail, with its gate.

Cases (decoders in :mod:`benchmarks.exact`):

* ``unequal narrow modes (K=1)``: g(z) = z^2 + 0.3 z, sigma = 1e-3: two modes of unequal mass,
  of width ~3e-4, at |z| ~ 1-2.5 (x drawn from the process);
* ``broad heavy mode beside a narrow peak (K=1)``: g(z) = Phi((z - 1.5) / 4e-4), sigma = 0.01, x
  spread over [0.044, 0.054]: a broad mode holding 10-80% of the mass, its peak 9-13 nats below a
  narrow peak of width ~4e-5;
* ``many modes (K=2)``: f(z) = (sin 2.5 z_1, sin 2.5 z_2), sigma = 0.1: up to 16 modes, more than
  the 4 chains asked for;
* ``many modes, factorised (K=3)``: f(z) = (z_1^2 + 0.3 z_1, z_2^3 - 3 z_2, sin 2.5 z_3), sigma =
  0.05: up to 24 modes, more than the 16 chains allowed.

Exact answers: the grid for K <= 2, the product of 1-D grids for the factorised K = 3 case. Per
point, the reference is *right* when its draws' mode masses are within 0.05 of the exact ones
(``modes.reference_mass_error`` on the exact reference's modes) and its log p(x) within 0.05
nats; *flagged* when :func:`pyrofail.analysis.reference.quality.gate` fails it. Target: at least 95% of
points right and every wrong point flagged.

    python -m benchmarks --only reference             # the full size (N = 50 points per case)
    python benchmarks/reference_validation.py --points 20 --quick
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

TOL_MASS = 0.05
TOL_LOG_PX = 0.05
TARGET_RIGHT = 0.95
# NUTS options beyond the defaults: 128 optimisation starts (32 miss maxima holding a quarter of
# the mass on the K = 2 case), 16,000 importance draws (4,000 leave log p(x) 0.03-0.04 nats
# uncertain beside the needle) and five points per sampler run (the points of a run share one
# step size, and a chain at the needle's cliff shrinks it for all: 50 at once crawl at 0.001)
FULL = {
    "points": 50,
    "num_draws": 1000,
    "num_warmup": 300,
    "num_importance": 16000,
    "init_candidates": 128,
    "point_batch": 5,
}
QUICK = {"points": 4, "num_draws": 200, "num_warmup": 100, "num_importance": 1000}


def _cases(points: int, seed: int):
    """``name -> (model, x, exact reference maker)``."""
    from benchmarks.exact import Cubic, Parabola, Sine, Step, exact_reference, factorised_model
    from pyrofail.analysis.reference import reference_posterior
    from pyrofail.models import LatentGaussian

    def grid(model, x):
        return lambda: reference_posterior(model, x, "grid", num_draws=8000, seed=seed)

    out = {}
    m = LatentGaussian(Parabola(), 1, 1, 1e-3).double()
    x = m.sample(points, seed=seed).x
    out["unequal narrow modes (K=1)"] = (m, x, grid(m, x))
    m = LatentGaussian(Step(), 1, 1, 0.01).double()
    gen = torch.Generator().manual_seed(seed)
    x = (0.044 + 0.010 * torch.rand(points, 1, generator=gen, dtype=torch.float64)).double()
    out["broad heavy mode beside a narrow peak (K=1)"] = (m, x, grid(m, x))
    m = factorised_model([Sine(), Sine()], 0.1)
    x = m.sample(points, seed=seed).x
    out["many modes (K=2)"] = (m, x, grid(m, x))
    parts = [Parabola(), Cubic(), Sine()]
    m = factorised_model(parts, 0.05)
    x = m.sample(points, seed=seed).x
    out["many modes, factorised (K=3)"] = (m, x, lambda: exact_reference(parts, 0.05, x, seed=seed))
    return out


def evaluate(model, x, exact, *, seed: int = 0, **options) -> dict:
    """One case: the NUTS reference against ``exact``, and the gate."""
    from pyrofail.analysis.reference import log_px, modes, quality, reference_posterior

    start = time.perf_counter()
    ref = reference_posterior(model, x, "nuts", seed=seed, **options)
    seconds = time.perf_counter() - start
    mass_err, labels = modes.reference_mass_error(ref, exact)
    lp_err = (log_px(ref)[0] - log_px(exact)[0]).abs()
    right = (mass_err <= TOL_MASS) & (lp_err <= TOL_LOG_PX)
    q = quality.gate(ref)
    flagged = ~q.ok
    missed = right.logical_not() & ~flagged
    reasons = q.reasons()
    return {
        "points": int(x.shape[0]),
        "multimodal": int((modes.num_modes(labels) > 1).sum()),
        "most_modes": int(modes.num_modes(labels).max()),
        "chains": int(ref.posterior.sizes["chain"]),
        "right": float(right.double().mean()),
        "flagged": float(flagged.double().mean()),
        "wrong_unflagged": int(missed.sum()),
        "right_flagged": int((right & flagged).sum()),
        "mass_err_worst": float(mass_err.max()),
        "log_px_err_worst": float(lp_err.max()),
        "checks": q.summary(),
        "unflagged_wrong_points": [
            {"point": i, "mass_err": float(mass_err[i]), "log_px_err": float(lp_err[i])}
            for i in missed.nonzero().flatten().tolist()
        ],
        "flag_reasons_of_wrong": sorted(
            {reasons[i] for i in (~right & flagged).nonzero().flatten().tolist()}
        ),
        "seconds": seconds,
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a few points, short chains: a smoke test")
    p.add_argument("--points", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--only", default=None, help="run the cases whose name contains this text")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    size = dict(QUICK if args.quick else FULL)
    points = args.points or size.pop("points")
    size.pop("points", None)
    rows = [
        "| case | points (multimodal, most modes) | chains | right | flagged | wrong, not flagged "
        "| worst mode-mass error | worst log p(x) error | NUTS s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    results = {}
    for name, (model, x, exact) in _cases(points, args.seed).items():
        if args.only and args.only not in name:
            continue
        r = results[name] = evaluate(model, x, exact(), seed=args.seed, **size)
        rows.append(
            f"| {name} | {r['points']} ({r['multimodal']}, {r['most_modes']}) | {r['chains']} "
            f"| {100 * r['right']:.1f}% | {100 * r['flagged']:.1f}% | {r['wrong_unflagged']} "
            f"| {r['mass_err_worst']:.3f} | {r['log_px_err_worst']:.3f} | {r['seconds']:.0f} |"
        )
        print(rows[-1], flush=True)
    print("\n".join(rows))
    print(json.dumps({"args": vars(args), "options": size, "results": results}, indent=1))
    return results


def run(quick: bool = False, **_) -> list:
    """Rows for ``python -m benchmarks``: per case, the share of points right, against 95%, and
    whether every wrong point was flagged."""
    from benchmarks.common import Row

    results = main(["--quick"] if quick else [])
    rows = []
    for name, r in results.items():
        met = r["right"] >= TARGET_RIGHT and r["wrong_unflagged"] == 0
        note = (
            f"flagged {100 * r['flagged']:.1f}%, wrong and not flagged {r['wrong_unflagged']}, "
            f"{r['chains']} chains, {r['seconds']:.0f} s"
        )
        rows.append(
            Row(
                f"NUTS reference right, {name}, N={r['points']}",
                100 * r["right"],
                0.0,
                "%",
                ">= 95%, every wrong point flagged",
                met,
                note,
            )  # fmt: skip
        )
    return rows


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: benchmarks importable
    main()
