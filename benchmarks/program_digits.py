r"""The failure check on Pyro's own VAE example, trained on binarised 8×8 digits.

The model and guide are those of Pyro's ``examples/vae/vae.py`` as that example writes them
(``pyro.module``, ``pyro.plate("data", x.shape[0])``, a ``"latent"`` site with
``.to_event(1)``, a Bernoulli ``"obs"`` site; an encoder with a softplus hidden layer giving a
location and ``exp`` scale), with 64 pixels instead of 784, a 2-dimensional latent space (so
that the reference posterior is exact quadrature) and a small hidden layer. The data are
scikit-learn's 1,797 handwritten digits (``sklearn.datasets.load_digits``, no download),
pixels above 8 (of 16) set to 1. Training is the example's: ``pyro.infer.SVI`` with
``Trace_ELBO`` and ``pyro.optim.Adam``, mini-batches of 128. Then
:func:`pyrofail.program_check.check` measures the trained pair on held-out digits.

Run::

    OMP_NUM_THREADS=1 python -m benchmarks.program_digits            # a realistic budget
    OMP_NUM_THREADS=1 python -m benchmarks.program_digits --quick    # seconds: checks the harness
    OMP_NUM_THREADS=1 python -m benchmarks.program_digits --speed    # the adapter against the zoo's class
"""

from __future__ import annotations

import argparse
import json
import time

import pyro
import pyro.distributions as dist
import torch
import torch.nn as nn
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

PIXELS = 64


class Encoder(nn.Module):
    """Pyro's example encoder: ``x -> (z_loc, z_scale)``."""

    def __init__(self, z_dim, hidden_dim):
        super().__init__()
        self.fc1 = nn.Linear(PIXELS, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, z_dim)
        self.fc22 = nn.Linear(hidden_dim, z_dim)
        self.softplus = nn.Softplus()

    def forward(self, x):
        x = x.reshape(-1, PIXELS)
        hidden = self.softplus(self.fc1(x))
        z_loc = self.fc21(hidden)
        z_scale = torch.exp(self.fc22(hidden))
        return z_loc, z_scale


class Decoder(nn.Module):
    """Pyro's example decoder: ``z -> `` the pixels' Bernoulli probabilities."""

    def __init__(self, z_dim, hidden_dim):
        super().__init__()
        self.fc1 = nn.Linear(z_dim, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, PIXELS)
        self.softplus = nn.Softplus()
        self.sigmoid = nn.Sigmoid()

    def forward(self, z):
        hidden = self.softplus(self.fc1(z))
        loc_img = self.sigmoid(self.fc21(hidden))
        return loc_img


class VAE(nn.Module):
    """Pyro's example VAE: ``model`` and ``guide`` written as ``examples/vae/vae.py`` writes them."""

    def __init__(self, z_dim=2, hidden_dim=64):
        super().__init__()
        self.encoder = Encoder(z_dim, hidden_dim)
        self.decoder = Decoder(z_dim, hidden_dim)
        self.z_dim = z_dim

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = torch.zeros(x.shape[0], self.z_dim, dtype=x.dtype, device=x.device)
            z_scale = torch.ones(x.shape[0], self.z_dim, dtype=x.dtype, device=x.device)
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            loc_img = self.decoder.forward(z)
            pyro.sample(
                "obs",
                dist.Bernoulli(loc_img, validate_args=False).to_event(1),
                obs=x.reshape(-1, PIXELS),
            )
            return loc_img

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder.forward(x)
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))


def load_digits_binary(test: int = 297, seed: int = 0):
    """scikit-learn's 8×8 digits, pixels above 8 set to 1: ``(x_train, x_test)`` float32
    ``(N, 64)``, split by a seeded permutation."""
    from sklearn.datasets import load_digits

    x = torch.as_tensor(load_digits().data > 8, dtype=torch.float32)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    return x[perm[test:]], x[perm[:test]]


