r"""Training: ``pyrofail.fit`` with R vectorised restarts against a hand-written PyTorch loop.

The baseline is what a researcher writes by hand: the same mean-field VAE (3 x 50 LeakyReLU
encoder and decoder, fixed :math:`\sigma`, one-sample reparameterised ELBO, ``torch.optim.Adam``)
trained R times in a row with the same steps, batch size and data, each run scored on the
validation set at the end to pick the best. ``pyrofail.fit`` does the same work as one batched
model through Pyro's SVI (random initialisation, no ground-truth pre-training, one validation
at the end). Target: pyrofail's wall time at most 0.25 x the loop's.
"""

from __future__ import annotations

import math

import torch
from torch import nn

import pyrofail as pf
from benchmarks.common import Row, timed


def _mlp(sizes):
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.LeakyReLU())
    return nn.Sequential(*layers)


def hand_written_vae(x, x_val, *, latent_dim, sigma, steps, batch_size, lr, seed):
    """One plain PyTorch VAE run; returns its validation ELBO."""
    torch.manual_seed(seed)
    d = x.shape[1]
    enc, dec = _mlp((d, 50, 50, 50, 2 * latent_dim)), _mlp((latent_dim, 50, 50, 50, d))
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
        idx = torch.randint(0, n, (batch_size,))
        loss = -elbo(x[idx]).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float(elbo(x_val).mean())


def run(quick: bool = False) -> list[Row]:
    restarts, steps, batch = 10, (300 if quick else 2000), 100
    truth = pf.zoo.model("figure8")
    data = truth.sample(7000, seed=0)
    x, x_val = data.x[:5000], data.x[5000:]
    sigma = float(truth.noise_scale)

    def loop():
        return [
            hand_written_vae(
                x, x_val, latent_dim=1, sigma=sigma, steps=steps, batch_size=batch, lr=1e-3, seed=r
            )
            for r in range(restarts)
        ]

    def ours():
        return pf.fit(
            x,
            x_val=x_val,
            truth=truth,
            restarts=restarts,
            steps=steps,
            batch_size=batch,
            init="random",
            warmup_steps=0,
            eval_every=steps,
            seed=0,
        )

    # warm up allocators and kernels, for both
    hand_written_vae(x, x_val, latent_dim=1, sigma=sigma, steps=20, batch_size=batch, lr=1e-3, seed=0)
    pf.fit(
        x,
        x_val=x_val,
        truth=truth,
        restarts=restarts,
        steps=20,
        batch_size=batch,
        init="random",
        warmup_steps=0,
        eval_every=20,
    )
    _, t_loop = timed(loop)
    _, t_ours = timed(ours)
    ratio = t_ours / t_loop
    return [
        Row(
            f"fit, {restarts} restarts x {steps} steps (figure8, B={batch})",
            t_ours,
            t_loop,
            "s",
            "<= 0.25",
            ratio <= 0.25,
        ),
    ]
