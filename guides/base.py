"""The guide contract shared by every variational family."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from pyrofail.errors import check_positive_float, check_positive_int
from pyrofail.nn import Batched, data_plates

__all__ = ["AmortizedGuide"]


class AmortizedGuide(Batched, PyroModule):
    """Base of amortized guides: the Pyro guide samples ``"z"`` from :meth:`distribution`.

    Subclasses implement only ``distribution(x)``: a torch distribution over ``z`` with batch
    shape ``(N,)`` (``(R, N)`` when batched) and event shape ``(latent_dim,)``. The analysis
    calls ``sample`` and ``log_prob`` on it directly.
    """

    latent_dim: int
    data_dim: int

    def __init__(self, latent_dim=None, data_dim=None, min_scale=None, restarts: int | None = None):
        """Check and keep what the built-in families share (a guide of your own may set its
        attributes itself and call this with no arguments)."""
        super().__init__()
        if latent_dim is not None:
            self.latent_dim = check_positive_int("latent_dim", latent_dim)
        if data_dim is not None:
            self.data_dim = check_positive_int("data_dim", data_dim)
        if min_scale is not None:
            self.min_scale = check_positive_float("min_scale", min_scale)
        self.restarts = restarts

    def distribution(self, x: torch.Tensor) -> dist.Distribution:
        raise NotImplementedError

    def forward(self, x: torch.Tensor | None = None, n: int | None = None):
        with data_plates(x.shape[-2], self.restarts):
            return pyro.sample("z", self.distribution(x))
