"""M2 on ``semicircle``: does the mean-field ELBO collapse the two class curves?

A small, self-contained training loop (``pf.fit`` does not take labels yet): ``R`` vectorised
restarts of the M2 model and guide, half with the decoder regressed onto the true class curves
first (Yacoby et al.'s protocol), selected by the validation objective; then the metrics of
``pyrofail.analysis.semisupervised`` on test points. Run with one thread, e.g.::

    OMP_NUM_THREADS=1 python -m benchmarks.m2_semicircle --steps 3000 --restarts 4
"""

from __future__ import annotations

import argparse
import json
import math
import time

import pyro
import torch
from pyro import poutine
from pyro.infer import SVI

from pyrofail import zoo
from pyrofail.analysis import semisupervised
from pyrofail.guides.m2 import M2Guide
from pyrofail.labels import hide_labels
from pyrofail.models.m2 import m2_model
from pyrofail.nn import take_restart
from pyrofail.objectives.m2 import M2ELBO, M2IWAE
from pyrofail.optim import FusedAdam
from pyrofail.training.loop import lr_factor

CONFIGS = {
    "mean_field+elbo": ("mean_field", "elbo", {}),
    "mean_field+iwae": ("mean_field", "iwae", {}),
    "flow+elbo": ("flow", "elbo", {"base": "gaussian"}),
    "mixture+elbo": ("mixture", "elbo", {}),
    # q(z | x, y) = q(z | x): an encoder that does not read the label
    "mean_field_x+elbo": ("mean_field", "elbo", {"label_in_encoder": False}),
    "mean_field_x+iwae": ("mean_field", "iwae", {"label_in_encoder": False}),
}


def pretrain_decoder(model, truth, mask, steps=1000, lr=3e-3):
    """Regress the masked restarts' decoders onto the true class curves f(z, y)."""
    opt = torch.optim.Adam(model.decoder.parameters(), lr=lr)
    weight = mask.to(torch.get_default_dtype())
    for _ in range(steps):
        z = torch.randn(model.restarts, 512, 1)
        y = torch.randint(0, 2, (model.restarts, 512))
        with torch.no_grad():
            target = truth.curve(z, y)
        err = (model.curve(z, y) - target).pow(2).sum(-1).mean(-1)
        opt.zero_grad()
        (err * weight).sum().backward()
        opt.step()


def train(config, data, y_train, *, restarts, gt_restarts, steps, warmup, batch_size, lr, seed, particles):
    family, objective, options = CONFIGS[config]
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    truth = zoo.model("semicircle")
    model = m2_model(1, 2, noise_scale=0.05, restarts=restarts)
    guide = M2Guide(1, 2, family=family, restarts=restarts, **options)
    loss = M2ELBO() if objective == "elbo" else M2IWAE(num_particles=particles)
    gt = torch.zeros(restarts, dtype=torch.bool)
    gt[:gt_restarts] = True
    if gt_restarts:
        pretrain_decoder(model, truth, gt)
    x = data["train"].x
    n = x.shape[0]
    gen = torch.Generator().manual_seed(seed + 1)
    # encoder warm-up with the decoders fixed, then everything
    for phase, count in (("warmup", warmup), ("joint", steps)):
        model.requires_grad_(phase == "joint")
        model.train(phase == "joint")  # tells pyro.module the frozen parameters are meant to be
        model_fn = model.model if phase == "joint" else poutine.block(model.model, hide_types=["param"])
        optim = FusedAdam(lr)
        svi = SVI(model_fn, guide, optim, loss)
        for step in range(count):
            idx = torch.randint(0, n, (batch_size,), generator=gen)
            if phase == "joint":
                optim.set_lr(lr * lr_factor(step, count))
            svi.step(x[idx], y_train[idx])
    with torch.no_grad():
        torch.manual_seed(seed + 7)
        val = loss.per_point(model, guide, data["val"].x, 16).value.mean(-1)  # (R,): bound of p(x)
        torch.manual_seed(seed + 7)
        # the same points with their labels: a bound of p(x, y), which sees the classes
        val_labelled = loss.per_point(model, guide, data["val"].x, 16, y=data["val"].y).value.mean(-1)
    ok = torch.isfinite(val)
    best = int(torch.where(ok, val, torch.tensor(-math.inf)).argmax())
    return model, guide, val, val_labelled, best


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--n-val", type=int, default=500)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--labelled", type=float, default=0.1)
    p.add_argument("--restarts", type=int, default=4)
    p.add_argument(
        "--gt-restarts", type=int, default=None, help="restarts started at the truth (default: half)"
    )
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--particles", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    truth = zoo.model("semicircle")
    total = args.n_train + args.n_val + args.n_test
    full = truth.sample(total, seed=args.seed)
    data = {
        "train": full[: args.n_train],
        "val": full[args.n_train : args.n_train + args.n_val],
        "test": full[args.n_train + args.n_val :],
    }
    y_train = hide_labels(data["train"].y, args.labelled, seed=args.seed)
    gt_restarts = args.restarts // 2 if args.gt_restarts is None else args.gt_restarts
    results = {}
    for config in args.configs.split(","):
        start = time.perf_counter()
        model, guide, val, val_labelled, best = train(
            config,
            data,
            y_train,
            restarts=args.restarts,
            gt_restarts=gt_restarts,
            steps=args.steps,
            warmup=args.warmup,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            particles=args.particles,
        )
        seconds = time.perf_counter() - start
        test = data["test"]
        per_restart = []
        for r in range(args.restarts):
            m = take_restart(model, r)
            cf = semisupervised.counterfactual_error(m, None, test.x, test.y, truth, seed=args.seed)
            kl = semisupervised.mleo(m, truth, test.x)
            per_restart.append(
                {
                    "init": "ground_truth" if r < gt_restarts else "random",
                    "validation": float(val[r]),
                    "validation_labelled": float(val_labelled[r]),
                    "separation_ratio": semisupervised.collapse(m, truth)["ratio"],
                    "counterfactual_error": cf["mean"],
                    "counterfactual_error_stderr": cf["stderr"],
                    "mleo": kl["mean"],
                    "mleo_stderr": kl["stderr"],
                }
            )
        m, g = take_restart(model, best), take_restart(guide, best)
        out = semisupervised.summarize(m, g, test.x, test.y, truth, seed=args.seed)
        random = [r for r in range(args.restarts) if per_restart[r]["init"] == "random"]
        best_random = max(random, key=lambda r: per_restart[r]["validation"]) if random else None
        best_labelled = int(val_labelled.argmax())
        out.update(
            best=best,
            best_labelled=best_labelled,
            best_random=best_random,
            per_restart=per_restart,
            train_seconds=seconds,
        )
        results[config] = out
        print(config, json.dumps(out, default=lambda v: round(v, 4)), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)
    return results


if __name__ == "__main__":
    main()
