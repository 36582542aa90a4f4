"""The report's "guides compared" section: one sentence per process, K and objective, every
difference paired over the same test points and called a tie inside two standard errors."""

import math

import torch

from pyrofail.records.findings import Findings
from pyrofail.report import choices
from pyrofail.stages import findings
from tests.factories import estimate, job, points, run_folder


def _job(process, k, guide, objective, log_px, mc_stderr=0.0):
    """A job whose per-point log p(x) are ``log_px``, importance-sampled with a Monte Carlo
    error of the mean of ``mc_stderr`` (0: quadrature)."""
    lp = torch.as_tensor(log_px, dtype=torch.float64)
    record = job(process, k, guide, objective, test_neg_log_px=estimate(-float(lp.mean())))
    per_point = [mc_stderr * math.sqrt(lp.numel())] * lp.numel() if mc_stderr else None
    return record, points(log_px=lp, log_px_stderr=per_point)


def _section(tmp_path, *jobs):
    folder = run_folder(tmp_path, [r for r, _ in jobs], {r.job: p for r, p in jobs})
    findings.run(folder)
    return choices.guides_section(folder.read(Findings, folder.root / "findings.json"))


def test_names_the_best_family_and_its_paired_margin_over_each_other(tmp_path):
    base = torch.linspace(-0.5, 1.5, 100, dtype=torch.float64)  # the spread over points, shared
    wiggle = 0.01 * torch.tensor([(-1.0) ** i for i in range(100)], dtype=torch.float64)
    lines = _section(
        tmp_path,
        _job("figure8", 1, "mean_field", "elbo", base - 0.05),
        _job("figure8", 1, "flow", "elbo", base),
        _job("figure8", 1, "full_rank", "elbo", base - 0.04 + wiggle),
        _job("figure8", 1, "mean_field", "iwae", base),  # a group of one guide: no sentence
        # a mean difference of 0.002 with a paired standard error of 0.01: a tie, although the
        # spread over points (about 0.58) is far larger than either number
        _job("clusters", 2, "mean_field", "elbo", base + 0.002 + 0.1 * wiggle * 10),
        _job("clusters", 2, "flow", "elbo", base),
    )
    se_wiggle = float((0.04 + wiggle).std() / math.sqrt(100))
    assert [line for line in lines if line.startswith("- ")] == [
        "- clusters K=2 elbo: mean_field's test log p(x) (0.502 ± 0.010) ties with flow's "
        f"(difference 0.002 ± {float((0.002 + wiggle).std() / 10):.3f} nats).",
        "- figure8 K=1 elbo: flow's test log p(x) (0.500 ± 0.010) is higher than full_rank's by "
        f"0.040 ± {se_wiggle:.3f} nats and mean_field's by 0.050 ± 0.000 nats.",
    ]


def test_importance_sampling_error_widens_the_tie(tmp_path):
    base = torch.linspace(-1.0, 1.0, 50, dtype=torch.float64)
    lines = _section(
        tmp_path,
        _job("figure8", 1, "mean_field", "elbo", base - 0.03, mc_stderr=0.02),
        _job("figure8", 1, "flow", "elbo", base, mc_stderr=0.02),
    )
    assert "ties with mean_field's (difference 0.030 ± 0.028 nats)" in "\n".join(lines)


def test_nothing_to_compare_with_one_guide(tmp_path):
    assert _section(tmp_path, _job("figure8", 1, "mean_field", "elbo", [0.9, 1.0])) == []
