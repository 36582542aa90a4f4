r"""The reference posterior :math:`p(z \mid x)` of any model, as an ArviZ ``InferenceData``.

``reference_posterior(model, x, method)`` computes, for every row of ``x``:

* ``"grid"``: exact quadrature (:mod:`pyrofail.analysis.grid`), :math:`K \le 2`; draws are
  independent and exactly weighted;
* ``"nuts"``: Pyro's NUTS, any :math:`K` (:mod:`pyrofail.analysis.nuts`);
* ``"auto"``: the grid where :math:`K \le 2`, NUTS otherwise.

Layout of the returned ``InferenceData`` (dimensions in brackets), the same for every method,
so that every consumer reads draws through :func:`draws` and never cares how they were made:

``posterior``
    ``z`` [chain, draw, point, latent]: draws, one chain for independent draws.
``sample_stats``
    ``log_weight`` [chain, draw, point]: normalised log importance weights of the draws
    (:math:`\log(1/S)` when unweighted); ``lp`` [chain, draw, point]: the log density
    :math:`\log p(x, z)` at each draw (ArviZ's name for it), which mode finding uses;
    ``diverging`` [chain, draw, point] for NUTS.
``observed_data``
    ``x`` [point, data]: the data points.
``marginal``
    ``log_px``, ``log_px_stderr`` [point]: :math:`\log p(x)` and its standard error.
``moments``
    ``mean`` [point, latent], ``cov`` [point, latent, latent_]: posterior moments (exact for
    the grid, weighted draw moments otherwise).
``diagnostics``
    per-point diagnostics of the method: ``boundary_mass`` (grid); ``rhat``, ``ess``,
    ``divergences``, ``pareto_k``, ``missing_mass``, ``num_modes``, ``mode_mass``
    [point, mode] (NUTS).

Attributes of the ``posterior`` group record the provenance (method, seed, options, package
versions), as posteriordb does for its reference posteriors.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from pyrofail.errors import UsageError

METHODS = ("auto", "grid", "nuts")
GRID_MAX_K = 2
GRID_DRAWS = 1000
NUTS_DRAWS = 2000


def _np(t) -> np.ndarray:
    return t.detach().cpu().double().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def build_inference_data(
    *,
    z: torch.Tensor,
    log_weight: torch.Tensor,
    x: torch.Tensor,
    log_px: torch.Tensor,
    log_px_stderr: torch.Tensor,
    mean: torch.Tensor,
    cov: torch.Tensor,
    diagnostics: dict,
    attrs: dict,
    diverging: torch.Tensor | None = None,
    lp: torch.Tensor | None = None,
):
    """Assemble the reference layout above from tensors; ``z`` is ``(chain, draw, N, K)``."""
    import arviz as az
    import xarray as xr

    sample_stats = {"log_weight": _np(log_weight)}
    dims = {"z": ["point", "latent"], "log_weight": ["point"], "x": ["point", "data"]}
    if diverging is not None:
        sample_stats["diverging"] = _np(diverging).astype(bool)
        dims["diverging"] = ["point"]
    if lp is not None:
        sample_stats["lp"] = _np(lp)
        dims["lp"] = ["point"]
    idata = az.from_dict(
        posterior={"z": _np(z)},
        sample_stats=sample_stats,
        observed_data={"x": _np(x)},
        dims=dims,
    )
    idata.add_groups(
        {
            "marginal": xr.Dataset(
                {"log_px": ("point", _np(log_px)), "log_px_stderr": ("point", _np(log_px_stderr))}
            ),
            "moments": xr.Dataset(
                {"mean": (("point", "latent"), _np(mean)), "cov": (("point", "latent", "latent_"), _np(cov))}
            ),
            "diagnostics": xr.Dataset(
                {
                    k: (("point",) + tuple(f"{k}_{i}" for i in range(v.dim() - 1)), _np(v))
                    for k, v in diagnostics.items()
                }
            ),
        }
    )
    idata.posterior.attrs.update(
        {k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in attrs.items()}
    )
    return idata


def _provenance(method: str, seed: int, options: dict) -> dict:
    from pyrofail.runs import versions

    return {"method": method, "seed": int(seed), "options": options, "versions": versions()}


def _grid_reference(model, x, num_draws: int, seed: int, options: dict):
    from pyrofail.analysis.grid import grid_posterior

    post = grid_posterior(model, x, num_draws=num_draws, seed=seed, **options)
    n = x.shape[0]
    z = post.draws.transpose(0, 1).unsqueeze(0)  # (1, S, N, K)
    lp = _log_joint(model, z[0], x.to(z.dtype))[None]  # (1, S, N)
    log_w = torch.full((1, num_draws, n), -float(np.log(num_draws)), dtype=torch.float64)
    return build_inference_data(
        z=z,
        log_weight=log_w,
        x=x,
        log_px=post.log_marginal,
        log_px_stderr=torch.zeros(n, dtype=torch.float64),
        mean=post.mean,
        cov=post.cov,
        diagnostics={"boundary_mass": post.boundary_mass},
        attrs={**_provenance("grid", seed, options), "mesh": post.mesh_info},
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
    :func:`pyrofail.analysis.grid.grid_posterior` (``tol``, ``radius``, ...); for ``"nuts"``
    those of :func:`pyrofail.analysis.nuts.nuts_reference`.
    """
    if method not in METHODS:
        raise UsageError(f"unknown reference method {method!r}; choose one of: {', '.join(METHODS)}")
    if isinstance(x, torch.Tensor) is False:
        x = torch.as_tensor(x)
    if x.dim() != 2 or x.shape[1] != model.data_dim:
        raise UsageError(f"x has shape {tuple(x.shape)}; expected (N, {model.data_dim})")
    if method == "auto":
        method = "grid" if model.latent_dim <= GRID_MAX_K else "nuts"
    if method == "grid":
        if model.latent_dim > GRID_MAX_K:
            raise UsageError(
                f"method='grid' needs latent_dim <= {GRID_MAX_K}, got {model.latent_dim}; use method='nuts'"
            )
        return _grid_reference(model, x, GRID_DRAWS if num_draws is None else num_draws, seed, options)
    from pyrofail.analysis.nuts import nuts_reference

    num_draws = NUTS_DRAWS if num_draws is None else num_draws
    return nuts_reference(model, x, num_draws=num_draws, seed=seed, **options)


