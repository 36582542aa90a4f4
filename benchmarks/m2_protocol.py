r"""M2 on ``semicircle`` under the paper's protocol: which solution does each objective prefer?

Yacoby, Pan & Doshi-Velez (2020, Section 5 and Fig. 6) train ``R`` restarts, half started at the
ground truth, and keep the one with the best objective on validation data. With a mean-field
encoder :math:`q(z \mid x)` that does not read the label, this script asks two questions.

1. ``score``: at a *fixed* decoder, what is each objective's value? For every decoder of some
   fits (and the truth-started decoder before any training, the "separated" reference) a fresh
   encoder is fitted to it under the ELBO and under IWAE (decoder frozen, same steps for all),
   then on test points the bounds are evaluated unlabelled, :math:`\mathcal U(x) \le \log p(x)`,
   and labelled, :math:`\mathcal L(x, y) \le \log p(x, y)`, beside the exact
   :math:`\log p(x)` and :math:`\log p(x, y)` (quadrature). The objective per point at labelled
   fraction :math:`f` is :math:`(1 - f)\,\mathcal U + f\,\mathcal L` (without the classifier's
   :math:`\alpha` term, which does not involve the decoder). Each decoder is compared with the
   separated reference on the same points (paired standard errors).
2. ``fit``: :func:`pyrofail.fit` under the protocol (``--init paper``), with local patches that
   are *not* in ``pyrofail`` yet: ``--warmup`` trains the truth-started restarts' encoders with
   their decoders fixed before the joint training (``fit`` skips that step for labelled data),
   ``--schedule constant`` keeps the learning rate constant. Per restart: the validation
   objective (as ``fit`` selects), the same with every validation label known, the separation
   ratio of the class curves and the counterfactual error (exact posterior and encoder).

``table`` gathers the JSON files of several seeds into the means and standard errors over seeds.
Run with one thread, e.g.::

    OMP_NUM_THREADS=1 python -m benchmarks.m2_protocol fit --seed 1 --objective iwae --out f.pt
    OMP_NUM_THREADS=1 python -m benchmarks.m2_protocol score --seed 1 --fits e.pt f.pt --out s.json
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

import pyrofail as pf
from pyrofail import zoo
from pyrofail.analysis import semisupervised
from pyrofail.estimate import Estimate
from pyrofail.guides.m2 import M2Guide
from pyrofail.labels import hide_labels
from pyrofail.models.m2 import m2_model
from pyrofail.nn import stack_restarts, take_restart
from pyrofail.objectives.m2 import M2ELBO, M2IWAE
from pyrofail.optim import FusedAdam
from pyrofail.training import init, loop

NOISE = 0.05
SEPARATED, COLLAPSED = 0.5, 0.2  # separation ratios that name a solution separated / collapsed


def make_data(seed: int, n_train: int, n_val: int, n_test: int, labelled: float) -> dict:
    """Train/validation/test draws of ``semicircle``; ``labelled`` of the training and the
    validation labels kept (as ``pyrofail.stages.jobs`` does), the test labels all known."""
    truth = zoo.model("semicircle")
    full = truth.sample(n_train + n_val + n_test, seed=seed)
    train, val, test = full[:n_train], full[n_train : n_train + n_val], full[n_train + n_val :]
    return {
        "truth": truth,
        "train": train,
        "val": val,
        "test": test,
        "y": hide_labels(train.y, labelled, seed=seed),
        "y_val": hide_labels(val.y, labelled, seed=seed + 1),
    }


def objective(name: str, particles: int):
    return M2ELBO() if name == "elbo" else M2IWAE(num_particles=particles)


# -- local patches of pyrofail (to be moved into the code if they help) -----------------------
def patch_warmup(steps: int, init_kind: str, batch_size: int, seed: int, lr: float) -> None:
    """Before ``loop.run``, fit the truth-started restarts' encoders to their fixed decoders
    (``pyrofail.procedures.joint`` does so only for unlabelled data)."""
    real = loop.run

    def run(bmodel, bguide, loss, optim, train, val, state, **kw):
        r = bmodel.restarts
        mask = torch.zeros(r, dtype=torch.bool)
        mask[: (r if init_kind == "ground_truth" else max(1, r // 2))] = True
        if state.step == 0 and steps and init_kind != "random":
            init.warm_up_encoder(bmodel, bguide, loss, train, mask, steps, lr, batch_size, seed)
        return real(bmodel, bguide, loss, optim, train, val, state, **kw)

    loop.run = run


def patch_schedule(kind: str) -> None:
    """``constant``: no decay of the learning rate (the default halves then decays by cosine)."""
    if kind == "constant":
        loop.lr_factor = lambda step, steps, *a, **k: 1.0


# -- fit ----------------------------------------------------------------------------------------
@torch.no_grad()
def restart_records(result, data, loss, seed: int) -> list[dict]:
    truth, test, val = data["truth"], data["test"], data["val"]
    bm, bg = result.batched_model, result.batched_guide
    torch.manual_seed(seed + 7)
    val_known = loss.per_point(bm, bg, val.x, 16, y=val.y, seed=seed).value.mean(-1)
    out = []
    for r, rec in enumerate(result.restarts):
        m, g = take_restart(bm, r), take_restart(bg, r)
        cf = {
            k: semisupervised.counterfactual_error(m, g, test.x, test.y, truth, seed=seed, method=k)
            for k in ("model", "guide")
        }
        out.append(
            {
                **rec,
                "validation_labels_known": float(val_known[r]),
                "separation_ratio": semisupervised.collapse(m, truth)["ratio"],
                **{f"cf_{k}": v["mean"] for k, v in cf.items()},
                **{f"cf_{k}_stderr": v["stderr"] for k, v in cf.items()},
            }
        )
    return out


def run_fit(args) -> dict:
    torch.set_num_threads(1)
    data = make_data(args.seed, args.n_train, args.n_val, args.n_test, args.labelled)
    if args.warmup:
        patch_warmup(args.warmup, args.init, args.batch_size, args.seed, args.lr)
    patch_schedule(args.schedule)
    options = {"num_particles": args.particles} if args.objective == "iwae" else {}
    start = time.perf_counter()
    result = pf.fit(
        data["train"].x,
        y=data["y"],
        x_val=data["val"].x,
        y_val=data["y_val"],
        truth=data["truth"],
        objective=args.objective,
        objective_options=options,
        guide_options={"label_in_encoder": False},
        restarts=args.restarts,
        steps=args.steps,
        lr=args.lr,
        init=args.init,
        seed=args.seed,
        noise_scale=NOISE,
    )
    seconds = time.perf_counter() - start
    records = restart_records(result, data, objective(args.objective, args.particles), args.seed)
    out = {"args": vars(args), "train_seconds": seconds, "best": result.best, "restarts": records}
    torch.save({"model": result.batched_model, "guide": result.batched_guide, **out}, args.out)
    with open(args.out.removesuffix(".pt") + ".json", "w") as f:
        json.dump(out, f, indent=1)
    sel = records[result.best]
    print(
        f"{args.objective} seed {args.seed}: {seconds:.0f} s; selected {result.best} ({sel['init']}) "
        f"ratio {sel['separation_ratio']:.3f} cf_guide {sel['cf_guide']:.3f} cf_model {sel['cf_model']:.3f}"
    )
    for r in records:
        print(
            f"  {r['restart']} {r['init']:12s} val {r['validation_objective']:.4f} "
            f"known {r['validation_labels_known']:.4f} ratio {r['separation_ratio']:.3f} "
            f"cf {r['cf_guide']:.3f}/{r['cf_model']:.3f}",
            flush=True,
        )
    return out


# -- score --------------------------------------------------------------------------------------
def separated_reference(seed: int, steps: int):
    """The truth-started decoder before any training: an MLP regressed onto the true curves
    exactly as ``fit`` starts its ground-truth restarts."""
    torch.manual_seed(seed)
    model = m2_model(1, 2, noise_scale=NOISE, restarts=1)
    every = torch.ones(1, dtype=torch.bool)
    init.pretrain_labelled_decoder(model, zoo.model("semicircle"), every, steps, 3e-3, "cpu")
    return take_restart(model, 0)


def refit_encoder(bmodel, loss, data, steps: int, lr: float, batch_size: int, seed: int):
    """A fresh encoder for every (frozen) decoder of ``bmodel``, trained on ``loss``."""
    pyro.clear_param_store()
    torch.manual_seed(seed)
    bmodel.requires_grad_(False)
    bmodel.train(False)
    guide = M2Guide(1, 2, restarts=bmodel.restarts, label_in_encoder=False)
    optim = FusedAdam(lr)
    svi = SVI(poutine.block(bmodel.model, hide_types=["param"]), guide, optim, loss)
    x, y = data["train"].x, data["y"]
    batches = loop.Batches(x.shape[0], batch_size, seed + 3)
    with pyro.validation_enabled(False):
        for step in range(steps):
            idx = batches(step)
            optim.set_lr(lr * loop.lr_factor(step, steps))
            svi.step(x[idx], y[idx])
    return guide


def exact_terms(model, x, y) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact :math:`\\log p(x)` and :math:`\\log p(x, y)` per point (quadrature)."""
    per_class = semisupervised.class_log_likelihoods(model, x).cpu()  # (C, N): log p(x | c)
    joint = per_class + model.log_class_probs.cpu()[:, None].double()
    return torch.logsumexp(joint, 0), joint.gather(0, y.cpu()[None]).squeeze(0)


