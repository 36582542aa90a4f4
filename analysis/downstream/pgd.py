r"""Projected gradient ascent for the attacks of :mod:`pyrofail.analysis.downstream.attacks`
(which re-exports what is public here): the ball, its projection, the random starts run as one
batch, the step schedule, and the scale an attack radius is measured in.

Example:
    >>> _project(torch.tensor([[0.5, -2.0]]), 1.0, "linf").tolist()
    [[0.5, -1.0]]
"""

from __future__ import annotations

import math

import torch

from pyrofail.errors import UsageError, check_choice, check_positive_float, check_positive_int

__all__ = ["NORMS", "RESTARTS", "STEP_FRACTION", "data_scale"]

NORMS = ("linf", "l2")
# The first step is a quarter of the radius and the steps shrink by a half cosine to zero at the
# last: large enough early to cross the ball and leave a poor start, small enough late to settle
# on the maximiser (a fixed step of Madry et al.'s 2.5 eps / steps stalls a few per cent short of
# the exact answer on a linear-Gaussian encoder, whatever the number of steps).
STEP_FRACTION = 0.25
# random starts per point, the best kept (attacks module docstring: why ten)
RESTARTS = 10


def data_scale(x) -> float:
    r"""The scale an attack radius is measured in: the mean over features of the standard
    deviation of ``x`` ``(N, D)`` (ddof 1),
    :math:`s = \frac1D \sum_d \operatorname{sd}(x_{\cdot d})`.

    Why this one: an :math:`\ell_\infty` budget bounds every coordinate separately, so its
    natural unit is a coordinate's spread; the mean keeps a single radius (a cube, not a box)
    and, unlike the range, does not grow with the number of points or with one outlier.

    Example:
        >>> round(data_scale(torch.tensor([[0.0, 0.0], [2.0, 4.0]])), 4)  # sds 1.414 and 2.828
        2.1213
    """
    x = torch.as_tensor(x)
    if x.dim() != 2 or x.shape[0] < 2:
        raise UsageError(f"x has shape {tuple(x.shape)}; expected (points >= 2, features)")
    value = float(x.double().std(0).mean())
    if not (value > 0 and math.isfinite(value)):
        raise UsageError(f"the data's scale is {value!r}; expected the features to vary")
    return value


# ----------------------------------------------------------------------------------------
# projected gradient ascent


def _project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    length = delta.norm(dim=-1, keepdim=True)
    return delta * (eps / length.clamp_min(torch.finfo(delta.dtype).tiny)).clamp(max=1.0)


def _ascent_step(delta, grad, step: float, norm: str):
    if norm == "linf":
        return delta + step * grad.sign()
    length = grad.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(grad.dtype).tiny)
    return delta + step * grad / length


def _random_start(shape, eps: float, norm: str, gen: torch.Generator, dtype, device):
    """Uniform in the ``linf`` cube or the ``l2`` ball of radius ``eps`` (per row)."""
    if norm == "linf":
        u = torch.rand(shape, generator=gen, dtype=dtype) * 2 - 1
        return (eps * u).to(device)
    direction = torch.randn(shape, generator=gen, dtype=dtype)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    radius = torch.rand(shape[:-1] + (1,), generator=gen, dtype=dtype) ** (1.0 / shape[-1])
    return (eps * radius * direction).to(device)


def _corner_search(objective, xt, eps: float, best_delta, best_value, keep) -> None:
    r"""Greedy search over the corners of the cube from each row's best point: its corner
    :math:`\varepsilon \operatorname{sign}(\delta)`, then single-coordinate sign flips, the
    best improving flip per row taken, until none improves (at most ``D`` rounds of ``D``
    evaluations). Sign ascent stops at a corner where every coordinate's gradient sign agrees
    with it, which can be a local maximum; a flip is a jump across the cube it cannot make.
    Only improvements are kept, so this never lowers the attack's value."""
    corner = eps * torch.where(best_delta >= 0, 1.0, -1.0).to(xt.dtype)
    keep(corner, objective(xt + corner))
    corner = best_delta.clone()
    current = best_value.clone()
    dims = xt.shape[-1]
    for _ in range(dims):
        values = []
        for k in range(dims):
            flipped = corner.clone()
            flipped[:, k] = -flipped[:, k]
            values.append(objective(xt + flipped))
        values = torch.stack(values)  # (D, rows)
        top, which = values.max(0)
        better = top > current * (1 + 1e-12) + 1e-300
        if not better.any():
            return
        rows = torch.nonzero(better).squeeze(-1)
        corner[rows, which[rows]] = -corner[rows, which[rows]]
        current = torch.where(better, top, current)
        keep(corner, current)


