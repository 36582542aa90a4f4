r"""Fit a VAE (or only its guide) by SVI, with ``R`` restarts vectorised into one model.

The protocol is that of Yacoby et al. (2020), Section 5: with the latent dimension and the
noise scale fixed, train ``R`` restarts and keep the one with the best validation objective.
Half of the restarts start from the ground truth: the MLP decoder is first regressed onto the
true :math:`f` on prior draws of :math:`z`, then the encoder is trained with that decoder held
fixed ("the best encoder for it"); the other half start at random.

All restarts are one batched model: an outer ``restarts`` plate and weights with a leading
restart dimension (:mod:`pyrofail.nn`). Adam acts element-wise and the loss is a sum over
restarts, so the restarts stay independent while costing about as much as one. A restart whose
loss becomes non-finite is frozen, recorded as diverged with its step, and excluded from
selection; the others go on.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import torch
from pyro import poutine
from pyro.infer import SVI

from pyrofail import zoo
from pyrofail.errors import (
    AllRestartsDiverged,
    UsageError,
    check_choice,
    check_positive_float,
    check_positive_int,
)
from pyrofail.models.latent_gaussian import LatentGaussian
from pyrofail.nn import MLP, Batched, restart_finite, restart_tensors, stack_restarts, take_restart
from pyrofail.optim import FusedAdam
from pyrofail.runs import RUN_FORMAT, atomic_torch_save, load_checkpoint

INITS = ("paper", "random", "ground_truth")
# Monte Carlo samples per validation point for sample-average objectives: with thousands of
# validation points the error of the mean stays below 0.01 nats, enough to rank restarts.
VAL_SAMPLES = 16


@dataclass
class FitResult:
    """What :func:`fit` returns.

    ``model`` and ``guide`` are the selected restart as ordinary, un-batched objects;
    ``restarts`` has one record per restart (initialisation, final validation objective,
    the step where it diverged or ``None``); ``history`` holds the validation objective of
    every restart at every evaluation step; ``config`` is the fully resolved configuration.
    """

    model: LatentGaussian
    guide: torch.nn.Module
    best: int
    restarts: list[dict]
    history: dict
    config: dict
    batched_model: LatentGaussian = field(repr=False)
    batched_guide: torch.nn.Module = field(repr=False)
    objective: object = field(repr=False, default=None)

    def restart(self, r: int):
        """``(model, guide)`` of restart ``r``, un-batched."""
        return take_restart(self.batched_model, r), take_restart(self.batched_guide, r)


def _as_data(name: str, x, data_dim: int | None) -> torch.Tensor:
    if x is None:
        return None
    if hasattr(x, "x") and not isinstance(x, torch.Tensor):  # a Dataset
        x = x.x
    try:
        x = torch.as_tensor(x, dtype=torch.get_default_dtype())
    except (TypeError, ValueError, RuntimeError):
        raise UsageError(f"{name} must be a numeric array of shape (N, D)") from None
    if x.dim() != 2 or x.shape[0] < 1:
        raise UsageError(f"{name} has shape {tuple(x.shape)}; expected (N, D) with N >= 1")
    if data_dim is not None and x.shape[1] != data_dim:
        raise UsageError(f"{name} has {x.shape[1]} columns but the process has data_dim={data_dim}")
    bad = (~torch.isfinite(x)).any(-1)
    if bad.any():
        rows = bad.nonzero().flatten()[:5].tolist()
        raise UsageError(f"{name} has NaN or infinite values (rows {rows}); clean the data first")
    return x


def _ground_truth_target(truth: LatentGaussian, latent_dim: int) -> Callable:
    """:math:`z \\mapsto f_{GT}(z_{1:K_{GT}})`: extra latent dimensions are ignored, missing
    ones are set to zero, so a model of any ``K`` can start at the ground truth."""
    k_true = truth.latent_dim

    def target(z):
        if latent_dim >= k_true:
            return truth.mean(z[..., :k_true])
        pad = z.new_zeros(*z.shape[:-1], k_true - latent_dim)
        return truth.mean(torch.cat((z, pad), -1))

    return target


def _pretrain_decoder(
    decoder: MLP, target: Callable, mask: torch.Tensor, latent_dim: int, steps: int, lr: float, device
) -> None:
    """Regress the masked restarts of a batched MLP decoder onto ``target`` (mean squared
    error on fresh prior draws each step)."""
    params = list(decoder.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    weight = mask.to(device=device, dtype=torch.get_default_dtype())
    for _ in range(steps):
        z = torch.randn(decoder.restarts, 512, latent_dim, device=device)
        with torch.no_grad():
            y = target(z)
        err = (decoder(z) - y).pow(2).sum(-1).mean(-1)  # (R,)
        opt.zero_grad()
        (err * weight).sum().backward()
        opt.step()
        sched.step()


class _Batches:
    """Minibatch indices as a pure function of the step: a fresh seeded permutation each
    epoch, the last partial batch dropped (unless the data are smaller than one batch). A
    resumed fit therefore sees exactly the batches of an uninterrupted one."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.size, self.seed = n, min(batch_size, n), seed
        self.per_epoch = max(1, n // self.size)
        self._epoch, self._perm = None, None

    def __call__(self, step: int) -> torch.Tensor:
        epoch, i = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=gen)
        return self._perm[i * self.size : (i + 1) * self.size]


