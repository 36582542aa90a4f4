"""AUROC and its standard error against known answers and the sampling distribution; the
contamination process against its own definition; scores against the closed-form p(x)."""

import numpy as np
import pytest
import torch
from scipy.stats import rankdata

from pyrofail.analysis.downstream.outliers import auroc, auroc_difference, off_manifold, outlier_scores
from pyrofail.errors import UsageError
from pyrofail.models import LinearGaussian


def test_auroc_of_identical_distributions_is_one_half():
    rng = np.random.default_rng(0)
    out = auroc(rng.normal(size=500), rng.normal(size=500))
    # sd of the AUC of two equal samples of 500: sqrt((m + n + 1) / 12 m n) = 0.018
    assert abs(out["auroc"] - 0.5) < 3 * 0.0183
    assert out["stderr"] == pytest.approx(np.sqrt(1001 / (12 * 500 * 500)), rel=0.1)


def test_auroc_of_separated_samples_is_one():
    out = auroc(np.arange(10.0, 20.0), np.arange(0.0, 10.0))
    assert out["auroc"] == 1.0 and out["stderr"] == 0.0
    assert auroc(np.arange(0.0, 10.0), np.arange(10.0, 20.0))["auroc"] == 0.0  # reversed scores
    assert auroc([1.0, 2.0], [1.0, 2.0])["auroc"] == 0.5  # ties count a half


