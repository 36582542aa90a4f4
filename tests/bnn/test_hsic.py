"""HSIC: the closed forms against their definitions, the population value, and the standard error."""

import itertools
import math

import pytest
import torch

from pyrofail.bnn.hsic import (
    center,
    gaussian_gram,
    hsic_biased,
    hsic_jackknife,
    hsic_unbiased,
    median_bandwidth,
)
from pyrofail.errors import UsageError


def _grams(n, seed, rho=0.6, bandwidth=1.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g, dtype=torch.float64)
    z = rho * x + math.sqrt(1 - rho**2) * torch.randn(n, generator=g, dtype=torch.float64)
    return gaussian_gram(x, bandwidth), gaussian_gram(z, bandwidth)


def test_unbiased_hsic_is_the_u_statistic_over_distinct_quadruples():
    # Song et al. (2012): HSIC_u = (1/(n)_4) sum over distinct (i, j, q, r) of
    #                     k_ij l_ij + k_ij l_qr - 2 k_ij l_iq
    k, kz = _grams(7, seed=1)
    n = 7
    total, count = 0.0, 0
    for i, j, q, r in itertools.permutations(range(n), 4):
        total += float(k[i, j] * kz[i, j] + k[i, j] * kz[q, r] - 2 * k[i, j] * kz[i, q])
        count += 1
    assert float(hsic_unbiased(k, kz)) == pytest.approx(total / count, rel=1e-10)


def test_biased_hsic_is_the_v_statistic():
    # Gretton et al. (2005): (1/n^2) sum k_ij l_ij + (1/n^4) sum k sum l
    #                        - (2/n^3) sum_i (sum_j k_ij)(sum_q l_iq)
    k, kz = _grams(9, seed=2)
    n = 9
    v = (k * kz).sum() / n**2 + k.sum() * kz.sum() / n**4 - 2 * (k.sum(1) * kz.sum(1)).sum() / n**3
    assert float(hsic_biased(k, kz)) == pytest.approx(float(v), rel=1e-10)
    assert float(hsic_biased(k, kz)) > 0


def test_jackknife_leave_one_out_values_match_recomputation():
    k, kz = _grams(12, seed=3)
    value, se = hsic_jackknife(k, kz)
    loo = []
    for i in range(12):
        keep = [j for j in range(12) if j != i]
        loo.append(float(hsic_unbiased(k[keep][:, keep], kz[keep][:, keep])))
    loo = torch.tensor(loo, dtype=torch.float64)
    assert value == pytest.approx(float(hsic_unbiased(k, kz)), rel=1e-10)
    assert se == pytest.approx(math.sqrt(11 / 12 * float(((loo - loo.mean()) ** 2).sum())), rel=1e-8)


def _population_hsic(rho, h):
    """Closed form for unit-variance bivariate Gaussians and Gaussian kernels of bandwidth h:
    each term is E exp(-v^T D v / 2) = det(I + C D)^(-1/2) for v ~ N(0, C), D = I / h^2."""
    d = torch.eye(2, dtype=torch.float64) / h**2

    def gauss(c):
        return (
            float(
                torch.linalg.det(torch.eye(2, dtype=torch.float64) + torch.tensor(c, dtype=torch.float64) @ d)
            )
            ** -0.5
        )

    both = gauss([[2.0, 2 * rho], [2 * rho, 2.0]])  # (x - x', z - z')
    apart = (1 + 2 / h**2) ** -1.0  # E k E l
    cross = gauss([[2.0, rho], [rho, 2.0]])  # (x - x', z - z'')
    return both + apart - 2 * cross


def test_unbiased_hsic_estimates_the_population_value_with_a_calibrated_error():
    truth = _population_hsic(0.6, 1.0)
    assert _population_hsic(0.0, 1.0) == pytest.approx(0.0, abs=1e-14)
    estimates, errors = [], []
    for seed in range(30):
        value, se = hsic_jackknife(*_grams(150, seed=100 + seed))
        estimates.append(value)
        errors.append(se)
    est = torch.tensor(estimates, dtype=torch.float64)
    # the mean of 30 replicates is within 4 of its standard errors of the closed form
    assert abs(float(est.mean()) - truth) < 4 * float(est.std()) / math.sqrt(30)
    # the jackknife error matches the spread across replicates (30 replicates: ratio known to ~15%)
    ratio = float(torch.tensor(errors).mean()) / float(est.std())
    assert 0.7 < ratio < 1.4
    assert 4 * float(est.std()) / math.sqrt(30) < truth / 4  # the tolerance is small beside the value


def test_hsic_of_independent_samples_is_zero_and_of_dependent_ones_beats_permutations():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(300, generator=g, dtype=torch.float64)
    z_indep = torch.randn(300, generator=g, dtype=torch.float64)
    z_dep = x.abs() + 0.3 * torch.randn(300, generator=g, dtype=torch.float64)  # uncorrelated, dependent
    k = gaussian_gram(x)
    value, se = hsic_jackknife(k, gaussian_gram(z_indep))
    assert abs(value) < 3 * se and se < 2e-3
    value, se = hsic_jackknife(k, gaussian_gram(z_dep))
    assert value > 5 * se
    kz = gaussian_gram(z_dep)
    null = []
    for i in range(200):
        p = torch.randperm(300, generator=torch.Generator().manual_seed(i))
        null.append(float(hsic_unbiased(k, kz[p][:, p])))
    assert value > max(null)


def test_median_bandwidth_and_gram():
    a = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]])  # distances 5, 1, sqrt(18)
    assert float(median_bandwidth(a)) == pytest.approx(math.sqrt(18))
    assert float(median_bandwidth(torch.zeros(4))) == 1.0
    k = gaussian_gram(a, 2.0)
    assert float(k[0, 1]) == pytest.approx(math.exp(-25 / 8))
    assert torch.allclose(k.diagonal(), torch.ones(3))


def test_too_few_points_are_usage_errors():
    k = torch.eye(4)
    with pytest.raises(UsageError, match="n=3"):
        hsic_unbiased(k[:3, :3], k[:3, :3])
    with pytest.raises(UsageError, match="n=4"):
        hsic_jackknife(k, k)


def test_multiscale_gram_is_the_mean_of_gaussian_grams_and_centering_is_hkh():
    a = torch.tensor([0.0, 1.0, 3.0], dtype=torch.float64)
    k = gaussian_gram(a, 2.0, scales=(0.5, 1.0))
    assert float(k[0, 2]) == pytest.approx((math.exp(-9 / 2) + math.exp(-9 / 8)) / 2)
    h = torch.eye(3, dtype=torch.float64) - 1 / 3
    assert torch.allclose(center(k), h @ k @ h)
    kz = gaussian_gram(a**2)
    assert float(hsic_biased(center(k), kz, centered=True)) == pytest.approx(float(hsic_biased(k, kz)))
