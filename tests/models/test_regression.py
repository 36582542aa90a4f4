"""The regression processes: seeding, the input laws, and log p(y | x) against the sampler."""

import math

import pytest
import torch
from scipy import stats

from pyrofail import zoo
from pyrofail.errors import UsageError
from pyrofail.models.regression import Bimodal, Diabetes, Heteroscedastic, load_diabetes

SYNTHETIC = ["heteroscedastic", "bimodal"]


def test_the_regression_kind_lists_the_three_entries_with_docs():
    assert zoo.names("regression") == ["bimodal", "diabetes", "heteroscedastic"]
    for name in zoo.names("regression"):
        entry = zoo.entry("regression", name)
        assert entry.summary
        assert ".. math::" in entry.doc or name == "diabetes"


@pytest.mark.parametrize("name", SYNTHETIC)
def test_sample_is_seeded_and_shaped(name):
    process = zoo.entry("regression", name).factory()
    torch.manual_seed(0)
    x1, y1 = process.sample(60, seed=3)
    torch.manual_seed(123)  # the global state must not matter
    x2, y2 = process.sample(60, seed=3)
    x3, _ = process.sample(60, seed=4)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.equal(x1, x3)
    assert x1.shape == (60, 1) and y1.shape == (60,)
    d = process.splits(40, 20, seed=3)
    assert torch.equal(d.x_train, x1[:40]) and torch.equal(d.y_test, y1[40:])
    with pytest.raises(UsageError, match="n=0"):
        process.sample(0)


def _cdf(name, x, y):
    """The true conditional CDF F(y | x) of each process, written independently of the code."""
    x = x[:, 0].double()
    y = y.double()
    if name == "heteroscedastic":
        return torch.special.ndtr((y - 7 * torch.sin(x)) / (3 * torch.cos(x / 2).abs()))
    return 0.5 * torch.special.ndtr(y - 10 * torch.cos(x)) + 0.5 * torch.special.ndtr(y - 10 * torch.sin(x))


@pytest.mark.parametrize("name", SYNTHETIC)
def test_outputs_follow_the_stated_conditional_law(name):
    # probability integral transform: F(y | x) is uniform if y | x has law F
    process = zoo.entry("regression", name).factory()
    x, y = process.sample(5000, seed=1)
    u = _cdf(name, x, y).numpy()
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    assert torch.allclose(process.cdf(x, y).double(), _cdf(name, x, y), atol=1e-6)
    # the stated conditional mean: residuals average zero in each third of the inputs
    resid = (y - process.mean(x)).double()
    for part in x[:, 0].argsort().chunk(3):
        assert abs(float(resid[part].mean())) < 4 * float(resid[part].std()) / part.numel() ** 0.5


@pytest.mark.parametrize("name", SYNTHETIC)
def test_log_density_is_the_derivative_of_the_cdf_and_normalised(name):
    process = zoo.entry("regression", name).factory()
    x = torch.tensor([[-4.2], [-0.3], [0.0], [0.7], [1.9], [3.8]])
    y = torch.linspace(-30, 30, 60001, dtype=torch.float64)
    xs = x.repeat_interleave(y.numel(), 0)
    ys = y.repeat(x.shape[0])
    dens = process.log_density(xs.double(), ys).exp().reshape(x.shape[0], -1)
    mass = torch.trapezoid(dens, y, dim=-1)
    assert torch.allclose(mass, torch.ones_like(mass), atol=1e-6)
    # density = dF/dy by central differences at a few points
    y0 = torch.tensor([-3.0, 0.5, 2.0, 6.0], dtype=torch.float64)
    h = 1e-5
    for xi in x:
        xr = xi.expand(y0.numel(), 1).double()
        numeric = (_cdf(name, xr, y0 + h) - _cdf(name, xr, y0 - h)) / (2 * h)
        assert torch.allclose(process.log_density(xr, y0).exp(), numeric, rtol=1e-5, atol=1e-9)


def test_heteroscedastic_inputs_are_the_three_bump_mixture():
    x, _ = Heteroscedastic().sample(20000, seed=2)
    x = x[:, 0].double().numpy()

    def cdf(v):
        return sum(stats.norm.cdf(v, m, s) for m, s in ((-4, 0.4), (0, 0.9), (4, 0.4))) / 3

    assert stats.kstest(x, cdf).pvalue > 1e-3


def test_bimodal_inputs_are_the_truncated_exponential():
    x, _ = Bimodal().sample(20000, seed=2)
    e = x[:, 0].double() + 0.5
    assert float(e.min()) >= 0 and float(e.max()) <= 2.5

    def cdf(v):
        return (1 - torch.exp(-2 * torch.as_tensor(v))).numpy() / (1 - math.exp(-5.0))

    assert stats.kstest(e.numpy(), cdf).pvalue > 1e-3


def test_diabetes_is_standardised_with_the_training_statistics_and_seeded():
    d = load_diabetes(seed=0)
    assert d.x_train.shape == (354, 10) and d.x_test.shape == (88, 10) and d.y_test.shape == (88,)
    assert torch.allclose(d.x_train.mean(0), torch.zeros(10), atol=1e-5)
    assert torch.allclose(d.x_train.std(0), torch.ones(10), atol=1e-5)
    assert abs(float(d.y_train.mean())) < 1e-5 and abs(float(d.y_train.std()) - 1) < 1e-5
    again, other = load_diabetes(seed=0), load_diabetes(seed=1)
    assert torch.equal(d.y_test, again.y_test) and not torch.equal(d.y_test, other.y_test)
    # the same 442 patients, split differently
    assert torch.equal(Diabetes().splits(seed=0).y_train, d.y_train)
    small = Diabetes().splits(100, 20, seed=0)
    assert torch.equal(small.x_train, d.x_train[:100]) and small.y_test.shape == (20,)
    with pytest.raises(UsageError, match="n_train=400"):
        Diabetes().splits(400, seed=0)
    with pytest.raises(UsageError, match="test_fraction"):
        load_diabetes(test_fraction=1.5)