def _pgd(
    objective,
    x: torch.Tensor,
    eps: float,
    norm: str,
    steps: int,
    step,
    restarts: int,
    seed: int,
    corners: bool = True,
):
    """Per-point maximiser of ``objective`` over the ball, and its value. All restarts run as
    one batch: ``objective`` takes ``(restarts * N, D)`` points, restart ``r`` of point ``i``
    in row ``r * N + i`` (``x.repeat(restarts, 1)``). For ``linf`` with ``corners``, every
    restart's best point is then improved by :func:`_corner_search`. Returns ``(delta (N, D), value (N,),
    found_by (N,))``, ``found_by`` counting the restarts within 0.1% of the best value."""
    n = x.shape[0]
    xt = x.repeat(restarts, 1)
    gen = torch.Generator().manual_seed(int(seed))
    best_delta = torch.zeros_like(xt)
    best_value = torch.full(xt.shape[:-1], -math.inf, dtype=x.dtype, device=x.device)

    def keep(delta, value):
        better = value > best_value
        best_value[better] = value[better]
        best_delta[better] = delta[better]

    delta = _random_start(xt.shape, eps, norm, gen, x.dtype, x.device)
    for t in range(steps):
        size = step * 0.5 * (1.0 + math.cos(math.pi * t / steps))
        delta.requires_grad_(True)
        with torch.enable_grad():
            value = objective(xt + delta)
            (grad,) = torch.autograd.grad(value.sum(), delta)
        delta = delta.detach()
        keep(delta, value.detach())
        delta = _project(_ascent_step(delta, grad, size, norm), eps, norm)
    with torch.no_grad():
        keep(delta, objective(xt + delta))
        if norm == "linf" and corners:
            _corner_search(objective, xt, eps, best_delta, best_value, keep)
    per_restart = best_value.reshape(restarts, n)
    value, which = per_restart.max(0)
    rows = which * n + torch.arange(n, device=x.device)
    found_by = (per_restart >= value - 1e-3 * value.abs()).sum(0)
    return best_delta[rows], value, found_by


def _check(guide, x, eps, scale, norm, steps, restarts):
    if getattr(guide, "restarts", None) is not None:
        raise UsageError("the attack needs an un-batched guide; pick one restart (take_restart) first")
    x = torch.as_tensor(x)
    if x.dim() != 2 or x.shape[-1] != guide.data_dim:
        raise UsageError(f"x has shape {tuple(x.shape)}; expected (points, {guide.data_dim})")
    return (
        x.detach(),
        check_positive_float("eps", eps) * check_positive_float("scale", scale),
        check_choice("norm", norm, NORMS),
        check_positive_int("steps", steps),
        check_positive_int("restarts", restarts),
    )


def _step(step_size, scale: float, radius: float) -> float:
    """The first step's absolute length: ``step_size`` in the units of ``eps``, or a
    :data:`STEP_FRACTION` of the radius."""
    if step_size is None:
        return STEP_FRACTION * radius
    return check_positive_float("step_size", step_size) * scale


def _summary(values: torch.Tensor) -> tuple[float, float]:
    v = values.detach().double()
    se = float(v.std() / math.sqrt(v.numel())) if v.numel() > 1 else float("nan")
    return float(v.mean()), se


# ----------------------------------------------------------------------------------------
# the encoder's divergence
