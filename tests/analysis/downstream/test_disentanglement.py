"""MIG and DCI against disentanglement_lib's own functions (transcribed below), against
representations whose answer is known (the factors themselves, permuted and rescaled: perfectly
disentangled; a 45-degree rotation of two independent factors: entangled), and their bootstrap
standard errors against the spread over replicate data sets."""

import json
import math

import numpy as np
import pytest
import scipy.stats
import sklearn.metrics
import torch
from sklearn import ensemble

from pyrofail.analysis import dci, mig
from pyrofail.analysis.downstream.disentanglement import (
    discretize,
    factor_labels,
    mig_difference,
)
from pyrofail.analysis.downstream.resampling import BOOTSTRAP_DRAWS
from pyrofail.errors import UsageError
from pyrofail.estimate import Estimate

N = 4000
BINS = 20
# The plug-in MI of two independent 20-bin variables is biased up by about (20 - 1)^2 / 2N nats
# (Miller 1955): 0.045 nats at N = 4000, so a perfect code's gap falls short of the factor's
# entropy (about 2.4 nats for 20 bins over a Gaussian sample) by about 2%. Fewer bins are
# occupied at the Gaussian's tails, so the measured bias is smaller (0.036 nats).
MI_BIAS = (BINS - 1) ** 2 / (2 * N)


# ----------------------------------------------------------------------------------------
# disentanglement_lib (commit 86a644d), transcribed line by line from
# evaluation/metrics/utils.py, mig.py and dci.py; arrays are (dimensions, points) as there.


def dl_histogram_discretize(target, num_bins=20):
    discretized = np.zeros_like(target)
    for i in range(target.shape[0]):
        discretized[i, :] = np.digitize(target[i, :], np.histogram(target[i, :], num_bins)[1][:-1])
    return discretized


def dl_discrete_mutual_info(mus, ys):
    num_codes = mus.shape[0]
    num_factors = ys.shape[0]
    m = np.zeros([num_codes, num_factors])
    for i in range(num_codes):
        for j in range(num_factors):
            m[i, j] = sklearn.metrics.mutual_info_score(ys[j, :], mus[i, :])
    return m


def dl_discrete_entropy(ys):
    num_factors = ys.shape[0]
    h = np.zeros(num_factors)
    for j in range(num_factors):
        h[j] = sklearn.metrics.mutual_info_score(ys[j, :], ys[j, :])
    return h


def dl_compute_mig(mus_train, ys_train):
    score_dict = {}
    discretized_mus = dl_histogram_discretize(mus_train, 20)
    m = dl_discrete_mutual_info(discretized_mus, ys_train)
    entropy = dl_discrete_entropy(ys_train)
    sorted_m = np.sort(m, axis=0)[::-1]
    score_dict["discrete_mig"] = np.mean(np.divide(sorted_m[0, :] - sorted_m[1, :], entropy[:]))
    return score_dict


def dl_split_train_test(observations, train_percentage):
    num_labelled_samples = observations.shape[1]
    num_labelled_samples_train = int(np.ceil(num_labelled_samples * train_percentage))
    return observations[:, :num_labelled_samples_train], observations[:, num_labelled_samples_train:]


def dl_compute_importance_gbt(x_train, y_train, x_test, y_test):
    num_factors = y_train.shape[0]
    num_codes = x_train.shape[0]
    importance_matrix = np.zeros(shape=[num_codes, num_factors], dtype=np.float64)
    train_loss = []
    test_loss = []
    for i in range(num_factors):
        model = ensemble.GradientBoostingClassifier()
        model.fit(x_train.T, y_train[i, :])
        importance_matrix[:, i] = np.abs(model.feature_importances_)
        train_loss.append(np.mean(model.predict(x_train.T) == y_train[i, :]))
        test_loss.append(np.mean(model.predict(x_test.T) == y_test[i, :]))
    return importance_matrix, np.mean(train_loss), np.mean(test_loss)


def dl_disentanglement(importance_matrix):
    per_code = 1.0 - scipy.stats.entropy(importance_matrix.T + 1e-11, base=importance_matrix.shape[1])
    if importance_matrix.sum() == 0.0:
        importance_matrix = np.ones_like(importance_matrix)
    code_importance = importance_matrix.sum(axis=1) / importance_matrix.sum()
    return np.sum(per_code * code_importance)


def dl_completeness(importance_matrix):
    per_factor = 1.0 - scipy.stats.entropy(importance_matrix + 1e-11, base=importance_matrix.shape[0])
    if importance_matrix.sum() == 0.0:
        importance_matrix = np.ones_like(importance_matrix)
    factor_importance = importance_matrix.sum(axis=0) / importance_matrix.sum()
    return np.sum(per_factor * factor_importance)


