r"""Whether a reference posterior can be trusted at each point: a gate on its stored diagnostics.

A reference (:func:`pyrofail.analysis.reference_posterior`) that is wrong at a point misleads
every measurement made against it there, and nothing in the measurement shows it. :func:`gate`
reads the per-point diagnostics the reference stored and fails a point when any check fails:

NUTS (:mod:`pyrofail.analysis.reference.nuts`, :mod:`pyrofail.analysis.reference.reweight`)

* ``rhat_within_modes`` :math:`> 1.05`: chains that sit in one mode disagree about it. The
  rank-normalised split :math:`\hat R` of Vehtari, Gelman, Simpson, Carpenter & Bürkner (2021),
  computed within each mode over the chains' draws in it. That paper asks for
  :math:`\hat R < 1.01` of a summary at full length (§4); the gate's statistic is a maximum over
  modes, latents and its bulk and tail versions, whose own noise with a few hundred draws per
  chain reaches 0.01 for exact independent draws, so 1.01 would fail correct references by
  chance. 1.05 still fails a chain stuck a posterior standard deviation away from the
  others (``tests/analysis/test_quality.py``); short of that, the ESS check below applies.
  The gate does *not* use ``rhat`` (over all chains): chains started in different
  modes differ by design, and the importance re-weighting, not the chains, sets the modes'
  masses; ``rhat`` is stored for the record (it is large wherever chains sit in different modes).
* ``ess`` :math:`< 400`: too few effective draws (Vehtari et al. 2021, §4: a bulk ESS above 400,
  100 per chain for four chains, before the other diagnostics can be believed).
* ``pareto_k`` above :math:`\min(1 - 1/\log_{10} S, 0.7)` for ``S`` importance draws: the
  importance weights behind :math:`\log p(x)` and the mode masses have too heavy a tail for
  their estimates to converge at a usable rate (Vehtari, Simpson, Gelman, Yao & Gabry 2024,
  "Pareto smoothed importance sampling", §3).
* ``missing_mass`` :math:`> 0.01`: importance mass where only the prior component of the
  proposal explains the draws, i.e. posterior mass outside every mode found.
* ``unrepresented_mass`` :math:`> 0.01`: mass of maxima that no chain's draws cover; the draws
  (and everything computed from them: mode masses, energy distances) are off by about as much.
  One percent is five times below the 0.05 tolerance of a mode mass.
* ``divergences`` :math:`> 0`: a divergent transition means the sampler could not follow the
  posterior's curvature somewhere, and its draws may be biased there (Betancourt 2017, "A
  conceptual introduction to Hamiltonian Monte Carlo", §6.2).
* ``log_px_stderr`` :math:`> 0.02` nats: :math:`\log p(x)` itself too imprecise to compare
  models with (2.5 standard errors inside a 0.05-nat tolerance).

Grid (:mod:`pyrofail.analysis.reference.grid`)

* ``boundary_mass`` :math:`> 10^{-4}`: posterior mass in the outermost ring of cells, i.e. the
  box cut the posterior (the grid's own ``boundary_tol``);
* ``unresolved_mass`` :math:`> 10^{-4}`: posterior mass in cells the mesh could not refine to
  its tolerance (too many nodes), where the quadrature is not to be trusted.

A value that is missing or not a number fails its check: an unverifiable point is not trusted.

Example:
    >>> from pyrofail.models import LinearGaussian
    >>> from pyrofail.analysis.reference import quality, reference_posterior
    >>> truth = LinearGaussian(latent_dim=1, data_dim=2, noise_scale=0.5, seed=0)
    >>> ref = reference_posterior(truth, truth.sample(3, seed=0).x, "grid", num_draws=10)
    >>> q = quality.gate(ref)
    >>> q.ok.tolist(), q.summary()["any"]
    ([True, True, True], 0.0)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import torch

from pyrofail.analysis.reference.idata import method as _method
from pyrofail.errors import UsageError

__all__ = [
    "BOUNDARY_MAX",
    "DIVERGENCES_MAX",
    "ESS_MIN",
    "LOG_PX_SE_MAX",
    "MISSING_MAX",
    "PARETO_K_MAX",
    "RHAT_MAX",
    "UNREPRESENTED_MAX",
    "UNRESOLVED_MAX",
    "Quality",
    "gate",
    "table",
]

RHAT_MAX = 1.05  # Vehtari et al. 2021's statistic; above their 1.01 for its noise (docstring)
ESS_MIN = 400.0  # Vehtari et al. 2021, section 4: 100 per chain for 4 chains
PARETO_K_MAX = 0.7  # Vehtari et al. 2024, section 3; lower for few draws (_k_threshold)
MISSING_MAX = 0.01  # a fifth of the 0.05 tolerance on a mode's mass
UNREPRESENTED_MAX = 0.01  # likewise
DIVERGENCES_MAX = 0  # Betancourt 2017, section 6.2: any divergence is a warning
LOG_PX_SE_MAX = 0.02  # nats: 2.5 standard errors inside a 0.05-nat tolerance
BOUNDARY_MAX = 1e-4  # the grid's own boundary_tol
UNRESOLVED_MAX = 1e-4  # the same bound for mass in cells left coarse


@dataclass
class Quality:
    """Per-point outcome of :func:`gate`: ``failed[name]`` ``(N,)`` is true where check ``name``
    fails, ``values[name]`` the diagnostic it read, ``limits[name]`` the threshold and
    ``above`` whether a value above it (rather than below) fails."""

    method: str
    failed: dict[str, torch.Tensor]
    values: dict[str, torch.Tensor]
    limits: dict[str, float]
    above: dict[str, bool] = field(default_factory=dict)

    @property
    def ok(self) -> torch.Tensor:
        """``(N,)``: true where every check passes."""
        return ~torch.stack(list(self.failed.values())).any(0)

    def reasons(self) -> list[str]:
        """Per point, the failed checks with their values (``""`` where it passes)."""
        out = []
        for i in range(int(self.ok.shape[0])):
            parts = []
            for name, bad in self.failed.items():
                if bool(bad[i]):
                    value = float(self.values[name][i])
                    sign = ">" if self.above.get(name, True) else "<"
                    shown = (
                        "not recorded" if math.isnan(value) else f"{value:.4g} {sign} {self.limits[name]:g}"
                    )
                    parts.append(f"{name} {shown}")
            out.append("; ".join(parts))
        return out

    def summary(self) -> dict[str, float]:
        """The share of points failing each check, and ``"any"``: the share failing the gate."""
        out = {name: float(bad.double().mean()) for name, bad in self.failed.items()}
        out["any"] = float((~self.ok).double().mean())
        return out


def _diag(ref, name: str, n: int) -> torch.Tensor:
    if "diagnostics" not in ref.groups() or name not in ref.diagnostics:
        return torch.full((n,), math.nan, dtype=torch.float64)
    return torch.as_tensor(ref.diagnostics[name].values, dtype=torch.float64).reshape(n)


def _k_threshold(ref) -> float:
    """:math:`\\min(1 - 1/\\log_{10} S, 0.7)` for the reference's ``S`` importance draws."""
    try:
        s = int(json.loads(ref.posterior.attrs["options"])["num_importance"])
    except (KeyError, TypeError, ValueError):
        return PARETO_K_MAX
    return min(1.0 - 1.0 / math.log10(max(s, 11)), PARETO_K_MAX)


