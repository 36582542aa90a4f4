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
* ``libi_fit``: LiBI's stage one on figure8 with the old minibatch penalty and the full-data
  one: the selected decoder's MLEO and aggregate KL on test points.
* ``aggregate``: the plug-in, jackknife and corrected aggregate KL on a model's own samples
  (true value 0).

Run with one thread::

    OMP_NUM_THREADS=1 python -m benchmarks.downstream_checks --only attacks,mig,auroc
    OMP_NUM_THREADS=1 python -m benchmarks.downstream_checks --only libi,aggregate,libi_fit
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


def libi_batches() -> dict:
    from pyrofail import quadrature, zoo

    out = {}
    print(
        "| process | aggregate KL per 100-point batch (mean of 50) | over the 5,000 points | pass / batch |"
    )
    print("|---|---|---|---|")
    for name in ("figure8", "quadratic", "clusters"):
        truth = zoo.model(name)
        x = truth.sample(5000, seed=0).x
        z, log_w = quadrature.nodes(truth.latent_dim, 0.02, dtype=x.dtype)
        with torch.no_grad():
            batch = np.mean(
                [
                    float(
                        quadrature.aggregate_kl(
                            quadrature.log_joint_on_nodes(truth, x[i : i + 100], z, log_w), z, log_w
                        )
                    )
                    for i in range(0, 5000, 100)
                ]
            )
            start = time.perf_counter()
            full = float(quadrature.kl_from_prior(quadrature.aggregate_masses(truth, x, z, log_w), z, log_w))
            t_full = time.perf_counter() - start
            start = time.perf_counter()
            for i in range(0, 1000, 100):
                quadrature.log_joint_on_nodes(truth, x[i : i + 100], z, log_w).logsumexp(-1)
            t_batch = (time.perf_counter() - start) / 10
        out[name] = {"batch": batch, "full": full, "cost_ratio": t_full / t_batch}
        print(f"| {name} | {batch:.4f} | {full:.4f} | {t_full / t_batch:.0f} (forward only) |")
    return out


def _old_objective(bmodel, x, z, log_w, penalty, masses):
    """Stage one before issue 27: the KL of the minibatch's own aggregate."""
    from pyrofail import quadrature

    lj = quadrature.log_joint_on_nodes(bmodel, x, z, log_w)
    value = torch.logsumexp(lj, -1).mean(-1)
    return value - penalty * quadrature.aggregate_kl(lj, z, log_w) if penalty else value


def libi_fit(steps: int = 1500) -> dict:
    """Stage one on figure8 (K = 1, 5,000 points, 2 restarts), with the minibatch penalty (before)
    and the full-data one (after): the selected decoder's MLEO and aggregate KL on 2,000 test
    points, paired over the same points."""
    from pyrofail import zoo
    from pyrofail.analysis import metrics
    from pyrofail.analysis.aggregate import aggregate_kl_terms
    from pyrofail.estimate import Estimate
    from pyrofail.procedures import libi
    from pyrofail.training.config import resolve

    truth = zoo.model("figure8")
    x, x_val, test = (truth.sample(n, seed=s).x for n, s in ((5000, 0), (2000, 1), (2000, 2)))
    truth_lp = metrics.log_px(truth, test)["per_point"].double()
    out, per_point = {}, {}
    for arm in ("minibatch (before)", "full data (after)"):
        config, problem = resolve(
            x, x_val=x_val, truth=truth, latent_dim=1, procedure="libi", restarts=2, steps=steps, seed=0
        )
        saved = libi._objective
        if arm.startswith("minibatch"):
            libi._objective = _old_objective
        try:
            start = time.perf_counter()
            model, _, _ = libi._likelihood_by_quadrature(config, problem, libi._options(config))
            seconds = time.perf_counter() - start
        finally:
            libi._objective = saved
        lp = metrics.log_px(model, test)["per_point"].double()
        per_point[arm] = truth_lp - lp
        terms = aggregate_kl_terms(model, test)
        out[arm] = {
            "mleo": Estimate.of(truth_lp - lp),
            "aggregate_kl": terms["estimate"],
            "plug_in": terms["plug_in"],
            "seconds": seconds,
        }
        print(
            f"{arm}: MLEO {out[arm]['mleo']}, aggregate KL {terms['estimate']} "
            f"(plug-in {terms['plug_in']:.4f}), ",
            end="",
        )
        print(f"stage one {seconds:.0f} s")
    diff = Estimate.paired(per_point["full data (after)"], per_point["minibatch (before)"])
    print(f"MLEO after - before, paired: {diff}")
    out["mleo_difference"] = diff
    return out


def aggregate_bias() -> dict:
    from pyrofail import zoo
    from pyrofail.analysis.aggregate import aggregate_kl_terms

    out = {}
    print("| process (own samples: truth 0) | points | plug-in | jackknife | corrected |")
    print("|---|---|---|---|---|")
    for name, n in (("figure8", 2000), ("two_factor_smooth", 2000)):
        truth = zoo.model(name)
        terms = aggregate_kl_terms(truth, truth.sample(n, seed=7).x, seed=1)
        out[name] = terms
        print(f"| {name} | {n} | {terms['plug_in']:.4f} | {terms['jackknife']} | {terms['estimate']} |")
    return out


SECTIONS = {
    "attacks": attacks,
    "mig": mig_bias,
    "auroc": auroc_pairing,
    "libi": libi_batches,
    "libi_fit": libi_fit,
    "aggregate": aggregate_bias,
}


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
