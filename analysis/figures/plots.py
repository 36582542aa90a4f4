"""Figures of fitted models. matplotlib is imported inside the functions (Agg backend), never
at module import, so that importing pyrofail stays cheap and works without a display."""

from __future__ import annotations

from pathlib import Path

import torch

from pyrofail.analysis.semisupervised import counterfactual_error
from pyrofail.runs import atomic_write_bytes

__all__ = [
    "class_curves_figure",
    "failure_map_figure",
    "job_figures",
    "noise_figure",
    "robustness_figure",
    "save",
]


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


def _device(model) -> torch.device:
    """Where a model's tensors live (the CPU for one without any)."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


@torch.no_grad()
def _curve(model, latent_dim: int, n: int = 400, span: float = 3.0):
    """``(z_1, f(z))`` along the first latent axis, the others at zero, on the model's device."""
    z = torch.zeros(n, latent_dim, device=_device(model))
    z[:, 0] = torch.linspace(-span, span, n, device=z.device)
    return z[:, 0], model.mean(z)


def _principal_axes(x: torch.Tensor) -> torch.Tensor:
    """The two leading principal directions ``(D, 2)`` of ``x``, to draw many features; a
    complete basis, so that two directions exist even for fewer than two distinct points."""
    centred = x - x.mean(0)
    return torch.linalg.svd(centred, full_matrices=True).Vh[:2].T


@torch.no_grad()
def job_figures(truth, model, data, folder, title: str = "", seed: int = 0) -> list[Path]:
    """Figures of one fitted model: data against samples from the learned model (for more
    than two features, on the data's two leading principal axes), and, given the ground
    truth, the learned decoder :math:`f_\\theta` against the true :math:`f`."""
    plt = _pyplot()
    folder = Path(folder)
    n = min(len(data), 2000)
    x = data.x[:n].cpu()
    learned = model.sample(n, seed=seed + 7).x.cpu()
    d = x.shape[1]
    out = []
    if d > 2:
        axes = _principal_axes(x.double())
        mean = x.double().mean(0)
        x, learned = (x.double() - mean) @ axes, (learned.double() - mean) @ axes

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
        ax.set_xlabel("x1" if d <= 2 else "first principal axis of the data")
        ax.set_ylabel("x2" if d <= 2 else "second principal axis")
        ax.set_aspect("equal", adjustable="datalim")
    ax.legend(markerscale=4, fontsize=8)
    ax.set_title(f"{title}\ndata vs samples", fontsize=9)
    out.append(save(fig, folder / "samples.png"))
    if truth is None or d > 2:
        return out

    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    zt, ft = (t.cpu() for t in _curve(truth, truth.latent_dim))
    k = model.latent_dim
    if d == 1:
        ax.plot(zt, ft[:, 0], "k--", lw=1.5, label="ground truth f(z)")
        if k == 1:
            zl, fl = (t.cpu() for t in _curve(model, 1))
            ax.plot(zl, fl[:, 0], lw=1.5, label="learned f(z)")
        ax.set_xlabel("z")
        ax.set_ylabel("f(z)")
    else:
        ax.scatter(x[:, 0], x[:, 1], s=1, c="0.85", label="data")
        ax.plot(ft[:, 0], ft[:, 1], "k--", lw=1.5, label="ground truth f(z)")
        if k == 1:
            zl, fl = (t.cpu() for t in _curve(model, 1))
            sc = ax.scatter(fl[:, 0], fl[:, 1], c=zl, s=4, cmap="viridis", label="learned f(z)")
        else:
            zs = torch.randn(3000, k, generator=torch.Generator().manual_seed(seed))
            fl = model.mean(zs.to(_device(model))).cpu()
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