def run_score(args) -> dict:
    torch.set_num_threads(1)
    data = make_data(args.seed, args.n_train, args.n_val, args.n_test, args.labelled)
    truth, test = data["truth"], data["test"]
    decoders, names = [separated_reference(args.seed, args.pretrain_steps)], ["separated_start"]
    for path in args.fits:
        saved = torch.load(path, weights_only=False)
        for r in range(saved["model"].restarts):
            decoders.append(take_restart(saved["model"], r))
            rec = saved["restarts"][r]
            names.append(f"{saved['args']['objective']}:{r}:{rec['init']}")
    bmodel = stack_restarts(decoders)
    f = args.labelled
    values = {}  # name of a term -> (R, N) per-point values on the test points
    for obj in ("elbo", "iwae"):
        loss = objective(obj, args.particles)
        start = time.perf_counter()
        guide = refit_encoder(bmodel, loss, data, args.refit_steps, args.lr, args.batch_size, args.seed)
        print(f"refit {obj}: {time.perf_counter() - start:.0f} s", flush=True)
        with torch.no_grad():
            u = loss.per_point(bmodel, guide, test.x, 100, seed=args.seed).value
            lab = loss.per_point(bmodel, guide, test.x, 100, y=test.y, seed=args.seed).value
            values[f"{obj}_U"], values[f"{obj}_L"], values[obj] = u, lab, (1 - f) * u + f * lab
            if obj == "iwae":
                for s in args.eval_particles:
                    big = M2IWAE(num_particles=s)
                    u = big.per_point(bmodel, guide, test.x, seed=args.seed).value
                    lab = big.per_point(bmodel, guide, test.x, y=test.y, seed=args.seed).value
                    values[f"iwae{s}"] = (1 - f) * u + f * lab
    ex_u, ex_l = zip(*(exact_terms(take_restart(bmodel, r), test.x, test.y) for r in range(len(names))))
    values["exact_U"], values["exact_L"] = torch.stack(ex_u), torch.stack(ex_l)
    values["exact"] = (1 - f) * values["exact_U"] + f * values["exact_L"]
    rows = []
    for r, name in enumerate(names):
        m = take_restart(bmodel, r)
        row = {"decoder": name, "separation_ratio": semisupervised.collapse(m, truth)["ratio"]}
        for term, v in values.items():
            row[term] = Estimate.of(v[r]).to_dict()
            row[f"{term}_minus_separated"] = Estimate.paired(v[r].double(), v[0].double()).to_dict()
        rows.append(row)
    out = {"args": vars(args), "rows": rows}
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=1)
    terms = ["elbo", "iwae", *[f"iwae{s}" for s in args.eval_particles], "exact"]
    print("decoder ratio " + " ".join(f"{t}(-sep)" for t in terms))
    for row in rows:
        cells = [f"{row[t]['mean']:.4f}({row[t + '_minus_separated']['mean']:+.4f})" for t in terms]
        print(f"{row['decoder']:24s} {row['separation_ratio']:.3f} " + " ".join(cells), flush=True)
    return out