def dl_compute_dci(mus_train, ys_train, mus_test, ys_test):
    scores = {}
    importance_matrix, train_err, test_err = dl_compute_importance_gbt(mus_train, ys_train, mus_test, ys_test)
    scores["informativeness_train"] = train_err
    scores["informativeness_test"] = test_err
    scores["disentanglement"] = dl_disentanglement(importance_matrix)
    scores["completeness"] = dl_completeness(importance_matrix)
    return scores, importance_matrix


# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def factors():
    return np.random.default_rng(0).normal(size=(N, 2))


@pytest.fixture(scope="module")
def shared():
    """Discrete factors (8 and 5 levels) and three noisy, mixed, nonlinear codes of them."""
    rng = np.random.default_rng(7)
    y = np.stack([rng.integers(0, 8, 300), rng.integers(0, 5, 300)], 1)
    codes = np.stack(
        [np.tanh(y[:, 0] / 4.0) + 0.3 * rng.normal(size=300), y[:, 1] + 0.15 * y[:, 0], rng.normal(size=300)],
        1,
    ) + 0.4 * rng.normal(size=(300, 3))
    return codes, y


def test_mig_equals_disentanglement_lib_on_shared_inputs(shared):
    codes, y = shared
    ours = mig(codes, y, bootstrap=0)
    theirs = dl_compute_mig(codes.T, y.T)["discrete_mig"]
    assert ours["protocol"] == "disentanglement_lib"
    assert ours["factor_discretization"] == ["labels", "labels"]
    assert ours["mig"] == pytest.approx(theirs, abs=1e-9)
    assert 0.05 < ours["mig"] < 0.9  # a case where the gap is neither 0 nor 1


def test_dci_equals_disentanglement_lib_on_shared_inputs(shared):
    codes, y = shared
    ours = dci(codes, y, bootstrap=0, seed=11)
    mus_train, mus_test = dl_split_train_test(codes.T, 0.8)
    ys_train, ys_test = dl_split_train_test(y.T, 0.8)
    # their trees draw from numpy's global generator, ours from one RandomState(seed)
    np.random.seed(11)  # noqa: NPY002 - verbatim: theirs use the global generator
    theirs, importance = dl_compute_dci(mus_train, ys_train, mus_test, ys_test)
    assert ours["informativeness"] == "accuracy" and ours["n_estimators"] == 100
    assert (ours["n_train"], ours["n_test"]) == (240, 60)
    assert np.allclose(ours["importance"], importance, rtol=0, atol=1e-9)
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, abs=1e-9), key
    assert 0.1 < ours["disentanglement"] < 0.9 and 0.1 < ours["completeness"] < 0.9


def test_non_integer_factors_are_binned_not_truncated(factors):
    z = factors[:2000]
    codes = np.stack([-2.0 * z[:, 1] + 1.0, 0.5 * z[:, 0]], 1)
    labels, how = factor_labels(z)
    assert how == ["uniform20", "uniform20"]
    assert np.array_equal(labels, discretize(z))
    ours = mig(codes, z, bootstrap=0)
    assert ours["mig"] == pytest.approx(dl_compute_mig(codes.T, labels.T)["discrete_mig"], abs=1e-9)
    # the old discrete_factors=True truncated N(0, 1) factors to 3 or so integers: a far lower MIG
    truncated = dl_compute_mig(codes.T, z.T.astype(np.int64))["discrete_mig"]
    assert ours["mig"] > 0.96 and truncated < 0.9


def test_one_code_or_one_factor_is_not_defined(factors):
    z = factors[:300]
    noise = np.random.default_rng(3).normal(size=(300, 1))
    for codes in (z[:, :1], noise):  # a perfect single code and pure noise alike: no number
        out = mig(codes, z)
        assert out["defined"] is False and out["mig"] is None and "2 codes" in out["reason"]
        out = dci(codes, z)
        assert out["defined"] is False and out["completeness"] is None and "2 codes" in out["reason"]
    out = dci(z, z[:, :1])
    assert out["defined"] is False and out["disentanglement"] is None and "2 factors" in out["reason"]
    assert mig(z, z[:, :1], bootstrap=0)["defined"] is True  # MIG of one factor is a gap between codes
    d = mig_difference(z, noise, z, bootstrap=0)
    assert math.isnan(d.mean) and d.flag.startswith("not defined")


def permuted(z):
    """Codes = the factors swapped, one negated and both rescaled and shifted (monotone maps)."""
    return np.stack([-2.0 * z[:, 1] + 1.0, 0.5 * z[:, 0]], 1)


