r"""Which failure of Yacoby, Pan & Doshi-Velez (2020) is at work, from the conditions of the paper.

At its optimum the ELBO trades the maximum-likelihood term against the posterior-matching
term (arXiv:2007.07124, eq. 3). The paper names the conditions under which a mean-field
Gaussian (MFG) VAE fails:

* **Cx1 = Cz1**: the true posterior :math:`p_{GT}(z \mid x)` of the ground-truth decoder is
  hard for a mean-field Gaussian to approximate for a large share of :math:`x`;
* **Cx2**: no decoder with simpler posteriors fits :math:`p(x)` well: the MFG-VAE then pays
  for simpler posteriors with a wrong :math:`p(x)` (a *data-distribution* failure);
* **Cz2**: such a decoder exists: the MFG-VAE keeps :math:`p(x)` and learns it, with a wrong
  latent space instead (a *latent-space* failure).

This module decides each condition from measured numbers and returns the decision as a
:class:`~pyrofail.records.verdict.Verdict` (codes and numbers; the report writes the words).
*How hard a posterior is for a mean-field Gaussian* is KL*, the smallest reverse KL any
mean-field Gaussian reaches at that point (:func:`pyrofail.analysis.hardness.best_mean_field`);
a posterior is *hard* when KL* > :data:`HARD_KL` :math:`= -\log 0.9`, the cost of a Gaussian
that fits one mode exactly and misses a tenth of the mass. Cx1 holds when the share of hard
points reaches :func:`cx1_share`, the share whose cost to any mean-field encoder (share × the
mean KL* of the hard points, what the hard posteriors add to the −ELBO) is two of its standard
errors above zero: the *sampling* error of that cost over the points, paired per point as every
other comparison here — not the Monte Carlo error of an estimate (a noisier estimator would
ask for more), nor the unpaired error of the test −ELBO itself, which on a real table is
dominated by the rows' own spread of log p(x).

*Whether the MFG-VAE traded* is read off its learned model :math:`p_\theta`: its posteriors
are simpler when :math:`\overline{\mathrm{KL}^*_{GT}} - \overline{\mathrm{KL}^*_\theta}` exceeds
:data:`MARGIN_NATS`, and it paid with :math:`p(x)` when its MLEO exceeds that of a richer
family's model (IWAE, a richer guide; the paper's check) by more than :data:`MARGIN_NATS`:
both differences are paired over the same points, and must also exceed two standard errors;
:math:`p(x)` is kept when its difference stays below the margin even two standard errors up.
With fewer than :data:`MIN_ROWS` test points no standard error can be trusted, and the verdict
is "undetermined"; a claim that p(x) is *kept* (a latent-space failure) also needs
:func:`rows_needed` test points, the number at which a difference of the margin would have been
detected, while a difference detected beyond the margin needs no more.
"""

from __future__ import annotations

import math

import torch

from pyrofail.analysis import reference as _reference
from pyrofail.analysis.compare import compare
from pyrofail.analysis.hardness import HARD_KL, best_mean_field
from pyrofail.analysis.reference.modes import reference_modes
from pyrofail.estimate import Estimate
from pyrofail.records.verdict import Evidence, Flag, Side, Verdict

__all__ = [
    "COLLAPSED_NATS",
    "MARGIN_NATS",
    "MIN_ROWS",
    "conclude",
    "cost_error",
    "cx1_share",
    "diagnose",
    "evidence",
    "rows_needed",
    "training_flags",
]

# Differences of p(x) (MLEO) or of posterior cost (KL*) below this are not attributed to
# the objective: it is the restart-to-restart spread of the test objectives in Table 1 of
# Yacoby et al. (0.02 to 0.11 nats).
MARGIN_NATS = 0.05
# Fewer test points than this leave the standard error of a mean itself unreliable.
MIN_ROWS = 30
# z-values of a two-sided 5% test and of 80% power
_Z_TEST, _Z_POWER = 1.959964, 0.841621
# A fit is flagged as under-trained when a validation objective (nats per point) shows more
# than this: ground-truth-started restarts ending below random ones, or still rising at the end.
TRAINING_NATS = 0.01
# A stand-in whose latent carries less than this (nats per latent dimension, the encoder's
# mutual information) has collapsed: its model ignores z, every posterior is the prior, and its
# KL* (zero) says nothing about the data's posteriors.
COLLAPSED_NATS = 0.01


