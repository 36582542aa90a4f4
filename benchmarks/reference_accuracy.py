"""The NUTS reference against the exact grid, at full size: the reference's accuracy targets.

For ``quadratic`` and ``figure8`` (K = 1) and a K = 2 process with bimodal posteriors
(f(z) = ((Phi(z_1) - 1/2)^2, z_2), sigma = 0.02, symmetric in z_1), on N points each:

* mode masses: the NUTS draws' masses on the grid reference's modes, within 0.05 of the grid's,
  for at least 95% of points;
* log p(x) within 0.02 nats of the grid's, for at least 95% of points;
* R-hat <= 1.01 (the share of points, and the worst);
* and, beside them, the worst ESS, divergences and the time taken.

    python benchmarks/reference_accuracy.py                      # N = 200, 4 chains of 1000 draws
    python benchmarks/reference_accuracy.py --points 50 --draws 500 --warmup 300
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn


class Fold(nn.Module):
    """f(z) = ((Phi(z_1) - 1/2)^2, z_2): two posterior modes of equal mass, z_1 < 0 and z_1 > 0."""

    def forward(self, z):
        return torch.stack(((torch.special.ndtr(z[..., 0]) - 0.5) ** 2, z[..., 1]), -1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--points", type=int, default=200)
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--draws", type=int, default=1000, help="draws per chain")
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import pyrofail as pf
    from pyrofail.analysis.reference import log_px, modes, reference_posterior
    from pyrofail.models import LatentGaussian

    torch.set_num_threads(args.threads)
    processes = {
        "quadratic (K = 1)": pf.zoo.model("quadratic"),
        "figure8 (K = 1)": pf.zoo.model("figure8"),
        "fold (K = 2)": LatentGaussian(Fold(), latent_dim=2, data_dim=2, noise_scale=0.02),
    }
    rows = [
        "| process | points (multimodal) | mode masses within 0.05 | log p(x) within 0.02 "
        "| R-hat <= 1.01 (worst) | worst ESS | divergences | NUTS s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    results = {}
    for name, truth in processes.items():
        x = truth.sample(args.points, seed=args.seed).x
        grid = reference_posterior(truth, x, "grid", num_draws=4000, seed=args.seed)
        start = time.perf_counter()
        ref = reference_posterior(
            truth, x, "nuts", num_draws=args.chains * args.draws, num_chains=args.chains,
            num_warmup=args.warmup, seed=args.seed,
        )  # fmt: skip
        seconds = time.perf_counter() - start
        mass_err, labels = modes.reference_mass_error(ref, grid)
        lp_err = (log_px(grid)[0] - log_px(ref)[0]).abs()
        d = ref.diagnostics
        r = results[name] = {
            "points": args.points,
            "multimodal": int((modes.num_modes(labels) > 1).sum()),
            "mode_frac": float((mass_err <= 0.05).double().mean()),
            "mode_worst": float(mass_err.max()),
            "logpx_frac": float((lp_err <= 0.02).double().mean()),
            "logpx_worst": float(lp_err.max()),
            "rhat_frac": float((d.rhat <= 1.01).mean()),
            "rhat_worst": float(d.rhat.max()),
            "ess_worst": float(d.ess.min()),
            "divergences": int(d.divergences.sum()),
            "seconds": seconds,
        }
        rows.append(
            f"| {name} | {r['points']} ({r['multimodal']}) | {100 * r['mode_frac']:.1f}% "
            f"(worst {r['mode_worst']:.3f}) | {100 * r['logpx_frac']:.1f}% (worst {r['logpx_worst']:.3f}) "
            f"| {100 * r['rhat_frac']:.1f}% ({r['rhat_worst']:.3f}) | {r['ess_worst']:.0f} "
            f"| {r['divergences']} | {seconds:.0f} |"
        )
        print(rows[-1], flush=True)
    print("\n".join(rows))
    print(json.dumps({"args": vars(args), "results": results}))


if __name__ == "__main__":
    main()