def gate(ref, ess_min: float = ESS_MIN) -> Quality:
    """The quality gate of a reference posterior (module docstring): per point, each check's
    outcome; ``Quality.ok`` is true where all pass.

    :param ess_min: the smallest effective sample size that passes (default :data:`ESS_MIN`;
        a reference kept deliberately short, say a quarter of the default draws, may ask for
        proportionally less and must say so).

    :raises UsageError: for a reference made by a method the gate does not know.
    """
    kind = _method(ref)
    n = int(ref.observed_data["x"].shape[0])
    if kind == "nuts":
        checks = {
            "rhat_within_modes": (RHAT_MAX, True),
            "ess": (float(ess_min), False),
            "pareto_k": (_k_threshold(ref), True),
            "missing_mass": (MISSING_MAX, True),
            "unrepresented_mass": (UNREPRESENTED_MAX, True),
            "divergences": (float(DIVERGENCES_MAX), True),
        }
    elif kind == "grid":
        checks = {"boundary_mass": (BOUNDARY_MAX, True), "unresolved_mass": (UNRESOLVED_MAX, True)}
    else:
        raise UsageError(f"no quality gate for reference method {kind!r}; expected 'nuts' or 'grid'")
    values = {name: _diag(ref, name, n) for name in checks}
    if kind == "nuts":
        checks["log_px_stderr"] = (LOG_PX_SE_MAX, True)
        values["log_px_stderr"] = torch.as_tensor(ref.marginal["log_px_stderr"].values, dtype=torch.float64)
    failed = {}
    for name, (limit, above) in checks.items():
        v = values[name]
        # NaN compares false both ways: an unrecorded or uncomputable value fails
        failed[name] = ~(v <= limit) if above else ~(v >= limit)
    return Quality(
        kind,
        failed,
        values,
        {k: v[0] for k, v in checks.items()},
        {k: v[1] for k, v in checks.items()},
    )


def table(qualities: dict[str, Quality]) -> str:
    """A markdown table of reference quality, one row per reference: its points, the share the
    gate fails, and the share failing each check (``—`` for a check its method does not make).

    Example:
        >>> import torch
        >>> q = Quality("grid", {"boundary_mass": torch.tensor([False, True])},
        ...             {"boundary_mass": torch.tensor([0.0, 0.1])}, {"boundary_mass": 1e-4})
        >>> print(table({"truth": q}).splitlines()[2])
        | truth | grid | 2 | 50.0% | 50.0% |
    """
    names = list(dict.fromkeys(name for q in qualities.values() for name in q.failed))
    head = "| reference | method | points | failing the gate | " + " | ".join(names) + " |"
    lines = [head, "|" + "---|" * (4 + len(names))]
    for label, q in qualities.items():
        s = q.summary()
        cells = [f"{100 * s[name]:.1f}%" if name in s else "—" for name in names]
        lines.append(
            f"| {label} | {q.method} | {q.ok.shape[0]} | {100 * s['any']:.1f}% | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)