def cx1_share(cost_error: float, hard_kl_mean: float = HARD_KL) -> float:
    r"""The share of points Cx1 asks for ("a large proportion of x"): the share at which the
    cost the truth imposes on any mean-field encoder at its hard points, share ×
    ``hard_kl_mean`` nats (the mean KL* over the points with KL* > :data:`HARD_KL`, so at least
    share × :data:`HARD_KL`), reaches two standard errors (``cost_error``, its sampling error
    over the points); below it the hard posteriors' cost cannot be told from zero. Capped at 1:
    a value of 1 means even every point being hard would not be measurable (see :func:`conclude`).

    Example:
        >>> round(cx1_share(0.005), 3)  # a test -ELBO known to 0.005 nats, posteriors just hard
        0.095
        >>> round(cx1_share(0.005, hard_kl_mean=0.7), 3)  # far from mean-field where hard
        0.014
        >>> cx1_share(1.0)  # four test rows: nothing the posteriors cost could be seen
        1.0
    """
    return min(1.0, 2.0 * float(cost_error) / max(float(hard_kl_mean), HARD_KL))


def cost_error(kl_star) -> float:
    """The sampling error over the points of the hard posteriors' mean cost, KL* where it
    exceeds :data:`HARD_KL` and 0 elsewhere (at least 1e-12, so that no hard point at all never
    meets a share of 0; infinite for a single point)."""
    kl = torch.as_tensor(kl_star, dtype=torch.float64)
    error = Estimate.of(torch.where(kl > HARD_KL, kl, torch.zeros_like(kl))).stderr
    return math.inf if error is None else max(error, 1e-12)


def rows_needed(differences, margin: float = MARGIN_NATS) -> int:
    r"""Test points needed to detect a paired difference of ``margin`` nats with a two-sided 5%
    test at 80% power, :math:`n = ((z_{0.975} + z_{0.8})\, s_d / \text{margin})^2` with
    :math:`s_d` the spread of the per-point ``differences``; at least :data:`MIN_ROWS`.

    Example:
        >>> import torch
        >>> d = torch.tensor([0.3, -0.3] * 50, dtype=torch.float64)  # sd 0.30
        >>> rows_needed(d)
        286
    """
    d = torch.as_tensor(differences, dtype=torch.float64)
    sd = float(d.std()) if d.numel() > 1 else math.inf
    if not math.isfinite(sd):
        return MIN_ROWS if d.numel() > 1 else 10**9
    return max(MIN_ROWS, math.ceil(((_Z_TEST + _Z_POWER) * sd / margin) ** 2))


def _exceeds(diff: Estimate) -> bool:
    """Above the margin, and by more than two standard errors from zero."""
    return diff.mean > MARGIN_NATS and diff.verdict() == "greater"


def _within(diff: Estimate) -> bool:
    """Below the margin even at two standard errors above the estimate."""
    return diff.stderr is not None and diff.mean + 2 * diff.stderr <= MARGIN_NATS


def _tensor(values):
    return torch.as_tensor(values, dtype=torch.float64)


def _side(d: dict, hard: torch.Tensor) -> Side:
    kl, pmo = _tensor(d["kl"]), _tensor(d["pmo_gap"])
    shift = d.get("posterior_shift")
    return Side(
        job=d["job"],
        kl_star=Estimate.of(kl),
        share_hard=Estimate.of((kl > HARD_KL).double()),
        mleo=Estimate.of(_tensor(d["mleo"])),
        pmo_gap=Estimate.of(pmo),
        pmo_gap_hard=float(pmo[hard].mean()) if bool(hard.any()) else None,
        pmo_gap_easy=float(pmo[~hard].mean()) if bool((~hard).any()) else None,
        pmo_share_hard=float(pmo[hard].sum() / pmo.sum()) if float(pmo.sum()) > 0 else None,
        posterior_shift=None if shift is None else Estimate.of(_tensor(shift)),
    )


