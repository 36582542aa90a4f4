"""The NUTS reference (Pyro) against NumPyro's NUTS on the same decoder and the same points.

A K = 1 MLP decoder g is learned on Figure-8 data (``pf.fit``, started at the ground truth, so
that its posteriors keep Figure-8's several modes), and the K = 3 decoder applies it to each
latent coordinate, f(z) = (g(z_1), g(z_2), g(z_3)) (D = 6), at points made of three independent
Figure-8 points: the posterior is then the product of three 1-D posteriors, each exact on a grid
(:mod:`benchmarks.exact`), so both samplers are measured against the exact answer. The weights
are saved in the run folder and given to NumPyro (the MLP forward written in ``jax.numpy``).
Both samplers run the same problem: C chains per point from the same starting points (by mass:
:func:`pyrofail.analysis.reference.nuts.initial_points`), the same warm-up and draw
counts, the same target acceptance and tree depth, diagonal mass matrices, float64. NumPyro
runs its standard program: a model with a ``data`` plate and ``num_chains=C`` vectorised chains
(each chain one joint NUTS over all N points); Pyro runs the reference's single chain over the
replicated plate, twice: as the reference runs (points whose maxima search finds one mode are
importance-sampled from its Laplace approximation when its weights pass their checks,
:mod:`pyrofail.analysis.reference.unimodal`), and with every point by NUTS (``unimodal="nuts"``),
the sampler against the sampler. NumPyro's draws then go through the same re-weighting and
diagnostics (:func:`pyrofail.analysis.reference.reweight.from_draws`), timed and counted for it too.

Measured, per sampler: wall time (with NumPyro's compilation), the effective sample size of
the worst data point (the reference's per-point ``ess``), its ESS per second, and mode-mass
accuracy: the share of points whose mode masses are within 0.05 of the exact ones (and the
share whose log p(x) is within 0.05 nats). The grid's time for
N = 2,000 points at K = 1 and K = 2 (learned decoders) is printed beside it.

    pip install -c constraints.txt -e ".[test,bench]"
    python benchmarks/nuts_vs_numpyro.py                 # N = 1000 points (about an hour on 2 cores)
    python benchmarks/nuts_vs_numpyro.py --points 100 --draws 200 --warmup 200   # a quick look

The target (performance issue): the Pyro reference's worst-point ESS per second is at least 0.5
times NumPyro's, at no worse mode-mass accuracy.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

TARGET = 0.5
PYRO = "Pyro (pyrofail reference)"
PYRO_NUTS = "Pyro, every point by NUTS (unimodal='nuts')"


def _fit(latent_dim: int, steps: int, seed: int):
    """The ground truth and a model of latent dimension ``latent_dim`` fitted to its data."""
    import pyrofail as pf

    truth = pf.zoo.model("figure8")
    data = truth.sample(3000, seed=seed)
    fit = pf.fit(
        data.x[:2500], x_val=data.x[2500:], truth=truth, latent_dim=latent_dim, restarts=1,
        init="ground_truth", steps=steps, seed=seed, progress=False,
    )  # fmt: skip
    return truth, fit.model


def _numpyro(model, x, z0, *, warmup: int, draws: int, accept: float, depth: int, seed: int):
    """NumPyro's NUTS on the same decoder weights: ``(draws (C, S, N, K), diverging, seconds)``."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as ndist
    from numpyro.infer import MCMC, NUTS

    dec = model.decoder.parts[0]  # the same 1-D MLP on every coordinate
    if dec.activation != "leaky_relu":
        raise ValueError(f"the jax MLP implements leaky_relu, not {dec.activation}")
    weights = [jnp.asarray(w.detach().double().numpy()) for w in dec.weights]
    biases = [jnp.asarray(b.detach().double().numpy()) for b in dec.biases]
    sigma = float(model.noise_scale)
    k = model.latent_dim
    xj = jnp.asarray(x.double().numpy())
    n = x.shape[0]

    def mlp(h):  # pyrofail.nn.MLP.forward: h W + b, leaky ReLU (slope 0.01) between layers
        for i, (w, b) in enumerate(zip(weights, biases)):
            h = h @ w + b
            if i < len(weights) - 1:
                h = jnp.where(h >= 0, h, 0.01 * h)
        return h

    def decoder(z):  # benchmarks.exact.Factorised
        return jnp.concatenate([mlp(z[..., j : j + 1]) for j in range(k)], -1)

    def vae_model():
        with numpyro.plate("data", n):
            z = numpyro.sample("z", ndist.Normal(0.0, 1.0).expand([k]).to_event(1))
            numpyro.sample("x", ndist.Normal(decoder(z), sigma).to_event(1), obs=xj)

    kernel = NUTS(vae_model, target_accept_prob=accept, max_tree_depth=depth, dense_mass=False)
    c = z0.shape[0]
    mcmc = MCMC(kernel, num_warmup=warmup, num_samples=draws, num_chains=c, chain_method="vectorized",
                progress_bar=False)  # fmt: skip
    start = time.perf_counter()
    mcmc.run(jax.random.PRNGKey(seed), init_params={"z": jnp.asarray(z0.double().numpy())},
             extra_fields=("diverging", "num_steps"))  # fmt: skip
    z = mcmc.get_samples(group_by_chain=True)["z"]
    z.block_until_ready()
    seconds = time.perf_counter() - start
    extra = mcmc.get_extra_fields(group_by_chain=True)
    diverging = torch.from_numpy(np.array(extra["diverging"]))  # (C, S): a chain's joint trajectory
    steps = int(np.asarray(extra["num_steps"]).sum())
    return torch.from_numpy(np.array(z)), diverging, seconds, steps