# -- reselect ------------------------------------------------------------------------------------
def run_reselect(args) -> dict:
    """Each restart of saved fits judged on the validation points (labels as the fit saw them)
    by IWAE bounds with more particles (the fit's own encoder) and by the exact likelihood."""
    torch.set_num_threads(1)
    out = {}
    for path in args.fits:
        saved = torch.load(path, weights_only=False)
        a = saved["args"]
        data = make_data(a["seed"], a["n_train"], a["n_val"], a["n_test"], a["labelled"])
        val, y_val = data["val"], data["y_val"]
        rows = []
        for r, rec in enumerate(saved["restarts"]):
            m, g = take_restart(saved["model"], r), take_restart(saved["guide"], r)
            row = dict(rec)
            with torch.no_grad():
                for s in args.eval_particles:
                    v = M2IWAE(num_particles=s).per_point(m, g, val.x, y=y_val, seed=a["seed"]).value
                    row[f"val_iwae{s}"] = float(v.mean())
            ex_u, ex_l = exact_terms(m, val.x, val.y)
            row["val_exact"] = float(torch.where(y_val >= 0, ex_l, ex_u).mean())
            rows.append(row)
            print(path, r, {k: round(v, 4) for k, v in row.items() if k.startswith("val_")}, flush=True)
        out[path] = rows
        saved["restarts"] = rows
        with open(path.removesuffix(".pt") + ".json", "w") as fh:
            json.dump({k: v for k, v in saved.items() if k not in ("model", "guide")}, fh, indent=1)
    return out


