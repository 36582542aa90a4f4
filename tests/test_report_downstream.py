"""The report's downstream section, from a downstream.json record of the shape the stage writes."""

import pytest

from pyrofail.stages.report import Results, section_downstream


def _dci(d, d_se):
    return {
        "disentanglement": d,
        "disentanglement_stderr": d_se,
        "completeness": 1.0,
        "completeness_stderr": 0.0,
        "informativeness": "r2",  # the name of the score, not a number
        "informativeness_test": 0.264,
        "informativeness_test_stderr": 0.047,
    }


def _job(name):
    robustness = [
        {
            "eps": eps,
            "mean": 0.01 * eps,
            "stderr": 0.001,
            "truth_kl": [0.1, 0.3],
            "denoise_error": {"mean": 1.3, "stderr": 0.05, "clean_mean": 1.2, "clean_stderr": 0.05},
        }
        for eps in (0.05, 0.2)
    ]
    return {
        "job": name,
        "total_mutual_information": {"mean": 0.3, "stderr": 0.04},
        "robustness": robustness,
        "auroc": {"auroc": 0.905, "stderr": 0.013},
        "mig": {"mig": 0.486, "stderr": 0.029},
        "dci": _dci(0.0, 0.0),
    }


def test_every_row_has_the_header_columns_and_dci_carries_its_errors():
    block = {
        "jobs": {"p-K1-mean_field-elbo": _job("p-K1-mean_field-elbo")},
        "truth": {
            "auroc": {"auroc": 0.989, "stderr": 0.006},
            "mig": {"mig": 0.33, "stderr": 0.03},
            "dci": _dci(0.934, 0.032),
        },
        "mfg": "p-K1-mean_field-elbo",
        "against_mfg": None,
    }
    res = Results(options={}, jobs=[], failed={}, downstream={"p": block})
    lines = section_downstream(res)
    table = [line for line in lines if line.startswith("|")]
    widths = {line.count("|") for line in table}
    assert len(widths) == 1, table  # header, separator and rows alike
    assert "0.000 / 1.000 / 0.264 ± 0.047 |" in table[2]
    assert table[3].startswith("| the truth's exact posterior") and "0.934 ± 0.032 /" in table[3]
    assert "0.001 ± 0.001 (0.200)" in table[2]  # the attack's KL beside the truth's mean shift


def _data_job(name, cons, correct):
    return {
        "job": name,
        "total_mutual_information": {"mean": 2.0, "stderr": 0.1},
        "consistency": {"per_point": cons, "mean": sum(cons) / len(cons), "stderr": 0.01},
        "probe": {
            "eps": [0.0, 0.1],
            "accuracy": [sum(c) / len(c) for c in correct],
            "stderr": [0.02, 0.03],
            "correct": correct,
        },
    }


def test_a_data_set_is_compared_with_the_plain_vae_paired_over_draws_and_test_points():
    from pyrofail.stages.downstream import baseline_job, compare_data_jobs

    plain = _data_job("d-K2-mean_field-elbo", [1.0, 1.2, 1.1, 0.9], [[1, 1, 1, 0], [1, 0, 0, 0]])
    post = _data_job("d-K2-mean_field-elbo-posthoc", [0.5, 0.7, 0.6, 0.4], [[1, 1, 1, 0], [1, 0, 1, 0]])
    records = {plain["job"]: plain, post["job"]: post}
    group = [
        {"job": post["job"], "config": {"guide": "mean_field", "objective": "elbo", "latent_dim": 2,
                                        "procedure": "posthoc_self_consistency"}},
        {"job": plain["job"], "config": {"guide": "mean_field", "objective": "elbo", "latent_dim": 2}},
    ]  # fmt: skip
    assert baseline_job(group, 2) == plain["job"]
    assert baseline_job(group, 3) is None
    against = compare_data_jobs(records, plain["job"])
    row = against[post["job"]]
    assert row["consistency"]["mean"] == pytest.approx(-0.5) and row["consistency"][
        "stderr"
    ] == pytest.approx(0)
    assert row["accuracy_eps0"]["mean"] == 0.0
    assert row["accuracy_eps0.1"]["mean"] == pytest.approx(0.25)
    block = {"data": True, "baseline": plain["job"], "jobs": records, "against_baseline": against}
    lines = section_downstream(Results(options={}, jobs=[], failed={}, downstream={"d": block}))
    table = [line for line in lines if line.startswith("|")]
    assert len({line.count("|") for line in table}) == 1, table
    said = next(line for line in lines if line.startswith(f"- {post['job']}"))
    assert "self-consistency -0.500 ± 0.000 (better)" in said
    assert "accuracy at ε=0.1 0.250 ± 0.250 (tie)" in said
    assert "figures/representation-d.png" in lines[-2]


def test_the_semi_supervised_table_says_which_encoder_ignores_the_label():
    from pyrofail.stages.report import section_semi_supervised

    metrics = {
        "separation_ratio": 0.0,
        "counterfactual_error_model": 1.47,
        "counterfactual_error_model_stderr": 0.01,
        "counterfactual_error_guide": 1.47,
        "counterfactual_error_guide_stderr": 0.01,
        "mleo": 0.01,
        "mleo_stderr": 0.004,
        "mleo_class0": 0.18,
        "mleo_class1": 0.14,
        "accuracy": 0.7,
        "accuracy_stderr": 0.01,
        "bayes_accuracy": 0.71,
    }
    ignores_y = {"guide": "mean_field", "objective": "elbo", "guide_options": {"label_in_encoder": False}}
    reads_y = {"guide": "flow", "objective": "elbo", "guide_options": {}}
    jobs = [
        {"job": "s-x", "metrics": metrics, "config": ignores_y},
        {"job": "s-xy", "metrics": metrics, "config": reads_y},
    ]
    lines = section_semi_supervised(Results(options={}, jobs=jobs, failed={}))
    table = [line.replace("\\|", "") for line in lines if line.startswith("|")]  # an escaped pipe is text
    assert len({line.count("|") for line in table}) == 1, table
    assert table[2].startswith("| s-x (q(z  x): the encoder does not read y) |")
    assert table[3].startswith("| s-xy |")
