"""The report's downstream section and the M2 table, rendered from records built here."""

from pyrofail.estimate import Estimate
from pyrofail.records import M2Metrics
from pyrofail.records.config import RunOptions
from pyrofail.records.downstream import (
    Attack,
    DataTasks,
    Disentanglement,
    DownstreamSummary,
    JobTasks,
    Probe,
    ProcessComparison,
    TruthTasks,
)
from pyrofail.records.findings import Difference
from pyrofail.report import RunRecords
from pyrofail.report.downstream import section as section_downstream
from pyrofail.report.procedures import m2_section
from pyrofail.report.read import DownstreamRecords
from tests.factories import estimate, job


def _dis(d, defined=True):
    if not defined:
        return Disentanglement(False, "disentanglement_lib", reason="MIG needs at least 2 codes; got 1")
    return Disentanglement(
        True, "disentanglement_lib", "uniform20", None, estimate(0.486, 0.029), estimate(d, 0.03),
        estimate(0.9, 0.02), estimate(0.264, 0.047), "accuracy", 10_000,
    )  # fmt: skip


def _job(name, defined=True):
    robustness = [
        Attack(eps, eps * 2.0, [0.01 * eps] * 2, estimate(0.01 * eps, 0.001), [0.1, 0.3], estimate(1.3, 0.05),
               estimate(1.2, 0.05))
        for eps in (0.05, 0.2)
    ]  # fmt: skip
    return JobTasks(None, name, estimate(0.3, 0.04), robustness, _dis(0.0, defined), estimate(0.905, 0.013))


def _res(processes, jobs, truth):
    downstream = DownstreamRecords(DownstreamSummary(processes), jobs, truth)
    return RunRecords(options=RunOptions(), jobs=[], failed={}, downstream=downstream)


def test_every_row_has_the_header_columns_and_a_one_code_fit_says_why_it_has_no_mig():
    mfg, other = "p-K1-mean_field-elbo", "p-K2-mean_field-elbo"
    truth = TruthTasks(None, 2.0, None, _dis(0.934), estimate(0.989, 0.006))
    diff = Difference("outlier AUROC", Estimate(-0.01, 0.002, 2500), "less")
    comparison = ProcessComparison(mfg, False, {other: {"auroc": diff}})
    lines = section_downstream(
        _res({"p": comparison}, {"p": {mfg: _job(mfg, defined=False), other: _job(other)}}, {"p": truth})
    )
    table = [line for line in lines if line.startswith("|")]
    assert len({line.count("|") for line in table}) == 1, table  # header, separator and rows alike
    assert "— (MIG needs at least 2 codes; got 1) | — |" in table[2]
    assert "0.486 ± 0.029 | 0.000 ± 0.030 / 0.900 ± 0.020 / 0.264 ± 0.047 |" in table[3]
    assert table[4].startswith("| the truth's exact posterior") and "0.934 ± 0.030 /" in table[4]
    assert "0.001 ± 0.001 (0.200)" in table[2]  # the attack's KL beside the truth's mean shift
    said = next(line for line in lines if line.startswith(f"- {other}"))
    assert "outlier AUROC: -0.010 ± 0.002 (worse)" in said
    assert "disentanglement_lib's protocol" in lines[2]


def _data_job(name, cons, correct):
    accuracy = [estimate(sum(c) / len(c), s) for c, s in zip(correct, (0.02, 0.03))]
    return DataTasks(
        None, name, estimate(2.0, 0.1), Estimate.of(cons), cons, Probe([0.0, 0.1], accuracy, correct)
    )


def test_a_data_set_is_compared_with_the_plain_vae_paired_over_draws_and_test_points():
    from pyrofail.stages.downstream import baseline_job, compare_data_jobs

    group = [
        job("d", 2, procedure="posthoc_self_consistency", config={"data": "d.csv"}),
        job("d", 2, config={"data": "d.csv"}),
    ]
    plain = _data_job(group[1].job, [1.0, 1.2, 1.1, 0.9], [[1, 1, 1, 0], [1, 0, 0, 0]])
    post = _data_job(group[0].job, [0.5, 0.7, 0.6, 0.4], [[1, 1, 1, 0], [1, 0, 1, 0]])
    assert baseline_job(group, 2) == plain.job and baseline_job(group, 3) is None
    records = {plain.job: plain, post.job: post}
    against = compare_data_jobs(records, plain.job)
    row = against[post.job]
    assert abs(row["consistency"].estimate.mean + 0.5) < 1e-12 and row["consistency"].estimate.stderr < 1e-12
    assert row["accuracy_eps0"].estimate.mean == 0.0
    assert abs(row["accuracy_eps0.1"].estimate.mean - 0.25) < 1e-12
    comparison = ProcessComparison(plain.job, True, against)
    lines = section_downstream(_res({"d": comparison}, {"d": records}, {"d": None}))
    table = [line for line in lines if line.startswith("|")]
    assert len({line.count("|") for line in table}) == 1, table
    said = next(line for line in lines if line.startswith(f"- {post.job}"))
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
        job("s", config={"guide_options": {"label_in_encoder": False}}, semi_supervised=m2),
        job("s", guide="flow", semi_supervised=m2),
    ]
    lines = m2_section(RunRecords(options=RunOptions(), jobs=jobs, failed={}))
    table = [line.replace("\\|", "") for line in lines if line.startswith("|")]  # an escaped pipe is text
    assert len({line.count("|") for line in table}) == 1, table
    assert table[2].startswith("| s-K1-mean_field-elbo (q(z  x): the encoder does not read y) |")
    assert table[3].startswith("| s-K1-flow-elbo |")
