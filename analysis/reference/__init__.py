r"""The reference posterior :math:`p(z \mid x)` of any model, as an ArviZ ``InferenceData``.

``reference_posterior(model, x, method)`` computes, for every row of ``x``:

* ``"grid"``: exact quadrature (:mod:`pyrofail.analysis.reference.grid`), :math:`K \le 2`; draws are
  independent and exactly weighted;
* ``"nuts"``: Pyro's NUTS, any :math:`K` (:mod:`pyrofail.analysis.reference.nuts`);
* ``"auto"``: the grid where :math:`K \le 2`, NUTS otherwise.
The returned ``InferenceData`` has the same layout for every method
(:mod:`pyrofail.analysis.reference.idata`), so every consumer reads draws through
:func:`~pyrofail.analysis.reference.idata.draws` and never cares how they were made.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from pyrofail.analysis.reference import grid, nuts
from pyrofail.analysis.reference.idata import (
    build_inference_data,
    draws,
    load,
    log_density,
    log_px,
    method,
    provenance,
    save,
)
from pyrofail.errors import UsageError

__all__ = ["METHODS", "draws", "load", "log_density", "log_px", "method", "reference_posterior", "save"]

METHODS = ("auto", "grid", "nuts")
GRID_DRAWS = 1000
NUTS_DRAWS = 2000


def _grid_reference(model, x, num_draws: int, seed: int, options: dict):
    post = grid.grid_posterior(model, x, num_draws=num_draws, seed=seed, **options)
    n = x.shape[0]
    z = post.draws.transpose(0, 1).unsqueeze(0)  # (1, S, N, K)
    lp = _log_joint(model, z[0], x.to(z.dtype))[None]  # (1, S, N)
    log_w = torch.full((1, num_draws, n), -float(np.log(num_draws)), dtype=torch.float64)
    return build_inference_data(
        z=z,
        log_weight=log_w,
        x=x,
        log_px=post.log_px,
        log_px_stderr=torch.zeros(n, dtype=torch.float64),
        mean=post.mean,
        cov=post.cov,
        diagnostics={"boundary_mass": post.boundary_mass, "unresolved_mass": post.unresolved_mass},
        attrs={**provenance("grid", seed, options), "mesh": post.mesh_info},
        lp=lp,
    )


@torch.no_grad()
def _log_joint(model, z: torch.Tensor, x: torch.Tensor, budget: int = 2**18) -> torch.Tensor:
    """``log p(x_n, z[s, n])`` for draws ``z`` ``(S, N, K)``, in float64, chunked: ``(S, N)``."""
    work = model if _is_double(model) else copy.deepcopy(model).double()
    per = max(1, budget // max(1, x.shape[0]))
    x = x.double()
    return torch.cat([work.log_joint(z[i : i + per].double(), x) for i in range(0, z.shape[0], per)])


def _is_double(model) -> bool:
    return all(t.dtype == torch.float64 for t in list(model.parameters()) + list(model.buffers()))


def reference_posterior(
    model, x: torch.Tensor, method: str = "auto", *, num_draws: int | None = None, seed: int = 0, **options
):
    """The reference posterior of ``model`` at every row of ``x`` (see the module docstring).

    ``num_draws`` per point defaults to 1000 for the grid (independent draws) and 2000 for NUTS
    (four chains of 500). ``options`` go to the method: for ``"grid"`` those of
    :func:`pyrofail.analysis.reference.grid.grid_posterior` (``tol``, ``radius``, ...); for ``"nuts"``
    those of :func:`pyrofail.analysis.reference.nuts.nuts_reference`.
    """
    if method not in METHODS:
        raise UsageError(f"unknown reference method {method!r}; choose one of: {', '.join(METHODS)}")
    if isinstance(x, torch.Tensor) is False:
        x = torch.as_tensor(x)
    if x.dim() != 2 or x.shape[1] != model.data_dim:
        raise UsageError(f"x has shape {tuple(x.shape)}; expected (N, {model.data_dim})")
    if method == "auto":
        method = "grid" if model.latent_dim <= grid.MAX_K else "nuts"
    if method == "grid":
        if model.latent_dim > grid.MAX_K:
            raise UsageError(
                f"method='grid' needs latent_dim <= {grid.MAX_K}, got {model.latent_dim}; use method='nuts'"
            )
        return _grid_reference(model, x, GRID_DRAWS if num_draws is None else num_draws, seed, options)
    num_draws = NUTS_DRAWS if num_draws is None else num_draws
    return nuts.nuts_reference(model, x, num_draws=num_draws, seed=seed, **options)
