"""The report's "guides compared" section: one sentence per model, K and objective."""

from pyrofail.stages.report import guides_compared


def _job(model, k, guide, objective, neg_log_px, stderr=0.0):
    return {
        "config": {"model": model, "latent_dim": k, "guide": guide, "objective": objective},
        "metrics": {"test_neg_log_px": neg_log_px, "test_neg_log_px_stderr": stderr},
    }


def test_names_the_best_family_and_its_margin_over_each_other():
    results = [
        _job("figure8", 1, "mean_field", "elbo", 0.97),
        _job("figure8", 1, "flow", "elbo", 0.92),
        _job("figure8", 1, "full_rank", "elbo", 0.96),
        _job("figure8", 1, "mean_field", "iwae", 0.90),  # a group of one guide: no sentence
        _job("quadratic", 1, "mean_field", "elbo", -1.40),
        _job("quadratic", 1, "full_rank", "elbo", -1.40 + 1e-6),  # the same numbers at K = 1
        _job("clusters", 2, "mean_field", "elbo", 0.50, stderr=0.02),
        _job("clusters", 2, "flow", "elbo", 0.48, stderr=0.02),
    ]
    text = guides_compared(results)
    assert text.splitlines() == [
        "- clusters K=2 elbo: flow's test log p(x) (-0.480) ties with mean_field's "
        "(difference 0.020 nats, within twice its error 0.028).",
        "- figure8 K=1 elbo: flow's test log p(x) (-0.920) is higher than full_rank's by 0.040 "
        "nats and mean_field's by 0.050 nats.",
        "- quadratic K=1 elbo: mean_field's test log p(x) (1.400) ties with full_rank's "
        "(difference 0.000 nats).",
    ]


def test_nothing_to_compare_with_one_guide():
    assert guides_compared([_job("figure8", 1, "mean_field", "elbo", 0.9)]) is None