# -- table ----------------------------------------------------------------------------------------
def over_seeds(values) -> str:
    e = Estimate.of(torch.tensor(values, dtype=torch.float64))
    return f"{e.mean:.3f} ± {e.stderr:.3f}" if e.stderr is not None else f"{e.mean:.3f}"


def select(records, rule: str) -> dict:
    key = {"objective": "validation_objective", "labels_known": "validation_labels_known"}.get(rule, rule)
    ok = [r for r in records if r[key] is not None and math.isfinite(r[key])]
    return max(ok, key=lambda r: r[key])


def run_table(args) -> None:
    """Selected restart's separation and counterfactual errors, mean ± se over the files."""
    runs = [json.load(open(p)) for p in args.files]
    print("| rule | selected truth-started | separation ratio | cf error (encoder) | cf error (exact) |")
    print("|---|---|---|---|---|")
    rules = ["objective", "labels_known"] + sorted(
        (k for k in runs[0]["restarts"][0] if k.startswith("val_")), key=lambda k: (len(k), k)
    )
    for rule in rules:
        sel = [select(r["restarts"], rule) for r in runs]
        gt = sum(s["init"] == "ground_truth" for s in sel)
        cells = [over_seeds([s[k] for s in sel]) for k in ("separation_ratio", "cf_guide", "cf_model")]
        print(f"| {rule} | {gt}/{len(sel)} | " + " | ".join(cells) + " |")