def evidence(truth_kl, mean_field: dict, richer: dict | None = None) -> Evidence:
    r"""The numbers the conditions are decided on.

    :param truth_kl: :math:`\mathrm{KL}^*_{GT}(x)` per analysis point (:func:`best_mean_field`
        of the ground truth, or of the best-fitting model that stands in for it).
    :param mean_field: the MFG-VAE (mean-field guide, ELBO): ``{"job", "kl"`` (KL* of its model
        at the same analysis points), ``"pmo_gap"`` (at the analysis points), ``"mleo"``
        (:math:`\log p_{GT}(x) - \log p_\theta(x)` per test point), optionally
        ``"posterior_shift"`` (per analysis point)``}``.
    :param richer: the same for a richer family's model (IWAE, a richer guide), or ``None``:
        then :math:`p(x)` is compared with the truth's (MLEO against 0).
    """
    kl_gt = _tensor(truth_kl)
    hard = kl_gt > HARD_KL
    error = cost_error(kl_gt)
    hard_mean = float(kl_gt[hard].mean()) if bool(hard.any()) else HARD_KL
    mleo_mf = _tensor(mean_field["mleo"])
    mleo_rich = _tensor(richer["mleo"]) if richer is not None else torch.zeros_like(mleo_mf)
    return Evidence(
        n_points=int(kl_gt.numel()),
        n_test=int(mleo_mf.numel()),
        hard_kl=HARD_KL,
        margin_nats=MARGIN_NATS,
        truth_kl=Estimate.of(kl_gt),
        truth_share_hard=Estimate.of(hard.double()),
        cx1_share=cx1_share(error, hard_mean),
        cx1_reachable=2.0 * error / max(hard_mean, HARD_KL) <= 1.0,
        cost_error=error,
        mean_field=_side(mean_field, hard),
        richer=None if richer is None else _side(richer, hard),
        simpler=Estimate.paired(kl_gt, _tensor(mean_field["kl"])),
        px_cost=Estimate.paired(mleo_mf, mleo_rich),
        rows_needed=rows_needed(mleo_mf - mleo_rich),
    )


def conclude(
    ev: Evidence,
    *,
    name: str = "",
    k: int = 1,
    reference: str = "truth",
    mfg_is_best: bool = False,
    collapsed: bool = False,
    learn_noise: bool = False,
    flags=(),
    excluded_points: int = 0,
) -> Verdict:
    """The decision on the conditions from :func:`evidence` (see the module docstring), with
    the practitioners' guidelines of Yacoby et al. that apply and the ``flags`` given (e.g.
    :func:`training_flags`). ``mfg_is_best``: on a user's data, the MFG-VAE itself fits p(x)
    best and stands in for the truth: there is no trade to detect. ``collapsed``: on a user's
    data, the stand-in ignores its latent (mutual information below :data:`COLLAPSED_NATS`):
    its posteriors are the prior, so no share of hard posteriors can be read from it and the
    verdict is "undetermined" (reason ``"collapsed"``), never "none"."""
    # Cx1 cannot be told when no share of hard points could move the test -ELBO measurably
    cx1 = ev.truth_share_hard.mean >= ev.cx1_share if ev.cx1_reachable else None
    is_simpler, is_worse, is_kept = _exceeds(ev.simpler), _exceeds(ev.px_cost), _within(ev.px_cost)
    flags = list(flags)
    if ev.richer is not None and ev.richer.mleo.mean > MARGIN_NATS and reference == "truth":
        flags.append(Flag("comparator-far", ev.richer.job, {"mleo": ev.richer.mleo.mean}))
    out = Verdict(name, k, reference, "undetermined", None, {"Cx1": cx1, "Cx2": None, "Cz2": None}, ev, flags)
    out.excluded_points = excluded_points
    # Too few rows for a standard error to be trusted at all; a claim that p(x) is kept (no
    # difference beyond the margin) also needs the power to have seen one (rows_needed); a
    # difference detected beyond the margin by two standard errors needs no more.
    underpowered = ev.rows_needed is not None and ev.n_test < ev.rows_needed
    if ev.n_test < MIN_ROWS or cx1 is None:
        out.reason = "too-few-rows"
    elif collapsed:
        out.reason = "collapsed"
        out.guidelines.append("check")
    elif not cx1:
        out.failure = "none"
    elif mfg_is_best:
        out.failure, out.reason = "none", "mfg-is-best"
    elif is_simpler and is_worse:
        out.failure = "data distribution"
        out.conditions.update(Cx2=True, Cz2=False)
        out.guidelines.append("flexible")
    elif is_simpler and is_kept and not underpowered:
        out.failure = "latent space"
        out.conditions.update(Cx2=False, Cz2=True)
        out.guidelines.append("latent")
    elif is_simpler and is_kept:
        out.reason = "too-few-rows"
    else:
        out.reason = "px-unclear" if is_simpler else "no-trade"
        out.guidelines.append("check")
    if learn_noise:
        out.guidelines.append("sigma")
    return out


