r"""Figures of posterior bias: posteriors at chosen points, and the PMO gap over data space.

matplotlib is imported inside the functions (Agg backend, through
:func:`pyrofail.analysis.figures.plots.save`), never at module import.

* :func:`posterior_figure`: one panel per chosen :math:`x`; the ground truth's posterior
  :math:`p_{GT}(z \mid x)` filled in grey, and for every fit its guide :math:`q_\phi(z \mid x)`
  (solid) and its model's posterior :math:`p_\theta(z \mid x)` (dashed, same colour). For
  :math:`K = 1` the densities are exact, :math:`\exp(\log p(x, z) - \log p(x))` on a line of
  :math:`z` with :math:`\log p(x)` from the reference; for :math:`K \ge 2`, histograms of the
  first coordinate (weighted reference draws, guide draws).
* :func:`pmo_gap_figure`: one panel per fit, every test point coloured by its PMO gap
  :math:`\log p_\theta(x) - \mathrm{ELBO}(x)` (for :math:`D = 1`, the gap against :math:`x`),
  with the chosen points marked by their panel letters and the truth's curve drawn over
  them; every panel on one square-root colour scale (up to the 99th percentile of all).
"""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import torch

from pyrofail.analysis.figures.plots import _pyplot, save
from pyrofail.analysis.reference import idata as _reference

__all__ = ["choose_points", "pmo_gap_figure", "posterior_figure"]

COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")


def choose_points(score, count: int = 4) -> list[int]:
    """Indices of ``count`` points spread over the range of ``score`` (e.g. the truth's KL*):
    the highest, then quantiles down to the lowest, without repeats."""
    score = torch.as_tensor(score, dtype=torch.float64)
    order = torch.argsort(score, descending=True, stable=True)
    n = order.numel()
    picks = []
    for q in np.linspace(0.0, 1.0, count):
        i = int(order[min(n - 1, int(round(q * (n - 1))))])
        if i not in picks:
            picks.append(i)
    return picks