def rotated(z):
    """Codes mixing two independent factors by 45 degrees: each factor is in both codes."""
    return np.stack([z[:, 0] + z[:, 1], z[:, 0] - z[:, 1]], 1) / math.sqrt(2)


def test_mig_of_permuted_rescaled_factors_is_one_less_the_plug_in_bias(factors):
    out = mig(permuted(factors), factors, bootstrap=20)
    entropy = min(out["entropy"])
    # the second code's plug-in information about each factor is Miller's bias (measured 0.036
    # nats here against 0.045 for all 20 x 20 bins occupied): MIG is below 1 by between a
    # half and twice that, relative to the factor's entropy
    assert 1.0 - 2 * MI_BIAS / entropy < out["mig"] < 1.0 - 0.5 * MI_BIAS / max(out["entropy"])
    assert out["top_code"] == [1, 0]  # factor 0 lives in code 1 and factor 1 in code 0
    # the top code knows the factor exactly: the same 20-bin labels up to relabelling
    mi = np.array(out["mutual_info"])
    assert mi[1, 0] == pytest.approx(out["entropy"][0], rel=1e-9)
    assert 0 < out["stderr"] < 0.02
    flag = Estimate.from_dict(out["estimate"]).flag  # 20 draws: too few, and said so
    assert flag.startswith("bootstrap standard error known to")


def test_mig_of_a_rotation_is_near_zero(factors):
    out = mig(rotated(factors), factors, bootstrap=20)
    # the two codes carry the same information about each factor: the gap is the difference of
    # two plug-in estimates of the same MI, a few hundredths of a nat at N = 4000
    assert abs(out["mig"]) < 0.05
    assert abs(out["mig"]) < 4 * out["stderr"]


def test_bootstrap_standard_error_matches_replicate_data_sets():
    """The sd of MIG over 100 independent data sets of 2,000 points (relative sd of that sd:
    1/sqrt(2 * 99) = 7%) against the root-mean-square bootstrap error on 4 of them (100 draws
    each: 7% each, 3.5% for the four), for one code and for the paired difference of two
    codes of the same points: within 25% (about 3 combined sd). The bootstrap overestimates
    the paired error by about 6% at this size (23% at 400 points, where the plug-in bias
    varies between resamples; benchmarks/downstream_checks.py)."""
    rng = np.random.default_rng(5)

    def data():
        z = rng.normal(size=(2000, 2))
        a = z[:, ::-1] + 0.3 * rng.normal(size=(2000, 2))
        return z, a, a + 0.3 * rng.normal(size=(2000, 2))

    sets = [data() for _ in range(100)]
    one = [mig(a, z, bootstrap=0)["mig"] for z, a, _ in sets]
    diff = [mig(a, z, bootstrap=0)["mig"] - mig(b, z, bootstrap=0)["mig"] for z, a, b in sets]
    boots = [mig(a, z, bootstrap=100, seed=i)["stderr"] for i, (z, a, _) in enumerate(sets[:4])]
    pairs = [mig_difference(a, b, z, bootstrap=100, seed=i).stderr for i, (z, a, b) in enumerate(sets[:4])]
    rms, rms_pair = np.sqrt(np.mean(np.square(boots))), np.sqrt(np.mean(np.square(pairs)))
    assert rms == pytest.approx(np.std(one, ddof=1), rel=0.25)
    assert rms_pair == pytest.approx(np.std(diff, ddof=1), rel=0.25)
    # pairing matters: the two codes' errors added in quadrature would be far too large
    assert math.sqrt(2) * rms > 1.5 * np.std(diff, ddof=1)


def test_default_bootstrap_draws_give_a_standard_error_known_to_ten_percent():
    z = np.random.default_rng(6).normal(size=(300, 2))
    out = mig(z[:, ::-1] + 0.3 * z, z)
    assert out["bootstrap"] == BOOTSTRAP_DRAWS == 250
    assert out["stderr_precision"] < 0.10 and "flag" not in out["estimate"]
    assert "flag" in mig(z[:, ::-1], z, bootstrap=30)["estimate"]  # 30 draws: ±25%


def test_quantile_binning_is_invariant_to_monotone_transforms(factors):
    warped = np.stack([np.exp(factors[:, 1]), np.tanh(factors[:, 0])], 1)
    a = mig(warped, factors, binning="quantile", bootstrap=0)
    b = mig(permuted(factors), factors, binning="quantile", bootstrap=0)
    assert a["mig"] == pytest.approx(b["mig"], abs=1e-12)
    # equal-width bins (disentanglement_lib's) are not: exp squeezes most points into few bins
    assert mig(warped, factors, bootstrap=0)["mig"] < a["mig"] - 0.2


