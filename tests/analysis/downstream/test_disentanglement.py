"""MIG and DCI against representations whose answer is known: the factors themselves, permuted and
rescaled (perfectly disentangled), and a 45-degree rotation of two independent factors (each
code carries both factors equally: entangled)."""

import math

import numpy as np
import pytest
import torch

from pyrofail.analysis import dci, mig
from pyrofail.analysis.downstream.disentanglement import discretize
from pyrofail.errors import UsageError

N = 4000
BINS = 20
# The plug-in MI of two independent 20-bin variables is biased up by about (20 - 1)^2 / 2N nats
# (Miller 1955): 0.045 nats at N = 4000, so a perfect code's gap falls short of the factor's
# entropy (about 2.4 nats for 20 bins over a Gaussian sample) by about 2%. Tolerance: twice that.
MI_BIAS = (BINS - 1) ** 2 / (2 * N)


@pytest.fixture(scope="module")
def factors():
    return np.random.default_rng(0).normal(size=(N, 2))


def permuted(z):
    """Codes = the factors swapped, one negated and both rescaled and shifted (monotone maps)."""
    return np.stack([-2.0 * z[:, 1] + 1.0, 0.5 * z[:, 0]], 1)


def rotated(z):
    """Codes mixing two independent factors by 45 degrees: each factor is in both codes."""
    return np.stack([z[:, 0] + z[:, 1], z[:, 0] - z[:, 1]], 1) / math.sqrt(2)


def test_mig_of_permuted_rescaled_factors_is_one(factors):
    out = mig(permuted(factors), factors, bootstrap=20)
    entropy = min(out["entropy"])
    assert out["mig"] > 1.0 - 2 * MI_BIAS / entropy
    assert out["mig"] <= 1.0
    assert out["top_code"] == [1, 0]  # factor 0 lives in code 1 and factor 1 in code 0
    # the top code knows the factor exactly: the same 20-bin labels up to relabelling
    mi = np.array(out["mutual_info"])
    assert mi[1, 0] == pytest.approx(out["entropy"][0], rel=1e-9)
    assert 0 < out["stderr"] < 0.02


def test_mig_of_a_rotation_is_near_zero(factors):
    out = mig(rotated(factors), factors, bootstrap=20)
    # the two codes carry the same information about each factor: the gap is the difference of
    # two plug-in estimates of the same MI, a few hundredths of a nat at N = 4000
    assert abs(out["mig"]) < 0.05
    assert abs(out["mig"]) < 4 * out["stderr"]


def test_quantile_binning_is_invariant_to_monotone_transforms(factors):
    warped = np.stack([np.exp(factors[:, 1]), np.tanh(factors[:, 0])], 1)
    a = mig(warped, factors, binning="quantile", bootstrap=0)
    b = mig(permuted(factors), factors, binning="quantile", bootstrap=0)
    assert a["mig"] == pytest.approx(b["mig"], abs=1e-12)
    # equal-width bins (disentanglement_lib's) are not: exp squeezes most points into few bins
    assert mig(warped, factors, bootstrap=0)["mig"] < a["mig"] - 0.2


def test_discretize_matches_disentanglement_lib_histogram():
    col = np.random.default_rng(1).normal(size=(500, 1))
    # disentanglement_lib's _histogram_discretize on one row of its (codes, points) layout
    expected = np.digitize(col[:, 0], np.histogram(col[:, 0], 20)[1][:-1])
    assert np.array_equal(discretize(col)[:, 0], expected)
    assert discretize(col).min() == 1 and discretize(col).max() == 20


def test_mig_is_seeded_and_accepts_torch(factors):
    codes = torch.as_tensor(permuted(factors[:500]))
    a = mig(codes, torch.as_tensor(factors[:500]), bootstrap=10, seed=3)
    b = mig(codes.numpy(), factors[:500], bootstrap=10, seed=3)
    assert a == b


def test_dci_of_permuted_rescaled_factors(factors):
    out = dci(permuted(factors[:2000]), factors[:2000])
    assert out["disentanglement"] > 0.98 and out["completeness"] > 0.98
    assert out["informativeness_test"] > 0.98  # R^2 of a one-to-one map
    imp = np.array(out["importance"])
    assert imp[1, 0] > 0.98 and imp[0, 1] > 0.98  # each factor predicted from its own code
    assert out["disentanglement_stderr"] is None  # no bootstrap by default


def test_dci_of_a_rotation_is_entangled(factors):
    out = dci(rotated(factors[:2000]), factors[:2000], bootstrap=2)
    # both codes matter equally for both factors: the importance rows are near uniform
    assert out["disentanglement"] < 0.2 and out["completeness"] < 0.2
    assert out["informativeness_test"] > 0.9  # the codes still determine the factors
    assert out["disentanglement_stderr"] is not None and out["disentanglement_stderr"] >= 0


def test_dci_scores_match_disentanglement_lib_formulas():
    from scipy.stats import entropy

    from pyrofail.analysis.downstream.disentanglement import _dci_scores

    imp = np.array([[0.6, 0.1], [0.2, 0.0], [0.1, 0.3]])
    out = _dci_scores(imp)
    per_code = 1 - entropy(imp.T + 1e-11, base=2)
    per_factor = 1 - entropy(imp + 1e-11, base=3)
    d = np.sum(per_code * imp.sum(1) / imp.sum())
    c = np.sum(per_factor * imp.sum(0) / imp.sum())
    assert out["disentanglement"] == pytest.approx(d, rel=1e-12)
    assert out["completeness"] == pytest.approx(c, rel=1e-12)


def test_dci_with_discrete_factors_reports_accuracy():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, size=(600, 2))
    codes = labels[:, ::-1] + 0.01 * rng.normal(size=(600, 2))
    out = dci(codes, labels, discrete_factors=True, n_estimators=10)
    assert out["informativeness"] == "accuracy"
    assert out["informativeness_test"] == 1.0
    assert out["disentanglement"] > 0.95


@pytest.mark.parametrize(
    "codes, factors, match",
    [
        (np.zeros(10), np.zeros((10, 1)), "codes has shape"),
        (np.zeros((10, 2)), np.zeros((9, 2)), "same points"),
        (np.full((10, 2), np.nan), np.zeros((10, 2)), "non-finite"),
        (np.zeros((1, 2)), np.zeros((1, 2)), "at least 2 points"),
    ],
)
def test_bad_shapes_raise_usage_error(codes, factors, match):
    with pytest.raises(UsageError, match=match):
        mig(codes, factors)
    with pytest.raises(UsageError, match=match):
        dci(codes, factors)


def test_bad_options_raise_usage_error(factors):
    with pytest.raises(UsageError, match="binning"):
        mig(factors, factors, binning="kmeans")
    with pytest.raises(UsageError, match="zero entropy"):
        mig(factors, np.ones((N, 1)), bootstrap=0)
    with pytest.raises(UsageError, match="train_fraction"):
        dci(factors, factors, train_fraction=1.0)


def test_docstring_examples_run():
    import doctest

    from pyrofail.analysis.downstream import disentanglement

    result = doctest.testmod(disentanglement)
    assert result.attempted > 0 and result.failed == 0
