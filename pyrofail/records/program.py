"""What the check of a user's own Pyro program writes (``program.json``): the guide against
its own model's posterior, how hard the posteriors are, and what follows — numbers and
decisions, no sentences (:func:`pyrofail.program_check.check`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from pyrofail.estimate import Estimate
from pyrofail.records.schema import Record, encode

__all__ = ["ProgramCheck"]


@dataclass(frozen=True)
class ProgramCheck(Record):
    """The check's measures over the points whose reference passed its quality gate, and its
    decisions (:mod:`pyrofail.program_check`); ``per_point`` holds every point's values (``usable``
    marks the gated points)."""

    KIND = "program_check"
    VERSION = 1

    n_points: int
    usable: int
    reference: str
    latent_dim: int
    guide_family: str
    neg_elbo: Estimate
    neg_log_px: Estimate
    pmo_gap: Estimate
    kl_star: Estimate
    share_hard: Estimate
    hard_share_needed: float
    amortization_gap: Estimate
    forward_kl: Estimate
    mode_mass_error: Estimate
    pareto_k_bad_share: float
    gap_large: bool
    hard: bool
    richer_family: str
    amortization: str
    verdict: str
    seed: int
    program: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    per_point: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        """A JSON record (the same as the run folder's ``program.json``, less its header)."""
        return encode(self, type(self))

    def point_values(self, key: str) -> torch.Tensor:
        return torch.as_tensor(self.per_point[key])