def draws(ref) -> tuple[torch.Tensor, torch.Tensor]:
    """``(z, log_w)``: draws ``(N, S, K)`` (chains concatenated) and their normalised log
    weights ``(N, S)`` as float64 tensors."""
    z = torch.as_tensor(ref.posterior["z"].values)  # (C, S, N, K)
    lw = torch.as_tensor(ref.sample_stats["log_weight"].values)  # (C, S, N)
    c, s, n, k = z.shape
    z = z.permute(2, 0, 1, 3).reshape(n, c * s, k)
    lw = lw.permute(2, 0, 1).reshape(n, c * s)
    return z.double(), torch.log_softmax(lw.double(), -1)


def log_density(ref) -> torch.Tensor | None:
    """``log p(x, z)`` at the draws, ``(N, S)`` in the order of :func:`draws`, or ``None`` for a
    reference written before it was stored."""
    if "lp" not in ref.sample_stats:
        return None
    lp = torch.as_tensor(ref.sample_stats["lp"].values).double()  # (C, S, N)
    c, s, n = lp.shape
    return lp.permute(2, 0, 1).reshape(n, c * s)


def log_marginal(ref) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log_px, stderr)`` per point."""
    return (
        torch.as_tensor(ref.marginal["log_px"].values),
        torch.as_tensor(ref.marginal["log_px_stderr"].values),
    )


def method(ref) -> str:
    return str(ref.posterior.attrs["method"])


def save(ref, path) -> Path:
    """Write ``ref`` as netCDF atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.unlink(tmp)  # netCDF writers create the file themselves, with the usual mode
    try:
        ref.to_netcdf(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load(path):
    """Read a reference written by :func:`save`; a foreign file is a :class:`UsageError`."""
    import arviz as az

    try:
        ref = az.from_netcdf(path)
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist") from None
    except Exception as e:  # noqa: BLE001 - any reader failure means "not a reference file"
        raise UsageError(f"{path} is not a netCDF reference posterior ({type(e).__name__})") from None
    groups = set(ref.groups())
    if not {"posterior", "sample_stats", "marginal"} <= groups or "method" not in ref.posterior.attrs:
        raise UsageError(f"{path} is not a pyrofail reference posterior")
    return ref
