"""What a fit returns (:class:`FitResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from pyrofail.nn import take_restart

__all__ = ["FitResult"]


@dataclass
class FitResult:
    """What :func:`pyrofail.fit` returns.

    ``model`` and ``guide`` are the selected restart as ordinary, un-batched objects;
    ``restarts`` has one record per restart (initialisation, final validation objective,
    the step where it diverged or ``None``); ``history`` holds the validation objective of
    every restart at every evaluation step; ``config`` is the fully resolved configuration.
    """

    model: torch.nn.Module
    guide: torch.nn.Module
    best: int
    restarts: list[dict]
    history: dict
    config: dict
    batched_model: torch.nn.Module = field(repr=False)
    batched_guide: torch.nn.Module = field(repr=False)
    objective: object = field(repr=False, default=None)

    def restart(self, r: int):
        """``(model, guide)`` of restart ``r``, un-batched."""
        return take_restart(self.batched_model, r), take_restart(self.batched_guide, r)
