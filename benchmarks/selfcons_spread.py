"""Self-consistency (the autoencoding VAE) and the spread divergence, measured on small budgets.

Part ``A`` (Cemgil et al. 2020): a Bernoulli VAE on binarised digits trained with the ELBO, with
the self-consistent objective from scratch, and the plain VAE's encoder retrained post hoc on the
model's own samples (``posthoc_self_consistency``, with the self-consistent objective at several
rho and, as the baseline, with the plain ELBO); for each, the consistency distance, the drift of
encode-decode chains, a linear probe's accuracy under the encoder attack over an eps sweep and
the test ELBO it costs. ``A-zoo``: the same post-hoc step on ``figure8``, against the ideal
encoder (the exact posterior mean by quadrature).

Part ``B`` (Zhang et al. 2020): the blog VAE on ``degenerate_line`` (Bernoulli latent, learned
mean and log-variance per feature) and a Gaussian-latent heteroscedastic VAE on
``degenerate_line_continuous``, trained with the plain ELBO (``spread`` with s = 0, the same
estimator) and with the spread ELBO: the learned variance of the empty axis over training, the
loss, where a restart diverged, and where the samples lie. ``B-digits``: unstandardised digits
with a learned variance per pixel; the always-blank pixels are the empty directions.

Run with one thread, e.g.::

    OMP_NUM_THREADS=1 python -m benchmarks.selfcons_spread --part A --steps 3000
    OMP_NUM_THREADS=1 python -m benchmarks.selfcons_spread --part B --steps 3000 --seeds 0 1 2

Every number is printed with its standard error and written to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
from scipy.stats import wasserstein_distance

import pyrofail as pf
from pyrofail import zoo
from pyrofail.analysis import metrics
from pyrofail.analysis.downstream.self_consistency import (
    chain_drift,
    consistency,
    elbo_cost,
    linear_probe,
)
from pyrofail.data import load_splits
from pyrofail.estimate import Estimate
from pyrofail.guides import BernoulliLatentGuide
from pyrofail.models import HeteroscedasticDecoder
from pyrofail.objectives.spread import SpreadELBO

EPS = (0.0, 0.05, 0.1, 0.2, 0.3)


def _pm(mean, se, digits=3) -> str:
    return f"{mean:.{digits}f} ± {se:.{digits}f}"


# ----------------------------------------------------------------------------------------
# A: self-consistency on digits


def _encoder_report(name, model, guide, parts, plain, seed, probe_steps) -> dict:
    cons = consistency(model, guide, 1000, seed=seed + 100)
    drift = chain_drift(model, guide, 500, steps=10, seed=seed + 200)
    probe = linear_probe(
        guide,
        parts.train.x,
        parts.train.y,
        parts.test.x,
        parts.test.y,
        eps=EPS,
        objective="mean",
        steps=probe_steps,
        seed=seed + 300,
    )
    nelbo = metrics.negative_elbo(model, guide, parts.test.x, seed=seed + 400)
    with torch.no_grad():
        active = int((guide.distribution(parts.test.x).mean.var(0) > 0.01).sum())  # Burda et al. 2016
    out = {
        "name": name,
        "consistency": [cons["mean"], cons["stderr"]],
        "drift_t10": [drift["latent_mean"][-1], drift["latent_stderr"][-1]],
        "drift_data_t10": [drift["data_mean"][-1], drift["data_stderr"][-1]],
        "accuracy": list(zip(probe["accuracy"], probe["stderr"])),
        "attack_shift": probe["shift"],
        "test_neg_elbo": [nelbo["mean"], nelbo["stderr"]],
        "active_units": active,
        "_cons": cons["per_point"],
        "_correct": probe["correct"],
    }
    if plain is not None:
        out["consistency_vs_plain"] = Estimate.paired(cons["per_point"], plain["_cons"]).to_dict()
        out["accuracy_vs_plain"] = [
            Estimate.paired(probe["correct"][i].double(), plain["_correct"][i].double()).to_dict()
            for i in range(len(EPS))
        ]
        cost = elbo_cost(plain["_pair"], (model, guide), parts.test.x, seed=seed + 500)
        out["elbo_cost"] = [cost["cost"], cost["cost_stderr"]]
    out["_pair"] = (model, guide)
    return out


def _tag(pairing: str) -> str:
    return "" if pairing == "independent" else f" {pairing}"


def part_a(args) -> dict:
    parts = load_splits("digits", binarize=True, seed=args.seed)
    common = dict(
        x_val=parts.val.x,
        likelihood="bernoulli",
        latent_dim=args.latent_dim,
        restarts=args.restarts,
        hidden=tuple(args.hidden),
        lr=args.lr,
        seed=args.seed,
    )
    t0 = time.time()
    fits = {"plain": pf.fit(parts.train.x, objective="elbo", steps=args.steps, **common)}
    for rho in args.rhos_scratch:
        for pairing in args.pairings:
            fits[f"self_consistent rho={rho:g}{_tag(pairing)}"] = pf.fit(
                parts.train.x,
                objective="self_consistent",
                objective_options={"rho": rho, "pairing": pairing},
                steps=args.steps,
                **common,
            )
    plain = fits["plain"]
    post_common = dict(
        model=plain.model,
        guide=plain.guide,
        procedure="posthoc_self_consistency",
        likelihood="bernoulli",
        restarts=1,
        steps=args.post_steps,
        hidden=tuple(args.hidden),
        lr=args.lr,
        seed=args.seed,
    )
    x_like = plain.model.sample(10, seed=0).x  # only its width is read
    fits["posthoc elbo"] = pf.fit(x_like, objective="elbo", **post_common)
    for rho in args.rhos:
        for pairing in args.pairings:
            fits[f"posthoc rho={rho:g}{_tag(pairing)}"] = pf.fit(
                x_like,
                objective="self_consistent",
                objective_options={"rho": rho, "pairing": pairing},
                **post_common,
            )
    train_seconds = time.time() - t0
    reports, base = [], None
    for name, fit in fits.items():
        rep = _encoder_report(name, fit.model, fit.guide, parts, base, args.seed, args.probe_steps)
        if base is None:
            base = rep
        reports.append(rep)
    rows = []
    for r in reports:
        rows.append({k: v for k, v in r.items() if not k.startswith("_")})
    return {"digits": rows, "train_seconds": train_seconds, "eps": EPS}


def part_a_zoo(args) -> dict:
    truth = zoo.model("figure8")
    data = truth.sample(3000, seed=args.seed)
    plain = pf.fit(
        data.x[:2000],
        x_val=data.x[2000:2500],
        truth=truth,
        restarts=args.restarts,
        steps=args.steps,
        hidden=tuple(args.hidden),
        seed=args.seed,
        lr=args.lr,
    )
    post = pf.fit(
        plain.model.sample(10, seed=0).x,
        model=plain.model,
        guide=plain.guide,
        objective="self_consistent",
        procedure="posthoc_self_consistency",
        restarts=1,
        steps=args.post_steps,
        hidden=tuple(args.hidden),
        seed=args.seed,
        lr=args.lr,
    )
    out = {}
    for name, fit in (("plain", plain), ("posthoc rho=0.8", post)):
        c = consistency(fit.model, fit.guide, 1000, seed=args.seed + 100, exact=True)
        out[name] = {
            "consistency": [c["mean"], c["stderr"]],
            "ideal": [c["exact"]["mean"], c["exact"]["stderr"]],
            "excess": [c["excess"]["mean"], c["excess"]["stderr"]],
            "_d": c["per_point"],
        }
    out["posthoc_vs_plain"] = Estimate.paired(out["posthoc rho=0.8"]["_d"], out["plain"]["_d"]).to_dict()
    for v in out.values():
        v.pop("_d", None)
    return {"figure8": out}


# ----------------------------------------------------------------------------------------
# B: spread divergence


def _line_fit(truth_name, prior, s, seed, args, data):
    torch.manual_seed(seed)
    model = HeteroscedasticDecoder(
        1, 2, hidden=tuple(args.hidden_line), prior=prior, init_log_variance=args.init_log_var
    )
    if prior == "bernoulli":
        guide = BernoulliLatentGuide(1, 2, hidden=tuple(args.hidden_line))
        z_grid = torch.tensor([[0.0], [1.0]])
    else:
        guide = zoo.guide("mean_field", latent_dim=1, data_dim=2, hidden=tuple(args.hidden_line))
        z_grid = torch.tensor([[-1.0], [0.0], [1.0]])
    every = max(1, args.steps // args.records)
    trace = {"step": [], "log_var_empty": [], "log_var_line": [], "loss": []}

    def record(step, state):
        if step % every and step != args.steps - 1:
            return
        m = state["model"]
        with torch.no_grad():
            lv = m.log_variance(z_grid.expand(m.restarts, *z_grid.shape))[0]  # (G, 2)
        trace["step"].append(step)
        trace["log_var_empty"].append(float(lv[:, 1].mean()))
        trace["log_var_line"].append(float(lv[:, 0].mean()))
        per_point = state["loss"] / min(args.batch_line, data["train"].shape[0])
        trace["loss"].append(per_point if math.isfinite(per_point) else None)

    fit = pf.fit(
        data["train"],
        x_val=data["val"],
        model=model,
        guide=guide,
        objective="spread",
        objective_options={"spread": s},
        noise_scale=1.0,
        restarts=1,
        steps=args.steps,
        batch_size=args.batch_line,
        lr=args.lr_line,
        seed=seed,
        callbacks=[record],
    )
    samples = fit.model.sample(5000, seed=seed + 1).x
    near = ((samples[:, 0].abs() - 1).abs() < 0.3).double()
    # how far the samples' positions on the line are from the test data's (1-D Wasserstein)
    w1 = wasserstein_distance(samples[:, 0].numpy(), data["test"][:, 0].numpy())
    off = samples[:, 1].abs()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 2)
        plain_bound = SpreadELBO(0.0).per_point(fit.model, fit.guide, data["test"], 20).mean()
        spread_bound = SpreadELBO(s).per_point(fit.model, fit.guide, data["test"], 20).mean()
    with torch.no_grad():
        lv = fit.model.log_variance(z_grid)
    return {
        "truth": truth_name,
        "spread": s,
        "seed": seed,
        "diverged_at": fit.restarts[0]["diverged_at"],
        "trace": trace,
        "final_log_var_empty": float(lv[:, 1].mean()),
        "final_log_var_line": float(lv[:, 0].mean()),
        "sample_abs_x2": [float(off.mean()), float(off.std() / math.sqrt(5000))],
        "sample_near_clusters": [float(near.mean()), float(near.std() / math.sqrt(5000))],
        "sample_w1_line": float(w1),
        "test_plain_elbo": [float(plain_bound[0]), float(plain_bound[1])],
        "test_spread_bound": [float(spread_bound[0]), float(spread_bound[1])],
    }


def part_b(args) -> dict:
    out = []
    priors = {"degenerate_line": "bernoulli", "degenerate_line_continuous": "gaussian"}
    for truth_name in args.truths:
        prior = priors[truth_name]
        d = zoo.model(truth_name).sample(2000, seed=args.seed)
        data = {"train": d.x[:1000], "val": d.x[1000:1500], "test": d.x[1500:]}
        for s in (0.0, *args.spread):
            for seed in args.seeds:
                t0 = time.time()
                rec = _line_fit(truth_name, prior, s, seed, args, data)
                rec["seconds"] = time.time() - t0
                out.append(rec)
                print(
                    f"{truth_name} s={s:g} seed={seed}: log var empty axis {rec['final_log_var_empty']:.2f}, "
                    f"line {rec['final_log_var_line']:.2f}, diverged_at {rec['diverged_at']}",
                    flush=True,
                )
    return {"line": out}


def part_b_digits(args) -> dict:
    parts = load_splits("digits", seed=args.seed)  # unstandardised: pixel values 0..16
    x = parts.train.x
    empty = (x.std(0) == 0).nonzero().flatten()
    others = (x.std(0) > 0).nonzero().flatten()
    out = []
    for s in (0.0, args.spread_digits):
        every = max(1, args.steps // args.records)
        trace = {"step": [], "log_sigma_empty": [], "log_sigma_others": [], "loss": []}

        def record(step, state, trace=trace, every=every):
            if step % every and step != args.steps - 1:
                return
            log_sigma = state["model"].log_noise.detach()[0]
            trace["step"].append(step)
            trace["log_sigma_empty"].append(float(log_sigma[empty].mean()))
            trace["log_sigma_others"].append(float(log_sigma[others].median()))
            loss = state["loss"]
            trace["loss"].append(loss / args.batch_digits if math.isfinite(loss) else None)

        fit = pf.fit(
            x,
            x_val=parts.val.x,
            latent_dim=args.latent_dim,
            learn_noise=True,
            noise_per_feature=True,
            noise_scale=1.0,
            objective="spread",
            objective_options={"spread": s},
            restarts=1,
            steps=args.steps,
            batch_size=args.batch_digits,
            hidden=tuple(args.hidden),
            lr=args.lr,
            seed=args.seed,
            callbacks=[record],
        )
        samples = fit.model.sample(2000, seed=args.seed + 1).x
        out.append(
            {
                "spread": s,
                "empty_pixels": empty.tolist(),
                "diverged_at": fit.restarts[0]["diverged_at"],
                "trace": trace,
                "final_log_sigma_empty": fit.model.log_noise.detach()[empty].tolist(),
                "sample_abs_empty": [
                    float(samples[:, empty].abs().mean()),
                    float(samples[:, empty].abs().std() / math.sqrt(samples[:, empty].numel())),
                ],
            }
        )
        print(f"digits s={s:g}: log sigma of the empty pixels {out[-1]['final_log_sigma_empty']}", flush=True)
    return {"digits_gaussian": out}


# ----------------------------------------------------------------------------------------


def _print_a(res):
    eps = res["eps"]
    head = "consistency ‖z − m(f(z))‖ | Δ vs plain | drift t=10 | test −ELBO | ELBO cost | active"
    print(f"\n| encoder | {head} |")
    print("|---|---|---|---|---|---|---|")
    for r in res["digits"]:
        dv = r.get("consistency_vs_plain")
        cost = r.get("elbo_cost")
        print(
            f"| {r['name']} | {_pm(*r['consistency'])} | {_pm(dv['mean'], dv['stderr']) if dv else '—'} "
            f"| {_pm(*r['drift_t10'])} | {_pm(*r['test_neg_elbo'], 2)} | {_pm(*cost, 2) if cost else '—'} "
            f"| {r['active_units']} |"
        )
    print("\n| encoder | " + " | ".join(f"acc ε={e:g}" for e in eps) + " |")
    print("|---|" + "---|" * len(eps))
    for r in res["digits"]:
        cells = []
        for i, (a, se) in enumerate(r["accuracy"]):
            cell = _pm(a, se)
            if "accuracy_vs_plain" in r:
                d = r["accuracy_vs_plain"][i]
                cell += f" (Δ {d['mean']:+.3f} ± {d['stderr']:.3f})"
            cells.append(cell)
        print(f"| {r['name']} | " + " | ".join(cells) + " |")


def _paired_seeds(values_a: list[float], values_b: list[float]) -> tuple[float, float]:
    """Mean and standard error of the per-seed differences a - b."""
    d = torch.tensor(values_a, dtype=torch.float64) - torch.tensor(values_b, dtype=torch.float64)
    return float(d.mean()), (float(d.std() / math.sqrt(d.numel())) if d.numel() > 1 else float("nan"))


def _seed_summary(values: list[float]) -> tuple[float, float]:
    v = torch.tensor(values, dtype=torch.float64)
    return float(v.mean()), (float(v.std() / math.sqrt(v.numel())) if v.numel() > 1 else float("nan"))


def _late_slope(trace: dict, key: str = "log_var_empty") -> float:
    """Least-squares slope of the empty axis's log variance over the second half of the
    recorded steps, per 1000 steps: a collapse keeps falling, a bounded variance levels off."""
    t = torch.tensor(trace["step"], dtype=torch.float64)
    v = torch.tensor([float("nan") if a is None else a for a in trace[key]], dtype=torch.float64)
    keep = (t >= t[-1] / 2) & v.isfinite()
    t, v = t[keep], v[keep]
    tc = t - t.mean()
    return float((tc * (v - v.mean())).sum() / (tc**2).sum() * 1000)


def _print_b(res):
    """Per truth and s: the empty axis's learned log-variance at recorded steps (mean ± standard
    error over seeds), divergences, and where the samples lie."""
    rows = res["line"]
    for truth in dict.fromkeys(r["truth"] for r in rows):
        mine = [r for r in rows if r["truth"] == truth]
        spreads = list(dict.fromkeys(r["spread"] for r in mine))
        steps = mine[0]["trace"]["step"]
        picks = sorted({0, len(steps) // 4, len(steps) // 2, len(steps) - 1})
        print(f"\n{truth}: log variance of the empty axis at step (mean ± s.e. over seeds)\n")
        print(
            "| s | "
            + " | ".join(f"step {steps[i]}" for i in picks)
            + " | slope, last half (per 1000 steps) | final line-axis log var | diverged |"
        )
        print("|---|" + "---|" * (len(picks) + 3))
        for s in spreads:
            rs = [r for r in mine if r["spread"] == s]
            cells = []
            for i in picks:
                vals = [r["trace"]["log_var_empty"][i] for r in rs if i < len(r["trace"]["log_var_empty"])]
                cells.append(_pm(*_seed_summary(vals), 2) if vals else "—")
            line = _pm(*_seed_summary([r["final_log_var_line"] for r in rs]), 2)
            div = sum(r["diverged_at"] is not None for r in rs)
            slope = _pm(*_seed_summary([_late_slope(r["trace"]) for r in rs]), 2)
            print(f"| {s:g} | " + " | ".join(cells) + f" | {slope} | {line} | {div}/{len(rs)} |")
        print(f"\n{truth}: the un-spread model's samples (mean ± s.e. over seeds)\n")
        print(
            "| s | mean abs(x2) | share within 0.3 of a cluster | W1 to the test positions "
            "| test ELBO (s=0) | test spread bound |"
        )
        print("|---|---|---|---|---|---|")
        for s in spreads:
            rs = [r for r in mine if r["spread"] == s]
            cols = [
                [r["sample_abs_x2"][0] for r in rs],
                [r["sample_near_clusters"][0] for r in rs],
                [r["sample_w1_line"] for r in rs],
                [r["test_plain_elbo"][0] for r in rs],
                [r["test_spread_bound"][0] for r in rs],
            ]
            print(f"| {s:g} | " + " | ".join(_pm(*_seed_summary(c), 3) for c in cols) + " |")
        print("\ntraining loss per point, slope over the last half (per 1000 steps; mean ± s.e. over seeds):")
        for s in spreads:
            rs = [r for r in mine if r["spread"] == s]
            print(f"- s={s:g}: {_pm(*_seed_summary([_late_slope(r['trace'], 'loss') for r in rs]), 2)}")
        base = [r for r in mine if r["spread"] == 0.0]
        for s in spreads[1:]:
            rs = [r for r in mine if r["spread"] == s]
            if [r["seed"] for r in rs] == [r["seed"] for r in base]:
                d = _paired_seeds(
                    [r["final_log_var_empty"] for r in rs], [r["final_log_var_empty"] for r in base]
                )
                print(f"\nfinal empty-axis log variance, s={s:g} minus s=0 (paired by seed): {_pm(*d, 2)}")
                d = _paired_seeds(
                    [_late_slope(r["trace"]) for r in rs], [_late_slope(r["trace"]) for r in base]
                )
                print(f"its slope over the last half, s={s:g} minus s=0 (paired by seed): {_pm(*d, 2)}")
                d = _paired_seeds(
                    [_late_slope(r["trace"], "loss") for r in rs],
                    [_late_slope(r["trace"], "loss") for r in base],
                )
                print(f"the training loss's slope over the last half, s={s:g} minus s=0: {_pm(*d, 2)}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.selfcons_spread", description=__doc__)
    p.add_argument("--part", default="A", choices=["A", "A-zoo", "B", "B-digits"])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--post-steps", type=int, default=1500)
    p.add_argument("--restarts", type=int, default=2)
    p.add_argument("--latent-dim", type=int, default=8)
    p.add_argument("--hidden", type=int, nargs="+", default=[100])
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--rhos", type=float, nargs="+", default=[0.5, 0.8, 0.95])
    p.add_argument("--rhos-scratch", type=float, nargs="+", default=[0.8])
    p.add_argument(
        "--pairings",
        nargs="+",
        default=["independent"],
        choices=["independent", "paired"],
        help="the self_consistent objective's pairing option(s) (A)",
    )
    p.add_argument("--probe-steps", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--spread", type=float, nargs="+", default=[0.1], help="the s of the spread fits (B)")
    p.add_argument(
        "--truths",
        nargs="+",
        default=["degenerate_line", "degenerate_line_continuous"],
        choices=["degenerate_line", "degenerate_line_continuous"],
        help="the processes of part B",
    )
    p.add_argument("--spread-digits", type=float, default=1.0)
    p.add_argument("--hidden-line", type=int, nargs="+", default=[20])
    p.add_argument("--lr-line", type=float, default=1e-2)
    p.add_argument("--init-log-var", type=float, default=-3.0)
    p.add_argument("--batch-line", type=int, default=100)
    p.add_argument("--batch-digits", type=int, default=100)
    p.add_argument("--records", type=int, default=15)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument(
        "--tables", default=None, metavar="JSON", help="print the tables of a saved --out and exit"
    )
    args = p.parse_args(argv)
    if args.tables:
        with open(args.tables) as f:
            saved = json.load(f)
        _print_a(saved) if "digits" in saved else _print_b(saved)
        return 0
    torch.set_num_threads(1)
    run = {"A": part_a, "A-zoo": part_a_zoo, "B": part_b, "B-digits": part_b_digits}[args.part]
    t0 = time.time()
    res = run(args)
    res["seconds"] = time.time() - t0
    res["args"] = vars(args)
    if args.part == "A":
        _print_a(res)
    elif args.part == "B":
        _print_b(res)
    else:
        print(json.dumps(res, indent=1)[:20000])
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
