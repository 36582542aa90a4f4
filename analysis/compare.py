r"""Posterior bias: how far a fitted guide is from the reference posterior, point by point.

:func:`compare` measures a guide :math:`q_\phi(z \mid x)` against the reference posterior
:math:`p_\theta(z \mid x)` of its model (:mod:`pyrofail.analysis.reference`) at every row of
``x``, and, given the ground truth, against the true posterior :math:`p_{GT}(z \mid x)` as
well. For every point it reports

* the ELBO, :math:`\mathbb E_q[\log p_\theta(x, z) - \log q_\phi(z \mid x)]` (Monte Carlo);
* :math:`\log p_\theta(x)`, from the reference (exact on the grid);
* the PMO gap, :math:`\log p_\theta(x) - \mathrm{ELBO}(x) = \mathrm{KL}(q \,\|\, p_\theta(z \mid x))`,
  which *is* the reverse KL (reported under both names);
* the forward KL,
  :math:`\mathrm{KL}(p \,\|\, q) = \mathbb E_p[\log p_\theta(x, z) - \log q(z \mid x)] - \log p_\theta(x)`,
  from the weighted reference draws; infinite where :math:`q` has no density at a draw;
* the mode-mass error, the total variation between the masses that :math:`p` and :math:`q`
  put on the modes of :math:`p` (:mod:`pyrofail.analysis.reference.modes`):
  :math:`\tfrac12 \sum_m |q(M_m) - p(M_m)|`; 0.5 when :math:`q` sits on one of two equal
  modes (reverse KL alone hides a dropped mode, this does not);
* the energy score of :math:`q` as a forecast of draws :math:`Z \sim p` (Gneiting & Raftery
  2007, "Strictly proper scoring rules", JASA 102(477), eq. 22),
  :math:`\mathrm{ES} = \mathbb E\lVert Y - Z\rVert - \tfrac12 \mathbb E\lVert Y - Y'\rVert` with
  :math:`Y, Y' \sim q`, and the energy distance
  :math:`2\,\mathbb E\lVert Y - Z\rVert - \mathbb E\lVert Y - Y'\rVert - \mathbb E\lVert Z - Z'\rVert
  \ge 0`, zero exactly when :math:`q = p` (Székely & Rizzo 2013): twice the excess of the
  guide's score over the reference's own;
* the Pareto :math:`\hat k` of the importance weights
  :math:`\log p_\theta(x, z_s) - \log q(z_s \mid x)`, :math:`z_s \sim q`, by PSIS (Vehtari,
  Simpson, Gelman, Yao & Gabry 2015/2024, JMLR 25(72); ``arviz.psislw``): above
  :func:`pareto_k_threshold` importance sampling from the guide is unreliable, the guide
  misses posterior mass (Yao, Vehtari, Simpson & Gelman 2018, "Yes, but did it work?").
  Exactly constant weights (a perfect guide) have no tail; their :math:`\hat k` is
  :math:`-\infty`.

With ``truth``, the same quantities for the ground-truth decoder (the guide against
:math:`p_{GT}(z \mid x)`, when the latent dimensions agree), the ``posterior_shift``, the
energy distance between the model's posterior :math:`p_\theta(z \mid x)` and the truth's (how
far the latent space moved), and the MLEO per point,
:math:`\log p_{GT}(x) - \log p_\theta(x)`, whose mean over draws of the truth estimates
:math:`\mathrm{KL}(p_{GT}(x) \,\|\, p_\theta(x))` (Yacoby, Pan & Doshi-Velez 2020,
arXiv:2007.07124, eq. 3).

Every Monte Carlo draw comes from ``seed``: the same call gives the same numbers, whatever the
memory budget (the points are compared in chunks, each block of :data:`POINT_BLOCK` points
drawing from its own seed).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch

from pyrofail import bounds, memory
from pyrofail.analysis import reference as _reference
from pyrofail.analysis.reference import modes as _modes
from pyrofail.analysis.reference import quality
from pyrofail.analysis.reference.modes import reference_modes
from pyrofail.bounds import POINT_BLOCK

__all__ = ["compare", "pareto_k_threshold"]

# Guide draws per point for the ELBO and PSIS: the ELBO's Monte Carlo error is then a few
# thousandths of a nat, and PSIS fits its Pareto tail to the largest 3 sqrt(S) ~ 95 weights.
GUIDE_SAMPLES = 1000
# Guide draws per point for the energy score (its cost is quadratic in them); the Monte
# Carlo error of the energy distance is then about 0.01 in units of z.
ENERGY_SAMPLES = 256


def pareto_k_threshold(num_samples: int) -> float:
    r""":math:`\min(1 - 1/\log_{10} S,\ 0.7)`: above it, PSIS with ``num_samples`` draws is
    unreliable (Vehtari et al. 2024, Section 3.2.4)."""
    return min(1.0 - 1.0 / math.log10(num_samples), 0.7)


def _double(module):
    return copy.deepcopy(module).double()


@torch.no_grad()
def _pareto_k(log_w: torch.Tensor) -> torch.Tensor:
    """PSIS :math:`\\hat k` per row of ``log_w`` ``(N, S)``; :math:`-\\infty` for constant rows."""
    import arviz as az

    lw = log_w.double().cpu().numpy()
    k = np.full(lw.shape[0], -np.inf)
    spread = lw.max(-1) - lw.min(-1)
    tailed = spread > 1e-9 * np.maximum(1.0, np.abs(lw).max(-1))
    if tailed.any():
        k[tailed] = np.asarray(az.psislw(lw[tailed].copy())[1], dtype=np.float64)
    return torch.from_numpy(k)


def _resample(z: torch.Tensor, lw: torch.Tensor, t: int, seed: int):
    """``t`` draws per point ``(N, t, K)`` resampled by weight from ``z`` ``(N, S, K)``, and
    their indices ``(N, t)``."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.multinomial(lw.exp().float().cpu(), t, replacement=True, generator=gen).to(z.device)
    return torch.gather(z, 1, idx[..., None].expand(-1, -1, z.shape[-1])), idx