def _mode_accuracy(ref, gold, tol=0.05):
    """Share of points with mode masses within ``tol`` of the exact ones, and the worst error."""
    from pyrofail.analysis.reference import modes

    err, _ = modes.reference_mass_error(ref, gold)
    return float((err <= tol).double().mean()), float(err.max())


def _log_px_accuracy(ref, gold, tol=0.05):
    from pyrofail.analysis.reference import log_px

    err = (log_px(ref)[0] - log_px(gold)[0]).abs()
    return float((err <= tol).double().mean())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--points", type=int, default=1000)
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--draws", type=int, default=500, help="draws per chain")
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--fit-steps", type=int, default=2000)
    p.add_argument("--grid-points", type=int, default=2000)
    p.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "1")))
    p.add_argument("--out", default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from benchmarks.exact import exact_reference, factorised_model
    from pyrofail.analysis.reference import nuts, reference_posterior, reweight, save
    from pyrofail.runs import atomic_torch_save, atomic_write_json, versions

    torch.set_num_threads(args.threads)
    # the same number of threads for XLA as for PyTorch
    multi = "true" if args.threads > 1 else "false"
    os.environ.setdefault(
        "XLA_FLAGS", f"--xla_cpu_multi_thread_eigen={multi} intra_op_parallelism_threads={args.threads}"
    )
    out = Path(args.out or f"runs/bench-nuts-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    truth, one = _fit(1, args.fit_steps, args.seed)
    g = one.decoder.double()
    model = factorised_model([g, g, g], float(one.noise_scale))
    atomic_torch_save(model.state_dict(), out / "decoder_k3.pt")
    x = torch.cat([truth.sample(args.points, seed=args.seed + 1 + j).x.double() for j in range(3)], -1)
    torch.save(x, out / "points.pt")
    print(f"fitted the decoder in {time.perf_counter() - t0:.0f} s; {args.points} points")
    gold = exact_reference([g, g, g], float(one.noise_scale), x, seed=args.seed + 7)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        work = model.double().requires_grad_(False)
        z0 = nuts.initial_points(work, x, args.chains, seed=args.seed)  # by mass: C >= args.chains
    chains = z0.shape[0]
    common = {"warmup": args.warmup, "draws": args.draws, "accept": 0.8, "depth": 10, "seed": args.seed}

    rows = {}
    # the reference as it runs (points with one mode by importance sampling), and every point by NUTS
    for name, unimodal, file in (
        (PYRO, "importance", "reference_pyro.nc"),
        (PYRO_NUTS, "nuts", "reference_pyro_all_nuts.nc"),
    ):
        start = time.perf_counter()
        ref = reference_posterior(
            model, x, "nuts", num_draws=chains * args.draws, num_chains=chains,
            num_warmup=args.warmup, init=z0, seed=args.seed, unimodal=unimodal,
        )  # fmt: skip
        total = time.perf_counter() - start
        stats = json.loads(ref.posterior.attrs["sampler"])
        rows[name] = (ref, total, stats["sampling_seconds"], stats["num_grads"])
        save(ref, out / file)
        print(f"{name}: {total:.0f} s, {stats.get('importance_points', 0)} points by importance sampling")

    z, div, seconds, steps = _numpyro(model, x, z0, **common)
    start = time.perf_counter()
    diverging = div[:, :, None].expand(-1, -1, x.shape[0])
    ref_np = reweight.from_draws(model, x, z, diverging=diverging, seed=args.seed, attrs={"method": "nuts"})
    post = time.perf_counter() - start
    rows["NumPyro (vectorized chains)"] = (ref_np, seconds + post, seconds, steps)
    save(ref_np, out / "reference_numpyro.nc")
    print(f"NumPyro: {seconds + post:.0f} s")

    grid_times = {}
    for k in (1, 2):
        _, decoder_k = _fit(k, args.fit_steps, args.seed)
        xg = truth.sample(args.grid_points, seed=args.seed + 2).x.double()
        start = time.perf_counter()
        reference_posterior(decoder_k, xg, "grid")
        grid_times[k] = time.perf_counter() - start

    table = [
        "| sampler | wall s (sampling s) | gradients | worst-point ESS | worst ESS/s | median ESS/s "
        "| mode masses within 0.05 of exact | log p(x) within 0.05 of exact | R-hat <= 1.01 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    results = {}
    for name, (r, wall, sampling, grads) in rows.items():
        ess = r.diagnostics.ess.values
        frac, worst = _mode_accuracy(r, gold)
        m = results[name] = {
            "wall": wall,
            "sampling": sampling,
            "grads": grads,
            "worst_ess": float(ess.min()),
            "worst_ess_per_s": float(ess.min()) / wall,
            "median_ess_per_s": float(np.median(ess)) / wall,
            "mode_frac": frac,
            "mode_worst": worst,
            "log_px_frac": _log_px_accuracy(r, gold),
            "rhat_frac": float((r.diagnostics.rhat_within_modes.values <= 1.01).mean()),
        }
        table.append(
            f"| {name} | {wall:.0f} ({sampling:.0f}) | {grads} | {m['worst_ess']:.0f} | "
            f"{m['worst_ess_per_s']:.2f} | {m['median_ess_per_s']:.2f} | "
            f"{100 * frac:.1f}% (worst {worst:.3f}) | {100 * m['log_px_frac']:.1f}% "
            f"| {100 * m['rhat_frac']:.1f}% |"
        )
    pyro, numpyro_ = results[PYRO], results["NumPyro (vectorized chains)"]
    ratio = pyro["worst_ess_per_s"] / numpyro_["worst_ess_per_s"]
    sampler_ratio = results[PYRO_NUTS]["worst_ess_per_s"] / numpyro_["worst_ess_per_s"]
    ok = ratio >= TARGET and pyro["mode_frac"] >= numpyro_["mode_frac"]
    accuracy = "no worse" if pyro["mode_frac"] >= numpyro_["mode_frac"] else "worse"
    table.append(
        f"| **ratio Pyro / NumPyro, worst-point ESS/s** | | | | **{ratio:.2f}** (target >= {TARGET}) | "
        f"{pyro['median_ess_per_s'] / numpyro_['median_ess_per_s']:.2f} | {accuracy} | "
        f" | target {'met' if ok else 'NOT met'} |"
    )
    table.append(
        f"| ratio every point by NUTS / NumPyro, worst-point ESS/s | | | | {sampler_ratio:.2f} | "
        f"{results[PYRO_NUTS]['median_ess_per_s'] / numpyro_['median_ess_per_s']:.2f} | | | |"
    )
    for k, secs in grid_times.items():
        table.append(
            f"| grid, K = {k}, N = {args.grid_points} | {secs:.1f} | | exact | | | exact | exact | |"
        )
    text = "\n".join(table)
    print(text)
    atomic_write_json(out / "results.json", {"args": vars(args), "results": results, "ratio": ratio,
                                             "sampler_ratio": sampler_ratio,
                                             "grid_seconds": grid_times, "versions": versions(),
                                             "threads": torch.get_num_threads()})  # fmt: skip
    (out / "table.md").write_text(text + "\n")
    return 0 if math.isfinite(ratio) else 1


def _memory_at(points: int, seed: int = 0) -> float:
    """Peak RSS (MiB) of a fresh process computing the NUTS reference of a K = 3 learned decoder
    at ``points`` points (short chains, to keep it to minutes)."""
    import subprocess
    import sys

    from benchmarks.common import peak_rss_mib

    code = (
        "import torch, pyrofail as pf\n"
        "from pyrofail.analysis import reference_posterior\n"
        f"truth = pf.zoo.model('figure8'); d = truth.sample(1500, seed={seed})\n"
        "fit = pf.fit(d.x[:1000], x_val=d.x[1000:], truth=truth, latent_dim=3, restarts=1,\n"
        "             init='ground_truth', steps=300, progress=False)\n"
        f"x = truth.sample({points}, seed={seed + 1}).x.double()\n"
        "reference_posterior(fit.model.double(), x, 'nuts', num_draws=200, num_warmup=50)\n"
    )
    before = peak_rss_mib(children=True)
    subprocess.run([sys.executable, "-c", code], check=True)
    return max(before, peak_rss_mib(children=True))


def run(quick: bool = False, **_) -> list:
    """Rows for ``python -m benchmarks``: worst-point ESS/s against NumPyro (at 200 points, 300
    warm-up and 300 draws per chain: the full N = 1,000 takes hours on two cores; ``--quick``:
    50 points), and the peak memory of the reference at N = 1,000."""
    import importlib.util
    import tempfile

    from benchmarks.common import Row

    rows = []
    if importlib.util.find_spec("numpyro") is None:
        rows.append(Row("NUTS reference vs NumPyro: needs the bench extra", 0.0, 0.0, "", ">= 0.5", None))
    else:
        size = ["--points", "50", "--warmup", "100", "--draws", "100", "--fit-steps", "300"] if quick else [
            "--points", "200", "--warmup", "300", "--draws", "300",
        ]  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            main([*size, "--grid-points", "200" if quick else "2000", "--out", tmp])
            res = json.loads((Path(tmp) / "results.json").read_text())
        pyro, jax_ = (
            res["results"][PYRO],
            res["results"]["NumPyro (vectorized chains)"],
        )
        points = res["args"]["points"]
        note = (
            f"median ESS/s ratio {pyro['median_ess_per_s'] / jax_['median_ess_per_s']:.2f}; mode masses "
            f"within 0.05 of exact {100 * pyro['mode_frac']:.1f}% vs {100 * jax_['mode_frac']:.1f}%; "
            + "; ".join(
                f"grid K={k}, N={res['args']['grid_points']}: {t:.1f} s"
                for k, t in res["grid_seconds"].items()
            )
        )
        accurate = pyro["mode_frac"] >= jax_["mode_frac"]
        rows.append(
            Row(
                f"NUTS reference worst-point ESS/s, K=3, N={points} (NumPyro = baseline)",
                pyro["worst_ess_per_s"],
                jax_["worst_ess_per_s"],
                "ESS/s",
                ">= 0.5, no worse mode masses",
                pyro["worst_ess_per_s"] >= TARGET * jax_["worst_ess_per_s"] and accurate,
                note,
            )
        )
    points = 200 if quick else 1000
    rows.append(
        Row(f"NUTS reference peak memory, K=3, N={points}", _memory_at(points), 0.0, "MiB", "reported", None)
    )
    return rows


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: benchmarks importable
    raise SystemExit(main())
