"""The resolved, validated configuration of one fit, and the data and objects it acts on.

Everything a fit needs is checked here, before any work: a bad value is a
:class:`~pyrofail.errors.UsageError` naming it. The result is a frozen :class:`FitConfig` (plain
values: it is recorded with the fit and hashed to recognise a checkpoint) and a :class:`Problem`
(tensors and objects: the data on the device, the processes, the guide and objective specs).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pyrofail.errors import UsageError, check_choice, check_positive_float, check_positive_int
from pyrofail.labels import UNLABELLED, check_labels
from pyrofail.runs import RUN_FORMAT

__all__ = ["INITS", "FitConfig", "Problem", "resolve"]

INITS = ("paper", "random", "ground_truth")


@dataclass(frozen=True)
class FitConfig:
    """Every option of a fit, resolved to plain values (see :func:`pyrofail.fit`)."""

    n_train: int
    n_val: int
    data_dim: int
    latent_dim: int
    guide: str
    guide_options: dict
    objective: str
    objective_options: dict
    restarts: int
    steps: int
    batch_size: int
    lr: float
    seed: int
    device: str
    noise_scale: float | None
    learn_noise: bool
    learn_model: bool
    hidden: list
    activation: str
    init: str
    pretrain_steps: int
    warmup_steps: int
    eval_every: int
    procedure: str = "joint"
    procedure_options: dict = dataclasses.field(default_factory=dict)
    likelihood: str = "gaussian"
    noise_per_feature: bool = False
    num_classes: int | None = None  # labels: the semi-supervised M2 model (Kingma et al. 2014)
    format: int = RUN_FORMAT

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def key(self, *data: torch.Tensor) -> str:
        """A hash of the options (but the device) and the data, to refuse a checkpoint of
        another fit."""
        # options at their defaults leave the key as it was before they existed
        defaults = {
            "likelihood": "gaussian",
            "noise_per_feature": False,
            "procedure_options": {},
            "num_classes": None,
        }
        options = {
            k: v
            for k, v in self.as_dict().items()
            if k not in ("device", "procedure") and defaults.get(k, object()) != v
        }
        digest = hashlib.sha256(repr(sorted(options.items())).encode())
        for t in data:
            digest.update(t.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]


@dataclass
class Problem:
    """The tensors and objects of a fit: training and validation data, the ground truth and a
    given model (either may be ``None``), the guide and objective (a registered name or an
    object), and where to checkpoint and report progress."""

    x: torch.Tensor
    x_val: torch.Tensor
    y: torch.Tensor | None = None  # labels (long, -1 where unknown), for a semi-supervised fit
    y_val: torch.Tensor | None = None
    truth: object = None
    model: object = None
    guide: object = "mean_field"
    objective: object = "elbo"
    checkpoint: Path | None = None
    progress: bool = False
    callbacks: Sequence[Callable] = field(default_factory=tuple)
    compile: bool | None = None

    def data(self, device) -> tuple[tuple, tuple]:
        """``((x, [y]), (x_val, [y_val]))`` on ``device``: what SVI steps and validation take."""
        train = (self.x,) if self.y is None else (self.x, self.y)
        val = (self.x_val,) if self.y is None else (self.x_val, self.y_val)
        return tuple(t.to(device) for t in train), tuple(t.to(device) for t in val)


def as_data(name: str, x, data_dim: int | None) -> torch.Tensor | None:
    """``x`` as a finite float tensor ``(N, D)`` (from a tensor, an array or a Dataset)."""
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


def _device(device) -> torch.device:
    try:
        dev = torch.device(device)
        torch.empty(0, device=dev)
    except (RuntimeError, TypeError, AssertionError):
        raise UsageError(f"device {device!r} is not available here; use 'cpu'") from None
    return dev


def _name(spec) -> str:
    return spec if isinstance(spec, str) else type(spec).__name__


def resolve(
    x,
    *,
    y,
    y_val,
    truth,
    model,
    learn_model: bool,
    latent_dim: int | None,
    guide,
    objective,
    procedure: str,
    procedure_options: dict | None,
    restarts: int,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: str,
    noise_scale: float | None,
    learn_noise: bool,
    likelihood: str,
    noise_per_feature: bool,
    hidden: Sequence[int],
    activation: str,
    init: str,
    pretrain_steps: int,
    warmup_steps: int | None,
    x_val,
    val_fraction: float,
    guide_options: dict | None,
    objective_options: dict | None,
    eval_every: int | None,
    checkpoint: str | Path | None,
    progress: bool,
    callbacks: Sequence[Callable],
    compile: bool | None,
) -> tuple[FitConfig, Problem]:
    """Validate the options of :func:`pyrofail.fit` (which passes every one of them: its
    signature holds the defaults) and resolve the ones that depend on others."""
    if model is not None and truth is None and not learn_model:
        process = model
    else:
        process = truth if truth is not None else model
    data_dim = process.data_dim if process is not None else None
    x = as_data("x", x, data_dim)
    data_dim = x.shape[1]
    x_val = as_data("x_val", x_val, data_dim)
    num_classes = getattr(process, "num_classes", None)
    y = check_labels(y, x.shape[0], num_classes)
    if y is not None:
        num_classes = num_classes or int(y.max()) + 1
        if num_classes < 2:
            raise UsageError("labels y name a single class; a semi-supervised fit needs two or more")
        if x_val is not None:
            y_val = check_labels(y_val, x_val.shape[0], num_classes)
            if y_val is None:
                y_val = torch.full((x_val.shape[0],), UNLABELLED, dtype=torch.long)
    elif y_val is not None:
        raise UsageError("y_val= needs labels y= for the training points too")
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
    check_choice("likelihood", likelihood, ("gaussian", "bernoulli"))
    if likelihood == "bernoulli":
        if learn_noise or noise_per_feature or noise_scale is not None:
            raise UsageError("a Bernoulli likelihood has no noise scale; drop noise_scale/learn_noise")
        if not bool(((x == 0) | (x == 1)).all()):
            raise UsageError("likelihood='bernoulli' needs binary data (every value 0 or 1)")
    elif noise_scale is None:
        if process is not None and hasattr(process, "noise_scale"):
            noise_scale = float(process.noise_scale.reshape(-1)[0])
        elif learn_noise:
            noise_scale = 1.0
        else:
            raise UsageError("pass truth= or noise_scale=, or learn_noise=True")
    if noise_scale is not None:
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
        if y is not None:
            y, y_val = y[perm[n_val:]], y[perm[:n_val]]
    dev = _device(device)
    config = FitConfig(
        n_train=int(x.shape[0]),
        n_val=int(x_val.shape[0]),
        data_dim=data_dim,
        latent_dim=latent_dim,
        guide=_name(guide),
        guide_options=dict(guide_options or {}),
        objective=_name(objective),
        objective_options=dict(objective_options or {}),
        restarts=restarts,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=int(seed),
        device=str(dev),
        noise_scale=noise_scale,
        learn_noise=bool(learn_noise),
        learn_model=bool(learn_model),
        hidden=list(hidden),
        activation=activation,
        init=init,
        pretrain_steps=pretrain_steps,
        warmup_steps=warmup_steps,
        eval_every=eval_every,
        procedure=str(procedure),
        procedure_options=dict(procedure_options or {}),
        likelihood=likelihood,
        noise_per_feature=bool(noise_per_feature),
        num_classes=None if y is None else int(num_classes),
    )
    problem = Problem(
        x=x,
        x_val=x_val,
        y=y,
        y_val=y_val,
        truth=truth,
        model=model,
        guide=guide,
        objective=objective,
        checkpoint=None if checkpoint is None else Path(checkpoint),
        progress=progress,
        callbacks=tuple(callbacks),
        compile=None if compile is None else bool(compile),
    )
    return config, problem
