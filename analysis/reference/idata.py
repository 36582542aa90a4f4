r"""How a reference posterior is stored: an ArviZ ``InferenceData``, read and written here.

The layout (dimensions in brackets), the same for every method,
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
    per-point diagnostics of the method: ``boundary_mass`` and ``unresolved_mass`` (grid);
    ``rhat`` (over all chains), ``rhat_within_modes``, ``ess``, ``divergences``, ``pareto_k``,
    ``missing_mass``, ``unrepresented_mass``, ``num_modes``, ``mode_mass`` [point, mode] (NUTS:
    the modes of the draws, then the maxima no draw covers; with ``missing_mass`` they sum to
    1). :mod:`pyrofail.analysis.reference.quality` gates on them.

Attributes of the ``posterior`` group record the provenance (method, seed, options, package
versions), as posteriordb does for its reference posteriors.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from pyrofail.errors import UsageError
from pyrofail.runs import versions

__all__ = ["build_inference_data", "draws", "load", "log_density", "log_px", "method", "provenance", "save"]


def arviz():
    """ArviZ, imported on first use without its banner of FutureWarnings about its own
    coming refactor (nothing a pyrofail user can act on)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz as az
    return az


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
    import xarray as xr

    az = arviz()

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


def provenance(method: str, seed: int, options: dict) -> dict:
    return {"method": method, "seed": int(seed), "options": options, "versions": versions()}


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


def log_px(ref) -> tuple[torch.Tensor, torch.Tensor]:
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
    try:
        ref = arviz().from_netcdf(path)
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist") from None
    except Exception as e:  # noqa: BLE001 - any reader failure means "not a reference file"
        raise UsageError(f"{path} is not a netCDF reference posterior ({type(e).__name__})") from None
    groups = set(ref.groups())
    if not {"posterior", "sample_stats", "marginal"} <= groups or "method" not in ref.posterior.attrs:
        raise UsageError(f"{path} is not a pyrofail reference posterior")
    return ref
