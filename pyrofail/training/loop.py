"""The SVI loop over ``R`` vectorised restarts, with divergence handling and selection.

All restarts are one batched model: an outer ``restarts`` plate and weights with a leading
restart dimension (:mod:`pyrofail.nn`). Adam acts element-wise and the loss is a sum over
restarts, so the restarts stay independent while costing about as much as one. A restart whose
loss becomes non-finite is frozen at its last evaluated weights, recorded as diverged with its
step, and excluded from selection; the others go on. The restart with the best validation
objective is selected.
"""

from __future__ import annotations

import math
import warnings

import pyro
import torch
from pyro import poutine
from pyro.infer import SVI

from pyrofail.errors import AllRestartsDiverged
from pyrofail.nn import restart_finite, restart_tensors
from pyrofail.training.state import FitState

__all__ = ["Batches", "lr_factor", "run", "select"]

# Monte Carlo samples per validation point for sample-average objectives: with thousands of
# validation points the error of the mean stays below 0.01 nats, enough to rank restarts.
VAL_SAMPLES = 16


class Batches:
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


def lr_factor(step: int, steps: int, decay_from: float = 0.5, floor: float = 0.01) -> float:
    """Learning-rate multiplier: 1 for the first half of training, then a cosine decay to
    ``floor``, so that the selected restart is not judged on the noise of its last steps."""
    t0 = decay_from * steps
    if step < t0:
        return 1.0
    frac = (step - t0) / max(1.0, steps - t0)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * frac))


def _snapshot(modules) -> list[torch.Tensor]:
    return [t.detach().clone() for m in modules for t in restart_tensors(m)]


def _restore(modules, snap, dead: torch.Tensor) -> None:
    tensors = [t for m in modules for t in restart_tensors(m)]
    with torch.no_grad():
        for t, s in zip(tensors, snap):
            t[dead] = s[dead]


def _per_point(loss, bmodel, bguide, data: tuple, num_samples=None):
    """The objective's per-point value on ``data`` = ``(x,)`` or ``(x, y)`` (labels)."""
    labels = {"y": data[1]} if len(data) > 1 else {}
    return loss.per_point(bmodel, bguide, data[0], num_samples, **labels)


def _find_diverged(bmodel, bguide, loss, batch: tuple, restarts: int) -> torch.Tensor:
    """Restarts with non-finite parameters, or else with a non-finite loss on ``batch``."""
    dead = ~restart_finite(bmodel, restarts) | ~restart_finite(bguide, restarts)
    dead = dead.to(batch[0].device)
    if not dead.any():
        with torch.no_grad():
            per = _per_point(loss, bmodel, bguide, batch).value.sum(-1)
        dead = ~torch.isfinite(per)
    return dead


def validate(loss, bmodel, bguide, val, seed: int, step: int) -> torch.Tensor:
    """Mean validation objective per restart on ``val`` (``x_val`` or ``(x_val, [y_val])``),
    with its own random stream so that evaluating never changes the training draws (and a
    resumed fit matches an uninterrupted one)."""
    val = val if isinstance(val, tuple) else (val,)
    device = val[0].device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(int(seed) * 1_000_003 + step)
        with torch.no_grad():
            value = _per_point(loss, bmodel, bguide, val, VAL_SAMPLES).value.mean(-1)
    return value.cpu()


def run(
    bmodel,
    bguide,
    loss,
    optim,
    train: tuple,
    val: tuple,
    state: FitState,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    eval_every: int,
    seed: int,
    learn_model: bool = True,
    key: str = "",
    checkpoint=None,
    progress: bool = False,
    callbacks=(),
    label: str = "",
) -> FitState:
    """Run SVI from ``state.step`` to ``steps``: one step per minibatch of ``train`` (``(x,)`` or
    ``(x, y)``), validation on ``val`` and a checkpoint every ``eval_every`` steps; returns the
    final state (``state``, updated)."""
    x = train[0]
    restarts = state.active.shape[0]
    active = state.active
    # The active mask zeroes the loss of frozen restarts; tensors captured by poutine.mask
    # are read at every call, so updating `active` in place takes effect at once.
    model_fn = poutine.mask(bmodel.model, mask=active.unsqueeze(-1))
    if not learn_model:
        model_fn = poutine.block(model_fn, hide_types=["param"])
    guide_fn = poutine.mask(bguide, mask=active.unsqueeze(-1))
    svi = SVI(model_fn, guide_fn, optim, loss)
    if state.torch_rng is not None:
        torch.set_rng_state(state.torch_rng)
    tensors_of = [bmodel, bguide]
    snap = _snapshot(tensors_of)
    batches = Batches(x.shape[0], batch_size, seed + 1)
    bar = _progress(progress, steps, state.step, label)
    with pyro.validation_enabled(False), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Encountered NaN")
        warnings.filterwarnings("ignore", message="Encountered \\+?-?inf")
        for step in range(state.step, steps):
            idx = batches(step).to(x.device)
            optim.set_lr(lr * lr_factor(step, steps))
            batch = tuple(t[idx] for t in train)
            value = svi.step(*batch)
            if not math.isfinite(value):
                dead = _find_diverged(bmodel, bguide, loss, batch, restarts) & active
                state.freeze(dead, step)
                _restore(tensors_of, snap, dead)
                optim.reset(restarts, dead)
                if not active.any():
                    state.step = step + 1
                    state.save(checkpoint, key, bmodel, bguide, optim)
                    state.check_alive()
            else:
                state.running = value if state.running is None else 0.98 * state.running + 0.02 * value
            for cb in callbacks:
                cb(step, {"model": bmodel, "guide": bguide, "loss": value, "active": active})
            if bar is not None:
                bar.update(1)
            if (step + 1) % eval_every == 0 or step + 1 == steps:
                dead = ~restart_finite(bmodel, restarts).to(x.device) | ~restart_finite(bguide, restarts).to(
                    x.device
                )
                state.freeze(dead, step)
                value_val = validate(loss, bmodel, bguide, val, seed, step)
                history = state.history
                history["step"].append(step + 1)
                history["validation"].append(value_val.tolist())
                running = state.running
                history["train_loss"].append(None if running is None else running / (restarts * batch_size))
                snap = _snapshot(tensors_of)
                if bar is not None and active.any():
                    bar.set_postfix(val=f"{float(value_val[active.cpu()].max()):.4f}")
                state.step = step + 1
                state.save(checkpoint, key, bmodel, bguide, optim)
    state.step = steps
    if bar is not None:
        bar.close()
    return state


def select(state: FitState, loss, bmodel, bguide, val, seed: int, steps: int) -> tuple[int, torch.Tensor]:
    """The restart with the best final validation objective among those that never diverged,
    and the final objective of every restart ``(R,)``."""
    history = state.history
    final = torch.tensor(history["validation"][-1]) if history["validation"] else None
    if final is None:
        final = validate(loss, bmodel, bguide, val, seed, steps - 1)
    ok = state.active.cpu() & torch.isfinite(final)
    if not ok.any():
        raise AllRestartsDiverged(f"every restart diverged (steps {state.diverged_at})")
    best = int(torch.where(ok, final, torch.tensor(-math.inf)).argmax())
    return best, final


def _progress(enabled: bool, total: int, initial: int, desc: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True)