def train(vae: VAE, x: torch.Tensor, steps: int, *, batch_size: int = 128, lr: float = 1e-3, seed: int = 0):
    """The example's training: SVI with Trace_ELBO and Adam on shuffled mini-batches; returns
    the mean loss per point over the last 10% of the steps."""
    pyro.set_rng_seed(seed)
    svi = SVI(vae.model, vae.guide, Adam({"lr": lr}), loss=Trace_ELBO())
    losses = []
    n = x.shape[0]
    perm = torch.randperm(n)
    pos = 0
    for _ in range(steps):
        if pos + batch_size > n:
            perm, pos = torch.randperm(n), 0
        losses.append(svi.step(x[perm[pos : pos + batch_size]]) / batch_size)
        pos += batch_size
    tail = losses[-max(1, steps // 10) :]
    return sum(tail) / len(tail)


def run(steps: int, hidden: int, points: int, seed: int) -> dict:
    """Train the example VAE on the digits and check it; the numbers and the seconds."""
    from pyrofail.program_check import check

    torch.set_num_threads(1)
    pyro.clear_param_store()
    torch.manual_seed(seed)
    x_train, x_test = load_digits_binary(seed=seed)
    vae = VAE(z_dim=2, hidden_dim=hidden)
    start, cpu = time.perf_counter(), time.process_time()
    loss = train(vae, x_train, steps, seed=seed)
    train_s, train_cpu = time.perf_counter() - start, time.process_time() - cpu
    cpu = time.process_time()
    result = check(vae.model, vae.guide, x_train, x_test=x_test, points=points, seed=seed)
    return {
        "train_loss": loss,
        "train_seconds": train_s,
        "train_cpu_seconds": train_cpu,
        "check_cpu_seconds": time.process_time() - cpu,
        "steps": steps,
        "hidden": hidden,
        "result": result,
    }


def _cpu(fn, rounds: int):
    """Summed process CPU seconds of ``rounds`` calls of each of ``fn``'s arms, alternated."""
    total = dict.fromkeys(fn, 0.0)
    for _ in range(rounds):
        for name, f in fn.items():
            start = time.process_time()
            f()
            total[name] += time.process_time() - start
    return total


def speed(rounds: int = 5, seed: int = 0) -> list:
    """CPU time of the adapted example against the zoo's class of the same model
    (:class:`~pyrofail.models.latent_bernoulli.LatentBernoulli` with the decoder's logits):
    ``log_joint`` on guide draws ``(S, N, K)``, on grid nodes ``(G, 1, K)`` against
    ``(1, n, D)``, and the guide's draws and density against the encoder's Normal written by
    hand; the adapter vectorised (an extra plate over draws), flat (draws as data points), and
    vectorised on the same model written with the decoder's logits (as the zoo's class is)."""
    from pyrofail.models.latent_bernoulli import LatentBernoulli
    from pyrofail.programs import adapt

    torch.set_num_threads(1)
    pyro.clear_param_store()
    torch.manual_seed(seed)
    x_train, x_test = load_digits_binary(seed=seed)
    vae = VAE(z_dim=2, hidden_dim=64)
    vec, _ = adapt(vae.model, vae.guide, x_train, vectorize=True)
    flat, _ = adapt(vae.model, vae.guide, x_train, vectorize=False)
    _, guide = adapt(vae.model, vae.guide, x_train)
    d = vae.decoder
    zoo = LatentBernoulli(nn.Sequential(d.fc1, d.softplus, d.fc21), latent_dim=2, data_dim=PIXELS)
    logits_net = nn.Sequential(d.fc1, d.softplus, d.fc21)

    def logits_model(x):  # the example's model with the decoder's logits: no probabilities to clamp
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("latent", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("obs", dist.Bernoulli(logits=logits_net(z)).to_event(1), obs=x)

    vec_logits, _ = adapt(logits_model, vae.guide, x_train, vectorize=True)
    gen = torch.Generator().manual_seed(seed)
    cases = {
        "log_joint, draws (100, 200, 2)": (torch.randn(100, 200, 2, generator=gen), x_test[:200]),
        "log_joint, nodes (100000, 1, 2) x (1, 11, 64)": (
            torch.randn(100_000, 1, 2, generator=gen),
            x_test[None, :11],
        ),
    }
    rows = []
    with torch.no_grad():
        for label, (z, x) in cases.items():
            arms = {m: (lambda m=m, z=z, x=x: m.log_joint(z, x)) for m in (zoo, vec, flat, vec_logits)}
            t = _cpu(arms, rounds)
            diff = float((vec.log_joint(z, x) - zoo.log_joint(z, x)).abs().max())
            rows.append((label, t[zoo], t[vec] / t[zoo], t[flat] / t[zoo], diff, t[vec_logits] / t[zoo]))
        xs = x_test[:200]

        def by_hand():
            q = dist.Normal(*vae.encoder(xs)).to_event(1)
            return q.log_prob(q.sample((1000,)))

        def adapted():
            q = guide.distribution(xs)
            return q.log_prob(q.sample((1000,)))

        t = _cpu({"hand": by_hand, "adapted": adapted}, rounds)
        label = "guide: 1000 draws and their density, 200 points"
        rows.append((label, t["hand"], t["adapted"] / t["hand"], None, None, None))
    return rows


def main(argv=None) -> int:
    doc = __doc__.split("\n")[0]
    p = argparse.ArgumentParser(prog="python -m benchmarks.program_digits", description=doc)
    p.add_argument("--steps", type=int, default=6000, help="SVI steps (mini-batches of 128)")
    p.add_argument("--hidden", type=int, default=64, help="hidden units of encoder and decoder")
    p.add_argument("--points", type=int, default=200, help="held-out digits checked")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="300 steps, 20 points")
    p.add_argument("--speed", action="store_true", help="only time the adapter against the zoo's class")
    p.add_argument("--json", metavar="FILE", help="also write the check's record here")
    args = p.parse_args(argv)
    if args.speed:
        print("CPU seconds of the zoo's class (5 rounds summed), and the adapter's time as a ratio to it")
        for label, base, vec, flat, diff, logits in speed(seed=args.seed):
            extra = "" if flat is None else f", flat {flat:.2f}x, logits {logits:.2f}x; difference {diff:.1e}"
            print(f"  {label}: {base:.3f} s; adapter {vec:.2f}x{extra}")
        return 0
    if args.quick:
        args.steps, args.points = 300, 20
    out = run(args.steps, args.hidden, args.points, args.seed)
    r = out["result"]
    print(
        f"Pyro example VAE (K = 2, hidden {out['hidden']}) on binarised digits: {out['steps']} SVI steps in "
        f"{out['train_seconds']:.1f} s ({out['train_cpu_seconds']:.1f} s CPU), final loss "
        f"{out['train_loss']:.2f} nats per digit; seed {args.seed}"
    )
    print(f"checked {r.n_points} held-out digits ({r.usable} pass the reference gate): {r.reference}")
    for key in ("neg_elbo", "neg_log_px", "pmo_gap", "kl_star", "amortization_gap", "share_hard"):
        print(f"  {key:17s} {getattr(r, key)}")
    print(f"  hard share needed {r.hard_share_needed:.3f}; hard: {r.hard}; gap large: {r.gap_large}")
    print(f"  richer family helps: {r.richer_family}; better encoder helps: {r.amortization}")
    print(f"  verdict: {r.verdict}; guide: {r.guide_family}")
    print(f"  check: {out['check_cpu_seconds']:.1f} s CPU; wall seconds by stage {r.seconds}")
    if args.json:
        record = {k: v for k, v in out.items() if k != "result"}
        record["check"] = {k: v for k, v in r.to_dict().items() if k != "per_point"}
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
