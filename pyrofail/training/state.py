"""The state of a fit's SVI loop, and its checkpoint (as NumPyro's ``SVIState``: what a
resumed fit needs to continue exactly where an uninterrupted one would be)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from pyrofail.errors import AllRestartsDiverged, UsageError
from pyrofail.runs import RUN_FORMAT, atomic_torch_save, load_checkpoint

__all__ = ["FitState"]


@dataclass
class FitState:
    """Where the loop stands: the next ``step``; which restarts are still ``active`` (a
    boolean ``(R,)`` tensor) and the step each frozen one ``diverged_at``; the validation
    ``history``; the ``running`` mean of the training loss; the optimiser's moments and, once
    read from a checkpoint, the global torch random state to resume with."""

    active: torch.Tensor
    diverged_at: list
    step: int = 0
    history: dict = field(default_factory=lambda: {"step": [], "validation": [], "train_loss": []})
    running: float | None = None
    optim: dict | None = None
    torch_rng: torch.Tensor | None = None

    @classmethod
    def start(cls, restarts: int, device) -> FitState:
        return cls(
            active=torch.ones(restarts, dtype=torch.bool, device=device), diverged_at=[None] * restarts
        )

    def freeze(self, dead: torch.Tensor, step: int) -> None:
        """Mark the ``dead`` restarts (a boolean mask) as diverged at ``step``."""
        for r in (dead & self.active).nonzero().flatten().tolist():
            self.diverged_at[r] = step
        self.active &= ~dead

    def check_alive(self) -> None:
        if not self.active.any():
            raise AllRestartsDiverged(
                f"every restart diverged (non-finite loss) at steps {self.diverged_at}; "
                "lower lr= or check the data scale"
            )

    def save(self, path: Path | None, key: str, bmodel, bguide, optim) -> None:
        """Write a checkpoint (tensors and plain containers only: it loads with
        ``weights_only=True``); nothing without a ``path``."""
        if path is None:
            return
        atomic_torch_save(
            {
                "format": RUN_FORMAT,
                "key": key,
                "step": self.step,
                "model": bmodel.state_dict(),
                "guide": bguide.state_dict(),
                "active": self.active.cpu(),
                "diverged_at": torch.tensor([-1 if d is None else d for d in self.diverged_at]),
                "history": self.history,
                "torch_rng": torch.get_rng_state(),
                "optim": optim.get_state(),
                "running": self.running,
            },
            path,
        )

    @classmethod
    def load(cls, path: Path, key: str, bmodel, bguide, device) -> FitState:
        """Read a checkpoint written by :meth:`save` for the same options and data (``key``),
        loading the weights into ``bmodel`` and ``bguide``."""
        saved = load_checkpoint(path, map_location=device)
        if saved.get("key") != key:
            raise UsageError(
                f"checkpoint {path} was written with other options; "
                "use another checkpoint path or the original options"
            )
        bmodel.load_state_dict(saved["model"])
        bguide.load_state_dict(saved["guide"])
        state = cls(
            active=saved["active"].to(device),
            diverged_at=[None if d < 0 else int(d) for d in saved["diverged_at"].tolist()],
            step=saved["step"],
            history=saved["history"],
            running=saved["running"],
            optim=saved["optim"],
            torch_rng=saved["torch_rng"],
        )
        state.check_alive()
        return state
