"""Figures of fitted models. matplotlib is imported inside the functions (Agg backend), never
at module import, so that importing pyrofail stays cheap and works without a display."""

from __future__ import annotations

from pathlib import Path

import torch

from pyrofail.runs import atomic_write_bytes

__all__ = ["job_figures", "save"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save(fig, path) -> Path:
    """Save ``fig`` as PNG atomically and close it."""
    import io

    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


@torch.no_grad()
def _curve(model, latent_dim: int, n: int = 400, span: float = 3.0):
    z = torch.zeros(n, latent_dim)
    z[:, 0] = torch.linspace(-span, span, n)
    return z[:, 0], model.mean(z)


@torch.no_grad()
def job_figures(truth, model, data, folder, title: str = "", seed: int = 0) -> list[Path]:
    """Two figures for one fitted model: data against samples from the learned model, and the
    learned decoder :math:`f_\\theta` against the ground-truth :math:`f`."""
    plt = _pyplot()
    folder = Path(folder)
    n = min(len(data), 2000)
    x = data.x[:n].cpu()
    learned = model.sample(n, seed=seed + 7).x.cpu()
    d = x.shape[1]
    out = []

    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    if d == 1:
        bins = 60
        ax.hist(x[:, 0].numpy(), bins=bins, density=True, alpha=0.5, label="data")
        ax.hist(learned[:, 0].numpy(), bins=bins, density=True, alpha=0.5, label="learned model")
        ax.set_xlabel("x")
        ax.set_ylabel("density")
    else:
        ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.4, label="data")
        ax.scatter(learned[:, 0], learned[:, 1], s=2, alpha=0.4, label="learned model")
        ax.set_xlabel("x1")
        ax.set_ylabel("x2")
        ax.set_aspect("equal", adjustable="datalim")
    ax.legend(markerscale=4, fontsize=8)
    ax.set_title(f"{title}\ndata vs samples", fontsize=9)
    out.append(save(fig, folder / "samples.png"))

    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    zt, ft = _curve(truth, truth.latent_dim)
    k = model.latent_dim
    if d == 1:
        ax.plot(zt, ft[:, 0], "k--", lw=1.5, label="ground truth f(z)")
        if k == 1:
            zl, fl = _curve(model, 1)
            ax.plot(zl, fl[:, 0], lw=1.5, label="learned f(z)")
        ax.set_xlabel("z")
        ax.set_ylabel("f(z)")
    else:
        ax.scatter(x[:, 0], x[:, 1], s=1, c="0.85", label="data")
        ax.plot(ft[:, 0], ft[:, 1], "k--", lw=1.5, label="ground truth f(z)")
        if k == 1:
            zl, fl = _curve(model, 1)
            sc = ax.scatter(fl[:, 0], fl[:, 1], c=zl, s=4, cmap="viridis", label="learned f(z)")
        else:
            zs = torch.randn(3000, k, generator=torch.Generator().manual_seed(seed))
            fl = model.mean(zs)
            sc = ax.scatter(
                fl[:, 0], fl[:, 1], c=zs[:, 0], s=2, cmap="viridis", label="learned f(z), z ~ p(z)"
            )
        fig.colorbar(sc, ax=ax, label="z1", shrink=0.8)
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_xlabel("x1")
        ax.set_ylabel("x2")
    ax.legend(fontsize=8, markerscale=3)
    ax.set_title(f"{title}\ndecoder", fontsize=9)
    out.append(save(fig, folder / "decoder.png"))
    return out