@torch.no_grad()
def _energy(y: torch.Tensor, z: torch.Tensor, lw: torch.Tensor, seed: int, budget: int = 2**22):
    """Energy score and distance per point; guide draws ``y`` ``(N, T, K)``, reference draws
    ``z`` ``(N, S, K)`` with normalised log weights ``lw`` ``(N, S)``.

    The reference enters through ``T`` draws resampled by weight (seeded); the expectations
    over pairs are U-statistics, over pairs of distinct draws."""
    n, t, _ = y.shape
    zr, idx = _resample(z, lw, t, seed)
    distinct = (idx[:, :, None] != idx[:, None, :]).to(z.dtype)  # resampled duplicates
    chunk = max(1, budget // (3 * t * t))
    yz, yy, zz = [], [], []
    for i in range(0, n, chunk):
        yb, zb, db = y[i : i + chunk], zr[i : i + chunk], distinct[i : i + chunk]
        yz.append(torch.cdist(yb, zb).mean((-1, -2)))
        yy.append(torch.cdist(yb, yb).sum((-1, -2)) / (t * (t - 1)))
        zz.append((torch.cdist(zb, zb) * db).sum((-1, -2)) / db.sum((-1, -2)).clamp_min(1))
    e_yz, e_yy, e_zz = torch.cat(yz), torch.cat(yy), torch.cat(zz)
    return e_yz - 0.5 * e_yy, 2 * e_yz - e_yy - e_zz


class _Reference:
    """What the comparison reads of a reference, once: ``log p(x)`` ``(N,)``, the draws
    ``(N, S', K)`` with their normalised log weights ``(N, S')``, and the modes per point."""

    def __init__(self, ref, modes_of_ref, seed: int, like: torch.Tensor):
        self.log_px = _reference.log_px(ref)[0].to(like)
        zp, lwp = _reference.draws(ref)
        self.z, self.lw = zp.to(like), lwp.to(like)
        self.modes = modes_of_ref if modes_of_ref is not None else reference_modes(ref, seed=seed)


@torch.no_grad()
def _against(log_joint, q, zq: torch.Tensor, x: torch.Tensor, ref: _Reference, part: slice, seeds) -> dict:
    """Every per-point quantity of the guide distribution ``q`` of the points ``x`` (draws
    ``zq`` ``(S, n, K)``) against the posterior of ``log_joint`` given by ``ref`` at the points
    ``part`` of the reference; ``seeds``: one seed per block of :data:`POINT_BLOCK` points
    (the energy's resampling)."""
    log_w = log_joint(zq, x) - q.log_prob(zq)  # (S, n)
    elbo = log_w.mean(0)
    log_px = ref.log_px[part]
    zp, lwp = ref.z[part], ref.lw[part]  # (n, S', K), (n, S')
    lq = q.log_prob(zp.transpose(0, 1)).transpose(0, 1)  # (n, S')
    lj = log_joint(zp, x[:, None, :])  # (n, S')
    w = lwp.exp()
    # 0 * (-inf) is nan: weightless draws do not count, a draw with weight where q has no
    # density makes the forward KL infinite
    terms = torch.where(w > 0, lj - lq, torch.zeros_like(lj))
    forward = (w * terms).sum(-1) - log_px
    forward = torch.where(torch.isfinite(forward) | torch.isnan(forward), forward, torch.inf)
    ref_err, counts = [], []
    all_centres, all_labels = ref.modes
    for i, n in enumerate(range(part.start, part.stop)):
        centres, labels = all_centres[n].to(x), all_labels[n]
        p_mass = _modes.mode_masses(zp[i], centres, labels, lwp[i])
        q_mass = _modes.mode_masses(zq[:, i], centres, labels)
        ref_err.append(0.5 * (q_mass - p_mass).abs().sum())
        counts.append(float(p_mass.numel()))
    t = min(ENERGY_SAMPLES, zq.shape[0])
    score, distance = _blockwise_energy(zq[:t].transpose(0, 1), zp, lwp, seeds)
    pmo = log_px - elbo
    return {
        "elbo": elbo,
        "log_px": log_px,
        "pmo_gap": pmo,
        "reverse_kl": pmo,
        "forward_kl": forward,
        "mode_mass_error": torch.stack(ref_err).to(x),
        "n_modes": torch.tensor(counts, dtype=x.dtype),
        "energy_score": score,
        "energy_distance": distance,
        "pareto_k": _pareto_k(log_w.T).to(x),
    }


def _blockwise_energy(y, z, lw, seeds):
    """:func:`_energy` block by block of :data:`POINT_BLOCK` points, each resampling from its
    own seed."""
    parts = [
        _energy(y[i : i + POINT_BLOCK], z[i : i + POINT_BLOCK], lw[i : i + POINT_BLOCK], seed)
        for i, seed in zip(range(0, y.shape[0], POINT_BLOCK), seeds)
    ]
    return torch.cat([a for a, _ in parts]), torch.cat([b for _, b in parts])


def _summary(per_point: dict, num_samples: int, usable: torch.Tensor) -> dict:
    """Means (for k̂ the median and the share above the threshold) over the usable points."""
    out = {}
    for key, v in per_point.items():
        v = v.double()[usable]
        if v.numel() == 0:
            continue
        if key == "pareto_k":
            out["pareto_k_median"] = float(v.median())
            thr = pareto_k_threshold(num_samples)
            out["pareto_k_bad_share"] = float((v > thr).double().mean())
            out["pareto_k_threshold"] = thr
        else:
            out[key] = float(v.mean())
    return out


@torch.no_grad()
def compare(
    model,
    guide,
    x: torch.Tensor,
    reference=None,
    truth=None,
    *,
    truth_reference=None,
    method: str = "auto",
    num_samples: int = GUIDE_SAMPLES,
    num_draws: int = 1000,
    seed: int = 0,
    modes=None,
    truth_modes=None,
    gated: bool = True,
    gate_options: dict | None = None,
    budget=None,
) -> dict:
    r"""Posterior bias of ``guide`` (and ``model``) at every row of ``x`` (module docstring).

    Points where a reference fails its quality gate (:func:`pyrofail.analysis.reference.quality.gate`:
    this model's reference, and the truth's where the truth is compared) are left out of every
    mean and counted (``"usable"``, ``"excluded"``, ``"reasons"``); their per-point values are
    kept. ``gated=False`` uses every point; ``gate_options`` go to the gate.

    :param reference: the reference posterior of ``model`` at ``x``
        (:func:`pyrofail.analysis.reference.reference_posterior`); computed with ``method``
        and ``num_draws`` when not given.
    :param truth: the ground-truth process; adds the MLEO per point and the guide against the
        true posterior (``truth_reference``, computed when not given).
    :param num_samples: guide draws per point (ELBO, forward terms, PSIS).
    :param budget: the worker's memory budget (:mod:`pyrofail.memory`): the points are
        compared chunk by chunk within it; block :math:`b` of :data:`POINT_BLOCK` points draws
        from ``block_seed(seed, b)`` (:func:`pyrofail.bounds.block_seed`), so the budget never
        changes the numbers.
    :param modes, truth_modes: precomputed
        :func:`~pyrofail.analysis.reference.modes.reference_modes` of the two references.
    :returns: ``{"n_points", "reference_method", "usable" (N,) bool, "excluded", "reasons",
        "model": {"per_point", "mean"}, "truth": {...} or None, "mleo": {"per_point", "mean",
        "stderr"} or None}``; ``per_point`` holds float64 tensors ``(N,)`` of every quantity,
        ``mean`` their means over the usable points as floats (for :math:`\hat k` its median
        and the share of points above the threshold).
    """
    if reference is None:
        reference = _reference.reference_posterior(model, x, method, num_draws=num_draws, seed=seed)
    m, g = _double(model), _double(guide)
    xd = torch.as_tensor(x).double()
    if truth is not None and truth_reference is None:
        truth_reference = _reference.reference_posterior(truth, x, method, num_draws=num_draws, seed=seed)
    ref = _Reference(reference, modes, seed, xd)
    against_truth = truth is not None and truth.latent_dim == model.latent_dim
    if against_truth:
        t64, truth_ref = _double(truth), _Reference(truth_reference, truth_modes, seed, xd)
    n = xd.shape[0]
    per_model, per_truth = {}, {}
    # guide draws and log weights (S, n) and the reference's (n, S') for a chunk of points
    row = memory.model_row_bytes(m, g) * (num_samples + ref.z.shape[1])
    for lo, hi in memory.steps(n, memory.rows(budget, row, multiple=POINT_BLOCK)):
        blocks = range(lo // POINT_BLOCK, (hi - 1) // POINT_BLOCK + 1)
        zq = []
        for b in blocks:  # every block of points draws from its own seed, whatever the chunk
            with bounds.seeded(bounds.block_seed(seed, b)):
                q_block = g.distribution(xd[b * POINT_BLOCK : min(hi, (b + 1) * POINT_BLOCK)])
                zq.append(q_block.sample((num_samples,)))
        zq, q, part = torch.cat(zq, 1), g.distribution(xd[lo:hi]), slice(lo, hi)
        seeds = [bounds.block_seed(seed, b, 1) for b in blocks]
        _store(per_model, _against(m.log_joint, q, zq, xd[lo:hi], ref, part, seeds), part, n)
        if against_truth:
            _store(per_truth, _against(t64.log_joint, q, zq, xd[lo:hi], truth_ref, part, seeds), part, n)
            # how far the model's posterior is from the truth's: the latent space moved
            shift = []
            for b in blocks:
                i = slice(b * POINT_BLOCK, min(hi, (b + 1) * POINT_BLOCK))
                zm, _ = _resample(ref.z[i], ref.lw[i], ENERGY_SAMPLES, bounds.block_seed(seed, b, 2))
                shift.append(_energy(zm, truth_ref.z[i], truth_ref.lw[i], bounds.block_seed(seed, b, 3))[1])
            _store(per_truth, {"posterior_shift": torch.cat(shift)}, part, n)
    usable = torch.ones(xd.shape[0], dtype=torch.bool)
    reasons = [""] * xd.shape[0]
    if gated:
        refs = [("model", reference)] + ([("truth", truth_reference)] if truth is not None else [])
        for name, r in refs:
            q_ref = quality.gate(r, **(gate_options or {}))
            usable &= q_ref.ok
            reasons = [f"{a}; {name}: {b}".strip("; ") if b else a for a, b in zip(reasons, q_ref.reasons())]
    out = {
        "n_points": int(xd.shape[0]),
        "reference_method": _reference.method(reference),
        "usable": usable,
        "excluded": int((~usable).sum()),
        "reasons": reasons,
        "model": {"per_point": per_model, "mean": _summary(per_model, num_samples, usable)},
        "truth": None,
        "mleo": None,
    }
    if truth is None:
        return out
    log_px_truth = _reference.log_px(truth_reference)[0].double()
    diff = log_px_truth - per_model["log_px"]
    kept = diff[usable]
    out["mleo"] = {
        "per_point": diff,
        "mean": float(kept.mean()) if kept.numel() else math.nan,
        "stderr": float(kept.std() / math.sqrt(kept.numel())) if kept.numel() > 1 else 0.0,
    }
    if against_truth:
        out["truth"] = {"per_point": per_truth, "mean": _summary(per_truth, num_samples, usable)}
    return out


def _store(into: dict, values: dict, part: slice, n: int) -> None:
    """Write a chunk's per-point ``values`` into ``into`` at ``part`` (outputs allocated at the
    first chunk, float64, ``(N,)``)."""
    for key, v in values.items():
        if key not in into:
            into[key] = torch.empty(n, dtype=torch.float64)
        into[key][part] = v.double().cpu()
