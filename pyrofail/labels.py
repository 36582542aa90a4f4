"""Class labels for semi-supervised data: a long tensor with ``-1`` where a label is unknown.

Shared by the labelled models, the M2 guide and its objectives (which must not import each
other): checking labels, hiding all but a fraction of them, and the one-hot code.
"""

from __future__ import annotations

import torch
from torch import nn

from pyrofail.errors import UsageError, check_positive_int

__all__ = ["UNLABELLED", "check_labels", "hide_labels", "one_hot"]

UNLABELLED = -1


def one_hot(y: torch.Tensor, num_classes: int, dtype=None) -> torch.Tensor:
    """``onehot(y)`` as floats, shape ``y.shape + (C,)`` (``y`` long, values in ``0..C-1``).

    Example:
        >>> import torch
        >>> one_hot(torch.tensor([1, 0]), 2)
        tensor([[0., 1.],
                [1., 0.]])
    """
    return nn.functional.one_hot(y.long(), num_classes).to(dtype or torch.get_default_dtype())


def check_labels(y, n: int, num_classes: int | None = None) -> torch.Tensor | None:
    """``y`` as a long tensor ``(N,)`` with values in ``{-1, 0, ..., C-1}`` (``-1``:
    unlabelled; no upper bound when ``num_classes`` is ``None``), or :class:`UsageError`
    naming what is wrong. ``None`` stays ``None``.

    Example:
        >>> import torch
        >>> check_labels(torch.tensor([0, -1, 1]), 3, 2)
        tensor([ 0, -1,  1])
    """
    if y is None:
        return None
    if hasattr(y, "y") and not isinstance(y, torch.Tensor):  # a Dataset
        y = y.y
    y = torch.as_tensor(y)
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.dim() != 1 or y.shape[0] != n:
        raise UsageError(
            f"labels y have dtype {y.dtype} and shape {tuple(y.shape)}; expected integers of shape ({n},)"
        )
    top = float("inf") if num_classes is None else num_classes
    if y.numel() and (int(y.min()) < UNLABELLED or int(y.max()) >= top):
        classes = "0, 1, ..." if num_classes is None else f"0..{num_classes - 1}"
        raise UsageError(
            f"labels y range over [{int(y.min())}, {int(y.max())}]; expected -1 (unlabelled) "
            f"or a class in {classes}"
        )
    return y.long()


def hide_labels(y, fraction: float = 0.1, seed: int = 0) -> torch.Tensor:
    r"""A copy of the labels ``y`` with all but ``round(fraction * N)`` of them set to ``-1``;
    the labelled points are a seeded uniform random subset (Kingma et al. 2014 keep a random
    labelled subset of fixed size).

    :param fraction: the labelled fraction, :math:`0 \le f \le 1` (default 10%).

    Example:
        >>> import torch
        >>> y = hide_labels(torch.arange(10) % 2, fraction=0.3, seed=0)
        >>> int((y >= 0).sum())
        3
    """
    y = torch.as_tensor(y)
    if y.dtype.is_floating_point or y.dim() != 1:
        raise UsageError(f"labels y have dtype {y.dtype} and shape {tuple(y.shape)}; expected integers (N,)")
    fraction = float(fraction)
    if not 0.0 <= fraction <= 1.0:
        raise UsageError(f"labelled fraction={fraction} is not allowed; expected 0 <= fraction <= 1")
    n = check_positive_int("len(y)", y.shape[0])
    keep = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))[: round(fraction * n)]
    out = torch.full_like(y.long(), UNLABELLED)
    out[keep.to(y.device)] = y.long()[keep.to(y.device)]
    return out
