"""The ``joint`` procedure: decoder and encoder trained together by SVI on the objective."""

from __future__ import annotations

import pyro
import torch

from pyrofail.errors import UsageError
from pyrofail.fit_result import FitResult
from pyrofail.nn import stack_restarts, take_restart
from pyrofail.optim import FusedAdam
from pyrofail.training import build, init, loop
from pyrofail.training.config import FitConfig, Problem
from pyrofail.training.state import FitState
from pyrofail.zoo import register

__all__ = ["batched_objects", "joint"]


def batched_objects(config: FitConfig, problem: Problem):
    """The batched model and guide of ``R`` restarts and the objective."""
    r = config.restarts
    model = problem.model
    if config.learn_model and model is None:
        bmodel = build.learned_model_for(config, restarts=r)
    else:
        if model.restarts is not None:
            raise UsageError("model= must be un-batched (one restart)")
        if config.learn_model and not any(p.requires_grad for p in model.parameters()):
            raise UsageError(
                "model= has no trainable parameters; pass it as truth= to start an MLP "
                "decoder at it, or use learn_model=False to fit only the guide"
            )
        build.check_stackable(model, r, config.learn_model)
        bmodel = stack_restarts([model] * r)
        if not config.learn_model:
            bmodel.requires_grad_(False)
            bmodel.train(False)  # tells pyro.module the frozen parameters are meant to be
    if isinstance(problem.guide, str):
        bguide = build.guide(
            problem.guide,
            config.latent_dim,
            config.data_dim,
            hidden=config.hidden,
            activation=config.activation,
            options=config.guide_options,
            num_classes=config.num_classes,
            restarts=r,
        )
    else:
        if getattr(problem.guide, "restarts", None) is not None:
            raise UsageError("guide= must be an un-batched guide or a registered name")
        bguide = stack_restarts([problem.guide] * r)
    loss = build.objective(
        problem.objective, config.objective_options, labelled=config.num_classes is not None
    )
    return bmodel, bguide, loss


def _ground_truth_mask(config: FitConfig, problem: Problem) -> tuple[torch.Tensor, list[str]]:
    """Which restarts start at the ground truth, and every restart's initialisation."""
    r = config.restarts
    mask = torch.zeros(r, dtype=torch.bool)
    if config.learn_model and problem.model is None:
        if config.init == "ground_truth":
            mask[:] = True
        elif config.init == "paper":
            mask[: max(1, r // 2)] = True
        return mask, ["ground_truth" if g else "random" for g in mask]
    return mask, ["given" if config.learn_model else "fixed_model"] * r


@register(
    "procedure",
    "joint",
    summary="one SVI run of model and guide together on the objective (the usual VAE training)",
    keywords=("svi", "vae"),
)
def joint(config: FitConfig, problem: Problem) -> FitResult:
    """Train decoder and encoder together by SVI on the objective, ``R`` restarts at once
    (:mod:`pyrofail.training.loop`), half of them started at the ground truth under
    ``init="paper"`` (:mod:`pyrofail.training.init`); select the best by validation."""
    pyro.clear_param_store()
    pyro.set_rng_seed(config.seed)
    bmodel, bguide, loss = batched_objects(config, problem)
    dev = torch.device(config.device)
    bmodel.to(dev)
    bguide.to(dev)
    train, val = problem.data(dev)
    gt_mask, kinds = _ground_truth_mask(config, problem)
    optim = FusedAdam(config.lr)
    key = config.key(*train, *val)
    checkpoint = problem.checkpoint
    if checkpoint is not None and checkpoint.exists():
        state = FitState.load(checkpoint, key, bmodel, bguide, dev)
        optim.set_state(state.optim)
    else:
        state = FitState.start(config.restarts, dev)
        if gt_mask.any() and config.num_classes is not None:
            init.pretrain_labelled_decoder(bmodel, problem.truth, gt_mask, config.pretrain_steps, 3e-3, dev)
        elif gt_mask.any():
            target = init.ground_truth_target(problem.truth, config.latent_dim)
            init.pretrain_decoder(
                bmodel.decoder, target, gt_mask, config.latent_dim, config.pretrain_steps, 3e-3, dev
            )
            if config.warmup_steps:
                init.warm_up_encoder(
                    bmodel,
                    bguide,
                    loss,
                    train,
                    gt_mask.to(dev),
                    config.warmup_steps,
                    config.lr,
                    config.batch_size,
                    config.seed,
                )
    state = loop.run(
        bmodel,
        bguide,
        loss,
        optim,
        train,
        val,
        state,
        steps=config.steps,
        lr=config.lr,
        batch_size=config.batch_size,
        eval_every=config.eval_every,
        seed=config.seed,
        learn_model=config.learn_model,
        key=key,
        checkpoint=checkpoint,
        progress=problem.progress,
        callbacks=problem.callbacks,
        label=f"{config.guide}/{config.objective} R={config.restarts}",
        compile=problem.compile,
    )
    best, final = loop.select(state, loss, bmodel, bguide, val, config.seed, config.steps)
    ok = state.active.cpu() & torch.isfinite(final)
    records = [
        {
            "restart": r,
            "init": kinds[r],
            "validation_objective": float(final[r]) if ok[r] else None,
            "diverged_at": state.diverged_at[r],
            "selected": r == best,
        }
        for r in range(config.restarts)
    ]
    if getattr(bmodel, "learn_noise", False):  # the spread of the learned sigma over restarts
        for r, record in enumerate(records):
            record["noise_scale"] = bmodel.noise_scale[r].tolist()
    return FitResult(
        model=take_restart(bmodel, best).requires_grad_(True).train(True),
        guide=take_restart(bguide, best),
        best=best,
        restarts=records,
        history=state.history,
        config=config.as_dict(),
        batched_model=bmodel,
        batched_guide=bguide,
        objective=loss,
    )
