"""Figures of fitted BNN+LV regressions: posterior predictive bands over the data, one panel per
method. matplotlib is imported inside the functions (Agg backend), never at module import."""

from __future__ import annotations

from pathlib import Path

import torch

from pyrofail.analysis.figures.plots import _pyplot, save
from pyrofail.errors import UsageError

__all__ = ["predictive_bands"]


@torch.no_grad()
def predictive_bands(
    results: dict,
    x: torch.Tensor,
    y: torch.Tensor,
    path,
    *,
    title: str = "",
    seed: int = 0,
    num_points: int = 200,
    num_z: int = 10,
    num_draws: int = 200,
    samples: int = 5,
) -> Path:
    r"""One panel per fitted model (``results``: name -> :class:`~pyrofail.bnn.BNNPosterior`) with
    the data ``x`` ``(N, 1)``, ``y`` ``(N,)`` as dots, and over a grid of ``num_points`` inputs
    spanning the data the posterior predictive's mean and its 5–95% band, from
    ``num_draws`` weight draws :math:`\times` ``num_z`` prior latents each, output noise included
    (:meth:`~pyrofail.bnn.BNNPosterior.predictive`), and ``samples`` of those draws per grid
    input as dots (a band cannot show a bimodal predictive; the dots can). Saved as PNG at
    ``path``; one input dimension only.

    Example:
        >>> import tempfile, pyrofail.bnn as bnn
        >>> x = torch.linspace(-1, 1, 20)[:, None]; y = x[:, 0]
        >>> post = bnn.infer(x, y, hidden=(4,), steps=5, num_draws=10)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     predictive_bands({"mean_field": post}, x, y, f"{d}/bands.png").name
        'bands.png'
    """
    if x.dim() != 2 or x.shape[1] != 1:
        raise UsageError(
            f"x of shape {tuple(x.shape)} is not allowed; predictive bands need one input (N, 1)"
        )
    if not results:
        raise UsageError("results is empty; expected at least one fitted model")
    plt = _pyplot()
    lo, hi = float(x.min()), float(x.max())
    pad = 0.05 * (hi - lo)
    grid = torch.linspace(lo - pad, hi + pad, num_points)[:, None]
    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.6), sharey=True, squeeze=False)
    for ax, (name, post) in zip(axes[0], results.items()):
        draws = post.thin(num_draws).predictive(grid, num_z=num_z, seed=seed)
        q05, q95 = torch.quantile(draws, torch.tensor([0.05, 0.95], dtype=draws.dtype), dim=0)
        ax.scatter(x[:, 0], y, s=3, color="0.4", alpha=0.5, label="data")
        ax.fill_between(grid[:, 0], q05, q95, alpha=0.25, color="C0", label="5–95%")
        # a few predictive draws per input show what a band hides: two branches, or one
        few = draws[:: max(1, draws.shape[0] // samples)][:samples]
        ax.scatter(grid[:, 0].expand_as(few), few, s=1, color="C1", alpha=0.35, label="predictive draws")
        ax.plot(grid[:, 0], draws.mean(0), color="C0", lw=1.5, label="mean")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("x")
    axes[0][0].set_ylabel("y")
    axes[0][0].legend(fontsize=7, markerscale=3)
    if title:
        fig.suptitle(title, fontsize=10)
    return save(fig, path)