def test_discretize_matches_disentanglement_lib_histogram():
    col = np.random.default_rng(1).normal(size=(500, 1))
    assert np.array_equal(discretize(col)[:, 0], dl_histogram_discretize(col.T)[0])
    assert discretize(col).min() == 1 and discretize(col).max() == 20


def test_results_are_json(factors):
    from pyrofail.runs import dumps

    z = factors[:300]
    for out in (mig(z, z, bootstrap=5), dci(z, z, n_estimators=5, bootstrap=2), mig(z[:, :1], z)):
        assert json.loads(dumps(out))["protocol"] == "disentanglement_lib"


def test_mig_is_seeded_and_accepts_torch(factors):
    codes = torch.as_tensor(permuted(factors[:500]))
    a = mig(codes, torch.as_tensor(factors[:500]), bootstrap=10, seed=3)
    b = mig(codes.numpy(), factors[:500], bootstrap=10, seed=3)
    assert a == b
    assert a["stderr"] != mig(codes, factors[:500], bootstrap=10, seed=4)["stderr"]


def test_dci_of_permuted_rescaled_factors(factors):
    out = dci(permuted(factors[:1000]), factors[:1000], n_estimators=20, bootstrap=0)
    assert out["disentanglement"] > 0.98 and out["completeness"] > 0.98
    assert out["informativeness_test"] > 0.95  # 20 classes told apart by one monotone code
    imp = np.array(out["importance"])
    assert imp[1, 0] > 0.98 and imp[0, 1] > 0.98  # each factor predicted from its own code
    assert out["disentanglement_stderr"] is None  # bootstrap=0: no standard error


def test_dci_of_a_rotation_is_entangled(factors):
    out = dci(rotated(factors[:1000]), factors[:1000], n_estimators=20, bootstrap=3)
    # both codes matter equally for both factors: the importance rows are near uniform
    assert out["disentanglement"] < 0.2 and out["completeness"] < 0.2
    assert out["disentanglement_stderr"] > 0
    assert "3 draws" in out["estimates"]["disentanglement"]["flag"]  # too few draws: said so


def test_continuous_protocol_regresses_with_r2(factors):
    z = factors[:1000]
    out = dci(permuted(z), z, protocol="continuous", n_estimators=20, bootstrap=0)
    assert out["protocol"] == "continuous" and out["informativeness"] == "r2"
    assert out["informativeness_test"] > 0.95 and out["disentanglement"] > 0.98
    labels = dci(permuted(z), z, n_estimators=20, bootstrap=0)
    assert labels["informativeness_test"] != out["informativeness_test"]  # accuracy is not R^2


def test_paired_dci_difference():
    from pyrofail.analysis.downstream.disentanglement import dci_difference

    rng = np.random.default_rng(4)
    z = rng.normal(size=(300, 2))
    a, b = permuted(z), rotated(z)
    d = dci_difference(a, b, z, n_estimators=10, bootstrap=3)
    one = dci(a, z, n_estimators=10, bootstrap=0)
    two = dci(b, z, n_estimators=10, bootstrap=0)
    assert d["disentanglement"].mean == pytest.approx(one["disentanglement"] - two["disentanglement"])
    assert d["disentanglement"].mean > 0.5 and d["disentanglement"].stderr > 0
    same = dci_difference(a, a, z, n_estimators=10, bootstrap=3)["completeness"]
    assert same.mean == 0.0 and same.stderr == 0.0


def test_dci_scores_match_disentanglement_lib_formulas():
    from pyrofail.analysis.downstream.disentanglement import _dci_scores

    imp = np.array([[0.6, 0.1], [0.2, 0.0], [0.1, 0.3]])
    out = _dci_scores(imp)
    assert out["disentanglement"] == pytest.approx(dl_disentanglement(imp), abs=1e-15)
    assert out["completeness"] == pytest.approx(dl_completeness(imp), abs=1e-15)


def test_dci_with_discrete_factors_reports_accuracy():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, size=(600, 2))
    codes = labels[:, ::-1] + 0.01 * rng.normal(size=(600, 2))
    out = dci(codes, labels, n_estimators=10, bootstrap=0)
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
    with pytest.raises(UsageError, match="protocol"):
        mig(factors, factors, protocol="dlib")
    with pytest.raises(UsageError, match="zero entropy"):
        mig(factors, np.ones((N, 1)), bootstrap=0)
    with pytest.raises(UsageError, match="train_fraction"):
        dci(factors, factors, train_fraction=1.0)


def test_docstring_examples_run():
    import doctest

    from pyrofail.analysis.downstream import dci_metric, discretization, disentanglement, resampling

    for module in (disentanglement, dci_metric, discretization, resampling):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__