def mann_whitney(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUCs of many replicates at once, rows of ``pos`` (R, m) against rows of ``neg`` (R, n)."""
    m, n = pos.shape[-1], neg.shape[-1]
    ranks = rankdata(np.concatenate([pos, neg], -1), axis=-1)
    return (ranks[:, :m].sum(-1) - m * (m + 1) / 2) / (m * n)


@pytest.mark.parametrize("method", ["delong", "hanley_mcneil"])
def test_standard_error_matches_the_sampling_distribution(method):
    # replicate experiments: inliers N(1, 1) (60 points), outliers N(0, 1) (40 points); the
    # true AUC is Phi(1 / sqrt 2) = 0.760. The sd of 4000 replicate AUCs is known to 1.1%; the
    # root-mean-square standard error over 300 replicates to about 1%.
    rng = np.random.default_rng(1)
    pos, neg = rng.normal(1.0, 1.0, (4000, 60)), rng.normal(0.0, 1.0, (4000, 40))
    aucs = mann_whitney(pos, neg)
    assert aucs.mean() == pytest.approx(0.760, abs=0.003)
    first = auroc(pos[0], neg[0])
    assert first["auroc"] == pytest.approx(aucs[0], abs=1e-12)
    ses = [auroc(pos[i], neg[i], stderr=method)["stderr"] for i in range(300)]
    # DeLong is unbiased for the variance; Hanley-McNeil assumes exponential scores, close here
    assert np.sqrt(np.mean(np.square(ses))) == pytest.approx(aucs.std(), rel=0.06)


def test_delong_matches_a_bootstrap():
    rng = np.random.default_rng(2)
    pos, neg = rng.normal(0.8, 1.0, 300), rng.normal(0.0, 1.5, 200)
    out = auroc(pos, neg)
    boot = mann_whitney(rng.choice(pos, (4000, pos.size)), rng.choice(neg, (4000, neg.size)))
    assert out["stderr"] == pytest.approx(boot.std(), rel=0.06)


def test_paired_delong_error_matches_the_sampling_distribution_of_the_difference():
    """Two scorers of the same points share a latent typicality t (inliers N(1, 1), outliers
    N(0, 1), 60 and 40 per data set) and add their own noise (sd 0.5 and 0.7): their AUCs are
    correlated. The sd of the difference over 4000 replicate data sets is known to 1.1%; the
    root-mean-square paired DeLong error over 300 of them to about 1%: within 6% (the same
    tolerance as the one-curve test). The unpaired error (the two errors in quadrature) is
    about twice as large."""
    rng = np.random.default_rng(3)
    t_in, t_out = rng.normal(1.0, 1.0, (4000, 60)), rng.normal(0.0, 1.0, (4000, 40))
    a_in, a_out = t_in + rng.normal(0, 0.5, t_in.shape), t_out + rng.normal(0, 0.5, t_out.shape)
    b_in, b_out = t_in + rng.normal(0, 0.7, t_in.shape), t_out + rng.normal(0, 0.7, t_out.shape)
    diff = mann_whitney(a_in, a_out) - mann_whitney(b_in, b_out)
    first = auroc_difference(a_in[0], a_out[0], b_in[0], b_out[0])
    assert first.mean == pytest.approx(diff[0], abs=1e-12) and first.n == 100
    paired = [auroc_difference(a_in[i], a_out[i], b_in[i], b_out[i]).stderr for i in range(300)]
    assert np.sqrt(np.mean(np.square(paired))) == pytest.approx(diff.std(), rel=0.06)
    unpaired = [
        np.hypot(auroc(a_in[i], a_out[i])["stderr"], auroc(b_in[i], b_out[i])["stderr"]) for i in range(300)
    ]
    assert np.sqrt(np.mean(np.square(unpaired))) > 1.5 * diff.std()


def test_paired_difference_of_a_scorer_with_itself_is_zero_and_checks_its_input():
    rng = np.random.default_rng(4)
    pos, neg = rng.normal(1, 1, 50), rng.normal(0, 1, 30)
    same = auroc_difference(pos, neg, pos, neg)
    assert same.mean == 0.0 and same.stderr == 0.0
    # a monotone transform of a scorer ranks the points alike: the same AUC exactly
    assert auroc_difference(np.exp(pos), np.exp(neg), pos, neg).stderr == 0.0
    with pytest.raises(UsageError, match="same points"):
        auroc_difference(pos, neg, pos[:-1], neg)


def test_auroc_rejects_bad_scores():
    with pytest.raises(UsageError, match="1-D"):
        auroc(np.zeros((3, 2)), np.zeros(3))
    with pytest.raises(UsageError, match="non-finite"):
        auroc([0.0, np.nan], [1.0, 2.0])
    with pytest.raises(UsageError, match="stderr"):
        auroc([0.0, 1.0], [1.0, 2.0], stderr="bootstrap")


def test_outlier_scores_are_the_exact_log_density():
    truth = LinearGaussian()
    x = truth.sample(20, seed=3).x
    out = outlier_scores(truth, x)
    assert out["method"] == "grid"
    assert torch.allclose(out["per_point"], truth.marginal().log_prob(x), atol=1e-4)
    with pytest.raises(UsageError, match="needs a guide"):
        outlier_scores(LinearGaussian(latent_dim=3, data_dim=4), torch.zeros(2, 4))


def test_off_manifold_points_follow_their_definition():
    truth = LinearGaussian()
    ref = truth.sample(300, seed=1).x
    out = off_manifold(truth, 40, reference=ref, quantile=0.05, margin=0.25)
    x = out["x"]
    assert x.shape == (40, 3)
    # below the 5% quantile of the reference's exact log p(x), recomputed in closed form
    exact_ref = truth.marginal().log_prob(ref).double()
    assert out["threshold"] == pytest.approx(float(torch.quantile(exact_ref, 0.05)), abs=1e-3)
    assert torch.allclose(out["log_px"].float(), truth.marginal().log_prob(x), atol=1e-3)
    assert bool((out["log_px"] < out["threshold"]).all())
    # inside the reference's box enlarged by a quarter of its width on each side
    lo, hi = ref.amin(0), ref.amax(0)
    assert torch.allclose(out["box"], torch.stack((lo - 0.25 * (hi - lo), hi + 0.25 * (hi - lo))))
    assert bool(((x >= out["box"][0]) & (x <= out["box"][1])).all())
    assert 0 < out["acceptance"] <= 1
    # the truth's own log p(x) tells them from fresh inliers: AUROC at least 1 - quantile
    fresh = truth.sample(200, seed=9).x
    a = auroc(truth.marginal().log_prob(fresh), truth.marginal().log_prob(x))
    assert a["auroc"] > 0.95 - 2 * a["stderr"]


def test_off_manifold_is_seeded_and_checks_its_input():
    truth = LinearGaussian()
    a = off_manifold(truth, 5, seed=3, reference_points=200)
    b = off_manifold(truth, 5, seed=3, reference_points=200)
    assert torch.equal(a["x"], b["x"])
    with pytest.raises(UsageError, match="latent_dim <= 2"):
        off_manifold(LinearGaussian(latent_dim=3, data_dim=4), 5)
    with pytest.raises(UsageError, match="quantile"):
        off_manifold(truth, 5, quantile=1.5)
    with pytest.raises(UsageError, match="margin"):
        off_manifold(truth, 5, margin=-1.0)


def test_docstring_examples_run():
    import doctest

    from pyrofail.analysis.downstream import outliers

    result = doctest.testmod(outliers)
    assert result.attempted > 0 and result.failed == 0