def training_flags(job: str, restarts: list, history: dict, selected: int) -> list[Flag]:
    """Signs that a fit is not at its objective's optimum: restarts started at the ground
    truth ending worse than the random ones (best validation objective lower by more than
    :data:`TRAINING_NATS`), and the selected restart's validation objective still rising by
    more than that over the last quarter of training. ``restarts``: dicts or records with
    ``init`` and ``validation_objective``; ``history``: ``{"step", "validation"}``."""

    def get(r, key):
        return r[key] if isinstance(r, dict) else getattr(r, key)

    flags = []
    best = {}
    for r in restarts:
        v = get(r, "validation_objective")
        if v is not None and math.isfinite(v):
            best[get(r, "init")] = max(best.get(get(r, "init"), -math.inf), v)
    if "ground_truth" in best and "random" in best and best["random"] - best["ground_truth"] > TRAINING_NATS:
        flags.append(
            Flag(
                "truth-started-worse", job, {"truth_started": best["ground_truth"], "random": best["random"]}
            )
        )
    curve = [row[selected] for row in history.get("validation", []) if row[selected] is not None]
    if len(curve) >= 4:
        back = curve[-1 - len(curve) // 4]
        gain = curve[-1] - back
        if math.isfinite(gain) and gain > TRAINING_NATS:
            steps = history["step"]
            flags.append(
                Flag(
                    "still-improving",
                    job,
                    {"gain": gain, "from_step": steps[-1 - len(curve) // 4], "to_step": steps[-1]},
                )
            )
    return flags


def diagnose(
    truth,
    x: torch.Tensor,
    mean_field,
    richer=None,
    *,
    labels=("mean_field", "richer"),
    method: str = "auto",
    num_draws: int = 1000,
    seed: int = 0,
    learn_noise: bool = False,
) -> Verdict:
    r"""Decide the failure conditions of Yacoby et al. (2020) for one ground-truth process.

    :param truth: the ground-truth process; ``x`` test points drawn from it (a few hundred).
    :param mean_field: ``(model, guide)`` of the MFG-VAE (mean-field guide, ELBO objective),
        with the truth's latent dimension.
    :param richer: ``(model, guide)`` of a richer family or objective (IWAE, a richer guide),
        or ``None`` to compare :math:`p(x)` with the truth's.
    :param labels: names of the two fits in the verdict.
    :returns: a :class:`~pyrofail.records.verdict.Verdict` (``.failure``, ``.conditions``,
        ``.evidence``; ``.sentences()`` in words).
    """
    x = torch.as_tensor(x).double()
    ref_gt = _reference.reference_posterior(truth, x, method, num_draws=num_draws, seed=seed)
    modes_gt = reference_modes(ref_gt, seed=seed)
    truth_best = best_mean_field(truth, x, ref_gt, modes=modes_gt, seed=seed)
    sides = []
    for label, fitted in zip(labels, (mean_field, richer)):
        if fitted is None:
            sides.append(None)
            continue
        model, guide = fitted
        ref = _reference.reference_posterior(model, x, method, num_draws=num_draws, seed=seed)
        modes = reference_modes(ref, seed=seed)
        cmp = compare(
            model, guide, x, ref, truth, truth_reference=ref_gt, modes=modes, truth_modes=modes_gt, seed=seed
        )
        best = best_mean_field(model, x, ref, modes=modes, seed=seed)
        truth_side = cmp.get("truth") or {}
        sides.append(
            {
                "job": label,
                "kl": best["kl"],
                "mleo": cmp["mleo"]["per_point"],
                "pmo_gap": cmp["model"]["per_point"]["pmo_gap"],
                "posterior_shift": (truth_side.get("per_point") or {}).get("posterior_shift"),
            }
        )
    ev = evidence(truth_best["kl"], sides[0], sides[1])
    return conclude(ev, name=type(truth).__name__, k=truth.latent_dim, learn_noise=learn_noise)
