r"""Training: ``pyrofail.fit`` with R vectorised restarts against a hand-written PyTorch loop.

The baseline is what a researcher writes by hand: the same mean-field VAE (3 x 50 LeakyReLU
encoder and decoder, fixed :math:`\sigma`, one-sample reparameterised ELBO, ``torch.optim.Adam``)
trained R times in a row with the same steps, batch size and data, each run scored on the
validation set at the end to pick the best. ``pyrofail.fit`` does the same work as one batched
model (random initialisation, no ground-truth pre-training, one validation at the end), with
its direct training step (the default, :mod:`pyrofail.training.compiled`) and with Pyro's SVI
step (``compile=False``). Target: the direct fit's time at most 0.15 x the loop's.

The arms run in the same process, alternated, ``rounds`` times, so that a shared machine's load
falls on all of them alike; each row gives the ratio of the summed times and, in its note, the
range of the per-round ratios (how noisy they are) for wall and process CPU time.
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn

import pyrofail as pf
from benchmarks.common import Row

TARGET = 0.15


def _mlp(sizes):
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.LeakyReLU())
    return nn.Sequential(*layers)


def hand_written_vae(x, x_val, *, latent_dim, sigma, steps, batch_size, lr, seed):
    """One plain PyTorch VAE run (on ``x``'s device); returns its validation ELBO."""
    torch.manual_seed(seed)
    d = x.shape[1]
    enc = _mlp((d, 50, 50, 50, 2 * latent_dim)).to(x.device)
    dec = _mlp((latent_dim, 50, 50, 50, d)).to(x.device)
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=lr)
    log_norm = d * math.log(sigma) + 0.5 * d * math.log(2 * math.pi)

    def elbo(xb):
        loc, raw = enc(xb).chunk(2, -1)
        scale = nn.functional.softplus(raw) + 1e-4
        z = loc + scale * torch.randn_like(loc)
        rec = -0.5 * ((xb - dec(z)) / sigma).pow(2).sum(-1) - log_norm
        kl = 0.5 * (loc.pow(2) + scale.pow(2) - 1).sum(-1) - scale.log().sum(-1)
        return rec - kl

    n = x.shape[0]
    for _ in range(steps):
        idx = torch.randint(0, n, (batch_size,), device=x.device)
        loss = -elbo(x[idx]).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float(elbo(x_val).mean())


def _timed(fn, device: str) -> tuple[float, float]:
    """``(wall, process CPU)`` seconds of ``fn()``, the device synchronised at both ends."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    sync()
    return time.perf_counter() - wall, time.process_time() - cpu


def _spread(ours: list, loop: list, i: int) -> str:
    ratios = [a[i] / b[i] for a, b in zip(ours, loop)]
    return f"{min(ratios):.3f}-{max(ratios):.3f}"


def run(quick: bool = False, device: str = "cpu", rounds: int | None = None) -> list[Row]:
    restarts, steps, batch = 10, (300 if quick else 2000), 100
    rounds = rounds or (2 if quick else 3)
    truth = pf.zoo.model("figure8")
    data = truth.sample(7000, seed=0)
    x, x_val = data.x[:5000].to(device), data.x[5000:].to(device)
    sigma = float(truth.noise_scale)

    def loop(n=steps):
        return [
            hand_written_vae(x, x_val, latent_dim=1, sigma=sigma, steps=n, batch_size=batch, lr=1e-3, seed=r)
            for r in range(restarts)
        ]

    def ours(compile=None, n=steps):
        return pf.fit(
            x,
            x_val=x_val,
            truth=truth,
            restarts=restarts,
            steps=n,
            batch_size=batch,
            init="random",
            warmup_steps=0,
            eval_every=n,
            seed=0,
            device=device,
            compile=compile,
        )

    arms = {"loop": loop, "direct": ours, "eager": lambda: ours(False)}
    loop(20), ours(n=20), ours(False, n=20)  # warm up allocators and kernels, for every arm
    times = {name: [] for name in arms}
    for _ in range(rounds):
        for name, fn in arms.items():
            times[name].append(_timed(fn, device))
    total = {name: [sum(t[i] for t in ts) for i in (0, 1)] for name, ts in times.items()}
    where = f"{device}, figure8, B={batch}, {rounds} rounds"
    rows = []
    for name, label in (("direct", "fit (direct step)"), ("eager", "fit (Pyro SVI step)")):
        ratio = total[name][0] / total["loop"][0]
        cpu = total[name][1] / total["loop"][1]
        rows.append(
            Row(
                f"{label}, {restarts} restarts x {steps} steps vs the loop run {restarts} times ({where})",
                total[name][0],
                total["loop"][0],
                "s",
                f"<= {TARGET}" if name == "direct" else "—",
                ratio <= TARGET if name == "direct" else None,
                f"(wall; per round {_spread(times[name], times['loop'], 0)}; CPU time ratio {cpu:.3f}, "
                f"per round {_spread(times[name], times['loop'], 1)})",
            )
        )
    return rows