@torch.no_grad()
def _density_line(log_joint, x: torch.Tensor, log_px: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``exp(log p(x, z) - log p(x))`` for every point of ``x`` ``(M, D)`` on the line ``z``
    ``(G, 1)``: ``(M, G)``."""
    lj = log_joint(z[:, None, :], x[None, :, :]).T  # (M, G)
    return torch.exp(lj - log_px[:, None])


@torch.no_grad()
def posterior_figure(path, truth, truth_reference, indices, fits, title: str = "") -> Path:
    """Posterior panels at the points ``indices`` of ``truth_reference``.

    :param fits: ``[(label, model, guide, reference), ...]``: each fit's model and guide and
        the reference posterior of its model at the same points (``None`` to leave the model's
        posterior out).
    """
    plt = _pyplot()
    x_all = torch.as_tensor(truth_reference.observed_data["x"].values, dtype=torch.float64)
    idx = torch.as_tensor(list(indices))
    x = x_all[idx]
    k = truth.latent_dim
    zt, lwt = _reference.draws(truth_reference)
    zt, lwt = zt[idx], lwt[idx]
    fig, axes = plt.subplots(1, len(idx), figsize=(3.4 * len(idx), 3.0), squeeze=False)
    guides = [g.double() for _, _, g, _ in fits]
    for j, ax in enumerate(axes[0]):
        letter = string.ascii_uppercase[j]
        draws_j = zt[j, :, 0]
        # the line covers the truth's draws and the bulk of every guide
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(j)
            spans = [draws_j] + [g.distribution(x[j : j + 1]).sample((200,))[:, 0, 0] for g in guides]
        lo = min(float(torch.quantile(v, 0.005)) for v in spans)
        hi = max(float(torch.quantile(v, 0.995)) for v in spans)
        lo, hi = min(lo, float(draws_j.min())), max(hi, float(draws_j.max()))
        pad = 0.1 * (hi - lo) + 0.05
        line = torch.linspace(lo - pad, hi + pad, 1000, dtype=torch.float64)[:, None]
        if k == 1:
            log_px = _reference.log_px(truth_reference)[0][idx].double()
            dens = _density_line(truth.double().log_joint, x[j : j + 1], log_px[j : j + 1], line)[0]
            ax.fill_between(line[:, 0], dens, color="0.8", label="truth p(z|x)")
        else:
            w = lwt[j].exp().numpy()
            ax.hist(draws_j.numpy(), bins=60, weights=w, density=True, color="0.8", label="truth p(z₁|x)")
        for c, ((label, model, _, ref), g) in enumerate(zip(fits, guides)):
            colour = COLOURS[c % len(COLOURS)]
            q = g.distribution(x[j : j + 1])
            if model.latent_dim == 1:
                dens_q = q.log_prob(line[:, None, :])[:, 0].exp()
                ax.plot(line[:, 0], dens_q, color=colour, lw=1.5, label=label)
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(j)
                    zq = q.sample((4000,))
                ax.hist(
                    zq[:, 0, 0].numpy(), bins=60, density=True, histtype="step", color=colour, label=label
                )
            if ref is None:
                continue
            if model.latent_dim == 1:
                lp = _reference.log_px(ref)[0][idx].double()
                dens = _density_line(model.double().log_joint, x[j : j + 1], lp[j : j + 1], line)[0]
                ax.plot(line[:, 0], dens, color=colour, lw=1.0, ls="--")
            else:
                zm, lwm = _reference.draws(ref)
                ax.hist(
                    zm[idx[j], :, 0].numpy(),
                    bins=60,
                    weights=lwm[idx[j]].exp().numpy(),
                    density=True,
                    histtype="step",
                    ls="--",
                    color=colour,
                )
        coords = ", ".join(f"{v:.2f}" for v in x[j].tolist())
        ax.set_title(f"{letter}: x = ({coords})", fontsize=9)
        ax.set_xlabel("z" if k == 1 else "z₁")
        ax.set_yticks([])
    # the legend below the panels, where it hides no density
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=7, frameon=False)
    fig.suptitle(f"{title}\nsolid: guide q(z|x); dashed: the fit's model posterior p_θ(z|x)", fontsize=9)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return save(fig, path)


@torch.no_grad()
def pmo_gap_figure(path, x, gaps, marked=None, truth=None, title: str = "") -> Path:
    """The PMO gap at every test point, one panel per fit.

    :param x: test points ``(N, D)``; ``gaps``: ``{label: per-point PMO gap (N,)}``;
        ``marked``: points ``(M, D)`` to label A, B, ... (those of :func:`posterior_figure`);
        ``truth``: a process whose curve :math:`f(z)` is drawn under the points (``D = 2``,
        ``K = 1``).
    """
    plt = _pyplot()
    from matplotlib.colors import PowerNorm

    x = torch.as_tensor(x, dtype=torch.float64)
    values = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in gaps.items()}
    fig, axes = plt.subplots(1, max(1, len(values)), figsize=(4.4 * max(1, len(values)), 3.8), squeeze=False)
    # one colour scale for every panel, so that colours compare across fits; a square-root
    # scale keeps the detail of a fit whose gaps are all small
    top = max(float(torch.quantile(torch.cat(list(values.values())), 0.99)), 1e-3) if values else 1.0
    norm = PowerNorm(0.5, vmin=0.0, vmax=top)
    for ax, (label, v) in zip(axes[0], values.items()):
        if x.shape[1] == 1:
            ax.scatter(x[:, 0], v, s=3, c=v.clamp(0, top), cmap="viridis", norm=norm)
            ax.set_xlabel("x")
            ax.set_ylabel("PMO gap (nats)")
        else:
            sc = ax.scatter(x[:, 0], x[:, 1], s=4, c=v.clamp(0, top), cmap="viridis", norm=norm)
            if truth is not None and truth.latent_dim == 1:
                zl = torch.linspace(-3.5, 3.5, 600, dtype=torch.float64)[:, None]
                fl = truth.double().mean(zl)
                ax.plot(fl[:, 0], fl[:, 1], color="white", lw=0.8, alpha=0.7, label="truth f(z)")
            ax.set_xlabel("x1")
            ax.set_ylabel("x2")
            ax.set_aspect("equal", adjustable="datalim")
            fig.colorbar(sc, ax=ax, shrink=0.8, label="PMO gap (nats)")
        if marked is not None:
            for j, p in enumerate(torch.as_tensor(marked, dtype=torch.float64)):
                yy = float(p[1]) if p.numel() > 1 else top * 0.95
                ax.annotate(
                    string.ascii_uppercase[j],
                    (float(p[0]), yy),
                    fontsize=9,
                    weight="bold",
                    color="red",
                    ha="center",
                    va="center",
                )
        ax.set_title(f"{label}\nmean {float(v.mean()):.3f} nats", fontsize=9)
    fig.suptitle(
        f"{title}: PMO gap log p_θ(x) − ELBO(x) per test point (one colour scale; white: the truth's "
        "f(z); A–D: the points of the posterior figure)",
        fontsize=8,
    )
    fig.tight_layout()
    return save(fig, path)
