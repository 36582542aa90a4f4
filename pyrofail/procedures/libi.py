r"""The ``libi`` procedure: likelihood before inference.

Yacoby, Pan & Doshi-Velez ("Characterizing and avoiding problematic global optima of
variational autoencoders", AABI 2019) show that the VAE objective's global optima can be
undesirable because the generative model is unidentifiable and the ELBO prefers decoders whose
posteriors are easy to approximate, and propose LiBI: learn a generative model that captures
:math:`p(x)`, then an inference model for it. What the paper's abstract states, we build: two
stages. How each stage is done is this project's reading (the paper's method section is not
available to us):

1. **Likelihood.** :math:`\theta` maximises the exact log-likelihood, by the quadrature of
   :mod:`pyrofail.quadrature` (:math:`K \le 2`; differentiable, so no ELBO and no bias towards
   easy posteriors), minus :math:`\lambda\, \mathrm{KL}(\bar p_\theta(z) \,\|\, p(z))`, where
   :math:`\bar p_\theta(z) = \frac1N \sum_n p_\theta(z \mid x_n)` is the aggregate of the exact
   posteriors of **all** :math:`N` training points on the same nodes: among decoders that
   explain :math:`p(x)` equally well, the penalty prefers the one whose aggregate posterior
   matches the prior (``penalty`` = :math:`\lambda`). The aggregate is recomputed over all
   points every ``refresh`` steps (default: every 5 steps at K = 1, once per epoch at K = 2),
   and each minibatch step descends an unbiased estimate of the full-data KL's gradient
   (:func:`pyrofail.quadrature.aggregate_kl_penalty`), weighted by the log-ratio of the last
   aggregate to the prior. Those weights must stay fresh: refreshed once per epoch (50 steps
   at 5,000 points), the decoder overshoots between refreshes and the aggregate oscillates
   away from the prior — on quadratic at K = 1 its KL reached 9.7 nats and the selected
   decoder's MLEO 3.1 nats, against 0.002 with a refresh every 5 steps, which costs about a
   fifth more time at K = 1 (27 s against 23 s for 1,000 steps at 2,000 points). At K = 2 a
   pass over the grid is dear, and there the default stays one epoch: a refresh every 5 steps
   took 2.8 times as long for the same MLEO on figure8 (0.0040 ± 0.0020 against 0.0043 ±
   0.0021 nats, 500 steps). The KL of a
   minibatch's own aggregate, which this replaces, is biased upwards by the lumpiness of an
   average of 100 posteriors: 0.064 / 0.034 / 0.019 nats at the true decoders of figure8 /
   quadratic / clusters against 0.0018 / 0.0007 / 0.0003 over 5,000 points, and larger for
   more informative codes, so it pushed the decoder towards uninformative ones. For
   :math:`K > 2` the likelihood is the IWAE bound with many particles (``particles``) and
   there is no penalty (the aggregate has no grid there: ``penalty``, ``spacing`` and
   ``refresh`` are refused). ``R`` restarts as in every fit, half started at the ground truth
   under ``init="paper"``; the restart with the best validation objective (the exact
   log-likelihood of the validation points minus λ times their aggregate's KL) is kept.
2. **Inference.** The guide (any family) is fitted to that fixed decoder by the run's
   objective (the ELBO by default), as ``pf.fit(..., learn_model=False)`` does.

Options (``procedure_options``): ``penalty`` (λ, default 1), ``spacing`` (of the quadrature
grid, default 0.02 for K = 1 and 0.08 for K = 2), ``refresh`` (steps between full-data passes
for the aggregate, default 5 at K = 1 and one epoch at K = 2), all three for K ≤ 2;
``particles`` (K > 2, default 100).
An option the fit's K does not use is refused (a ``UsageError``), not ignored.
"""

from __future__ import annotations

import dataclasses
import math

import pyro
import torch

from pyrofail import quadrature
from pyrofail.errors import AllRestartsDiverged, UsageError, check_positive_float, check_positive_int
from pyrofail.fit_result import FitResult
from pyrofail.nn import restart_finite, take_restart
from pyrofail.procedures.joint import joint
from pyrofail.runs import RUN_FORMAT, atomic_torch_save, load_checkpoint
from pyrofail.training import build, init, loop
from pyrofail.training.config import FitConfig, Problem
from pyrofail.zoo import register

__all__ = ["libi"]

