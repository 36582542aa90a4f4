"""The report's downstream section, from a downstream.json record of the shape the stage writes."""

import pytest

from pyrofail.records import M2Metrics
from pyrofail.report import RunRecords
from pyrofail.report.downstream import section as section_downstream
from pyrofail.report.procedures import m2_section
from tests.factories import estimate, job


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
    res = RunRecords(options={}, jobs=[], failed={}, downstream={"p": block})
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
    group = [
        job("d", 2, procedure="posthoc_self_consistency", config={"data": "d.csv"}),
        job("d", 2, config={"data": "d.csv"}),
    ]
    plain["job"], post["job"] = group[1].job, group[0].job
    records = {plain["job"]: plain, post["job"]: post}
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
    lines = section_downstream(RunRecords(options={}, jobs=[], failed={}, downstream={"d": block}))
    table = [line for line in lines if line.startswith("|")]
    assert len({line.count("|") for line in table}) == 1, table
    said = next(line for line in lines if line.startswith(f"- {post['job']}"))
    assert "self-consistency -0.500 ± 0.000 (better)" in said
    assert "accuracy at ε=0.1 0.250 ± 0.250 (tie)" in said
    assert "figures/representation-d.png" in lines[-2]


def test_the_semi_supervised_table_says_which_encoder_ignores_the_label():
    m2 = M2Metrics(
        separation_ratio=0.0,
        counterfactual_error_model=estimate(1.47),
        counterfactual_error_guide=estimate(1.47),
        mleo=estimate(0.01, 0.004),
        mleo_class0=0.18,
        mleo_class1=0.14,
        accuracy=estimate(0.7),
        bayes_accuracy=0.71,
    )
    jobs = [
        job(
            "s", guide="mean_field", config={"guide_options": {"label_in_encoder": False}}, semi_supervised=m2
        ),
        job("s", guide="flow", semi_supervised=m2),
    ]
    lines = m2_section(RunRecords(options={}, jobs=jobs, failed={}))
    table = [line.replace("\\|", "") for line in lines if line.startswith("|")]  # an escaped pipe is text
    assert len({line.count("|") for line in table}) == 1, table
    assert table[2].startswith("| s-K1-mean_field-elbo (q(z  x): the encoder does not read y) |")
    assert table[3].startswith("| s-K1-flow-elbo |")