def failure_map_figure(path, model: str, rows: list) -> Path:
    """The failure map of one process over its noise scale σ: the MLEO of the MFG-VAE and of
    its comparator (± two standard errors), and the share of hard points (Cx1) on a second axis,
    each σ labelled with its verdict. ``rows``: :class:`~pyrofail.records.verdict.FailureMapRow`
    records."""
    plt = _pyplot()
    rows = sorted(rows, key=lambda r: r.sigma)
    sigma = [r.sigma for r in rows]
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    ax.errorbar(
        sigma,
        [r.mleo_mfg.mean for r in rows],
        yerr=[2 * (r.mleo_mfg.stderr or 0.0) for r in rows],
        marker="o",
        capsize=3,
        label="MFG-VAE (mean-field, ELBO)",
    )
    pts = [r for r in rows if r.mleo_other is not None]
    if pts:
        ax.errorbar(
            [r.sigma for r in pts],
            [r.mleo_other.mean for r in pts],
            yerr=[2 * (r.mleo_other.stderr or 0.0) for r in pts],
            marker="s",
            capsize=3,
            label=f"comparator ({pts[0].other})",
        )
    ax.axhline(0.0, color="0.6", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("noise scale σ of the ground truth")
    ax.set_ylabel("MLEO = KL(p_GT(x) ‖ p_θ(x)), nats")
    for r in rows:
        ax.annotate(
            r.failure, (r.sigma, r.mleo_mfg.mean), textcoords="offset points", xytext=(4, 6), fontsize=7
        )
    twin = ax.twinx()
    twin.plot(sigma, [r.share_hard.mean for r in rows], "k:", marker="x", label="share of hard points (Cx1)")
    twin.set_ylabel("share of x with hard true posteriors", fontsize=8)
    twin.set_ylim(0, 1)
    handles = ax.get_legend_handles_labels()
    extra = twin.get_legend_handles_labels()
    ax.legend(handles[0] + extra[0], handles[1] + extra[1], fontsize=7, loc="upper left")
    ax.set_title(f"{model}: where along σ the failure appears (error bars: two standard errors)", fontsize=8)
    return save(fig, path)


def robustness_figure(path, process: str, records: dict) -> Path:
    """The encoder attack over its radius ε: per job, KL(q(z|x) ‖ q(z|x + δ)) at the worst δ
    found (mean ± two standard errors over the attacked points; solid) and the truth's exact
    posterior shift under the same δ (dashed, where the truth's posterior is exact).
    ``records``: ``{job: JobTasks}`` (:mod:`pyrofail.records.downstream`)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    for i, (job, rec) in enumerate(sorted(records.items())):
        rows = rec.robustness
        eps = [r.eps for r in rows]
        colour = f"C{i % 10}"
        ax.errorbar(
            eps, [r.mean.mean for r in rows], yerr=[2 * (r.mean.stderr or 0.0) for r in rows], color=colour,
            marker="o", capsize=3, label=job,
        )  # fmt: skip
        if all(r.truth_kl is not None for r in rows):
            ideal = [float(torch.tensor(r.truth_kl).mean()) for r in rows]
            ax.plot(eps, ideal, color=colour, ls="--", lw=1)
    ax.set_xlabel("attack radius ε (ℓ∞, in units of the data's mean per-feature sd)")
    ax.set_ylabel("KL(q(z|x) ‖ q(z|x+δ)), nats")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.set_title(f"{process}: the encoder under attack (dashed: the exact posterior, same δ)", fontsize=8)
    return save(fig, path)


def probe_figure(path, name: str, records: dict) -> Path:
    """The robustness curve of a representation: per job, the test accuracy of a linear
    classifier on the encoder means under the encoder attack of radius ε (± two standard
    errors of a proportion; ε = 0 is the clean accuracy). ``records``: ``{job: DataTasks}``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    for i, (job, rec) in enumerate(sorted(records.items())):
        if rec.probe is None:
            continue
        p = rec.probe
        ax.errorbar(
            p.eps, [a.mean for a in p.accuracy], yerr=[2 * (a.stderr or 0.0) for a in p.accuracy], marker="o",
            capsize=3, color=f"C{i % 10}", label=job,
        )  # fmt: skip
    ax.set_xlabel("attack radius ε (ℓ∞, in units of the data's mean per-feature sd)")
    ax.set_ylabel("test accuracy of a linear probe")
    ax.legend(fontsize=7)
    ax.set_title(f"{name}: the representation under attack", fontsize=8)
    return save(fig, path)


def noise_figure(path, process: str, learned: dict) -> Path:
    """Signal and noise: the learned σ over the latent dimension K, one line per family and
    objective (the mean over the restarts ± two standard errors; ×: the selected fit's σ), the
    truth's σ dashed. Below the line, part of the noise is modelled as signal.

    :param learned: ``{job: (config, LearnedNoise)}`` (:mod:`pyrofail.records.downstream`).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    lines: dict[tuple, list] = {}
    truth = None
    for config, rec in learned.values():
        lines.setdefault((config.guide, config.objective), []).append((config.latent_dim, rec))
        truth = rec.truth
    for i, ((guide, objective), rows) in enumerate(sorted(lines.items())):
        rows.sort(key=lambda row: row[0])
        ks = [k + 0.04 * (i - len(lines) / 2) for k, _ in rows]  # side by side at each K
        over = [rec.over_restarts for _, rec in rows]
        err = [2 * (o.stderr or 0.0) if o is not None else 0.0 for o in over]
        mean = [rec.selected if o is None else o.mean for (_, rec), o in zip(rows, over)]
        ax.errorbar(
            ks, mean, yerr=err, marker="o", capsize=3, color=f"C{i % 10}", label=f"{guide} / {objective}",
        )  # fmt: skip
        ax.scatter(ks, [rec.selected for _, rec in rows], marker="x", color=f"C{i % 10}", zorder=3)
    ax.axhline(truth, color="k", ls="--", lw=1, label="the truth's σ")
    ax.set_xlabel("latent dimension K")
    ax.set_ylabel("learned σ")
    ax.set_xticks(sorted({c.latent_dim for c, _ in learned.values()}))
    ax.legend(fontsize=7)
    ax.set_title(f"{process}: the learned noise over K", fontsize=8)
    return save(fig, path)


@torch.no_grad()
def class_curves_figure(truth, model, data, folder, title: str = "", arrows: int = 6) -> list[Path]:
    """The semi-supervised model's class curves :math:`z \\mapsto f_\\theta(z, y)` over the
    truth's (dashed), on the test data coloured by class, with the counterfactuals of a few test
    points ("had it been of the other class"): an arrow to the learned one and a dotted one to
    the truth's (:func:`pyrofail.analysis.semisupervised.counterfactual_error`)."""
    plt = _pyplot()
    folder = Path(folder)
    fig, ax = plt.subplots(figsize=(5.0, 4.2))
    x, y = data.x.cpu(), data.y.cpu()
    for c, colour in ((0, "tab:blue"), (1, "tab:orange")):
        pts = x[y == c]
        ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.3, color=colour, label=f"data, y = {c}")
        z = torch.linspace(-3, 3, 400, dtype=torch.float64)[:, None]
        labels = torch.full((400,), c, dtype=torch.long)
        ft = truth.double().curve(z, labels)
        fl = model.double().curve(z.to(model.log_noise.device), labels.to(model.log_noise.device)).cpu()
        ax.plot(ft[:, 0], ft[:, 1], "--", color=colour, lw=1.2, label=f"true f(z, {c})")
        ax.plot(fl[:, 0], fl[:, 1], "-", color=colour, lw=1.8, label=f"learned f(z, {c})")
    picks = torch.linspace(0, len(x) - 1, arrows).long()
    cf = counterfactual_error(model, None, x[picks].double(), y[picks], truth)
    for i, p in enumerate(picks.tolist()):
        start = tuple(x[p].tolist())
        for end, style in ((cf["counterfactuals"][i], "-"), (cf["true_counterfactuals"][i], ":")):
            ax.annotate(
                "", xy=tuple(end.tolist()), xytext=start, arrowprops={"arrowstyle": "->", "ls": style}
            )
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend(fontsize=6, markerscale=3, loc="lower center", ncol=2)
    ax.set_title(f"{title}\nclass curves; counterfactuals: learned (solid), true (dotted)", fontsize=8)
    return [save(fig, folder / "class_curves.png")]
