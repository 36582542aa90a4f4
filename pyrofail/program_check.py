r"""The failure check of a VAE a user already has: ``check(model, guide, x)``.

For a fitted pair, either Pyro programs (``model(x)``, ``guide(x)``, adapted by
:func:`pyrofail.programs.adapt`) or objects with the analysis protocol (the zoo's), at test
points :math:`x_1, \dots, x_N` it measures

* the reference posterior :math:`p_\theta(z \mid x)` of the user's own model
  (:func:`pyrofail.analysis.reference.reference_posterior`: exact quadrature for
  :math:`K \le 2`, NUTS otherwise) and :math:`\log p_\theta(x)`;
* the guide against it (:func:`pyrofail.analysis.compare`): the ELBO, the **PMO gap**
  :math:`\log p_\theta(x) - \mathrm{ELBO}(x) = \mathrm{KL}(q \,\|\, p_\theta(z \mid x))`, the
  forward KL, the mode-mass error, PSIS :math:`\hat k`;
* how hard each posterior is for a mean-field Gaussian (:mod:`pyrofail.analysis.hardness`):
  :math:`\mathrm{KL}^*(x)`, the reverse KL of the best one, and the share of points with
  :math:`\mathrm{KL}^* >` :data:`~pyrofail.analysis.hardness.HARD_KL`.

There is no ground truth, so the verdict says what these numbers can: the PMO gap splits into
the **approximation gap** :math:`\mathrm{KL}^*`, which no mean-field Gaussian avoids, and the
**amortisation gap** :math:`\mathrm{PMO} - \mathrm{KL}^*`, what the encoder loses against the
best mean-field Gaussian of each point (Cremer, Li & Duvenaud 2018, "Inference Suboptimality in
Variational Autoencoders", ICML). With :data:`~pyrofail.analysis.diagnose.MARGIN_NATS` as the
margin and ties decided by :meth:`pyrofail.estimate.Estimate.verdict`:

* ``gap_large``: the mean PMO gap exceeds the margin by two standard errors;
* ``hard``: the share of hard points reaches
  :func:`~pyrofail.analysis.diagnose.cx1_share` (condition Cx1 of Yacoby, Pan & Doshi-Velez
  2020, read on the user's model instead of the unknown truth);
* ``richer_family``: ``"yes"`` when the mean KL* exceeds the margin (even the best mean-field
  Gaussian is far: a richer family would gain), ``"no"`` when it is below the margin by two
  standard errors, else ``"unclear"``;
* ``amortization``: the same reading of the amortisation gap (only decided for a mean-field
  Gaussian guide, for which PMO ≥ KL*): ``"yes"`` means a better encoder (more training, a
  wider network, per-point refinement) would gain;
* ``verdict``: ``"ok"`` (no large gap), ``"family"``, ``"amortization"``,
  ``"family+amortization"``, or ``"undetermined"``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from pyrofail.errors import UsageError, check_positive_int
from pyrofail.estimate import Estimate
from pyrofail.programs import ProgramGuide, adapt, is_adapted
from pyrofail.records.program import ProgramCheck

__all__ = ["VERDICTS", "CheckResult", "check", "write"]

VERDICTS = ("ok", "family", "amortization", "family+amortization", "undetermined")
POINTS = 200  # test points checked by default (the grid's and KL*'s cost grow with them)


CheckResult = ProgramCheck  # what check returns: a record of the run folder's schema


def _family(guide, x: torch.Tensor) -> str:
    """``"mean-field Gaussian"`` for a diagonal-Gaussian guide (one Normal latent site of a
    Pyro guide on the real line, or a zoo guide whose distribution is a Normal), else
    ``"other"``."""
    if isinstance(guide, ProgramGuide):
        sites = guide.program.layout.sites
        return "mean-field Gaussian" if len(sites) == 1 and guide.mean_field else "other"
    q = guide.distribution(x[:1])
    while isinstance(q, torch.distributions.Independent):
        q = q.base_dist
    return "mean-field Gaussian" if isinstance(q, torch.distributions.Normal) else "other"


def _dtype(*modules, default):
    for m in modules:
        for t in (*getattr(m, "parameters", tuple)(), *getattr(m, "buffers", tuple)()):
            if t.is_floating_point():
                return t.dtype
    return default


def _reading(est: Estimate, margin: float) -> str:
    """``"yes"`` above the margin by two standard errors, ``"no"`` below it by as much, else
    ``"unclear"``."""
    if est.verdict(margin) == "greater":
        return "yes"
    if est.stderr is not None and est.mean + 2 * est.stderr <= margin:
        return "no"
    return "unclear"


def _verdict(gap_large: bool, family: str, amortization: str) -> str:
    if not gap_large:
        return "ok"
    if family == "yes" and amortization == "yes":
        return "family+amortization"
    if family == "yes":
        return "family"
    if amortization == "yes":
        return "amortization"
    return "undetermined"


def check(
    model,
    guide,
    x,
    *,
    x_test=None,
    reference: str = "auto",
    points: int | None = POINTS,
    seed: int = 0,
    num_samples: int = 1000,
    kwargs: dict | None = None,
    data_plate: str | None = None,
    reference_options: dict | None = None,
    out=None,
) -> ProgramCheck:
    r"""Check a fitted model and guide against the model's own posterior (module docstring).

    :param model, guide: Pyro programs ``model(x, **kwargs)``, ``guide(x, **kwargs)`` (adapted
        with :func:`pyrofail.programs.adapt` on ``x``), or objects that already have
        ``log_joint``/``latent_dim``/``data_dim`` and ``distribution`` (the zoo's), used as
        they are.
    :param x: the data the pair was fitted on, ``(N, ...)``.
    :param x_test: the points to check at (default ``x``).
    :param reference: ``"auto"`` (the grid for :math:`K \le 2`, else NUTS), ``"grid"`` or
        ``"nuts"``; ``reference_options`` go to it.
    :param points: at most this many points, drawn without replacement with ``seed``
        (``None``: all).
    :param num_samples: guide draws per point for the ELBO and the PSIS diagnostic.
    :param out: a folder to write the check to as a run folder: ``program.json`` and the same
        ``report.md`` the command line writes (``python -m pyrofail.analyze --program``).
    :returns: a :class:`~pyrofail.records.program.ProgramCheck`.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model(x):  # z ~ N(0, 1), x | z ~ N(z, 1): p(z | x) = N(x / 2, 1 / 2)
        ...     with pyro.plate("data", x.shape[0]):
        ...         z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
        ...         pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)
        >>> def guide(x):  # the exact posterior shifted by 0.5: KL = 0.5^2 / (2 * 0.5) = 0.25
        ...     with pyro.plate("data", x.shape[0]):
        ...         pyro.sample("z", dist.Normal(x / 2 + 0.5, 0.5**0.5).to_event(1))
        >>> x = torch.randn(40, 1, generator=torch.Generator().manual_seed(0)) * 2**0.5
        >>> r = check(model, guide, x, points=40)
        >>> abs(r.pmo_gap.mean - 0.25) < 3 * r.pmo_gap.stderr, r.gap_large, r.richer_family, r.verdict
        (True, True, 'no', 'amortization')
    """
    from pyrofail.analysis import metrics
    from pyrofail.analysis import reference as _reference
    from pyrofail.analysis.compare import compare
    from pyrofail.analysis.diagnose import MARGIN_NATS, cost_error, cx1_share
    from pyrofail.analysis.hardness import HARD_KL, best_mean_field
    from pyrofail.analysis.reference.modes import reference_modes

    clock = {}
    start = time.perf_counter()
    x = torch.as_tensor(x)
    if not is_adapted(model, guide):
        model, guide = adapt(model, guide, x, kwargs=kwargs, data_plate=data_plate)
    xt = x if x_test is None else torch.as_tensor(x_test)
    xt = xt.reshape(xt.shape[0], -1)
    if xt.shape[1] != model.data_dim:
        raise UsageError(
            f"x_test has {xt.shape[1]} features per point; the model has data_dim={model.data_dim}"
        )
    if points is not None:
        points = check_positive_int("points", points)
        if xt.shape[0] > points:
            pick = torch.randperm(xt.shape[0], generator=torch.Generator().manual_seed(seed))[:points]
            xt = xt[pick.sort().values]
    clock["adapt"] = time.perf_counter() - start
    xd = xt.double()

    t = time.perf_counter()
    ref = _reference.reference_posterior(model, xd, reference, seed=seed, **(reference_options or {}))
    modes = reference_modes(ref, seed=seed)
    clock["reference"] = time.perf_counter() - t
    t = time.perf_counter()
    cmp = compare(model, guide, xd, ref, modes=modes, seed=seed, num_samples=num_samples)
    x_fit = xt.to(_dtype(guide, model, default=xt.dtype))
    mc = metrics.negative_elbo(model, guide, x_fit, num_samples=num_samples, seed=seed)["stderr"]
    clock["compare"] = time.perf_counter() - t
    t = time.perf_counter()
    best = best_mean_field(model, xd, ref, modes=modes, seed=seed)
    clock["hardness"] = time.perf_counter() - t

    ok = cmp["usable"]
    pp = cmp["model"]["per_point"]
    exact = _reference.method(ref) == "grid"
    kl = best["kl"].double().cpu()
    pmo = pp["pmo_gap"].double().cpu()
    hard_points = (kl > HARD_KL)[ok]
    share = Estimate.of(hard_points.double())
    hard_kl = float(kl[ok][hard_points].mean()) if bool(hard_points.any()) else HARD_KL
    # Cx1's cut, as the diagnosis reads it: the hard posteriors' cost two standard errors above 0
    needed = cx1_share(cost_error(kl[ok]), hard_kl)
    kl_est = Estimate.of(kl[ok])
    amort_est = Estimate.paired(pmo[ok], kl[ok], mc_stderr=mc)
    gap = Estimate.of(pmo[ok], mc_stderr=mc)
    family = _family(guide, xt)
    richer = _reading(kl_est, MARGIN_NATS)
    amort = _reading(amort_est, MARGIN_NATS) if family == "mean-field Gaussian" else "unclear"
    gap_large = gap.verdict(MARGIN_NATS) == "greater"
    k_bad = cmp["model"]["mean"].get("pareto_k_bad_share", math.nan)
    clock["total"] = time.perf_counter() - start
    result = ProgramCheck(
        n_points=int(xt.shape[0]),
        usable=int(ok.sum()),
        reference=_reference.method(ref),
        latent_dim=int(model.latent_dim),
        guide_family=family,
        neg_elbo=Estimate.of(-pp["elbo"].double().cpu()[ok], mc_stderr=mc),
        neg_log_px=Estimate.of(-pp["log_px"].double().cpu()[ok], exact=exact),
        pmo_gap=gap,
        kl_star=kl_est,
        share_hard=share,
        hard_share_needed=needed,
        amortization_gap=amort_est,
        forward_kl=Estimate.of(pp["forward_kl"].double().cpu()[ok]),
        mode_mass_error=Estimate.of(pp["mode_mass_error"].double().cpu()[ok]),
        pareto_k_bad_share=float(k_bad),
        gap_large=gap_large,
        hard=bool(share.mean >= needed),
        richer_family=richer,
        amortization=amort,
        verdict=_verdict(gap_large, richer, amort),
        seed=int(seed),
        seconds={k: round(v, 3) for k, v in clock.items()},
        per_point={
            "pmo_gap": pmo.tolist(),
            "kl_star": kl.tolist(),
            "log_px": pp["log_px"].double().cpu().tolist(),
            "elbo": pp["elbo"].double().cpu().tolist(),
            "usable": ok.tolist(),
        },
    )
    if out is not None:
        write(result, out)
    return result


def write(result: ProgramCheck, out) -> Path:
    """``result`` as a run folder at ``out``: ``config.json``, ``program.json`` and the report
    (:mod:`pyrofail.report`); returns the report's path."""
    from pyrofail import report
    from pyrofail.records import RunFolder
    from pyrofail.runs import RUN_FORMAT, atomic_write_json, atomic_write_text, versions

    out = Path(out)
    if not (out / "config.json").exists():
        options = {"program": result.program, "preset": "program", "seed": result.seed, "reference": None}
        atomic_write_json(
            out / "config.json",
            {"format": RUN_FORMAT, "options": options, "jobs": [], "versions": versions()},
        )
    folder = RunFolder.open(out)
    folder.write(result, out / "program.json")
    records = report.RunRecords.read(folder)
    atomic_write_text(out / "report.md", report.markdown(records))
    return out / "report.md"