SPACING = {1: 0.02, 2: 0.08}
DEFAULTS = {"penalty": 1.0, "particles": 100, "refresh": None}
# steps between full-data passes for the aggregate, by K (None: one epoch); see the docstring
REFRESH = {1: 5, 2: None}
GRID_OPTIONS = ("penalty", "spacing", "refresh")  # K <= 2 only
# the saved stage one's version: 2 penalises the full-data aggregate (1, the minibatch's, is
# recomputed on resume rather than reused); 3 refreshes it every 5 steps at K = 1
STAGE_ONE_VERSION = 3
OPTIONS = ("penalty", "spacing", "refresh", "particles")


def _options(config: FitConfig) -> dict:
    given = dict(config.procedure_options)
    unknown = set(given) - set(OPTIONS)
    if unknown:
        raise UsageError(f"libi has no option {sorted(unknown)[0]!r}; choose from: {', '.join(OPTIONS)}")
    grid = config.latent_dim <= 2
    for name in given:
        if (name in GRID_OPTIONS) != grid and not (name == "penalty" and given[name] == 0):
            where = "latent_dim <= 2 (the quadrature grid)" if grid is False else "latent_dim > 2"
            raise UsageError(
                f"libi option {name}={given[name]!r} works only at {where}; this fit has "
                f"latent_dim={config.latent_dim}: drop it"
            )
    opts = {**DEFAULTS, "spacing": SPACING.get(config.latent_dim), "refresh": REFRESH.get(config.latent_dim)}
    opts.update(given)
    if not opts["penalty"] >= 0:
        raise UsageError(f"penalty={opts['penalty']!r} is not allowed; expected a number >= 0")
    check_positive_int("particles", opts["particles"])
    if opts["spacing"] is not None:
        check_positive_float("spacing", opts["spacing"])
    if opts["refresh"] is not None:
        check_positive_int("refresh", opts["refresh"])
    return opts


def _objective(bmodel, x, z, log_w, penalty: float, masses) -> torch.Tensor:
    """Per restart ``(R,)``: mean log-likelihood of the batch ``x`` minus λ times the
    full-data aggregate KL, whose value comes from ``masses`` (the aggregate over every
    training point) and whose gradient is the batch's unbiased estimate of it."""
    lj = quadrature.log_joint_on_nodes(bmodel, x, z, log_w)  # (R, B, G)
    value = torch.logsumexp(lj, -1).mean(-1)
    if penalty:
        value = value - penalty * quadrature.aggregate_kl_penalty(lj, z, log_w, masses)
    return value


@torch.no_grad()
def _validation(bmodel, x, z, log_w, penalty: float, chunk: int = 500) -> torch.Tensor:
    """Per restart ``(R,)``: the exact mean log-likelihood of all of ``x`` minus λ times the
    KL of their aggregate posterior, in chunks."""
    log_px, masses = [], None
    for start in range(0, x.shape[0], chunk):
        lj = quadrature.log_joint_on_nodes(bmodel, x[start : start + chunk], z, log_w)
        log_px.append(torch.logsumexp(lj, -1))
        part = torch.softmax(lj, -1).sum(-2).double()
        masses = part if masses is None else masses + part
    value = torch.cat(log_px, -1).double().mean(-1)
    if penalty:
        value = value - penalty * quadrature.kl_from_prior(masses / x.shape[0], z, log_w)
    return value, quadrature.kl_from_prior(masses / x.shape[0], z, log_w)


