"""The guide contract shared by every variational family."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from pyrofail.nn import Batched, data_plates


class AmortizedGuide(Batched, PyroModule):
    """Base of amortized guides: the Pyro guide samples ``"z"`` from :meth:`distribution`.

    Subclasses implement only ``distribution(x)``: a torch distribution over ``z`` with batch
    shape ``(N,)`` (``(R, N)`` when batched) and event shape ``(latent_dim,)``. The analysis
    calls ``sample`` and ``log_prob`` on it directly.
    """

    latent_dim: int
    data_dim: int

    def distribution(self, x: torch.Tensor) -> dist.Distribution:
        raise NotImplementedError

    def forward(self, x: torch.Tensor | None = None, n: int | None = None):
        with data_plates(x.shape[-2], self.restarts):
            return pyro.sample("z", self.distribution(x))