def _snapshot(modules) -> list[torch.Tensor]:
    return [t.detach().clone() for m in modules for t in restart_tensors(m)]


def _restore(modules, snap, dead: torch.Tensor) -> None:
    tensors = [t for m in modules for t in restart_tensors(m)]
    with torch.no_grad():
        for t, s in zip(tensors, snap):
            t[dead] = s[dead]


def _config_key(config: dict, *data: torch.Tensor) -> str:
    """A hash of the options and the data, to refuse a checkpoint of another fit."""
    digest = hashlib.sha256(repr(sorted(config.items())).encode())
    for t in data:
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def fit(
    x,
    *,
    truth: LatentGaussian | None = None,
    model: LatentGaussian | None = None,
    learn_model: bool = True,
    latent_dim: int | None = None,
    guide="mean_field",
    objective="elbo",
    restarts: int = 10,
    steps: int = 6000,
    batch_size: int = 100,
    lr: float = 1e-3,
    seed: int = 0,
    device: str = "cpu",
    noise_scale: float | None = None,
    learn_noise: bool = False,
    hidden: Sequence[int] = (50, 50, 50),
    activation: str = "leaky_relu",
    init: str = "paper",
    pretrain_steps: int = 2000,
    warmup_steps: int | None = None,
    x_val=None,
    val_fraction: float = 0.2,
    guide_options: dict | None = None,
    objective_options: dict | None = None,
    eval_every: int | None = None,
    checkpoint: str | Path | None = None,
    progress: bool = False,
    callbacks: Sequence[Callable] = (),
) -> FitResult:
    r"""Train a VAE (decoder and encoder) or only a guide, with vectorised restarts.

    :param x: training data ``(N, D)`` (a tensor, an array or a :class:`Dataset`).
    :param truth: the ground-truth process: gives :math:`\sigma` and, for the paper's
        initialisation, the true decoder :math:`f`.
    :param model: a process to start from; with ``learn_model=False`` its decoder stays fixed
        and only the guide is fitted (amortization-gap studies).
    :param latent_dim: :math:`K` of the learned model (default: that of ``truth``/``model``).
    :param guide: a registered guide name (``pyrofail.zoo.names("guide")``).
    :param objective: a registered objective name, or a Pyro ``ELBO`` with ``per_point``.
    :param restarts: number of restarts ``R``, run as one batched model.
    :param steps: Adam steps of the joint training (after initialisation).
    :param batch_size: data points per step.
    :param lr: Adam learning rate.
    :param seed: seeds the weights, the minibatch order, the Monte Carlo draws and the
        validation split: same seed, same numbers on CPU.
    :param device: ``"cpu"`` or ``"cuda"`` (or any torch device string).
    :param noise_scale: :math:`\sigma` of the learned model (default: the truth's).
    :param learn_noise: train :math:`\log\sigma` as well.
    :param hidden: hidden widths of the MLP decoder (and of the guide unless
        ``guide_options`` says otherwise).
    :param init: ``"paper"`` (half the restarts at the ground truth, half random),
        ``"random"`` or ``"ground_truth"``; the ground-truth kinds need ``truth``.
    :param pretrain_steps: regression steps that fit the decoder to the true :math:`f`.
    :param warmup_steps: encoder steps with the ground-truth decoder fixed (default
        ``steps // 6``).
    :param x_val: validation data for selection; by default ``val_fraction`` of ``x`` is held
        out (seeded).
    :param eval_every: steps between validation evaluations (default ``steps // 20``).
    :param checkpoint: a file to save progress to at every evaluation; if it exists, the fit
        resumes from it and gives the same result as an uninterrupted fit.
    :param callbacks: functions ``cb(step, state)`` called after every step, where ``state``
        has ``model``, ``guide`` (batched), ``loss``, ``active``.
    """
    # ---- resolve and validate everything before any work -----------------------------
    if model is not None and truth is None and not learn_model:
        process = model
    else:
        process = truth if truth is not None else model
    data_dim = process.data_dim if process is not None else None
    x = _as_data("x", x, data_dim)
    data_dim = x.shape[1]
    x_val = _as_data("x_val", x_val, data_dim)
    restarts = check_positive_int("restarts", restarts)
    steps = check_positive_int("steps", steps)
    batch_size = check_positive_int("batch_size", batch_size)
    lr = check_positive_float("lr", lr)
    pretrain_steps = check_positive_int("pretrain_steps", pretrain_steps, minimum=0)
    warmup_steps = steps // 6 if warmup_steps is None else warmup_steps
    warmup_steps = check_positive_int("warmup_steps", warmup_steps, minimum=0)
    eval_every = check_positive_int("eval_every", eval_every or max(1, steps // 20))
    check_choice("init", init, INITS)
    if not learn_model and model is None:
        raise UsageError("learn_model=False needs model=: the fixed process whose guide to fit")
    if latent_dim is None:
        if process is None:
            raise UsageError("pass latent_dim=, or truth= or model= to take it from")
        latent_dim = process.latent_dim
    latent_dim = check_positive_int("latent_dim", latent_dim)
    if not learn_model and latent_dim != model.latent_dim:
        raise UsageError(
            f"latent_dim={latent_dim} conflicts with the fixed model's latent_dim={model.latent_dim}"
        )
    if noise_scale is None:
        if process is not None:
            noise_scale = float(process.noise_scale.reshape(-1)[0])
        elif learn_noise:
            noise_scale = 1.0
        else:
            raise UsageError("pass truth= or noise_scale=, or learn_noise=True")
    noise_scale = check_positive_float("noise_scale", noise_scale)
    if init != "random" and learn_model and model is None and truth is None:
        init = "random"  # no ground truth to start from
    if learn_model and model is not None and init != "random":
        init = "random"  # starting from the given model replaces the paper's initialisation
    if x_val is None:
        val_fraction = float(val_fraction)
        if not 0.0 < val_fraction < 1.0:
            raise UsageError(f"val_fraction={val_fraction} is not allowed; expected 0 < f < 1")
        n_val = max(1, int(round(val_fraction * x.shape[0])))
        if x.shape[0] - n_val < 1:
            raise UsageError(f"x has {x.shape[0]} rows: too few to hold out validation data")
        perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
        x, x_val = x[perm[n_val:]], x[perm[:n_val]]
    try:
        dev = torch.device(device)
        torch.empty(0, device=dev)
    except (RuntimeError, TypeError, AssertionError):
        raise UsageError(f"device {device!r} is not available here; use 'cpu'") from None

    guide_options = dict(guide_options or {})
    objective_options = dict(objective_options or {})
    guide_name = guide if isinstance(guide, str) else type(guide).__name__
    objective_name = objective if isinstance(objective, str) else type(objective).__name__
    config = {
        "format": RUN_FORMAT,
        "n_train": int(x.shape[0]),
        "n_val": int(x_val.shape[0]),
        "data_dim": data_dim,
        "latent_dim": latent_dim,
        "guide": guide_name,
        "guide_options": guide_options,
        "objective": objective_name,
        "objective_options": objective_options,
        "restarts": restarts,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "seed": int(seed),
        "device": str(dev),
        "noise_scale": noise_scale,
        "learn_noise": bool(learn_noise),
        "learn_model": bool(learn_model),
        "hidden": list(hidden),
        "activation": activation,
        "init": init,
        "pretrain_steps": pretrain_steps,
        "warmup_steps": warmup_steps,
        "eval_every": eval_every,
    }

    # ---- build the batched model, guide and objective ----------------------------------
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    if learn_model and model is None:
        decoder = MLP((latent_dim, *hidden, data_dim), activation, restarts=restarts)
        bmodel = LatentGaussian(
            decoder, latent_dim, data_dim, noise_scale, learn_noise=learn_noise, restarts=restarts
        )
    else:
        if model.restarts is not None:
            raise UsageError("model= must be un-batched (one restart)")
        if learn_model and not any(p.requires_grad for p in model.parameters()):
            raise UsageError(
                "model= has no trainable parameters; pass it as truth= to start an MLP "
                "decoder at it, or use learn_model=False to fit only the guide"
            )
        _check_stackable(model, restarts, learn_model)
        bmodel = stack_restarts([model] * restarts)
        if not learn_model:
            bmodel.requires_grad_(False)
            bmodel.train(False)  # tells pyro.module the frozen parameters are meant to be
    if isinstance(guide, str):
        gopts = {"hidden": tuple(hidden), "activation": activation, **guide_options}
        bguide = zoo.guide(guide, latent_dim=latent_dim, data_dim=data_dim, restarts=restarts, **gopts)
    else:
        if getattr(guide, "restarts", None) is not None:
            raise UsageError("guide= must be an un-batched guide or a registered name")
        bguide = stack_restarts([guide] * restarts)
    loss = zoo.objective(objective, **objective_options) if isinstance(objective, str) else objective
    if not hasattr(loss, "per_point"):
        raise UsageError("objective= must be a registered name or an objective with per_point()")
    bmodel.to(dev)
    bguide.to(dev)
    x, x_val = x.to(dev), x_val.to(dev)

    gt_mask = torch.zeros(restarts, dtype=torch.bool)
    if learn_model and model is None:
        if init == "ground_truth":
            gt_mask[:] = True
        elif init == "paper":
            gt_mask[: max(1, restarts // 2)] = True
        kinds = ["ground_truth" if g else "random" for g in gt_mask]
    else:
        kinds = ["given" if learn_model else "fixed_model"] * restarts

    active = torch.ones(restarts, dtype=torch.bool, device=dev)
    diverged_at: list[int | None] = [None] * restarts
    history: dict = {"step": [], "validation": [], "train_loss": []}
    start = 0
    optim = FusedAdam(lr)
    key = _config_key({k: v for k, v in config.items() if k != "device"}, x, x_val)

    state = None
    if checkpoint is not None and Path(checkpoint).exists():
        state = load_checkpoint(checkpoint, map_location=dev)
        if state.get("key") != key:
            raise UsageError(
                f"checkpoint {checkpoint} was written with other options; "
                "use another checkpoint path or the original options"
            )
    if state is not None:
        bmodel.load_state_dict(state["model"])
        bguide.load_state_dict(state["guide"])
        start = state["step"]
        active.copy_(state["active"].to(dev))
        diverged_at = [None if d < 0 else int(d) for d in state["diverged_at"].tolist()]
        history = state["history"]
        if not active.any():
            raise AllRestartsDiverged(
                f"every restart diverged (non-finite loss) at steps {diverged_at}; "
                "lower lr= or check the data scale"
            )
        optim.set_state(state["optim"])
    elif gt_mask.any():
        target = _ground_truth_target(truth, latent_dim)
        _pretrain_decoder(bmodel.decoder, target, gt_mask, latent_dim, pretrain_steps, 3e-3, dev)
        if warmup_steps:
            _warm_up_encoder(bmodel, bguide, loss, x, gt_mask.to(dev), warmup_steps, lr, batch_size, seed)

    # The active mask zeroes the loss of frozen restarts; tensors captured by poutine.mask
    # are read at every call, so updating `active` in place takes effect at once.
    model_fn = poutine.mask(bmodel.model, mask=active.unsqueeze(-1))
    if not learn_model:
        model_fn = poutine.block(model_fn, hide_types=["param"])
    guide_fn = poutine.mask(bguide, mask=active.unsqueeze(-1))
    svi = SVI(model_fn, guide_fn, optim, loss)
    if state is not None:
        torch.set_rng_state(state["torch_rng"])
    tensors_of = [bmodel, bguide]
    snap = _snapshot(tensors_of)
    batches = _Batches(x.shape[0], batch_size, seed + 1)
    bar = _progress(progress, steps, start, f"{guide_name}/{objective_name} R={restarts}")
    running = None if state is None else state["running"]
    with pyro.validation_enabled(False), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Encountered NaN")
        warnings.filterwarnings("ignore", message="Encountered \\+?-?inf")
        for step in range(start, steps):
            idx = batches(step).to(dev)
            optim.set_lr(lr * lr_factor(step, steps))
            value = svi.step(x[idx])
            if not math.isfinite(value):
                dead = _find_diverged(bmodel, bguide, loss, x[idx], restarts) & active
                if not dead.any():  # non-finite only through frozen restarts
                    dead = torch.zeros_like(active)
                for r in dead.nonzero().flatten().tolist():
                    diverged_at[r] = step
                active &= ~dead
                _restore(tensors_of, snap, dead)
                optim.reset(restarts, dead)
                if not active.any():
                    _save(
                        checkpoint,
                        key,
                        step + 1,
                        bmodel,
                        bguide,
                        active,
                        diverged_at,
                        history,
                        optim,
                        running,
                    )
                    raise AllRestartsDiverged(
                        "every restart diverged (non-finite loss) at steps "
                        f"{diverged_at}; lower lr= or check the data scale"
                    )
            else:
                running = value if running is None else 0.98 * running + 0.02 * value
            for cb in callbacks:
                cb(step, {"model": bmodel, "guide": bguide, "loss": value, "active": active})
            if bar is not None:
                bar.update(1)
            if (step + 1) % eval_every == 0 or step + 1 == steps:
                dead = ~restart_finite(bmodel, restarts).to(dev) | ~restart_finite(bguide, restarts).to(dev)
                for r in (dead & active).nonzero().flatten().tolist():
                    diverged_at[r] = step
                active &= ~dead
                val = _validate(loss, bmodel, bguide, x_val, seed, step)
                history["step"].append(step + 1)
                history["validation"].append(val.tolist())
                history["train_loss"].append(None if running is None else running / (restarts * batch_size))
                snap = _snapshot(tensors_of)
                if bar is not None and active.any():
                    bar.set_postfix(val=f"{float(val[active].max()):.4f}")
                _save(checkpoint, key, step + 1, bmodel, bguide, active, diverged_at, history, optim, running)
    if bar is not None:
        bar.close()

    final = torch.tensor(history["validation"][-1]) if history["validation"] else None
    if final is None:
        final = _validate(loss, bmodel, bguide, x_val, seed, steps - 1)
    ok = active.cpu() & torch.isfinite(final)
    if not ok.any():
        raise AllRestartsDiverged(f"every restart diverged (steps {diverged_at})")
    best = int(torch.where(ok, final, torch.tensor(-math.inf)).argmax())
    records = [
        {
            "restart": r,
            "init": kinds[r],
            "validation_objective": float(final[r]) if ok[r] else None,
            "diverged_at": diverged_at[r],
            "selected": r == best,
        }
        for r in range(restarts)
    ]
    return FitResult(
        model=take_restart(bmodel, best).requires_grad_(True).train(True),
        guide=take_restart(bguide, best),
        best=best,
        restarts=records,
        history=history,
        config=config,
        batched_model=bmodel,
        batched_guide=bguide,
        objective=loss,
    )


def _check_stackable(model, restarts: int, learn_model: bool) -> None:
    """A model's trainable parameters must live in :class:`Batched` modules to be batched."""
    if not learn_model or restarts == 1:
        return
    batched = {id(p) for m in model.modules() if isinstance(m, Batched) for p in m.parameters()}
    loose = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in batched]
    if loose:
        raise UsageError(
            f"model= has parameters outside restart-batchable modules ({loose[0]}, ...); "
            "use restarts=1 or build the decoder from pyrofail.nn.MLP"
        )


def lr_factor(step: int, steps: int, decay_from: float = 0.5, floor: float = 0.01) -> float:
    """Learning-rate multiplier: 1 for the first half of training, then a cosine decay to
    ``floor``, so that the selected restart is not judged on the noise of its last steps."""
    t0 = decay_from * steps
    if step < t0:
        return 1.0
    frac = (step - t0) / max(1.0, steps - t0)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * frac))


def _find_diverged(bmodel, bguide, loss, xb, restarts: int) -> torch.Tensor:
    """Restarts with non-finite parameters, or else with a non-finite loss on ``xb``."""
    dead = ~restart_finite(bmodel, restarts) | ~restart_finite(bguide, restarts)
    dead = dead.to(xb.device)
    if not dead.any():
        with torch.no_grad():
            per = loss.per_point(bmodel, bguide, xb).value.sum(-1)
        dead = ~torch.isfinite(per)
    return dead


def _validate(loss, bmodel, bguide, x_val, seed: int, step: int) -> torch.Tensor:
    """Mean validation objective per restart, with its own random stream so that evaluating
    never changes the training draws (and a resumed fit matches an uninterrupted one)."""
    with torch.random.fork_rng(devices=[x_val.device] if x_val.device.type == "cuda" else []):
        torch.manual_seed(int(seed) * 1_000_003 + step)
        with torch.no_grad():
            value = loss.per_point(bmodel, bguide, x_val, VAL_SAMPLES).value.mean(-1)
    return value.cpu()


def _warm_up_encoder(bmodel, bguide, loss, x, mask, steps, lr, batch_size, seed) -> None:
    """Fit the encoders of the masked restarts to their fixed (ground-truth) decoders."""
    frozen = [p for p in bmodel.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    bmodel.train(False)
    model_fn = poutine.block(poutine.mask(bmodel.model, mask=mask.unsqueeze(-1)), hide_types=["param"])
    guide_fn = poutine.mask(bguide, mask=mask.unsqueeze(-1))
    svi = SVI(model_fn, guide_fn, FusedAdam(lr), loss)
    batches = _Batches(x.shape[0], batch_size, seed + 2)
    with pyro.validation_enabled(False):
        for step in range(steps):
            svi.step(x[batches(step).to(x.device)])
    for p in frozen:
        p.requires_grad_(True)
    bmodel.train(True)


def _save(path, key, step, bmodel, bguide, active, diverged_at, history, optim, running):
    if path is None:
        return
    atomic_torch_save(
        {
            "format": RUN_FORMAT,
            "key": key,
            "step": step,
            "model": bmodel.state_dict(),
            "guide": bguide.state_dict(),
            "active": active.cpu(),
            "diverged_at": torch.tensor([-1 if d is None else d for d in diverged_at]),
            "history": history,
            "torch_rng": torch.get_rng_state(),
            "optim": optim.get_state(),
            "running": running,
        },
        path,
    )


def _progress(enabled: bool, total: int, initial: int, desc: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True)