def _kind_mean(rows, match, term: str) -> float:
    """One seed's mean of ``term`` over the decoders of one kind."""
    v = [r[term] if term == "separation_ratio" else r[term]["mean"] for r in rows if match(r["decoder"])]
    return sum(v) / len(v)


def run_scores(args) -> None:
    """Each objective at each kind of decoder minus the separated start, mean ± se over the
    seeds (the decoders of one kind averaged within a seed)."""
    runs = [json.load(open(p))["rows"] for p in args.files]
    terms = [t for t in runs[0][0] if t.endswith("_minus_separated")]
    kinds = {
        "separated start (truth-started, untrained)": lambda d: d == "separated_start",
        "ELBO-trained (all restarts)": lambda d: d.startswith("elbo:"),
        "IWAE-trained, truth-started": lambda d: d.startswith("iwae:") and d.endswith("ground_truth"),
        "IWAE-trained, random start": lambda d: d.startswith("iwae:") and d.endswith("random"),
    }
    names = [t.removesuffix("_minus_separated") for t in terms]
    print("| decoders | separation ratio | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 2) + "|")
    for kind, match in kinds.items():
        cells = []
        for t in ["separation_ratio", *terms]:
            if kind.startswith("separated") and t != "separation_ratio":  # its own value, not 0
                t = t.removesuffix("_minus_separated")
            cells.append(over_seeds([_kind_mean(rows, match, t) for rows in runs]))
        print(f"| {kind} | " + " | ".join(cells) + " |")
    # Which solution IWAE's own training ends in is decided between its two kinds of decoders:
    # the difference truth-started minus random-start, per seed, then over the seeds.
    gt, rnd = kinds["IWAE-trained, truth-started"], kinds["IWAE-trained, random start"]
    cells = [over_seeds([_kind_mean(rows, gt, t) - _kind_mean(rows, rnd, t) for rows in runs]) for t in terms]
    print("| IWAE-trained: truth-started minus random start | — | " + " | ".join(cells) + " |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("fit", "score"):
        s = sub.add_parser(name)
        s.add_argument("--seed", type=int, default=1)
        s.add_argument("--n-train", type=int, default=3000)
        s.add_argument("--n-val", type=int, default=1000)
        s.add_argument("--n-test", type=int, default=1000)
        s.add_argument("--labelled", type=float, default=0.2)
        s.add_argument("--particles", type=int, default=20, help="IWAE's S")
        s.add_argument("--lr", type=float, default=1e-3)
        s.add_argument("--batch-size", type=int, default=100)
        s.add_argument("--out", required=True)
    f = sub.choices["fit"]
    f.add_argument("--objective", choices=("elbo", "iwae"), required=True)
    f.add_argument("--init", choices=("paper", "ground_truth", "random"), default="paper")
    f.add_argument("--restarts", type=int, default=4)
    f.add_argument("--steps", type=int, default=3000)
    f.add_argument("--warmup", type=int, default=0, help="encoder warm-up steps (local patch)")
    f.add_argument("--schedule", choices=("default", "constant"), default="default")
    s = sub.choices["score"]
    s.add_argument("--fits", nargs="+", default=[])
    s.add_argument("--refit-steps", type=int, default=1500)
    s.add_argument("--pretrain-steps", type=int, default=2000)
    s.add_argument("--eval-particles", type=int, nargs="*", default=[100, 1000])
    r = sub.add_parser("reselect")
    r.add_argument("fits", nargs="+")
    r.add_argument("--eval-particles", type=int, nargs="*", default=[20, 100, 1000, 5000])
    sc = sub.add_parser("scores")
    sc.add_argument("files", nargs="+")
    t = sub.add_parser("table")
    t.add_argument("files", nargs="+")
    args = p.parse_args(argv)
    {"fit": run_fit, "score": run_score, "reselect": run_reselect, "scores": run_scores, "table": run_table}[
        args.command
    ](args)


if __name__ == "__main__":
    main()