def _likelihood_by_quadrature(config: FitConfig, problem: Problem, opts: dict):
    """Stage one for K <= 2: the batched decoders trained on the exact likelihood; returns the
    selected un-batched model and the stage's history."""
    r, dev = config.restarts, torch.device(config.device)
    pyro.set_rng_seed(config.seed)
    bmodel = build.learned_model_for(config, restarts=r).to(dev)
    x, x_val = problem.x.to(dev), problem.x_val.to(dev)
    z, log_w = quadrature.nodes(config.latent_dim, opts["spacing"], dtype=x.dtype, device=dev)
    if config.init != "random" and problem.truth is not None:
        mask = torch.zeros(r, dtype=torch.bool)
        mask[: (r if config.init == "ground_truth" else max(1, r // 2))] = True
        target = init.ground_truth_target(problem.truth, config.latent_dim)
        init.pretrain_decoder(
            bmodel.decoder, target, mask, config.latent_dim, config.pretrain_steps, 3e-3, dev
        )
    params = [p for p in bmodel.parameters() if p.requires_grad]
    optim = torch.optim.Adam(params, lr=config.lr)
    active = torch.ones(r, dtype=torch.bool, device=dev)
    batches = loop.Batches(x.shape[0], config.batch_size, config.seed + 1)
    refresh = opts["refresh"] or batches.per_epoch
    history = {"step": [], "validation": [], "validation_aggregate_kl": [], "refresh": refresh}
    masses = None
    for step in range(config.steps):
        for group in optim.param_groups:
            group["lr"] = config.lr * loop.lr_factor(step, config.steps)
        if opts["penalty"] and step % refresh == 0:
            masses = quadrature.aggregate_masses(bmodel, x, z, log_w)
        value = _objective(bmodel, x[batches(step).to(dev)], z, log_w, opts["penalty"], masses)
        optim.zero_grad()
        (-(value * active).nan_to_num(0.0).sum()).backward()
        optim.step()
        active &= restart_finite(bmodel, r).to(dev) & torch.isfinite(value.detach())
        if not active.any():
            raise AllRestartsDiverged(
                "every restart of the likelihood stage diverged; lower lr= or check the data"
            )
        if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
            val, val_kl = (v.cpu() for v in _validation(bmodel, x_val, z, log_w, opts["penalty"]))
            history["step"].append(step + 1)
            history["validation"].append(val.tolist())
            history["validation_aggregate_kl"].append(val_kl.tolist())
    final = torch.where(active.cpu() & torch.isfinite(val), val, torch.tensor(-math.inf))
    best = int(final.argmax())
    return take_restart(bmodel, best).requires_grad_(True).train(True), history, best


def _likelihood_by_iwae(config: FitConfig, problem: Problem, opts: dict):
    """Stage one for K > 2: the IWAE bound with many particles as the likelihood."""
    stage = dataclasses.replace(
        config, objective="iwae", objective_options={"num_particles": opts["particles"]}
    )
    result = joint(stage, dataclasses.replace(problem, guide=config.guide, objective="iwae", checkpoint=None))
    return result.model, result.history, result.best


@register(
    "procedure",
    "libi",
    summary="likelihood before inference: fit the decoder by exact likelihood, then the guide to it",
    keywords=("libi", "two-stage", "non-identifiability"),
    options=OPTIONS,
)
def libi(config: FitConfig, problem: Problem) -> FitResult:
    """Likelihood before inference (module docstring): the decoder of the exact likelihood
    (with the aggregate-posterior penalty), then the guide fitted to it by the objective."""
    if not config.learn_model:
        raise UsageError("procedure='libi' learns the model; use procedure='joint' with learn_model=False")
    if config.num_classes is not None:
        raise UsageError("procedure='libi' takes no labels; fit labelled data with procedure='joint'")
    opts = _options(config)
    saved = None if problem.checkpoint is None else problem.checkpoint.with_suffix(".likelihood.pt")
    key = config.key(problem.x, problem.x_val)
    model = None
    if saved is not None and saved.exists():
        state = load_checkpoint(saved)
        if state.get("key") == key and state.get("stage_one") == STAGE_ONE_VERSION:
            model = build.learned_model_for(config)
            model.load_state_dict(state["model"])
            stage_one, picked = state["history"], state["best"]
    if model is None:
        fitter = _likelihood_by_quadrature if config.latent_dim <= 2 else _likelihood_by_iwae
        model, stage_one, picked = fitter(config, problem, opts)
        if saved is not None:
            payload = {"format": RUN_FORMAT, "key": key, "model": model.state_dict(), "history": stage_one}
            payload["stage_one"] = STAGE_ONE_VERSION
            atomic_torch_save({**payload, "best": picked}, saved)
    inference = dataclasses.replace(config, learn_model=False, init="random", procedure="joint")
    result = joint(inference, dataclasses.replace(problem, model=model.cpu()))
    return FitResult(
        model=model.cpu().requires_grad_(True).train(True),
        guide=result.guide,
        best=result.best,
        restarts=result.restarts,
        history={**result.history, "likelihood_stage": {**stage_one, "selected": picked}},
        config=config.as_dict(),
        batched_model=result.batched_model,
        batched_guide=result.batched_guide,
        objective=result.objective,
    )
